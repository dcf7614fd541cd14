"""Beatmap → event sequence, compatible with Mapperatorinator's mapper classifier.

The mapper classifier (OliBomby/Mapperatorinator, ``classifier/``) reads a beatmap as a flat
list of events, each with a time in milliseconds. This module rebuilds that list from a parsed
:class:`slider.Beatmap`, with the same event types, the same order and the same integer
arithmetic, so that the token windows made from it (``beatmap_fid.beatmap.tokenizer``) are the
ones the classifier was trained on.

What the reference does, and so what this module does (default classifier configuration:
``types_first``, timing, snapping and hitsounds on, positions split in two axes at precision 1,
no distances, no timing-point events):

- Every hit object becomes groups of events. A group is the type event, then (for timed groups)
  ``TIME_SHIFT`` (absolute time in ms) and ``SNAPPING``, then ``POS_X``/``POS_Y``, then
  ``NEW_COMBO`` if set, then one ``HITSOUND``/``VOLUME`` pair per hitsound. Every event of a
  group carries the group's time.
- Circle: ``CIRCLE`` group. Slider: ``SLIDER_HEAD`` group; one anchor group per inner control
  point (type, ``POS_X``, ``POS_Y``; no time events) at ``time + i / (n - 1) * span``, where
  ``span`` is one repeat's duration; a ``LAST_ANCHOR`` group at ``time + span`` at the last
  control point carrying the body hitsound (read at ``time + 1 ms``) and one hitsound per
  repeat edge; a ``SLIDER_END`` group at the end time at the curve's end point. Linear curves
  give red anchors, Catmull curves Catmull anchors, perfect curves perfect anchors; Bézier
  curves give a red anchor where a point repeats and a Bézier anchor otherwise (the second
  point of a repeated pair gives nothing). Sliders with 100 or more control points are left
  out entirely. Spinner: a ``SPINNER`` group (time only) and a ``SPINNER_END`` group with its
  hitsound.
- Times: ``int(t.total_seconds() * 1000 + 1e-5)`` of the ``timedelta`` time, reproduced
  bit for bit with integer microseconds and float64.
- Snapping: the uninherited timing point in effect; the first divisor ``d`` in 1..16 with
  ``|beats - round(beats * d) / d| * ms_per_beat < 2`` ms, else 0.
- Hitsound: the timing point in effect at ``t + 5 ms`` (inherited or not) gives the sample set
  (0 → soft) and the volume; a hitSample field of ``"0"`` inherits (the addition set inherits
  the object's sample set); sets outside 1..3 become normal;
  ``index = (hitsound & 14) // 2 + 8 * (sample_set - 1) + 24 * (addition_set - 1)``.
- Positions: divided by the precision, clipped to the configured range and truncated toward
  zero (Python ``int``), so ``-3.7 → -3``.
- Beats: from every timing point whose ``bpm`` is truthy, one ``BEAT`` per beat (``MEASURE``
  every ``meter`` beats, starting with one) until 10 ms before the next such timing point, or
  until the last hit object's time. Beat events carry no snapping. They are merged into the
  hit-object events with the reference's two-pointer merge (beat events first on equal times).

Where this module deliberately differs from the reference, it is only where the reference
crashes or loops forever; those inputs keep going here:

- A hitSample field that is missing or malformed is read as ``0:0`` (inherit). slider stores a
  circle or spinner line without its trailing hitSample field with the new-combo flag in
  ``addition`` and the combo skip in ``new_combo``; that shape is recognised and the new-combo
  flag taken from ``addition``.
- A slider whose curve end slider cannot compute (NaN when all control points are equal, an
  error for a one-point linear curve) ends at its last control point. A repeat count of 0
  counts as 1.
- A zero beat length loops forever in the reference; here a beat length rounding to 0 µs gives
  no beats (real maps use 1e-72 ms beat lengths as an editor trick).
- Timing points with a beat length of zero or NaN count as neither uninherited nor inherited
  for snapping (snapping 0) and give no beats; a meter of 0 gives only the first measure.
  Maps that would make more than ``MAX_BEAT_EVENTS`` beat events are refused with
  :class:`~beatmap_fid.errors.InputError`.
- Beatmaps without timing points snap to 0 and use the soft sample set at volume 100, as the
  reference's most recent version does.

The slider curve end point is computed here in batches with the same float operations, in the
same order, as slider's own Bézier code, so it is bit-identical to ``slider.curve(1)`` while
taking a fraction of its time; the test suite checks this against slider on real maps. A
Catmull curve ends exactly on its last control point in slider's arithmetic (its weights at
t = 1 are 0, 1, 0, 0), which is used directly because slider's ``float()`` of a one-element
array fails under numpy 2.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from itertools import pairwise
from typing import Any

import numpy as np

from beatmap_fid.errors import InputError

__all__ = [
    "MAX_BEAT_EVENTS",
    "Event",
    "EventArray",
    "EventConfig",
    "EventRange",
    "EventType",
    "beatmap_events",
    "event_type_code",
    "merge_event_streams",
    "slider_end_positions",
]

MAX_BEAT_EVENTS = 1_000_000
"""More beat/measure events than this means a broken timing point (a near-zero beat length)."""

MAX_CONTROL_POINTS = 100
"""The reference leaves out sliders with this many control points or more."""

_US = timedelta(microseconds=1)
_HITSOUND_LOOKAHEAD_US = 5_000
_SLIDER_BODY_HITSOUND_US = 1_000
_BEAT_STOP_BEFORE_NEXT_US = 10_000
_SPINNER_RESET_POSITION = (256.0, 192.0)


class EventType(Enum):
    """Event types with the reference's names, values and order (values matter for pickles)."""

    TIME_SHIFT = "t"
    SNAPPING = "snap"
    DISTANCE = "dist"
    NEW_COMBO = "new_combo"
    HITSOUND = "hitsound"
    VOLUME = "volume"
    CIRCLE = "circle"
    SPINNER = "spinner"
    SPINNER_END = "spinner_end"
    SLIDER_HEAD = "slider_head"
    BEZIER_ANCHOR = "bezier_anchor"
    PERFECT_ANCHOR = "perfect_anchor"
    CATMULL_ANCHOR = "catmull_anchor"
    RED_ANCHOR = "red_anchor"
    LAST_ANCHOR = "last_anchor"
    SLIDER_END = "slider_end"
    BEAT = "beat"
    MEASURE = "measure"
    TIMING_POINT = "timing_point"
    STYLE = "style"
    DIFFICULTY = "difficulty"
    MAPPER = "mapper"
    DESCRIPTOR = "descriptor"
    POS_X = "pos_x"
    POS_Y = "pos_y"
    POS = "pos"
    CS = "cs"


