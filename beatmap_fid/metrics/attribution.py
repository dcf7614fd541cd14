"""Which features drive a Fréchet distance: an exact split of FID into one term per feature.

FID is the squared 2-Wasserstein distance between the Gaussians N(μ₁, Σ₁) (real) and
N(μ₂, Σ₂) (generated). It is the expected squared displacement E‖X − Y‖² under the optimal
coupling of the two, and a squared norm splits into one term per feature:

    FID = Σᵢ (μ₁ᵢ − μ₂ᵢ)²  +  Σᵢ (Σ₁ᵢᵢ + Σ₂ᵢᵢ − 2 Kᵢᵢ)

The first sum is the mean term of FID, feature by feature. In the second, K = E[(X − μ₁)(Y − μ₂)ᵀ]
is the cross-covariance of the optimal coupling, K = Σ₁^½ (Σ₁^½ Σ₂ Σ₁^½)^½ Σ₁^-½, whose trace is
tr √(Σ₁Σ₂): the terms add up to the covariance terms of FID, tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂),
and each is E[(Xᵢ − Yᵢ)²] − (μ₁ᵢ − μ₂ᵢ)², how far the feature moves in the optimal transport
of the real Gaussian onto the generated one. When Σ₁ is singular (constant real features)
Σ₁^-½ is its pseudo-inverse; the terms still add up exactly.

The split depends on the features' units, as FID itself does: a feature with a large spread
weighs more. That is the honest answer to "what makes this FID large"; the descriptors'
features are scaled to comparable ranges for that reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from beatmap_fid.errors import DimensionMismatchError, InputError
from beatmap_fid.stats import GaussianStats

_RELATIVE_FLOOR = 1e-12  # eigenvalues below this × the largest count as zero


@dataclass(frozen=True)
class FeatureShares:
    """FID split per feature: ``mean_terms`` + ``covariance_terms`` sum to ``fid``."""

    mean_terms: np.ndarray
    covariance_terms: np.ndarray
    real_mean: np.ndarray
    generated_mean: np.ndarray
    real_std: np.ndarray
    generated_std: np.ndarray

    @property
    def terms(self) -> np.ndarray:
        return self.mean_terms + self.covariance_terms

    @property
    def fid(self) -> float:
        return float(self.terms.sum())

    def table(self, names: list[str], top: int | None = None) -> list[dict[str, Any]]:
        """Rows of the features with the largest terms: name, both terms, their share of FID
        and the means and standard deviations on both sides."""
        if len(names) != len(self.terms):
            raise DimensionMismatchError(f"{len(names)} names for {len(self.terms)} features")
        total = self.fid if self.fid > 0 else 1.0
        order = np.argsort(-self.terms, kind="stable")[:top]
        return [
            {
                "feature": names[i],
                "mean_term": float(self.mean_terms[i]),
                "covariance_term": float(self.covariance_terms[i]),
                "share": float(self.terms[i] / total),
                "mean_share": float(self.mean_terms[i] / total),
                "covariance_share": float(self.covariance_terms[i] / total),
                "real_mean": float(self.real_mean[i]),
                "generated_mean": float(self.generated_mean[i]),
                "real_std": float(self.real_std[i]),
                "generated_std": float(self.generated_std[i]),
            }
            for i in order
        ]

    def groups(self, groups: dict[str, list[str]], names: list[str]) -> list[dict[str, Any]]:
        """Terms summed per group of features (e.g. the descriptors' ``rhythm``, ``spacing``),
        largest first."""
        position = {name: i for i, name in enumerate(names)}
        total = self.fid if self.fid > 0 else 1.0
        rows = []
        for group, members in groups.items():
            index = [position[m] for m in members]
            mean, cov = (
                float(self.mean_terms[index].sum()),
                float(self.covariance_terms[index].sum()),
            )
            rows.append(
                {
                    "group": group,
                    "features": len(index),
                    "mean_term": mean,
                    "covariance_term": cov,
                    "share": (mean + cov) / total,
                }
            )
        return sorted(rows, key=lambda row: -row["share"])


def _sqrt_psd(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Square root of a symmetric PSD matrix and the pseudo-inverse of that root."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    values = np.clip(values, 0.0, None)
    floor = _RELATIVE_FLOOR * max(float(values.max(initial=0.0)), np.finfo(float).tiny)
    roots = np.sqrt(values)
    inverse = np.divide(1.0, roots, out=np.zeros_like(roots), where=values > floor)
    return (vectors * roots) @ vectors.T, (vectors * inverse) @ vectors.T


def feature_shares(real: Any, generated: Any) -> FeatureShares:
    """Split the FID between ``real`` and ``generated`` (feature arrays (n, d) or
    :class:`~beatmap_fid.stats.GaussianStats`) into one term per feature; see the module
    documentation."""
    first, second = (_as_stats(x) for x in (real, generated))
    if first.dim != second.dim:
        raise DimensionMismatchError(f"dimensions differ: {first.dim} and {second.dim}")
    root, root_inverse = _sqrt_psd(first.sigma)
    middle, _ = _sqrt_psd(root @ second.sigma @ root)
    coupling = root @ middle @ root_inverse
    mean_terms = (first.mu - second.mu) ** 2
    covariance_terms = np.diag(first.sigma) + np.diag(second.sigma) - 2.0 * np.diag(coupling)
    return FeatureShares(
        mean_terms,
        covariance_terms,
        first.mu,
        second.mu,
        np.sqrt(np.clip(np.diag(first.sigma), 0.0, None)),
        np.sqrt(np.clip(np.diag(second.sigma), 0.0, None)),
    )


def _as_stats(x: Any) -> GaussianStats:
    if isinstance(x, GaussianStats):
        return x
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2 or len(array) < 2:
        raise InputError(f"features must be an array (n >= 2, d), got shape {array.shape}")
    return GaussianStats(array.mean(axis=0), np.atleast_2d(np.cov(array, rowvar=False)), len(array))
