"""Slider paths cost time linear in their control points, and stay where they were.

The descriptor extractor and the beatmap-image rasteriser sample every Bezier segment of a
slider at ``PATH_SAMPLES + 1`` points. Segments up to ``DE_CASTELJAU_MAX_POINTS`` control
points keep de Casteljau's algorithm; longer ones use the O(m) Bernstein sum. The reference
below is de Casteljau on every segment (what the extractor used for all segments before),
written with numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from beatmap_fid.beatmap.reading import (
    MAX_SLIDER_POINTS,
    decode_osu_bytes,
    find_beatmaps,
    read_beatmap_file,
)
from beatmap_fid.cli import main
from beatmap_fid.errors import SkipLog, SourceError
from beatmap_fid.extractors.beatmap_image import render_window
from beatmap_fid.extractors.descriptors import (
    BEZIER_CURVE,
    DE_CASTELJAU_MAX_POINTS,
    END_X,
    END_Y,
    PATH_SAMPLES,
    DescriptorExtractor,
    _bezier_polyline,
    _polyline_end,
    object_table,
    slider_ends,
)


def de_casteljau_polyline(points: np.ndarray) -> np.ndarray:
    """Every segment (split at repeated points) sampled by de Casteljau's algorithm."""
    pieces = []
    start = 0
    for i in range(1, len(points) + 1):
        if i < len(points) and (points[i] != points[i - 1]).any():
            continue
        segment = points[start:i]
        start = i
        if len(segment) == 1:
            pieces.append(segment)
            continue
        t = (np.arange(PATH_SAMPLES + 1) / PATH_SAMPLES)[:, None, None]
        work = np.broadcast_to(segment, (len(t), *segment.shape)).copy()
        for r in range(1, len(segment)):
            m = len(segment) - r
            work[:, :m] = (1.0 - t) * work[:, :m] + t * work[:, 1 : m + 1]
        pieces.append(work[:, 0])
    return np.concatenate(pieces)


def reference_end(points: np.ndarray, length: float) -> np.ndarray:
    return np.array(_polyline_end(de_casteljau_polyline(points), length))


def bezier_end(points: np.ndarray, length: float) -> np.ndarray:
    return slider_ends(
        np.array([BEZIER_CURVE]), points, np.array([0, len(points)]), np.array([length])
    )[0]


