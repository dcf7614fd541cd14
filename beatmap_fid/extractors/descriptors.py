"""The default extractor ``"descriptors"``: interpretable statistics of each beatmap window.

Weight-free and deterministic: every window of an osu!standard map (cut as the mapper
classifier cuts its audio, see :mod:`beatmap_fid.beatmap.windows`) becomes a float32 vector of
:data:`DESCRIPTOR_NAMES`, in these groups (shares are fractions of the window's objects, or of
its gaps, sliders, ... as named; histograms sum to 1 when the window has any such element):

- ``window``: objects per second, log(1 + objects), empty flag, circle / slider / spinner
  shares, fraction of the window's time inside slider bodies and spinners (overlaps counted
  once at most), log2(mean BPM of the objects / 180).
- ``snap``: share of objects on each beat division (1, 1/2, 1/3, 1/4, 1/6, 1/8, 1/12, 1/16,
  other), within 2 ms of the active red line's grid.
- ``rhythm``: histogram of gaps between consecutive object starts in beats (nearest of 1/8,
  1/6, 1/4, 1/3, 1/2, 2/3, 3/4, 1, 3/2, 2, 3, 4 on a log scale), share of gaps that change
  length, mean log2 gap, mean rest (previous end to next start) in beats.
- ``spacing``: histogram of distances from one object's end to the next object's start (px),
  their mean and std / 100, and mean and std of that distance per beat of time / 100.
- ``angle``: histogram of the angle at each object between the incoming and outgoing jump
  (0° = back where it came from, 180° = straight on), and the mean angle / 180.
- ``slider``: slider length histogram (px), mean log(1 + length), speed (px/ms) mean and std,
  mean slider velocity multiplier, histogram of the beats one slide lasts, share with
  repeats, mean slides, curve type shares (Bezier, linear, perfect circle, Catmull), mean
  log number of control points.
- ``combo``: new-combo rate, mean combo length.
- ``hitsound``: shares with whistle, finish, clap, any of them, a custom sample set.
- ``playfield``: share of objects in each cell of a 4 x 3 grid, mean and std of x and y
  (normalised by the playfield size).
- ``difficulty``: the map's CS, AR, OD, HP / 10, slider multiplier, slider tick rate.

The per-map work (reading, curve ends, timing lookups) happens once per map in
:meth:`DescriptorExtractor.items`; each item's payload is a view of that map's object table
for one window, and :meth:`DescriptorExtractor.embed` computes a whole batch in one numba
call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import slider
from numba import njit

from beatmap_fid.beatmap.audio import audio_num_samples
from beatmap_fid.beatmap.reading import BeatmapFile, iter_beatmap_files, missing_audio_reason
from beatmap_fid.beatmap.windows import (
    DEFAULT_LENGTH_MARGIN_MS,
    DEFAULT_SAMPLE_RATE,
    DEFAULT_WINDOW_SAMPLES,
    WindowSpec,
    beatmap_num_samples,
    window_bounds_ms,
    window_starts,
)
from beatmap_fid.errors import SkipLog, SourceError
from beatmap_fid.extractors.base import Item

FEATURE_VERSION = 1

# Columns of the per-map object table (float64, one row per hit object, sorted by time).
TIME, END, X, Y, END_X, END_Y, KIND, NEW_COMBO, HITSOUND, CUSTOM_SAMPLE = range(10)
LENGTH, SLIDES, CURVE, POINTS, BEAT_MS, BEAT_OFFSET, VELOCITY = range(10, 17)
N_COLUMNS = 17
CIRCLE, SLIDER, SPINNER = 0.0, 1.0, 2.0
BEZIER_CURVE, LINEAR_CURVE, PERFECT_CURVE, CATMULL_CURVE = 0.0, 1.0, 2.0, 3.0
CURVE_KINDS = {
    "MultiBezier": BEZIER_CURVE,
    "Bezier": BEZIER_CURVE,
    "Linear": LINEAR_CURVE,
    "Perfect": PERFECT_CURVE,
    "Catmull": CATMULL_CURVE,
}
# Per-map settings: CS, AR, OD, HP, slider multiplier, slider tick rate.
N_SETTINGS = 6

SNAP_DIVISORS = np.array([1, 2, 3, 4, 6, 8, 12, 16], dtype=np.float64)
SNAP_TOLERANCE_MS = 2.0
GAP_BEATS = np.array([1 / 8, 1 / 6, 1 / 4, 1 / 3, 1 / 2, 2 / 3, 3 / 4, 1, 3 / 2, 2, 3, 4])
SPACING_EDGES_PX = np.array([5.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0])
ANGLE_BINS = 6
SLIDER_LENGTH_EDGES_PX = np.array([50.0, 100.0, 150.0, 200.0, 300.0])
SLIDE_BEAT_EDGES = np.array([0.375, 0.75, 1.5, 3.0])
GRID_COLUMNS, GRID_ROWS = 4, 3
MIN_JUMP_PX = 10.0


def _fraction_name(value: float) -> str:
    for denominator in (1, 2, 3, 4, 6, 8):
        numerator = value * denominator
        if abs(numerator - round(numerator)) < 1e-9:
            return (
                f"{round(numerator)}" if denominator == 1 else f"{round(numerator)}_{denominator}"
            )
    raise ValueError(value)


def _edge_names(prefix: str, edges: np.ndarray, unit: str) -> list[str]:
    bounds = [0.0, *edges.tolist()]
    names = [f"{prefix}_{a:g}_{b:g}{unit}" for a, b in pairwise(bounds)]
    return [*names, f"{prefix}_{bounds[-1]:g}{unit}_plus"]


DESCRIPTOR_GROUPS: dict[str, list[str]] = {
    "window": [
        "objects_per_second",
        "log_objects",
        "empty",
        "circle_share",
        "slider_share",
        "spinner_share",
        "slider_time_share",
        "spinner_time_share",
        "bpm_log2_rel_180",
    ],
    "snap": [*(f"snap_1_{int(d)}" if d > 1 else "snap_1" for d in SNAP_DIVISORS), "snap_other"],
    "rhythm": [
        *(f"gap_{_fraction_name(b)}_beat" for b in GAP_BEATS),
        "gap_change_share",
        "gap_log2_beats_mean",
        "rest_beats_mean",
    ],
    "spacing": [
        *_edge_names("spacing", SPACING_EDGES_PX, "px"),
        "spacing_mean_div_100",
        "spacing_std_div_100",
        "spacing_per_beat_mean_div_100",
        "spacing_per_beat_std_div_100",
    ],
    "angle": [
        *(f"angle_{30 * i}_{30 * (i + 1)}deg" for i in range(ANGLE_BINS)),
        "angle_mean_div_180",
    ],
    "slider": [
        *_edge_names("slider_length", SLIDER_LENGTH_EDGES_PX, "px"),
        "slider_log_length_mean",
        "slider_speed_mean_px_per_ms",
        "slider_speed_std_px_per_ms",
        "slider_velocity_mean",
        *_edge_names("slide", SLIDE_BEAT_EDGES, "beats"),
        "slider_repeat_share",
        "slider_slides_mean",
        "curve_bezier_share",
        "curve_linear_share",
        "curve_perfect_share",
        "curve_catmull_share",
        "slider_log_control_points_mean",
    ],
    "combo": ["new_combo_rate", "combo_length_mean"],
    "hitsound": [
        "whistle_share",
        "finish_share",
        "clap_share",
        "hitsound_share",
        "custom_sample_share",
    ],
    "playfield": [
        *(f"grid_{c}_{r}" for r in range(GRID_ROWS) for c in range(GRID_COLUMNS)),
        "x_mean",
        "y_mean",
        "x_std",
        "y_std",
    ],
    "difficulty": [
        "circle_size_div_10",
        "approach_rate_div_10",
        "overall_difficulty_div_10",
        "hp_drain_div_10",
        "slider_multiplier",
        "slider_tick_rate",
    ],
}
DESCRIPTOR_NAMES: list[str] = [name for names in DESCRIPTOR_GROUPS.values() for name in names]
"""Names of the descriptor features, in vector order (see the module docstring)."""
DIM = len(DESCRIPTOR_NAMES)


@dataclass(frozen=True)
class DescriptorWindow:
    """Payload of one window: its rows of the map's object table, bounds and map settings."""

    objects: np.ndarray
    start_ms: float
    end_ms: float
    settings: np.ndarray


