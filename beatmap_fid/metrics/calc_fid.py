"""The extra metrics of Mapperatorinator's ``calc_fid.py``, defined as it defines them.

Each compares a generated map with the real map of the same audio (pairs as in
:func:`beatmap_fid.metrics.rhythm.pair_beatmaps`):

- **Star-rating RMSE**: rosu-pp star ratings of both files (no mods); RMSE over pairs.
- **Time-integrated BPM RMSE**: a map's BPM is piecewise constant over time, set by its
  uninherited timing points (60000 / beat length, a point at the same time as the one before it
  replacing it; before the first point the first point's BPM). Over ``[0, L]``, L the later of
  the two maps' last object start, ``∫ (r(t) − g(t))² dt`` is summed over pairs and divided by
  the sum of the L; the root of that is the RMSE. (Our main-BPM RMSE, ``bpm_rmse`` of
  :mod:`~beatmap_fid.metrics.rhythm`, compares one BPM per map instead.)
- **Drain-time RMSE with the 8 s gap rule**: drain time = last object start − first object
  start (integer ms), minus every gap between consecutive object starts longer than 8 s; RMSE
  over pairs, in seconds. (``drain_time_rmse`` of :mod:`~beatmap_fid.metrics.rhythm` uses the
  ``[Events]`` breaks and object ends instead.)
- **SSM RMSE**: for each pair, the cosine self-similarity matrices of the two maps' windowed
  features, mapped to ``[0, 1]`` by ``(s + 1) / 2``, both bilinearly resized (half-pixel
  centres) to the larger window count; the RMSE between them; then the root of the mean of
  their squares over pairs. Any windowed extractor's features work (calc_fid uses CM3P's).

The training-set overlap check is here too: how many maps carry a beatmap id listed in a file
of training ids (calc_fid's check), and, by embedding, how many maps have a near-duplicate
(cosine of their mean window embeddings at least a threshold) in a training set.

calc_fid pools all game modes into one number; :func:`paired_metrics` also gives every figure
per mode (the mode of the real map of each pair).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import slider
from tqdm.auto import tqdm

from beatmap_fid.errors import InputError, SkipLog, SourceError

ALL_MODES = (0, 1, 2, 3)
BREAK_THRESHOLD_S = 8.0
DUPLICATE_THRESHOLD = 0.99


def drain_time_gap_rule(beatmap: slider.Beatmap, threshold_s: float = BREAK_THRESHOLD_S) -> float:
    """Drain time (s): last − first object start minus the gaps between starts over ``threshold_s``."""
    times = sorted(int(o.time.total_seconds() * 1000) for o in beatmap.hit_objects(stacking=False))
    if len(times) < 2 or times[-1] - times[0] <= 0:
        return 0.0
    gaps = np.diff(np.asarray(times, dtype=np.int64))
    breaks = int(gaps[gaps > int(threshold_s * 1000)].sum())
    return max(0.0, (times[-1] - times[0] - breaks) / 1000.0)


def last_object_start_s(beatmap: slider.Beatmap) -> float:
    """The latest object start time (s): the integration length of the BPM error."""
    times = [o.time.total_seconds() for o in beatmap.hit_objects(stacking=False)]
    return max(times) if times else 0.0


def bpm_segments(beatmap: slider.Beatmap) -> list[tuple[float, float]]:
    """``[(start_s, bpm), ...]`` of the uninherited timing points, sorted; ``[(0, 0)]`` without."""
    points = sorted(beatmap.timing_points, key=lambda p: float(p.offset.total_seconds()))
    segments: list[tuple[float, float]] = []
    for point in points:
        beat = getattr(point, "ms_per_beat", None)
        if beat is None or beat <= 0:
            continue
        start, bpm = float(point.offset.total_seconds()), 60000.0 / float(beat)
        if segments and abs(segments[-1][0] - start) < 1e-12:
            segments[-1] = (start, bpm)
        else:
            segments.append((start, bpm))
    return segments or [(0.0, 0.0)]


def _bpm_at(segments: list[tuple[float, float]], t: float) -> float:
    current = segments[0][1]
    for start, bpm in segments:
        if start <= t + 1e-12:
            current = bpm
        else:
            break
    return current


def bpm_squared_error(real: slider.Beatmap, generated: slider.Beatmap) -> tuple[float, float]:
    """``(∫₀ᴸ (r(t) − g(t))² dt, L)`` of one pair (see the module documentation)."""
    length = max(last_object_start_s(real), last_object_start_s(generated))
    if length <= 0:
        return 0.0, 0.0
    r, g = bpm_segments(real), bpm_segments(generated)
    cuts = sorted({0.0, float(length)} | {s for s, _ in r + g if 0.0 <= s <= length})
    total = 0.0
    for a, b in pairwise(cuts):
        if b > a:
            middle = (a + b) / 2.0
            total += (_bpm_at(r, middle) - _bpm_at(g, middle)) ** 2 * (b - a)
    return total, float(length)


def self_similarity(features: np.ndarray) -> np.ndarray:
    """Cosine self-similarity of windowed features (n, d), mapped to [0, 1], float32 (n, n)."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise InputError(f"windowed features must be 2-D (windows, dim), got shape {x.shape}")
    unit = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    return np.clip(((unit @ unit.T) + 1.0) / 2.0, 0.0, 1.0).astype(np.float32, copy=False)


