"""A PNG screenshot of a run's report.html, taken by headless Chromium (Debian's `chromium`, `make system-deps`).

    .venv/bin/python benchmarks/report_screenshot.py RUN_DIR|BENCH_DIR [--out shot.png] [--size 1400,4000]
    .venv/bin/python benchmarks/report_screenshot.py --scripted /tmp/demo-run --out docs/report-screenshot.png

Writes report.html first when the directory has none (`diziner report`), then the screenshot (default
DIRECTORY/report.png). With --scripted, DIRECTORY is first filled by the scripted three-round run of
tests/test_report_html.py (four rule-based annotators and a scripted supervisor; no model, no network): that is how
docs/report-screenshot.png is made. Chromium runs offline: no network, no first-run tasks, a throw-away profile.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM_HINT = "Chromium not found: install it with `make system-deps` (Debian package `chromium`)"
OFFLINE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str:
    """The Chromium executable; RuntimeError with the install hint when there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(CHROMIUM_HINT)


def screenshot(html: Path, out: Path, size: tuple[int, int] = (1400, 4000), timeout: float = 120.0) -> Path:
    """Render `html` in headless Chromium at `size` and write the PNG to `out`."""
    with tempfile.TemporaryDirectory(prefix="diziner-chromium-") as profile:
        cmd = [
            chromium(), *OFFLINE_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
            f"--screenshot={out.resolve()}", html.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default DIRECTORY/report.png)")
    ap.add_argument("--size", default="1400,4000", help="window size WIDTH,HEIGHT (default 1400,4000)")
    ap.add_argument("--rewrite", action="store_true", help="write report.html again even when it exists")
    ap.add_argument("--scripted", action="store_true", help="first run the tests' scripted refine into DIRECTORY")
    args = ap.parse_args(argv)
    html = args.directory / "report.html"
    if args.scripted:
        from tests.test_report_html import build_scripted_run

        build_scripted_run(args.directory)
    if args.rewrite or args.scripted or not html.is_file():
        from reporting import write_report

        html = write_report(args.directory)
    width, height = (int(x) for x in args.size.split(","))
    out = screenshot(html, args.out or args.directory / "report.png", (width, height))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
