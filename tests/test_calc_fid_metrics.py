"""calc_fid's extra metrics (star rating, time-integrated BPM, 8 s-gap drain, SSM, training-set
overlap), per-mode values, and the report with several extractors in one pass."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from beatmap_fid.beatmap.reading import parse_beatmap_text
from beatmap_fid.errors import SkipLog
from beatmap_fid.metrics.calc_fid import (
    bpm_squared_error,
    drain_time_gap_rule,
    near_duplicates,
    overlap_by_id,
    paired_metrics,
    ssm_rmse,
    window_features,
)


def _osu(objects: list[str], timing: list[str], *, mode: int = 0, beatmap_id: int = 1) -> str:
    return "\n".join(
        [
            "osu file format v14",
            "[General]",
            "AudioFilename: audio.mp3",
            f"Mode: {mode}",
            "[Metadata]",
            "Title:t",
            "Artist:a",
            "Creator:c",
            "Version:v",
            f"BeatmapID:{beatmap_id}",
            "[Difficulty]",
            "HPDrainRate:5",
            "CircleSize:4",
            "OverallDifficulty:8",
            "ApproachRate:9",
            "SliderMultiplier:1.4",
            "SliderTickRate:1",
            "[TimingPoints]",
            *timing,
            "[HitObjects]",
            *objects,
            "",
        ]
    )


def _circles(times_ms, spread: int = 1) -> list[str]:
    return [
        f"{(60 + 37 * i * spread) % 480},{(40 + 53 * i) % 360},{t},1,0,0:0:0:0:"
        for i, t in enumerate(times_ms)
    ]


def _map(text: str):
    return parse_beatmap_text(text, modes=(0, 1, 2, 3))[0]


RED_120 = "0,500,4,2,0,60,1,0"


def test_drain_time_counts_gaps_over_8_s_as_breaks():
    beatmap = _map(_osu(_circles([0, 1000, 2000, 12000, 13000]), [RED_120]))
    assert drain_time_gap_rule(beatmap) == 3.0  # 13 s minus the 10 s gap
    exactly_8 = _map(_osu(_circles([0, 8000, 9000]), [RED_120]))
    assert drain_time_gap_rule(exactly_8) == 9.0  # a gap of exactly 8 s is not a break
    assert drain_time_gap_rule(_map(_osu(_circles([500]), [RED_120]))) == 0.0


def test_bpm_error_is_integrated_over_time():
    real = _map(_osu(_circles(range(0, 20001, 1000)), [RED_120]))
    # 150 BPM from 10 s; an inherited point and a replaced point at the same time do not count
    generated = _map(
        _osu(
            _circles(range(0, 18001, 1000)),
            [RED_120, "5000,-50,4,2,0,60,0,0", "10000,300,4,2,0,60,1,0", "10000,400,4,2,0,60,1,0"],
        )
    )
    integral, length = bpm_squared_error(real, generated)
    assert length == 20.0 and integral == pytest.approx(30.0**2 * 10.0)
    assert bpm_squared_error(real, real) == (0.0, 20.0)


def test_ssm_rmse_by_hand():
    two = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # cosine SSM [[1, 0], [0, 1]]
    one = np.array([[3.0, 4.0]], dtype=np.float32)
    # [[1, .5], [.5, 1]] against the 1x1 [[1]] resized to 2x2 (all ones)
    assert ssm_rmse(two, one) == pytest.approx(math.sqrt(0.125))
    # 2x2 resized to 3x3 with half-pixel centres: rows [1, .75, .5], [.75, .75, .75], [.5, .75, 1]
    three_same = np.ones((3, 5), dtype=np.float32)
    expected = np.array([[0, 0.25, 0.5], [0.25, 0.25, 0.25], [0.5, 0.25, 0]])
    assert ssm_rmse(two, three_same) == pytest.approx(math.sqrt(np.mean(expected**2)), rel=1e-6)
    assert ssm_rmse(two, two) == 0.0
    assert ssm_rmse(two, np.zeros((0, 2), np.float32)) is None


def _pair_folders(root: Path) -> tuple[Path, Path]:
    real, generated = root / "real", root / "generated"
    for folder in (real, generated):
        folder.mkdir(parents=True, exist_ok=True)
    (real / "a.osu").write_text(_osu(_circles(range(0, 20001, 250)), [RED_120]))
    (generated / "a.osu").write_text(
        _osu(_circles(range(0, 18001, 500), 2), [RED_120, "10000,400,4,2,0,60,1,0"])
    )
    (real / "b.osu").write_text(_osu(_circles([0, 1000, 2000, 12000, 13000]), [RED_120], mode=1))
    (generated / "b.osu").write_text(_osu(_circles([0, 1000, 2000, 3000]), [RED_120], mode=1))
    return real, generated


def _stars(path: Path) -> float:
    rosu = pytest.importorskip("rosu_pp_py")
    return rosu.Difficulty().calculate(rosu.Beatmap(content=path.read_text())).stars


def test_paired_metrics_by_hand_and_per_mode(tmp_path):
    pytest.importorskip("rosu_pp_py")
    real, generated = _pair_folders(tmp_path)
    features = {"a.osu": np.eye(2, dtype=np.float32), "b.osu": np.eye(3, dtype=np.float32)}
    generated_features = {
        "a.osu": np.ones((1, 2), np.float32),
        "b.osu": np.eye(3, dtype=np.float32),
    }
    result = paired_metrics(
        real, generated, real_features=features, generated_features=generated_features
    )
    values = result.as_dict()
    stars = {n: (_stars(real / n), _stars(generated / n)) for n in ("a.osu", "b.osu")}
    assert all(r != g for r, g in stars.values())
    assert values["star_rating_rmse"] == pytest.approx(
        math.sqrt(np.mean([(r - g) ** 2 for r, g in stars.values()])), rel=1e-12
    )
    # a: 30 BPM apart over the last 10 of 20 s; b: no difference over 13 s
    assert values["bpm_integrated_rmse"] == pytest.approx(math.sqrt(900 * 10 / (20 + 13)))
    # a: 20 s vs 18 s; b: 3 s vs 3 s
    assert values["drain_time_gap_rmse"] == pytest.approx(math.sqrt((4 + 0) / 2))
    assert values["ssm_rmse"] == pytest.approx(math.sqrt((0.125 + 0.0) / 2))
    # per mode: each mode alone (the taiko pair is b)
    assert values["drain_time_gap_rmse@osu"] == pytest.approx(2.0)
    assert values["drain_time_gap_rmse@taiko"] == 0.0
    assert values["star_rating_rmse@taiko"] == pytest.approx(
        abs(stars["b.osu"][0] - stars["b.osu"][1])
    )
    assert values["paired_maps"] == 2 and values["paired_maps@osu"] == 1


def test_window_features_order_windows_by_index():
    ids = ["m.osu#10", "m.osu#2", "n.osu#0", "m.osu#0"]
    vectors = np.arange(8, dtype=np.float32).reshape(4, 2)
    grouped = window_features(ids, vectors)
    assert grouped["m.osu"].tolist() == [[6, 7], [2, 3], [0, 1]] and grouped["n.osu"].tolist() == [
        [4, 5]
    ]


@pytest.mark.realdata
def test_star_rating_equals_rosu_on_real_maps(shared_data):
    rosu = pytest.importorskip("rosu_pp_py")
    from beatmap_fid.beatmap.difficulty import star_rating

    songs = sorted((shared_data / "beatmaps" / "songs").rglob("*.osu"))[:12]
    for path in songs:
        expected = rosu.Difficulty().calculate(rosu.Beatmap(content=path.read_bytes())).stars
        assert star_rating(path) == expected


def _copy_maps(paths: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in paths:
        target = folder / path.parent.name / path.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(path, target)
        copies.append(target)
    return copies


@pytest.mark.realdata
def test_training_overlap_by_id_on_real_maps(shared_data, tmp_path):
    from beatmap_fid.beatmap.reading import read_beatmap_file

    maps = sorted((shared_data / "beatmaps" / "songs").rglob("*.osu"))[:6]
    copies = _copy_maps(maps, tmp_path / "maps")
    ids = [read_beatmap_file(p, modes=(0, 1, 2, 3)).beatmap.beatmap_id for p in copies]
    assert all(isinstance(i, int) for i in ids)
    ids_file = tmp_path / "training_ids.txt"
    ids_file.write_text(f"{ids[0]}\n\n{ids[3]}\n999999999\n")
    found = overlap_by_id(tmp_path / "maps", ids_file)
    assert (found["in"], found["out"], found["total"]) == (2, 4, 6) and found[
        "ratio"
    ] == pytest.approx(1 / 3)
    assert sorted(found["maps"]) == sorted(
        p.relative_to(tmp_path / "maps").as_posix() for p in (copies[0], copies[3])
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from beatmap_fid.extractors.cm3p import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("cm3p") / "tiny", "tiny", seed=2)


def _songs_of_modes(shared_data: Path) -> list[Path]:
    """One real map with audio per game mode, from four different songs."""
    songs = shared_data / "beatmaps" / "songs"
    return [
        songs / "1770622 Schtiffles - Merp Merp/Schtiffles - Merp Merp (R3formed) [Buzzing].osu",
        songs / "1171207 Disasterpeace - Adrift/Disasterpeace - Adrift (Vulkin) [Futsuu].osu",
        songs
        / "943803 Fractal Dreamers - Everything for a Dream/Fractal Dreamers - Everything for a Dream (JBHyperion) [Cup].osu",
        songs
        / "1009907 James Landino & Kabuki - Birdsong/James Landino & Kabuki - Birdsong (_Kobii) [Leni's Easy].osu",
    ]


@pytest.mark.realdata
def test_near_duplicates_by_embedding_on_real_maps(shared_data, tiny_checkpoint, tmp_path):
    from beatmap_fid.extractors.base import build_extractor

    extractor = build_extractor("cm3p", checkpoint=str(tiny_checkpoint), device="cpu", audio=False)
    maps = _songs_of_modes(shared_data)
    query = tmp_path / "query"
    _copy_maps(maps[:3], query)
    training = tmp_path / "training"
    _copy_maps(maps[1:], training)

    def features(folder: Path) -> dict[str, np.ndarray]:
        items = list(extractor.items(folder, SkipLog()))
        return window_features([i.id for i in items], extractor.embed([i.payload for i in items]))

    found = near_duplicates(features(query), features(training), threshold=0.99)
    copied = [f"{m.parent.name}/{m.name}" for m in maps[1:3]]  # in both sets
    assert sorted((q, t) for q, t, _ in found) == [(name, name) for name in sorted(copied)]
    assert all(c == pytest.approx(1.0, abs=1e-6) for _, _, c in found)


@pytest.mark.realdata
def test_every_metric_per_mode_on_a_folder_mixing_modes(shared_data, tiny_checkpoint, tmp_path):
    from beatmap_fid.beatmap.perturb import Disturbance, perturb_folder
    from beatmap_fid.evaluate import evaluate
    from beatmap_fid.frechet import frechet_distance
    from beatmap_fid.store import EmbeddingStore

    real = tmp_path / "real"
    for path in _songs_of_modes(shared_data):
        target = real / path.parent.name
        target.mkdir(parents=True)
        shutil.copy(path, target / path.name)
        shutil.copy(path.parent / "audio.mp3", target / "audio.mp3")
    generated = tmp_path / "generated"
    perturb_folder(
        real,
        generated,
        Disturbance(timing_jitter_ms=30, position_noise_px=40, drop_fraction=0.3),
        seed=3,
    )
    stores = tmp_path / "stores"
    values = evaluate(
        real,
        generated,
        ["fid", "rhythm", "paired"],
        "cm3p",
        store_dir=stores,
        progress=False,
        extractor_options={"checkpoint": str(tiny_checkpoint), "device": "cpu"},
    )
    for mode in ("osu", "taiko", "catch", "mania"):
        for key in (
            "fid",
            "active_f1",
            "bpm_rmse",
            "star_rating_rmse",
            "bpm_integrated_rmse",
            "ssm_rmse",
        ):
            assert f"{key}@{mode}" in values, f"{key}@{mode}"
    # the per-mode FID is the FID of that mode's windows alone
    (real_store,) = [p for p in stores.glob("*real*.h5")]
    (gen_store,) = [p for p in stores.glob("*generated*.h5")]
    with EmbeddingStore(real_store) as r, EmbeddingStore(gen_store) as g:
        taiko_r = [i for i, name in enumerate(r.ids) if "Adrift" in name]
        taiko_g = [i for i, name in enumerate(g.ids) if "Adrift" in name]
        expected = frechet_distance(r.vectors(np.array(taiko_r)), g.vectors(np.array(taiko_g)))
    assert values["fid@taiko"] == pytest.approx(expected, rel=1e-9)
    assert values["n_real@taiko"] == len(taiko_r)
    # pooled figures are not the per-mode ones
    assert values["fid"] != pytest.approx(values["fid@taiko"])


@pytest.mark.realdata
def test_report_with_two_extractors_reads_each_folder_once(
    shared_data, tiny_checkpoint, tmp_path, monkeypatch
):
    import beatmap_fid.beatmap.reading as reading
    from beatmap_fid.beatmap.perturb import Disturbance, perturb_folder
    from beatmap_fid.report import build_report

    real = tmp_path / "real"
    for path in _songs_of_modes(shared_data)[:2]:
        target = real / path.parent.name
        target.mkdir(parents=True)
        shutil.copy(path, target / path.name)
        shutil.copy(path.parent / "audio.mp3", target / "audio.mp3")
    generated = tmp_path / "generated"
    perturb_folder(real, generated, Disturbance(timing_jitter_ms=20, position_noise_px=30), seed=1)
    calls: list[str] = []
    original = reading.read_beatmap_file

    def counting(path, **kwargs):
        calls.append(Path(path).name)
        return original(path, **kwargs)

    monkeypatch.setattr(reading, "read_beatmap_file", counting)
    result = build_report(
        real,
        generated,
        tmp_path / "report",
        extractor="cm3p,descriptors",
        metrics=["fid", "paired"],
        store_dir=tmp_path / "stores",
        projection="pca",
        curve_seeds=1,
        progress=False,
        extractor_options={"cm3p.checkpoint": str(tiny_checkpoint), "device": "cpu"},
    )
    names = [e["name"] for e in result.data["extractors"]]
    assert names == ["cm3p", "descriptors"]
    assert all("fid" in e["metrics"] for e in result.data["extractors"])
    assert "fid@osu" in result.data["extractors"][0]["metrics"]
    assert result.data["ssm_extractor"] == "cm3p" and "ssm_rmse" in result.data["paired"]["values"]
    # each map read once for both extractors (2 maps x 2 sides), and once more per pair for
    # the pair metrics (2 pairs x 2 maps); separate passes would read 12 times
    assert len(calls) == 8
    html = result.html_path.read_text()
    assert "Extractors" in html and "calc_fid pair metrics" in html and "Per game mode" in html
