"""Nearest-neighbour search: the self-tuned index against scikit-learn and exact FAISS.

Clustered synthetic vectors (default 200 000 × 512, 10 000 fresh queries, k = 10) on a fixed
number of threads. For each method: build time, queries per second, and recall@k against
exact search (FAISS ``IndexFlatL2``); ratios are against scikit-learn's brute-force
``kneighbors`` measured in the same run.

    python benchmarks/bench_knn.py                      # the full size
    python benchmarks/bench_knn.py --n 20000 --dim 128  # a quick run
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def clustered(
    n: int, dim: int, clusters: int, separation: float, intrinsic: int, seed: int
) -> np.ndarray:
    """Overlapping Gaussian blobs in an ``intrinsic``-dimensional subspace of R^dim, plus a
    little full-dimensional noise: real embeddings have low intrinsic dimension, and blobs
    spread over all 512 dimensions are a worst case no index can search faster than a scan.
    ``intrinsic >= dim`` gives that worst case.
    """
    rng = np.random.default_rng(seed)
    latent_dim = min(intrinsic, dim)
    centres = rng.normal(size=(clusters, latent_dim)).astype(np.float32) * separation
    basis = np.linalg.qr(rng.normal(size=(dim, latent_dim)))[0].T.astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        stop = min(n, start + 50_000)
        labels = rng.integers(0, clusters, stop - start)
        latent = centres[labels] + rng.standard_normal((stop - start, latent_dim), np.float32)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * 0.1
        out[start:stop] = latent @ basis + noise
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="indexed vectors (200 000)")
    parser.add_argument("--dim", type=int, default=512, help="dimension (512)")
    parser.add_argument("--queries", type=int, default=10_000, help="queries (10 000)")
    parser.add_argument("--k", type=int, default=10, help="neighbours (10)")
    parser.add_argument("--recall", type=float, default=0.95, help="recall target (0.95)")
    parser.add_argument("--clusters", type=int, default=1000, help="clusters in the data")
    parser.add_argument("--separation", type=float, default=1.0, help="centre spread (1.0)")
    parser.add_argument("--intrinsic", type=int, default=32, help="intrinsic dimension (32)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP threads (2)")
    parser.add_argument("--family", default=None, help="force an index family")
    parser.add_argument(
        "--sklearn-queries",
        type=int,
        default=None,
        help="time scikit-learn on this many queries only (QPS extrapolates; default: all)",
    )
    args = parser.parse_args()

    import faiss
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_limits

    from beatmap_fid.index import build_index

    faiss.omp_set_num_threads(args.threads)
    threadpool_limits(args.threads)
    data = clustered(
        args.n + args.queries, args.dim, args.clusters, args.separation, args.intrinsic, seed=0
    )
    base, queries = data[: args.n], data[args.n :]
    print(
        f"{args.n} x {args.dim} vectors, {args.queries} queries, k={args.k}, "
        f"{args.clusters} clusters (separation {args.separation}, intrinsic dimension "
        f"{min(args.intrinsic, args.dim)}), {args.threads} threads, "
        f"FAISS {faiss.__version__}"
    )

    rows = []
    started = time.perf_counter()
    flat = faiss.IndexFlatL2(args.dim)
    flat.add(base)
    flat_build = time.perf_counter() - started
    started = time.perf_counter()
    truth = flat.search(queries, args.k)[1]
    flat_search = time.perf_counter() - started
    rows.append(("faiss IndexFlatL2", flat_build, args.queries / flat_search, 1.0))

    n_sk = args.sklearn_queries or args.queries
    started = time.perf_counter()
    brute = NearestNeighbors(n_neighbors=args.k, algorithm="brute").fit(base)
    sk_build = time.perf_counter() - started
    started = time.perf_counter()
    sk_found = brute.kneighbors(queries[:n_sk], return_distance=False)
    sk_search = time.perf_counter() - started
    sk_qps = n_sk / sk_search
    rows.append(("sklearn brute kneighbors", sk_build, sk_qps, recall(sk_found, truth[:n_sk])))

    started = time.perf_counter()
    tuned = build_index(base, recall=args.recall, k=args.k, family=args.family, progress=False)
    tuned_build = time.perf_counter() - started
    started = time.perf_counter()
    found = tuned.search(queries, args.k)
    tuned_search = time.perf_counter() - started
    params = ", ".join(f"{k}={v}" for k, v in tuned.search_params.items())
    rows.append(
        (
            f"beatmap_fid {tuned.plan.factory} ({params})",
            tuned_build,
            args.queries / tuned_search,
            recall(found.positions, truth),
        )
    )

    width = max(len(r[0]) for r in rows)
    print(
        f"{'method':<{width}}  {'build s':>8}  {'QPS':>9}  {'x sklearn':>9}  {'recall@' + str(args.k):>9}"
    )
    for name, build, qps, rec in rows:
        print(f"{name:<{width}}  {build:>8.1f}  {qps:>9.0f}  {qps / sk_qps:>9.1f}  {rec:>9.4f}")
    tuning = tuned.tuning
    if tuning and tuning.recall_eval is not None:
        print(
            f"tuning: recall@{tuning.k} {tuning.recall_eval:.4f} on {tuning.n_eval_queries} "
            f"held-out evaluation queries (target {tuning.recall_target}, reached: {tuning.reached})"
        )
    if args.sklearn_queries:
        print(f"scikit-learn timed on {n_sk} of the {args.queries} queries")


if __name__ == "__main__":
    main()
