"""Mapper-classifier verbs: ``classify`` (who mapped this?) and ``train-classifier``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.cli.output import add_json_flag, emit
from beatmap_fid.errors import InputError, NonFiniteError

VERBS = ("classify", "train-classifier")


def load_mapper_names(path: str | Path) -> dict[str, str]:
    """Mapper user id (as text) → name, from the reference's ``beatmap_users.json``.

    That file is a list of ``{"id": beatmap id, "user_id": ..., "username": [names...]}``; the
    first name is used. A plain JSON object ``{user id: name}`` is accepted too.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read mappers file {path}: {error}") from error
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    names: dict[str, str] = {}
    try:
        for item in data:
            usernames = item.get("username") or []
            if isinstance(usernames, str):
                usernames = [usernames]
            names[str(item["user_id"])] = str(usernames[0]) if usernames else "Unknown"
    except (TypeError, KeyError, AttributeError) as error:
        raise InputError(
            f"mappers file {path} is neither a list of {{'user_id', 'username'}} records "
            f"nor a {{user id: name}} object ({error!r})"
        ) from error
    return names


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted.astype(np.float64))
    return exp / exp.sum(axis=-1, keepdims=True)


def _ranking(
    logits: np.ndarray,
    probabilities: np.ndarray,
    labels: list[Any],
    names: dict[str, str],
    top: int,
) -> list[dict[str, Any]]:
    order = np.argsort(-probabilities, kind="stable")[:top]
    return [
        {
            "rank": rank + 1,
            "class": int(index),
            "mapper": labels[index],
            "name": names.get(str(labels[index])),
            "logit": float(logits[index]),
            "probability": float(probabilities[index]),
        }
        for rank, index in enumerate(order)
    ]


def _ranking_text(title: str, ranking: list[dict[str, Any]]) -> list[str]:
    lines = [title]
    for row in ranking:
        who = f"{row['name']} ({row['mapper']})" if row["name"] else str(row["mapper"])
        lines.append(
            f"  {row['rank']:>3}. {who:<40} p = {row['probability']:.4f}  logit = {row['logit']:.3f}"
        )
    return lines


