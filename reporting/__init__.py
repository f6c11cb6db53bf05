"""report.html: one self-contained page for a run or bench directory (`diziner report`)."""

from reporting.run_report import write_report

__all__ = ["write_report"]
