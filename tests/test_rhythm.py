"""Rhythm metrics: onset matching, onsets of real and hand-made maps, BPM, drain time, pairing."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import slider

from beatmap_fid.beatmap.reading import decode_osu_bytes, find_beatmaps, normalise_osu_text
from beatmap_fid.errors import InputError, SourceError
from beatmap_fid.metrics.rhythm import (
    OnsetCounts,
    break_periods,
    match_onsets,
    onset_times,
    pair_beatmaps,
    read_map_rhythm,
    rhythm_metrics,
)

HAND_MADE = """osu file format v14

[General]
AudioFilename: audio.mp3
Mode: 0

[Metadata]
Title:Hand made
Artist:Test
Creator:Tester
Version:Test

[Difficulty]
HPDrainRate:5
CircleSize:4
OverallDifficulty:5
ApproachRate:9
SliderMultiplier:1
SliderTickRate:1

[Events]
2,3000,6000

[TimingPoints]
1000,500,4,2,0,60,1,0
9000,400,4,2,0,60,1,0

[HitObjects]
100,100,1000,1,0,0:0:0:0:
200,100,1500,2,0,L|300:100,2,100
256,192,3000,12,0,3800,0:0:0:0:
100,100,6000,1,0,0:0:0:0:
150,100,6250,1,0,0:0:0:0:
100,100,9200,1,0,0:0:0:0:
"""
# Slider: 100 px at SliderMultiplier 1 and 500 ms per beat lasts 500 ms per slide, 2 slides.
HAND_MADE_ACTIVE = [1000, 1500, 6000, 6250, 9200]
HAND_MADE_PASSIVE = [1000, 1500, 2000, 2500, 3800, 6000, 6250, 9200]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def shifted_text(text: str, shift_ms: int) -> str:
    """The normalised map with every timing point, object, spinner end and break moved."""
    clean, _ = normalise_osu_text(text)
    out, section = [], None
    for line in clean.splitlines():
        if line.startswith("["):
            section = line
        elif line and section == "[TimingPoints]":
            fields = line.split(",")
            fields[0] = repr(float(fields[0]) + shift_ms)
            line = ",".join(fields)
        elif line and section == "[HitObjects]":
            fields = line.split(",")
            fields[2] = str(int(fields[2]) + shift_ms)
            if int(fields[3]) & (8 | 128):
                fields[5] = str(int(fields[5]) + shift_ms)
            line = ",".join(fields)
        elif line and section == "[Events]" and line.split(",")[0] in ("2", "Break"):
            kind, start, end = line.split(",")[:3]
            line = f"{kind},{int(float(start)) + shift_ms},{int(float(end)) + shift_ms}"
        out.append(line)
    return "\n".join(out) + "\n"


def reference_rhythm(beatmap: slider.Beatmap, passive: bool) -> set[int]:
    """Onsets exactly as the reference's loop over slider objects computes them."""
    rhythm = set()
    for obj in beatmap.hit_objects(stacking=False):
        ms = int(obj.time.total_seconds() * 1000 + 1e-5)
        if isinstance(obj, slider.beatmap.Slider):
            rhythm.add(ms)
            if passive:
                duration: timedelta = (obj.end_time - obj.time) / obj.repeat
                for i in range(obj.repeat):
                    rhythm.add(int((obj.time + duration * (i + 1)).total_seconds() * 1000 + 1e-5))
        elif isinstance(obj, slider.beatmap.Spinner):
            if passive:
                rhythm.add(int(obj.end_time.total_seconds() * 1000 + 1e-5))
        else:
            rhythm.add(ms)
    return rhythm


def naive_counts(real, generated, tolerance=10) -> OnsetCounts:
    tp = sum(any(abs(r - g) <= tolerance for g in generated) for r in real)
    fp = sum(not any(abs(g - r) <= tolerance for r in real) for g in generated)
    return OnsetCounts(tp, fp, len(real) - tp)