PATH_SAMPLES = 50
"""Points per Bezier segment, Catmull segment and circular arc when a slider path is
approximated by a polyline (as the game does, to the same end: finding where it stops)."""


DE_CASTELJAU_MAX_POINTS = 64
"""Bezier segments of at most this many control points are evaluated by de Casteljau's
algorithm (O(m²) per point, the most accurate); longer ones by their Bernstein sum in log
space (O(m) per point), so that a slider's cost grows linearly with its control points."""


@njit(cache=True)
def _de_casteljau_point(points: np.ndarray, t: float, work: np.ndarray) -> tuple[float, float]:
    """De Casteljau evaluation (stable at any degree, unlike the plain Bernstein sum)."""
    m = points.shape[0]
    work[:m] = points
    for r in range(1, m):
        for i in range(m - r):
            work[i] = (1.0 - t) * work[i] + t * work[i + 1]
    return work[0, 0], work[0, 1]


@njit(cache=True)
def _log_binomials(n: int) -> np.ndarray:
    """``log C(n, i)`` for ``i = 0..n``."""
    out = np.empty(n + 1)
    top = math.lgamma(n + 1.0)
    for i in range(n + 1):
        out[i] = top - math.lgamma(i + 1.0) - math.lgamma(n - i + 1.0)
    return out


