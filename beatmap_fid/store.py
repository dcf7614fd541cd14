"""HDF5 embedding stores: one file holds the vectors of one extractor configuration.

A store has the datasets ``vectors`` (float32, N × D), ``ids`` (UTF-8 strings), once some
row has a label ``labels``, and once some row's events were counted ``n_events`` (int32, the
beatmap events of the item, 0 for an empty window, −1 where not counted); and file attributes
naming the extractor, its configuration and hash, the library version and the format version.
The full format is documented in ``embeddings/README.md``.

Writes are crash safe at batch granularity: a writer writes a batch's rows, flushes, then
raises the ``n_rows`` attribute and flushes again. Readers trust ``n_rows`` and ignore any
rows beyond it, so a writer killed between or inside batches leaves every completed batch
readable, and the next writer overwrites the half-written tail. Opening a store first repairs
the one inconsistency a kill inside HDF5's own flush leaves behind (a stale end-of-allocation
address, see :func:`_extend_allocation_to_file_end`). One writer at a time holds an exclusive
lock on ``<store>.lock``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from beatmap_fid._version import __version__
from beatmap_fid.errors import (
    ConfigMismatchError,
    DimensionMismatchError,
    InputError,
    NonFiniteError,
    StoreError,
    StoreLockedError,
)

if TYPE_CHECKING:
    from beatmap_fid.stats import GaussianStats

if sys.platform != "win32":
    import fcntl
else:  # readers work everywhere; writers need POSIX file locks
    fcntl = None

FORMAT_VERSION = 1
"""Version of the on-disk layout written by this library (see ``embeddings/README.md``)."""

CHUNK_BYTES = 1 << 20  # target size of one ``vectors`` chunk (whole rows)
BLOCK_BYTES = 64 << 20  # target size of one block read by ``iter_blocks``
STRING_CHUNK_ROWS = 4096  # rows per chunk of ``ids`` and ``labels``
# The low bound keeps the superblock at version 0: a version-3 superblock (libver "latest")
# records "open for writing" in the file, and a killed writer would leave the store
# unopenable. The high bound keeps newer HDF5 features out of the file.
LIBVER = ("earliest", "v110")
METADATA_CACHE_BYTES = 16 << 20
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # stores begin with it (no user block)

_REQUIRED_ATTRIBUTES = (
    "format_version",
    "extractor",
    "config",
    "config_hash",
    "library_version",
    "dim",
    "n_rows",
)
_STRING = h5py.string_dtype("utf-8")
_ROW_DATASETS = ("vectors", "ids", "labels", "n_events")  # one entry per row
NOT_COUNTED = -1
"""``n_events`` of rows whose events were not counted."""


def canonical_config_json(config: dict[str, Any]) -> str:
    """The JSON text stored for ``config``: sorted keys, no spaces (what its hash is taken of)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def vector_chunk_rows(dim: int) -> int:
    """Rows per ``vectors`` chunk: whole rows, about :data:`CHUNK_BYTES` per chunk."""
    return max(1, CHUNK_BYTES // (4 * dim))


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _lock_holder(lock_path: Path) -> str:
    """'pid N' from a writer's lock file, or a vaguer phrase when it cannot be read."""
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


def superblock_eoa_field(header: bytes) -> tuple[int, int] | None:
    """(byte offset, size) of the end-of-allocation address in a version 0 or 1 superblock.

    None for other superblock versions (which this library does not write). The address is
    relative to the base address stored just before it (0 in the stores written here).
    """
    if header[: len(HDF5_SIGNATURE)] != HDF5_SIGNATURE or header[8] not in (0, 1):
        return None
    offset_size = header[13]
    base_at = 24 + (4 if header[8] == 1 else 0)
    return base_at + 2 * offset_size, offset_size


def _extend_allocation_to_file_end(path: Path) -> None:
    """Make the end of allocation (EOA) recorded in the superblock cover the whole file.

    HDF5 writes the superblock, which records the EOA, after the rest of the metadata when
    it flushes. A writer killed inside a flush can leave on disk a block it had grown (a heap
    collection that also holds committed ids, say) reaching past the recorded EOA, and HDF5
    then refuses to read it ("actual len exceeds EOA"). Raising the EOA to the file size, as
    ``h5clear --increment=0`` does, makes every committed row readable again; space that the
    killed writer allocated for uncommitted rows is merely wasted. A cleanly closed file
    ends exactly at its EOA and is left alone, and so is a file that any process holds open
    (HDF5 holds a ``flock`` on open files) or that this process may not write.
    """
    if fcntl is None:
        return
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        header = os.pread(fd, 64, 0)
        field = superblock_eoa_field(header)
        if field is None:
            return
        at, size = field
        base = int.from_bytes(header[at - 2 * size : at - size], "little")
        eoa = int.from_bytes(header[at : at + size], "little")
        file_size = os.fstat(fd).st_size
        if base + eoa < file_size:
            os.pwrite(fd, (file_size - base).to_bytes(size, "little"), at)
    except OSError:
        return
    finally:
        os.close(fd)  # also drops the flock


def _open_hdf5(path: Path, mode: str) -> h5py.File:
    """Open ``path`` with HDF5's default file locking, turning failures into StoreErrors."""
    if not path.exists():
        raise StoreError(f"no embedding store at {path}")
    if not path.is_file():
        raise StoreError(f"{path} is not a file (expected an HDF5 embedding store)")
    with open(path, "rb") as file:
        if file.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            raise StoreError(
                f"{path} is not an HDF5 file (wrong path, or a file that is not an embedding store)"
            )
    _extend_allocation_to_file_end(path)
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        message = str(exc)
        if "unable to lock file" in message or "already open" in message:
            if mode == "r":
                holder = _lock_holder(_lock_path(path))
                who = f"is being written by {holder}"
            else:
                who = "is open elsewhere (a reader in this or another process, or another program)"
            raise StoreLockedError(f"{path} {who}; wait until it has finished, then retry") from exc
        if "unable to open file" in message:  # the operating system refused, e.g. permissions
            raise StoreError(f"cannot open {path}: {message}") from exc
        raise StoreError(f"{path} is truncated or corrupt and cannot be opened: {message}") from exc


def _check_layout(file: h5py.File, path: Path) -> int:
    """Validate a store's attributes and datasets; the committed row count."""
    missing = [name for name in _REQUIRED_ATTRIBUTES if name not in file.attrs]
    if missing:
        raise StoreError(
            f"{path} is an HDF5 file but not a beatmap_fid embedding store "
            f"(missing attributes: {', '.join(missing)})"
        )
    version = int(file.attrs["format_version"])
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{path} has store format version {version}, newer than the version this "
            f"library reads ({FORMAT_VERSION}); upgrade beatmap_fid"
        )
    n_rows = int(file.attrs["n_rows"])
    dim = int(file.attrs["dim"])
    for name in ("vectors", "ids"):
        if name not in file:
            raise StoreError(f"{path} is malformed: dataset {name!r} is missing")
    vectors = file["vectors"]
    if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.dtype != np.float32:
        raise StoreError(
            f"{path} is malformed: 'vectors' is {vectors.dtype} {vectors.shape}, "
            f"expected float32 (N, {dim})"
        )
    for name in _ROW_DATASETS:
        if name in file and file[name].shape[0] < n_rows:
            raise StoreError(
                f"{path} is malformed: {name!r} has {file[name].shape[0]} rows but "
                f"{n_rows} are committed"
            )
    return n_rows