def real_standard_maps(shared_data: Path, count: int) -> list[Path]:
    maps = []
    for path in find_beatmaps(shared_data / "beatmaps" / "songs"):
        text, _ = decode_osu_bytes(path.read_bytes())
        if "Mode: 0" in text or "Mode:0" in text:
            maps.append(path)
        if len(maps) == count:
            break
    return maps


def test_matching_counts_a_small_case_by_hand():
    counts = match_onsets([0, 100, 200, 300], [5, 112, 200, 500, 310])
    # real 0 ↔ 5, 200 ↔ 200, 300 ↔ 310 (exactly 10 ms: inside); 100 has none (112 is 12 away)
    assert (counts.true_positives, counts.false_negatives, counts.false_positives) == (3, 1, 2)
    assert counts.precision == pytest.approx(3 / 5)
    assert counts.recall == pytest.approx(3 / 4)
    assert counts.f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert match_onsets([0], [11]).true_positives == 0
    assert match_onsets([0], [11], tolerance_ms=11).true_positives == 1


def test_matching_agrees_with_the_quadratic_loops_on_random_onsets():
    rng = np.random.default_rng(3)
    for _ in range(20):
        real = np.unique(rng.integers(0, 3000, rng.integers(0, 60)))
        generated = np.unique(rng.integers(0, 3000, rng.integers(0, 60)))
        assert match_onsets(real, generated) == naive_counts(real.tolist(), generated.tolist())


def test_undefined_rates_are_zero_and_counts_add_up():
    empty = OnsetCounts()
    assert (empty.precision, empty.recall, empty.f1) == (0.0, 0.0, 0.0)
    assert match_onsets([], [5]).precision == 0.0
    total = OnsetCounts(1, 2, 3) + OnsetCounts(4, 5, 6)
    assert total == OnsetCounts(5, 7, 9)


def test_hand_made_map_onsets_bpm_and_drain_time(tmp_path):
    rhythm = read_map_rhythm(write(tmp_path / "hand.osu", HAND_MADE))
    assert rhythm.active.tolist() == HAND_MADE_ACTIVE
    assert rhythm.passive.tolist() == HAND_MADE_PASSIVE
    # 120 BPM covers 1000..9000 ms of the play time, 150 BPM only 9000..9200
    assert rhythm.main_bpm == pytest.approx(120.0)
    # 1000 → 9200 ms minus the break 3000..6000
    assert rhythm.drain_time_s == pytest.approx((9200 - 1000 - 3000) / 1000)
    assert break_periods(HAND_MADE) == [(3000.0, 6000.0)]


def test_onsets_match_the_reference_loops_on_real_maps(shared_data):
    for path in real_standard_maps(shared_data, 3):
        text, _ = decode_osu_bytes(path.read_bytes())
        beatmap = slider.Beatmap.parse(normalise_osu_text(text)[0])
        for passive in (False, True):
            ours = onset_times(beatmap, passive=passive)
            assert set(ours.tolist()) == reference_rhythm(beatmap, passive)
            assert np.all(np.diff(ours) > 0)


def test_a_real_map_against_itself_and_shifted_copies(shared_data, tmp_path):
    path = real_standard_maps(shared_data, 1)[0]
    text, _ = decode_osu_bytes(path.read_bytes())
    write(tmp_path / "real" / "map.osu", text)
    for shift in (0, 5, 15):
        write(tmp_path / f"shift{shift}" / "map.osu", shifted_text(text, shift))

    same = rhythm_metrics(tmp_path / "real", tmp_path / "real").as_dict()
    for key in ("active", "passive"):
        assert same[f"{key}_precision"] == same[f"{key}_recall"] == same[f"{key}_f1"] == 1.0
    assert same["bpm_rmse"] == 0.0 and same["drain_time_rmse"] == 0.0

    for shift, low, high in ((0, 1.0, 1.0), (5, 1.0, 1.0), (15, 0.0, 0.15)):
        result = rhythm_metrics(tmp_path / "real", tmp_path / f"shift{shift}")
        for counts in (result.active, result.passive):
            assert low <= counts.precision <= high, (shift, counts)
            assert low <= counts.recall <= high, (shift, counts)
        assert result.bpm_rmse == pytest.approx(0.0, abs=1e-9)
        assert result.drain_time_rmse == pytest.approx(0.0, abs=1e-9)


