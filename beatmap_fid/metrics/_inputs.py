"""Inputs of the sample-based metrics: feature arrays, embedding stores or store paths.

Every metric takes its two sets as anything :func:`load_features` accepts and calls
:func:`feature_pair` first, so that the numeric kernels behind it see validated arrays only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.errors import (
    ConfigMismatchError,
    DimensionMismatchError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
)
from beatmap_fid.shards import STORE_TYPES, is_store_path
from beatmap_fid.store import open_store


def load_features(x: Any, name: str = "features") -> tuple[np.ndarray, str | None]:
    """``(array (n, d), config hash or None)`` of an array, a torch tensor or an embedding store.

    Stores (open, or a ``.h5``/``.hdf5`` path) give their float32 vectors and config hash;
    arrays keep float32 or float64 (other numbers become float64). A ``.npz`` of Gaussian
    statistics holds no samples and is refused with a message saying so.
    """
    if isinstance(x, STORE_TYPES):
        return x.vectors(), x.config_hash
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        suffix = path.suffix.lower()
        if is_store_path(path):
            with open_store(path) as store:
                return store.vectors(), store.config_hash
        if suffix == ".npz":
            raise InputError(
                f"{name}: {path} holds Gaussian statistics (mean and covariance), not samples; "
                "this metric needs the feature vectors: pass the embedding store or an array"
            )
        raise InputError(f"{name}: expected an .h5 embedding store or a sharded store, got {path}")
    if hasattr(x, "detach"):  # a torch tensor, possibly on a GPU
        x = x.detach().cpu().numpy()
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}: cannot use {type(x).__name__} as features: {err}") from err
    if array.ndim != 2 or array.shape[1] == 0:
        raise InputError(f"{name} must be an array of shape (n, d), got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise InputError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    return array, None


def load_ids(x: Any) -> np.ndarray | None:
    """Row ids of an embedding store (open, or a ``.h5``/``.hdf5`` path); None for arrays."""
    if isinstance(x, STORE_TYPES):
        return np.asarray(x.ids)
    if is_store_path(x):
        with open_store(x) as store:
            return np.asarray(store.ids)
    return None


def feature_pair(
    real: Any, generated: Any, *, metric: str, min_samples: int, why: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as validated arrays of one dimension, each with at least ``min_samples`` rows.

    Raises DimensionMismatchError, NonFiniteError, InsufficientSamplesError (naming the
    minimum and ``why`` it is needed), and ConfigMismatchError when both come from stores made
    with different extractor configurations.
    """
    x, hash_x = load_features(real, "real")
    y, hash_y = load_features(generated, "generated")
    if x.shape[1] != y.shape[1]:
        raise DimensionMismatchError(
            f"{metric}: real features have dimension {x.shape[1]} and generated features "
            f"{y.shape[1]}; both sets must come from the same extractor"
        )
    if hash_x is not None and hash_y is not None and hash_x != hash_y:
        raise ConfigMismatchError(
            f"{metric}: the real and generated stores were made with different extractor "
            f"configurations (hashes {hash_x} and {hash_y}); embed both with the same one"
        )
    if min(len(x), len(y)) < min_samples:
        reason = f" ({why})" if why else ""
        raise InsufficientSamplesError(
            f"{metric} needs at least {min_samples} samples per set{reason}; "
            f"the real set has {len(x)} and the generated set {len(y)}"
        )
    for name, array in (("real", x), ("generated", y)):
        check_samples(array, name, metric=metric, min_samples=min_samples, why=why)
    return x, y


def check_samples(
    array: np.ndarray, name: str, *, metric: str, min_samples: int, why: str = ""
) -> None:
    """Raise InsufficientSamplesError below ``min_samples`` rows, NonFiniteError on NaN/inf."""
    if array.shape[0] < min_samples:
        reason = f" ({why})" if why else ""
        raise InsufficientSamplesError(
            f"{metric} needs at least {min_samples} samples per set{reason}; "
            f"the {name} set has {array.shape[0]}"
        )
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        raise NonFiniteError(
            f"{metric}: {len(rows)} {name} vectors contain NaN or infinity "
            f"(rows {rows[:5].tolist()}...); remove or repair them first"
        )