def _resized(matrix: np.ndarray, size: int) -> np.ndarray:
    if matrix.shape == (size, size):
        return matrix.astype(np.float32, copy=False)
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(matrix.astype(np.float32, copy=False))[None, None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


def ssm_rmse(real_features: np.ndarray, generated_features: np.ndarray) -> float | None:
    """RMSE between the two maps' self-similarity matrices at the larger size (None when a
    map has no windows)."""
    if len(real_features) == 0 or len(generated_features) == 0:
        return None
    a, b = self_similarity(real_features), self_similarity(generated_features)
    size = max(len(a), len(b))
    return float(np.sqrt(np.mean((_resized(a, size) - _resized(b, size)) ** 2)))


def window_features(ids: Collection[str], vectors: np.ndarray) -> dict[str, np.ndarray]:
    """The vectors of each map (ids ``map#k``), windows in the order of k."""
    groups: dict[str, list[tuple[int, int]]] = {}
    for row, item in enumerate(ids):
        name, _, index = str(item).partition("#")
        groups.setdefault(name, []).append((int(index) if index.isdigit() else 0, row))
    return {
        name: np.asarray(vectors)[[row for _, row in sorted(rows)]] for name, rows in groups.items()
    }


@dataclass(frozen=True)
class PairFigures:
    """calc_fid's figures of one real/generated pair."""

    real: str
    generated: str
    mode: int
    real_stars: float | None
    generated_stars: float | None
    real_drain_s: float
    generated_drain_s: float
    bpm_integral: float
    bpm_length_s: float
    ssm_rmse: float | None


def _figures(pairs: list[PairFigures]) -> dict[str, float]:
    """The pooled metrics of some pairs."""
    values: dict[str, float] = {"paired_maps": float(len(pairs))}
    stars = [(p.real_stars, p.generated_stars) for p in pairs if p.real_stars is not None]
    if stars:
        values["star_rating_rmse"] = float(np.sqrt(np.mean([(r - g) ** 2 for r, g in stars])))
    length = sum(p.bpm_length_s for p in pairs)
    if length > 0:
        values["bpm_integrated_rmse"] = float(np.sqrt(sum(p.bpm_integral for p in pairs) / length))
    if pairs:
        drains = [(p.real_drain_s - p.generated_drain_s) ** 2 for p in pairs]
        values["drain_time_gap_rmse"] = float(np.sqrt(np.mean(drains)))
    ssm = [p.ssm_rmse for p in pairs if p.ssm_rmse is not None]
    if ssm:
        values["ssm_rmse"] = float(np.sqrt(np.mean(np.square(ssm))))
    return values


@dataclass
class PairedResult:
    """calc_fid's extra metrics over a set of pairs, pooled and per game mode."""

    pairs: list[PairFigures]
    unmatched_real: list[str] = field(default_factory=list)
    unmatched_generated: list[str] = field(default_factory=list)
    skipped: SkipLog = field(default_factory=SkipLog)

    def as_dict(self) -> dict[str, float]:
        """Pooled values (as calc_fid reports them) and, when the pairs span more than one
        mode, the same per mode as ``key@mode`` (``star_rating_rmse@taiko``)."""
        from beatmap_fid.beatmap.reading import mode_name

        values = _figures(self.pairs)
        modes = sorted({p.mode for p in self.pairs})
        if len(modes) > 1:
            for mode in modes:
                chosen = [p for p in self.pairs if p.mode == mode]
                values.update({f"{k}@{mode_name(mode)}": v for k, v in _figures(chosen).items()})
        return values

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able: values, per-pair figures, unmatched and skipped maps."""
        return {
            "values": self.as_dict(),
            "break_threshold_s": BREAK_THRESHOLD_S,
            "pairs": [vars(p) for p in self.pairs],
            "unmatched_real": self.unmatched_real,
            "unmatched_generated": self.unmatched_generated,
            "skipped": [{"source": s.source, "reason": s.reason} for s in self.skipped.entries],
        }


def paired_metrics(
    real: str | Path,
    generated: str | Path,
    *,
    mapping: str | Path | dict | None = None,
    modes: Collection[int] = ALL_MODES,
    real_features: Mapping[str, np.ndarray] | None = None,
    generated_features: Mapping[str, np.ndarray] | None = None,
    star_ratings: bool = True,
    progress: bool = False,
) -> PairedResult:
    """calc_fid's star-rating, time-integrated BPM, 8 s-gap drain and SSM figures of every
    pair of maps of ``real`` and ``generated`` (folders or files).

    ``real_features``/``generated_features``: windowed features per map id (relative path), as
    :func:`window_features` gives them; without them there is no SSM RMSE. ``star_ratings``
    needs rosu-pp-py. Unreadable pairs are skipped and listed; InputError when none is usable.
    """
    from beatmap_fid.beatmap.difficulty import star_rating
    from beatmap_fid.beatmap.reading import read_beatmap_file
    from beatmap_fid.metrics.rhythm import pair_beatmaps

    pairing = pair_beatmaps(real, generated, mapping)
    roots = (Path(real), Path(generated))
    skipped = SkipLog()
    results: list[PairFigures] = []
    for real_path, gen_path in tqdm(
        pairing.pairs, desc="paired", unit="pair", disable=not progress
    ):
        names = [
            path.relative_to(root).as_posix() if root.is_dir() else path.name
            for path, root in zip((real_path, gen_path), roots)
        ]
        maps, stars = [], []
        for side, path, name in zip(("real", "generated"), (real_path, gen_path), names):
            try:
                maps.append(read_beatmap_file(path, modes=modes).beatmap)
                stars.append(star_rating(path) if star_ratings else None)
            except SourceError as error:
                skipped.add(f"{side} {name}", str(error))
        if len(maps) < 2 or len(stars) < 2:
            continue
        integral, length = bpm_squared_error(*maps)
        features = [
            None if table is None else table.get(name)
            for table, name in zip((real_features, generated_features), names)
        ]
        ssm = ssm_rmse(*features) if features[0] is not None and features[1] is not None else None
        results.append(
            PairFigures(
                names[0],
                names[1],
                int(maps[0].mode),
                stars[0],
                stars[1],
                drain_time_gap_rule(maps[0]),
                drain_time_gap_rule(maps[1]),
                integral,
                length,
                ssm,
            )
        )
    if not results:
        raise InputError(f"none of the {len(pairing.pairs)} pairs could be read. {skipped.brief()}")
    return PairedResult(results, pairing.unmatched_real, pairing.unmatched_generated, skipped)


def read_training_ids(path: str | Path) -> set[int]:
    """Beatmap ids of a training set: one integer per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"training set ids file {path} does not exist")
    ids = set()
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if line.strip():
            try:
                ids.add(int(line.strip()))
            except ValueError:
                raise InputError(
                    f"{path}: line {number} is not a beatmap id: {line.strip()!r}"
                ) from None
    return ids