def test_counts_are_summed_over_pairs_before_the_rates(tmp_path):
    write(tmp_path / "real" / "a.osu", HAND_MADE)
    write(tmp_path / "real" / "b.osu", HAND_MADE)
    write(tmp_path / "gen" / "a.osu", HAND_MADE)
    write(tmp_path / "gen" / "b.osu", shifted_text(HAND_MADE, 50))
    result = rhythm_metrics(tmp_path / "real", tmp_path / "gen")
    n = len(HAND_MADE_ACTIVE)
    assert result.active == OnsetCounts(n, n, n)
    assert result.active.precision == pytest.approx(0.5)
    assert len(result.pairs) == 2
    assert result.drain_time_rmse == pytest.approx(0.0, abs=1e-9)


def test_pairing_by_path_stem_folder_and_mapping_files(tmp_path):
    real, gen = tmp_path / "real", tmp_path / "gen"
    for name in ("set1/a.osu", "b.osu", "c.osu", "lonely.osu"):
        write(real / name, HAND_MADE)
    for name in ("set1/a.osu", "other/b.osu", "c/output.osu", "extra.osu"):
        write(gen / name, HAND_MADE)
    pairs = pair_beatmaps(real, gen)
    found = {
        p[0].relative_to(real).as_posix(): p[1].relative_to(gen).as_posix() for p in pairs.pairs
    }
    assert found == {"set1/a.osu": "set1/a.osu", "b.osu": "other/b.osu", "c.osu": "c/output.osu"}
    assert pairs.unmatched_real == ["lonely.osu"]
    assert pairs.unmatched_generated == ["extra.osu"]

    mapping = {"lonely.osu": "extra.osu", "b.osu": "c/output.osu"}
    write(tmp_path / "pairs.json", json.dumps(mapping))
    write(tmp_path / "pairs.csv", "real,generated\nlonely.osu,extra.osu\nb.osu,c/output.osu\n")
    for source in (mapping, tmp_path / "pairs.json", tmp_path / "pairs.csv"):
        by_mapping = pair_beatmaps(real, gen, source)
        assert len(by_mapping.pairs) == 2
        assert "c.osu" in by_mapping.unmatched_real

    write(tmp_path / "bad.json", json.dumps({"missing.osu": "extra.osu"}))
    with pytest.raises(InputError, match=r"missing\.osu"):
        pair_beatmaps(real, gen, tmp_path / "bad.json")
    write(tmp_path / "none" / "zzz.osu", HAND_MADE)
    with pytest.raises(InputError, match="pairs with"):
        pair_beatmaps(real, tmp_path / "none")


def test_unreadable_maps_are_skipped_with_a_reason(tmp_path):
    write(tmp_path / "real" / "a.osu", HAND_MADE)
    write(tmp_path / "real" / "b.osu", HAND_MADE)
    write(tmp_path / "gen" / "a.osu", HAND_MADE)
    write(tmp_path / "gen" / "b.osu", "this is not a beatmap\n")
    result = rhythm_metrics(tmp_path / "real", tmp_path / "gen")
    assert len(result.pairs) == 1
    assert len(result.skipped) == 1 and "b.osu" in result.skipped.entries[0].source
    assert result.active.f1 == 1.0
    with pytest.raises(SourceError):
        read_map_rhythm(tmp_path / "gen" / "b.osu")
    with pytest.raises(InputError):
        rhythm_metrics(tmp_path / "real" / "b.osu", tmp_path / "gen" / "b.osu")