@njit(cache=True)
def _bernstein_point(
    points: np.ndarray, t: float, log_binomial: np.ndarray, log_weight: np.ndarray
) -> tuple[float, float]:
    """Bezier point as the Bernstein-weighted mean of the control points, in O(m).

    Weights are computed as logarithms and shifted by their largest before ``exp`` (no
    overflow of the binomials, no underflow of ``t^i (1-t)^(n-i)`` at high degree), then
    normalised by their sum, so the point stays an exact convex combination.
    """
    n = points.shape[0] - 1
    if t <= 0.0:
        return points[0, 0], points[0, 1]
    if t >= 1.0:
        return points[n, 0], points[n, 1]
    log_t, log_u = math.log(t), math.log1p(-t)
    largest = -np.inf
    for i in range(n + 1):
        log_weight[i] = log_binomial[i] + i * log_t + (n - i) * log_u
        largest = max(largest, log_weight[i])
    total, x, y = 0.0, 0.0, 0.0
    for i in range(n + 1):
        weight = math.exp(log_weight[i] - largest)
        total += weight
        x += weight * points[i, 0]
        y += weight * points[i, 1]
    return x / total, y / total


@njit(cache=True)
def _bezier_polyline(points: np.ndarray) -> np.ndarray:
    """Segments split at repeated points (red anchors), each sampled along its curve.

    The work is linear in the number of control points (see
    :data:`DE_CASTELJAU_MAX_POINTS`).
    """
    n = points.shape[0]
    out = np.empty((n * (PATH_SAMPLES + 1), 2))
    work = np.empty((min(n, DE_CASTELJAU_MAX_POINTS), 2))
    count = 0
    start = 0
    for i in range(1, n + 1):
        if i < n and (points[i, 0] != points[i - 1, 0] or points[i, 1] != points[i - 1, 1]):
            continue
        segment = points[start:i]
        m = segment.shape[0]
        if m == 1:
            out[count] = segment[0]
            count += 1
        elif m <= DE_CASTELJAU_MAX_POINTS:
            for s in range(PATH_SAMPLES + 1):
                t = s / PATH_SAMPLES
                out[count, 0], out[count, 1] = _de_casteljau_point(segment, t, work)
                count += 1
        else:
            log_binomial = _log_binomials(m - 1)
            log_weight = np.empty(m)
            for s in range(PATH_SAMPLES + 1):
                t = s / PATH_SAMPLES
                out[count, 0], out[count, 1] = _bernstein_point(
                    segment, t, log_binomial, log_weight
                )
                count += 1
        start = i
    return out[:count]


@njit(cache=True)
def _catmull_polyline(points: np.ndarray) -> np.ndarray:
    n = points.shape[0]
    out = np.empty(((n - 1) * PATH_SAMPLES + 1, 2))
    out[0] = points[0]
    count = 1
    for i in range(n - 1):
        v1 = points[i - 1] if i > 0 else points[i]
        v2 = points[i]
        v3 = points[i + 1]
        v4 = points[i + 2] if i < n - 2 else 2.0 * v3 - v2
        for s in range(1, PATH_SAMPLES + 1):
            t = s / PATH_SAMPLES
            out[count] = 0.5 * (
                2.0 * v2
                + (-v1 + v3) * t
                + (2.0 * v1 - 5.0 * v2 + 4.0 * v3 - v4) * t * t
                + (-v1 + 3.0 * v2 - 3.0 * v3 + v4) * t * t * t
            )
            count += 1
    return out


@njit(cache=True)
def _arc_polyline(points: np.ndarray) -> np.ndarray:
    """The circular arc from the first point through the second to the third, or an empty
    array when the points are (nearly) collinear."""
    ax, ay = points[0, 0], points[0, 1]
    bx, by = points[1, 0], points[1, 1]
    cx, cy = points[2, 0], points[2, 1]
    d = 2.0 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    if abs(d) < 1e-3:
        return np.empty((0, 2))
    a2, b2, c2 = ax * ax + ay * ay, bx * bx + by * by, cx * cx + cy * cy
    ux = (a2 * (by - cy) + b2 * (cy - ay) + c2 * (ay - by)) / d
    uy = (a2 * (cx - bx) + b2 * (ax - cx) + c2 * (bx - ax)) / d
    radius = math.hypot(ax - ux, ay - uy)
    start = math.atan2(ay - uy, ax - ux)
    end = math.atan2(cy - uy, cx - ux)
    while end < start:
        end += 2.0 * math.pi
    direction = 1.0
    span = end - start
    # Which way round: the side of the chord a-c that b lies on.
    if (cy - ay) * (bx - ax) - (cx - ax) * (by - ay) < 0:
        direction = -1.0
        span = 2.0 * math.pi - span
    out = np.empty((PATH_SAMPLES + 1, 2))
    for s in range(PATH_SAMPLES + 1):
        angle = start + direction * span * s / PATH_SAMPLES
        out[s, 0] = ux + radius * math.cos(angle)
        out[s, 1] = uy + radius * math.sin(angle)
    return out


