"""The ``beatmap-fid`` command: one sub-command per job, each defined in a module of this package.

Each module has ``register(subparsers)``, which adds its verbs with ``set_defaults(run=...)``;
``run(args)`` returns the process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from beatmap_fid._version import __version__
from beatmap_fid.errors import BeatmapFidError

VERB_MODULES = ("core", "similarity", "report", "classifier", "describe")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb registered."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="beatmap-fid",
        description="Embeddings, Fréchet distance, nearest neighbours and k-NN for beatmaps, "
        "images and audio.",
    )
    parser.add_argument("--version", action="version", version=f"beatmap_fid {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        importlib.import_module(f"beatmap_fid.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``beatmap-fid`` and ``python -m beatmap_fid``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except BeatmapFidError as error:
        print(f"beatmap-fid {args.verb}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"beatmap-fid {args.verb}: interrupted", file=sys.stderr)
        return 130