def _text_attribute(file: h5py.File, name: str) -> str:
    value = file.attrs[name]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class EmbeddingStore:
    """Read-only view of the committed rows of an embedding store."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = _open_hdf5(self.path, "r")
        try:
            self._n_rows = _check_layout(self._file, self.path)
            self.dim = int(self._file.attrs["dim"])
            self.extractor = _text_attribute(self._file, "extractor")
            self.config_hash = _text_attribute(self._file, "config_hash")
            self.library_version = _text_attribute(self._file, "library_version")
            self.format_version = int(self._file.attrs["format_version"])
            self._config_json = _text_attribute(self._file, "config")
            try:
                json.loads(self._config_json)
            except json.JSONDecodeError as exc:
                raise StoreError(f"{self.path} is malformed: its config is not JSON") from exc
        except BaseException:
            self._file.close()
            raise
        self._vectors = self._file["vectors"]
        self._ids: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._n_events: np.ndarray | None = None

    @property
    def config(self) -> dict[str, Any]:
        """The extractor configuration the vectors were made with (a fresh copy)."""
        return json.loads(self._config_json)

    def __len__(self) -> int:
        return self._n_rows

    def __repr__(self) -> str:
        return (
            f"EmbeddingStore({str(self.path)!r}, extractor={self.extractor!r}, "
            f"rows={self._n_rows}, dim={self.dim})"
        )

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk of ``vectors`` (1 for a contiguous dataset)."""
        chunks = self._vectors.chunks
        return chunks[0] if chunks else 1

    @property
    def ids(self) -> np.ndarray:
        """Row ids, an object array of str (read once, then cached)."""
        if self._ids is None:
            self._ids = self._file["ids"].asstr()[: self._n_rows]
        return self._ids

    @property
    def labels(self) -> np.ndarray | None:
        """Row labels as an object array of str ("" = no label), or None without labels."""
        if "labels" not in self._file:
            return None
        if self._labels is None:
            self._labels = self._file["labels"].asstr()[: self._n_rows]
        return self._labels

    @property
    def n_events(self) -> np.ndarray | None:
        """Beatmap events per row, int32 (0: an empty window; −1: not counted), or None when
        the extractor counted none (see :attr:`beatmap_fid.extractors.base.Item.n_events`)."""
        if "n_events" not in self._file:
            return None
        if self._n_events is None:
            self._n_events = self._file["n_events"][: self._n_rows].astype(np.int32)
        return self._n_events

    def _block_rows(self, block_rows: int | None) -> int:
        chunk = self.chunk_rows
        if block_rows is None:
            return chunk * max(1, BLOCK_BYTES // (chunk * 4 * self.dim))
        if block_rows < 1:
            raise InputError(f"block_rows must be at least 1, got {block_rows}")
        return block_rows if block_rows < chunk else block_rows - block_rows % chunk

    def iter_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start_row, float32 block)`` over all rows in order, each row exactly once.

        Blocks are whole chunks (about 64 MiB by default); a ``block_rows`` of at least one
        chunk is rounded down to whole chunks so that every read is chunk aligned.
        """
        step = self._block_rows(block_rows)
        for start in range(0, self._n_rows, step):
            yield start, self._vectors[start : min(start + step, self._n_rows)]

    def vectors(self, rows: int | slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 vectors of all rows, a slice, an int, or an index / boolean mask array.

        Index arrays are read in sorted order, one contiguous range per chunk, and returned
        in the order asked for (negative indices count from the end, repeats are allowed).
        """
        n = self._n_rows
        if rows is None:
            return self._vectors[:n]
        if isinstance(rows, slice):
            start, stop, step = rows.indices(n)
            if step == 1:
                return self._vectors[start:stop] if start < stop else self._empty()
            return self._take(np.arange(start, stop, step))
        if isinstance(rows, (int, np.integer)):
            return self._take(np.array([rows]))[0]
        index = np.asarray(rows)
        if index.dtype == bool:
            if index.shape != (n,):
                raise InputError(f"boolean row mask has shape {index.shape}, expected ({n},)")
            return self._take(np.flatnonzero(index))
        if index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
            raise InputError("rows must be None, an int, a slice, or a 1-D integer or bool array")
        return self._take(index.astype(np.int64))

    def _empty(self) -> np.ndarray:
        return np.empty((0, self.dim), dtype=np.float32)

    def _take(self, index: np.ndarray) -> np.ndarray:
        n = self._n_rows
        if index.size == 0:
            return self._empty()
        if index.min() < -n or index.max() >= n:
            raise InputError(f"row index out of range for a store of {n} rows")
        index = np.where(index < 0, index + n, index)
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        chunk_of = sorted_index // self.chunk_rows
        out = np.empty((index.size, self.dim), dtype=np.float32)
        for group in np.split(np.arange(index.size), np.flatnonzero(np.diff(chunk_of)) + 1):
            low, high = sorted_index[group[0]], sorted_index[group[-1]] + 1
            out[order[group]] = self._vectors[low:high][sorted_index[group] - low]
        return out

    def statistics(self, block_rows: int | None = None, *, progress: bool = False) -> GaussianStats:
        """Mean and covariance of all rows in one streaming pass (float64, O(D²) memory)."""
        from beatmap_fid.stats import RunningGaussian

        running = RunningGaussian(self.dim)
        with tqdm(
            total=self._n_rows,
            desc=f"statistics {self.path.name}",
            unit="row",
            disable=not progress,
        ) as bar:
            for _, block in self.iter_blocks(block_rows):
                running.update(block)
                bar.update(len(block))
        return running.result()

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._file.close()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_store(path: str | Path) -> EmbeddingStore:
    """Open the store at ``path`` for reading."""
    return EmbeddingStore(path)