@njit(cache=True)
def _polyline_end(polyline: np.ndarray, length: float) -> tuple[float, float]:
    """The point ``length`` px along the polyline; past its end, along its last segment."""
    remaining = length
    last_dx, last_dy, last_d = 0.0, 0.0, 0.0
    for i in range(1, polyline.shape[0]):
        dx = polyline[i, 0] - polyline[i - 1, 0]
        dy = polyline[i, 1] - polyline[i - 1, 1]
        d = math.hypot(dx, dy)
        if d == 0.0:
            continue
        if remaining <= d:
            return polyline[i - 1, 0] + dx * remaining / d, polyline[i - 1, 1] + dy * remaining / d
        remaining -= d
        last_dx, last_dy, last_d = dx, dy, d
    x, y = polyline[-1, 0], polyline[-1, 1]
    if last_d > 0.0:
        return x + last_dx * remaining / last_d, y + last_dy * remaining / last_d
    return x, y


@njit(cache=True)
def slider_ends(
    curves: np.ndarray, points: np.ndarray, offsets: np.ndarray, lengths: np.ndarray
) -> np.ndarray:
    """``(n, 2)`` end of each slider's path (curve kind code, control points
    ``points[offsets[i]:offsets[i + 1]]`` head first, pixel length), as the game cuts it."""
    ends = np.empty((curves.shape[0], 2))
    for i in range(curves.shape[0]):
        control = points[offsets[i] : offsets[i + 1]]
        polyline = np.empty((0, 2))
        if curves[i] == LINEAR_CURVE:
            polyline = control
        elif curves[i] == CATMULL_CURVE and control.shape[0] > 1:
            polyline = _catmull_polyline(control)
        elif curves[i] == PERFECT_CURVE and control.shape[0] == 3:
            polyline = _arc_polyline(control)
        if polyline.shape[0] == 0:
            polyline = _bezier_polyline(control)
        ends[i, 0], ends[i, 1] = _polyline_end(polyline, lengths[i])
    return ends


def _custom_sample(addition: object) -> float:
    parts = str(addition).split(":")
    return float(any(p.strip() not in ("", "0") for p in parts[:2]))


def object_table(beatmap: slider.Beatmap) -> np.ndarray:
    """``(n_objects, N_COLUMNS)`` float64 table of the map's hit objects (columns above)."""
    objects = beatmap.hit_objects(stacking=False)
    table = np.zeros((len(objects), N_COLUMNS), dtype=np.float64)
    slider_rows: list[int] = []
    control_points: list[tuple[float, float]] = []
    for index, (row, obj) in enumerate(zip(table, objects)):
        row[TIME] = obj.time.total_seconds() * 1000.0
        row[END] = getattr(obj, "end_time", obj.time).total_seconds() * 1000.0
        row[X], row[Y] = obj.position.x, obj.position.y
        row[END_X], row[END_Y] = row[X], row[Y]
        row[NEW_COMBO] = float(bool(obj.new_combo))
        row[HITSOUND] = obj.hitsound
        row[CUSTOM_SAMPLE] = _custom_sample(obj.addition)
        if isinstance(obj, slider.beatmap.Slider):
            row[KIND] = SLIDER
            row[LENGTH] = obj.length
            row[SLIDES] = obj.repeat
            row[CURVE] = CURVE_KINDS.get(type(obj.curve).__name__, BEZIER_CURVE)
            row[POINTS] = len(obj.curve.points)
            slider_rows.append(index)
            control_points.extend((p.x, p.y) for p in obj.curve.points)
        elif isinstance(obj, slider.beatmap.Spinner):
            row[KIND] = SPINNER
            row[X] = row[END_X] = 256.0
            row[Y] = row[END_Y] = 192.0
    if slider_rows:
        rows = table[slider_rows]
        offsets = np.concatenate([[0], np.cumsum(rows[:, POINTS])]).astype(np.int64)
        ends = slider_ends(
            rows[:, CURVE].copy(),
            np.array(control_points, dtype=np.float64),
            offsets,
            rows[:, LENGTH].copy(),
        )
        odd = rows[:, SLIDES] % 2 == 1  # after an even number of slides a slider ends on its head
        table[np.array(slider_rows)[odd], END_X : END_Y + 1] = ends[odd]
    _add_timing(beatmap, table)
    return table