def overlap_by_id(
    folder: str | Path, training_ids: set[int] | str | Path, *, modes: Collection[int] = ALL_MODES
) -> dict[str, Any]:
    """How many maps under ``folder`` have a ``BeatmapID`` among ``training_ids`` (calc_fid's
    check); maps without an id count as outside. Keys ``in``, ``out``, ``total``, ``ratio``,
    ``maps`` (the ids of the maps inside) and ``skipped``."""
    from beatmap_fid.beatmap.reading import iter_beatmap_files

    ids = training_ids if isinstance(training_ids, set) else read_training_ids(training_ids)
    skipped = SkipLog()
    inside, outside = [], 0
    for beatmap_file in iter_beatmap_files(folder, skipped, modes=modes):
        if beatmap_file.beatmap.beatmap_id in ids:
            inside.append(beatmap_file.id)
        else:
            outside += 1
    total = len(inside) + outside
    return {
        "in": len(inside),
        "out": outside,
        "total": total,
        "ratio": len(inside) / total if total else 0.0,
        "maps": inside,
        "skipped": len(skipped),
    }


def map_means(features: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Map ids and their mean window embeddings, L2-normalised (float64)."""
    names = sorted(features)
    means = np.stack([np.asarray(features[n], dtype=np.float64).mean(axis=0) for n in names])
    return names, means / np.clip(np.linalg.norm(means, axis=1, keepdims=True), 1e-12, None)


def near_duplicates(
    query: Mapping[str, np.ndarray],
    training: Mapping[str, np.ndarray],
    *,
    threshold: float = DUPLICATE_THRESHOLD,
) -> list[tuple[str, str, float]]:
    """``(query map, closest training map, cosine)`` for every query map whose mean window
    embedding has cosine at least ``threshold`` with a training map's, closest first."""
    if not query or not training:
        return []
    names_q, q = map_means(query)
    names_t, t = map_means(training)
    found = []
    for start in range(0, len(q), 1024):
        similarity = q[start : start + 1024] @ t.T
        best = similarity.argmax(axis=1)
        for offset, column in enumerate(best):
            value = float(similarity[offset, column])
            if value >= threshold:
                found.append((names_q[start + offset], names_t[column], value))
    return sorted(found, key=lambda item: -item[2])


# --- the metrics as evaluate() runs them on two loaded sides ---------------------------------

PAIRED = "paired"
"""Metric name of calc_fid's paired figures in :func:`beatmap_fid.evaluate.evaluate`."""
OVERLAP = "overlap"
"""Metric name of the training-set overlap check in :func:`beatmap_fid.evaluate.evaluate`."""


def side_window_features(side: Any) -> dict[str, np.ndarray] | None:
    """Windowed features per map of a loaded side (None when its ids are not ``map#k``)."""
    if side.vectors is None or side.ids is None or not any("#" in str(i) for i in side.ids[:1]):
        return None
    return window_features(side.ids, side.vectors)


def paired_from_sides(
    real: Any, generated: Any, options: Mapping[str, Any], progress: bool = False
) -> PairedResult:
    """:func:`paired_metrics` of two sides that are beatmap folders, with their windowed
    vectors for the SSM RMSE; star ratings when rosu-pp-py is installed (unless
    ``star_ratings`` is given)."""
    from beatmap_fid.beatmap.difficulty import rosu_available

    if real.beatmap_folder is None or generated.beatmap_folder is None:
        raise InputError(
            f"'{PAIRED}' compares each generated map with the real map of the same audio: both "
            "sides must be folders of .osu files"
        )
    chosen = dict(options)
    chosen.setdefault("star_ratings", rosu_available())
    return paired_metrics(
        real.beatmap_folder,
        generated.beatmap_folder,
        real_features=side_window_features(real),
        generated_features=side_window_features(generated),
        progress=progress,
        **chosen,
    )


def overlap_from_sides(
    real: Any,
    generated: Any,
    *,
    training_ids: str | Path | None = None,
    training_store: str | Path | None = None,
    threshold: float = DUPLICATE_THRESHOLD,
    modes: Collection[int] = ALL_MODES,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Training-set overlap of both sides: by beatmap id (``training_ids``, a file of ids) and
    by embedding (``training_store``, a store of training maps embedded with the same
    extractor configuration). Values ``{side}_in_training`` (share of maps whose id is listed)
    and ``{side}_near_duplicates`` (share of maps with a training map at cosine ≥ threshold),
    and the details (which maps)."""
    from beatmap_fid.store import open_store

    if training_ids is None and training_store is None:
        raise InputError(
            f"'{OVERLAP}' needs training_ids (a file of beatmap ids) or training_store"
        )
    values: dict[str, float] = {}
    details: dict[str, Any] = {"threshold": threshold}
    sides = (("real", real), ("generated", generated))
    if training_ids is not None:
        ids = read_training_ids(training_ids)
        for label, side in sides:
            if side.beatmap_folder is None:
                continue
            found = overlap_by_id(side.beatmap_folder, ids, modes=modes)
            values[f"{label}_in_training"] = found["ratio"]
            values[f"{label}_in_training_count"] = float(found["in"])
            details[f"{label}_in_training"] = found
    if training_store is not None:
        with open_store(training_store) as store:
            hashes = {side.config_hash for _, side in sides if side.config_hash}
            if hashes and hashes != {store.config_hash}:
                raise InputError(
                    f"{training_store} holds {store.extractor!r} embeddings (config hash "
                    f"{store.config_hash}), not those of this evaluation ({', '.join(hashes)})"
                )
            training = window_features(store.ids, store.vectors())
        for label, side in sides:
            features = side_window_features(side)
            if features is None and side.vectors is not None:
                features = {str(i): side.vectors[k : k + 1] for k, i in enumerate(side.ids)}
            if not features:
                continue
            found = near_duplicates(features, training, threshold=threshold)
            values[f"{label}_near_duplicates"] = len(found) / len(features)
            details[f"{label}_near_duplicates"] = [
                {"map": q, "training_map": t, "cosine": c} for q, t, c in found
            ]
    return values, details
