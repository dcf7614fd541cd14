"""Screenshot a report's ``report.html`` with headless Chromium.

    python examples/screenshot_report.py REPORT_DIR OUT.png [--width 1280 --height 2400]

Runs ``/usr/bin/chromium`` (or ``$CHROMIUM``) headless, offline-friendly (no GPU, no QUIC, no
background networking or component updates, a throw-away profile), and writes a PNG of the
page. Exit status 1 with a message when Chromium is missing or writes no image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_CHROMIUM = "/usr/bin/chromium"


def screenshot(
    report_dir: str | Path,
    output: str | Path,
    *,
    width: int = 1280,
    height: int = 2400,
    chromium: str | None = None,
    timeout_s: float = 120.0,
) -> Path:
    """Write a PNG screenshot of ``report_dir/report.html`` to ``output``; returns its path."""
    page = Path(report_dir).resolve() / "report.html"
    if not page.is_file():
        raise FileNotFoundError(f"{page} does not exist: write the report first")
    browser = chromium or os.environ.get("CHROMIUM", DEFAULT_CHROMIUM)
    if not Path(browser).is_file():
        raise FileNotFoundError(f"Chromium not found at {browser} (install it or set $CHROMIUM)")
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={output}",
                f"--window-size={width},{height}",
                page.as_uri(),
            ],
            check=False,
            capture_output=True,
            timeout=timeout_s,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if not output.is_file() or output.stat().st_size == 0:
        raise RuntimeError(f"Chromium wrote no screenshot to {output}")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir", help="folder holding report.html")
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    parser.add_argument(
        "--chromium", help=f"browser binary (default $CHROMIUM or {DEFAULT_CHROMIUM})"
    )
    args = parser.parse_args(argv)
    try:
        path = screenshot(
            args.report_dir,
            args.output,
            width=args.width,
            height=args.height,
            chromium=args.chromium,
        )
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as err:
        print(f"screenshot_report: {err}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
