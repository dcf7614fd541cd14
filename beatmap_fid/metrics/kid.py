"""Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018).

KID is the unbiased estimate of the squared maximum mean discrepancy with the cubic polynomial
kernel k(x, y) = (xᵀy / d + 1)³, averaged over random subsets of both sets (100 subsets of 1000
by default) and reported as mean ± standard deviation over the subsets. Unlike FID it is
unbiased at any sample size, so values from sets of different sizes can be compared; it can be
slightly negative when the two sets come from the same distribution.

For one subset pair X, Y of m rows each:

    MMD²ᵤ = Σ_{i≠j} k(xᵢ, xⱼ) / (m(m−1)) + Σ_{i≠j} k(yᵢ, yⱼ) / (m(m−1)) − 2 Σ_{i,j} k(xᵢ, yⱼ) / m²

Subsets are drawn without replacement with ``numpy.random.RandomState(seed).choice`` in the
same order as torch-fidelity (a real subset, then a generated subset, per round), so with the
same seed both libraries average the very same subsets. The Gram matrix of the stacked subsets
is one symmetric float32 product (half the work of three separate products); the kernel values
and their sums are taken in float64. The standard deviation is the population one (ddof 0), as
in torch-fidelity.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from beatmap_fid.errors import InputError
from beatmap_fid.metrics._inputs import feature_pair


def kid(
    real: Any,
    generated: Any,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """KID between two sets of features: ``{"kid": mean, "kid_std": std}`` over ``subsets``.

    ``real`` and ``generated`` are feature arrays (n, d), embedding stores or ``.h5`` paths.
    The kernel is (γ·xᵀy + coef0)^degree with γ = 1/d unless ``gamma`` is given. Raises
    InsufficientSamplesError when a set has fewer than ``subset_size`` rows (the message gives
    the minimum; pass a smaller ``subset_size``).
    """
    if subsets < 1:
        raise InputError(f"subsets must be at least 1, got {subsets}")
    if degree < 1:
        raise InputError(f"degree must be a positive integer, got {degree}")
    if subset_size < 2:
        raise InputError(f"subset_size must be at least 2, got {subset_size}")
    x, y = feature_pair(
        real,
        generated,
        metric="KID",
        min_samples=subset_size,
        why=f"subset_size={subset_size}; pass a smaller subset_size for smaller sets",
    )
    gamma = 1.0 / x.shape[1] if gamma is None else float(gamma)
    # RandomState, not Generator: the subsets then match torch-fidelity's for the same seed.
    rng = np.random.RandomState(seed)
    stacked = np.empty((2 * subset_size, x.shape[1]), dtype=np.float32)
    values = np.empty(subsets)
    for i in tqdm(range(subsets), desc="KID", unit="subset", disable=not progress):
        stacked[:subset_size] = x[np.sort(rng.choice(len(x), subset_size, replace=False))]
        stacked[subset_size:] = y[np.sort(rng.choice(len(y), subset_size, replace=False))]
        values[i] = _mmd2_unbiased(stacked, subset_size, gamma, coef0, degree)
    return {"kid": float(values.mean()), "kid_std": float(values.std())}


def _mmd2_unbiased(stacked: np.ndarray, m: int, gamma: float, coef0: float, degree: int) -> float:
    """Unbiased MMD² of the first ``m`` rows of ``stacked`` against the remaining rows."""
    gram = stacked @ stacked.T  # NumPy computes a·aᵀ with one symmetric rank-k update
    base = gram.astype(np.float64)
    base *= gamma
    base += coef0
    kernel = base.copy()
    for _ in range(degree - 1):  # repeated products: much faster than a float power
        kernel *= base
    diagonal = np.diagonal(kernel)
    xx = kernel[:m, :m].sum() - diagonal[:m].sum()
    yy = kernel[m:, m:].sum() - diagonal[m:].sum()
    xy = kernel[:m, m:].sum()
    return float((xx + yy) / (m * (m - 1)) - 2.0 * xy / (m * m))
