"""One call for every metric: ``evaluate(real, generated, metrics=[...])`` returns one dict.

In the style of torch-fidelity: metrics are found by name (the sample metrics of
:data:`beatmap_fid.metrics.METRICS`, plus ``"rhythm"``, ``"paired"`` and ``"overlap"``), each
side is embedded at most once, and the answer is a flat dict of floats (``{"fid": ...,
"fid_low": ..., "kid": ..., "precision": ..., "active_f1": ...}``) that also records the number
of vectors per side.

Sides may be folders or files of sources (embedded with ``extractor`` into resumable stores,
as :func:`beatmap_fid.api.compute_fid` does), embedding stores (``.h5`` paths or open stores),
feature arrays (n, d), or, for ``"fid"`` alone, Gaussian statistics (``.npz`` or
:class:`~beatmap_fid.stats.GaussianStats`). ``"rhythm"`` compares the maps themselves and
needs both sides to be folders of beatmaps.

This module also scores sources with a trained head (:func:`score_source`), the work behind
``beatmap-fid score``.
"""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from beatmap_fid.api import (
    DEFAULT_EXTRACTOR,
    SideStatistics,
    SideSummary,
    embed_cached,
    feature_array,
    resolve_statistics,
    skip_entries,
)
from beatmap_fid.errors import (
    ConfigMismatchError,
    InputError,
    InsufficientSamplesError,
    SkipLog,
    SourceError,
)
from beatmap_fid.extractors.base import Extractor, build_extractor, config_hash, map_id
from beatmap_fid.shards import STORE_TYPES, ShardedStore, is_store_path
from beatmap_fid.stats import GaussianStats
from beatmap_fid.store import EmbeddingStore, open_store

DEFAULT_METRICS = ("fid", "fid_ci", "kid", "prdc")
"""Metrics of :func:`evaluate` when none are named (plus ``"rhythm"``, see :func:`rhythm_applies`)."""
RHYTHM = "rhythm"
KID_SUBSET_SIZE = 1000


@dataclass
class EvalSide:
    """One side of an evaluation: its vectors (with row ids) or only its statistics."""

    summary: SideSummary
    vectors: np.ndarray | None = None
    ids: np.ndarray | None = None
    stats: GaussianStats | None = None
    extractor: str | None = None
    config_hash: str | None = None
    beatmap_folder: Path | None = None

    @property
    def n(self) -> int | None:
        if self.vectors is not None:
            return len(self.vectors)
        return self.stats.n if self.stats is not None else None

    @property
    def features(self) -> np.ndarray | GaussianStats:
        """What a metric takes: the vectors, or the statistics when only those are known."""
        return self.vectors if self.vectors is not None else self.stats


def metric_names() -> list[str]:
    """Every name :func:`evaluate` accepts."""
    from beatmap_fid.metrics import METRICS
    from beatmap_fid.metrics.calc_fid import OVERLAP, PAIRED

    return [*METRICS, RHYTHM, PAIRED, OVERLAP]


