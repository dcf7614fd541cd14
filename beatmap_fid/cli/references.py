"""Named references: ``reference add NAME SOURCE``, ``reference list``, ``reference remove NAME``
(compare with ``fid GEN --reference NAME``)."""

from __future__ import annotations

import argparse
from typing import Any

from beatmap_fid.cli.core import (
    add_cache_arguments,
    add_extractor_arguments,
    extractor_options,
    store_dir_of,
)
from beatmap_fid.cli.output import add_json_flag, emit

VERBS = ("reference",)


def _row(reference: Any) -> dict[str, Any]:
    return {"name": reference.name, "path": str(reference.path), **reference.provenance}


def _line(row: dict[str, Any]) -> str:
    options = ", ".join(f"{k}={v}" for k, v in (row.get("options") or {}).items())
    extractor = row["extractor"] + (f" ({options})" if options else "")
    maps = f"{row['n_maps']} maps, " if row.get("n_maps") is not None else ""
    return (
        f"{row['name']}: {extractor}, config {row['config_hash']}, {maps}{row['n_vectors']} "
        f"vectors, from {row['source']}, beatmap_fid {row['library_version']}, {row['created']}"
    )


def _run_add(args: argparse.Namespace) -> int:
    from beatmap_fid.references import add_reference

    with store_dir_of(args) as store_dir:
        reference = add_reference(
            args.name,
            args.source,
            extractor=args.extractor,
            extractor_options=extractor_options(args),
            store_dir=store_dir,
            batch_size=args.batch_size,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
    row = _row(reference)
    emit(args, row, f"added {_line(row)}\n  -> {reference.path}")
    return 0


def _run_list(args: argparse.Namespace) -> int:
    from beatmap_fid.references import default_reference_dir, list_references

    rows = [_row(r) for r in list_references()]
    text = "\n".join(_line(row) for row in rows) or f"no references in {default_reference_dir()}"
    emit(args, {"location": str(default_reference_dir()), "references": rows}, text)
    return 0


def _run_remove(args: argparse.Namespace) -> int:
    from beatmap_fid.references import remove_reference

    path = remove_reference(args.name)
    emit(args, {"removed": args.name, "path": str(path)}, f"removed reference {args.name}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reference`` verb and its ``add``, ``list`` and ``remove`` actions."""
    parser = subparsers.add_parser(
        "reference",
        help="named reference statistics with their provenance: add, list, remove "
        "(then 'fid GEN --reference NAME')",
        description="References live in references/ under the cache folder "
        "($BEATMAP_FID_CACHE, see 'cache').",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="embed a folder (or read a store) and keep its statistics")
    add.add_argument("name", help="letters, digits, '.', '_' and '-'")
    add.add_argument("source", help="folder or file of maps, or a store (.h5)")
    add_extractor_arguments(add)
    add_cache_arguments(add)
    add.add_argument("--overwrite", action="store_true", help="replace a reference of that name")
    add_json_flag(add)
    add.set_defaults(run=_run_add)

    listing = actions.add_parser("list", help="every reference with its provenance")
    add_json_flag(listing)
    listing.set_defaults(run=_run_list)

    remove = actions.add_parser("remove", help="delete a reference")
    remove.add_argument("name")
    add_json_flag(remove)
    remove.set_defaults(run=_run_remove)
