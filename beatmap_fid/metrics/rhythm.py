"""Rhythm metrics between generated beatmaps and the real maps of the same audio.

FID says whether a set of generated maps looks like real maps; it does not say whether each
generated map hits the notes of its song. These metrics compare every generated map with the
real map made for the same audio, as Mapperatorinator's ``calc_fid.py`` does:

- **Onsets.** A map's *active* rhythm is the set of times (integer ms,
  ``int(seconds · 1000 + 1e-5)``) of its circles, slider heads and hold-note heads: what the
  player presses. Its *passive* rhythm adds every slider repeat and tail, at
  head + (end − head)/slides · (i + 1) for i < slides, and every spinner end.
- **Matching.** With a tolerance of ±10 ms, a real onset is a true positive when some
  generated onset lies within the tolerance and a false negative otherwise; a generated onset
  with no real onset within the tolerance is a false positive. (So TP counts real onsets: two
  generated onsets near one real onset make one TP, and neither is a false positive.) Counts are
  summed over all pairs of maps before precision = TP/(TP+FP), recall = TP/(TP+FN) and
  F1 = 2PR/(P+R) are taken; each is 0 when its denominator is 0.
- **BPM RMSE.** A map's main BPM is that of the uninherited timing point that covers the most
  of the map's play time (first object start to last object end; the first point reaches back
  to the start, the last one on to the end; ties go to the earliest). The RMSE over pairs of
  generated − real main BPM.
- **Drain-time RMSE.** Drain time = last object end − first object start, minus the parts of
  the ``[Events]`` breaks that fall inside, in seconds; the RMSE over pairs.

Pairs come from two folders, matched by file name (see :func:`pair_beatmaps`), or from a
mapping file. Onsets are matched with ``searchsorted`` on the sorted onset arrays, so a pair
costs O((n + m) log m) instead of the reference's O(n·m) loops.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import slider
from tqdm.auto import tqdm

from beatmap_fid.beatmap.reading import decode_osu_bytes, find_beatmaps, parse_beatmap_text
from beatmap_fid.errors import InputError, SkipLog, SourceError

TOLERANCE_MS = 10
ALL_MODES = (0, 1, 2, 3)
_MICROSECOND = timedelta(microseconds=1)
_EVENTS = re.compile(r"^\[Events\]\s*$", re.IGNORECASE)
_SECTION = re.compile(r"^\[.+\]\s*$")


@dataclass(frozen=True)
class OnsetCounts:
    """True positives, false positives and false negatives of onset matching."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    def __add__(self, other: OnsetCounts) -> OnsetCounts:
        return OnsetCounts(
            self.true_positives + other.true_positives,
            self.false_positives + other.false_positives,
            self.false_negatives + other.false_negatives,
        )

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 0.0

    @property
    def recall(self) -> float:
        wanted = self.true_positives + self.false_negatives
        return self.true_positives / wanted if wanted else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2.0 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


@dataclass(frozen=True)
class MapRhythm:
    """What the rhythm metrics need of one map: sorted unique onsets (int64 ms), main BPM and
    drain time (s)."""

    active: np.ndarray
    passive: np.ndarray
    main_bpm: float
    drain_time_s: float


def _ms(microseconds: np.ndarray) -> np.ndarray:
    """``int(seconds · 1000 + 1e-5)`` of integer microseconds, as the reference rounds."""
    return np.trunc(microseconds / 1e6 * 1000.0 + 1e-5).astype(np.int64)


