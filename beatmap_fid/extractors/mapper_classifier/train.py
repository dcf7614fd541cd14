"""Training and fine-tuning the mapper classifier on a folder of beatmaps with audio.

Like the reference's training: windows of (audio, tokens) labelled with the map's mapper,
random window offsets per map and epoch, AdamW, a linear warm-up from half the learning rate
followed by cosine decay, cross-entropy on the logits. Validation runs on held-out maps (the
FID windows of each map) and reports loss, top-1 and top-10 accuracy. Checkpoints use the
loader's layout (:func:`~beatmap_fid.extractors.mapper_classifier.checkpoint.save_checkpoint`)
and carry the optimizer, scheduler, step and random states, so a run can be resumed, and any
checkpoint (the reference's included) can be fine-tuned with a new label set: the classifier
head is then replaced.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from beatmap_fid.errors import InputError, SkipLog, SourceError
from beatmap_fid.extractors.mapper_classifier.checkpoint import (
    ClassifierSettings,
    LoadedClassifier,
    TokenizerState,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from beatmap_fid.extractors.mapper_classifier.extractor import (
    WindowPayload,
    event_stream,
    make_tokenizer,
    resolve_device,
    start_ms_of_sample,
    window_payload,
    window_start_samples,
)

LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
METRICS_FILE = "metrics.json"


@dataclass
class TrainingOptions:
    """How to train. ``settings_overrides`` changes :class:`ClassifierSettings` fields of a
    fresh model (e.g. ``d_model``, ``src_seq_len``); it is ignored when fine-tuning."""

    model_size: str = "base"
    settings_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: float = 10.0
    max_steps: int | None = None
    batch_size: int = 16
    learning_rate: float = 1e-4
    final_learning_rate: float = 1e-6
    warmup_steps: int | None = None
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 200
    checkpoint_every: int = 1000
    max_validation_windows: int = 2000
    min_maps_per_label: int = 2
    validation_fraction: float = 0.2
    seed: int = 0
    device: str | None = None
    precision: str = "float32"
    modes: tuple[int, ...] = (0,)

    def check(self) -> None:
        """Raise :class:`InputError` for values training cannot run with."""
        if self.batch_size < 1 or self.eval_every < 1 or self.checkpoint_every < 1:
            raise InputError("batch size, eval and checkpoint intervals must be at least 1")
        if self.max_steps is None and not self.epochs > 0:
            raise InputError("epochs must be positive (or give a number of steps)")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError("steps must be at least 1")
        if not 0 <= self.validation_fraction < 1:
            raise InputError("validation fraction must be in [0, 1)")
        if not 0 < self.final_learning_rate <= self.learning_rate:
            raise InputError("learning rates must be positive, the final one at most the peak")
        if self.precision not in ("float32", "bfloat16"):
            raise InputError("training precision must be float32 or bfloat16")


@dataclass
class TrainingMap:
    """A labelled map ready for windowing: its events and the key of its audio."""

    id: str
    label: str
    audio_key: str
    events: Any
    times: np.ndarray
    n_samples: int


@dataclass
class TrainingResult:
    """What a training run produced."""

    checkpoint: Path
    best_checkpoint: Path | None
    steps: int
    labels: list[str]
    train_maps: int
    validation_maps: int
    train_losses: list[float]
    validation: list[dict[str, Any]]
    skipped: list[tuple[str, str]]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["checkpoint"] = str(self.checkpoint)
        data["best_checkpoint"] = str(self.best_checkpoint) if self.best_checkpoint else None
        data["skipped"] = [{"source": s, "reason": r} for s, r in self.skipped]
        data["num_classes"] = self.num_classes
        return data


# --- Labels and data -------------------------------------------------------------------------


def load_labels(path: str | Path) -> dict[str, str]:
    """Beatmap → label from a JSON object or a two-column CSV (an optional header row).

    A beatmap is named by its path relative to the maps folder, its file name, or its
    BeatmapID.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise InputError(f"cannot read labels file {path}: {error}") from error
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as error:
            raise InputError(f"labels file {path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise InputError(f"labels file {path} must hold one JSON object: beatmap → label")
        return {str(k): str(v) for k, v in data.items()}
    rows = [row for row in csv.reader(text.splitlines()) if row and any(c.strip() for c in row)]
    if any(len(row) < 2 for row in rows):
        raise InputError(f"labels file {path}: every CSV row needs a beatmap and a label")
    if rows and rows[0][0].strip().lower() in ("beatmap", "map", "file", "path", "id"):
        rows = rows[1:]
    return {row[0].strip(): row[1].strip() for row in rows}


def _label_of(beatmap_file: Any, labels: Mapping[str, str] | None) -> str:
    if labels is None:
        return beatmap_file.creator.strip()
    keys = [beatmap_file.id, beatmap_file.path.name]
    beatmap_id = getattr(beatmap_file.beatmap, "beatmap_id", None)
    if beatmap_id:
        keys.append(str(beatmap_id))
    return next((labels[k] for k in keys if k in labels), "")


def collect_maps(
    maps_dir: str | Path,
    settings: ClassifierSettings,
    skipped: SkipLog,
    *,
    labels: Mapping[str, str] | None = None,
    modes: Collection[int] = (0,),
    progress: bool = False,
) -> tuple[list[TrainingMap], dict[str, np.ndarray]]:
    """Labelled maps with audio under ``maps_dir`` and their decoded audio (by audio key),
    loaded as the reference trains on it (:func:`beatmap_fid.beatmap.pcm.load_pcm_audio`)."""
    from beatmap_fid.beatmap.pcm import load_pcm_audio
    from beatmap_fid.beatmap.reading import iter_beatmap_files

    maps: list[TrainingMap] = []
    audio: dict[str, np.ndarray] = {}
    for beatmap_file in iter_beatmap_files(maps_dir, skipped, modes=modes, progress=progress):
        label = _label_of(beatmap_file, labels)
        if not label:
            skipped.add(beatmap_file.id, "no label: no Creator field or not in the labels file")
            continue
        if beatmap_file.audio_path is None:
            skipped.add(beatmap_file.id, "no audio: the audio file it names is missing")
            continue
        key = str(beatmap_file.audio_path)
        try:
            if key not in audio:
                audio[key] = load_pcm_audio(beatmap_file.audio_path, settings.sample_rate)
            events, times = event_stream(beatmap_file.beatmap, settings)
        except (SourceError, InputError) as error:
            skipped.add(beatmap_file.id, str(error))
            continue
        if len(audio[key]) <= settings.window_samples:
            skipped.add(beatmap_file.id, "too short: the audio is shorter than one window")
            continue
        maps.append(TrainingMap(beatmap_file.id, label, key, events, times, len(audio[key])))
    return maps, audio


def split_maps(
    maps: list[TrainingMap], validation_fraction: float, rng: np.random.Generator
) -> tuple[list[TrainingMap], list[TrainingMap]]:
    """Hold out about ``validation_fraction`` of each label's maps (at least one map of a label
    with two or more when the fraction is positive), keeping at least one map in training."""
    by_label: dict[str, list[TrainingMap]] = defaultdict(list)
    for item in maps:
        by_label[item.label].append(item)
    train: list[TrainingMap] = []
    validation: list[TrainingMap] = []
    for label in sorted(by_label):
        group = by_label[label]
        order = rng.permutation(len(group))
        n_validation = 0
        if validation_fraction > 0 and len(group) >= 2:
            n_validation = min(len(group) - 1, max(1, round(len(group) * validation_fraction)))
        validation += [group[i] for i in order[:n_validation]]
        train += [group[i] for i in order[n_validation:]]
    return train, validation


# --- Model setup -----------------------------------------------------------------------------


def fresh_model(labels: list[str], options: TrainingOptions) -> LoadedClassifier:
    """A newly initialised classifier of ``options.model_size`` with the default vocabulary."""
    from beatmap_fid.beatmap.events import EventConfig
    from beatmap_fid.beatmap.tokenizer import Tokenizer

    shape = ClassifierSettings.for_size(
        options.model_size, num_classes=len(labels), vocab_size=1, **options.settings_overrides
    )
    vocabulary = Tokenizer.from_config(
        EventConfig.from_mapping(shape.event_options),
        src_seq_len=shape.src_seq_len,
        hop_length=shape.hop_length,
        sample_rate=shape.sample_rate,
    )
    tokenizer = TokenizerState(
        event_ranges=[(r.type.value, r.min_value, r.max_value) for r in vocabulary.event_ranges],
        class_index={label: i for i, label in enumerate(labels)},
        offset=vocabulary.offset,
    )
    settings = dataclasses.replace(shape, vocab_size=tokenizer.vocab_size)
    return LoadedClassifier(
        model=build_model(settings),
        settings=settings,
        tokenizer=tokenizer,
        config=settings.to_config(),
        path=Path(),
        sha256="",
    )


def with_new_labels(loaded: LoadedClassifier, labels: list[str]) -> LoadedClassifier:
    """``loaded`` relabelled with ``labels``; a new classifier head unless the labels match."""
    from torch import nn

    if loaded.tokenizer.labels() == labels:
        return loaded
    settings = dataclasses.replace(loaded.settings, num_classes=len(labels))
    model = loaded.model
    model.classifier = nn.Linear(settings.projector_dim, len(labels))
    model.settings = settings
    tokenizer = dataclasses.replace(
        loaded.tokenizer,
        class_index={label: i for i, label in enumerate(labels)},
        beatmap_mapper={},
    )
    return dataclasses.replace(loaded, settings=settings, tokenizer=tokenizer, training_state={})


def make_optimizer(model: Any, options: TrainingOptions, total_steps: int):
    """AdamW, and a warm-up (from half the rate) + cosine-decay schedule stepped per batch."""
    import torch

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay
    )
    warmup = options.warmup_steps
    if warmup is None:
        warmup = max(1, total_steps // 20)
    warmup = min(max(warmup, 1), max(total_steps - 1, 1))
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        schedulers=[
            torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=0.5, end_factor=1.0, total_iters=warmup
            ),
            torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer,
                T_max=max(total_steps - warmup, 1),
                eta_min=options.final_learning_rate,
            ),
        ],
        milestones=[warmup],
    )
    return optimizer, scheduler