EVENT_TYPES: tuple[EventType, ...] = tuple(EventType)
_CODE = {event_type: code for code, event_type in enumerate(EVENT_TYPES)}


def event_type_code(event_type: EventType) -> int:
    """The small integer that stands for ``event_type`` in :class:`EventArray` (enum order)."""
    return _CODE[event_type]


@dataclass(frozen=True)
class Event:
    """One event: a type and an integer value (0 for types without a value)."""

    type: EventType
    value: int = 0

    def __repr__(self) -> str:
        return f"{self.type.value}{self.value}"


@dataclass(frozen=True)
class EventRange:
    """The inclusive range of values an event type takes in a vocabulary."""

    type: EventType
    min_value: int
    max_value: int

    @property
    def size(self) -> int:
        return self.max_value - self.min_value + 1


@dataclass(frozen=True)
class EventConfig:
    """The reference's ``data`` options that shape the event list (defaults: its train.yaml)."""

    types_first: bool = True
    add_timing: bool = True
    add_snapping: bool = True
    add_timing_points: bool = False
    add_hitsounds: bool = True
    add_distances: bool = False
    add_positions: bool = True
    position_precision: int = 1
    position_split_axes: bool = True
    position_range: tuple[int, int, int, int] = (-256, 768, -256, 640)
    distance_range: tuple[int, int] = (0, 640)

    @classmethod
    def from_mapping(cls, data: Any) -> EventConfig:
        """Build from the reference's ``args.data`` (a dict, DictConfig or attribute object)."""

        def get(name: str, default: Any) -> Any:
            if isinstance(data, Mapping) or hasattr(data, "get"):
                value = data.get(name, default)
            else:
                value = getattr(data, name, default)
            return default if value is None else value

        defaults = cls()
        return cls(
            types_first=bool(get("types_first", defaults.types_first)),
            add_timing=bool(get("add_timing", defaults.add_timing)),
            add_snapping=bool(get("add_snapping", defaults.add_snapping)),
            add_timing_points=bool(get("add_timing_points", defaults.add_timing_points)),
            add_hitsounds=bool(get("add_hitsounds", defaults.add_hitsounds)),
            add_distances=bool(get("add_distances", defaults.add_distances)),
            add_positions=bool(get("add_positions", defaults.add_positions)),
            position_precision=int(get("position_precision", defaults.position_precision)),
            position_split_axes=bool(get("position_split_axes", defaults.position_split_axes)),
            position_range=tuple(int(v) for v in get("position_range", defaults.position_range)),
        )