def onset_times(beatmap: slider.Beatmap, *, passive: bool = False) -> np.ndarray:
    """Sorted unique onset times (int64 ms) of the map's active or passive rhythm."""
    objects = beatmap.hit_objects(stacking=False)
    heads: list[int] = []
    slider_spans: list[tuple[int, int, int]] = []  # head, end (µs), slides
    spinner_ends: list[int] = []
    for obj in objects:
        start = obj.time // _MICROSECOND
        if isinstance(obj, slider.beatmap.Slider):
            heads.append(start)
            if passive:
                slider_spans.append((start, obj.end_time // _MICROSECOND, max(int(obj.repeat), 1)))
        elif isinstance(obj, slider.beatmap.Spinner):
            if passive:
                spinner_ends.append(obj.end_time // _MICROSECOND)
        else:  # circles and hold notes: the head is pressed
            heads.append(start)
    times = [np.asarray(heads, dtype=np.int64), np.asarray(spinner_ends, dtype=np.int64)]
    if slider_spans:
        start, end, slides = np.asarray(slider_spans, dtype=np.int64).T
        # timedelta / int rounds half to even to whole microseconds, as np.rint does
        slide = np.rint((end - start) / slides).astype(np.int64)
        repeat_index = np.arange(slides.sum()) - np.repeat(np.cumsum(slides) - slides, slides)
        times.append(np.repeat(start, slides) + np.repeat(slide, slides) * (repeat_index + 1))
    return np.unique(_ms(np.concatenate(times)))


def match_onsets(
    real: np.ndarray, generated: np.ndarray, tolerance_ms: float = TOLERANCE_MS
) -> OnsetCounts:
    """TP, FP and FN of two onset arrays (see the module documentation)."""
    real = np.sort(np.asarray(real, dtype=np.float64))
    generated = np.sort(np.asarray(generated, dtype=np.float64))
    real_hit = _has_neighbour(real, generated, tolerance_ms)
    generated_hit = _has_neighbour(generated, real, tolerance_ms)
    tp = int(real_hit.sum())
    return OnsetCounts(tp, int((~generated_hit).sum()), len(real) - tp)


def _has_neighbour(queries: np.ndarray, sorted_values: np.ndarray, tolerance: float) -> np.ndarray:
    """For each query, whether some value lies within ±tolerance (inclusive)."""
    low = np.searchsorted(sorted_values, queries - tolerance, side="left")
    high = np.searchsorted(sorted_values, queries + tolerance, side="right")
    return high > low


def _object_span_ms(beatmap: slider.Beatmap) -> tuple[float, float]:
    """First object start and last object end (ms)."""
    objects = beatmap.hit_objects(stacking=False)
    first = min(obj.time for obj in objects)
    last = max(getattr(obj, "end_time", obj.time) for obj in objects)
    return first / _MICROSECOND / 1000.0, last / _MICROSECOND / 1000.0


def main_bpm(beatmap: slider.Beatmap) -> float:
    """BPM of the uninherited timing point covering the most of the map's play time."""
    red = [p for p in beatmap.timing_points if p.parent is None]
    if not red:
        raise SourceError("malformed: the map has no uninherited timing point")
    offsets = np.array([p.offset / _MICROSECOND / 1000.0 for p in red])
    beat_ms = np.array([float(p.ms_per_beat) for p in red])
    first, last = _object_span_ms(beatmap)
    starts = np.concatenate([[-np.inf], offsets[1:]])
    ends = np.concatenate([offsets[1:], [np.inf]])
    covered = np.clip(np.minimum(ends, last) - np.maximum(starts, first), 0.0, None)
    if covered.max() > 0:
        chosen = int(np.argmax(covered))
    else:  # a map of one instant: the point active at its first object
        chosen = max(int(np.searchsorted(offsets, first, side="right")) - 1, 0)
    return 60000.0 / beat_ms[chosen]


def break_periods(text: str) -> list[tuple[float, float]]:
    """``(start, end)`` (ms) of the breaks listed in the ``[Events]`` section of ``.osu`` text."""
    periods = []
    inside = False
    for line in text.splitlines():
        line = line.strip()
        if _SECTION.match(line):
            inside = bool(_EVENTS.match(line))
            continue
        if not inside or line.startswith("//"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 3 and fields[0] in ("2", "Break"):
            try:
                start, end = float(fields[1]), float(fields[2])
            except ValueError:
                continue
            if math.isfinite(start) and math.isfinite(end) and end > start:
                periods.append((start, end))
    return periods


def drain_time(beatmap: slider.Beatmap, breaks: Collection[tuple[float, float]] = ()) -> float:
    """Seconds from the first object start to the last object end, minus breaks inside."""
    first, last = _object_span_ms(beatmap)
    total = last - first
    for start, end in breaks:
        total -= max(0.0, min(end, last) - max(start, first))
    return max(total, 0.0) / 1000.0


def map_rhythm(beatmap: slider.Beatmap, breaks: Collection[tuple[float, float]] = ()) -> MapRhythm:
    """Onsets, main BPM and drain time of a parsed map (``breaks`` from :func:`break_periods`)."""
    return MapRhythm(
        active=onset_times(beatmap, passive=False),
        passive=onset_times(beatmap, passive=True),
        main_bpm=main_bpm(beatmap),
        drain_time_s=drain_time(beatmap, breaks),
    )


def read_map_rhythm(path: str | Path, *, modes: Collection[int] = ALL_MODES) -> MapRhythm:
    """:func:`map_rhythm` of the ``.osu`` file at ``path``; any failure is a SourceError."""
    path = Path(path)
    try:
        text, _ = decode_osu_bytes(path.read_bytes())
    except OSError as exc:
        raise SourceError(f"unreadable: {exc.strerror or exc}") from None
    beatmap, _ = parse_beatmap_text(text, modes=modes)
    return map_rhythm(beatmap, break_periods(text))


@dataclass(frozen=True)
class BeatmapPairs:
    """Real/generated map pairs and the maps left without a partner (ids relative to their
    folders)."""

    pairs: list[tuple[Path, Path]]
    unmatched_real: list[str] = field(default_factory=list)
    unmatched_generated: list[str] = field(default_factory=list)


def _relative_ids(folder: Path) -> dict[str, Path]:
    paths = find_beatmaps(folder)
    if folder.is_file():
        return {folder.name: folder}
    return {path.relative_to(folder).as_posix(): path for path in paths}


def _stem(item: str) -> str:
    return Path(item).stem


def _folder_name(item: str) -> str:
    return Path(item).parent.name


def _unique_by(ids: list[str], key: Callable[[str], str]) -> dict[str, str]:
    """key(id) → id, for keys that only one id has."""
    groups: dict[str, list[str]] = {}
    for item in ids:
        groups.setdefault(key(item), []).append(item)
    return {k: v[0] for k, v in groups.items() if len(v) == 1}


def pair_beatmaps(
    real: str | Path, generated: str | Path, mapping: str | Path | dict | None = None
) -> BeatmapPairs:
    """Pair the maps of two folders (or two ``.osu`` files).

    Without ``mapping``, maps are paired by, in turn: the same path relative to their folders;
    the same file stem (only stems that occur once on each side); and, for a generated map in a
    folder named after a real map's stem (``generated/<stem>/*.osu``, as Mapperatorinator writes
    them), that real map. ``mapping`` is a dict or a JSON file ``{real: generated}``, or a CSV
    file of two columns (real, generated; a header row is allowed), with paths relative to the
    two folders or absolute. Raises InputError when nothing pairs up.
    """
    real, generated = Path(real), Path(generated)
    real_ids, gen_ids = _relative_ids(real), _relative_ids(generated)
    if real.is_file() and generated.is_file():
        return BeatmapPairs([(real, generated)])
    if mapping is not None:
        matches = _mapping_pairs(mapping, real, generated, real_ids, gen_ids)
    else:
        matches = {key: key for key in real_ids if key in gen_ids}
        for generated_key in (_stem, _folder_name):
            used = set(matches.values())
            real_by = _unique_by([i for i in real_ids if i not in matches], _stem)
            gen_by = _unique_by([i for i in gen_ids if i not in used], generated_key)
            matches.update({real_by[k]: gen_by[k] for k in real_by.keys() & gen_by.keys()})
    used = set(matches.values())
    result = BeatmapPairs(
        [(real_ids[r], gen_ids[g]) for r, g in sorted(matches.items())],
        sorted(i for i in real_ids if i not in matches),
        sorted(i for i in gen_ids if i not in used),
    )
    if not result.pairs:
        raise InputError(
            f"no real map in {real} pairs with a generated map in {generated} "
            f"(real: {_listing(result.unmatched_real)}; generated: "
            f"{_listing(result.unmatched_generated)}); name them alike (same relative path or "
            "file stem) or pass a mapping file"
        )
    return result


def _listing(ids: list[str], limit: int = 5) -> str:
    if not ids:
        return "none"
    more = f", ... ({len(ids)} in all)" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def _mapping_pairs(
    mapping: str | Path | dict,
    real: Path,
    generated: Path,
    real_ids: dict[str, Path],
    gen_ids: dict[str, Path],
) -> dict[str, str]:
    rows = _read_mapping(mapping) if not isinstance(mapping, dict) else list(mapping.items())
    by_path = [{p.resolve(): i for i, p in ids.items()} for ids in (real_ids, gen_ids)]
    matches: dict[str, str] = {}
    missing: list[str] = []
    for index, (real_name, gen_name) in enumerate(rows):
        found = [
            lookup.get((folder / name).resolve())
            for lookup, folder, name in zip(by_path, (real, generated), (real_name, gen_name))
        ]
        if None in found:
            if index == 0 and not isinstance(mapping, dict) and str(mapping).endswith(".csv"):
                continue  # a header row
            missing.append(f"{real_name} -> {gen_name}")
            continue
        matches[found[0]] = found[1]
    if missing:
        raise InputError(
            f"the mapping names maps that are not in {real} / {generated}: {_listing(missing)}"
        )
    return matches


def _read_mapping(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mapping file {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"mapping file {path} is not valid JSON: {err}") from err
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise InputError(f"mapping file {path} must hold one object {{real: generated}}")
        return list(data.items())
    rows = [row for row in csv.reader(text.splitlines()) if any(cell.strip() for cell in row)]
    if any(len(row) != 2 for row in rows):
        raise InputError(f"mapping file {path} must have two columns: real, generated")
    return [(a.strip(), b.strip()) for a, b in rows]


@dataclass(frozen=True)
class PairRhythm:
    """Rhythm figures of one real/generated pair."""

    real: str
    generated: str
    active: OnsetCounts
    passive: OnsetCounts
    real_bpm: float
    generated_bpm: float
    real_drain_s: float
    generated_drain_s: float


@dataclass
class RhythmResult:
    """Rhythm metrics of a set of pairs, the pairs themselves and what was left out."""

    active: OnsetCounts
    passive: OnsetCounts
    bpm_rmse: float
    drain_time_rmse: float
    pairs: list[PairRhythm]
    unmatched_real: list[str] = field(default_factory=list)
    unmatched_generated: list[str] = field(default_factory=list)
    skipped: SkipLog = field(default_factory=SkipLog)

    def as_dict(self) -> dict[str, float]:
        """Flat metric values, as :func:`beatmap_fid.evaluate.evaluate` returns them."""
        return {
            "active_precision": self.active.precision,
            "active_recall": self.active.recall,
            "active_f1": self.active.f1,
            "passive_precision": self.passive.precision,
            "passive_recall": self.passive.recall,
            "passive_f1": self.passive.f1,
            "bpm_rmse": self.bpm_rmse,
            "drain_time_rmse": self.drain_time_rmse,
            "rhythm_pairs": float(len(self.pairs)),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-able: totals, per-pair figures, unmatched and skipped maps."""
        return {
            "active": self.active.to_dict(),
            "passive": self.passive.to_dict(),
            "bpm_rmse": self.bpm_rmse,
            "drain_time_rmse": self.drain_time_rmse,
            "tolerance_ms": TOLERANCE_MS,
            "pairs": [
                {
                    "real": p.real,
                    "generated": p.generated,
                    "active": p.active.to_dict(),
                    "passive": p.passive.to_dict(),
                    "real_bpm": p.real_bpm,
                    "generated_bpm": p.generated_bpm,
                    "real_drain_s": p.real_drain_s,
                    "generated_drain_s": p.generated_drain_s,
                }
                for p in self.pairs
            ],
            "unmatched_real": self.unmatched_real,
            "unmatched_generated": self.unmatched_generated,
            "skipped": [{"source": s.source, "reason": s.reason} for s in self.skipped.entries],
        }


def rhythm_metrics(
    real: str | Path,
    generated: str | Path,
    *,
    mapping: str | Path | dict | None = None,
    tolerance_ms: float = TOLERANCE_MS,
    modes: Collection[int] = ALL_MODES,
    progress: bool = False,
) -> RhythmResult:
    """Rhythm precision/recall/F1 (active and passive), BPM RMSE and drain-time RMSE between
    the maps of ``real`` and the generated maps of the same audio in ``generated``.

    Pairs come from :func:`pair_beatmaps` (``mapping`` optional). A pair whose maps cannot be
    read is skipped and listed in ``result.skipped``; InputError when no pair is usable.
    """
    if not tolerance_ms >= 0:
        raise InputError(f"tolerance_ms must be >= 0, got {tolerance_ms}")
    pairing = pair_beatmaps(real, generated, mapping)
    real_root, gen_root = Path(real), Path(generated)
    skipped = SkipLog()
    results: list[PairRhythm] = []
    for real_path, gen_path in tqdm(
        pairing.pairs, desc="rhythm", unit="pair", disable=not progress
    ):
        names = (_name(real_path, real_root), _name(gen_path, gen_root))
        maps = []
        for side, path, name in zip(("real", "generated"), (real_path, gen_path), names):
            try:
                maps.append(read_map_rhythm(path, modes=modes))
            except SourceError as exc:
                skipped.add(f"{side} {name}", str(exc))
        if len(maps) < 2:
            continue
        real_map, gen_map = maps
        results.append(
            PairRhythm(
                *names,
                match_onsets(real_map.active, gen_map.active, tolerance_ms),
                match_onsets(real_map.passive, gen_map.passive, tolerance_ms),
                real_map.main_bpm,
                gen_map.main_bpm,
                real_map.drain_time_s,
                gen_map.drain_time_s,
            )
        )
    if not results:
        raise InputError(f"none of the {len(pairing.pairs)} pairs could be read. {skipped.brief()}")
    return RhythmResult(
        active=sum((p.active for p in results), OnsetCounts()),
        passive=sum((p.passive for p in results), OnsetCounts()),
        bpm_rmse=_rmse([p.generated_bpm - p.real_bpm for p in results]),
        drain_time_rmse=_rmse([p.generated_drain_s - p.real_drain_s for p in results]),
        pairs=results,
        unmatched_real=pairing.unmatched_real,
        unmatched_generated=pairing.unmatched_generated,
        skipped=skipped,
    )


def _name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if root.is_dir() else path.name


def _rmse(errors: list[float]) -> float:
    return float(np.sqrt(np.mean(np.square(errors))))
