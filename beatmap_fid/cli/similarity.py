"""Similarity verbs: ``index``, ``search``, ``knn`` and ``nearest``.

``beatmap-fid index STORE.h5 -o X.faiss``     build a self-tuned FAISS index of a store
``beatmap-fid search X.faiss QUERY... -k 10``  nearest items of ids in the index or of files
``beatmap-fid knn STORE.h5 --eval loo``        duplicate- and group-aware k-NN evaluation
``beatmap-fid nearest GEN REAL``               generated maps closest to real ones (copies)
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from beatmap_fid.cli.core import (
    add_extractor_arguments,
    extractor_options,
    extractor_options_from,
)
from beatmap_fid.cli.output import FALLBACK, add_json_flag, emit
from beatmap_fid.cli.scale import add_engine_arguments
from beatmap_fid.errors import InputError

VERBS = ("index", "search", "knn", "nearest")

_ID_HEADERS = ("id", "ids", "item", "item_id")


def read_id_mapping(path: str | Path, column: str) -> dict[str, str]:
    """``id -> value`` from a CSV (``id,value`` rows, optional header naming ``column``) or a
    JSON file (an object ``{id: value}`` or a list of ``{"id": ..., column: ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{column} file {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"{path} is not valid JSON: {error}") from error
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items() if v is not None}
        if isinstance(data, list) and all(isinstance(row, dict) for row in data):
            try:
                return {
                    str(row["id"]): str(row[column]) for row in data if row.get(column) is not None
                }
            except KeyError as error:
                raise InputError(f"{path}: every entry needs 'id' and '{column}'") from error
        raise InputError(f"{path}: expected an object {{id: {column}}} or a list of entries")
    rows = [
        row for row in csv.reader(text.splitlines()) if row and any(cell.strip() for cell in row)
    ]
    if not rows:
        raise InputError(f"{path} is empty")
    value_column = 1
    if rows[0][0].strip().lower() in _ID_HEADERS:
        header = [cell.strip().lower() for cell in rows[0]]
        value_column = header.index(column) if column in header else 1
        rows = rows[1:]
    mapping = {}
    for number, row in enumerate(rows, start=1):
        if len(row) <= value_column:
            raise InputError(f"{path}: row {number} has no {column} column: {row}")
        if row[value_column].strip():
            mapping[row[0].strip()] = row[value_column].strip()
    return mapping


def _run_index(args: argparse.Namespace) -> int:
    from beatmap_fid.index import build_index
    from beatmap_fid.store import open_store

    started = time.perf_counter()
    family = None if args.family == "auto" else args.family
    if args.engine == "ray":
        from beatmap_fid.shard_index import build_sharded_index

        vindex = build_sharded_index(
            args.store,
            args.output,
            metric=args.metric,
            recall=args.recall,
            k=args.k,
            memory_budget=args.memory,
            family=family,
            address=args.address,
            workers=args.workers,
            progress=not args.quiet,
        )
        path = Path(args.output)
    else:
        with open_store(args.store) as store:
            vindex = build_index(
                store,
                metric=args.metric,
                recall=args.recall,
                k=args.k,
                memory_budget=args.memory,
                family=family,
                progress=not args.quiet,
            )
        path = vindex.save(args.output)
    seconds = time.perf_counter() - started
    tuning = vindex.tuning
    result = {
        "store": args.store,
        "output": str(path),
        "family": vindex.family,
        "factory": vindex.plan.factory,
        "reason": vindex.plan.reason,
        "n": len(vindex),
        "dim": vindex.dim,
        "metric": vindex.metric,
        "memory_bytes": vindex.plan.memory_bytes,
        "search_params": vindex.search_params,
        "recall_target": args.recall,
        "recall_measured": tuning.recall_eval if tuning else None,
        "recall_reached": tuning.reached if tuning else None,
        "k": args.k,
        "seconds": seconds,
    }
    if vindex.family == "flat":
        recall_text = "exact search"
    elif tuning and tuning.n_eval_queries:
        recall_text = (
            f"recall@{tuning.k} {tuning.recall_eval:.3f} on {tuning.n_eval_queries} held-out "
            f"queries (target {args.recall})"
        )
    else:
        recall_text = "too few vectors to tune: exhaustive search parameters"
    params = ", ".join(f"{k}={v}" for k, v in vindex.search_params.items()) or "exact"
    emit(
        args,
        result,
        f"{len(vindex)} vectors of dimension {vindex.dim} -> {path} ({vindex.plan.factory}, "
        f"{params}); {recall_text}; {seconds:.1f} s",
    )
    return 0


def _run_search(args: argparse.Namespace) -> int:
    from beatmap_fid.errors import SkipLog
    from beatmap_fid.index import load_index

    vindex = load_index(args.index, mmap=args.mmap, verify_file=not args.no_verify_file)
    skipped = SkipLog()
    found = vindex.search(
        args.queries,
        args.k,
        exclude_self=not args.include_self,
        skipped=skipped,
        extractor_options=extractor_options_from(args.option),
    )
    result = found.to_dict()
    result["index"] = args.index
    result["skipped"] = [{"source": s.source, "reason": s.reason} for s in skipped.entries]
    lines = []
    closeness = "similarity" if found.metric == "ip" else "distance"
    for query in result["queries"]:
        lines.append(f"{query['query']}:")
        for rank, neighbour in enumerate(query["neighbours"], start=1):
            label = f"  [{neighbour['label']}]" if neighbour.get("label") else ""
            lines.append(
                f"  {rank:>3}. {neighbour['id']}  {closeness} {neighbour['distance']:.4g}{label}"
            )
    if skipped:
        lines.append(skipped.summary(verbose=args.verbose))
    emit(args, result, "\n".join(lines))
    return 0


def _labels_for(
    store_ids: np.ndarray, args: argparse.Namespace, store_labels
) -> tuple[np.ndarray, int]:
    """Per stored row its label ("" = none), and how many label-file ids the store lacks."""
    if args.labels:
        mapping = read_id_mapping(args.labels, "label")
        labels = np.array([mapping.get(str(i), "") for i in store_ids], dtype=object)
        return labels, len(set(mapping) - set(store_ids.tolist()))
    if store_labels is not None:
        return np.asarray(store_labels, dtype=object), 0
    raise InputError(f"{args.store} holds no labels: pass --labels FILE (CSV or JSON)")


def _run_knn(args: argparse.Namespace) -> int:
    from beatmap_fid.knn import evaluate_knn
    from beatmap_fid.store import open_store

    with open_store(args.store) as store:
        if len(store) == 0:
            raise InputError(f"store {args.store} holds no vectors")
        ids = np.asarray(store.ids).astype(str)
        labels, unknown_ids = _labels_for(ids, args, store.labels)
        labelled = labels != ""
        if not labelled.any():
            raise InputError(
                "no stored id has a label: check that the label file uses the store's ids"
            )
        vectors = store.vectors(np.flatnonzero(labelled))
    groups: list[str] | str | None = None if args.group_by == "none" else "map"
    if args.groups:
        mapping = read_id_mapping(args.groups, "group")
        missing = [i for i in ids[labelled] if i not in mapping]
        if missing:
            raise InputError(
                f"{len(missing)} labelled ids have no group in {args.groups} (first: "
                f"{missing[0]!r}); every evaluated row needs one, or leaks go unnoticed"
            )
        groups = [mapping[i] for i in ids[labelled]]
    report = evaluate_knn(
        vectors,
        labels[labelled].astype(str),
        ids=ids[labelled],
        method=args.eval,
        n_neighbors=args.k,
        weights=args.weights,
        temperature=args.temperature,
        metric=args.metric,
        groups=groups,
        exclude_duplicates=not args.keep_duplicates,
        n_splits=args.folds,
        progress=not args.quiet,
    )
    result = report.to_dict()
    result["store"] = args.store
    result["n_unlabelled"] = int((~labelled).sum())
    result["n_unknown_label_ids"] = unknown_ids
    text = report.to_text()
    if result["n_unlabelled"]:
        text += f"\n{result['n_unlabelled']} stored rows without a label were left out"
    if unknown_ids:
        text += f"\n{unknown_ids} ids of the label file are not in the store (ignored)"
    if args.report_dir:
        paths = report.save(args.report_dir)
        result["report_files"] = {kind: str(p) for kind, p in paths.items()}
        text += f"\nreport written to {args.report_dir}"
    emit(args, result, text)
    return 0


def _run_nearest(args: argparse.Namespace) -> int:
    from beatmap_fid.api import skip_entries
    from beatmap_fid.evaluate import load_sides
    from beatmap_fid.knn import map_memorisation_scores, memorisation_scores, window_events
    from beatmap_fid.store import open_store

    real_side, gen_side = load_sides(
        args.real,
        args.generated,
        args.extractor,
        store_dir=args.store_dir,
        batch_size=args.batch_size,
        progress=not args.quiet,
        extractor_options=extractor_options(args),
    )
    inputs = {}
    for name, side in (("generated", gen_side), ("real", real_side)):
        ids = [str(i) for i in side.ids]
        events = None
        if side.summary.store_path:  # event counts recorded beside the vectors
            with open_store(side.summary.store_path) as store:
                events = window_events(store, ids)
        inputs[name] = (side.vectors, ids, events)
    (gen_v, gen_ids, gen_events), (real_v, real_ids, real_events) = inputs.values()
    common = {
        "metric": args.metric,
        "threshold": args.threshold,
        "generated_ids": gen_ids,
        "real_ids": real_ids,
        "generated_events": gen_events,
        "real_events": real_events,
    }
    if args.windows:
        report = memorisation_scores(gen_v, real_v, k=args.k, **common)
    else:
        report = map_memorisation_scores(gen_v, real_v, **common)
    result = report.to_dict(top=args.top)
    result.update(generated=args.generated, real=args.real)
    text = report.to_text(top=args.top)
    for name, side in (("generated", gen_side), ("real", real_side)):
        result[f"{name}_skipped"] = skip_entries(side.summary.skipped)
        result[f"{name}_fallbacks"] = skip_entries(side.summary.fallbacks)
        if side.summary.skipped:
            text += f"\n{name}: {side.summary.skipped.summary(verbose=args.verbose)}"
        if side.summary.fallbacks:
            text += (
                f"\n{name}: {side.summary.fallbacks.summary(verbose=args.verbose, what=FALLBACK)}"
            )
    emit(args, result, text)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``index``, ``search``, ``knn`` and ``nearest`` verbs."""
    from beatmap_fid.index import FAMILIES, METRICS
    from beatmap_fid.knn import WEIGHTS

    index = subparsers.add_parser(
        "index",
        help="build a FAISS index of a store, tuned to a recall target",
        description="Choose, train and tune a FAISS index over an embedding store; writes "
        "X.faiss and its sidecar X.faiss.json (parameters, ids, config hash). With --engine "
        "ray the store's parts are added in parallel Ray tasks to a trained IVF index whose "
        "inverted lists are merged on disk (X.faiss.ivfdata).",
    )
    index.add_argument("store", help="embedding store (.h5) or sharded store (folder)")
    index.add_argument("-o", "--output", required=True, help="index file to write (X.faiss)")
    index.add_argument("--recall", type=float, default=0.95, help="recall@k target (0.95)")
    index.add_argument("-k", type=int, default=10, help="k of the recall target (10)")
    index.add_argument("--memory", default=None, help="memory budget, e.g. 4G (default: none)")
    index.add_argument("--metric", choices=METRICS, default="l2", help="distance (l2)")
    index.add_argument(
        "--family", choices=("auto", *FAMILIES), default="auto", help="force an index family"
    )
    index.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_arguments(index, gpus=False)
    add_json_flag(index)
    index.set_defaults(run=_run_index)

    search = subparsers.add_parser(
        "search",
        help="nearest indexed items of ids or files",
        description="Search an index for the nearest items of each query: an id held by the "
        "index (the item itself is left out) or a file, embedded with the extractor of the "
        "index's store, rebuilt with the options the store recorded. The sidecar and the index "
        "file are checked against their checksums first. k larger than the index is clipped "
        "with a warning.",
    )
    search.add_argument("index", help="index file written by `beatmap-fid index`")
    search.add_argument("queries", nargs="+", metavar="QUERY", help="id in the index, or a file")
    search.add_argument("-k", type=int, default=10, help="neighbours per query (10)")
    search.add_argument("--mmap", action="store_true", help="memory-map the index file")
    search.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="extractor option for file queries, added to those the store recorded "
        "(e.g. --option device=cpu)",
    )
    search.add_argument(
        "--no-verify-file",
        action="store_true",
        help="skip the checksum of the index file (one read of it), for a file known intact",
    )
    search.add_argument(
        "--include-self", action="store_true", help="keep an id query's own item in its results"
    )
    search.add_argument("--verbose", action="store_true", help="list every skipped query file")
    add_json_flag(search)
    search.set_defaults(run=_run_search)

    knn = subparsers.add_parser(
        "knn",
        help="k-NN classification accuracy of a store's labels",
        description="Leave-one-out or k-fold k-NN evaluation that keeps exact duplicates and "
        "the other windows of a query's map (the id before '#') out of its neighbours, and "
        "reports the naive figure (windows of one map voting for each other) beside it. Rows "
        "without a label are left out.",
    )
    knn.add_argument("store", help="embedding store (.h5) or sharded store (folder)")
    knn.add_argument("--labels", help="CSV (id,label) or JSON ({id: label}); default: the store's")
    knn.add_argument(
        "--group-by",
        choices=("map", "none"),
        default="map",
        help="keep windows of one map together (map, default) or not (none: naive)",
    )
    knn.add_argument("--groups", help="CSV (id,group) or JSON: your own groups instead of maps")
    knn.add_argument("--eval", choices=("loo", "kfold"), default="loo", help="method (loo)")
    knn.add_argument("-k", type=int, default=5, help="neighbours (5)")
    knn.add_argument("--weights", choices=WEIGHTS, default="uniform", help="votes (uniform)")
    knn.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (1)")
    knn.add_argument("--metric", choices=METRICS, default="l2", help="distance (l2)")
    knn.add_argument("--folds", type=int, default=5, help="folds for kfold (5)")
    knn.add_argument(
        "--keep-duplicates", action="store_true", help="let exact duplicates vote (naive)"
    )
    knn.add_argument("--report-dir", help="write knn_report.json/.txt and knn_confusion.png")
    knn.add_argument("--quiet", action="store_true", help="no progress bars")
    add_json_flag(knn)
    knn.set_defaults(run=_run_knn)

    nearest = subparsers.add_parser(
        "nearest",
        help="generated maps suspiciously close to real ones (copies)",
        description="For each generated map, the real map it sits nearest and a memorisation "
        "score: the mean distance of its windows to the nearest real window, divided by the "
        "same for that real map against the other real maps (about 1: as new as a real map; "
        "near 0: a copy). Windows without beatmap events (breaks, intros) are left out. Most "
        "suspicious first. --windows scores single windows instead.",
    )
    nearest.add_argument("generated", help="generated maps: folder, files or a store (.h5)")
    nearest.add_argument("real", help="real maps: folder, files or a store (.h5)")
    add_extractor_arguments(nearest)
    nearest.add_argument("--store-dir", default=None, help="where stores of folders are kept")
    nearest.add_argument("--windows", action="store_true", help="score windows, not maps")
    nearest.add_argument("--top", type=int, default=20, help="maps (windows) to list (20)")
    nearest.add_argument("-k", type=int, default=5, help="with --windows: real neighbours (5)")
    nearest.add_argument("--metric", choices=("l2", "cosine"), default="l2", help="distance (l2)")
    nearest.add_argument("--threshold", type=float, default=0.5, help="flag scores below (0.5)")
    add_json_flag(nearest)
    nearest.set_defaults(run=_run_nearest)