def _run_classify(args: argparse.Namespace) -> int:
    from beatmap_fid.beatmap.reading import missing_audio_reason, read_beatmap_file
    from beatmap_fid.extractors.mapper_classifier.checkpoint import load_checkpoint
    from beatmap_fid.extractors.mapper_classifier.extractor import (
        MapperClassifierExtractor,
        event_stream,
        start_ms_of_sample,
        window_payload,
        window_start_samples,
    )

    if args.top < 1:
        raise InputError("--top must be at least 1")
    beatmap_file = read_beatmap_file(args.beatmap)
    audio_path = Path(args.audio) if args.audio else beatmap_file.audio_path
    if audio_path is None:
        reason = missing_audio_reason(beatmap_file.beatmap.audio_filename)
        raise InputError(f"{args.beatmap}: {reason}; pass it with --audio")
    names = load_mapper_names(args.mappers) if args.mappers else {}
    loaded = load_checkpoint(args.checkpoint)
    classifier = MapperClassifierExtractor(loaded, device=args.device, precision=args.precision)
    settings = loaded.settings
    audio = classifier.load_audio(audio_path)
    events, times = event_stream(beatmap_file.beatmap, settings)

    if args.time is not None:
        if args.time < 0:
            raise InputError("--time must not be negative")
        starts_ms = [args.time * 1000]
    else:
        samples = window_start_samples(len(audio), settings)
        # A song shorter than one window still gets one (zero-padded) window.
        starts_ms = [start_ms_of_sample(s, settings.sample_rate) for s in samples] or [0.0]
    logits = np.concatenate(
        [
            classifier.forward(
                [
                    window_payload(audio, events, times, start, settings, classifier.tokenizer)
                    for start in starts_ms[i : i + args.batch_size]
                ]
            )[1]
            for i in range(0, len(starts_ms), args.batch_size)
        ]
    )
    if not np.isfinite(logits).all():
        raise NonFiniteError(
            f"{loaded.path}: the classifier gave NaN or infinite logits for {args.beatmap} "
            f"(precision {args.precision}); no ranking can be made from them"
        )
    probabilities = _softmax(logits)
    labels = loaded.tokenizer.labels()
    top = min(args.top, len(labels))
    result: dict[str, Any] = {
        "beatmap": str(args.beatmap),
        "audio": str(audio_path),
        "checkpoint": str(loaded.path),
        "num_classes": len(labels),
        "window_seconds": settings.window_seconds,
    }
    lines = [f"{args.beatmap}: {len(starts_ms)} window(s) of {settings.window_seconds:.3f} s"]
    if args.all_windows or args.time is not None:
        result["windows"] = [
            {
                "start_seconds": start / 1000,
                "top": _ranking(logits[k], probabilities[k], labels, names, top),
            }
            for k, start in enumerate(starts_ms)
        ]
        for window in result["windows"]:
            lines += _ranking_text(f"window at {window['start_seconds']:.3f} s:", window["top"])
    else:
        result["average"] = _ranking(
            logits.mean(axis=0), probabilities.mean(axis=0), labels, names, top
        )
        lines += _ranking_text(
            "averaged over the windows (mean probability, mean logit):", result["average"]
        )
    emit(args, result, "\n".join(lines))
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from beatmap_fid.extractors.mapper_classifier.train import TrainingOptions, train_classifier

    options = TrainingOptions(
        model_size=args.model_size,
        epochs=args.epochs,
        max_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        min_maps_per_label=args.min_maps_per_label,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
    )
    result = train_classifier(
        args.maps,
        args.output,
        labels=args.labels,
        options=options,
        init_checkpoint=args.init_checkpoint,
        resume=args.resume,
        progress=not args.quiet,
    )
    summary = result.to_dict()
    text = [
        f"trained {result.steps} steps on {result.train_maps} maps ({result.num_classes} labels); "
        f"checkpoint: {result.checkpoint}",
    ]
    if result.validation:
        last = result.validation[-1]
        text.append(
            f"validation at step {last['step']}: top-1 {last['top1']:.3f}, "
            f"top-10 {last['top10']:.3f} on {last['windows']} windows "
            f"(chance {1 / result.num_classes:.3f})"
        )
    if result.skipped:
        text.append(f"{len(result.skipped)} maps skipped (see --json for reasons)")
    emit(args, summary, "\n".join(text))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``classify`` and ``train-classifier`` verbs."""
    classify = subparsers.add_parser(
        "classify",
        help="rank the mappers the mapper classifier thinks made a beatmap",
        description="Run the mapper classifier on a beatmap (with its audio) and print the "
        "most likely mappers with logits and softmax probabilities, averaged over the map's "
        "8.184 s windows, per window (--all-windows) or for one window (--time).",
    )
    classify.add_argument("beatmap", help=".osu file")
    classify.add_argument(
        "--checkpoint",
        required=True,
        help="model.ckpt, a folder holding it, or a Hugging Face repo id (OliBomby/osu-classifier)",
    )
    where = classify.add_mutually_exclusive_group()
    where.add_argument("--time", type=float, help="classify the window starting at SECONDS")
    where.add_argument("--all-windows", action="store_true", help="one ranking per window")
    classify.add_argument("--top", type=int, default=10, help="how many mappers to list (10)")
    classify.add_argument(
        "--mappers", help="beatmap_users.json (user id → name) to print mapper names"
    )
    classify.add_argument("--audio", help="audio file (default: the one the beatmap names)")
    classify.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    classify.add_argument(
        "--precision", default="float32", choices=("float32", "bfloat16", "float16")
    )
    classify.add_argument("--batch-size", type=int, default=8, help="windows per batch (8)")
    add_json_flag(classify)
    classify.set_defaults(run=_run_classify)

    train = subparsers.add_parser(
        "train-classifier",
        help="train or fine-tune a mapper classifier on a folder of beatmaps with audio",
        description="Train a mapper classifier (checkpoint layout of the reference) on the "
        "maps under MAPS with their audio. Labels are the Creator field unless --labels maps "
        "beatmaps to labels. Writes OUTPUT/last.ckpt, OUTPUT/best.ckpt and OUTPUT/metrics.json.",
    )
    train.add_argument("maps", help="folder of .osu files with their audio")
    train.add_argument("-o", "--output", required=True, help="output folder")
    train.add_argument(
        "--labels",
        help="JSON object or two-column CSV: beatmap (relative path, file name or BeatmapID) "
        "→ label; maps not listed are left out",
    )
    train.add_argument(
        "--model-size", default="base", choices=("tiny", "base", "small"), help="Whisper size"
    )
    train.add_argument("--epochs", type=float, default=10.0, help="passes over the windows (10)")
    train.add_argument("--steps", type=int, help="number of optimizer steps (overrides --epochs)")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (1e-4)")
    train.add_argument("--warmup-steps", type=int, help="linear warm-up steps (5%% of the steps)")
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--eval-every", type=int, default=200, help="steps between validations")
    train.add_argument(
        "--checkpoint-every", type=int, default=1000, help="steps between checkpoints"
    )
    train.add_argument(
        "--min-maps-per-label", type=int, default=2, help="leave out rarer labels (2)"
    )
    train.add_argument(
        "--validation-fraction",
        type=float,
        default=0.2,
        help="share of each label's maps held out for validation (0.2; at least one map "
        "stays in training)",
    )
    train.add_argument(
        "--init-checkpoint", help="fine-tune from this checkpoint (new classifier head)"
    )
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.ckpt")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", help="cpu, cuda ... (default: cuda if available)")
    train.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_flag(train)
    train.set_defaults(run=_run_train)
