"""The ``describe`` verb: CM3P's zero-shot ranking of metadata values for one map.

``beatmap-fid describe MAP.osu --option checkpoint=DIR [--field year --field mapper] [--top 5]``
"""

from __future__ import annotations

import argparse

from beatmap_fid.cli.core import extractor_options_from
from beatmap_fid.cli.output import add_json_flag, emit

VERBS = ("describe",)


def _run_describe(args: argparse.Namespace) -> int:
    from beatmap_fid.extractors.base import build_extractor
    from beatmap_fid.extractors.cm3p.describe import DESCRIBE_FIELDS, describe

    extractor = build_extractor("cm3p", **extractor_options_from(args.option))
    fields = args.field or list(DESCRIBE_FIELDS)
    result = describe(extractor, args.map, fields)
    lines = [f"{result.map}: {result.windows} windows"]
    for ranking in result.rankings:
        shown = ", ".join(f"{label} {p:.3f}" for label, p in ranking.candidates[: args.top])
        lines.append(f"  {ranking.field:<10} {shown or '(no values in the vocabulary)'}")
    emit(args, result.to_dict(args.top), "\n".join(lines))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``describe`` verb."""
    parser = subparsers.add_parser(
        "describe",
        help="rank metadata values (year, difficulty, mode, status, tags, mapper) for a map "
        "with CM3P, zero-shot",
    )
    parser.add_argument("map", help="an .osu file (its audio beside it)")
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="cm3p extractor option, repeatable (checkpoint=DIR, device=cpu, audio=false, ...)",
    )
    parser.add_argument(
        "--field",
        action="append",
        help="field to rank, repeatable (default: year, difficulty, mode, status, tags, mapper)",
    )
    parser.add_argument("--top", type=int, default=5, help="values shown per field (5)")
    add_json_flag(parser)
    parser.set_defaults(run=_run_describe)
