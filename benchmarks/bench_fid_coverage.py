"""Coverage of the FID bootstrap interval when windows come in maps (clusters of correlated rows).

Each simulated map has a centre drawn from the map-level distribution and between 4 and 30
windows (as the real Songs folder: median 13) scattered around it; the intra-map correlation
(ICC, the share of a feature's variance that lies between maps) is set per row of the table
(real descriptor features: mean ICC 0.47 over features, see benchmarks/RESULTS.md). Real maps:
centres N(0, ρ·I), windows centre + N(0, (1 − ρ)·I), so windows are N(0, I). Generated maps:
everything scaled by ``scale`` and shifted by ``shift``, so windows are N(shift, scale²·I) and
the Fréchet distance between the two window distributions is exactly
d·shift² + d·(1 − scale)².

For every trial both interval flavours are computed on the same data: resampling whole maps
(``fid_confidence_interval`` with the ids ``map#k``, the default for stores) and resampling
windows as if they were independent (no ids, the behaviour before maps were known). The table
gives the share of intervals that hold the true FD (nominal 95 %), their mean width, and the
mean error of the bias-corrected estimate.

    python benchmarks/bench_fid_coverage.py                  # the table in RESULTS.md
    python benchmarks/bench_fid_coverage.py --trials 100     # quicker
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from beatmap_fid.metrics import fid_confidence_interval


def clustered_set(
    rng: np.random.Generator, n_maps: int, dim: int, icc: float, scale: float, shift: float
) -> tuple[np.ndarray, list[str]]:
    """Windows of ``n_maps`` maps (4–30 windows each) and their ids ``map<m>#<k>``."""
    sizes = rng.integers(4, 31, n_maps)
    centres = rng.standard_normal((n_maps, dim)) * np.sqrt(icc)
    maps = np.repeat(np.arange(n_maps), sizes)
    noise = rng.standard_normal((len(maps), dim)) * np.sqrt(1.0 - icc)
    windows = scale * (centres[maps] + noise) + shift
    ids = [f"map{m}#{k}" for m, size in enumerate(sizes) for k in range(size)]
    return windows, ids


def coverage(
    trials: int,
    n_maps: int,
    dim: int,
    icc: float,
    scale: float,
    shift: float,
    resamples: int,
    seed: int,
) -> dict[str, float]:
    """Coverage, mean width and mean error of both interval flavours over ``trials`` data sets."""
    rng = np.random.default_rng(seed)
    target = dim * shift**2 + dim * (1.0 - scale) ** 2
    hits = {"maps": 0, "windows": 0}
    widths = {"maps": [], "windows": []}
    errors = []
    for trial in range(trials):
        real, real_ids = clustered_set(rng, n_maps, dim, icc, 1.0, 0.0)
        fake, fake_ids = clustered_set(rng, n_maps, dim, icc, scale, shift)
        by_map = fid_confidence_interval(
            real, fake, n_resamples=resamples, seed=trial, real_ids=real_ids, generated_ids=fake_ids
        )
        by_window = fid_confidence_interval(real, fake, n_resamples=resamples, seed=trial)
        for name, interval in (("maps", by_map), ("windows", by_window)):
            hits[name] += interval.low <= target <= interval.high
            widths[name].append(interval.high - interval.low)
        errors.append((by_map.estimate - target, by_map.bias_corrected - target))
    errors = np.asarray(errors)
    return {
        "fd": target,
        "coverage_maps": hits["maps"] / trials,
        "coverage_windows": hits["windows"] / trials,
        "width_maps": float(np.mean(widths["maps"])),
        "width_windows": float(np.mean(widths["windows"])),
        "fid_error": float(errors[:, 0].mean()),
        "corrected_error": float(errors[:, 1].mean()),
    }


SCENARIOS = [  # (maps per set, dimension, ICC, scale, shift)
    (40, 6, 0.5, 1.3, 0.3),
    (40, 6, 0.2, 1.3, 0.3),
    (40, 6, 0.8, 1.3, 0.3),
    (80, 8, 0.5, 1.2, 0.3),
    (40, 8, 0.5, 1.0, 0.4),
    (40, 16, 0.5, 1.2, 0.2),
    (20, 6, 0.5, 1.3, 0.3),
    (10, 6, 0.5, 1.3, 0.3),
    (5, 6, 0.5, 1.3, 0.3),
    (3, 6, 0.5, 1.3, 0.3),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=400, help="data sets per row (400)")
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples (200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"{args.trials} trials per row, {args.resamples} resamples, nominal 95 %; maps of 4-30 "
        "windows; coverage / mean width of the interval resampling maps vs windows"
    )
    print(
        "| maps | d | ICC | FD | coverage (maps) | coverage (windows) | width (maps) | "
        "width (windows) | error FID → corrected | s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    with threadpool_limits(1):  # thousands of tiny products: BLAS threads only add overhead
        for row, (n_maps, dim, icc, scale, shift) in enumerate(SCENARIOS):
            started = time.perf_counter()
            r = coverage(
                args.trials, n_maps, dim, icc, scale, shift, args.resamples, args.seed + row
            )
            print(
                f"| {n_maps} | {dim} | {icc} | {r['fd']:.2f} | {r['coverage_maps']:.1%} | "
                f"{r['coverage_windows']:.1%} | {r['width_maps']:.3f} | "
                f"{r['width_windows']:.3f} | {r['fid_error']:+.3f} → "
                f"{r['corrected_error']:+.3f} | {time.perf_counter() - started:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