def _add_timing(beatmap: slider.Beatmap, table: np.ndarray) -> None:
    """Beat length, red-line offset and slider velocity active at each object's start."""
    points = beatmap.timing_points
    offsets = np.array([p.offset.total_seconds() * 1000.0 for p in points])
    red = [p if p.parent is None else p.parent for p in points]
    beat_ms = np.array([p.ms_per_beat for p in red])
    red_offsets = np.array([p.offset.total_seconds() * 1000.0 for p in red])
    velocity = np.array(
        [
            1.0 if p.parent is None else float(np.clip(-100.0 / p.ms_per_beat, 0.1, 10.0))
            for p in points
        ]
    )
    index = np.clip(np.searchsorted(offsets, table[:, TIME], side="right") - 1, 0, len(points) - 1)
    table[:, BEAT_MS] = beat_ms[index]
    table[:, BEAT_OFFSET] = red_offsets[index]
    table[:, VELOCITY] = velocity[index]


def map_settings(beatmap: slider.Beatmap) -> np.ndarray:
    """The map's CS, AR, OD, HP, slider multiplier and tick rate as float64."""
    return np.array(
        [
            beatmap.circle_size,
            beatmap.approach_rate,
            beatmap.overall_difficulty,
            beatmap.hp_drain_rate,
            beatmap.slider_multiplier,
            beatmap.slider_tick_rate,
        ],
        dtype=np.float64,
    )


@njit(cache=True)
def _share(values: np.ndarray, count: float) -> None:
    if count > 0:
        for i in range(values.shape[0]):
            values[i] /= count


@njit(cache=True)
def _bin(value: float, edges: np.ndarray) -> int:
    for i in range(edges.shape[0]):
        if value < edges[i]:
            return i
    return edges.shape[0]


@njit(cache=True)
def _mean_std(total: float, total_sq: float, count: float) -> tuple[float, float]:
    if count == 0:
        return 0.0, 0.0
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))


@njit(cache=True)
def _put(out: np.ndarray, k: int, values: np.ndarray) -> int:
    """Write ``values`` at ``out[k:]`` and return the next free position."""
    for i in range(values.shape[0]):
        out[k + i] = values[i]
    return k + values.shape[0]


@njit(cache=True)
def _window_group(obj: np.ndarray, start_ms: float, end_ms: float, out: np.ndarray, k: int) -> int:
    n = obj.shape[0]
    span_ms = max(end_ms - start_ms, 1e-9)
    counts = np.zeros(3)
    busy = np.zeros(3)
    bpm = 0.0
    for i in range(n):
        kind = int(obj[i, KIND])
        counts[kind] += 1
        busy[kind] += max(min(obj[i, END], end_ms) - max(obj[i, TIME], start_ms), 0.0)
        bpm += 60000.0 / obj[i, BEAT_MS]
    _share(counts, n)
    values = np.zeros(9)
    values[0] = n / (span_ms / 1000.0)
    values[1] = math.log1p(n)
    values[2] = 1.0 if n == 0 else 0.0
    values[3:6] = counts
    values[6] = min(busy[1] / span_ms, 1.0)
    values[7] = min(busy[2] / span_ms, 1.0)
    values[8] = math.log2(bpm / n / 180.0) if n > 0 else 0.0
    return _put(out, k, values)


@njit(cache=True)
def _snap_group(obj: np.ndarray, out: np.ndarray, k: int) -> int:
    snap = np.zeros(SNAP_DIVISORS.shape[0] + 1)
    for i in range(obj.shape[0]):
        beat = obj[i, BEAT_MS]
        phase = (obj[i, TIME] - obj[i, BEAT_OFFSET]) / beat
        found = SNAP_DIVISORS.shape[0]
        for j in range(SNAP_DIVISORS.shape[0]):
            scaled = phase * SNAP_DIVISORS[j]
            if abs(scaled - round(scaled)) * beat / SNAP_DIVISORS[j] <= SNAP_TOLERANCE_MS:
                found = j
                break
        snap[found] += 1
    _share(snap, obj.shape[0])
    return _put(out, k, snap)


