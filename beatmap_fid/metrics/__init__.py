"""Metrics between a real and a generated set of embeddings, found by name in :data:`METRICS`.

Every entry takes ``(real, generated, **options)`` — feature arrays (n, d), embedding stores or
``.h5`` store paths ("fid" also takes ``.npz`` statistics) — and returns a dict of floats:

========================  =================================================================
name                      keys
========================  =================================================================
``fid``                   fid
``fd_inf``                fd_inf, fd_inf_slope (Chong & Forsyth 2020)
``fid_ci``                fid, fid_bias_corrected, fid_low, fid_high, fid_std (bootstrap)
``kid``                   kid, kid_std (Bińkowski et al. 2018)
``precision_recall``      precision, recall (Kynkäänniemi et al. 2019, k = 3)
``density_coverage``      density, coverage (Naeem et al. 2020, k = 5)
``prdc``                  precision, recall, density, coverage (one k, default 5)
``cmmd``                  cmmd (Jayasumana et al. 2024)
========================  =================================================================

Options are the keyword arguments of the functions behind the names (``kid(subsets=...)``,
``fd_infinity(num_points=...)``, ...). Each entry loads its inputs itself; when several
metrics run on the same stores, load the vectors once (``store.vectors()``) and pass arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from beatmap_fid.frechet import frechet_distance
from beatmap_fid.metrics.cmmd import cmmd
from beatmap_fid.metrics.fid_uncertainty import (
    FDInfinity,
    FIDInterval,
    default_fd_sizes,
    fd_infinity,
    fid_confidence_interval,
)
from beatmap_fid.metrics.kid import kid
from beatmap_fid.metrics.prdc import density_coverage, knn_radii, prdc, precision_recall

Metric = Callable[..., dict[str, float]]


def fid(real: Any, generated: Any, **options: Any) -> dict[str, float]:
    """``{"fid": Fréchet distance}``; options go to :func:`beatmap_fid.frechet.frechet_distance`."""
    return {"fid": frechet_distance(real, generated, **options)}


def fd_inf(real: Any, generated: Any, **options: Any) -> dict[str, float]:
    """``{"fd_inf", "fd_inf_slope"}`` from :func:`fd_infinity`."""
    return fd_infinity(real, generated, **options).as_dict()


def fid_ci(real: Any, generated: Any, **options: Any) -> dict[str, float]:
    """``{"fid", "fid_bias_corrected", "fid_low", "fid_high", "fid_std"}`` from
    :func:`fid_confidence_interval`."""
    return fid_confidence_interval(real, generated, **options).as_dict()


METRICS: dict[str, Metric] = {
    "fid": fid,
    "fd_inf": fd_inf,
    "fid_ci": fid_ci,
    "kid": kid,
    "precision_recall": precision_recall,
    "density_coverage": density_coverage,
    "prdc": prdc,
    "cmmd": cmmd,
}

__all__ = [
    "METRICS",
    "FDInfinity",
    "FIDInterval",
    "Metric",
    "cmmd",
    "default_fd_sizes",
    "density_coverage",
    "fd_inf",
    "fd_infinity",
    "fid",
    "fid_ci",
    "fid_confidence_interval",
    "kid",
    "knn_radii",
    "prdc",
    "precision_recall",
]