class _WriterLock:
    """Exclusive non-blocking ``flock`` on ``<store>.lock``, which holds the writer's pid.

    The kernel drops the lock when its process dies, so a killed writer never blocks the
    next one. The lock file is removed on release; a writer that locked a file removed
    meanwhile notices (different inode) and locks the new one instead.
    """

    def __init__(self, store_path: Path) -> None:
        if fcntl is None:
            raise StoreError("writing embedding stores needs POSIX file locks (fcntl)")
        self.path = _lock_path(store_path)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreError(f"cannot create the lock file {self.path}: {exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreLockedError(
                    f"{store_path} is being written by {_lock_holder(self.path)} (lock file "
                    f"{self.path}); wait for that writer to finish or stop it, since every "
                    "batch it completed stays in the store"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise StoreError(
                    f"cannot lock {self.path}: {exc}; write stores on a local file system"
                ) from exc
            try:
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing the descriptor drops the lock
        self._fd = None


def _validated_ids(ids: Iterable[str]) -> list[str]:
    out = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
    for item_id in out:
        if not isinstance(item_id, str) or not item_id:
            raise InputError(f"ids must be non-empty str, got {item_id!r}")
    return out


def _validated_vectors(vectors: Any, dim: int, n: int) -> np.ndarray:
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise InputError(f"vectors must be a 2-D array (n, {dim}), got shape {array.shape}")
    if array.shape[1] != dim:
        raise DimensionMismatchError(
            f"vectors have dimension {array.shape[1]} but the store holds dimension {dim}"
        )
    if array.shape[0] != n:
        raise InputError(f"{array.shape[0]} vectors for {n} ids; pass one vector per id")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"vectors must be real numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf: caught as non-finite
        return np.ascontiguousarray(array, dtype=np.float32)


def _validated_counts(counts: Iterable[int | None], n: int) -> np.ndarray:
    out = list(counts)
    if len(out) != n:
        raise InputError(f"{len(out)} event counts for {n} ids; pass one count (or None) per id")
    for count in out:
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0
        ):
            raise InputError(f"event counts must be non-negative ints or None, got {count!r}")
    return np.array([NOT_COUNTED if c is None else c for c in out], dtype=np.int32)


