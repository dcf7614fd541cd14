"""Verbs and options for more than one machine: ``export``, ``import``, and the ``--engine``
options that ``embed`` and ``index`` take.

``beatmap-fid embed SOURCE -o OUT/ --engine ray --workers 8``   sharded store on a Ray cluster
``beatmap-fid index OUT/ -o X.faiss --engine ray``                IVF index merged on disk
``beatmap-fid export STORE --format npy-parquet -o DIR``          embedding-reader layout
``beatmap-fid import DIR -o STORE.h5``                             and back
"""

from __future__ import annotations

import argparse

from beatmap_fid.cli.output import add_json_flag, emit


def add_engine_arguments(parser: argparse.ArgumentParser, *, gpus: bool) -> None:
    """``--engine``, ``--address``, ``--workers`` (and ``--gpus-per-worker`` with ``gpus``)."""
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: a Ray cluster, writing a sharded store",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto (the running one) or HOST:PORT (default: start a "
        "local cluster)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="Ray workers (default: CPUs, at most 4)"
    )
    if gpus:
        parser.add_argument(
            "--gpus-per-worker", type=float, default=0, help="GPUs per Ray worker (default 0)"
        )


def _run_export(args: argparse.Namespace) -> int:
    from beatmap_fid.interchange import export_npy_parquet

    folder = export_npy_parquet(
        args.store, args.output, rows_per_file=args.rows_per_file, progress=not args.quiet
    )
    from beatmap_fid.store import open_store

    with open_store(args.store) as store:
        rows = len(store)
    emit(
        args,
        {"store": args.store, "output": str(folder), "format": args.format, "rows": rows},
        f"{rows} rows of {args.store} -> {folder} ({args.format})",
    )
    return 0


def _run_import(args: argparse.Namespace) -> int:
    from beatmap_fid.interchange import import_npy_parquet
    from beatmap_fid.store import open_store

    path = import_npy_parquet(
        args.folder,
        args.output,
        extractor=args.extractor,
        id_column=args.id_column,
        label_column=args.label_column,
        progress=not args.quiet,
    )
    with open_store(path) as store:
        rows, extractor = len(store), store.extractor
    emit(
        args,
        {"folder": args.folder, "store": str(path), "rows": rows, "extractor": extractor},
        f"{rows} rows ({extractor}) in {path}",
    )
    return 0


VERBS = ("export", "import")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``import`` verbs."""
    from beatmap_fid.interchange import FORMATS, ROWS_PER_FILE

    export = subparsers.add_parser(
        "export",
        help="write a store as .npy embeddings + .parquet metadata (embedding-reader layout)",
        description="Write a store or sharded store as index-aligned embeddings/*.npy and "
        "metadata/*.parquet (id, label, fingerprint, n_events), the layout embedding-reader, "
        "autofaiss and clip-retrieval read, plus store.json (extractor and config).",
    )
    export.add_argument("store", help="store (.h5), or sharded store (manifest.json or folder)")
    export.add_argument("--format", choices=FORMATS, default="npy-parquet", help="(npy-parquet)")
    export.add_argument("-o", "--output", required=True, help="folder to write (new or empty)")
    export.add_argument(
        "--rows-per-file", type=int, default=ROWS_PER_FILE, help=f"rows per file ({ROWS_PER_FILE})"
    )
    export.add_argument("--quiet", action="store_true", help="no progress bars")
    add_json_flag(export)
    export.set_defaults(run=_run_export)

    imported = subparsers.add_parser(
        "import",
        help="read .npy embeddings + .parquet metadata into a store",
        description="Read a folder of embeddings/*.npy and metadata/*.parquet (written by "
        "`beatmap-fid export`, embedding-reader, autofaiss or clip-retrieval) into a store.",
    )
    imported.add_argument("folder", help="folder with embeddings/ and metadata/")
    imported.add_argument("-o", "--output", required=True, help="store to write (.h5)")
    imported.add_argument(
        "--extractor", default=None, help="name of the vectors when the folder has no store.json"
    )
    imported.add_argument("--id-column", default="id", help="metadata column of ids (id)")
    imported.add_argument("--label-column", default="label", help="metadata column of labels")
    imported.add_argument("--quiet", action="store_true", help="no progress bars")
    add_json_flag(imported)
    imported.set_defaults(run=_run_import)
