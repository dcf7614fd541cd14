"""Gaussian statistics (n, mean, covariance) of feature vectors, accumulated in one streaming pass.

:class:`RunningGaussian` keeps the count, the mean and the scatter matrix
``M2 = Σ (x − mean)(x − mean)ᵀ`` in float64 and folds each batch in with the pairwise update of
Chan, Golub and LeVeque: the batch's own mean and centred scatter are computed with BLAS
(a symmetric rank-k update written straight into ``M2``), then the two partial results are
merged with the correction term ``δδᵀ·n_a·n_b/n``. Memory stays O(d²) whatever the number of
vectors, and partial results from shards or processes merge exactly.

:class:`GaussianStats` is the finished result, saved as ``.npz`` with the keys ``mu`` and
``sigma`` that pytorch-fid and clean-fid read and write, plus ``n``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import blas

from beatmap_fid.errors import (
    DimensionMismatchError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
    StoreError,
)

# Largest float64 working copy made of one batch; bigger batches are folded in piece by piece.
_CHUNK_BYTES = 32 * 2**20


@dataclass(eq=False)
class GaussianStats:
    """Mean ``mu`` (d,) and covariance ``sigma`` (d, d) of a set of vectors, both float64.

    ``n`` is the number of vectors they were computed from, or None when unknown (statistics
    files written by pytorch-fid or clean-fid do not record it).
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None

    def __post_init__(self) -> None:
        self.mu = np.asarray(self.mu, dtype=np.float64)
        self.sigma = np.asarray(self.sigma, dtype=np.float64)
        if self.mu.ndim != 1 or self.mu.shape[0] == 0:
            raise InputError(f"mu must be a non-empty vector (d,), got shape {self.mu.shape}")
        d = self.mu.shape[0]
        if self.sigma.shape != (d, d):
            raise InputError(
                f"sigma must have shape ({d}, {d}) to match mu, got {self.sigma.shape}"
            )
        if not (np.isfinite(self.mu).all() and np.isfinite(self.sigma).all()):
            raise NonFiniteError("mu or sigma contains NaN or infinite values")
        if self.n is not None:
            self.n = int(self.n)
            if self.n < 0:
                raise InputError(f"n must be a count of vectors (>= 0) or None, got {self.n}")

    @property
    def dim(self) -> int:
        """Dimension d of the vectors."""
        return self.mu.shape[0]

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``mu``, ``sigma`` (and ``n`` when known) to an ``.npz`` file at exactly ``path``.

        The file is written beside its destination and renamed into place, so a reader never
        sees a half-written file.
        """
        path = Path(path)
        arrays = {"mu": self.mu, "sigma": self.sigma}
        if self.n is not None:
            arrays["n"] = np.int64(self.n)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> GaussianStats:
        """Read an ``.npz`` file written by :meth:`save`, pytorch-fid or clean-fid.

        Raises StoreError when the file is missing, unreadable or lacks ``mu``/``sigma``, and
        the InputError subclasses of the constructor when the arrays have the wrong shape or
        are not finite.
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"statistics file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [key for key in ("mu", "sigma") if key not in data.files]
                if missing:
                    raise StoreError(
                        f"{path} is not a statistics file: it lacks {', '.join(missing)} "
                        f"(found keys: {', '.join(data.files) or 'none'})"
                    )
                mu, sigma = data["mu"], data["sigma"]
                n = int(data["n"]) if "n" in data.files else None
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise StoreError(f"cannot read statistics file {path}: {err}") from err
        try:
            return cls(mu=mu, sigma=sigma, n=n)
        except InputError as err:
            raise type(err)(f"{path}: {err}") from err


