"""`diziner report RUN_DIR|BENCH_DIR`: write one self-contained report.html into the directory.

Imports neither LangGraph nor LangChain; matplotlib (the `report` extra) draws the plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options of `diziner report`."""
    p.add_argument(
        "directory", metavar="RUN_DIR|BENCH_DIR",
        help="a run directory of `diziner refine` (run.json) or a bench directory of `diziner bench` (metrics.json)",
    )


def run(args: argparse.Namespace) -> int:
    """Write DIRECTORY/report.html and print its path; InputError (bad directory or file) propagates (exit 2)."""
    from reporting import write_report

    path = write_report(Path(args.directory))
    print(path)
    sys.stdout.flush()
    return 0
