"""Synthetic beatmaps and disturbances: valid files that slider reads back."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import slider
import soundfile

from beatmap_fid.beatmap.audio import load_audio
from beatmap_fid.beatmap.perturb import Disturbance, perturb_folder, perturb_text
from beatmap_fid.beatmap.reading import parse_beatmap_text, read_beatmap_file
from beatmap_fid.beatmap.synthetic import STYLES, synthetic_beatmap, write_synthetic_set
from beatmap_fid.errors import InputError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"


def _objects(beatmap: slider.Beatmap) -> tuple:
    return beatmap.hit_objects(stacking=False)


def test_synthetic_maps_parse_with_slider_and_read_back_unchanged(synthetic_beatmaps: Path) -> None:
    paths = sorted(synthetic_beatmaps.rglob("*.osu"))
    assert len(paths) == 12
    curves: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for path in paths:
        text = path.read_text(encoding="utf-8")
        strict = slider.Beatmap.parse(text)  # slider alone, no repairs
        beatmap_file = read_beatmap_file(path, root=synthetic_beatmaps)
        assert beatmap_file.notes == ()
        assert beatmap_file.audio_path == path.with_suffix(".wav")
        lines = [line for line in text.partition("[HitObjects]\n")[2].splitlines() if line]
        ours = _objects(beatmap_file.beatmap)
        assert len(ours) == len(lines) == len(_objects(strict))
        for line, obj, reference in zip(lines, ours, _objects(strict)):
            x, y, time = (int(v) for v in line.split(",")[:3])
            assert obj.time.total_seconds() * 1000 == pytest.approx(time)
            assert (obj.time, obj.new_combo, obj.hitsound) == (
                reference.time,
                reference.new_combo,
                reference.hitsound,
            )
            if not isinstance(obj, slider.beatmap.Spinner):
                assert (obj.position.x, obj.position.y) == (x, y)
        kinds.update(type(o).__name__ for o in ours)
        curves.update(type(o.curve).__name__ for o in ours if isinstance(o, slider.beatmap.Slider))
        assert any(o.new_combo for o in ours)
        assert any(o.hitsound for o in ours)
        assert any(getattr(o, "repeat", 1) > 1 for o in ours)
        assert any(tp.parent is not None for tp in beatmap_file.beatmap.timing_points)
    assert set(kinds) == {"Circle", "Slider", "Spinner"}
    assert set(curves) == {"MultiBezier", "Linear", "Perfect", "Catmull"}


def test_generation_is_seeded() -> None:
    assert synthetic_beatmap(5, "jumps") == synthetic_beatmap(5, "jumps")
    assert synthetic_beatmap(5, "jumps") != synthetic_beatmap(6, "jumps")
    assert synthetic_beatmap(5, "jumps") != synthetic_beatmap(5, "flow")


def test_styles_differ_in_their_knobs() -> None:
    def spacing(style: str) -> float:
        distances = []
        for seed in range(3):
            beatmap, _ = parse_beatmap_text(synthetic_beatmap(seed, style))
            circles = [o for o in _objects(beatmap) if isinstance(o, slider.beatmap.Circle)]
            positions = np.array([[c.position.x, c.position.y] for c in circles])
            distances.append(np.linalg.norm(np.diff(positions, axis=0), axis=1).mean())
        return float(np.mean(distances))

    assert spacing("jumps") > spacing("flow")
    with pytest.raises(InputError):
        synthetic_beatmap(0, "no such style")


def test_click_track_audio(tmp_path: Path) -> None:
    path = write_synthetic_set(tmp_path, 1, seed=4, duration_s=12.0, audio=True)[0]
    audio_path = path.with_suffix(".wav")
    info = soundfile.info(str(audio_path))
    assert info.samplerate == 16000 and info.channels == 1
    assert info.frames == 14 * 16000  # the map's duration plus 2 s
    audio = load_audio(audio_path)
    beatmap = read_beatmap_file(path).beatmap
    first_red = beatmap.timing_points[0]
    beat_samples = first_red.ms_per_beat * 16
    start = first_red.offset.total_seconds() * 16000
    onsets = np.flatnonzero(np.abs(audio) > 0.25)
    onset_starts = onsets[np.concatenate([[True], np.diff(onsets) > 100])]
    phases = (onset_starts - start) / beat_samples
    np.testing.assert_allclose(phases, np.round(phases), atol=0.02)


def test_bundled_examples_match_their_generator(tmp_path: Path) -> None:
    import importlib.util

    script = EXAMPLES.parent / "make_example_data.py"
    spec = importlib.util.spec_from_file_location("make_example_data", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for folder, style, seed in (
        ("real", module.REAL_STYLE, 1),
        ("generated", module.GENERATED_STYLE, 2),
    ):
        fresh = write_synthetic_set(tmp_path / folder, 8, seed=seed, style=style)
        bundled = sorted((EXAMPLES / folder).glob("*.osu"))
        assert [p.name for p in bundled] == [p.name for p in fresh]
        for a, b in zip(bundled, fresh):
            assert a.read_text(encoding="utf-8") == b.read_text(encoding="utf-8")


def test_disturbances_write_valid_maps(synthetic_beatmaps: Path, tmp_path: Path) -> None:
    source = synthetic_beatmaps / "flow"
    original = read_beatmap_file(sorted(source.glob("*.osu"))[0]).beatmap
    text = sorted(source.glob("*.osu"))[0].read_text(encoding="utf-8")

    untouched, _ = parse_beatmap_text(perturb_text(text, Disturbance(), seed=1))
    assert [(o.time, o.position) for o in _objects(untouched)] == [
        (o.time, o.position) for o in _objects(original)
    ]

    jittered, _ = parse_beatmap_text(perturb_text(text, Disturbance(timing_jitter_ms=8), seed=1))
    shifts = [
        (a.time - b.time).total_seconds() * 1000
        for a, b in zip(_objects(jittered), _objects(original))
    ]
    assert len(_objects(jittered)) == len(_objects(original))
    assert np.std(shifts) > 1.0
    times = [o.time for o in _objects(jittered)]
    assert times == sorted(times)

    moved, _ = parse_beatmap_text(perturb_text(text, Disturbance(position_noise_px=20), seed=1))
    offsets = [
        np.hypot(a.position.x - b.position.x, a.position.y - b.position.y)
        for a, b in zip(_objects(moved), _objects(original))
        if not isinstance(a, slider.beatmap.Spinner)
    ]
    assert np.mean(offsets) > 5.0
    assert all(0 <= o.position.x <= 512 and 0 <= o.position.y <= 384 for o in _objects(moved))

    dropped, _ = parse_beatmap_text(perturb_text(text, Disturbance(drop_fraction=0.5), seed=1))
    assert 0.3 < len(_objects(dropped)) / len(_objects(original)) < 0.7
    assert perturb_text(text, Disturbance(0, 0, 0.5), seed=2) != perturb_text(
        text, Disturbance(0, 0, 0.5), seed=3
    )

    written = perturb_folder(source, tmp_path / "out", Disturbance(5, 5, 0.1), seed=0)
    assert [p.name for p in written] == sorted(p.name for p in source.glob("*.osu"))
    for path in written:
        beatmap_file = read_beatmap_file(path)
        assert beatmap_file.audio_path is not None and beatmap_file.audio_path.parent == path.parent

    with pytest.raises(InputError):
        Disturbance(drop_fraction=1.0)


def test_custom_style() -> None:
    sparse = dataclasses.replace(
        STYLES["flow"], name="sparse", gap_beats={2.0: 1.0}, slider_share=0.0
    )
    beatmap, _ = parse_beatmap_text(synthetic_beatmap(1, sparse, duration_s=30.0))
    objects = [o for o in _objects(beatmap) if not isinstance(o, slider.beatmap.Spinner)]
    assert all(isinstance(o, slider.beatmap.Circle) for o in objects)
    gaps = np.diff([o.time.total_seconds() for o in objects])
    beat_s = beatmap.timing_points[0].ms_per_beat / 1000
    assert np.median(gaps) == pytest.approx(2 * beat_s, abs=0.002)