@dataclass(frozen=True)
class EventArray:
    """A list of events stored as two numpy arrays: type codes and values."""

    codes: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index: int) -> Event:
        return Event(EVENT_TYPES[int(self.codes[index])], int(self.values[index]))

    def to_list(self) -> list[Event]:
        return [
            Event(EVENT_TYPES[c], v)
            for c, v in zip(self.codes.tolist(), self.values.tolist(), strict=True)
        ]

    @classmethod
    def from_events(cls, events: Iterable[Event]) -> EventArray:
        events = list(events)
        return cls(
            np.array([_CODE[e.type] for e in events], dtype=np.uint8),
            np.array([e.value for e in events], dtype=np.int64),
        )


def _to_us(time: timedelta) -> int:
    return time // _US


def _ms_from_us(time_us: np.ndarray) -> np.ndarray:
    """``int(td.total_seconds() * 1000 + 1e-5)`` for timedeltas given in microseconds."""
    return np.trunc(np.asarray(time_us, dtype=np.int64) / 1e6 * 1000 + 1e-5).astype(np.int64)


class _TimingTable:
    """The beatmap's timing points as arrays, with slider's ``timing_point_at`` lookup."""

    def __init__(self, timing_points: Sequence[Any]) -> None:
        self.count = len(timing_points)
        index_of = {id(tp): i for i, tp in enumerate(timing_points)}
        self.offsets_us = np.array([_to_us(tp.offset) for tp in timing_points], dtype=np.int64)
        self.ms_per_beat = np.array([float(tp.ms_per_beat) for tp in timing_points])
        self.meter = np.array([int(tp.meter) for tp in timing_points], dtype=np.int64)
        self.sample_type = np.array([int(tp.sample_type) for tp in timing_points], dtype=np.int64)
        self.volume = np.array([int(tp.volume) for tp in timing_points], dtype=np.int64)
        self.uninherited = np.array(
            [
                i if tp.parent is None else index_of.get(id(tp.parent), i)
                for i, tp in enumerate(timing_points)
            ],
            dtype=np.int64,
        )
        order = np.argsort(self.offsets_us, kind="stable")
        self._sorted_offsets = self.offsets_us[order]
        self._latest = np.maximum.accumulate(order) if self.count else order

    def at(self, time_us: np.ndarray) -> np.ndarray:
        """Index of the last timing point in file order with offset ≤ t, else the first one."""
        pos = np.searchsorted(self._sorted_offsets, time_us, side="right") - 1
        return np.where(pos >= 0, self._latest[np.maximum(pos, 0)], 0)

    def has_bpm(self) -> np.ndarray:
        """slider's ``bool(tp.bpm)``: beat length ≥ 0 and ``round(60000 / beat length) != 0``."""
        mpb = self.ms_per_beat
        with np.errstate(divide="ignore", invalid="ignore"):
            bpm = np.round(60000.0 / np.where(mpb > 0, mpb, np.nan))
        return (mpb > 0) & np.isfinite(bpm) & (bpm != 0)


def _parse_hitsample(addition: Any) -> tuple[int, int]:
    """Sample set and addition set fields of a hitSample string; 0 means "inherit"."""
    if not isinstance(addition, str):
        return 0, 0
    result = [0, 0]
    for i, field in enumerate(addition.split(":")[:2]):
        if field == "0":
            continue
        try:
            value = int(field)
        except ValueError:
            continue
        # only a literal "0" inherits; any other value outside 1..3 means "normal" (-1 here)
        result[i] = value if 0 < value < 4 else -1
    return result[0], result[1]


class _Groups:
    """Event groups collected from hit objects, as plain lists turned into arrays later."""

    def __init__(self) -> None:
        self.code: list[int] = []
        self.time_us: list[int] = []
        self.timed: list[bool] = []
        self.snap: list[bool] = []
        self.has_pos: list[bool] = []
        self.x: list[float] = []
        self.y: list[float] = []
        self.reset: list[bool] = []
        self.new_combo: list[bool] = []
        self.hs_group: list[int] = []
        self.hs_time_us: list[int] = []
        self.hs_sound: list[int] = []
        self.hs_sample: list[int] = []
        self.hs_addition: list[int] = []
        self.slider_end_curves: list[Any] = []
        self.slider_end_groups: list[int] = []
        self._reset_pending = True
        self._hitsample_cache: dict[Any, tuple[int, int]] = {}

    def add(
        self,
        event_type: EventType,
        time_us: int,
        *,
        timed: bool = False,
        snap: bool = False,
        pos: tuple[float, float] | None = None,
        new_combo: bool = False,
        hitsounds: Sequence[tuple[int, int, Any]] = (),
    ) -> int:
        group = len(self.code)
        self.code.append(_CODE[event_type])
        self.time_us.append(time_us)
        self.timed.append(timed)
        self.snap.append(snap)
        self.new_combo.append(bool(new_combo))
        if pos is None:
            self.has_pos.append(False)
            self.x.append(0.0)
            self.y.append(0.0)
            self.reset.append(False)
        else:
            self.has_pos.append(True)
            self.x.append(pos[0])
            self.y.append(pos[1])
            self.reset.append(self._reset_pending)
            self._reset_pending = False
        cache = self._hitsample_cache
        for ref_us, sound, addition in hitsounds:
            key = addition if isinstance(addition, str) else None
            fields = cache.get(key)
            if fields is None:
                fields = cache[key] = _parse_hitsample(addition)
            self.hs_group.append(group)
            self.hs_time_us.append(ref_us)
            self.hs_sound.append(int(sound))
            self.hs_sample.append(fields[0])
            self.hs_addition.append(fields[1])
        return group

    def reset_position(self) -> None:
        """After a spinner the reference measures distances from the playfield centre."""
        self._reset_pending = True