@njit(cache=True)
def _rhythm_group(obj: np.ndarray, out: np.ndarray, k: int) -> int:
    gaps = np.zeros(GAP_BEATS.shape[0] + 3)
    log_centres = np.log2(GAP_BEATS)
    n_gaps = 0.0
    changes = 0.0
    log_total = 0.0
    rest_total = 0.0
    previous_log = 0.0
    for i in range(1, obj.shape[0]):
        gap_ms = obj[i, TIME] - obj[i - 1, TIME]
        if gap_ms <= 0:
            continue
        log_gap = math.log2(gap_ms / obj[i, BEAT_MS])
        best = 0
        for j in range(1, log_centres.shape[0]):
            if abs(log_gap - log_centres[j]) < abs(log_gap - log_centres[best]):
                best = j
        gaps[best] += 1
        if n_gaps > 0 and abs(log_gap - previous_log) > 0.15:
            changes += 1
        previous_log = log_gap
        n_gaps += 1
        log_total += log_gap
        rest_total += max(obj[i, TIME] - obj[i - 1, END], 0.0) / obj[i, BEAT_MS]
    if n_gaps > 0:
        gaps /= n_gaps
        gaps[-3] = changes / (n_gaps - 1) if n_gaps > 1 else 0.0
        gaps[-2] = log_total / n_gaps
        gaps[-1] = rest_total / n_gaps
    return _put(out, k, gaps)


@njit(cache=True)
def _movement_groups(obj: np.ndarray, out: np.ndarray, k: int) -> int:
    """Spacing and angle groups: jumps from one object's end to the next one's start."""
    spacing = np.zeros(SPACING_EDGES_PX.shape[0] + 1)
    angles = np.zeros(ANGLE_BINS + 1)
    n_jumps = 0.0
    total = 0.0
    total_sq = 0.0
    per_beat = 0.0
    per_beat_sq = 0.0
    n_angles = 0.0
    angle_total = 0.0
    for i in range(1, obj.shape[0]):
        if obj[i, KIND] == SPINNER or obj[i - 1, KIND] == SPINNER:
            continue
        dx = obj[i, X] - obj[i - 1, END_X]
        dy = obj[i, Y] - obj[i - 1, END_Y]
        distance = math.sqrt(dx * dx + dy * dy)
        spacing[_bin(distance, SPACING_EDGES_PX)] += 1
        n_jumps += 1
        total += distance
        total_sq += distance * distance
        beats = max((obj[i, TIME] - obj[i - 1, END]) / obj[i, BEAT_MS], 1.0 / 16.0)
        speed = min(distance / beats, 1000.0)
        per_beat += speed
        per_beat_sq += speed * speed
        if i >= 2 and obj[i - 2, KIND] != SPINNER and distance >= MIN_JUMP_PX:
            ix = obj[i - 1, X] - obj[i - 2, END_X]
            iy = obj[i - 1, Y] - obj[i - 2, END_Y]
            incoming = math.sqrt(ix * ix + iy * iy)
            if incoming >= MIN_JUMP_PX:
                cosine = -(ix * dx + iy * dy) / (incoming * distance)
                angle = math.degrees(math.acos(min(max(cosine, -1.0), 1.0)))
                angles[min(int(angle / (180.0 / ANGLE_BINS)), ANGLE_BINS - 1)] += 1
                n_angles += 1
                angle_total += angle
    _share(spacing, n_jumps)
    k = _put(out, k, spacing)
    mean, std = _mean_std(total, total_sq, n_jumps)
    beat_mean, beat_std = _mean_std(per_beat, per_beat_sq, n_jumps)
    k = _put(out, k, np.array([mean, std, beat_mean, beat_std]) / 100.0)
    if n_angles > 0:
        angles /= n_angles
        angles[-1] = angle_total / n_angles / 180.0
    return _put(out, k, angles)


@njit(cache=True)
def _slider_group(obj: np.ndarray, out: np.ndarray, k: int) -> int:
    lengths = np.zeros(SLIDER_LENGTH_EDGES_PX.shape[0] + 1)
    slides = np.zeros(SLIDE_BEAT_EDGES.shape[0] + 1)
    curves = np.zeros(4)
    n_sliders = 0.0
    log_length = 0.0
    speed_total = 0.0
    speed_sq = 0.0
    velocity = 0.0
    repeated = 0.0
    slides_total = 0.0
    points = 0.0
    for i in range(obj.shape[0]):
        if obj[i, KIND] != SLIDER:
            continue
        n_sliders += 1
        length = obj[i, LENGTH]
        lengths[_bin(length, SLIDER_LENGTH_EDGES_PX)] += 1
        log_length += math.log1p(max(length, 0.0))
        slide_ms = max((obj[i, END] - obj[i, TIME]) / obj[i, SLIDES], 1.0)
        speed = min(length / slide_ms, 100.0)
        speed_total += speed
        speed_sq += speed * speed
        velocity += obj[i, VELOCITY]
        slides[_bin(slide_ms / obj[i, BEAT_MS], SLIDE_BEAT_EDGES)] += 1
        repeated += 1.0 if obj[i, SLIDES] > 1 else 0.0
        slides_total += obj[i, SLIDES]
        curves[int(obj[i, CURVE])] += 1
        points += math.log(obj[i, POINTS])
    _share(lengths, n_sliders)
    _share(slides, n_sliders)
    _share(curves, n_sliders)
    mean, std = _mean_std(speed_total, speed_sq, n_sliders)
    averages = np.array([log_length, velocity, repeated, slides_total, points])
    _share(averages, n_sliders)
    k = _put(out, k, lengths)
    k = _put(out, k, np.array([averages[0], mean, std, averages[1]]))
    k = _put(out, k, slides)
    k = _put(out, k, averages[2:4])
    k = _put(out, k, curves)
    return _put(out, k, averages[4:])


