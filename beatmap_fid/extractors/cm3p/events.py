"""CM3P's beatmap events ("groups"): what its parser makes of a ``slider.Beatmap``.

Every hit object becomes one or more events with a time in integer milliseconds
(``int(seconds · 1000 + 1e-5)``): a circle; a slider head, its anchors (``[RED_ANCHOR]`` for
linear segments and repeated Bézier points, ``[BEZIER_ANCHOR]``, ``[PERFECT_ANCHOR]``,
``[CATMULL_ANCHOR]``; no time), its last anchor, its end (carrying the body and repeat
hitsounds) and its final end at the curve's end point; a spinner and its end; a mania hold note
and its end; in taiko, drumrolls and dendens instead of sliders and spinners. Sliders with 100
or more control points are left out. Positions are written for osu!standard and catch, new
combos likewise; scroll speeds for slider heads, taiko objects and (normalised by the median
beat length) mania scroll-speed changes. Timing points, measures and beats fill the song up to
its length (from the audio), and kiai switches are events too. Object events are sorted by
time (stably), then kiai, mania scroll-speed and timing events are merged in front of them by
the reference's merge rule, in which an event at time 0 takes the time of the one before it.

Known quirks of the reference kept here: mania columns are never written (the reference sets
an attribute the tokenizer does not read); the median beat length of mania maps ends at the
last object's whole second and counts timing points from their whole second
(``timedelta.seconds``). Differences: the maps are read by
:mod:`beatmap_fid.beatmap.reading`, so old files without the hitSample field and other repaired
oddities (on which the reference crashes) are parsed, and timing points are sorted by time with
inherited points before the first uninherited one dropped. Catmull sliders, on which slider
(and so the reference) fails under NumPy 2.4, are read (:func:`curve_end`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import slider
from slider.curve import Catmull, Linear, MultiBezier, Perfect

from beatmap_fid.extractors.cm3p.checkpoint import ParserSettings

EVENT_TYPES = (
    "circle",
    "spinner",
    "spinner_end",
    "slider_head",
    "bezier_anchor",
    "perfect_anchor",
    "catmull_anchor",
    "red_anchor",
    "last_anchor",
    "slider_end",
    "repeat_end",
    "beat",
    "measure",
    "timing_point",
    "kiai_on",
    "kiai_off",
    "hold_note",
    "hold_note_end",
    "scroll_speed_change",
    "drumroll",
    "drumroll_end",
    "denden",
    "denden_end",
)
"""Event kinds in the order of their tokens."""
TIMING_TYPES = frozenset(
    {"beat", "measure", "timing_point", "kiai_on", "kiai_off", "scroll_speed_change"}
)
"""Event kinds that come from the timing, not from hit objects."""
NEW_COMBO_TYPES = ("circle", "slider_head")
MAX_SLIDER_POINTS = 100
_HITSOUND_LOOKAHEAD = timedelta(milliseconds=5)


@dataclass
class Group:
    """One event: kind, time (ms), and what the tokenizer writes about it."""

    kind: str
    time: int
    has_time: bool = False
    snapping: int | None = None
    distance: int | None = None
    x: int | None = None
    y: int | None = None
    new_combo: bool = False
    scroll_speed: float | None = None
    hitsounds: list[tuple[int, int, int, int]] = field(default_factory=list)
    """(hitsound bits, sample set, addition set, volume) per sound the event carries."""


def _ms(time: timedelta) -> int:
    return int(time.total_seconds() * 1000 + 1e-5)


class _Timing:
    """Timing point lookups: the last point at or before a time, else the first."""

    def __init__(self, beatmap: slider.Beatmap) -> None:
        self.points = list(beatmap.timing_points)
        self.offsets = [p.offset for p in self.points]

    def at(self, time: timedelta) -> slider.beatmap.TimingPoint:
        index = bisect.bisect_right(self.offsets, time) - 1
        return self.points[max(index, 0)]

    def uninherited_at(self, time: timedelta) -> slider.beatmap.TimingPoint:
        point = self.at(time)
        return point if point.parent is None else point.parent


def curve_end(curve) -> tuple[float, float]:
    """``curve(1)``, the slider's end point. slider's Catmull curve converts one-element arrays
    with ``float()``, which NumPy 2.4 refuses; its formula is then evaluated here (at t = 1 it
    gives the last control point)."""
    try:
        return curve(1)
    except TypeError:
        if not isinstance(curve, Catmull):
            raise
        weights = np.ones(4) @ curve.h  # S = [t³, t², t, 1] at t = 1
        return (
            float((weights @ curve.Cxs[-1]).item()),
            float((weights @ curve.Cys[-1]).item()),
        )


def _scroll_speed(point: slider.beatmap.TimingPoint) -> float:
    if point.parent is None or point.ms_per_beat >= 0 or np.isnan(point.ms_per_beat):
        return 1
    return float(np.clip(-100 / point.ms_per_beat, 0.01, 10))


def median_beat_length(beatmap: slider.Beatmap) -> float:
    """Beat length (ms) covering the most time up to the last object, as osu! computes it."""
    objects = beatmap.hit_objects(stacking=False)
    last = max(o.end_time if isinstance(o, slider.beatmap.HoldNote) else o.time for o in objects)
    last_time = int(last.seconds * 1000)  # whole seconds, as the reference reads it
    durations: dict[float, int] = {}
    beat_length = 0.0
    points = beatmap.timing_points
    for i in range(len(points) - 1, -1, -1):
        point = points[i]
        offset = int(point.offset.seconds * 1000)
        if point.parent is None:
            beat_length = point.ms_per_beat
        if beat_length == 0 or offset > last_time or (point.parent is not None and i > 0):
            continue
        durations[beat_length] = durations.get(beat_length, 0) + int(
            last_time - (0 if i == 0 else offset)
        )
        last_time = offset
    longest, median = 0, 0.0
    for length, duration in durations.items():
        if duration > longest:
            longest, median = duration, length
    return median


class _Parser:
    def __init__(self, beatmap: slider.Beatmap, settings: ParserSettings) -> None:
        self.beatmap = beatmap
        self.settings = settings
        self.timing = _Timing(beatmap)
        self.mode = int(beatmap.mode)

    def snapping(self, time: timedelta) -> int | None:
        if not self.settings.add_snapping:
            return None
        point = self.timing.uninherited_at(time)
        beats = (time - point.offset).total_seconds() * 1000 / point.ms_per_beat
        for divisor in range(1, 17):
            if abs(beats - round(beats * divisor) / divisor) * point.ms_per_beat < 2:
                return divisor
        return 0

    def hitsound(self, time: timedelta, hitsound: int, addition: str) -> tuple[int, int, int, int]:
        point = self.timing.at(time + _HITSOUND_LOOKAHEAD)
        default_set = point.sample_type if point.sample_type != 0 else 2
        parts = addition.split(":")
        sample_set = int(parts[0]) if parts[0] != "0" else default_set
        addition_set = int(parts[1]) if parts[1] != "0" else sample_set
        volume = int(parts[3]) if len(parts) > 3 and parts[3] != "0" else point.volume
        sample_set = sample_set if 0 < sample_set < 4 else 1
        addition_set = addition_set if 0 < addition_set < 4 else 1
        return hitsound & 14, sample_set, addition_set, int(np.clip(volume, 0, 100))

    def group(
        self,
        kind: str,
        time: timedelta,
        *,
        has_time: bool = True,
        snap: bool = True,
        position: tuple[float, float] | None = None,
        last: np.ndarray | None = None,
        new_combo: bool = False,
        sounds: list[tuple[timedelta, int, str]] = (),
        scroll_speed: float | None = None,
    ) -> tuple[Group, np.ndarray | None]:
        """One event and the position it leaves behind (``last`` when it has none)."""
        group = Group(kind, _ms(time))
        if has_time:
            group.has_time = True
            group.snapping = self.snapping(time) if snap else None
        if position is not None:
            pos = np.array(position)
            if self.mode in (0, 2):
                if self.settings.add_distances and last is not None:
                    group.distance = int(np.linalg.norm(pos - last))
                if self.settings.add_positions:
                    group.x, group.y = int(pos[0]), int(pos[1])
                last = pos
        group.new_combo = bool(new_combo) and self.mode in (0, 2)
        group.scroll_speed = scroll_speed
        if self.settings.add_hitsounds:
            group.hitsounds = [self.hitsound(t, h, a) for t, h, a in sounds]
        return group, last

    def circle(self, obj, out: list[Group], last: np.ndarray) -> np.ndarray:
        group, last = self.group(
            "circle",
            obj.time,
            position=obj.position,
            last=last,
            new_combo=obj.new_combo,
            sounds=[(obj.time, obj.hitsound, obj.addition)],
            scroll_speed=_scroll_speed(self.timing.at(obj.time)) if self.mode == 1 else None,
        )
        out.append(group)
        return last

    def slider(self, obj, out: list[Group], last: np.ndarray) -> np.ndarray:
        curve = obj.curve
        points = curve.points
        if len(points) >= MAX_SLIDER_POINTS:
            return last
        edge_sounds, edge_additions = obj.edge_sounds, obj.edge_additions
        head, last = self.group(
            "slider_head",
            obj.time,
            position=obj.position,
            last=last,
            new_combo=obj.new_combo,
            sounds=[
                (
                    obj.time,
                    edge_sounds[0] if edge_sounds else 0,
                    edge_additions[0] if edge_additions else "0:0",
                )
            ],
            scroll_speed=_scroll_speed(self.timing.at(obj.time)) if self.settings.add_sv else None,
        )
        out.append(head)
        duration = (obj.end_time - obj.time) / obj.repeat

        def anchor(kind: str, index: int, last: np.ndarray) -> np.ndarray:
            time = obj.time
            if self.settings.slider_version == 1:
                time = obj.time + index / (len(points) - 1) * duration
            group, last = self.group(kind, time, has_time=False, position=points[index], last=last)
            out.append(group)
            return last

        inner = range(1, len(points) - 1)
        if isinstance(curve, Linear):
            for i in inner:
                last = anchor("red_anchor", i, last)
        elif isinstance(curve, Catmull):
            for i in inner:
                last = anchor("catmull_anchor", i, last)
        elif isinstance(curve, Perfect):
            for i in inner:
                last = anchor("perfect_anchor", i, last)
        elif isinstance(curve, MultiBezier):
            for i in inner:
                if points[i] == points[i + 1]:
                    last = anchor("red_anchor", i, last)
                elif points[i] != points[i - 1]:
                    last = anchor("bezier_anchor", i, last)
        if self.settings.slider_version == 2:
            group, last = self.group(
                "last_anchor", obj.time, has_time=False, position=points[-1], last=last
            )
            out.append(group)
        repeats = range(1, obj.repeat)
        group, last = self.group(
            "slider_end",
            obj.time + duration,
            position=points[-1] if self.settings.slider_version == 1 else None,
            last=last,
            sounds=[(obj.time + timedelta(milliseconds=1), obj.hitsound, obj.addition)]
            + [
                (
                    obj.time + i * duration,
                    edge_sounds[i] if len(edge_sounds) > i else 0,
                    edge_additions[i] if len(edge_additions) > i else "0:0",
                )
                for i in repeats
            ],
        )
        out.append(group)
        group, last = self.group(
            "repeat_end",
            obj.end_time,
            position=curve_end(curve),
            last=last,
            sounds=[
                (
                    obj.end_time,
                    edge_sounds[-1] if edge_sounds else 0,
                    edge_additions[-1] if edge_additions else "0:0",
                )
            ],
        )
        out.append(group)
        return last

    def spinner(self, obj, out: list[Group]) -> np.ndarray:
        out.append(self.group("spinner", obj.time)[0])
        out.append(
            self.group(
                "spinner_end", obj.end_time, sounds=[(obj.end_time, obj.hitsound, obj.addition)]
            )[0]
        )
        return np.array((256, 192))

    def hold_note(self, obj, out: list[Group]) -> np.ndarray:
        sounds = [(obj.time, obj.hitsound, obj.addition)]
        out.append(self.group("hold_note", obj.time, position=obj.position, sounds=sounds)[0])
        out.append(self.group("hold_note_end", obj.end_time, position=obj.position)[0])
        return np.array(obj.position)

    def taiko_long(self, obj, out: list[Group], kind: str) -> None:
        out.append(
            self.group(
                kind,
                obj.time,
                sounds=[(obj.time, obj.hitsound, obj.addition)],
                scroll_speed=_scroll_speed(self.timing.at(obj.time)),
            )[0]
        )
        out.append(self.group(f"{kind}_end", obj.end_time)[0])

    def object_events(self) -> list[Group]:
        out: list[Group] = []
        last = np.array((256, 192))
        for obj in self.beatmap.hit_objects(stacking=False):
            if isinstance(obj, slider.beatmap.Circle):
                last = self.circle(obj, out, last)
            elif isinstance(obj, slider.beatmap.Slider):
                if self.mode == 1:
                    self.taiko_long(obj, out, "drumroll")
                else:
                    last = self.slider(obj, out, last)
            elif isinstance(obj, slider.beatmap.Spinner):
                if self.mode == 1:
                    self.taiko_long(obj, out, "denden")
                else:
                    last = self.spinner(obj, out)
            elif isinstance(obj, slider.beatmap.HoldNote):
                last = self.hold_note(obj, out)
        return sorted(out, key=lambda g: g.time)

    def scroll_speed_events(self) -> list[Group]:
        median = median_beat_length(self.beatmap)
        beat_length = median
        previous = -1.0
        out = []
        points = self.beatmap.timing_points
        for i, point in enumerate(points):
            if point.parent is None:
                beat_length = point.ms_per_beat
                speed = 1
            else:
                speed = -100 / point.ms_per_beat
            if i == len(points) - 1 or points[i + 1].offset > point.offset:
                if self.settings.mania_bpm_normalized_scroll_speed:
                    normalised = speed * median / beat_length
                else:
                    normalised = speed
                if normalised != previous or previous == -1:
                    out.append(
                        self.group("scroll_speed_change", point.offset, scroll_speed=normalised)[0]
                    )
                previous = normalised
        return out

    def kiai_events(self) -> list[Group]:
        out, on = [], False
        for point in self.beatmap.timing_points:
            if point.kiai_mode == on:
                continue
            out.append(self.group("kiai_on" if point.kiai_mode else "kiai_off", point.offset)[0])
            on = point.kiai_mode
        return out

    def timing_events(self, song_length_s: float) -> list[Group]:
        end_ms = int(song_length_s * 1000)
        points = [p for p in self.beatmap.timing_points if p.bpm]
        out = []
        for i, point in enumerate(points):
            following = points[i + 1] if i + 1 < len(points) else None
            until = following.offset.total_seconds() * 1000 - 10 if following else end_ms
            start = point.offset.total_seconds() * 1000
            time, count, beat = start, 0, point.ms_per_beat
            while time <= until:
                if self.settings.add_timing_points and count == 0:
                    kind = "timing_point"
                elif count % point.meter == 0:
                    kind = "measure"
                else:
                    kind = "beat"
                out.append(self.group(kind, timedelta(milliseconds=time), snap=False)[0])
                if beat <= 10:
                    break
                count += 1
                time = start + count * beat
        return out


def merge_groups(first: list[Group], second: list[Group]) -> list[Group]:
    """Both lists merged by time, ``first`` winning ties; an event at time 0 compares with the
    time of the event before it (the reference's rule)."""
    merged = []
    i = j = 0
    t1 = t2 = -np.inf
    while i < len(first) and j < len(second):
        t1 = first[i].time or t1
        t2 = second[j].time or t2
        if t1 <= t2:
            merged.append(first[i])
            i += 1
        else:
            merged.append(second[j])
            j += 1
    return merged + first[i:] + second[j:]


def song_length_from_beatmap(beatmap: slider.Beatmap) -> float:
    """Song length (s) of a map used without audio: its last object's end plus 0.999 ms."""
    objects = beatmap.hit_objects(stacking=False)
    if objects:
        last = objects[-1]
        return getattr(last, "end_time", last.time).total_seconds() + 0.000999
    points = beatmap.timing_points
    return points[-1].offset.total_seconds() + 0.01 if points else 0.0


def beatmap_groups(
    beatmap: slider.Beatmap, settings: ParserSettings, song_length_s: float
) -> list[Group]:
    """Every event of ``beatmap`` in the reference's order (see the module documentation)."""
    parser = _Parser(beatmap, settings)
    result = parser.object_events()
    if settings.add_mania_sv and parser.mode == 3:
        result = merge_groups(parser.scroll_speed_events(), result)
    if settings.add_kiai:
        result = merge_groups(parser.kiai_events(), result)
    if settings.add_timing:
        result = merge_groups(parser.timing_events(song_length_s), result)
    return result
