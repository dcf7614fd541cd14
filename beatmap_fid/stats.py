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

import math
import os
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import linalg
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


COVARIANCE_TOLERANCE = 1e-6
"""How far a covariance may be from symmetric positive semi-definite, relative to its scale.

Symmetry: ``|sigma − sigmaᵀ|`` at most this times its largest entry. Semi-definiteness: no
eigenvalue below minus this times ``‖sigma‖_F`` (the Frobenius norm, which bounds the largest
eigenvalue). Storing a covariance in float32 rounds each entry by at most 2⁻²⁴ ≈ 6e-8 of it,
which keeps it symmetric and moves its eigenvalues by at most 6e-8·‖sigma‖_F (Weyl), so the
tolerance is 16 times what float32 files need; covariances accumulated in float64 are off by
about 1e-16. A matrix beyond it is not a covariance, and would give a wrong distance.
"""


@dataclass(eq=False)
class GaussianStats:
    """Mean ``mu`` (d,) and covariance ``sigma`` (d, d) of a set of vectors, both float64.

    ``n`` is the number of vectors they were computed from (at least 2), or None when unknown
    (statistics files written by pytorch-fid or clean-fid do not record it).

    Checked on construction: real finite numbers, matching shapes, ``n`` a whole number >= 2,
    ``sigma`` symmetric with a non-negative diagonal (to :data:`COVARIANCE_TOLERANCE`).
    :meth:`load` also checks that ``sigma`` is positive semi-definite (a Cholesky
    factorisation; :func:`check_positive_semidefinite` does it for statistics built in memory).
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None

    def __post_init__(self) -> None:
        self.mu = _real_array(self.mu, "mu")
        self.sigma = _real_array(self.sigma, "sigma")
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
            self.n = _sample_count(self.n)
        _check_symmetric(self.sigma)

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

        Raises StoreError when the file is missing, not an ``.npz`` archive, or lacks
        ``mu``/``sigma``; InputError (or its subclasses NonFiniteError,
        InsufficientSamplesError) when an array has the wrong type or shape, ``n`` is not a
        whole number >= 2, or ``sigma`` is not a symmetric positive semi-definite matrix.
        Array headers are checked before any array is read, so a file cannot make the reader
        allocate more than it holds.
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"statistics file {path} does not exist")
        try:
            with zipfile.ZipFile(path) as archive:
                members = {name.removesuffix(".npy"): name for name in archive.namelist()}
                missing = [key for key in ("mu", "sigma") if key not in members]
                if missing:
                    raise StoreError(
                        f"{path} is not a statistics file: it lacks {', '.join(missing)} "
                        f"(found keys: {', '.join(sorted(members)) or 'none'})"
                    )
                mu = _read_member(archive, members["mu"], "mu", None)
                n = None
                if "n" in members:
                    n = _read_member(archive, members["n"], "n", ())
                d = mu.shape[0] if mu.ndim == 1 else 0
                sigma = _read_member(archive, members["sigma"], "sigma", (d, d))
            stats = cls(mu=mu, sigma=sigma, n=None if n is None else n[()])
            check_positive_semidefinite(stats.sigma)
        except InputError as err:
            raise type(err)(f"{path}: {err}") from err
        except (OSError, EOFError, ValueError, RuntimeError, zlib.error, zipfile.BadZipFile) as err:
            raise StoreError(f"cannot read statistics file {path}: {err}") from err
        return stats


def _real_array(value: object, name: str) -> np.ndarray:
    """``value`` as a float64 array; complex numbers, text and objects are refused."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} is not an array of numbers: {err}") from err
    if array.dtype.kind == "c":
        raise InputError(f"{name} is complex ({array.dtype}): statistics must be real")
    if array.dtype.kind not in "iuf":
        raise InputError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def _sample_count(n: object) -> int:
    """``n`` as an int: a whole number (Python or NumPy integer, or a 0-d integer array) >= 2."""
    array = np.asarray(n)
    if array.shape != () or array.dtype.kind not in "iu":
        raise InputError(f"n must be a whole number of vectors, got {n!r} ({array.dtype})")
    count = int(array)
    if count < 2:
        raise InsufficientSamplesError(
            f"n = {count}: statistics need at least 2 vectors (a covariance of fewer is undefined)"
        )
    return count


def _check_symmetric(sigma: np.ndarray) -> None:
    """Refuse a ``sigma`` that is not symmetric or has a negative variance (cheap, O(d²))."""
    scale = float(np.abs(sigma).max())
    if scale == 0.0:
        return
    asymmetry = float(np.abs(sigma - sigma.T).max())
    if asymmetry > COVARIANCE_TOLERANCE * scale:
        raise InputError(
            f"sigma is not symmetric: sigma - sigma.T reaches {asymmetry:.3g}, above "
            f"{COVARIANCE_TOLERANCE:g} of its largest entry {scale:.3g}; it is not a covariance"
        )
    variances = np.diagonal(sigma)
    lowest = int(np.argmin(variances))
    if variances[lowest] < -COVARIANCE_TOLERANCE * scale:
        raise InputError(
            f"sigma has a negative variance ({variances[lowest]:.3g} at index {lowest}); it is "
            "not a covariance"
        )


def check_positive_semidefinite(sigma: np.ndarray) -> None:
    """Refuse a symmetric ``sigma`` with an eigenvalue below ``−tol·‖sigma‖_F``.

    ``tol`` is :data:`COVARIANCE_TOLERANCE`. One Cholesky factorisation of
    ``sigma + tol·‖sigma‖_F·I``, which exists exactly when every eigenvalue of ``sigma`` is
    above ``−tol·‖sigma‖_F`` (a third of the cost of computing the eigenvalues).
    """
    scale = float(np.linalg.norm(sigma))
    if scale == 0.0:
        return
    shifted = np.array(sigma, dtype=np.float64, order="F")
    shifted.flat[:: shifted.shape[0] + 1] += COVARIANCE_TOLERANCE * scale
    try:
        linalg.cholesky(shifted, lower=True, overwrite_a=True, check_finite=False)
    except linalg.LinAlgError:
        raise InputError(
            f"sigma is not positive semi-definite (an eigenvalue is below "
            f"-{COVARIANCE_TOLERANCE:g} x its norm {scale:.3g}); it is not a covariance"
        ) from None


def _read_member(
    archive: zipfile.ZipFile, member: str, name: str, shape: tuple[int, ...] | None
) -> np.ndarray:
    """One array of an ``.npz`` archive, its header checked before its data is read.

    ``shape``: the shape it must have (None: any 1-D shape).
    """
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            found, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            found, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise InputError(f"{name} is stored in .npy format {version}, not 1.0 or 2.0")
    if dtype.kind == "c":
        raise InputError(f"{name} is complex ({dtype}): statistics must be real")
    if name == "n" and dtype.kind not in "iu":
        raise InputError(f"n must be a whole number, got dtype {dtype}")
    if dtype.kind not in "iuf":
        raise InputError(f"{name} must hold real numbers, got dtype {dtype}")
    if (shape is None and len(found) != 1) or (shape is not None and found != shape):
        expected = "(d,)" if shape is None else str(shape)
        raise InputError(f"{name} must have shape {expected}, got {found}")
    declared = dtype.itemsize * math.prod(found)
    if declared > archive.getinfo(member).file_size:
        raise InputError(f"{name} declares {declared} bytes, more than its archive member holds")
    with archive.open(member) as handle:
        return np.lib.format.read_array(handle, allow_pickle=False)


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
            scatter = np.triu(other.sigma) * (count - 1)
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