@njit(cache=True)
def _combo_and_hitsound_groups(obj: np.ndarray, out: np.ndarray, k: int) -> int:
    n = obj.shape[0]
    combos = 0.0
    sounds = np.zeros(5)
    for i in range(n):
        combos += obj[i, NEW_COMBO]
        bits = int(obj[i, HITSOUND])
        sounds[0] += 1.0 if bits & 2 else 0.0
        sounds[1] += 1.0 if bits & 4 else 0.0
        sounds[2] += 1.0 if bits & 8 else 0.0
        sounds[3] += 1.0 if bits & 14 else 0.0
        sounds[4] += obj[i, CUSTOM_SAMPLE]
    _share(sounds, n)
    k = _put(out, k, np.array([combos / n if n > 0 else 0.0, n / max(combos, 1.0)]))
    return _put(out, k, sounds)


@njit(cache=True)
def _playfield_group(obj: np.ndarray, out: np.ndarray, k: int) -> int:
    n = obj.shape[0]
    grid = np.zeros(GRID_COLUMNS * GRID_ROWS)
    sums = np.zeros(4)  # x, y, x², y²
    for i in range(n):
        x = min(max(obj[i, X] / 512.0, 0.0), 0.999999)
        y = min(max(obj[i, Y] / 384.0, 0.0), 0.999999)
        grid[int(y * GRID_ROWS) * GRID_COLUMNS + int(x * GRID_COLUMNS)] += 1
        sums += np.array([x, y, x * x, y * y])
    _share(grid, n)
    k = _put(out, k, grid)
    mean_x, std_x = _mean_std(sums[0], sums[2], n)
    mean_y, std_y = _mean_std(sums[1], sums[3], n)
    return _put(out, k, np.array([mean_x, mean_y, std_x, std_y]))


@njit(cache=True)
def _window_features(
    obj: np.ndarray, start_ms: float, end_ms: float, settings: np.ndarray, out: np.ndarray
) -> int:
    """Fill ``out`` with one window's descriptors; returns the number written."""
    k = _window_group(obj, start_ms, end_ms, out, 0)
    k = _snap_group(obj, out, k)
    k = _rhythm_group(obj, out, k)
    k = _movement_groups(obj, out, k)
    k = _slider_group(obj, out, k)
    k = _combo_and_hitsound_groups(obj, out, k)
    k = _playfield_group(obj, out, k)
    difficulty = settings.copy()
    difficulty[:4] /= 10.0
    return _put(out, k, difficulty)


@njit(cache=True)
def _batch_features(
    objects: np.ndarray,
    offsets: np.ndarray,
    bounds: np.ndarray,
    settings: np.ndarray,
    dim: int,
) -> np.ndarray:
    out = np.zeros((bounds.shape[0], dim), dtype=np.float64)
    for w in range(bounds.shape[0]):
        written = _window_features(
            objects[offsets[w] : offsets[w + 1]], bounds[w, 0], bounds[w, 1], settings[w], out[w]
        )
        if written != dim:
            raise ValueError("descriptor layout does not match DESCRIPTOR_NAMES")
    return out


