"""The weight-free ``descriptors`` extractor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from beatmap_fid.beatmap.audio import audio_num_samples
from beatmap_fid.beatmap.perturb import Disturbance, perturb_folder
from beatmap_fid.beatmap.reading import find_beatmaps, read_beatmap_file
from beatmap_fid.beatmap.synthetic import synthetic_beatmap
from beatmap_fid.beatmap.windows import WindowSpec, beatmap_num_samples, window_starts
from beatmap_fid.errors import SkipLog
from beatmap_fid.extractors import Extractor, build_extractor, config_hash, extractor_infos
from beatmap_fid.extractors.descriptors import (
    DESCRIPTOR_GROUPS,
    DESCRIPTOR_NAMES,
    DescriptorExtractor,
    DescriptorWindow,
    descriptors,
    map_settings,
    object_table,
    slider_ends,
)

INDEX = {name: i for i, name in enumerate(DESCRIPTOR_NAMES)}


def _embed(extractor: DescriptorExtractor, source: Path) -> tuple[list, np.ndarray, SkipLog]:
    skipped = SkipLog()
    items = list(extractor.items(source, skipped))
    return items, extractor.embed([item.payload for item in items]), skipped


@pytest.fixture(scope="module")
def embedded(synthetic_beatmaps: Path) -> tuple[list, np.ndarray]:
    items, vectors, skipped = _embed(DescriptorExtractor(), synthetic_beatmaps)
    assert not skipped
    return items, vectors


def test_registered_with_a_json_config() -> None:
    assert "descriptors" in [info.name for info in extractor_infos()]
    extractor = build_extractor("descriptors", use_audio=False)
    assert isinstance(extractor, Extractor)
    assert extractor.dim == len(DESCRIPTOR_NAMES) == len(set(DESCRIPTOR_NAMES))
    assert sum(len(names) for names in DESCRIPTOR_GROUPS.values()) == extractor.dim
    assert json.loads(json.dumps(extractor.config)) == extractor.config
    assert extractor.config["use_audio"] is False
    assert config_hash(extractor.config) != config_hash(build_extractor("descriptors").config)


def test_items_have_ids_labels_and_audio_window_counts(
    synthetic_beatmaps: Path, embedded: tuple[list, np.ndarray]
) -> None:
    items, _ = embedded
    spec = WindowSpec()
    expected = []
    for path in find_beatmaps(synthetic_beatmaps):
        beatmap_file = read_beatmap_file(path, root=synthetic_beatmaps)
        n = len(window_starts(audio_num_samples(beatmap_file.audio_path), spec))
        expected += [(f"{beatmap_file.id}#{i}", beatmap_file.creator) for i in range(n)]
    assert [(item.id, item.label) for item in items] == expected
    assert {item.label for item in items} == {"flow_0", "flow_1", "jumps_0", "jumps_1"}


def test_vectors_are_finite_float32_and_deterministic(
    synthetic_beatmaps: Path, embedded: tuple[list, np.ndarray]
) -> None:
    items, vectors = embedded
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(items), len(DESCRIPTOR_NAMES))
    assert np.isfinite(vectors).all()
    _, again, _ = _embed(DescriptorExtractor(), synthetic_beatmaps)
    np.testing.assert_array_equal(vectors, again)
    payloads = [item.payload for item in items]
    pieces = np.concatenate([descriptors(payloads[:5]), descriptors(payloads[5:])])
    np.testing.assert_array_equal(pieces, vectors)
    assert descriptors([]).shape == (0, len(DESCRIPTOR_NAMES))


def test_histograms_sum_to_one_on_busy_windows(embedded: tuple[list, np.ndarray]) -> None:
    _, vectors = embedded
    busy = vectors[:, INDEX["log_objects"]] > np.log1p(5)
    assert busy.any()
    for group in ("snap", "playfield"):
        names = [n for n in DESCRIPTOR_GROUPS[group] if n.startswith(("snap_", "grid_"))]
        sums = vectors[busy][:, [INDEX[n] for n in names]].sum(axis=1)
        np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    kinds = vectors[busy][:, [INDEX["circle_share"], INDEX["slider_share"], INDEX["spinner_share"]]]
    np.testing.assert_allclose(kinds.sum(axis=1), 1.0, atol=1e-5)


def test_styles_are_told_apart(embedded: tuple[list, np.ndarray]) -> None:
    items, vectors = embedded
    jumps = np.array([item.id.startswith("jumps/") for item in items])
    flow_mean, jumps_mean = vectors[~jumps].mean(axis=0), vectors[jumps].mean(axis=0)
    assert jumps_mean[INDEX["spacing_mean_div_100"]] > flow_mean[INDEX["spacing_mean_div_100"]]
    assert jumps_mean[INDEX["slider_share"]] < flow_mean[INDEX["slider_share"]]


def test_disturbed_maps_give_different_vectors(synthetic_beatmaps: Path, tmp_path: Path) -> None:
    source = synthetic_beatmaps / "flow"
    extractor = DescriptorExtractor()
    _, clean, _ = _embed(extractor, source)
    shifted = {}
    for name, disturbance in {
        "timing": Disturbance(timing_jitter_ms=10),
        "position": Disturbance(position_noise_px=25),
        "drop": Disturbance(drop_fraction=0.3),
    }.items():
        perturb_folder(source, tmp_path / name, disturbance, seed=0)
        _, vectors, _ = _embed(extractor, tmp_path / name)
        assert vectors.shape == clean.shape  # audio copied along: same windows
        shifted[name] = vectors.mean(axis=0) - clean.mean(axis=0)
    assert shifted["timing"][INDEX["snap_other"]] > 0.2
    assert abs(shifted["position"][INDEX["spacing_std_div_100"]]) > 0.02
    assert shifted["drop"][INDEX["objects_per_second"]] < -0.3
    for delta in shifted.values():
        assert np.abs(delta).max() > 0.01


def test_without_audio_windows_come_from_the_map_length(synthetic_beatmaps: Path) -> None:
    extractor = DescriptorExtractor(use_audio=False)
    items, vectors, _ = _embed(extractor, synthetic_beatmaps / "flow")
    assert not extractor.fallbacks
    expected = 0
    for path in find_beatmaps(synthetic_beatmaps / "flow"):
        beatmap = read_beatmap_file(path).beatmap
        expected += len(window_starts(beatmap_num_samples(beatmap)))
    assert len(items) == expected == len(vectors)


def test_maps_without_audio_are_fallbacks_and_short_maps_skipped(tmp_path: Path) -> None:
    (tmp_path / "long.osu").write_text(synthetic_beatmap(1, duration_s=30.0), encoding="utf-8")
    (tmp_path / "short.osu").write_text(synthetic_beatmap(2, duration_s=6.0), encoding="utf-8")
    extractor = DescriptorExtractor()
    items, _, skipped = _embed(extractor, tmp_path)
    assert {item.id.split("#")[0] for item in items} == {"long.osu"}
    assert skipped.reasons() == {"too short": 1}
    assert [entry.source for entry in extractor.fallbacks.entries] == ["long.osu", "short.osu"]
    assert extractor.fallbacks.reasons() == {"no audio": 2}


def test_empty_and_degenerate_windows_are_finite(tmp_path: Path) -> None:
    text = synthetic_beatmap(3, duration_s=20.0)
    head = text.partition("[HitObjects]\n")[0]
    odd = [
        "100,100,1000,2,0,B|100:100|100:100,1,50",  # all control points equal
        "100,100,2000,6,0,P|200:100|300:100,1,150",  # collinear perfect circle
        "100,100,3000,2,0,C|150:150,3,80",
        "100,100,4000,1,14,0:0:0:0:",
        "100,100,4000,1,0,0:0:0:0:",  # two objects at the same time
        "256,192,5000,12,0,7000,0:0:0:0:",
    ]
    path = tmp_path / "odd.osu"
    path.write_text(head + "[HitObjects]\n" + "\n".join(odd) + "\n", encoding="utf-8")
    beatmap = read_beatmap_file(path).beatmap
    table = object_table(beatmap)
    assert np.isfinite(table).all()
    settings = map_settings(beatmap)
    vectors = descriptors(
        [
            DescriptorWindow(table, 0.0, 8184.0, settings),
            DescriptorWindow(table[:0], 8184.0, 16368.0, settings),
        ]
    )
    assert np.isfinite(vectors).all()
    assert vectors[0, INDEX["empty"]] == 0 and vectors[1, INDEX["empty"]] == 1
    assert vectors[1, INDEX["objects_per_second"]] == 0


@pytest.mark.parametrize(
    ("curve", "points", "length", "end"),
    [
        (1.0, [(0, 0), (100, 0), (100, 100)], 150.0, (100, 50)),  # linear
        (1.0, [(0, 0), (100, 0), (100, 100)], 250.0, (100, 150)),  # extended past the last point
        (2.0, [(0, 0), (50, 50), (100, 0)], np.pi * 25, (50, 50)),  # a quarter of a circle
        (2.0, [(0, 0), (50, 50), (100, 100)], 50.0 * np.sqrt(2), (50, 50)),  # collinear: a line
        (0.0, [(0, 0), (100, 0), (100, 0), (100, 100)], 150.0, (100, 50)),  # red anchor
        (0.0, [(0, 0), (100, 100), (200, 0)], 1000.0, None),  # a Bezier ends beyond (200, 0)
        (3.0, [(0, 0), (100, 0), (200, 0)], 150.0, (150, 0)),  # Catmull through its points
    ],
)
def test_slider_ends_follow_the_path(curve, points, length, end) -> None:
    control = np.array(points, dtype=np.float64)
    result = slider_ends(
        np.array([curve]), control, np.array([0, len(points)]), np.array([length])
    )[0]
    if end is None:
        assert result[0] > 200 and result[1] < 0
    else:
        np.testing.assert_allclose(result, end, atol=0.2)


def test_real_maps_with_audio(shared_data: Path) -> None:
    songs = shared_data / "beatmaps" / "songs"
    folder = next(
        p.parent for p in sorted(songs.rglob("*.mp3")) if len(list(p.parent.glob("*.osu"))) >= 2
    )
    extractor = DescriptorExtractor()
    items, vectors, _ = _embed(extractor, folder)
    assert np.isfinite(vectors).all()
    counts: dict[str, int] = {}
    for item in items:
        counts[item.id.split("#")[0]] = counts.get(item.id.split("#")[0], 0) + 1
    for path in find_beatmaps(folder):
        beatmap_file = read_beatmap_file(path, root=folder, modes=(0, 1, 2, 3))
        if int(beatmap_file.beatmap.mode) != 0 or beatmap_file.audio_path is None:
            continue
        expected = len(window_starts(audio_num_samples(beatmap_file.audio_path)))
        assert counts.get(beatmap_file.id, 0) == expected
