"""Fréchet distance: our exact routes against the implementations of pytorch-fid, torch-fidelity,
torchmetrics and a plain ``scipy.linalg.sqrtm``, on the same pair of covariance matrices.

    python benchmarks/bench_frechet.py                 # d=2048, N=10 000 per set, 1 and 2 threads
    python benchmarks/bench_frechet.py --dim 512 --n 2000 --threads 1

Features are drawn as z·Aᵀ with z standard normal and A a random rotation with a power-law
spectrum, so both covariances are full rank and look like those of real network features. Each
method is timed on the finished statistics (the covariances are computed once, outside the
timings); accuracy is |ΔFD| / FD against the scipy sqrtm route. Each round runs every method
at every thread count (the BLAS/LAPACK pools of NumPy, SciPy and torch set together), and each
method keeps its best round, so all the speed-ups come from one run under one load.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg

from beatmap_fid.frechet import frechet_terms
from beatmap_fid.stats import GaussianStats, gaussian_stats

ENVIRONMENT = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
)


def libraries() -> list[str]:
    """The BLAS/LAPACK libraries loaded (threadpoolctl) and torch's own (torch.__config__)."""
    import torch
    from threadpoolctl import threadpool_info

    lines = []
    for pool in threadpool_info():
        lines.append(
            f"{pool['user_api']}: {pool['internal_api']} {pool.get('version') or ''} "
            f"({Path(pool['filepath']).name}, {pool['num_threads']} threads"
            + (f", {pool['architecture']}" if pool.get("architecture") else "")
            + ")"
        )
    config = torch.__config__.show().splitlines()
    mkl = [line.strip(" -") for line in config if "Math Kernel Library" in line]
    lapack = [line.strip(" -") for line in config if "LAPACK is enabled" in line]
    lines.append(f"torch {torch.__version__}: {'; '.join(mkl + lapack) or 'no MKL'}")
    return lines


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


def two_full_products_route(a: GaussianStats, b: GaussianStats) -> float:
    """Cholesky, Lᵀ Σ₁ L as two full matrix products, eigvalsh, all torch float64: the same
    identity as ours without the blocked triangular product."""
    import torch

    lower = torch.linalg.cholesky(torch.from_numpy(b.sigma))
    product = lower.T @ torch.from_numpy(a.sigma) @ lower
    trace_sqrt = torch.linalg.eigvalsh(product).clamp_min(0).sqrt().sum().item()
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt)


def ours(device: str | None, precision: str = "float64", backends: list[str] | None = None):
    def run(a: GaussianStats, b: GaussianStats) -> float:
        terms = frechet_terms(a, b, device=device, precision=precision)
        if backends is not None:
            backends.append(terms.backend)
        return terms.distance

    return run


def timed(function, a: GaussianStats, b: GaussianStats) -> tuple[float, float]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = function(a, b)
    return time.perf_counter() - start, value


def methods(skip_slow: bool, default_backends: list[str]) -> list[tuple[str, object]]:
    rows = [
        ("scipy.linalg.sqrtm(Σ1Σ2) (reference)", sqrtm_route),
        ("torch-fidelity (np.linalg.eigvals)", torch_fidelity_route),
        ("torchmetrics _compute_fid (torch eigvals)", torchmetrics_route),
        ("torch: Cholesky, 2 full products, eigvalsh", two_full_products_route),
        ("ours, default route (no arguments)", ours(None, backends=default_backends)),
        ("ours, device='numpy' float64", ours("numpy")),
        ("ours, device='cpu' float32", ours("cpu", "float32")),
    ]
    if not skip_slow:
        rows.insert(1, pytorch_fid_route())
    return rows


@contextlib.contextmanager
def thread_count(threads: int):
    """NumPy's and SciPy's OpenBLAS, torch's MKL and the OpenMP runtimes, all at ``threads``."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    with threadpool_limits(limits=threads):
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def print_table(rows: list[tuple[str, float, float]]) -> None:
    times = {name: seconds for name, seconds, _ in rows}
    reference = rows[0][2]
    peers = ("torch-fidelity (np.linalg.eigvals)", "torchmetrics _compute_fid (torch eigvals)")
    print(
        f"| {'method':<44} | time (s) | × sqrtm | × torch-fidelity | × torchmetrics | abs(ΔFD)/FD |"
    )
    print(f"|{'-' * 46}|---------:|--------:|-----------------:|---------------:|------------:|")
    for name, seconds, value in rows:
        speed_ups = [times[rows[0][0]] / seconds] + [times[peer] / seconds for peer in peers]
        print(
            f"| {name:<44} | {seconds:8.3f} | {speed_ups[0]:7.1f} | {speed_ups[1]:16.2f} | "
            f"{speed_ups[2]:14.2f} | {abs(value - reference) / abs(reference):11.1e} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--n", type=int, default=10_000, help="vectors per set")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="thread counts, one table each"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds; each runs every method at every thread count once, the best time is kept",
    )
    parser.add_argument(
        "--skip-slow", action="store_true", help="leave out pytorch-fid (a second sqrtm run)"
    )
    args = parser.parse_args()

    a = realistic_stats(args.dim, args.n, seed=1, shift=0.0)
    b = realistic_stats(args.dim, args.n, seed=2, shift=0.05)
    print(f"d={args.dim}, N={args.n} per set, {os.cpu_count()} CPUs")
    print("environment: " + ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in ENVIRONMENT))
    for line in libraries():
        print(f"  {line}")
    print(f"tr Σ1 + tr Σ2 = {np.trace(a.sigma) + np.trace(b.sigma):.6g}")

    # Rounds interleave methods and thread counts, so a burst of load from elsewhere falls on
    # one run of each, not on one method or one table.
    default_backends: dict[int, list[str]] = {threads: [] for threads in args.threads}
    table = {
        threads: methods(args.skip_slow, default_backends[threads]) for threads in args.threads
    }
    best: dict[tuple[int, str], tuple[float, float]] = {}
    warm_up = realistic_stats(8, 100, seed=3, shift=0.0)
    for round_index in range(args.repeats):
        print(f"round {round_index + 1}: load average {load_average()}", flush=True)
        for threads in args.threads:
            with thread_count(threads):
                for name, function in table[threads]:
                    if round_index == 0:
                        timed(function, warm_up, warm_up)  # imports, thread pools
                    seconds, value = timed(function, a, b)
                    previous = best.get((threads, name), (float("inf"), value))
                    best[(threads, name)] = (min(previous[0], seconds), value)
    print(f"after: load average {load_average()}")
    for threads in args.threads:
        print(f"\n### {threads} thread{'s' if threads > 1 else ''}, best of {args.repeats}\n")
        print_table([(name, *best[(threads, name)]) for name, _ in table[threads]])
        print(f"\ndefault route ran on: {default_backends[threads][-1]}")


if __name__ == "__main__":
    main()
