"""Printing results for people, or as JSON for machines (``--json``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import numpy as np

FALLBACK = "embedded with a fallback"
"""How the verbs name inputs embedded with a fallback (beside the skipped ones)."""


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _jsonable(value: Any) -> Any:

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit(args: argparse.Namespace, result: dict[str, Any], text: str) -> None:
    """Print ``result`` as JSON when ``--json`` was given, else the readable ``text``."""
    if getattr(args, "json", False):
        json.dump(_jsonable(result), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        print(text)
