"""Synthetic osu!standard beatmaps: valid ``.osu`` files made from a seed and a style.

Real beatmaps belong to their mappers and cannot ship with the project, so examples and
always-on tests use these. A map has one red timing line and inherited (slider velocity)
points, circles, sliders of every curve type (some with repeats), spinners, new combos and
hitsounds, on a rhythm snapped to the beat. A :class:`SyntheticStyle` sets the tempo,
rhythm, spacing, turning angles and object mix, so maps of two styles differ measurably.
A click track (one click per beat) can go with each map as its audio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from beatmap_fid.errors import InputError

PLAYFIELD_WIDTH = 512
PLAYFIELD_HEIGHT = 384
_SLIDER_MULTIPLIER = 1.4


@dataclass(frozen=True)
class SyntheticStyle:
    """How a synthetic mapper maps: every field is a knob that shows up in the descriptors."""

    name: str
    bpm_range: tuple[float, float] = (150.0, 190.0)
    gap_beats: dict[float, float] = field(default_factory=lambda: {0.5: 0.6, 1.0: 0.4})
    """Gaps between consecutive objects in beats, with their weights."""
    slider_share: float = 0.4
    spinner_chance: float = 0.3
    """Chance of a spinner at the start of each 32-beat phrase (after the first)."""
    spacing_px: tuple[float, float] = (110.0, 30.0)
    """Mean and standard deviation of the distance between consecutive objects per beat."""
    turn_deg: tuple[float, float] = (40.0, 25.0)
    """Mean and standard deviation of the change of direction between jumps."""
    slide_beats: dict[float, float] = field(default_factory=lambda: {0.5: 0.4, 1.0: 0.6})
    repeat_chance: float = 0.15
    curve_weights: dict[str, float] = field(
        default_factory=lambda: {"B": 0.4, "L": 0.25, "P": 0.3, "C": 0.05}
    )
    velocities: tuple[float, ...] = (1.0, 1.0, 1.2, 0.8)
    """Slider velocity multipliers chosen for the inherited timing points."""
    combo_beats: int = 4
    hitsound_chance: float = 0.25
    circle_size: float = 4.0
    approach_rate: float = 9.0


STYLES: dict[str, SyntheticStyle] = {
    "flow": SyntheticStyle("flow"),
    "jumps": SyntheticStyle(
        "jumps",
        bpm_range=(170.0, 200.0),
        gap_beats={1.0: 0.55, 0.5: 0.4, 0.25: 0.05},
        slider_share=0.2,
        spinner_chance=0.15,
        spacing_px=(190.0, 40.0),
        turn_deg=(120.0, 30.0),
        slide_beats={0.5: 0.7, 1.0: 0.3},
        repeat_chance=0.3,
        curve_weights={"B": 0.2, "L": 0.5, "P": 0.25, "C": 0.05},
        velocities=(1.0, 1.4, 1.6),
        combo_beats=8,
        hitsound_chance=0.45,
        circle_size=4.2,
        approach_rate=9.5,
    ),
}
"""Built-in styles: ``"flow"`` (smooth, slider-heavy, close spacing) and ``"jumps"``
(wide, sharp-angled jumps, more circles, faster sliders)."""


def _style(style: str | SyntheticStyle) -> SyntheticStyle:
    if isinstance(style, SyntheticStyle):
        return style
    if style not in STYLES:
        raise InputError(f"unknown synthetic style {style!r}; choose one of {sorted(STYLES)}")
    return STYLES[style]


def _choice(rng: np.random.Generator, weights: dict) -> object:
    keys = list(weights)
    probabilities = np.array([weights[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=probabilities / probabilities.sum()))]


def _inside(points: list[tuple[float, float]], margin: float = 16.0) -> bool:
    return all(
        margin <= x <= PLAYFIELD_WIDTH - margin and margin <= y <= PLAYFIELD_HEIGHT - margin
        for x, y in points
    )


def _slider_path(
    rng: np.random.Generator, kind: str, start: np.ndarray, angle: float, length: float
) -> list[tuple[float, float]]:
    """Control points (head first) of a slider of roughly ``length`` px heading ``angle``."""
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]]) * (1 if rng.random() < 0.5 else -1)
    if kind == "L":
        return [tuple(start), tuple(start + direction * length)]
    if kind == "P":
        arc = math.radians(rng.uniform(50, 140))
        radius = length / arc
        centre = start + normal * radius
        begin = math.atan2(*(start - centre)[::-1])
        radial = start - centre
        sign = -1.0 if radial[0] * direction[1] - radial[1] * direction[0] < 0 else 1.0
        return [
            tuple(centre + radius * np.array([math.cos(a), math.sin(a)]))
            for a in (begin, begin + sign * arc / 2, begin + sign * arc)
        ]
    if kind == "B":
        bend = rng.uniform(0.2, 0.5) * length
        return [
            tuple(start),
            tuple(start + direction * length * 0.5 + normal * bend),
            tuple(start + direction * length * 0.85),
        ]
    wave = rng.uniform(0.1, 0.25) * length
    return [
        tuple(start + direction * length * f + normal * wave * s)
        for f, s in ((0.0, 0.0), (0.33, 1.0), (0.66, -1.0), (1.0, 0.0))
    ]


@dataclass
class _Cursor:
    position: np.ndarray
    angle: float


def synthetic_beatmap(
    seed: int,
    style: str | SyntheticStyle = "flow",
    *,
    duration_s: float = 60.0,
    creator: str | None = None,
    title: str | None = None,
    audio_filename: str = "audio.wav",
) -> str:
    """Text of a valid osu!standard ``.osu`` file (format v14) made from ``seed`` and ``style``.

    Returns the text; use :func:`write_synthetic_set` to write files (and audio).
    """
    style = _style(style)
    rng = np.random.default_rng(seed)
    bpm = round(float(rng.uniform(*style.bpm_range)), 1)
    beat_ms = 60000.0 / bpm
    offset_ms = int(rng.integers(300, 1500))
    total_beats = int((duration_s * 1000.0 - offset_ms) / beat_ms)
    if total_beats < 8:
        raise InputError(f"duration_s={duration_s} is too short for a synthetic beatmap")

    velocity_at: dict[int, float] = {}
    timing = [f"{offset_ms},{beat_ms!r},4,2,0,60,1,0"]
    for beat in range(0, total_beats, 16):
        velocity = float(rng.choice(style.velocities))
        velocity_at[beat] = velocity
        time = round(offset_ms + beat * beat_ms)
        timing.append(f"{time},{-100.0 / velocity!r},4,2,0,{int(rng.integers(50, 80))},0,0")

    def velocity_for(beat: float) -> float:
        return velocity_at[16 * int(beat // 16)]

    def time_of(beat: float) -> int:
        return round(offset_ms + beat * beat_ms)

    cursor = _Cursor(np.array([256.0, 192.0]), float(rng.uniform(0, 2 * math.pi)))
    objects: list[str] = []
    beat = 0.0
    last_combo = -1
    last_phrase = 0
    while beat < total_beats - 1:
        combo = int(beat // style.combo_beats)
        new_combo = combo != last_combo
        last_combo = combo
        phrase = int(beat // 32)
        if phrase != last_phrase and rng.random() < style.spinner_chance:
            last_phrase = phrase
            length = float(rng.choice([2.0, 3.0, 4.0]))
            if beat + length < total_beats:
                objects.append(f"256,192,{time_of(beat)},12,0,{time_of(beat + length)},0:0:0:0:")
                beat += length + 1.0
                last_combo = -1
                continue
        last_phrase = phrase
        gap = float(_choice(rng, style.gap_beats))
        distance = max(float(rng.normal(*style.spacing_px)) * min(gap, 1.0), 0.0)
        turn = math.radians(float(rng.normal(*style.turn_deg))) * (1 if rng.random() < 0.5 else -1)
        for attempt in range(12):
            angle = cursor.angle + turn + attempt * math.pi / 6
            head = cursor.position + distance * np.array([math.cos(angle), math.sin(angle)])
            if _inside([tuple(head)]):
                break
        else:
            head = np.array([256.0, 192.0])
        hitsound = 0
        if rng.random() < style.hitsound_chance:
            hitsound = int(rng.choice([2, 4, 8, 10]))
        sample = "0:0:0:0:" if rng.random() < 0.7 else f"{int(rng.integers(1, 4))}:0:0:0:"
        type_bits = 4 if new_combo else 0
        slide = float(_choice(rng, style.slide_beats))
        repeats = 2 if rng.random() < style.repeat_chance else 1
        is_slider = rng.random() < style.slider_share and beat + slide * repeats < total_beats
        if is_slider:
            kind = str(_choice(rng, style.curve_weights))
            length = slide * 100.0 * _SLIDER_MULTIPLIER * velocity_for(beat)
            for attempt in range(8):
                path_angle = angle + attempt * math.pi / 4
                points = _slider_path(rng, kind, head, path_angle, length)
                if _inside(points):
                    break
            else:
                is_slider = False
        x, y = round(head[0]), round(head[1])
        if is_slider:
            curve = "|".join([kind, *(f"{round(px)}:{round(py)}" for px, py in points[1:])])
            edges = "|".join(str(hitsound if i == 0 else 0) for i in range(repeats + 1))
            edge_sets = "|".join("0:0" for _ in range(repeats + 1))
            objects.append(
                f"{x},{y},{time_of(beat)},{2 | type_bits},{hitsound},{curve},{repeats},"
                f"{length:.2f},{edges},{edge_sets},{sample}"
            )
            end = np.array(points[-1]) if repeats % 2 else head
            cursor = _Cursor(end, path_angle if repeats % 2 else path_angle + math.pi)
            beat += slide * repeats + gap
        else:
            objects.append(f"{x},{y},{time_of(beat)},{1 | type_bits},{hitsound},{sample}")
            cursor = _Cursor(head, angle)
            beat += gap

    title = title or f"Synthetic {style.name} {seed}"
    creator = creator or f"synthetic {style.name}"
    lines = [
        "osu file format v14",
        "",
        "[General]",
        f"AudioFilename: {audio_filename}",
        "AudioLeadIn: 0",
        f"PreviewTime: {offset_ms}",
        "Countdown: 0",
        "SampleSet: Soft",
        "StackLeniency: 0.7",
        "Mode: 0",
        "LetterboxInBreaks: 0",
        "WidescreenStoryboard: 0",
        "",
        "[Editor]",
        "DistanceSpacing: 1",
        "BeatDivisor: 4",
        "GridSize: 8",
        "TimelineZoom: 1",
        "",
        "[Metadata]",
        f"Title:{title}",
        f"TitleUnicode:{title}",
        "Artist:beatmap_fid",
        "ArtistUnicode:beatmap_fid",
        f"Creator:{creator}",
        f"Version:{style.name} {seed}",
        "Source:",
        f"Tags:synthetic {style.name}",
        "BeatmapID:0",
        "BeatmapSetID:-1",
        "",
        "[Difficulty]",
        "HPDrainRate:5",
        f"CircleSize:{style.circle_size:g}",
        "OverallDifficulty:8",
        f"ApproachRate:{style.approach_rate:g}",
        f"SliderMultiplier:{_SLIDER_MULTIPLIER:g}",
        "SliderTickRate:1",
        "",
        "[Events]",
        "//Background and Video events",
        "//Break Periods",
        "",
        "[TimingPoints]",
        *timing,
        "",
        "[HitObjects]",
        *objects,
        "",
    ]
    return "\n".join(lines)


def click_track(
    bpm: float,
    offset_ms: float,
    duration_s: float,
    sample_rate: int = 16000,
) -> np.ndarray:
    """float32 mono audio with a short click on every beat (louder on each fourth)."""
    n = int(duration_s * sample_rate)
    audio = np.zeros(n, dtype=np.float32)
    click_n = int(0.03 * sample_rate)
    t = np.arange(click_n) / sample_rate
    click = (np.sin(2 * np.pi * 1000.0 * t) * np.exp(-t / 0.006)).astype(np.float32)
    beat_ms = 60000.0 / bpm
    beat = 0
    while (start := int((offset_ms + beat * beat_ms) * sample_rate / 1000.0)) < n:
        if start >= 0:
            piece = click[: n - start] * (1.0 if beat % 4 == 0 else 0.5)
            audio[start : start + len(piece)] += piece
        beat += 1
    return audio


def _bpm_and_offset(text: str) -> tuple[float, float]:
    section = text.split("[TimingPoints]", 1)[1].strip().splitlines()[0].split(",")
    return 60000.0 / float(section[1]), float(section[0])


def write_synthetic_set(
    folder: str | Path,
    n_maps: int,
    seed: int = 0,
    style: str | SyntheticStyle = "flow",
    *,
    duration_s: float = 60.0,
    n_creators: int = 2,
    audio: bool = False,
    sample_rate: int = 16000,
) -> list[Path]:
    """Write ``n_maps`` synthetic maps of ``style`` into ``folder``; return their paths.

    Map ``i`` uses seed ``seed * 100003 + i`` and creator ``"<style>_<i mod n_creators>"``.
    With ``audio=True`` each map gets a click track ``<name>.wav`` (its ``AudioFilename``),
    slightly longer than the map.
    """
    if n_maps < 1 or n_creators < 1:
        raise InputError("n_maps and n_creators must be at least 1")
    style = _style(style)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_maps):
        name = f"{style.name}_{seed}_{i:03d}"
        text = synthetic_beatmap(
            seed * 100003 + i,
            style,
            duration_s=duration_s,
            creator=f"{style.name}_{i % n_creators}",
            title=f"Synthetic {style.name} {seed}-{i}",
            audio_filename=f"{name}.wav" if audio else "",
        )
        path = folder / f"{name}.osu"
        path.write_text(text, encoding="utf-8")
        if audio:
            bpm, offset = _bpm_and_offset(text)
            track = click_track(bpm, offset, duration_s + 2.0, sample_rate)
            soundfile.write(str(folder / f"{name}.wav"), track, sample_rate, subtype="PCM_16")
        paths.append(path)
    return paths
