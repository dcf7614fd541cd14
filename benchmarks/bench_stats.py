"""Streaming statistics from an HDF5 embedding store against ``np.cov`` on an in-memory array.

    python benchmarks/bench_stats.py                   # 200 000 x 2048 float32 vectors
    python benchmarks/bench_stats.py --n 20000         # a quicker run

The store is written once to a temporary file with ``StoreWriter``. Each method then runs in
its own fresh Python process, so that its peak resident memory (``ru_maxrss``) counts every
NumPy allocation and nothing left over from another method:

* ours, streamed: ``EmbeddingStore.statistics()`` reads the store block by block;
* ours, in memory: ``gaussian_stats`` on the array already loaded into memory;
* NumPy: ``np.mean`` + ``np.cov(rowvar=False)`` on the same in-memory array.

With ``--repeats`` the methods run round robin and each keeps its best time. Times exclude loading the array for the in-memory methods and include reading the file for the
streamed one. Memory is the peak RSS of the process above its RSS after imports (the loaded
array counts for the in-memory methods), and in brackets the whole process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = {
    "streamed": "ours, streamed from the .h5 store",
    "ours-memory": "ours, gaussian_stats on the in-memory array",
    "numpy": "np.mean + np.cov on the in-memory array",
}


def blas_threads() -> int:
    """Threads NumPy's BLAS uses (set OPENBLAS_NUM_THREADS=1 on a machine busy with others)."""
    from threadpoolctl import threadpool_info

    return max((pool["num_threads"] for pool in threadpool_info()), default=1)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_store(path: Path, n: int, dim: int, seed: int) -> None:
    from beatmap_fid.store import StoreWriter

    rng = np.random.default_rng(seed)
    scales = (1.0 + np.arange(dim, dtype=np.float32)) ** -0.5
    offset = rng.standard_normal(dim).astype(np.float32)
    batch = 8192
    with StoreWriter(path, "bench-random", {"seed": seed, "n": n, "dim": dim}, dim) as writer:
        for start in range(0, n, batch):
            rows = min(batch, n - start)
            vectors = rng.standard_normal((rows, dim), dtype=np.float32) * scales + offset
            # A little correlation between neighbouring dimensions, so Σ is not diagonal.
            vectors[:, 1:] += 0.5 * vectors[:, :-1]
            writer.append([f"v{start + i}" for i in range(rows)], vectors)


def worker(method: str, store_path: Path, out: Path, block_rows: int | None) -> None:
    from beatmap_fid.stats import gaussian_stats
    from beatmap_fid.store import EmbeddingStore

    baseline = current_rss_bytes()
    with EmbeddingStore(store_path) as store:
        if method == "streamed":
            start = time.perf_counter()
            stats = store.statistics(block_rows)
            seconds = time.perf_counter() - start
            mu, sigma = stats.mu, stats.sigma
        else:
            vectors = store.vectors()
            start = time.perf_counter()
            if method == "ours-memory":
                stats = gaussian_stats(vectors)
                mu, sigma = stats.mu, stats.sigma
            else:
                mu, sigma = np.mean(vectors, axis=0), np.cov(vectors, rowvar=False)
            seconds = time.perf_counter() - start
    np.savez(out, mu=mu, sigma=sigma)
    peak = peak_rss_bytes()
    print(json.dumps({"seconds": seconds, "peak_bytes": peak - baseline, "absolute": peak}))


def run_method(method: str, store_path: Path, out: Path, block_rows: int | None) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--store", str(store_path)]
    command += ["--out", str(out)]
    if block_rows:
        command += ["--block-rows", str(block_rows)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="vectors in the store")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--block-rows", type=int, default=None, help="store read block size")
    parser.add_argument("--repeats", type=int, default=1, help="best time of this many runs")
    parser.add_argument("--store", type=Path, help="reuse (or keep) the store at this path")
    parser.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.store, args.out, args.block_rows)
        return

    with tempfile.TemporaryDirectory(prefix="bench_stats_") as scratch:
        scratch = Path(scratch)
        store_path = args.store or scratch / "vectors.h5"
        if not store_path.exists():
            start = time.perf_counter()
            write_store(store_path, args.n, args.dim, seed=0)
            print(f"wrote {store_path} in {time.perf_counter() - start:.1f} s")
        from beatmap_fid.store import EmbeddingStore

        with EmbeddingStore(store_path) as store:
            n, dim = len(store), store.dim
        print(
            f"N={n}, d={dim} float32 ({n * dim * 4 / 2**30:.2f} GiB), load average "
            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, BLAS threads {blas_threads()}\n"
        )
        results = {}
        for _ in range(args.repeats):  # round robin, so a load spike hits every method alike
            for method in METHODS:
                out = scratch / f"{method}.npz"
                run = run_method(method, store_path, out, args.block_rows)
                best = results.setdefault(method, run)
                best["seconds"] = min(best["seconds"], run["seconds"])
                best["peak_bytes"] = max(best["peak_bytes"], run["peak_bytes"])
                best["absolute"] = max(best["absolute"], run["absolute"])
                with np.load(out) as data:
                    best["sigma"] = data["sigma"]

    reference = results["numpy"]
    scale = np.abs(reference["sigma"]).max()
    covariance_mib = dim * dim * 8 / 2**20
    print(f"one d x d float64 matrix = {covariance_mib:.0f} MiB\n")
    print(
        f"| {'method':<44} | time (s) | speed-up vs np.cov | peak memory, MiB (process) "
        "| max abs(ΔΣ)/max abs(Σ) |"
    )
    print(f"|{'-' * 46}|---------:|-------------------:|---------------------------:|{'-' * 23}:|")
    for method, label in METHODS.items():
        row = results[method]
        error = np.abs(row["sigma"] - reference["sigma"]).max() / scale
        print(
            f"| {label:<44} | {row['seconds']:8.2f} | {reference['seconds'] / row['seconds']:18.2f} "
            f"| {row['peak_bytes'] / 2**20:17.0f} ({row['absolute'] / 2**20:6.0f}) "
            f"| {error:22.1e} |"
        )


if __name__ == "__main__":
    main()