def descriptors(payloads: Sequence[DescriptorWindow]) -> np.ndarray:
    """Descriptor vectors, float32 ``(len(payloads), DIM)``, of a batch of windows."""
    if not payloads:
        return np.zeros((0, DIM), dtype=np.float32)
    sizes = np.array([p.objects.shape[0] for p in payloads], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    objects = np.ascontiguousarray(
        np.concatenate([p.objects for p in payloads], axis=0), dtype=np.float64
    )
    bounds = np.array([[p.start_ms, p.end_ms] for p in payloads], dtype=np.float64)
    settings = np.ascontiguousarray(np.stack([p.settings for p in payloads]), dtype=np.float64)
    return _batch_features(objects, offsets, bounds, settings, DIM).astype(np.float32)


def map_windows(
    table: np.ndarray, settings: np.ndarray, n_samples: int, spec: WindowSpec
) -> list[DescriptorWindow]:
    """One payload per window of a map whose audio (real or estimated) has ``n_samples``."""
    bounds = window_bounds_ms(window_starts(n_samples, spec), spec)
    cuts = np.searchsorted(table[:, TIME], bounds, side="left")
    return [
        DescriptorWindow(table[a:b], float(start), float(end), settings)
        for (a, b), (start, end) in zip(cuts, bounds)
    ]


class DescriptorExtractor:
    """Interpretable per-window statistics of osu!standard beatmaps (no weights needed).

    ``use_audio``: count windows from the audio length, as the mapper classifier does (see
    :func:`~beatmap_fid.beatmap.audio.audio_num_samples`); maps whose audio is missing,
    unreadable or beyond the audio limits fall back to their own length (last object end +
    ``length_margin_ms``) and are listed in :attr:`fallbacks`, which every verb reports beside
    its skips. With ``use_audio=False`` every map uses its own length (not a fallback).
    """

    name = "descriptors"

    def __init__(
        self,
        *,
        window_samples: int = DEFAULT_WINDOW_SAMPLES,
        hop_samples: int | None = None,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        use_audio: bool = True,
        length_margin_ms: float = DEFAULT_LENGTH_MARGIN_MS,
    ) -> None:
        self.spec = WindowSpec(window_samples, sample_rate, hop_samples)
        self.use_audio = bool(use_audio)
        self.length_margin_ms = float(length_margin_ms)
        self.dim = DIM
        self.config = {
            "feature_version": FEATURE_VERSION,
            **self.spec.as_config(),
            "use_audio": self.use_audio,
            "length_margin_ms": self.length_margin_ms,
            "modes": [0],
        }
        self.fallbacks = SkipLog()
        """Maps embedded with a fallback: windows counted from the map's length, and why."""
        self._audio_lengths: dict[Path, int | SourceError] = {}

    def _audio_samples(self, audio_path: Path) -> int:
        if audio_path not in self._audio_lengths:
            try:
                self._audio_lengths[audio_path] = audio_num_samples(
                    audio_path, self.spec.sample_rate
                )
            except SourceError as exc:
                self._audio_lengths[audio_path] = exc
        result = self._audio_lengths[audio_path]
        if isinstance(result, SourceError):
            raise result
        return result

    def n_samples(self, beatmap_file) -> int:
        """Audio length in samples that sets the map's window count (see the class docs)."""
        if self.use_audio:
            if beatmap_file.audio_path is None:
                reason = missing_audio_reason(beatmap_file.beatmap.audio_filename)
                self.fallbacks.add(
                    beatmap_file.id, f"{reason}; windows counted from the map's length"
                )
            else:
                try:
                    return self._audio_samples(beatmap_file.audio_path)
                except SourceError as exc:
                    self.fallbacks.add(
                        beatmap_file.id, f"{exc}; windows counted from the map's length"
                    )
        return beatmap_num_samples(beatmap_file.beatmap, self.spec, self.length_margin_ms)

    def beatmap_items(self, beatmap_file: BeatmapFile, skipped: SkipLog) -> list[Item]:
        """The window items of one parsed map (none, recorded in ``skipped``, when too short)."""
        table = object_table(beatmap_file.beatmap)
        settings = map_settings(beatmap_file.beatmap)
        n_samples = self.n_samples(beatmap_file)
        windows = map_windows(table, settings, n_samples, self.spec)
        if not windows:
            seconds = n_samples / self.spec.sample_rate
            skipped.add(
                beatmap_file.id,
                f"too short: {seconds:.1f} s holds no complete "
                f"{self.spec.window_ms / 1000:.3f} s window",
            )
        sources = (beatmap_file.path,)
        if self.use_audio and beatmap_file.audio_path is not None:
            sources += (beatmap_file.audio_path,)
        return [
            Item(
                f"{beatmap_file.id}#{index}",
                window,
                beatmap_file.creator,
                sources,
                len(window.objects),
            )
            for index, window in enumerate(windows)
        ]

    def items(self, source: str | Path, skipped: SkipLog) -> Iterator[Item]:
        """One item per window of every osu!standard map under ``source``."""
        for beatmap_file in iter_beatmap_files(source, skipped):
            yield from self.beatmap_items(beatmap_file, skipped)

    def embed(self, payloads: Sequence[DescriptorWindow]) -> np.ndarray:
        """float32 ``(len(payloads), dim)`` descriptor vectors."""
        return descriptors(payloads)
