"""How long ``beatmap-fid extractors`` takes, against the start-up of a Python process and of
command lines that import torch (as pytorch-fid's does).

    python benchmarks/bench_cli_startup.py [--repeats 7] [--before PATH]

Each command runs ``--repeats`` times in a fresh process; the table shows the median and the
fastest wall time and the ratio of the median to Python's own start-up. ``--before PATH``
adds the same listing run from another checkout of the project (e.g. an older one), for a
before/after comparison. Every listing is checked to have imported neither torch nor
transformers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LISTING = (
    "import sys; from beatmap_fid.cli import main; code = main(['extractors']); "
    "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'model imported'; "
    "sys.exit(code)"
)


def timed(command: list[str], env: dict[str, str], repeats: int) -> list[float]:
    """Wall times of ``command``, run from the folder its PYTHONPATH names (``python -m``
    puts the working folder first on the import path)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(
            command, env=env, cwd=env["PYTHONPATH"], capture_output=True, text=True
        )
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{command} failed:\n{done.stderr[-2000:]}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--before", help="another checkout whose listing to time as well")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    rows = [
        ("python -c pass (interpreter start-up)", [sys.executable, "-c", "pass"], env),
        ("beatmap-fid extractors (this checkout)", [sys.executable, "-c", LISTING], env),
        ("python -c 'import torch'", [sys.executable, "-c", "import torch"], env),
        ("python -m pytorch_fid --help", [sys.executable, "-m", "pytorch_fid", "--help"], env),
    ]
    if args.before:
        before_env = {**os.environ, "PYTHONPATH": str(Path(args.before).resolve())}
        old = [sys.executable, "-m", "beatmap_fid", "extractors"]
        rows.insert(2, (f"beatmap-fid extractors ({args.before})", old, before_env))
    print(f"load average: {os.getloadavg()[0]:.1f} (2-core machine shared with others)")
    print(f"{'command':<48} {'median s':>9} {'fastest s':>10} {'× start-up':>11}")
    baseline = None
    for label, command, command_env in rows:
        times = timed(command, command_env, args.repeats)
        median = statistics.median(times)
        baseline = baseline or median
        print(f"{label:<48} {median:>9.2f} {min(times):>10.2f} {median / baseline:>11.1f}")


if __name__ == "__main__":
    main()