def _circle_fields(obj: Any) -> tuple[Any, bool]:
    """hitSample and new-combo flag, undoing slider's shift when the hitSample is missing."""
    addition = obj.addition
    if isinstance(addition, bool):
        return "0:0", addition
    return addition, bool(obj.new_combo)


def _add_slider(groups: _Groups, slider: Any, curve_classes: dict[str, type]) -> None:
    curve = slider.curve
    points = curve.points
    count = len(points)
    if count >= MAX_CONTROL_POINTS:
        return
    start = slider.time
    start_us = _to_us(start)
    end_time = slider.end_time
    repeat = int(slider.repeat) or 1
    span = (end_time - start) / repeat
    edge_sounds = slider.edge_sounds
    edge_additions = slider.edge_additions

    groups.add(
        EventType.SLIDER_HEAD,
        start_us,
        timed=True,
        snap=True,
        pos=(slider.position.x, slider.position.y),
        new_combo=slider.new_combo,
        hitsounds=[
            (
                start_us,
                edge_sounds[0] if edge_sounds else 0,
                edge_additions[0] if edge_additions else "0:0",
            )
        ],
    )

    def anchor(event_type: EventType, i: int) -> None:
        time = start + i / (count - 1) * span
        groups.add(event_type, _to_us(time), pos=(points[i].x, points[i].y))

    if isinstance(curve, curve_classes["Linear"]):
        for i in range(1, count - 1):
            anchor(EventType.RED_ANCHOR, i)
    elif isinstance(curve, curve_classes["Catmull"]):
        for i in range(1, count - 1):
            anchor(EventType.CATMULL_ANCHOR, i)
    elif isinstance(curve, curve_classes["Perfect"]):
        for i in range(1, count - 1):
            anchor(EventType.PERFECT_ANCHOR, i)
    elif isinstance(curve, curve_classes["MultiBezier"]):
        for i in range(1, count - 1):
            if points[i] == points[i + 1]:
                anchor(EventType.RED_ANCHOR, i)
            elif points[i] != points[i - 1]:
                anchor(EventType.BEZIER_ANCHOR, i)

    last = points[-1]
    body = [(start_us + _SLIDER_BODY_HITSOUND_US, slider.hitsound, slider.addition)]
    for i in range(1, repeat):
        body.append(
            (
                _to_us(start + i * span),
                edge_sounds[i] if len(edge_sounds) > i else 0,
                edge_additions[i] if len(edge_additions) > i else "0:0",
            )
        )
    groups.add(
        EventType.LAST_ANCHOR,
        _to_us(start + span),
        timed=True,
        snap=True,
        pos=(last.x, last.y),
        hitsounds=body,
    )
    end_group = groups.add(
        EventType.SLIDER_END,
        _to_us(end_time),
        timed=True,
        snap=True,
        pos=(last.x, last.y),  # replaced by the curve's end point once computed
        hitsounds=[
            (
                _to_us(end_time),
                edge_sounds[-1] if edge_sounds else 0,
                edge_additions[-1] if edge_additions else "0:0",
            )
        ],
    )
    groups.slider_end_curves.append(curve)
    groups.slider_end_groups.append(end_group)


def _collect_hit_object_groups(hit_objects: Sequence[Any]) -> _Groups:
    import slider
    import slider.curve

    curve_classes = {
        name: getattr(slider.curve, name)
        for name in ("Linear", "Catmull", "Perfect", "MultiBezier")
    }
    circle_type, slider_type, spinner_type = slider.Circle, slider.Slider, slider.Spinner
    groups = _Groups()
    for obj in hit_objects:
        if isinstance(obj, circle_type):
            time_us = _to_us(obj.time)
            addition, new_combo = _circle_fields(obj)
            groups.add(
                EventType.CIRCLE,
                time_us,
                timed=True,
                snap=True,
                pos=(obj.position.x, obj.position.y),
                new_combo=new_combo,
                hitsounds=[(time_us, obj.hitsound, addition)],
            )
        elif isinstance(obj, slider_type):
            _add_slider(groups, obj, curve_classes)
        elif isinstance(obj, spinner_type):
            addition, _ = _circle_fields(obj)
            end_us = _to_us(obj.end_time)
            groups.add(EventType.SPINNER, _to_us(obj.time), timed=True, snap=True)
            groups.add(
                EventType.SPINNER_END,
                end_us,
                timed=True,
                snap=True,
                hitsounds=[(end_us, obj.hitsound, addition)],
            )
            groups.reset_position()
    return groups


