"""FID beyond one number: the bias-free FD∞ and a confidence interval that knows about the bias.

Why
---
FID computed from samples is biased upward, and the bias shrinks like 1/N: to first order
E[FID_N] = FD + c/N, where FD is the Fréchet distance between the two true Gaussians and c > 0
depends on both distributions (Chong & Forsyth, "Effectively Unbiased FID and Inception Score
and where to find them", CVPR 2020). So FIDs of sets of different sizes are not comparable,
and even at equal N two models can swap ranks because c differs between them.

FD∞ (:func:`fd_infinity`)
-------------------------
FID is computed on nested random subsets of growing size N₁ < … < N_K, a straight line
FID = FD∞ + slope/N is fitted by least squares, and its intercept (N → ∞) is FD∞.

- Sizes: ``num_points`` (15) sizes evenly spaced from ``min_size`` to the full generated set,
  as in the paper (5 000 → 50 000). The default ``min_size`` is min(5 000, N // 5): the paper's
  5 000 for N ≥ 25 000, scaled to the data below that, so that 1/N always spans at least a
  factor of 5. The straight line is a first-order expansion; it holds when the subsets are
  much larger than the dimension, so for small sets prefer a reduced dimension.
- ``subsample="both"`` (default) shrinks the real set in proportion too (real size =
  N_real · N/N_generated), so the 1/N bias of both sides is extrapolated away;
  ``subsample="generated"`` keeps all real samples at every size, exactly as the paper does
  (real statistics precomputed once), which leaves the real side's c/N_real in the intercept.
- Subsets are the prefixes of one random permutation of each set, so the statistics of all
  sizes come from one streaming pass (each row is read once), and the cost is that pass plus
  ``num_points`` Fréchet distances. Without replacement from a finite set, a subset of size n
  has E[FID_n] ≈ FD + c/n all the same (the finite-population correction of the subset and
  the bias of the full set cancel), so the intercept still estimates FD.

Confidence interval (:func:`fid_confidence_interval`)
----------------------------------------------------
A bias-corrected percentile bootstrap.

1. Both sets are resampled with replacement, independently, ``n_resamples`` times, and the FID
   θ* of every resample pair is computed. θ̂ is the FID of the full sets.
2. Bias. The bootstrap world reproduces the 1/N bias: a resample of N drawn from the sample
   has E*[θ*] ≈ θ̂ + c/N, just as E[θ̂] ≈ FD + c/N. So b̂ = mean(θ*) − θ̂ estimates the bias,
   and the bias-corrected estimate is θ̂ − b̂ = 2θ̂ − mean(θ*) (the same first-order term that
   FD∞ removes by extrapolation, measured at the full N instead).
3. Interval. The replicates sit about 2b̂ above the true FD (one b̂ from the sample, one from the
   resampling), so the interval is the percentile interval of θ* shifted down by 2b̂:
   [q_{α/2}(θ*) − 2b̂, q_{1−α/2}(θ*) − 2b̂], α = 1 − level. It is centred on the bias-corrected
   estimate and keeps the bootstrap distribution's skew. The plain percentile interval would sit
   2b̂ too high and, in the simulations below, covers the true FD far less often than nominal.
4. FD ≥ 0, so the estimate and both ends are clamped at 0.

Resampling units: whole maps. Windows of one beatmap (ids ``file#0``, ``file#1``, ...) are
correlated (real descriptor features: on average 47 % of a feature's variance lies between
maps), so they are not independent samples, and resampling them one by one gives intervals far
too narrow: in simulations with maps as clusters of correlated windows, 0–63 % of nominal-95 %
intervals held the true FD (``benchmarks/bench_fid_coverage.py``, table in
``benchmarks/RESULTS.md``). The bootstrap therefore draws whole maps: the map of a row is the
part of its id before ``#`` (ids from ``real_ids`` / ``generated_ids`` or from a store given as
a side). That kept 94.5–98.8 % coverage with 10 to 80 maps a side, and falls short below
(85.5 % at 5 maps, 62 % at 3): :func:`sample_warnings` warns below :data:`FEW_MAPS` maps.
Without ids (plain arrays) every row is its own unit.

The FID of a resample depends on it only through its count, sum and sum of outer products. Each
set is split into G groups, each holding whole maps (or rows), and those three moments are
computed per group once; a resample draws G groups with replacement and adds their moments
(cost G·d² per resample instead of N·d²). With G = the number of maps (rows) this is the
ordinary cluster (row) bootstrap; random groups of i.i.d. units are themselves i.i.d., so G
below that is the same bootstrap over coarser units. The default G is every unit up to 4 096
when the per-group moments fit in 256 MiB per set, and otherwise as many as fit there but at
least 32 (for d = 2048: 32 groups, about 540 MiB per set).

Simulated coverage of the 95 % interval with independent rows (X ~ N(0, I), Y ~ N(δ, a²I),
FD = d·δ² + d·(1 − a)² known exactly; 200 resamples, 400 trials per row;
``tests/test_fid_uncertainty.py`` holds a fast and a slow version):

====  ======  =========================  ========  =======================================
d     N       FD                         coverage  mean error: FID → bias-corrected
====  ======  =========================  ========  =======================================
6     300     1.08                       94.0 %    +0.150 → +0.009
8     300     1.44                       95.5 %    +0.234 → +0.013
4     200     2.00                       95.0 %    +0.125 → −0.007
8     500     1.28 (means differ only)   94.5 %    +0.109 → +0.006
16    400     1.28 (bias 3 × its sd)     96.0 %    +0.503 → +0.012
6     300     0.24 (near the noise)      98.8 %    +0.136 → +0.006
8     1000    1.44, G = 32 groups        92.7 %    +0.075 → +0.010
====  ======  =========================  ========  =======================================

In the same kind of simulation the plain percentile interval covered 0–43 %. Near FD = 0 the
interval is conservative (the clamp at 0 and the skew of FID there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from beatmap_fid.errors import InputError, InsufficientSamplesError
from beatmap_fid.extractors.base import map_id
from beatmap_fid.frechet import frechet_distance
from beatmap_fid.metrics._inputs import feature_pair, load_ids
from beatmap_fid.stats import GaussianStats, RunningGaussian

DEFAULT_MIN_SIZE = 5000
FEW_MAPS = 10
"""Below this many maps in a set, :func:`sample_warnings` warns (see its documentation)."""
_SUBSAMPLE = ("both", "generated")
_MIN_GROUPS = 32
_MAX_GROUPS = 4096
_GROUP_BYTES = 256 << 20  # per set, for the per-group moments
_RESAMPLE_BYTES = 64 << 20  # for one chunk of resampled moments
_PRODUCT_BYTES = 32 << 20  # float64 slice of the group moments in one matrix product


@dataclass(frozen=True)
class FDInfinity:
    """FD∞ and the fit behind it: FID at each subset size and the fitted line."""

    value: float
    slope: float
    sizes: np.ndarray  # generated subset sizes
    real_sizes: np.ndarray
    fids: np.ndarray

    def as_dict(self) -> dict[str, float]:
        return {"fd_inf": self.value, "fd_inf_slope": self.slope}


@dataclass(frozen=True)
class FIDInterval:
    """FID, its bias-corrected value and a bootstrap confidence interval for the true FD."""

    estimate: float
    bias_corrected: float
    low: float
    high: float
    level: float
    std: float  # bootstrap standard deviation of FID
    n_resamples: int
    groups: tuple[int, int]  # resampling groups of the real and the generated set
    units: tuple[str, str] = ("rows", "rows")  # what a group holds: whole "maps" or "rows"

    def as_dict(self) -> dict[str, float]:
        return {
            "fid": self.estimate,
            "fid_bias_corrected": self.bias_corrected,
            "fid_low": self.low,
            "fid_high": self.high,
            "fid_std": self.std,
        }


def default_fd_sizes(n: int, num_points: int = 15, min_size: int | None = None) -> np.ndarray:
    """Subset sizes of FD∞: ``num_points`` sizes evenly spaced from ``min_size`` to ``n``.

    ``min_size`` defaults to min(5 000, n // 5). Repeated sizes (small n) are dropped.
    """
    if num_points < 2:
        raise InputError(f"num_points must be at least 2, got {num_points}")
    low = min(DEFAULT_MIN_SIZE, n // 5) if min_size is None else int(min_size)
    if not 2 <= low < n:
        raise InsufficientSamplesError(
            f"FD∞ needs subsets of at least 2 samples and at least two sizes up to the "
            f"generated set's {n} samples; the smallest size would be {low}"
            + ("" if min_size is not None else " (n // 5): at least 10 samples are needed")
        )
    return np.unique(np.rint(np.linspace(low, n, num_points)).astype(np.int64))


def fd_infinity(
    real: Any,
    generated: Any,
    *,
    num_points: int = 15,
    min_size: int | None = None,
    sizes: np.ndarray | list[int] | None = None,
    subsample: str = "both",
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
) -> FDInfinity:
    """FD∞ (Chong & Forsyth 2020): FID extrapolated to infinitely many samples.

    ``real`` and ``generated`` are feature arrays (n, d), embedding stores or ``.h5`` paths.
    ``sizes`` (generated subset sizes) overrides ``num_points``/``min_size``; see the module
    documentation for the defaults and for ``subsample`` ("both" or "generated"). ``device``
    goes to :func:`~beatmap_fid.frechet.frechet_distance`.
    """
    if subsample not in _SUBSAMPLE:
        raise InputError(f"subsample must be one of {_SUBSAMPLE}, got {subsample!r}")
    x, y = feature_pair(real, generated, metric="FD∞", min_samples=2)
    n_real, n_gen = len(x), len(y)
    if sizes is None:
        gen_sizes = default_fd_sizes(n_gen, num_points, min_size)
    else:
        gen_sizes = np.unique(np.asarray(sizes, dtype=np.int64))
        if len(gen_sizes) < 2 or gen_sizes[0] < 2 or gen_sizes[-1] > n_gen:
            raise InsufficientSamplesError(
                f"FD∞ needs at least two different sizes between 2 and the generated set's "
                f"{n_gen} samples, got {gen_sizes.tolist()}"
            )
    if subsample == "both":
        real_sizes = np.maximum(np.rint(gen_sizes * (n_real / n_gen)).astype(np.int64), 2)
    else:
        real_sizes = np.full(len(gen_sizes), n_real)

    rng = np.random.default_rng(seed)
    orders = (rng.permutation(n_real), rng.permutation(n_gen))
    accumulators = (RunningGaussian(x.shape[1]), RunningGaussian(x.shape[1]))
    done = [0, 0]
    fids = []
    for targets in tqdm(
        list(zip(real_sizes, gen_sizes)), desc="FD∞", unit="size", disable=not progress
    ):
        for side, (features, order, target) in enumerate(zip((x, y), orders, targets)):
            if target > done[side]:  # the next stretch of the permutation, read in row order
                accumulators[side].update(features[np.sort(order[done[side] : target])])
                done[side] = int(target)
        real_stats, gen_stats = (acc.result() for acc in accumulators)
        fids.append(frechet_distance(real_stats, gen_stats, device=device))
    fids = np.asarray(fids)
    slope, intercept = np.polyfit(1.0 / gen_sizes, fids, 1)
    return FDInfinity(
        value=float(intercept),
        slope=float(slope),
        sizes=gen_sizes,
        real_sizes=real_sizes,
        fids=fids,
    )


def fid_confidence_interval(
    real: Any,
    generated: Any,
    level: float = 0.95,
    n_resamples: int = 200,
    seed: int = 0,
    *,
    real_ids: Any = None,
    generated_ids: Any = None,
    groups: int | None = None,
    device: str | None = "numpy",
    progress: bool = False,
) -> FIDInterval:
    """FID with a bias-corrected bootstrap estimate and confidence interval for the true FD.

    Both sets are resampled with replacement ``n_resamples`` times; the bias b̂ = mean(FID*) −
    FID is removed once from the estimate and twice from the percentile interval of the
    resampled FIDs (see the module documentation for why, and for the simulated coverage).

    The resampling units are whole maps: rows whose ids (``real_ids`` / ``generated_ids``,
    or the ids of a store given as a side) share the part before ``#`` are drawn together,
    since windows of one map are correlated. Without ids every row is its own unit. A side
    needs at least 2 maps. ``groups`` caps the units per set: beyond it (default: as many as
    fit in memory, at least 32) the maps (or rows) are pooled into that many random groups.

    Each resample costs one Fréchet distance, O(d³): at d = 2048 about 1 s on two idle CPU
    cores, so 200 resamples take minutes there. ``device="numpy"`` (default) computes them in
    batches with NumPy; any other value (None, "cuda", ...) goes to
    :func:`~beatmap_fid.frechet.frechet_distance` one resample at a time, e.g. on a GPU.
    """
    if not 0.0 < level < 1.0:
        raise InputError(f"level must be between 0 and 1, got {level}")
    tail = (1.0 - level) / 2.0
    if n_resamples * tail < 1.0:
        raise InputError(
            f"n_resamples={n_resamples} is too few for a {level:.0%} interval: at least "
            f"{int(np.ceil(1.0 / tail))} are needed (a few hundred recommended)"
        )
    if groups is not None and groups < 2:
        raise InputError(f"groups must be at least 2, got {groups}")
    x, y = feature_pair(real, generated, metric="the FID confidence interval", min_samples=2)
    rng = np.random.default_rng(seed)
    moments = []
    units = []
    for name, features, ids in (
        ("real", x, real_ids if real_ids is not None else load_ids(real)),
        ("generated", y, generated_ids if generated_ids is not None else load_ids(generated)),
    ):
        labels, n_groups, unit = _resampling_groups(name, features.shape, ids, groups, rng)
        moments.append(_group_moments(features, labels, n_groups))
        units.append(unit)
    estimate = frechet_distance(moments[0].full, moments[1].full, device="numpy")

    draws = [_resample_counts(m.n_groups, n_resamples, rng) for m in moments]
    dim = x.shape[1]
    chunk = max(1, _RESAMPLE_BYTES // (8 * dim * dim))
    replicates = np.empty(n_resamples)
    for start in tqdm(
        range(0, n_resamples, chunk), desc="FID bootstrap", unit="chunk", disable=not progress
    ):
        stop = min(start + chunk, n_resamples)
        real_stats = moments[0].resample(draws[0][start:stop])
        gen_stats = moments[1].resample(draws[1][start:stop])
        if device == "numpy":
            replicates[start:stop] = _frechet_batch(*real_stats, *gen_stats)
        else:
            replicates[start:stop] = [
                frechet_distance(GaussianStats(*a), GaussianStats(*b), device=device)
                for a, b in zip(zip(*real_stats), zip(*gen_stats))
            ]

    bias = float(replicates.mean()) - estimate
    low, high = np.quantile(replicates, [tail, 1.0 - tail]) - 2.0 * bias
    return FIDInterval(
        estimate=estimate,
        bias_corrected=max(estimate - bias, 0.0),
        low=max(float(low), 0.0),
        high=max(float(high), 0.0),
        level=level,
        std=float(replicates.std(ddof=1)),
        n_resamples=n_resamples,
        groups=(moments[0].n_groups, moments[1].n_groups),
        units=(units[0], units[1]),
    )


def sample_warnings(dim: int, **sides: tuple[int | None, int | None]) -> list[str]:
    """Plain-language warnings about sets too small for a trustworthy FID.

    ``sides`` maps a set's name to ``(n_vectors, n_maps)`` (either may be None when unknown).
    Warned about: n_vectors ≤ ``dim`` (the covariance is singular and FID is mostly its
    small-sample bias) and, for windows of maps, fewer than :data:`FEW_MAPS` maps (windows of
    a map are correlated, so the maps are the independent samples; below that count the
    map bootstrap's interval falls short of its nominal coverage too, see
    benchmarks/RESULTS.md).
    """
    found = []
    for name, (n_vectors, n_maps) in sides.items():
        if n_vectors is not None and n_vectors <= dim:
            found.append(
                f"the {name} set has {n_vectors} vectors for {dim} dimensions: its covariance "
                f"is singular (rank at most {max(n_vectors - 1, 0)}), so FID carries a large "
                "small-sample bias; use several times more vectors than dimensions"
            )
        if n_maps is not None and n_vectors is not None and n_maps < min(FEW_MAPS, n_vectors):
            found.append(
                f"the {name} set holds only {n_maps} map(s): windows of one map are "
                f"correlated, so FID rests on {n_maps} independent sample(s) and depends "
                f"on which maps were drawn; use at least {FEW_MAPS} maps per set"
            )
    return found


@dataclass(frozen=True)
class SplitHalfFID:
    """FID between two random halves of one set, split by map, over several splits: the
    value FID takes when nothing but sampling differs (at half the set's size)."""

    mean: float
    std: float
    fids: tuple[float, ...]
    n_maps: int
    n_vectors: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "fid_mean": self.mean,
            "fid_std": self.std,
            "fids": list(self.fids),
            "n_maps": self.n_maps,
            "n_vectors": self.n_vectors,
        }


def split_half_fid(
    features: Any, ids: Any = None, *, n_splits: int = 5, seed: int = 0
) -> SplitHalfFID:
    """FID between two random halves of ``features`` (an array, store or ``.h5`` path), the
    maps (the part of each id before ``#``; every row its own map without ids) dealt out
    whole, half of the maps to each side, in ``n_splits`` random splits.

    The scale for reading a real-vs-generated FID: two samples of the same maps already lie
    this far apart. Each half has about half the rows, so its 1/N bias is about twice that of
    the full set.
    """
    from beatmap_fid.metrics._inputs import check_samples, load_features

    x, _ = load_features(features, "features")
    ids = load_ids(features) if ids is None else np.asarray(ids)
    if ids is None:
        ids = np.arange(len(x)).astype(str)
    if len(ids) != len(x):
        raise InputError(f"{len(ids)} ids for {len(x)} rows")
    check_samples(x, "real", metric="split-half FID", min_samples=4)
    _, maps = np.unique([map_id(i) for i in ids], return_inverse=True)
    maps = maps.ravel()
    n_maps = int(maps.max()) + 1
    if n_maps < 2:
        raise InsufficientSamplesError("split-half FID needs at least 2 maps to split")
    if n_splits < 1:
        raise InputError(f"n_splits must be at least 1, got {n_splits}")
    rng = np.random.default_rng(seed)
    fids = []
    for _ in range(n_splits):
        first = np.zeros(n_maps, dtype=bool)
        first[rng.permutation(n_maps)[: n_maps // 2]] = True
        half = first[maps]
        if min(half.sum(), (~half).sum()) < 2:
            raise InsufficientSamplesError(
                "split-half FID needs at least 2 rows in each half; the maps are too few"
            )
        fids.append(frechet_distance(x[half], x[~half], device="numpy"))
    return SplitHalfFID(
        mean=float(np.mean(fids)),
        std=float(np.std(fids, ddof=1)) if len(fids) > 1 else 0.0,
        fids=tuple(float(f) for f in fids),
        n_maps=n_maps,
        n_vectors=len(x),
    )


def _default_groups(n: int, dim: int) -> int:
    """Every unit its own group when affordable, else as many groups as fit (at least 32)."""
    fit = _GROUP_BYTES // (8 * dim * (dim + 1) // 2)
    return int(min(n, _MAX_GROUPS, max(_MIN_GROUPS, fit)))


def _resampling_groups(
    name: str, shape: tuple[int, int], ids: Any, groups: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, int, str]:
    """Resampling group of every row, the number of groups, and the unit ("maps" or "rows").

    Rows of one map always share a group. When every map has one row (or no ids are known)
    the rows are the units, grouped exactly as before maps were known.
    """
    n, dim = shape
    maps = None
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (n,):
            raise InputError(f"{name}: {len(ids)} ids for {n} rows")
        _, maps = np.unique([map_id(i) for i in ids], return_inverse=True)
        maps = maps.ravel()
        if maps.max() + 1 == n:
            maps = None  # one row per map: the rows are the units
    if maps is None:
        n_groups = min(groups or _default_groups(n, dim), n)
        return rng.permutation(n) % n_groups, n_groups, "rows"
    n_maps = int(maps.max()) + 1
    if n_maps < 2:
        raise InsufficientSamplesError(
            f"the FID bootstrap resamples whole maps, and the {name} set holds {n} windows of "
            f"a single map ({map_id(ids[0])}); at least 2 maps are needed, and an interval "
            "from a handful of maps is wide"
        )
    n_groups = min(groups or _default_groups(n_maps, dim), n_maps)
    return (rng.permutation(n_maps) % n_groups)[maps], n_groups, "maps"


@dataclass(frozen=True)
class _GroupMoments:
    """Count, sum and upper triangle of Σ zzᵀ per group, of rows z = x − shift (float64)."""

    shift: np.ndarray  # (d,)
    counts: np.ndarray  # (G,)
    sums: np.ndarray  # (G, d)
    products: np.ndarray  # (G, d(d+1)/2)
    full: GaussianStats  # statistics of the whole set

    @property
    def n_groups(self) -> int:
        return len(self.counts)

    def resample(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means (R, d) and covariances (R, d, d) of the resamples that take group g
        ``draws[r, g]`` times."""
        n = draws @ self.counts
        sums = draws @ self.sums
        products = np.empty((len(draws), self.products.shape[1]))
        step = max(1, _PRODUCT_BYTES // (8 * self.n_groups))
        for start in range(0, products.shape[1], step):
            products[:, start : start + step] = draws @ self.products[:, start : start + step]
        return _mean_and_covariance(self.shift, n, sums, products)


def _group_moments(features: np.ndarray, labels: np.ndarray, n_groups: int) -> _GroupMoments:
    """Moments of the groups ``labels`` (0 .. n_groups − 1, every group non-empty)."""
    n, dim = features.shape
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_groups + 1))
    shift = features.mean(axis=0, dtype=np.float64)
    upper = np.triu_indices(dim)
    if n_groups == n:  # one row per group: all outer products at once
        centred = np.subtract(features[order], shift, dtype=np.float64)
        sums = centred
        products = centred[:, upper[0]] * centred[:, upper[1]]
    else:
        sums = np.empty((n_groups, dim))
        products = np.empty((n_groups, len(upper[0])))
        for g in range(n_groups):
            rows = np.sort(order[bounds[g] : bounds[g + 1]])
            centred = np.subtract(features[rows], shift, dtype=np.float64)
            sums[g] = centred.sum(axis=0)
            products[g] = (centred.T @ centred)[upper]
    counts = np.diff(bounds).astype(np.float64)
    mu, sigma = _mean_and_covariance(
        shift, np.array([float(n)]), sums.sum(axis=0)[None], products.sum(axis=0)[None]
    )
    return _GroupMoments(shift, counts, sums, products, GaussianStats(mu[0], sigma[0], n=n))


def _mean_and_covariance(
    shift: np.ndarray, n: np.ndarray, sums: np.ndarray, products: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Means (R, d) and unbiased covariances (R, d, d) from counts (R,), sums (R, d) and the
    packed upper triangles (R, d(d+1)/2) of Σ zzᵀ, all about ``shift``."""
    dim = len(shift)
    upper = np.triu_indices(dim)
    scatter = np.empty((len(n), dim, dim))
    scatter[:, upper[0], upper[1]] = products
    scatter[:, upper[1], upper[0]] = products
    scatter -= sums[:, :, None] * (sums / n[:, None])[:, None, :]
    scatter /= (n - 1.0)[:, None, None]
    return shift + sums / n[:, None], scatter


def _frechet_batch(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> np.ndarray:
    """Fréchet distances of stacked Gaussians (R, d), (R, d, d): the Cholesky route of
    :mod:`beatmap_fid.frechet` batched, since the bootstrap needs hundreds of them; stacks with
    a singular Σ₂ go to :func:`~beatmap_fid.frechet.frechet_distance` one by one."""
    try:
        factor = np.linalg.cholesky(sigma2)
    except np.linalg.LinAlgError:
        return np.array(
            [
                frechet_distance(GaussianStats(*first), GaussianStats(*second), device="numpy")
                for first, second in zip(zip(mu1, sigma1), zip(mu2, sigma2))
            ]
        )
    product = np.swapaxes(factor, -1, -2) @ sigma1 @ factor
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(product), 0.0, None)).sum(axis=-1)
    traces = np.trace(sigma1, axis1=-2, axis2=-1) + np.trace(sigma2, axis1=-2, axis2=-1)
    mean_term = ((mu1 - mu2) ** 2).sum(axis=-1)
    return np.maximum(mean_term + traces - 2.0 * trace_sqrt, 0.0)


def _resample_counts(n_groups: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n_groups) float64: how often each resample draws each group."""
    picks = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    picks += n_groups * np.arange(n_resamples)[:, None]
    counts = np.bincount(picks.ravel(), minlength=n_resamples * n_groups)
    return counts.reshape(n_resamples, n_groups).astype(np.float64)