def wandering_points(n: int, seed: int = 0) -> np.ndarray:
    """``n`` integer control points on the playfield, no two consecutive ones equal."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(1, 40, size=(n, 2)) * rng.choice([-1, 1], size=(n, 2))
    return (np.abs(np.cumsum(steps, axis=0) % 1024 - 512) + np.array([0, -64])).astype(float)


def long_slider_map(n_points: int) -> str:
    """An osu!standard map with one Bezier slider of ``n_points`` control points, one
    segment (no point repeats)."""
    points = wandering_points(n_points)
    head = f"{int(points[0, 0])},{int(points[0, 1])}"
    curve = "|".join(f"{int(x)}:{int(y)}" for x, y in points[1:])
    return (
        "osu file format v14\n\n[General]\nMode: 0\n\n[Metadata]\nTitle:t\nArtist:a\n"
        "Creator:c\nVersion:v\n\n[Difficulty]\nCircleSize:4\nSliderMultiplier:1.4\n\n"
        "[TimingPoints]\n0,500,4,2,0,60,1,0\n\n[HitObjects]\n256,192,1000,1,0,0:0:0:0:\n"
        f"{head},2000,2,0,B|{curve},1,700\n300,100,20000,1,0,0:0:0:0:\n"
    )


@pytest.mark.parametrize("n", [2, 3, 10, DE_CASTELJAU_MAX_POINTS])
def test_short_segments_are_unchanged_to_the_bit(n: int) -> None:
    points = wandering_points(n, seed=n)
    np.testing.assert_array_equal(_bezier_polyline(points), de_casteljau_polyline(points))


@pytest.mark.parametrize("n", [DE_CASTELJAU_MAX_POINTS + 1, 300, 2000])
def test_long_segments_match_de_casteljau(n: int) -> None:
    points = wandering_points(n, seed=n)
    np.testing.assert_allclose(
        _bezier_polyline(points), de_casteljau_polyline(points), rtol=0, atol=1e-7
    )


def de_casteljau_point(points: np.ndarray, t: float) -> np.ndarray:
    work = points.copy()
    for m in range(len(points) - 1, 0, -1):
        work[:m] = (1.0 - t) * work[:m] + t * work[1 : m + 1]
    return work[0]


def test_a_10000_point_slider_embeds_along_its_curve(tmp_path: Path) -> None:
    control = wandering_points(10_000)
    polyline = _bezier_polyline(control)
    assert polyline.shape == (PATH_SAMPLES + 1, 2)
    for s in (0, 7, PATH_SAMPLES // 2, PATH_SAMPLES - 3, PATH_SAMPLES):
        expected = de_casteljau_point(control, s / PATH_SAMPLES)
        np.testing.assert_allclose(polyline[s], expected, rtol=0, atol=1e-6)
    (tmp_path / "long.osu").write_text(long_slider_map(10_000))
    beatmap_file = read_beatmap_file(tmp_path / "long.osu")
    end = object_table(beatmap_file.beatmap)[1, END_X : END_Y + 1]
    np.testing.assert_array_equal(end, _polyline_end(polyline, 700.0))
    extractor = DescriptorExtractor(use_audio=False)
    skipped = SkipLog()
    items = list(extractor.items(tmp_path, skipped))
    assert not skipped and len(items) == 2
    assert np.isfinite(extractor.embed([item.payload for item in items])).all()
    assert render_window(beatmap_file.beatmap, 0.0, 8184.0).any()


def test_control_points_beyond_the_limit_are_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "limit.osu").write_text(long_slider_map(MAX_SLIDER_POINTS))
    assert len(read_beatmap_file(tmp_path / "limit.osu").beatmap.hit_objects()) == 3
    (tmp_path / "over.osu").write_text(long_slider_map(MAX_SLIDER_POINTS + 1))
    with pytest.raises(SourceError, match=r"^too large: line \d+ in \[HitObjects\]: .*control"):
        read_beatmap_file(tmp_path / "over.osu")
    # several sliders count together
    text = long_slider_map(MAX_SLIDER_POINTS // 2 + 1)
    slider_line = text.splitlines()[-2]
    (tmp_path / "over.osu").write_text(text + slider_line.replace(",2000,", ",3000,", 1) + "\n")
    with pytest.raises(SourceError, match="too large"):
        read_beatmap_file(tmp_path / "over.osu")
    (tmp_path / "limit.osu").unlink()
    code = main(["embed", str(tmp_path), "-o", str(tmp_path / "s.h5"), "--quiet", "--strict"])
    captured = capsys.readouterr()
    assert code == 1 and "over.osu: " in captured.out and "more than 100000" in captured.out
    assert "Traceback" not in captured.out + captured.err


def _slider_control_points(text: str) -> list[tuple[np.ndarray, float]]:
    """Control points and pixel length of every well-formed slider line of an ``.osu`` text."""
    sliders = []
    _, _, objects = text.partition("[HitObjects]")
    for line in objects.splitlines():
        fields = line.split(",")
        try:
            if len(fields) < 8 or not int(fields[3]) & 2:
                continue
            head = [(float(fields[0]), float(fields[1]))]
            tail = [tuple(map(float, p.split(":"))) for p in fields[5].split("|")[1:]]
            length = float(fields[7])
        except ValueError:
            continue
        if tail and 0 < length < 1e6 and all(len(p) == 2 for p in tail):
            sliders.append((np.array(head + tail), length))
    return sliders


@pytest.mark.realdata
@pytest.mark.slow
def test_real_slider_ends_are_unchanged(shared_data: Path) -> None:
    """Every slider of every real map, its control points read as a Bezier path (whatever
    its curve type): the end point equals de Casteljau's, to the bit on segments up to
    ``DE_CASTELJAU_MAX_POINTS`` points and within 1e-6 px beyond."""
    short_differ: list[str] = []
    long_error = 0.0
    n_sliders = n_long = 0
    for path in find_beatmaps(shared_data):
        text, _ = decode_osu_bytes(path.read_bytes())
        for points, length in _slider_control_points(text):
            n_sliders += 1
            repeats = np.flatnonzero((points[1:] == points[:-1]).all(axis=1))
            longest = np.diff([0, *(repeats + 1), len(points)]).max()
            difference = np.abs(bezier_end(points, length) - reference_end(points, length)).max()
            if longest <= DE_CASTELJAU_MAX_POINTS:
                if not difference == 0:
                    short_differ.append(f"{path.name}: {difference}")
            else:
                n_long += 1
                long_error = max(long_error, difference)
    assert n_sliders > 75_000 and n_long >= 1
    assert not short_differ
    assert long_error <= 1e-6