def _validated_labels(labels: Iterable[str | None], n: int) -> list[str]:
    out = ["" if label is None else label for label in labels]
    if len(out) != n:
        raise InputError(f"{len(out)} labels for {n} ids; pass one label (or None) per id")
    for label in out:
        if not isinstance(label, str):
            raise InputError(f"labels must be str or None, got {label!r}")
    return out


class StoreWriter:
    """Creates a store or appends to one, one batch at a time, as the only writer.

    Reopening an existing store checks that it holds the same extractor name, config hash
    and dimension, discards rows a killed writer left uncommitted, and loads the stored ids
    so that :meth:`append` skips them.
    """

    def __init__(self, path: str | Path, extractor: str, config: dict[str, Any], dim: int) -> None:
        if not isinstance(extractor, str) or not extractor:
            raise InputError(f"extractor must be a non-empty name, got {extractor!r}")
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise InputError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(config, dict):
            raise InputError(f"config must be a dict, got {type(config).__name__}")
        # Imported here: importing the extractors package loads every extractor module,
        # which readers of a store never need.
        from beatmap_fid.extractors.base import config_hash

        self.path = Path(path)
        self.extractor = extractor
        self.config_hash = config_hash(config)
        self.dim = int(dim)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _WriterLock(self.path)
        try:
            if not self.path.exists():
                self._create(config)
            self._file = _open_hdf5(self.path, "r+")
            try:
                self._open_existing()
            except BaseException:
                self._file.close()
                raise
        except BaseException:
            self._lock.release()
            raise
        self._cache_config = self._file.id.get_mdc_config()
        self._cache_config.incr_mode = 0  # fixed size: required to switch evictions off
        self._cache_config.flash_incr_mode = 0
        self._cache_config.decr_mode = 0
        self._cache_config.set_initial_size = True
        self._cache_config.initial_size = METADATA_CACHE_BYTES
        self._cache_config.max_size = max(self._cache_config.max_size, METADATA_CACHE_BYTES)
        self._set_metadata_evictions(True)

    def _create(self, config: dict[str, Any]) -> None:
        """Write an empty store under a temporary name, then rename it into place."""
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with h5py.File(temporary, "w", libver=LIBVER) as file:
                file.attrs["format_version"] = FORMAT_VERSION
                file.attrs["extractor"] = self.extractor
                file.attrs["config"] = canonical_config_json(config)
                file.attrs["config_hash"] = self.config_hash
                file.attrs["library_version"] = __version__
                file.attrs["dim"] = self.dim
                file.attrs["n_rows"] = 0
                file.create_dataset(
                    "vectors",
                    shape=(0, self.dim),
                    maxshape=(None, self.dim),
                    dtype=np.float32,
                    chunks=(vector_chunk_rows(self.dim), self.dim),
                )
                file.create_dataset(
                    "ids", shape=(0,), maxshape=(None,), dtype=_STRING, chunks=(STRING_CHUNK_ROWS,)
                )
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)

    def _open_existing(self) -> None:
        file = self._file
        self._n_rows = _check_layout(file, self.path)
        stored_extractor = _text_attribute(file, "extractor")
        stored_hash = _text_attribute(file, "config_hash")
        if stored_extractor != self.extractor or stored_hash != self.config_hash:
            raise ConfigMismatchError(
                f"{self.path} holds vectors of extractor {stored_extractor!r} with config hash "
                f"{stored_hash}, but this writer has extractor {self.extractor!r} with config "
                f"hash {self.config_hash}; write to another store (one store per extractor "
                "configuration) or use the store's configuration"
            )
        stored_dim = int(file.attrs["dim"])
        if stored_dim != self.dim:
            raise DimensionMismatchError(
                f"{self.path} holds vectors of dimension {stored_dim}, but this writer has "
                f"dimension {self.dim}; write to another store"
            )
        for name in _ROW_DATASETS:
            if name in file and file[name].shape[0] > self._n_rows:
                file[name].resize(self._n_rows, axis=0)  # drop an uncommitted tail
        file.flush()
        self._vectors = file["vectors"]
        self._ids_dataset = file["ids"]
        self._ids = set(self._ids_dataset.asstr()[: self._n_rows].tolist())

    def _set_metadata_evictions(self, enabled: bool) -> None:
        # With evictions off, HDF5 keeps dirty metadata in memory until the next flush, so a
        # writer killed inside a batch leaves the metadata of the last flush on disk.
        self._cache_config.evictions_enabled = enabled
        self._file.id.set_mdc_config(self._cache_config)

    @property
    def existing_ids(self) -> set[str]:
        """Ids of the committed rows (the live set: do not modify it)."""
        return self._ids

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def __len__(self) -> int:
        return self._n_rows

    def append(
        self,
        ids: Iterable[str],
        vectors: Any,
        labels: Iterable[str | None] | None = None,
        n_events: Iterable[int | None] | None = None,
    ) -> int:
        """Write the rows whose ids are new and commit them; the number of rows written.

        ``n_events``: the beatmap events of each item (None where not counted). Ids already
        stored, and repeats within the batch after their first occurrence, are skipped. A
        batch with a NaN or infinite vector is rejected whole (NonFiniteError).
        """
        ids = _validated_ids(ids)
        array = _validated_vectors(vectors, self.dim, len(ids))
        label_list = None if labels is None else _validated_labels(labels, len(ids))
        counts = None if n_events is None else _validated_counts(n_events, len(ids))
        finite = np.isfinite(array).all(axis=1)
        if not finite.all():
            bad = [ids[i] for i in np.flatnonzero(~finite)]
            raise NonFiniteError(
                f"{len(bad)} of {len(ids)} vectors contain NaN or infinity (ids: "
                f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); nothing of this "
                "batch was written. Check the inputs of those items or leave them out"
            )
        keep: list[int] = []
        seen: set[str] = set()
        for row, item_id in enumerate(ids):
            if item_id not in self._ids and item_id not in seen:
                seen.add(item_id)
                keep.append(row)
        if not keep:
            return 0
        new_ids = [ids[row] for row in keep]
        new_labels = None if label_list is None else [label_list[row] for row in keep]
        new_counts = None if counts is None else counts[keep]
        self._write(new_ids, array[keep], new_labels, new_counts)
        return len(keep)

    def _write(
        self,
        ids: list[str],
        vectors: np.ndarray,
        labels: list[str] | None,
        n_events: np.ndarray | None = None,
    ) -> None:
        start, stop = self._n_rows, self._n_rows + len(ids)
        file = self._file
        self._set_metadata_evictions(False)
        try:
            self._vectors.resize(stop, axis=0)
            self._vectors[start:stop] = vectors
            self._ids_dataset.resize(stop, axis=0)
            self._ids_dataset[start:stop] = np.array(ids, dtype=object)
            if "labels" not in file and labels is not None and any(labels):
                file.create_dataset(
                    "labels",
                    data=np.array([""] * start, dtype=object),
                    maxshape=(None,),
                    dtype=_STRING,
                    chunks=(STRING_CHUNK_ROWS,),
                )
            if "labels" in file:
                label_dataset = file["labels"]
                label_dataset.resize(stop, axis=0)
                label_dataset[start:stop] = np.array(labels or [""] * len(ids), dtype=object)
            if "n_events" not in file and n_events is not None:
                file.create_dataset(
                    "n_events",
                    data=np.full(start, NOT_COUNTED, dtype=np.int32),
                    maxshape=(None,),
                    chunks=(STRING_CHUNK_ROWS,),
                )
            if "n_events" in file:
                count_dataset = file["n_events"]
                count_dataset.resize(stop, axis=0)
                count_dataset[start:stop] = (
                    n_events if n_events is not None else np.full(len(ids), NOT_COUNTED)
                )
            file.flush()  # the rows are on disk before the count that makes them visible
            file.attrs["n_rows"] = stop
            file.flush()
        finally:
            self._set_metadata_evictions(True)
        self._n_rows = stop
        self._ids.update(ids)

    def close(self) -> None:
        """Flush, close the file and release the lock (idempotent)."""
        if self._file.id.valid:
            self._file.close()
        self._lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def merge_stores(
    sources: Sequence[str | Path], output: str | Path, *, progress: bool = False
) -> Path:
    """Merge stores of one extractor configuration into a new store at ``output``.

    Rows are copied in source order, block by block; an id present in several sources keeps
    its first occurrence. Sources with another extractor or config hash raise
    ConfigMismatchError, another dimension DimensionMismatchError.
    """
    output = Path(output)
    paths = [Path(source) for source in sources]
    if not paths:
        raise InputError("merge_stores needs at least one source store")
    if output.exists():
        raise StoreError(f"{output} already exists; merge into a new path or remove it first")
    with ExitStack() as stack:
        stores = [stack.enter_context(EmbeddingStore(path)) for path in paths]
        first = stores[0]
        for store in stores[1:]:
            if (store.extractor, store.config_hash) != (first.extractor, first.config_hash):
                raise ConfigMismatchError(
                    f"cannot merge {store.path} (extractor {store.extractor!r}, config hash "
                    f"{store.config_hash}) with {first.path} (extractor {first.extractor!r}, "
                    f"config hash {first.config_hash}); merge only shards of one configuration"
                )
            if store.dim != first.dim:
                raise DimensionMismatchError(
                    f"cannot merge {store.path} (dimension {store.dim}) with {first.path} "
                    f"(dimension {first.dim})"
                )
        total = sum(len(store) for store in stores)
        writer = stack.enter_context(StoreWriter(output, first.extractor, first.config, first.dim))
        bar = stack.enter_context(
            tqdm(total=total, desc=f"merging into {output.name}", unit="row", disable=not progress)
        )
        for store in stores:
            ids, labels, counts = store.ids, store.labels, store.n_events
            for start, block in store.iter_blocks():
                stop = start + len(block)
                writer.append(
                    ids[start:stop],
                    block,
                    None if labels is None else labels[start:stop],
                    None if counts is None else [c if c >= 0 else None for c in counts[start:stop]],
                )
                bar.update(len(block))
    return output
