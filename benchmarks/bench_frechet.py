"""Fréchet distance: our exact routes against the implementations of pytorch-fid, torch-fidelity,
torchmetrics and a plain ``scipy.linalg.sqrtm``, on the same pair of covariance matrices.

    python benchmarks/bench_frechet.py                 # d=2048, N=10 000 per set
    python benchmarks/bench_frechet.py --dim 512 --n 2000

Features are drawn as z·Aᵀ with z standard normal and A a random rotation with a power-law
spectrum, so both covariances are full rank and look like those of real network features. Each
method is timed on the finished statistics (the covariances are computed once, outside the
timings); accuracy is |ΔFD| / FD against the scipy sqrtm route.
"""

from __future__ import annotations

import argparse
import inspect
import os
import time
import warnings

import numpy as np
import scipy.linalg

from beatmap_fid.frechet import frechet_terms
from beatmap_fid.stats import GaussianStats, gaussian_stats


def blas_threads() -> int:
    """Threads NumPy's BLAS uses (set OPENBLAS_NUM_THREADS=1 on a machine busy with others)."""
    from threadpoolctl import threadpool_info

    return max((pool["num_threads"] for pool in threadpool_info()), default=1)


def realistic_stats(dim: int, n: int, seed: int, shift: float) -> GaussianStats:
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spectrum = (1.0 + np.arange(dim)) ** -0.75
    mixing = rotation * spectrum
    features = rng.standard_normal((n, dim)) @ mixing.T + shift * rng.standard_normal(dim)
    return gaussian_stats(features.astype(np.float32))


def sqrtm_route(s1: GaussianStats, s2: GaussianStats) -> float:
    """FD with the matrix square root of Σ₁Σ₂ (what pytorch-fid and clean-fid compute)."""
    covmean = scipy.linalg.sqrtm(s1.sigma @ s2.sigma)
    diff = s1.mu - s2.mu
    return float(diff @ diff + np.trace(s1.sigma) + np.trace(s2.sigma) - 2 * np.trace(covmean).real)


def pytorch_fid_route() -> tuple[str, object]:
    """pytorch-fid's own function, or a faithful copy when this SciPy lacks ``sqrtm(disp=)``."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    if "disp" in inspect.signature(scipy.linalg.sqrtm).parameters:
        return "pytorch-fid calculate_frechet_distance", lambda a, b: float(
            calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
        )

    def replica(a: GaussianStats, b: GaussianStats) -> float:
        # pytorch_fid.fid_score.calculate_frechet_distance, with sqrtm(..., disp=False) replaced
        # by sqrtm(...) and its error estimate ‖X² − A‖_F / ‖A‖_F computed the same way.
        product = a.sigma.dot(b.sigma)
        covmean = scipy.linalg.sqrtm(product)
        _ = np.linalg.norm(covmean @ covmean - product, "fro") / np.linalg.norm(product, "fro")
        if not np.isfinite(covmean).all():
            offset = np.eye(a.dim) * 1e-6
            covmean = scipy.linalg.sqrtm((a.sigma + offset).dot(b.sigma + offset))
        covmean = covmean.real
        diff = a.mu - b.mu
        return float(diff.dot(diff) + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))

    return "pytorch-fid (replica: SciPy lacks sqrtm disp=)", replica


def torch_fidelity_route(a: GaussianStats, b: GaussianStats) -> float:
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    result = fid_statistics_to_metric(
        {"mu": a.mu, "sigma": a.sigma}, {"mu": b.mu, "sigma": b.sigma}, verbose=False
    )
    return float(result["frechet_inception_distance"])


def torchmetrics_route(a: GaussianStats, b: GaussianStats) -> float:
    import torch
    from torchmetrics.image.fid import _compute_fid

    tensors = [torch.from_numpy(x) for x in (a.mu, a.sigma, b.mu, b.sigma)]
    return float(_compute_fid(*tensors))


def ours(device: str, precision: str = "float64"):
    return lambda a, b: frechet_terms(a, b, device=device, precision=precision).distance


def timed(function, a, b, repeats: int) -> tuple[float, float]:
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = function(a, b)
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--n", type=int, default=10_000, help="vectors per set")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument(
        "--skip-slow", action="store_true", help="leave out pytorch-fid (a second sqrtm run)"
    )
    args = parser.parse_args()

    import torch

    print(
        f"d={args.dim}, N={args.n} per set, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs, BLAS threads {blas_threads()}, torch threads "
        f"{torch.get_num_threads()}"
    )
    a = realistic_stats(args.dim, args.n, seed=1, shift=0.0)
    b = realistic_stats(args.dim, args.n, seed=2, shift=0.05)

    peers = [("scipy.linalg.sqrtm(Σ1Σ2) (reference)", sqrtm_route)]
    peers.append(("torch-fidelity (np.linalg.eigvals)", torch_fidelity_route))
    peers.append(("torchmetrics _compute_fid (torch eigvals)", torchmetrics_route))
    if not args.skip_slow:
        peers.insert(1, pytorch_fid_route())
    peers += [
        ("ours, numpy float64", ours("numpy")),
        ("ours, torch cpu float64", ours("cpu")),
        ("ours, torch cpu float32", ours("cpu", "float32")),
    ]
    warm_up = realistic_stats(8, 100, seed=3, shift=0.0)
    rows = []
    for name, function in peers:
        timed(function, warm_up, warm_up, 1)  # first-call costs (imports, thread pools)
        seconds, value = timed(function, a, b, args.repeats)
        rows.append((name, seconds, value))
    reference_time, reference = rows[0][1], rows[0][2]

    trace_sum = np.trace(a.sigma) + np.trace(b.sigma)
    print(f"FD (sqrtm route) = {reference:.10g}, tr Σ1 + tr Σ2 = {trace_sum:.6g}\n")
    print(f"| {'method':<48} | time (s) | speed-up vs sqrtm | abs(ΔFD)/FD | abs(ΔFD)/trΣ |")
    print(f"|{'-' * 50}|---------:|------------------:|------------:|-------------:|")
    for name, seconds, value in rows:
        error = abs(value - reference)
        print(
            f"| {name:<48} | {seconds:8.3f} | {reference_time / seconds:17.1f} | "
            f"{error / abs(reference):11.1e} | {error / trace_sum:12.1e} |"
        )


if __name__ == "__main__":
    main()