# --- Batches ---------------------------------------------------------------------------------


def _payload(
    item: TrainingMap,
    audio: dict[str, np.ndarray],
    start_sample: int,
    settings: ClassifierSettings,
    tokenizer: Any,
) -> WindowPayload:
    start_ms = start_ms_of_sample(start_sample, settings.sample_rate)
    return window_payload(
        audio[item.audio_key], item.events, item.times, start_ms, settings, tokenizer
    )


def epoch_windows(
    maps: list[TrainingMap], settings: ClassifierSettings, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(map index, start sample) of one epoch, shuffled: every map cut into consecutive
    windows from a random offset (the last one zero-padded), as the reference trains."""
    windows = []
    for index, item in enumerate(maps):
        offset = int(rng.integers(0, settings.window_samples))
        windows += [(index, s) for s in range(offset, item.n_samples, settings.window_samples)]
    order = rng.permutation(len(windows))
    return [windows[i] for i in order]


def expected_epoch_windows(maps: list[TrainingMap], settings: ClassifierSettings) -> float:
    """Mean number of windows per epoch (over the random offsets)."""
    return sum(item.n_samples / settings.window_samples for item in maps)


@dataclass
class WindowStream:
    """Batches of (map index, start sample), epoch after epoch; its state can be saved so a
    resumed run sees exactly the batches an uninterrupted one would."""

    maps: list[TrainingMap]
    settings: ClassifierSettings
    rng: np.random.Generator
    epoch: int = 0
    position: int = 0
    windows: list[tuple[int, int]] = field(default_factory=list)

    def next_batch(self, batch_size: int) -> list[tuple[int, int]]:
        if self.position >= len(self.windows):
            self.windows = epoch_windows(self.maps, self.settings, self.rng)
            self.position = 0
            self.epoch += 1
        batch = self.windows[self.position : self.position + batch_size]
        self.position += len(batch)
        return batch

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "windows": [list(w) for w in self.windows],
            "numpy_rng": self.rng.bit_generator.state,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.windows = [(int(i), int(s)) for i, s in state["windows"]]
        self.rng.bit_generator.state = state["numpy_rng"]


def _tensors(payloads: list[WindowPayload], device: str):
    import torch

    samples = torch.from_numpy(np.stack([p.audio for p in payloads])).to(device)
    tokens = torch.from_numpy(np.stack([p.tokens for p in payloads])).to(device)
    return samples, tokens


def evaluate(
    model: Any,
    windows: list[tuple[TrainingMap, int]],
    class_of: Mapping[str, int],
    audio: dict[str, np.ndarray],
    settings: ClassifierSettings,
    tokenizer: Any,
    *,
    batch_size: int,
    device: str,
    autocast_dtype: Any,
) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-10 accuracy over held-out windows."""
    import torch

    losses, top1, top10 = [], 0, 0
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            payloads = [_payload(m, audio, s, settings, tokenizer) for m, s in chunk]
            samples, tokens = _tensors(payloads, device)
            target = torch.tensor([class_of[m.label] for m, _ in chunk], device=device)
            with torch.autocast(
                torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                logits = model(samples, tokens).logits.float()
            losses.append(torch.nn.functional.cross_entropy(logits, target, reduction="sum").item())
            ranked = logits.topk(min(10, logits.shape[1]), dim=1).indices
            top1 += int((ranked[:, 0] == target).sum())
            top10 += int((ranked == target[:, None]).any(dim=1).sum())
    model.train()
    n = max(len(windows), 1)
    return {"loss": sum(losses) / n, "top1": top1 / n, "top10": top10 / n, "windows": len(windows)}


# --- The training run ------------------------------------------------------------------------


def _prepare(
    maps_dir: str | Path,
    labels_file: str | Path | None,
    settings: ClassifierSettings,
    options: TrainingOptions,
    skipped: SkipLog,
    progress: bool,
) -> tuple[list[TrainingMap], dict[str, np.ndarray], list[str]]:
    labels = load_labels(labels_file) if labels_file else None
    maps, audio = collect_maps(
        maps_dir, settings, skipped, labels=labels, modes=options.modes, progress=progress
    )
    counts = Counter(item.label for item in maps)
    kept = []
    for item in maps:
        if counts[item.label] < options.min_maps_per_label:
            skipped.add(
                item.id,
                f"rare label: {item.label!r} has {counts[item.label]} map(s), "
                f"fewer than {options.min_maps_per_label}",
            )
        else:
            kept.append(item)
    names = sorted({item.label for item in kept})
    if len(names) < 2:
        raise InputError(
            f"{maps_dir}: need maps with audio of at least two labels having "
            f"{options.min_maps_per_label}+ maps each; found {len(names)} label(s) "
            f"({len(maps)} usable maps, {len(skipped)} skipped)"
        )
    return kept, {k: v for k, v in audio.items() if any(m.audio_key == k for m in kept)}, names


def train_classifier(
    maps_dir: str | Path,
    output_dir: str | Path,
    *,
    labels: str | Path | None = None,
    options: TrainingOptions | None = None,
    init_checkpoint: str | Path | None = None,
    resume: bool = False,
    stop_at_step: int | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train a mapper classifier on the maps (with audio) under ``maps_dir``.

    Writes ``last.ckpt`` (every ``checkpoint_every`` steps and at the end), ``best.ckpt``
    (best validation top-1) and ``metrics.json`` into ``output_dir``. ``init_checkpoint``
    fine-tunes from any checkpoint; ``resume`` continues the run saved in ``output_dir``.
    ``stop_at_step`` pauses the run after that step (with a checkpoint) to be resumed later.
    """
    import torch

    options = options or TrainingOptions()
    options.check()
    output = Path(output_dir)
    last_path = output / LAST_CHECKPOINT
    if resume and not last_path.is_file():
        raise InputError(f"nothing to resume: {last_path} does not exist")
    if not resume and last_path.exists():
        raise InputError(
            f"{output} already holds a training run; pass resume to continue it or choose "
            "another output folder"
        )

    torch.manual_seed(options.seed)
    if resume:
        start = load_checkpoint(last_path)
    elif init_checkpoint:
        start = load_checkpoint(init_checkpoint)
    else:
        start = None
    base_settings = (
        start.settings
        if start
        else ClassifierSettings.for_size(
            options.model_size, num_classes=1, vocab_size=1, **options.settings_overrides
        )
    )
    skipped = SkipLog()
    maps, audio, label_names = _prepare(maps_dir, labels, base_settings, options, skipped, progress)
    if resume:
        if start.tokenizer.labels() != label_names:
            raise InputError(
                f"cannot resume: the labels found now differ from those of {last_path}"
            )
        loaded = start
    elif start:
        loaded = dataclasses.replace(with_new_labels(start, label_names), training_state={})
    else:
        loaded = fresh_model(label_names, options)
    settings, state = loaded.settings, loaded.training_state
    tokenizer = make_tokenizer(loaded.tokenizer)
    class_of = dict(loaded.tokenizer.class_index)

    rng = np.random.default_rng(options.seed)
    train_maps, validation_maps = split_maps(maps, options.validation_fraction, rng)
    validation_windows = [
        (item, int(s))
        for item in validation_maps
        for s in window_start_samples(item.n_samples, settings)
    ]
    if len(validation_windows) > options.max_validation_windows:
        keep = rng.choice(len(validation_windows), options.max_validation_windows, replace=False)
        validation_windows = [validation_windows[i] for i in sorted(keep)]

    steps_per_epoch = math.ceil(expected_epoch_windows(train_maps, settings) / options.batch_size)
    total_steps = options.max_steps or max(1, math.ceil(options.epochs * steps_per_epoch))
    device = resolve_device(options.device)
    model = loaded.model.to(device).train()
    optimizer, scheduler = make_optimizer(model, options, total_steps)
    step = 0
    training = dict(state.get("training") or {})
    history: list[dict[str, Any]] = list(training.get("validation", []))
    losses: list[float] = list(training.get("train_losses", []))
    best_top1 = max((h["top1"] for h in history), default=-1.0)
    stream = WindowStream(train_maps, settings, rng)
    if resume:
        if not {"optimizer_states", "lr_schedulers"} <= set(state) or "windows" not in training:
            raise InputError(f"cannot resume: {last_path} was not written by train_classifier")
        optimizer.load_state_dict(state["optimizer_states"][0])
        scheduler.load_state_dict(state["lr_schedulers"][0])
        step = int(state.get("global_step", 0))
        stream.restore(training["windows"])
        torch.set_rng_state(training["torch_rng"])

    autocast_dtype = torch.bfloat16 if options.precision == "bfloat16" else None
    device_type = torch.device(device).type
    stop = total_steps if stop_at_step is None else min(stop_at_step, total_steps)
    output.mkdir(parents=True, exist_ok=True)
    best_path: Path | None = (
        output / BEST_CHECKPOINT if (output / BEST_CHECKPOINT).exists() else None
    )

    def save(path: Path) -> None:
        save_checkpoint(
            path,
            model,
            loaded.tokenizer,
            training_state={
                "optimizer_states": [optimizer.state_dict()],
                "lr_schedulers": [scheduler.state_dict()],
                "global_step": step,
                "epoch": stream.epoch,
                "training": {
                    "options": dataclasses.asdict(options),
                    "train_maps": [m.id for m in train_maps],
                    "validation_maps": [m.id for m in validation_maps],
                    "validation": history,
                    "train_losses": losses,
                    "windows": stream.state(),
                    "torch_rng": torch.get_rng_state(),
                },
            },
        )

    def validate() -> None:
        nonlocal best_top1, best_path
        if not validation_windows:
            return
        metrics = evaluate(
            model,
            validation_windows,
            class_of,
            audio,
            settings,
            tokenizer,
            batch_size=options.batch_size,
            device=device,
            autocast_dtype=autocast_dtype,
        )
        recent = losses[-options.eval_every :]
        history.append(
            {"step": step, "train_loss": float(np.mean(recent)) if recent else None} | metrics
        )
        (output / METRICS_FILE).write_text(json.dumps(history, indent=2), encoding="utf-8")
        if metrics["top1"] > best_top1:
            best_top1 = metrics["top1"]
            best_path = output / BEST_CHECKPOINT
            save(best_path)

    bar = tqdm(total=total_steps, initial=step, desc="training", unit="step", disable=not progress)
    while step < stop:
        chunk = stream.next_batch(options.batch_size)
        payloads = [_payload(train_maps[i], audio, s, settings, tokenizer) for i, s in chunk]
        samples, tokens = _tensors(payloads, device)
        target = torch.tensor([class_of[train_maps[i].label] for i, _ in chunk], device=device)
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(samples, tokens).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if options.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(float(loss.item()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step % options.eval_every == 0 or step == total_steps:
            validate()
        if step % options.checkpoint_every == 0 or step == stop:
            save(last_path)
    bar.close()
    return TrainingResult(
        checkpoint=last_path,
        best_checkpoint=best_path,
        steps=step,
        labels=label_names,
        train_maps=len(train_maps),
        validation_maps=len(validation_maps),
        train_losses=losses,
        validation=history,
        skipped=[(entry.source, entry.reason) for entry in skipped.entries],
    )
