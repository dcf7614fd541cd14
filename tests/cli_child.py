"""Running ``beatmap-fid`` commands in a fresh process and reading its peak memory.

The peak is the process's ``VmHWM`` (high-water resident set of its own address space) from
``/proc/self/status``. ``getrusage``'s ``ru_maxrss`` would not do: Linux carries it across
``exec``, so a child forked from a large test process would report the parent's size.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import contextlib, io, json, sys
from beatmap_fid.cli import main

def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

runs = {}
for name, argv in json.loads(sys.argv[1]).items():
    if not argv:  # a baseline: every extractor module and transformers' models imported
        from beatmap_fid.extractors.base import extractor_infos
        from transformers import ModernBertModel, WhisperModel

        extractor_infos()
        runs[name] = {"peak_kib": peak_kib()}
        continue
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    runs[name] = {
        "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "peak_kib": peak_kib()
    }
print(json.dumps(runs))
"""


def run_cli_child(runs: dict[str, list[str]], timeout: float = 900) -> dict[str, dict]:
    """Run the commands in order in one fresh process; per command its exit code, stdout,
    stderr and the process's peak memory so far (KiB). An empty command records the peak
    after importing every extractor and transformers' models."""
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(runs)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])