def is_beatmap_folder(source: Any) -> bool:
    """Whether ``source`` is a folder holding at least one ``.osu`` file."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    path = Path(source)
    return path.is_dir() and next(path.rglob("*.osu"), None) is not None


def rhythm_applies(real: Any, generated: Any, mapping: Any = None) -> bool:
    """Whether both sides are beatmap folders with at least one pair of maps (named alike, or
    in ``mapping``): the condition for ``"rhythm"`` to join the default metrics."""
    return rhythm_missing_reason(real, generated, mapping) is None


def rhythm_missing_reason(real: Any, generated: Any, mapping: Any = None) -> str | None:
    """Why the maps-against-maps metrics (``"rhythm"``, ``"paired"``) do not apply to these
    sides, or None when they do."""
    from beatmap_fid.metrics.rhythm import pair_beatmaps

    not_folders = [
        name
        for name, side in (("real", real), ("generated", generated))
        if not is_beatmap_folder(side)
    ]
    if not_folders:
        return (
            f"the {' and '.join(not_folders)} side{'s are' if len(not_folders) > 1 else ' is'} "
            "not a folder of .osu files; rhythm and calc_fid's pair metrics compare each "
            "generated map with the real map of the same audio"
        )
    try:
        pair_beatmaps(real, generated, mapping)
    except InputError as err:
        return f"the maps do not pair up: {err}"
    return None


def _is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def _store_side(store: EmbeddingStore | ShardedStore) -> EvalSide:
    ids = store.ids
    summary = SideSummary(
        str(store.path),
        "store",
        len({map_id(item_id) for item_id in ids}),
        len(store),
        str(store.path),
    )
    return EvalSide(
        summary, store.vectors(), np.asarray(ids), None, store.extractor, store.config_hash
    )


def load_side(
    source: Any,
    extractor: Extractor | None,
    *,
    need_vectors: bool = True,
    store_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> EvalSide:
    """Vectors (or statistics) of one side; folders and files are embedded with ``extractor``
    into their store under ``store_dir`` first (reused on later runs).

    ``need_vectors=False`` lets folders and stores give cached statistics instead
    (:func:`beatmap_fid.api.resolve_statistics`), which is all FID needs.
    """
    if isinstance(source, STORE_TYPES):
        return _store_side(source)
    if isinstance(source, GaussianStats | SideStatistics) or (
        _is_path(source) and Path(source).suffix.lower() == ".npz"
    ):
        if need_vectors:
            raise InputError(
                f"{source if _is_path(source) else '<statistics>'} holds Gaussian statistics, "
                "not samples; only 'fid' can use it: pass a folder, a store or an array for "
                "the other metrics"
            )
        stats, summary = resolve_statistics(source, extractor, progress=progress)
        return EvalSide(summary, stats=stats)
    if _is_path(source):
        path = Path(source)
        if not path.exists():
            raise InputError(
                f"{path} does not exist (expected a folder, a file, a store or a .npz)"
            )
        if is_store_path(path):
            with open_store(path) as store:
                if need_vectors:
                    return _store_side(store)
                extractor_name, hash_ = store.extractor, store.config_hash
            stats, summary = resolve_statistics(path, extractor, progress=progress)
            return EvalSide(summary, stats=stats, extractor=extractor_name, config_hash=hash_)
        if extractor is None:
            raise InputError(f"{path} must be embedded first: pass an extractor")
        folder = path if is_beatmap_folder(path) else None
        if not need_vectors:
            stats, summary = resolve_statistics(
                path, extractor, store_dir=store_dir, batch_size=batch_size, progress=progress
            )
            return EvalSide(
                summary,
                stats=stats,
                extractor=extractor.name,
                config_hash=config_hash(extractor.config),
                beatmap_folder=folder,
            )
        result = embed_cached(path, extractor, store_dir, batch_size=batch_size, progress=progress)
        if result.n_items < 2:
            raise InsufficientSamplesError(
                f"{path}: {result.n_items} usable item(s) from {result.n_sources} file(s); "
                f"at least 2 are needed. {result.skipped.brief()}"
            )
        summary = SideSummary.of_folder(path, result)
        return EvalSide(
            summary,
            result.vectors(),
            np.asarray(result.ids, dtype=object),
            None,
            extractor.name,
            config_hash(extractor.config),
            folder,
        )
    try:
        array = feature_array(source)
    except InputError as err:
        raise InputError(
            f"a side must be a folder, a file, a store, statistics or a numeric array (n, d): {err}"
        ) from err
    summary = SideSummary("<array>", "array", None, len(array))
    ids = np.array([str(i) for i in range(len(array))], dtype=object)
    return EvalSide(summary, array, ids)


def load_sides(
    real: Any,
    generated: Any,
    extractor: Extractor | str = DEFAULT_EXTRACTOR,
    *,
    need_vectors: bool = True,
    store_dir: str | Path | None = None,
    batch_size: int = 64,
    strict: bool = False,
    progress: bool = False,
    extractor_options: dict[str, Any] | None = None,
) -> tuple[EvalSide, EvalSide]:
    """Both sides via :func:`load_side`, the extractor built once (only when a side needs it),
    checked to come from the same extractor configuration."""
    needs_extractor = any(
        _is_path(s) and not is_store_path(s) and Path(s).suffix.lower() != ".npz"
        for s in (real, generated)
    )
    if isinstance(extractor, str) and needs_extractor:
        extractor = build_extractor(extractor, **(extractor_options or {}))
    built = extractor if not isinstance(extractor, str) else None
    sides = []
    for source in (real, generated):
        side = load_side(
            source,
            built,
            need_vectors=need_vectors,
            store_dir=store_dir,
            batch_size=batch_size,
            progress=progress,
        )
        if strict and side.summary.skipped:
            raise SourceError(f"{side.summary.source}: {side.summary.skipped.brief()}")
        sides.append(side)
    first, second = sides
    if first.config_hash and second.config_hash and first.config_hash != second.config_hash:
        raise ConfigMismatchError(
            f"the real side holds {first.extractor!r} embeddings (config hash "
            f"{first.config_hash}) and the generated side {second.extractor!r} embeddings "
            f"({second.config_hash}); embed both with the same extractor configuration"
        )
    return first, second


def _metric_options(
    name: str,
    given: dict[str, Any],
    real: EvalSide,
    generated: EvalSide,
    device: str | None,
    progress: bool,
) -> dict[str, Any]:
    from beatmap_fid.metrics import METRICS

    options = dict(given)
    parameters = inspect.signature(METRICS[name]).parameters
    if "progress" in parameters:
        options.setdefault("progress", progress)
    if name in ("fid", "fd_inf") and device is not None:
        options.setdefault("device", device)
    if name == "fid_ci":  # the bootstrap resamples whole maps, found from the row ids
        options.setdefault("real_ids", real.ids)
        options.setdefault("generated_ids", generated.ids)
    if name == "kid" and "subset_size" not in options:
        smaller = min(real.n or 0, generated.n or 0)
        options["subset_size"] = min(KID_SUBSET_SIZE, max(smaller // 2, 2))
    return options


def compute_metrics(
    real: EvalSide,
    generated: EvalSide,
    metrics: Sequence[str],
    options: dict[str, dict[str, Any]] | None = None,
    *,
    device: str | None = None,
    progress: bool = False,
    details: dict[str, Any] | None = None,
) -> tuple[dict[str, float], Any]:
    """The dict of ``metrics`` between two loaded sides, and the rhythm result (or None).

    ``options`` maps a metric name to its keyword arguments. ``details``, when given, receives
    the full results of the pair metrics (``"paired"``, ``"overlap"``).
    """
    from beatmap_fid.metrics import METRICS
    from beatmap_fid.metrics.calc_fid import (
        OVERLAP,
        PAIRED,
        overlap_from_sides,
        paired_from_sides,
    )
    from beatmap_fid.metrics.rhythm import rhythm_metrics

    options = options or {}
    result: dict[str, float] = {}
    rhythm = None
    for name in tqdm(list(metrics), desc="metrics", unit="metric", disable=not progress):
        given = options.get(name, {})
        if name == RHYTHM:
            if real.beatmap_folder is None or generated.beatmap_folder is None:
                raise InputError(
                    "'rhythm' compares beatmaps with the real map of the same audio: both "
                    "sides must be folders of .osu files"
                )
            rhythm = rhythm_metrics(real.beatmap_folder, generated.beatmap_folder, **given)
            result.update(rhythm.as_dict())
            continue
        if name == PAIRED:
            paired = paired_from_sides(real, generated, given, progress=progress)
            result.update(paired.as_dict())
            if details is not None:
                details[PAIRED] = paired
            continue
        if name == OVERLAP:
            found, overlap = overlap_from_sides(real, generated, **given)
            result.update(found)
            if details is not None:
                details[OVERLAP] = overlap
            continue
        metric_options = _metric_options(name, given, real, generated, device, progress)
        values = METRICS[name](real.features, generated.features, **metric_options)
        result.update({key: float(value) for key, value in values.items()})
    for key, side in (("n_real", real), ("n_generated", generated)):
        if side.n is not None:
            result[key] = float(side.n)
    return result, rhythm


def check_metric_names(
    metrics: Sequence[str] | None, options: dict[str, Any], rhythm_possible: bool
) -> list[str]:
    """The metric list (defaults filled in), validated along with the per-metric options."""
    known = metric_names()
    if isinstance(metrics, str):
        metrics = [metrics]
    if metrics is None:
        metrics = [*DEFAULT_METRICS, *([RHYTHM, "paired"] if rhythm_possible else [])]
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}; choose from {known}")
    for key, value in options.items():
        if key not in known:
            raise InputError(
                f"unknown option {key!r}: options are per metric, e.g. kid={{'subset_size': "
                f"100}}; metric names: {known}"
            )
        if not isinstance(value, dict):
            raise InputError(f"options of {key!r} must be a dict of keyword arguments")
    return list(dict.fromkeys(metrics))


def evaluate(
    real: Any,
    generated: Any,
    metrics: Sequence[str] | None = None,
    extractor: Extractor | str = DEFAULT_EXTRACTOR,
    *,
    store_dir: str | Path | None = None,
    batch_size: int = 64,
    device: str | None = None,
    strict: bool = False,
    progress: bool = False,
    extractor_options: dict[str, Any] | None = None,
    **options: dict[str, Any],
) -> dict[str, float]:
    """Every metric asked for between ``real`` and ``generated``, in one flat dict.

    ``metrics``: names from :func:`metric_names` (default :data:`DEFAULT_METRICS`, plus
    ``"rhythm"`` when both sides are beatmap folders whose maps pair up by name). Keys are those of each metric
    (``fid``; ``fid_low``/``fid_high``/``fid_bias_corrected``/``fid_std``; ``fd_inf``;
    ``kid``/``kid_std``; ``precision``/``recall``/``density``/``coverage``; ``cmmd``;
    ``active_precision``/... ``bpm_rmse``/``drain_time_rmse`` for rhythm; calc_fid's
    ``star_rating_rmse``/``bpm_integrated_rmse``/``drain_time_gap_rmse``/``ssm_rmse`` for
    ``"paired"``, which joins the defaults with rhythm; ``real_in_training``/...
    ``generated_near_duplicates`` for ``"overlap"``, see :mod:`beatmap_fid.metrics.calc_fid`)
    plus ``n_real`` and ``n_generated`` (vectors per side). When both sides are beatmap
    folders spanning several game modes, every value is also given per mode as ``key@mode``
    (``fid@taiko``; :mod:`beatmap_fid.by_mode`). Per-metric options go by metric name, e.g.
    ``evaluate(a, b, ["kid"], kid={"subset_size": 100})``; KID's ``subset_size`` defaults to
    min(1000, half the smaller set), so that its subsets differ and its std means something. ``extractor_options`` build the extractor; ``strict``
    fails when any source was skipped.
    """
    mapping = (
        options.get(RHYTHM, {}).get("mapping") if isinstance(options.get(RHYTHM), dict) else None
    )
    names = check_metric_names(metrics, options, rhythm_applies(real, generated, mapping))
    vector_metrics = [m for m in names if m != RHYTHM]
    both_folders = is_beatmap_folder(real) and is_beatmap_folder(generated)
    sides = load_sides(
        real,
        generated,
        extractor,
        need_vectors=both_folders or any(m != "fid" for m in vector_metrics),
        store_dir=store_dir,
        batch_size=batch_size,
        strict=strict,
        progress=progress,
        extractor_options=extractor_options,
    )
    values, _ = compute_metrics(*sides, names, options, device=device, progress=progress)
    from beatmap_fid.by_mode import per_mode_values

    values.update(per_mode_values(*sides, names, options, device=device)[0])
    return values


@dataclass
class ScoreResult:
    """Scores of a head for every item, and per source file (mean over its items)."""

    head: str
    kind: str
    score_name: str  # "score" or "p(<label>)"
    item_ids: list[str]
    item_scores: np.ndarray
    item_labels: list[str] | None
    files: list[str]
    file_scores: np.ndarray
    file_labels: list[str] | None
    store_path: str | None
    skipped: SkipLog = field(default_factory=SkipLog)
    fallbacks: SkipLog = field(default_factory=SkipLog)

    def passing(self, min_score: float | None) -> list[str]:
        """Files whose score is at least ``min_score`` (all files when None), best first."""
        order = np.argsort(-self.file_scores, kind="stable")
        return [
            self.files[i] for i in order if min_score is None or self.file_scores[i] >= min_score
        ]

    def to_dict(self) -> dict[str, Any]:
        files = []
        for i in np.argsort(-self.file_scores, kind="stable"):
            entry = {"file": self.files[i], self.score_name: float(self.file_scores[i])}
            if self.file_labels is not None:
                entry["label"] = self.file_labels[i]
            files.append(entry)
        return {
            "head": self.head,
            "kind": self.kind,
            "score": self.score_name,
            "store": self.store_path,
            "files": files,
            "items": len(self.item_ids),
            "skipped": skip_entries(self.skipped),
            "fallbacks": skip_entries(self.fallbacks),
        }


def score_source(
    source: str | Path,
    head: Any,
    *,
    extractor: str | None = None,
    label: str | None = None,
    store_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
    extractor_options: dict[str, Any] | None = None,
) -> ScoreResult:
    """Apply a score head (:mod:`beatmap_fid.heads`, object or ``.pt`` path) to a store or to
    a folder/file, embedded first with the head's extractor (``extractor`` and
    ``extractor_options`` rebuild its configuration; the config hash must match the head's,
    else ConfigMismatchError).

    Regression heads score with their prediction; classification heads with the probability of
    ``label`` (default: of the predicted label). Items are aggregated per source file (the part
    of the id before ``#``) by their mean score (mean class probabilities for classification).
    """
    from beatmap_fid.heads import ScoreHead, load_head

    head_name = str(head) if not isinstance(head, ScoreHead) else repr(head)
    if not isinstance(head, ScoreHead):
        head = load_head(head)
    if label is not None and (head.kind != "classification" or label not in head.label_names):
        raise InputError(
            f"label {label!r} needs a classification head that knows it; this head is a "
            f"{head.kind} head" + (f" with labels {head.label_names}" if head.label_names else "")
        )
    path = Path(source)
    skipped, fallbacks = SkipLog(), SkipLog()
    store_path: Path
    features: Any
    if is_store_path(path) and path.exists():
        store_path = features = path  # a store given as such: the head checks its config
        with open_store(path) as store:
            ids = [str(i) for i in store.ids]
    else:
        name = extractor or head.extractor
        if name is None:
            raise InputError(
                "this head records no extractor (trained on a plain array): pass --extractor, "
                "or score an embedding store"
            )
        built = build_extractor(name, **(extractor_options or {}))
        built_hash = config_hash(built.config)
        if head.config_hash is not None and built_hash != head.config_hash:
            raise ConfigMismatchError(
                f"the head was trained on {head.extractor!r} embeddings with config hash "
                f"{head.config_hash}; {name!r} built with options {extractor_options or {}} "
                f"has config hash {built_hash}: pass the extractor options the head's store "
                "was made with (--option KEY=VALUE)"
            )
        result = embed_cached(path, built, store_dir, batch_size=batch_size, progress=progress)
        store_path, skipped, ids = result.store_path, result.skipped, result.ids
        fallbacks = result.fallbacks
        if ids:  # this source's rows of a store made with the head's configuration
            features = result.vectors()
    if not ids:
        raise InputError(f"{source}: nothing to score. {skipped.brief()}")
    scores = _scores(head, head_name, label, ids, features, str(store_path), skipped)
    scores.fallbacks = fallbacks
    return scores


def _scores(
    head: Any,
    head_name: str,
    label: str | None,
    ids: list[str],
    features: Any,
    store_path: str,
    skipped: SkipLog,
) -> ScoreResult:
    files, file_index = np.unique([map_id(i) for i in ids], return_inverse=True)
    counts = np.bincount(file_index, minlength=len(files))
    if head.kind == "regression":
        item_scores = head.predict(features)
        file_scores = np.bincount(file_index, item_scores, minlength=len(files)) / counts
        return ScoreResult(
            head_name,
            head.kind,
            "score",
            list(ids),
            item_scores,
            None,
            files.tolist(),
            file_scores,
            None,
            store_path,
            skipped,
        )
    names = list(head.label_names)
    proba = head.predict_proba(features)
    file_proba = np.zeros((len(files), len(names)))
    np.add.at(file_proba, file_index, proba)
    file_proba /= counts[:, None]
    if label is None:
        item_scores, file_scores = proba.max(axis=1), file_proba.max(axis=1)
        score_name = "p(label)"
    else:
        column = names.index(label)
        item_scores, file_scores = proba[:, column], file_proba[:, column]
        score_name = f"p({label})"
    return ScoreResult(
        head_name,
        head.kind,
        score_name,
        list(ids),
        item_scores,
        [names[i] for i in proba.argmax(axis=1)],
        files.tolist(),
        file_scores,
        [names[i] for i in file_proba.argmax(axis=1)],
        store_path,
        skipped,
    )


def copy_sources(files: Sequence[str], root: str | Path, destination: str | Path) -> list[Path]:
    """Copy ``files`` (ids relative to ``root``, or ``root`` itself when it is a file) to
    ``destination`` at the same relative paths; a beatmap's audio file goes with it."""
    from beatmap_fid.beatmap.reading import decode_osu_bytes, find_audio

    root, destination = Path(root), Path(destination)
    copied = []
    for name in files:
        path = root if root.is_file() else root / name
        if not path.is_file():
            raise InputError(f"cannot copy {name}: {path} is not a file (is --root right?)")
        target = destination / (path.name if root.is_file() else name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied.append(target)
        if path.suffix.lower() == ".osu":
            text, _ = decode_osu_bytes(path.read_bytes())
            audio_name = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in text.splitlines()
                    if line.strip().startswith("AudioFilename")
                ),
                "",
            )
            audio = find_audio(path, audio_name)
            if audio is not None:
                audio_target = target.parent / audio.relative_to(path.parent)
                if not audio_target.exists():
                    audio_target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(audio, audio_target)
    return copied
