"""KID and precision/recall/density/coverage: ours against torch-fidelity and the prdc package.

    python benchmarks/bench_metrics.py                            # 50 000 × 2048 per side
    python benchmarks/bench_metrics.py --n 10000 --peer-n 10000   # what a small machine handles

- KID: ``beatmap_fid.metrics.kid`` against torch-fidelity's ``kid_features_to_metric`` (the
  function its ``calculate_metrics(kid=True)`` calls on extracted features), both with 100
  subsets of 1000 and the same seed, so both average the very same subsets. KID's cost does
  not depend on n, so it runs at the full n.
- PRDC: ``beatmap_fid.metrics.prdc`` (FAISS radii, blocked distances, O(n·d) memory) against
  ``prdc.compute_prdc`` (three full n × n distance matrices: 50 000² float32 is 10 GB each), at
  ``--peer-n`` samples per side; with ``--prdc-n`` ours also runs alone on a larger set.

Features: float32, independent coordinates with a power-law spectrum (like network features);
the generated set is 1 % wider and slightly shifted, so that all four PRDC values are far from
0 and 1 at d = 2048. Times are wall-clock seconds of
one run each, imports done beforehand; on a shared machine compare the ratios of one run, not absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time

import numpy as np

from beatmap_fid.metrics import kid, prdc


def features(n: int, dim: int, seed: int, generated: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spectrum = (1.0 + np.arange(dim)) ** -0.75
    out = rng.standard_normal((n, dim), dtype=np.float32)
    out *= np.sqrt(spectrum).astype(np.float32)
    if generated:  # a near miss: 1 % wider, slightly shifted
        out *= np.float32(1.01)
        out += np.float32(0.005)
    return out


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def torch_fidelity_kid(real: np.ndarray, fake: np.ndarray, subsets: int, size: int, seed: int):
    import torch
    from torch_fidelity.metric_kid import kid_features_to_metric

    result = kid_features_to_metric(
        torch.from_numpy(real),
        torch.from_numpy(fake),
        kid_subsets=subsets,
        kid_subset_size=size,
        rng_seed=seed,
        verbose=False,
    )
    return {
        "kid": result["kernel_inception_distance_mean"],
        "kid_std": result["kernel_inception_distance_std"],
    }


def prdc_package(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the set sizes
        return {key: float(value) for key, value in compute_prdc(real, fake, k).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="samples per side (KID)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--peer-n", type=int, default=10_000, help="samples per side (PRDC)")
    parser.add_argument("--prdc-n", type=int, default=0, help="ours alone at this size too")
    parser.add_argument("--subsets", type=int, default=100)
    parser.add_argument("--subset-size", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Imports first, so that no timing includes them.
    import faiss  # noqa: F401
    import prdc as prdc_peer  # noqa: F401
    import torch_fidelity.metric_kid  # noqa: F401

    largest = max(args.n, args.peer_n, args.prdc_n)
    real_all = features(largest, args.dim, args.seed, generated=False)
    fake_all = features(largest, args.dim, args.seed + 1, generated=True)
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; dim {args.dim}; "
        f"KID {args.subsets} subsets of {args.subset_size}; PRDC k={args.k}"
    )
    rows = []

    real, fake = real_all[: args.n], fake_all[: args.n]
    ours, ours_time = timed(
        kid, real, fake, subsets=args.subsets, subset_size=args.subset_size, seed=args.seed
    )
    theirs, their_time = timed(
        torch_fidelity_kid, real, fake, args.subsets, args.subset_size, args.seed
    )
    difference = abs(ours["kid"] - theirs["kid"]) / abs(theirs["kid"])
    rows.append(
        (
            "KID vs torch-fidelity",
            args.n,
            ours_time,
            their_time,
            f"KID {ours['kid']:.6g} vs {theirs['kid']:.6g} (rel. diff {difference:.1e})",
        )
    )

    real, fake = real_all[: args.peer_n], fake_all[: args.peer_n]
    ours, ours_time = timed(prdc, real, fake, k=args.k)
    theirs, their_time = timed(prdc_package, real, fake, args.k)
    worst = max(abs(ours[key] - theirs[key]) for key in theirs)
    values = ", ".join(f"{key} {ours[key]:.4f}" for key in ("precision", "recall", "density"))
    rows.append(
        (
            "PRDC vs prdc package",
            args.peer_n,
            ours_time,
            their_time,
            f"{values}, coverage {ours['coverage']:.4f}; max |diff| {worst:.1e}",
        )
    )
    if args.prdc_n:
        real, fake = real_all[: args.prdc_n], fake_all[: args.prdc_n]
        ours, ours_time = timed(prdc, real, fake, k=args.k)
        values = ", ".join(f"{key} {value:.4f}" for key, value in ours.items())
        rows.append(("PRDC, ours alone", args.prdc_n, ours_time, None, values))

    print()
    print("| metric | n per side | ours (s) | peer (s) | speed-up | values |")
    print("|---|---:|---:|---:|---:|---|")
    for name, n, ours_time, their_time, note in rows:
        peer = "—" if their_time is None else f"{their_time:.1f}"
        ratio = "—" if their_time is None else f"{their_time / ours_time:.2f}×"
        print(f"| {name} | {n:,} | {ours_time:.1f} | {peer} | {ratio} | {note} |")


if __name__ == "__main__":
    main()