class RunningGaussian:
    """Streaming mean and covariance in float64 with O(d²) memory, mergeable across shards.

    Usage::

        running = RunningGaussian()
        for batch in batches:  # any float or int dtype, any number of rows
            running.update(batch)
        stats = running.result()  # GaussianStats with the unbiased covariance
    """

    def __init__(self, dim: int | None = None) -> None:
        if dim is not None and int(dim) < 1:
            raise InputError(f"dim must be a positive dimension or None, got {dim}")
        self.dim: int | None = None if dim is None else int(dim)
        self.n = 0
        self._mean: np.ndarray | None = None
        # Upper triangle of the centred scatter matrix; the strict lower triangle stays zero.
        # Fortran order lets the BLAS routines update it in place.
        self._scatter: np.ndarray | None = None
        if self.dim is not None:
            self._allocate(self.dim)

    def _allocate(self, dim: int) -> None:
        self.dim = dim
        self._mean = np.zeros(dim)
        self._scatter = np.zeros((dim, dim), order="F")

    def _check_dim(self, dim: int, what: str) -> None:
        if self.dim is None:
            self._allocate(dim)
        elif dim != self.dim:
            raise DimensionMismatchError(
                f"{what} has dimension {dim}, but this accumulator holds dimension {self.dim}"
            )

    def update(self, batch: np.ndarray) -> RunningGaussian:
        """Fold a batch of vectors (m, d), or one vector (d,), into the statistics."""
        batch = np.asarray(batch)
        if batch.dtype.kind not in "biuf":
            raise InputError(f"features must be real numbers, got dtype {batch.dtype}")
        if batch.ndim == 1:
            batch = batch[None, :]
        if batch.ndim != 2 or batch.shape[1] == 0:
            raise InputError(f"features must have shape (n, d) or (d,), got {batch.shape}")
        self._check_dim(batch.shape[1], "batch")
        rows = _batch_rows(batch.shape[1])
        for start in range(0, batch.shape[0], rows):
            self._update_chunk(batch[start : start + rows])
        return self

    def _update_chunk(self, chunk: np.ndarray) -> None:
        count = chunk.shape[0]
        if count == 0:
            return
        mean = chunk.mean(axis=0, dtype=np.float64)
        if not np.isfinite(mean).all():
            columns = np.flatnonzero(~np.isfinite(mean))[:5].tolist()
            raise NonFiniteError(
                f"features contain NaN or infinite values (columns {columns}...); "
                "remove or repair those vectors first"
            )
        if count > 1:
            centred = np.empty(chunk.shape, dtype=np.float64)
            np.subtract(chunk, mean, out=centred)
            # scatter += centredᵀ·centred, upper triangle only (dsyrk computes a·aᵀ for a = centredᵀ).
            self._scatter = blas.dsyrk(1.0, centred.T, beta=1.0, c=self._scatter, overwrite_c=1)
        self._absorb(count, mean, None)

    def _absorb(self, count: int, mean: np.ndarray, scatter: np.ndarray | None) -> None:
        """Chan et al. merge of a partial result (count, mean, scatter) into this one.

        ``scatter`` None means the partial scatter was already added into ``self._scatter``.
        """
        total = self.n + count
        delta = mean - self._mean
        if scatter is not None:
            self._scatter += scatter
        if self.n > 0:
            weight = self.n * count / total
            self._scatter = blas.dsyr(weight, delta, a=self._scatter, overwrite_a=1)
        self._mean += delta * (count / total)
        self.n = total

    def merge(self, other: RunningGaussian | GaussianStats) -> RunningGaussian:
        """Fold in another accumulator, or finished statistics whose ``n`` is known (shards)."""
        if isinstance(other, GaussianStats):
            if other.n is None:
                raise InputError(
                    "cannot merge statistics whose sample count n is unknown "
                    "(files from pytorch-fid/clean-fid do not record it)"
                )
            count, mean, dim = other.n, other.mu, other.dim
            scatter = np.triu(other.sigma) * (count - 1) if count > 1 else None
        elif isinstance(other, RunningGaussian):
            if other.n == 0:
                return self
            count, mean, dim = other.n, other._mean, other.dim
            scatter = other._scatter
        else:
            raise InputError(
                f"can merge a RunningGaussian or GaussianStats, got {type(other).__name__}"
            )
        self._check_dim(dim, "merged statistics")
        if count == 0:
            return self
        self._absorb(count, mean, scatter)
        return self

    def state(self) -> tuple[int, np.ndarray, np.ndarray]:
        """``(n, mean, scatter)``: the exact partial result, scatter as its upper triangle
        (what a shard saves so that partial results merge without loss, even for n < 2)."""
        if self.dim is None:
            raise InsufficientSamplesError("no vector has been folded in yet")
        return self.n, self._mean.copy(), np.triu(self._scatter)

    @classmethod
    def from_state(cls, n: int, mean: np.ndarray, scatter: np.ndarray) -> RunningGaussian:
        """The accumulator :meth:`state` describes (its scatter's lower triangle is ignored)."""
        mean = np.asarray(mean, dtype=np.float64)
        scatter = np.asarray(scatter, dtype=np.float64)
        if mean.ndim != 1 or scatter.shape != (mean.shape[0], mean.shape[0]) or int(n) < 0:
            raise InputError(
                f"a partial result needs n >= 0, mean (d,) and scatter (d, d); got n={n}, "
                f"shapes {mean.shape} and {scatter.shape}"
            )
        running = cls(mean.shape[0])
        running.n = int(n)
        running._mean = mean.copy()
        running._scatter = np.asfortranarray(np.triu(scatter))
        return running

    def result(self) -> GaussianStats:
        """Mean and unbiased covariance (divided by n − 1) of everything folded in so far."""
        if self.n < 2:
            raise InsufficientSamplesError(f"a covariance needs at least 2 vectors, got {self.n}")
        upper = self._scatter
        sigma = np.add(upper, upper.T, order="C")  # the strict lower triangle of upper is zero
        np.fill_diagonal(sigma, np.diagonal(upper))
        sigma /= self.n - 1
        return GaussianStats(mu=self._mean.copy(), sigma=sigma, n=self.n)


def _batch_rows(dim: int) -> int:
    """Rows per batch whose float64 working copy stays within a few tens of MiB."""
    return max(1, _CHUNK_BYTES // (8 * dim))


def gaussian_stats(
    features: np.ndarray | Iterable[np.ndarray], batch_size: int | None = None
) -> GaussianStats:
    """Mean and covariance of ``features`` in one streaming pass.

    ``features`` is a 2-D array-like (NumPy array, memmap, h5py dataset: anything sliceable
    by rows) read ``batch_size`` rows at a time, or an iterable of (m, d) batches.
    """
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be a positive number of rows, got {batch_size}")
    running = RunningGaussian()
    shape = getattr(features, "shape", None)
    if shape is not None and len(shape) == 2:
        rows = batch_size or _batch_rows(max(1, shape[1]))
        for start in range(0, shape[0], rows):
            running.update(np.asarray(features[start : start + rows]))
    elif shape is not None:
        raise InputError(f"features must have shape (n, d), got {tuple(shape)}")
    else:
        for batch in features:
            running.update(batch)
    return running.result()
