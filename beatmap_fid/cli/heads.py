"""``train-head``: train a score head on a store's embeddings, scored on held-out maps against a
baseline (:func:`beatmap_fid.heads.train_head_held_out`); ``score`` applies the head."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from beatmap_fid.cli.output import add_json_flag, emit
from beatmap_fid.errors import InputError

VERBS = ("train-head",)


def _format(value: float) -> str:
    return f"{value:.4g}"


def train_head_text(summary: dict[str, Any]) -> str:
    """The readable output of ``train-head``."""
    held = summary["held_out"]
    metric = "RMSE" if held["metric"] == "rmse" else "accuracy"
    baseline = "the training mean" if held["metric"] == "rmse" else "the most frequent label"
    unit = "maps" if held["grouping"] == "map" else f"{held['grouping']} groups"
    lines = [
        f"{summary['architecture']} {summary['kind']} head on {summary['extractor']} embeddings "
        f"(config {summary['config_hash']}), {held['n_train_rows']} rows of "
        f"{held['n_train_groups']} {unit} for training",
        f"held out: {held['n_test_rows']} rows of {held['n_test_groups']} {unit}, "
        f"never seen in training (split by {held['grouping']})",
        f"  {metric} per {held['grouping'] if held['grouping'] != 'none' else 'row'}: "
        f"{_format(held['groups']['head'])}  (baseline, {baseline}: "
        f"{_format(held['groups']['baseline'])})",
        f"  {metric} per row (window): {_format(held['rows']['head'])}  (baseline "
        f"{_format(held['rows']['baseline'])})",
    ]
    if held.get("unseen_test_labels"):
        lines.append(
            f"  {held['unseen_test_labels']} held-out group(s) have a label absent from training"
        )
    verdict = "beats" if held["beats_baseline"] else "does NOT beat"
    lines.append(f"the head {verdict} its baseline on the held-out {unit}")
    if summary["unlabelled"]:
        lines.append(f"{summary['unlabelled']} stored rows without a label were left out")
    lines.append(f"-> {summary['output']}")
    return "\n".join(lines)


def _run_train_head(args: argparse.Namespace) -> int:
    from beatmap_fid.api import is_store_path
    from beatmap_fid.cli.similarity import read_id_mapping
    from beatmap_fid.extractors.base import map_id
    from beatmap_fid.heads import train_head_held_out
    from beatmap_fid.store import open_store

    if not is_store_path(args.store):
        raise InputError(
            f"{args.store} is not an embedding store: embed the maps first "
            "('beatmap-fid embed FOLDER -o STORE.h5')"
        )
    labels = read_id_mapping(args.labels, "label")
    with open_store(args.store) as store:
        ids = [str(i) for i in store.ids]
    labelled = sum(i in labels or map_id(i) in labels for i in ids)
    if labelled == 0:
        raise InputError(
            f"no row of {args.store} has a label in {args.labels}: label rows by their id "
            f"(e.g. {ids[0]!r}) or by their map ({map_id(ids[0])!r})"
            if ids
            else f"{args.store} holds no rows"
        )
    head, evaluation = train_head_held_out(
        args.store,
        labels,
        kind=args.task,
        group_by=args.group_by,
        test_fraction=args.test_fraction,
        seed=args.seed,
        architecture=args.architecture,
        max_epochs=args.epochs,
        progress=not args.quiet,
    )
    output = head.save(args.output)
    summary = {
        "output": str(output),
        "store": args.store,
        "kind": head.kind,
        "architecture": head.architecture,
        "extractor": head.extractor,
        "config_hash": head.config_hash,
        "labels": head.label_names,
        "unlabelled": len(ids) - labelled,
        "held_out": evaluation.to_dict(),
        "validation": dict(head.report.val_metrics) if head.report else {},
    }
    emit(args, summary, train_head_text(summary))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-head`` verb."""
    parser = subparsers.add_parser(
        "train-head",
        help="train a score head (regression or classification) on a store's embeddings; "
        "report it on held-out maps against a baseline; use it with 'score --head'",
        description="Labels are per row id or per map (the id without its '#k' window number). "
        "A share of the maps (or folders) is held out; the head trains on the rest and is "
        "scored on them against a baseline that ignores the embeddings (the training mean, or "
        "the most frequent training label). The head file records the store's extractor and "
        "config hash: 'score' refuses embeddings of another configuration.",
    )
    parser.add_argument("store", help="embedding store (.h5), e.g. from 'beatmap-fid embed'")
    parser.add_argument(
        "--labels", required=True, help="CSV (id,label) or JSON ({id: label}); ids or maps"
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="head file (.pt)")
    parser.add_argument(
        "--task",
        choices=("regression", "classification"),
        default="regression",
        help="predict a number (regression, default) or a label (classification)",
    )
    parser.add_argument(
        "--group-by",
        choices=("map", "folder", "none"),
        default="map",
        help="keep the windows of one map (map, default) or of one folder, a beatmap set "
        "(folder), on one side of the held-out split",
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of groups held out (0.2)"
    )
    parser.add_argument(
        "--architecture", choices=("mlp", "linear"), default="mlp", help="network (mlp)"
    )
    parser.add_argument("--epochs", type=int, default=200, help="most epochs (200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and training")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_flag(parser)
    parser.set_defaults(run=_run_train_head)
