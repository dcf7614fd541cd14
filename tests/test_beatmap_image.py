"""Beatmaps as pictures: the rasteriser and the ``beatmap-image`` extractor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from beatmap_fid.beatmap.reading import read_beatmap
from beatmap_fid.extractors.beatmap_image import (
    FIELD_LEFT,
    FIELD_SPAN,
    FIELD_TOP,
    cut_polyline,
    render_window,
    time_colour,
)

MAP = """osu file format v14

[General]
AudioFilename: audio.mp3
Mode: 0

[Metadata]
Title:t
Artist:a
Creator:c
Version:v

[Difficulty]
HPDrainRate:5
CircleSize:4
OverallDifficulty:5
ApproachRate:5
SliderMultiplier:1.4
SliderTickRate:1

[TimingPoints]
0,500,4,2,0,100,1,0

[HitObjects]
100,100,0,1,0,0:0:0:0:
400,300,4000,1,0,0:0:0:0:
100,300,2000,2,0,L|300:300,1,200,0|0,0:0|0:0,0:0:0:0:
256,192,6000,12,0,7000,0:0:0:0:
"""


def _pixel(x: float, y: float, size: int = 224) -> tuple[int, int]:
    scale = size / FIELD_SPAN
    return int((y - FIELD_TOP) * scale), int((x - FIELD_LEFT) * scale)


@pytest.fixture()
def beatmap(tmp_path: Path):
    path = tmp_path / "map.osu"
    path.write_text(MAP, encoding="utf-8")
    return read_beatmap(path)


def test_objects_are_drawn_where_they_are_with_time_colours(beatmap) -> None:
    image = render_window(beatmap, 0.0, 8184.0)
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    first, late = image[_pixel(100, 100)], image[_pixel(400, 300)]
    assert first[2] > 200 and first[0] < 20  # blue: early in the window
    assert late[0] > 100  # redder: later
    np.testing.assert_array_equal(first, time_colour(0.0))
    # The slider body runs from (100, 300) to (300, 300); the empty corner stays black.
    assert image[_pixel(200, 300)].any()
    assert not image[_pixel(500, 20)].any()
    # The spinner is a ring around the centre, hollow inside.
    assert not image[_pixel(256, 192)].any()
    assert image[_pixel(256 + 157, 192)].any()


def test_window_bounds_select_objects(beatmap) -> None:
    image = render_window(beatmap, 3000.0, 5000.0)
    assert image[_pixel(400, 300)].any()
    assert not image[_pixel(100, 100)].any()
    assert not render_window(beatmap, 9000.0, 17184.0).any()


def test_cut_polyline_stops_at_the_length() -> None:
    line = np.array([[0.0, 0.0], [100.0, 0.0], [100.0, 100.0]])
    np.testing.assert_allclose(cut_polyline(line, 150.0)[-1], [100.0, 50.0])
    np.testing.assert_allclose(cut_polyline(line, 50.0), [[0.0, 0.0], [50.0, 0.0]])


@pytest.mark.slow
def test_extractor_embeds_synthetic_maps(synthetic_beatmaps: Path, tmp_path: Path) -> None:
    from beatmap_fid import EmbeddingStore, embed_to_store

    result = embed_to_store(
        synthetic_beatmaps / "flow",
        "beatmap-image",
        tmp_path / "img.h5",
        progress=False,
        extractor_options={"device": "cpu", "num_workers": 0},
    )
    assert result.written == result.n_items > 6
    with EmbeddingStore(tmp_path / "img.h5") as store:
        vectors = store.vectors()
        assert store.dim == 1280 and store.config["backbone"] == "efficientnet"
    assert np.isfinite(vectors).all() and vectors.std(axis=0).max() > 0