# --- slider curve end points, bit-identical to slider.curve(1) -----------------------------


def _bezier_coefficients(degree: int, t: np.ndarray) -> np.ndarray:
    """slider's ``Bezier.at`` weights for times ``t`` of shape (m, 1): shape (m, degree + 1)."""
    from scipy.special import comb

    ixs = np.arange(degree + 1)
    return comb(degree, ixs) * (1 - t) ** (degree - ixs) * t**ixs


def _bezier_points(coefficients: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
    """Curve points for weights (b, m, k) and control points (b, 2, k): shape (b, m, 2).

    slider multiplies weights by a transposed coordinate array, so numpy lays the product out
    with the control-point axis outermost and sums it one control point after the other; the
    sum here runs in that same order to give the same floats.
    """
    terms = coefficients[:, :, np.newaxis, :] * coordinates[:, np.newaxis, :, :]
    total = terms[..., 0]
    for k in range(1, terms.shape[-1]):
        total = total + terms[..., k]
    return total


_LENGTH_SAMPLES = np.linspace(0, 1, 50).reshape(-1, 1)


def _bezier_lengths(segments: list[np.ndarray]) -> np.ndarray:
    """slider's ``Bezier.length`` (50-sample polyline) for many segments, grouped by degree."""
    lengths = np.zeros(len(segments))
    by_degree: dict[int, list[int]] = {}
    for i, seg in enumerate(segments):
        by_degree.setdefault(seg.shape[1] - 1, []).append(i)
    for degree, members in by_degree.items():
        coordinates = np.stack([segments[i] for i in members])
        weights = _bezier_coefficients(degree, _LENGTH_SAMPLES)[np.newaxis]
        samples = _bezier_points(weights, coordinates)
        steps = np.sqrt(np.sum(np.square(np.diff(samples, axis=1)), axis=2))
        lengths[members] = np.sum(steps, axis=1)
    return lengths


def _split_at_repeats(points: np.ndarray) -> list[np.ndarray]:
    """slider's ``MultiBezier._split_at_dupes``: sub-curves split where a point repeats."""
    same = np.all(points[1:] == points[:-1], axis=1)
    cuts = np.flatnonzero(same) + 1
    bounds = [0, *cuts.tolist(), len(points)]
    return [points[a:b] for a, b in pairwise(bounds) if b > a]


def _meta_curve_end(lengths: np.ndarray, req_length: float) -> tuple[int, float, float]:
    """slider's ``_MetaCurveMixin.__call__(1)``: (segment, segment t, segment req_length)."""
    seg_lengths = [lengths[i] for i in range(len(lengths))]
    total = 0
    for value in seg_lengths:
        total = total + value
    ts: list[Any] = []
    running = 0
    for value in seg_lengths[:-1]:
        running = running + value
        ts.append(running / total)
    last_req = seg_lengths[-1] - (total - req_length)
    last_req = last_req if last_req > 0 else 0
    ts.append(1)
    requested = [*seg_lengths[:-1], last_req]
    if len(seg_lengths) == 1:
        return 0, 1, requested[0]
    index = bisect.bisect_left(ts, 1)
    before = ts[index - 1] if index > 0 else 0
    return index, (1 - before) / (ts[index] - before), requested[index]


def slider_end_positions(curves: Sequence[Any]) -> np.ndarray:
    """``curve(1)`` of many slider curves as float64 (n, 2), equal to slider's own result.

    Bézier and linear curves (slider's costly ones) are evaluated in batches with slider's
    exact float operations; a Catmull curve ends on its last point; other curves are asked
    directly. NaN marks a curve without an end.
    """
    import slider.curve

    out = np.full((len(curves), 2), np.nan)
    pieces: list[list[np.ndarray]] = []
    meta: list[int] = []
    for i, curve in enumerate(curves):
        if isinstance(curve, slider.curve.MultiBezier | slider.curve.Linear):
            points = np.array(curve.points, dtype=np.float64).reshape(-1, 2)
            if isinstance(curve, slider.curve.MultiBezier):
                segs = _split_at_repeats(points)
            else:
                segs = [points[j : j + 2] for j in range(len(points) - 1)]
            if segs:
                pieces.append([s.T.copy() for s in segs])
                meta.append(i)
            continue
        if isinstance(curve, slider.curve.Catmull):
            # slider's Catmull at t = 1 weighs the last point by exactly 1 and the rest by 0
            # (and its float() of a 1-element array fails on numpy 2)
            out[i] = (curve.points[-1].x, curve.points[-1].y)
            continue
        try:
            end = curve(1)
            out[i] = (float(end[0]), float(end[1]))
        except (ArithmeticError, IndexError, TypeError, ValueError):
            pass
    if not meta:
        return out
    flat = [seg for segs in pieces for seg in segs]
    with np.errstate(divide="ignore", invalid="ignore"):
        lengths = _bezier_lengths(flat)
        chosen: dict[int, list[tuple[int, float, np.ndarray]]] = {}
        start = 0
        for i, segs in zip(meta, pieces):
            seg_lengths = lengths[start : start + len(segs)]
            start += len(segs)
            index, t, req = _meta_curve_end(seg_lengths, curves[i].req_length)
            eval_t = t * (req / seg_lengths[index])
            seg = segs[index]
            chosen.setdefault(seg.shape[1] - 1, []).append((i, eval_t, seg))
        for degree, items in chosen.items():
            t = np.array([[item[1]] for item in items], dtype=np.float64)
            weights = _bezier_coefficients(degree, t)[:, np.newaxis, :]
            coordinates = np.stack([item[2] for item in items])
            out[[item[0] for item in items]] = _bezier_points(weights, coordinates)[:, 0, :]
    return out


# --- timing (beat and measure) events ----------------------------------------------------


def _beat_groups(
    table: _TimingTable, last_time_us: int, config: EventConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Codes and times (µs) of the beat/measure groups made from the BPM timing points."""
    codes: list[np.ndarray] = []
    times: list[np.ndarray] = []
    bpm_points = np.flatnonzero(table.has_bpm())
    total = 0
    for n, i in enumerate(bpm_points):
        offset = int(table.offsets_us[i])
        if n + 1 < len(bpm_points):
            stop = int(table.offsets_us[bpm_points[n + 1]]) - _BEAT_STOP_BEFORE_NEXT_US
        else:
            stop = last_time_us
        beat_us = _to_us(timedelta(milliseconds=float(table.ms_per_beat[i])))
        if beat_us <= 0 or stop < offset:
            continue
        count = (stop - offset) // beat_us + 1
        total += count
        if total > MAX_BEAT_EVENTS:
            raise InputError(
                f"timing point at {offset / 1000:g} ms has a beat length of "
                f"{table.ms_per_beat[i]:g} ms, which would make over {MAX_BEAT_EVENTS} beat "
                "events; fix the map's timing points"
            )
        k = np.arange(count, dtype=np.int64)
        meter = int(table.meter[i])
        is_measure = (k % meter == 0) if meter != 0 else (k == 0)
        code = np.where(is_measure, _CODE[EventType.MEASURE], _CODE[EventType.BEAT])
        if config.add_timing_points:
            code[0] = _CODE[EventType.TIMING_POINT]
        codes.append(code.astype(np.uint8))
        times.append(offset + k * beat_us)
    if not codes:
        return np.zeros(0, np.uint8), np.zeros(0, np.int64)
    return np.concatenate(codes), np.concatenate(times)


# --- group → event emission ----------------------------------------------------------------


@dataclass
class _GroupTable:
    code: np.ndarray  # uint8 (g,)
    time_ms: np.ndarray  # int64 (g,)
    timed: np.ndarray  # bool (g,)
    snapping: np.ndarray | None  # int64 (g,) or None when no group has snapping
    snapped: np.ndarray  # bool (g,)
    pos_values: list[tuple[int, np.ndarray]]  # (event code, int64 (g,)) in emission order
    has_pos: np.ndarray  # bool (g,)
    new_combo: np.ndarray  # bool (g,)
    hs_group: np.ndarray  # int64 (h,), sorted
    hs_index: np.ndarray  # int64 (h,)
    hs_volume: np.ndarray  # int64 (h,)


def _emit(groups: _GroupTable, types_first: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay every group's events out in the reference's order: codes, values, times (ms)."""
    n_groups = len(groups.code)
    n_hs = np.bincount(groups.hs_group, minlength=n_groups)
    n_pos = len(groups.pos_values)
    counts = (
        1
        + groups.timed.astype(np.int64)
        + groups.snapped
        + groups.has_pos * n_pos
        + groups.new_combo
        + 2 * n_hs
    )
    total = int(counts.sum())
    codes = np.zeros(total, np.uint8)
    values = np.zeros(total, np.int64)
    times = np.repeat(groups.time_ms, counts)
    cursor = np.cumsum(counts) - counts
    all_groups = np.ones(n_groups, bool)

    def put(present: np.ndarray, code: int | np.ndarray, value: int | np.ndarray = 0) -> None:
        at = cursor[present]
        codes[at] = code if np.isscalar(code) else code[present]
        values[at] = value if np.isscalar(value) else value[present]
        cursor[present] += 1

    if types_first:
        put(all_groups, groups.code)
    put(groups.timed, _CODE[EventType.TIME_SHIFT], groups.time_ms)
    if groups.snapping is not None:
        put(groups.snapped, _CODE[EventType.SNAPPING], groups.snapping)
    for code, value in groups.pos_values:
        put(groups.has_pos, code, value)
    put(groups.new_combo, _CODE[EventType.NEW_COMBO])
    if len(groups.hs_group):
        first = np.searchsorted(groups.hs_group, np.arange(n_groups))
        local = np.arange(len(groups.hs_group)) - first[groups.hs_group]
        at = cursor[groups.hs_group] + 2 * local
        codes[at] = _CODE[EventType.HITSOUND]
        values[at] = groups.hs_index
        codes[at + 1] = _CODE[EventType.VOLUME]
        values[at + 1] = groups.hs_volume
        cursor += 2 * n_hs
    if not types_first:
        put(all_groups, groups.code)
    return codes, values, times


def merge_event_streams(first_times: np.ndarray, second_times: np.ndarray) -> np.ndarray:
    """Order of the reference's two-pointer ``merge_events`` (first stream wins ties).

    Returns indices into the concatenation ``[first, second]``. The two-pointer merge of
    sequences that need not be sorted equals a stable merge keyed by each sequence's running
    maximum, which is what is computed here.
    """
    keys = np.concatenate(
        [
            np.maximum.accumulate(first_times) if len(first_times) else first_times,
            np.maximum.accumulate(second_times) if len(second_times) else second_times,
        ]
    )
    return np.argsort(keys, kind="stable")


def _snapping(table: _TimingTable, time_us: np.ndarray) -> np.ndarray:
    """The reference's snapping divisor (1..16, or 0) of each time."""
    if table.count == 0 or len(time_us) == 0:
        return np.zeros(len(time_us), np.int64)
    tp = table.uninherited[table.at(time_us)]
    mpb = table.ms_per_beat[tp]
    usable = (mpb != 0) & np.isfinite(mpb)
    mpb = np.where(usable, mpb, 1.0)
    beats = (time_us - table.offsets_us[tp]) / 1e6 * 1000 / mpb
    snapping = np.zeros(len(time_us), np.int64)
    undecided = usable.copy()
    for divisor in range(1, 17):
        hit = undecided & (np.abs(beats - np.round(beats * divisor) / divisor) * mpb < 2)
        snapping[hit] = divisor
        undecided &= ~hit
    return snapping


def _hitsounds(groups: _Groups, table: _TimingTable) -> tuple[np.ndarray, np.ndarray]:
    """Hitsound index and volume of every collected hitsound."""
    ref_us = np.array(groups.hs_time_us, dtype=np.int64)
    if table.count:
        tp = table.at(ref_us + _HITSOUND_LOOKAHEAD_US)
        tp_sample = table.sample_type[tp]
        tp_sample = np.where(tp_sample != 0, tp_sample, 2)
        volume = table.volume[tp]
    else:
        tp_sample = np.full(len(ref_us), 2, np.int64)
        volume = np.full(len(ref_us), 100, np.int64)
    sample_field = np.array(groups.hs_sample, dtype=np.int64)
    addition_field = np.array(groups.hs_addition, dtype=np.int64)
    sample_set = np.where(sample_field == 0, tp_sample, sample_field)
    addition_set = np.where(addition_field == 0, sample_set, addition_field)
    sample_set = np.where((sample_set > 0) & (sample_set < 4), sample_set, 1)
    addition_set = np.where((addition_set > 0) & (addition_set < 4), addition_set, 1)
    sound = np.array(groups.hs_sound, dtype=np.int64) & 14
    index = sound // 2 + 8 * (sample_set - 1) + 24 * (addition_set - 1)
    return index, np.clip(volume, 0, 100)


def _position_values(
    x: np.ndarray, y: np.ndarray, config: EventConfig
) -> list[tuple[int, np.ndarray]]:
    """POS_X/POS_Y (or POS) values: scaled, clipped and truncated toward zero."""
    p = config.position_precision
    x_min, x_max, y_min, y_max = config.position_range
    px = np.trunc(np.clip(x / p, x_min / p, x_max / p)).astype(np.int64)
    py = np.trunc(np.clip(y / p, y_min / p, y_max / p)).astype(np.int64)
    if config.position_split_axes:
        return [(_CODE[EventType.POS_X], px), (_CODE[EventType.POS_Y], py)]
    x_lo, x_hi, y_lo = x_min // p, x_max // p, y_min // p
    return [(_CODE[EventType.POS], (px - x_lo) + (py - y_lo) * (x_hi - x_lo + 1))]


def _distance_values(
    x: np.ndarray, y: np.ndarray, reset: np.ndarray, config: EventConfig
) -> np.ndarray:
    """DISTANCE values: from the previous positioned group, or the centre after a reset."""
    prev_x = np.where(reset, _SPINNER_RESET_POSITION[0], np.roll(x, 1))
    prev_y = np.where(reset, _SPINNER_RESET_POSITION[1], np.roll(y, 1))
    dist = np.sqrt((x - prev_x) ** 2 + (y - prev_y) ** 2)
    lo, hi = config.distance_range
    return np.trunc(np.clip(dist, lo, hi)).astype(np.int64)


def _hit_object_table(groups: _Groups, table: _TimingTable, config: EventConfig) -> _GroupTable:
    n = len(groups.code)
    time_us = np.array(groups.time_us, dtype=np.int64)
    timed = np.array(groups.timed, dtype=bool)
    snapped = timed & np.array(groups.snap, dtype=bool) & config.add_snapping
    has_pos = np.array(groups.has_pos, dtype=bool)
    x = np.array(groups.x, dtype=np.float64)
    y = np.array(groups.y, dtype=np.float64)
    if groups.slider_end_curves:
        ends = slider_end_positions(groups.slider_end_curves)
        ok = ~np.isnan(ends).any(axis=1)
        at = np.array(groups.slider_end_groups)[ok]
        x[at], y[at] = ends[ok, 0], ends[ok, 1]

    pos_values: list[tuple[int, np.ndarray]] = []
    if config.add_distances:
        px, py = x[has_pos], y[has_pos]
        dist = np.zeros(n, np.int64)
        dist[has_pos] = _distance_values(px, py, np.array(groups.reset, bool)[has_pos], config)
        pos_values.append((_CODE[EventType.DISTANCE], dist))
    if config.add_positions:
        pos_values.extend(_position_values(x, y, config))

    if config.add_hitsounds and groups.hs_group:
        hs_index, hs_volume = _hitsounds(groups, table)
        hs_group = np.array(groups.hs_group, dtype=np.int64)
    else:
        hs_index = hs_volume = hs_group = np.zeros(0, np.int64)

    snapping = np.zeros(n, np.int64)
    if snapped.any():
        snapping[snapped] = _snapping(table, time_us[snapped])
    return _GroupTable(
        code=np.array(groups.code, dtype=np.uint8),
        time_ms=_ms_from_us(time_us),
        timed=timed,
        snapping=snapping,
        snapped=snapped,
        pos_values=pos_values,
        has_pos=has_pos if pos_values else np.zeros(n, bool),
        new_combo=np.array(groups.new_combo, dtype=bool),
        hs_group=hs_group,
        hs_index=hs_index,
        hs_volume=hs_volume,
    )


def _beat_table(codes: np.ndarray, time_us: np.ndarray) -> _GroupTable:
    n = len(codes)
    none = np.zeros(n, bool)
    empty = np.zeros(0, np.int64)
    return _GroupTable(
        code=codes,
        time_ms=_ms_from_us(time_us),
        timed=np.ones(n, bool),
        snapping=None,
        snapped=none,
        pos_values=[],
        has_pos=none,
        new_combo=none,
        hs_group=empty,
        hs_index=empty,
        hs_volume=empty,
    )


def beatmap_events(
    beatmap: Any, config: EventConfig | None = None
) -> tuple[EventArray, np.ndarray]:
    """The reference's event list and event times (ms, int64) for a parsed ``slider.Beatmap``.

    Equivalent to the reference's ``OsuParser(args, tokenizer).parse(beatmap)`` without speed
    change or flips. Raises :class:`~beatmap_fid.errors.InputError` for timing so broken that it
    would make more than ``MAX_BEAT_EVENTS`` beat events.
    """
    config = config or EventConfig()
    hit_objects = beatmap.hit_objects(stacking=False)
    table = _TimingTable(beatmap.timing_points)
    groups = _collect_hit_object_groups(hit_objects)
    codes, values, times = _emit(_hit_object_table(groups, table, config), config.types_first)

    if config.add_timing:
        if hit_objects:
            last = hit_objects[-1]
            last_time_us = _to_us(getattr(last, "end_time", last.time))
        else:
            last_time_us = 0
        beat_codes, beat_us = _beat_groups(table, last_time_us, config)
        b_codes, b_values, b_times = _emit(_beat_table(beat_codes, beat_us), config.types_first)
        order = merge_event_streams(b_times, times)
        codes = np.concatenate([b_codes, codes])[order]
        values = np.concatenate([b_values, values])[order]
        times = np.concatenate([b_times, times])[order]
    return EventArray(codes, values), times
