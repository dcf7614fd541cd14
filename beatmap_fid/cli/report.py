"""Evaluation verbs: ``report`` (JSON + self-contained HTML report) and ``score`` (apply a
trained score head, filter and copy)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from beatmap_fid.cli.core import (
    add_cache_arguments,
    add_device_argument,
    add_extractor_arguments,
    add_output_arguments,
    extractor_options,
    extractor_options_from,
    store_dir_of,
)
from beatmap_fid.cli.output import FALLBACK, add_json_flag, emit
from beatmap_fid.errors import InputError

VERBS = ("report", "score")


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.4g}"


def _grouped_notes(notes: dict[str, str]) -> dict[str, list[str]]:
    """The sections left out, grouped by their (shared) reason."""
    grouped: dict[str, list[str]] = {}
    for name, note in notes.items():
        grouped.setdefault(note, []).append(name)
    return grouped


def _report_text(data: dict[str, Any], html_path: Path, top: int) -> str:
    metrics = data["metrics"]
    lines = [data["title"]]
    if "fid" in metrics:
        interval = (
            f"  (95% CI {_format(metrics['fid_low'])} – {_format(metrics['fid_high'])})"
            if "fid_low" in metrics
            else ""
        )
        lines.append(f"FID: {_format(metrics['fid'])}{interval}")
    split = data.get("split_half")
    if split:
        lines.append(
            f"FID real vs real (two halves of the real maps): {_format(split['fid_mean'])} "
            f"± {_format(split['fid_std'])}, the scale for reading FID"
        )
    if "fd_inf" in metrics:
        lines.append(f"FD∞: {_format(metrics['fd_inf'])}")
    if "kid" in metrics:
        lines.append(f"KID: {_format(metrics['kid'])} ± {_format(metrics.get('kid_std'))}")
    shown = [k for k in ("precision", "recall", "density", "coverage", "cmmd") if k in metrics]
    if shown:
        lines.append("  ".join(f"{k}: {_format(metrics[k])}" for k in shown))
    if "active_f1" in metrics:
        lines.append(
            f"rhythm F1 active {_format(metrics['active_f1'])}, passive "
            f"{_format(metrics['passive_f1'])}; BPM RMSE {_format(metrics['bpm_rmse'])}; "
            f"drain-time RMSE {_format(metrics['drain_time_rmse'])} s"
        )
    extractors = data.get("extractors") or []
    if len(extractors) > 1:
        for entry in extractors:
            found = entry["metrics"]
            lines.append(
                f"  FID ({entry['name']}): {_format(found.get('fid'))}"
                + (
                    f"  (95% CI {_format(found['fid_low'])} – {_format(found['fid_high'])})"
                    if "fid_low" in found
                    else ""
                )
            )
    paired = (data.get("paired") or {}).get("values") or {}
    if paired:
        lines.append(
            f"calc_fid pairs ({_format(paired.get('paired_maps'))}): SR RMSE "
            f"{_format(paired.get('star_rating_rmse'))}; BPM RMSE (time-integrated) "
            f"{_format(paired.get('bpm_integrated_rmse'))}; drain RMSE (8 s gaps) "
            f"{_format(paired.get('drain_time_gap_rmse'))} s; SSM RMSE "
            f"{_format(paired.get('ssm_rmse'))}"
        )
    by_mode = sorted(k for k in metrics if "@" in k and k.split("@")[0] in ("fid", "active_f1"))
    if by_mode:
        lines.append("per mode: " + ", ".join(f"{k} {_format(metrics[k])}" for k in by_mode))
    shares = data.get("feature_shares")
    if shares:
        top_features = ", ".join(
            f"{row['feature']} {100 * row['share']:.0f}%" for row in shares["features"][:5]
        )
        lines.append(f"descriptor features making up the FID: {top_features}")
    for note, names in _grouped_notes(data["notes"]).items():
        lines.append(f"{', '.join(names)} not shown: {note}")
    lines += [f"warning: {text}" for text in data["warnings"]]
    for name in ("real", "generated"):
        skipped, fallbacks = data[name]["skipped"], data[name]["fallbacks"]
        if skipped or fallbacks:
            lines.append(
                f"{name}: {len(skipped)} skipped, {len(fallbacks)} {FALLBACK} "
                "(listed in the report)"
            )
    maps = data["contributions"]["maps"][:top]
    if maps:
        real_d2 = data["contributions"]["real_mean_distance"]
        lines.append(
            f"generated maps furthest from the real set (mean D²; real windows {real_d2:.4g}):"
        )
        lines += [f"  {m['distance']:>9.4g}  {m['map']}" for m in maps]
    lines.append(f"report: {html_path}")
    return "\n".join(lines)


def _run_report(args: argparse.Namespace) -> int:
    from beatmap_fid.report import build_report

    options: dict[str, dict[str, Any]] = {}
    if args.mapping:
        options["rhythm"] = {"mapping": args.mapping}
        options["paired"] = {"mapping": args.mapping}
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    if args.training_ids or args.training_store:
        options["overlap"] = {
            "training_ids": args.training_ids,
            "training_store": args.training_store,
            "threshold": args.duplicate_threshold,
        }
        if metrics is not None and "overlap" not in metrics:
            metrics.append("overlap")
    with store_dir_of(args) as store_dir:
        result = build_report(
            args.real,
            args.generated,
            args.output,
            extractor=args.extractor,
            metrics=metrics,
            store_dir=store_dir,
            batch_size=args.batch_size,
            projection=args.projection,
            max_points=args.max_points,
            top=args.top,
            curve_seeds=args.seeds,
            seed=args.seed,
            title=args.title,
            progress=not args.quiet,
            extractor_options=extractor_options(args),
            **options,
        )
    summary = {
        "json": str(result.json_path),
        "html": str(result.html_path),
        "metrics": result.data["metrics"],
        "notes": result.data["notes"],
        "warnings": result.data["warnings"],
        "split_half": result.data["split_half"],
        "top_contributors": result.data["contributions"]["maps"][: args.top],
    }
    emit(args, summary, _report_text(result.data, result.html_path, min(args.top, 5)))
    return 0


def _run_score(args: argparse.Namespace) -> int:
    from beatmap_fid.evaluate import copy_sources, score_source
    from beatmap_fid.shards import is_store_path

    if args.copy_to and is_store_path(args.source) and not args.root:
        raise InputError("--copy-to with a store needs --root: the folder its ids are relative to")
    options = extractor_options_from(args.option)
    if args.device is not None and "device" not in options:
        options = extractor_options(args, args.extractor or _head_extractor(args.head))
    result = score_source(
        args.source,
        args.head,
        extractor=args.extractor,
        label=args.label,
        store_dir=args.store_dir,
        batch_size=args.batch_size,
        progress=not args.quiet,
        extractor_options=options,
    )
    passing = result.passing(args.min)
    summary = result.to_dict()
    summary["min"] = args.min
    summary["passing"] = passing
    lines = [f"{result.score_name:>10}  file" + ("  (label)" if result.file_labels else "")]
    for entry in summary["files"][: args.top] if args.top else summary["files"]:
        label = f"  ({entry['label']})" if "label" in entry else ""
        lines.append(f"{entry[result.score_name]:>10.4g}  {entry['file']}{label}")
    if args.min is not None:
        lines.append(f"{len(passing)} of {len(result.files)} files score at least {args.min:g}")
    if args.copy_to:
        root = args.root or args.source
        copied = copy_sources(passing, root, args.copy_to)
        summary["copied"] = [str(p) for p in copied]
        lines.append(f"copied {len(copied)} files to {args.copy_to}")
    if result.skipped:
        lines.append(result.skipped.summary(verbose=args.verbose))
    if result.fallbacks:
        lines.append(result.fallbacks.summary(verbose=args.verbose, what=FALLBACK))
    emit(args, summary, "\n".join(lines))
    return 0


def _head_extractor(head_path: str) -> str:
    from beatmap_fid.heads import load_head

    name = load_head(head_path).extractor
    if name is None:
        raise InputError(f"{head_path} records no extractor: pass --extractor")
    return name


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` and ``score`` verbs."""
    parser = subparsers.add_parser(
        "report",
        help="evaluation report of generated against real: report.json + self-contained "
        "report.html",
    )
    parser.add_argument("real", help="folder of real maps (or files), or a store (.h5)")
    parser.add_argument("generated", help="folder of generated maps (or files), or a store (.h5)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    add_extractor_arguments(parser)
    add_cache_arguments(parser)
    parser.add_argument(
        "--metrics",
        help="comma-separated metric names (default fid,fid_ci,kid,prdc, plus rhythm for "
        "beatmap folders that pair up; FD∞ always)",
    )
    parser.add_argument(
        "--mapping", help="rhythm pairs: JSON {real: generated} or two-column CSV file"
    )
    parser.add_argument(
        "--projection",
        default="auto",
        choices=("auto", "umap", "tsne", "pca"),
        help="2-D map method (auto: UMAP if installed, else t-SNE)",
    )
    parser.add_argument(
        "--max-points", type=int, default=1000, help="vectors in the 2-D map (1000)"
    )
    parser.add_argument("--top", type=int, default=20, help="contributors listed (20)")
    parser.add_argument("--seeds", type=int, default=3, help="FID-against-N curves (3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 2-D map's subsample")
    parser.add_argument("--title", help="report title (default: 'REAL vs GENERATED')")
    parser.add_argument(
        "--training-ids", help="training-set overlap: file of training beatmap ids, one per line"
    )
    parser.add_argument(
        "--training-store",
        help="training-set overlap: store (.h5) of training maps embedded with the first extractor",
    )
    parser.add_argument(
        "--duplicate-threshold",
        type=float,
        default=0.99,
        help="cosine of mean window embeddings from which a map is a near-duplicate (0.99)",
    )
    add_json_flag(parser)
    parser.set_defaults(run=_run_report)

    parser = subparsers.add_parser(
        "score", help="score a folder or store with a trained head; filter and copy"
    )
    parser.add_argument("source", help="folder or file of sources, or a store (.h5)")
    parser.add_argument("--head", required=True, help="head file (.pt) from 'train-head'")
    parser.add_argument(
        "--extractor",
        default=None,
        help="extractor to embed a folder with (default: the head's)",
    )
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="extractor option, repeatable: must rebuild the head's extractor configuration",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="items per batch (default 64)")
    parser.add_argument("--store-dir", default=None, help="where stores of folders are kept")
    parser.add_argument("--label", help="classification heads: score with this label's probability")
    parser.add_argument("--min", type=float, default=None, help="keep files scoring at least this")
    parser.add_argument("--copy-to", help="copy the files that pass to this folder")
    parser.add_argument("--root", help="with a store: the folder its ids are relative to")
    parser.add_argument("--top", type=int, default=0, help="print only the best N files")
    add_device_argument(parser)
    add_output_arguments(parser)
    add_json_flag(parser)
    parser.set_defaults(run=_run_score)
