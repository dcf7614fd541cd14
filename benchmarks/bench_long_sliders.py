"""Maps with one very long Bezier slider: embedding cost against de Casteljau on every segment.

    python benchmarks/bench_long_sliders.py                      # 1 000 to 100 000 points
    python benchmarks/bench_long_sliders.py --sizes 10000 --old-max 10000

Each map holds a circle, one Bezier slider of N control points in a single segment (no point
repeats) and a circle. Timed in one warm process, best of ``--repeat``: reading the map
(``read_beatmap_file``: repairs, then slider's parse), ``embed_to_store`` of the map's folder
with the ``descriptors`` extractor (reading, slider ends, windows, vectors, the store write),
rendering the slider's window for ``beatmap-image`` (without the image backbone), and the
slider's sampled path alone: ours (``_bezier_polyline``: de Casteljau up to
``DE_CASTELJAU_MAX_POINTS`` points per segment, the O(N) Bernstein sum beyond) against the
peer, de Casteljau on every segment (O(N²) per sample, the extractor's algorithm before), run
for N up to ``--old-max``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numba import njit

from beatmap_fid.api import embed_to_store
from beatmap_fid.beatmap.reading import read_beatmap_file
from beatmap_fid.extractors.beatmap_image import render_window
from beatmap_fid.extractors.descriptors import PATH_SAMPLES, _bezier_polyline


@njit(cache=True)
def de_casteljau_polyline(points: np.ndarray) -> np.ndarray:
    """The peer: every segment sampled by de Casteljau's algorithm (O(m²) per sample)."""
    n = points.shape[0]
    out = np.empty((n * (PATH_SAMPLES + 1), 2))
    work = np.empty((n, 2))
    count = 0
    start = 0
    for i in range(1, n + 1):
        if i < n and (points[i, 0] != points[i - 1, 0] or points[i, 1] != points[i - 1, 1]):
            continue
        segment = points[start:i]
        m = segment.shape[0]
        for s in range(PATH_SAMPLES + 1 if m > 1 else 1):
            t = s / PATH_SAMPLES
            work[:m] = segment
            for r in range(1, m):
                for j in range(m - r):
                    work[j] = (1.0 - t) * work[j] + t * work[j + 1]
            out[count] = work[0]
            count += 1
        start = i
    return out[:count]


def wandering_points(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    steps = rng.integers(1, 40, size=(n, 2)) * rng.choice([-1, 1], size=(n, 2))
    return (np.abs(np.cumsum(steps, axis=0) % 1024 - 512) + np.array([0, -64])).astype(float)


def write_map(folder: Path, points: np.ndarray) -> Path:
    curve = "|".join(f"{int(x)}:{int(y)}" for x, y in points[1:])
    text = (
        "osu file format v14\n\n[General]\nMode: 0\n\n[Metadata]\nTitle:t\nArtist:a\n"
        "Creator:c\nVersion:v\n\n[Difficulty]\nCircleSize:4\nSliderMultiplier:1.4\n\n"
        "[TimingPoints]\n0,500,4,2,0,60,1,0\n\n[HitObjects]\n256,192,1000,1,0,0:0:0:0:\n"
        f"{int(points[0, 0])},{int(points[0, 1])},2000,2,0,B|{curve},1,700\n"
        "300,100,20000,1,0,0:0:0:0:\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "long.osu"
    path.write_text(text)
    return path


def best_of(repeat: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def measure(n: int, folder: Path, repeat: int, with_peer: bool) -> str:
    """One row of the table: a map with an ``n``-point slider written into ``folder``."""
    points = wandering_points(n)
    path = write_map(folder, points)
    read = best_of(repeat, lambda: read_beatmap_file(path))
    beatmap = read_beatmap_file(path).beatmap
    store = folder / "store.h5"

    def embed() -> None:
        store.unlink(missing_ok=True)
        embed_to_store(
            folder, "descriptors", store, progress=False, extractor_options={"use_audio": False}
        )

    embedded = best_of(repeat, embed)
    render = best_of(repeat, lambda: render_window(beatmap, 0.0, 8184.0))
    ours = best_of(repeat, lambda: _bezier_polyline(points))
    peer_text, ratio = f"{'-':>12}", f"{'-':>12}"
    if with_peer:
        peer = best_of(1, lambda: de_casteljau_polyline(points))
        peer_text, ratio = f"{peer:12.3f}", f"{peer / ours:12.0f}"
    return f"{n:>9} {read:8.3f} {embedded:8.3f} {render:9.3f} {ours:9.4f} {peer_text} {ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 100000])
    parser.add_argument("--old-max", type=int, default=3000, help="largest N for the peer")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        warm = wandering_points(70)  # compile or load every numba function first
        de_casteljau_polyline(warm)
        embed_to_store(
            write_map(root / "warm", warm).parent,
            "descriptors",
            root / "w.h5",
            progress=False,
            extractor_options={"use_audio": False},
        )
        header = (
            f"{'N points':>9} {'read s':>8} {'embed s':>8} {'render s':>9} "
            f"{'path s':>9} {'peer path s':>12} {'peer / ours':>12}"
        )
        print(header)
        for n in args.sizes:
            print(measure(n, root / str(n), args.repeat, n <= args.old_max))


if __name__ == "__main__":
    main()
