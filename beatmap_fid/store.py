"""HDF5 embedding stores: one file holds the vectors of one extractor configuration.

A store holds float32 ``vectors`` (N × D), a UTF-8 id per row, optional labels, a fingerprint
of the inputs behind each row, the beatmap events each row's window holds (0 for an empty
window, −1 where not counted), and file attributes naming the extractor, its configuration and
hash, the library version and the format version. The full format is documented in
``embeddings/README.md``.

Writes are crash safe at batch granularity. The writer uses HDF5's single-writer mode (SWMR),
whose ordered flushes keep the file on disk consistent at every instant, and stores strings
as bytes plus end offsets (fixed-size datasets, no global heap). A batch is written, flushed,
recorded in the ``commits`` table with checksums of its rows, flushed, and only then counted
in ``n_commits``: readers see committed batches only, so a writer killed at any point leaves
every completed batch readable and the next writer overwrites the half-written tail. Opening a
store that a killed writer left first clears the marks HDF5 leaves in such a file (what
``h5clear --status --increment=0`` does). One writer at a time holds an exclusive lock on
``<store>.lock``.

Stores of format version 1 (variable-length strings, an ``n_rows`` attribute) are read as
they are, and rewritten in the current format when a writer opens them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, nullcontext
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
    StoreFullError,
    StoreLockedError,
)

if TYPE_CHECKING:
    from beatmap_fid.shards import ShardedStore
    from beatmap_fid.stats import GaussianStats

if sys.platform != "win32":
    import fcntl
else:  # readers work everywhere; writers need POSIX file locks
    fcntl = None

FORMAT_VERSION = 2
"""Version of the on-disk layout written by this library (see ``embeddings/README.md``)."""

CHUNK_BYTES = 1 << 20  # target size of one ``vectors`` chunk (whole rows)
BLOCK_BYTES = 64 << 20  # target size of one block read by ``iter_blocks``
ROW_CHUNK_ROWS = 4096  # rows per chunk of the per-row datasets other than ``vectors``
BYTE_CHUNK = 1 << 16  # bytes per chunk of the string byte datasets
COMMIT_CHUNK_ROWS = 1024
# SWMR writing needs the v110 file format (superblock version 3, which records "open for
# writing" in the file: a killed writer's mark is cleared by ``_recover_after_kill``).
LIBVER = ("v110", "v110")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # stores begin with it (no user block)
RESERVE_MARGIN = 1 << 20
"""Disk space reserved for HDF5's own metadata beyond twice a batch's size (see
:meth:`StoreWriter._reserve`)."""

FINGERPRINT_BYTES = 32
"""Length of a row fingerprint: 32 hexadecimal digits (see :meth:`StoreWriter.append`)."""
_FINGERPRINT = np.dtype(f"S{FINGERPRINT_BYTES}")
_STRING = h5py.string_dtype("utf-8")

_REQUIRED_ATTRIBUTES = ("format_version", "extractor", "config", "config_hash", "library_version")
_STRING_COLUMNS = ("ids", "labels")
_V2_DATASETS = (
    "vectors",
    "ids_bytes",
    "ids_ends",
    "labels_bytes",
    "labels_ends",
    "fingerprints",
    "n_events",
    "commits",
    "n_commits",
)
NOT_COUNTED = -1
"""``n_events`` of rows whose events were not counted."""


def canonical_config_json(config: dict[str, Any]) -> str:
    """The JSON text stored for ``config``: sorted keys, no spaces (what its hash is taken of)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def vector_chunk_rows(dim: int) -> int:
    """Rows per ``vectors`` chunk: whole rows, about :data:`CHUNK_BYTES` per chunk."""
    return max(1, CHUNK_BYTES // (4 * dim))


def batch_checksums(
    vectors: np.ndarray,
    ids: Sequence[str],
    labels: Sequence[str],
    prints: Sequence[str],
    n_events: Sequence[int],
) -> tuple[int, int]:
    """Checksums of one committed batch: of its float32 vector bytes, and of its other
    columns (ids, labels, fingerprints, event counts) as text."""
    vector_sum = hashlib.blake2b(np.ascontiguousarray(vectors, "<f4").tobytes(), digest_size=8)
    counts = ",".join(str(int(count)) for count in n_events)
    strings = "\x1e".join(["\x1f".join(ids), "\x1f".join(labels), "".join(prints), counts])
    string_sum = hashlib.blake2b(strings.encode("utf-8"), digest_size=8)
    return int.from_bytes(vector_sum.digest(), "little"), int.from_bytes(
        string_sum.digest(), "little"
    )


# -- locks --------------------------------------------------------------------------------


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _lock_holder(lock_path: Path) -> str:
    """'pid N' from a writer's lock file, or a vaguer phrase when it cannot be read."""
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


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

    def __enter__(self) -> _WriterLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


# -- recovery of a file a killed writer left ------------------------------------------------


def _rot(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & 0xFFFFFFFF


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: the checksum of HDF5's version 2/3 superblocks."""
    mask = 0xFFFFFFFF
    a = b = c = (0xDEADBEEF + len(data) + initval) & mask
    blocks = max(1, -(-len(data) // 12))
    words = data.ljust(12 * blocks, b"\0")
    for index in range(blocks):
        a = (a + int.from_bytes(words[12 * index : 12 * index + 4], "little")) & mask
        b = (b + int.from_bytes(words[12 * index + 4 : 12 * index + 8], "little")) & mask
        c = (c + int.from_bytes(words[12 * index + 8 : 12 * index + 12], "little")) & mask
        if index == blocks - 1:
            break
        a = (a - c) & mask ^ _rot(c, 4)
        c = (c + b) & mask
        b = (b - a) & mask ^ _rot(a, 6)
        a = (a + c) & mask
        c = (c - b) & mask ^ _rot(b, 8)
        b = (b + a) & mask
        a = (a - c) & mask ^ _rot(c, 16)
        c = (c + b) & mask
        b = (b - a) & mask ^ _rot(a, 19)
        a = (a + c) & mask
        c = (c - b) & mask ^ _rot(b, 4)
        b = (b + a) & mask
    if not data:
        return c
    c = (c ^ b) - _rot(b, 14) & mask
    a = (a ^ c) - _rot(c, 11) & mask
    b = (b ^ a) - _rot(a, 25) & mask
    c = (c ^ b) - _rot(b, 16) & mask
    a = (a ^ c) - _rot(c, 4) & mask
    b = (b ^ a) - _rot(a, 14) & mask
    c = (c ^ b) - _rot(b, 24) & mask
    return c


def superblock_eoa_field(header: bytes) -> tuple[int, int] | None:
    """(byte offset, size) of the end-of-allocation address in an HDF5 superblock.

    None when ``header`` does not start with a superblock. The address is relative to the
    base address stored just before it (0 in the stores written here).
    """
    if header[: len(HDF5_SIGNATURE)] != HDF5_SIGNATURE or len(header) < 16:
        return None
    version = header[8]
    if version in (0, 1):
        offset_size = header[13]
        return 24 + (4 if version == 1 else 0) + 2 * offset_size, offset_size
    if version in (2, 3):
        offset_size = header[9]
        return 12 + 2 * offset_size, offset_size
    return None


def _repaired_superblock(header: bytes, file_size: int) -> bytes | None:
    """The superblock with the marks a killed writer leaves undone, or None if it has none.

    Two marks: the end of allocation (EOA) recorded below the file's size (HDF5 writes the
    superblock after the blocks it grew), and, in version 2/3 superblocks, the status flag
    "open for writing". The EOA is raised to the file size and the flags cleared, with the
    superblock checksum recomputed (``h5clear --status --increment=0``).
    """
    field = superblock_eoa_field(header)
    if field is None:
        return None
    at, size = field
    base = int.from_bytes(header[at - 2 * size : at - size], "little")
    eoa = int.from_bytes(header[at : at + size], "little")
    repaired = bytearray(header)
    if base + eoa < file_size:
        repaired[at : at + size] = (file_size - base).to_bytes(size, "little")
    if header[8] in (2, 3):
        repaired[11] = 0
        end = 12 + 4 * size
        repaired[end : end + 4] = lookup3(bytes(repaired[:end])).to_bytes(4, "little")
    return bytes(repaired) if repaired != header else None


def _recover_after_kill(path: Path, lock_held: bool = False) -> None:
    """Undo the marks a killed writer left in the superblock, under the writer lock (taken
    here unless the caller holds it). A cleanly closed store is never modified."""
    if fcntl is None:
        return
    try:
        with open(path, "rb") as file:
            header = file.read(64)
            size = os.fstat(file.fileno()).st_size
    except OSError:
        return
    if _repaired_superblock(header, size) is None:
        return
    with nullcontext() if lock_held else _WriterLock(path):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise StoreError(
                f"{path} was left by a killed writer and needs one write to be usable again, "
                f"but it cannot be opened for writing ({exc.strerror}); open it once with "
                "write permission"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no HDF5 handle holds it open
            header = os.pread(fd, 64, 0)
            repaired = _repaired_superblock(header, os.fstat(fd).st_size)
            if repaired is not None:
                os.pwrite(fd, repaired, 0)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)


# -- opening and checking -----------------------------------------------------------------


def _writer_alive(path: Path) -> bool:
    """Whether a live process holds the writer lock of ``path``."""
    if fcntl is None:
        return False
    try:
        fd = os.open(_lock_path(path), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _open_hdf5(path: Path, mode: str, lock_held: bool = False) -> h5py.File:
    """Open ``path`` with HDF5's default file locking, turning failures into StoreErrors.

    ``lock_held``: the caller holds the store's writer lock (a writer, or a rewrite).
    """
    if not path.exists():
        raise StoreError(f"no embedding store at {path}")
    if not path.is_file():
        raise StoreError(
            f"{path} is not a file (expected an HDF5 embedding store; a sharded store, a "
            "folder with manifest.json, opens with open_store)"
        )
    with open(path, "rb") as file:
        if file.read(len(HDF5_SIGNATURE)) != HDF5_SIGNATURE:
            raise StoreError(
                f"{path} is not an HDF5 file (wrong path, or a file that is not an embedding store)"
            )
    if not lock_held and _writer_alive(path):
        raise StoreLockedError(
            f"{path} is being written by {_lock_holder(_lock_path(path))}; wait until it has "
            "finished, then retry"
        )
    _recover_after_kill(path, lock_held)
    try:
        return h5py.File(path, mode, libver=LIBVER if mode != "r" else None)
    except OSError as exc:
        message = str(exc)
        if "unable to lock file" in message or "already open" in message:
            who = (
                f"is being written by {_lock_holder(_lock_path(path))}"
                if mode == "r"
                else "is open elsewhere (a reader in this or another process, or another program)"
            )
            raise StoreLockedError(f"{path} {who}; wait until it has finished, then retry") from exc
        if "unable to open file" in message:  # the operating system refused, e.g. permissions
            raise StoreError(f"cannot open {path}: {message}") from exc
        raise StoreError(f"{path} is truncated or corrupt and cannot be opened: {message}") from exc


def _text_attribute(file: h5py.File, name: str) -> str:
    value = file.attrs[name]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _committed_rows(file: h5py.File, path: Path) -> tuple[int, int]:
    """(committed rows, committed batches) of a store, its layout checked on the way."""
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
    names = _V2_DATASETS if version >= 2 else ("vectors", "ids")
    for name in names:
        if name not in file:
            raise StoreError(f"{path} is malformed: dataset {name!r} is missing")
    if "dim" not in file.attrs:
        raise StoreError(f"{path} is malformed: attribute 'dim' is missing")
    dim = int(file.attrs["dim"])
    vectors = file["vectors"]
    if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.dtype != np.float32:
        raise StoreError(
            f"{path} is malformed: 'vectors' is {vectors.dtype} {vectors.shape}, "
            f"expected float32 (N, {dim})"
        )
    if version >= 2:
        n_commits = int(file["n_commits"][0])
        commits = file["commits"]
        if not 0 <= n_commits <= commits.shape[0]:
            raise StoreError(
                f"{path} is malformed: {n_commits} batches are committed but the commit table "
                f"holds {commits.shape[0]}"
            )
        n_rows = int(commits[n_commits - 1, 0]) if n_commits else 0
        row_datasets = ("vectors", "ids_ends", "labels_ends", "fingerprints", "n_events")
    else:
        n_commits = 0
        if "n_rows" not in file.attrs:
            raise StoreError(f"{path} is malformed: attribute 'n_rows' is missing")
        n_rows = int(file.attrs["n_rows"])
        row_datasets = ("vectors", "ids", "labels", "n_events")
    for name in row_datasets:
        if name in file and file[name].shape[0] < n_rows:
            raise StoreError(
                f"{path} is malformed: {name!r} has {file[name].shape[0]} rows but "
                f"{n_rows} are committed"
            )
    return n_rows, n_commits


def _read_strings(file: h5py.File, column: str, n_rows: int) -> np.ndarray:
    """The first ``n_rows`` values of a string column as an object array of str."""
    if int(file.attrs["format_version"]) < 2:
        if column not in file:
            return np.full(n_rows, "", dtype=object)
        return file[column].asstr()[:n_rows]
    ends = file[f"{column}_ends"][:n_rows].astype(np.int64)
    if ends.size == 0:
        return np.empty(0, dtype=object)
    if np.any(np.diff(ends) < 0) or ends[0] < 0 or ends[-1] > file[f"{column}_bytes"].shape[0]:
        raise StoreError(f"{file.filename} is corrupt: the offsets of its {column} are invalid")
    blob = file[f"{column}_bytes"][: int(ends[-1])].tobytes()
    bounds = np.concatenate([[0], ends])
    out = np.empty(len(ends), dtype=object)
    if blob.isascii():
        text = blob.decode("ascii")
        out[:] = [text[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
    else:
        out[:] = [
            blob[a:b].decode("utf-8") for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())
        ]
    return out


class EmbeddingStore:
    """Read-only view of the committed rows of an embedding store."""

    def __init__(self, path: str | Path, *, _lock_held: bool = False) -> None:
        self.path = Path(path)
        self._file = _open_hdf5(self.path, "r", _lock_held)
        try:
            self._n_rows, self._n_commits = _committed_rows(self._file, self.path)
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
        self._fingerprints: np.ndarray | None = None
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
            self._ids = _read_strings(self._file, "ids", self._n_rows)
        return self._ids

    @property
    def labels(self) -> np.ndarray | None:
        """Row labels as an object array of str ("" = no label), or None when no row has one."""
        if self._labels is None:
            if self.format_version >= 2:
                ends = self._file["labels_ends"]
                if self._n_rows == 0 or int(ends[self._n_rows - 1]) == 0:
                    return None
            elif "labels" not in self._file:
                return None
            self._labels = _read_strings(self._file, "labels", self._n_rows)
        return self._labels

    @property
    def fingerprints(self) -> np.ndarray:
        """Row fingerprints as an object array of str ("" = none recorded; see ``append``)."""
        if self._fingerprints is None:
            if "fingerprints" in self._file:
                raw = self._file["fingerprints"][: self._n_rows]
                self._fingerprints = np.array([value.decode("ascii") for value in raw], object)
            else:
                self._fingerprints = np.full(self._n_rows, "", dtype=object)
        return self._fingerprints

    @property
    def n_events(self) -> np.ndarray | None:
        """Beatmap events per row, int32 (0: an empty window; −1: not counted), or None when
        no row was counted (see :attr:`beatmap_fid.extractors.base.Item.n_events`)."""
        if self._n_events is None:
            if "n_events" not in self._file:
                return None
            counts = self._file["n_events"][: self._n_rows].astype(np.int32)
            if not (counts != NOT_COUNTED).any():
                return None
            self._n_events = counts
        return self._n_events

    @property
    def commits(self) -> np.ndarray:
        """Committed batches, uint64 ``(k, 3)``: end row, vector checksum, string checksum
        (:func:`batch_checksums`); empty for format version 1."""
        if self.format_version < 2:
            return np.zeros((0, 3), dtype=np.uint64)
        return self._file["commits"][: self._n_commits]

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


def open_store(path: str | Path) -> EmbeddingStore | ShardedStore:
    """Open the store at ``path`` for reading: an ``.h5`` store, or a sharded store given as
    its manifest or the folder holding it (see :mod:`beatmap_fid.shards`)."""
    from beatmap_fid.shards import ShardedStore, find_manifest

    if find_manifest(path) is not None:
        return ShardedStore(path)
    return EmbeddingStore(path)


# -- writing ------------------------------------------------------------------------------


def _validated_ids(ids: Iterable[str]) -> list[str]:
    out = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
    for item_id in out:
        if not isinstance(item_id, str) or not item_id:
            raise InputError(f"ids must be non-empty str, got {item_id!r}")
    _check_encodable(out, "ids")
    return out


def _check_encodable(texts: list[str], what: str) -> None:
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{what} must be valid Unicode text, got {text!r}") from None


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


def _validated_labels(labels: Iterable[str | None], n: int) -> list[str]:
    out = ["" if label is None else label for label in labels]
    if len(out) != n:
        raise InputError(f"{len(out)} labels for {n} ids; pass one label (or None) per id")
    for label in out:
        if not isinstance(label, str):
            raise InputError(f"labels must be str or None, got {label!r}")
    _check_encodable(out, "labels")
    return out


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


_HEX_DIGITS = frozenset("0123456789abcdef")


def _validated_fingerprints(fingerprints: Iterable[str | None], n: int) -> list[str]:
    out = ["" if value is None else value for value in fingerprints]
    if len(out) != n:
        raise InputError(f"{len(out)} fingerprints for {n} ids; pass one (or None) per id")
    for value in out:
        if not isinstance(value, str) or (
            value and (len(value) != FINGERPRINT_BYTES or not _HEX_DIGITS.issuperset(value))
        ):
            raise InputError(
                f"a fingerprint must be {FINGERPRINT_BYTES} lowercase hexadecimal digits or "
                f"None, got {value!r}"
            )
    return out


def _encoded(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of ``texts`` back to back (uint8) and the end offset of each (int64)."""
    encoded = [text.encode("utf-8") for text in texts]
    ends = np.cumsum([len(data) for data in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), ends


def _grow(dataset: h5py.Dataset, size: int) -> None:
    if dataset.shape[0] < size:
        dataset.resize(size, axis=0)


def _is_disk_full(exc: Exception) -> bool:
    """Whether an error of the OS or of HDF5 (which reports errno in its message) means the
    disk is full."""
    code = getattr(exc, "errno", None)
    return code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc)


class StoreWriter:
    """Creates a store or appends to one, one batch at a time, as the only writer.

    Reopening an existing store checks that it holds the same extractor name, config hash
    and dimension, and loads the stored ids and fingerprints so that :meth:`append` skips
    what is already there; rows a killed writer left uncommitted are overwritten.

    A row may carry a *fingerprint* of the inputs it was computed from (a hash of the source
    files). Appending an id that is stored with another fingerprint writes a new row that
    supersedes the old one; when the writer closes, superseded rows, and rows of ids that
    :meth:`retain` left out, are dropped by rewriting the store (under the writer's lock,
    renamed into place). Until then readers may see both rows of a superseded id.

    Before each batch the writer checks that the disk has room for it; a full disk raises
    :class:`~beatmap_fid.errors.StoreFullError` and leaves every committed row in place.
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
        self._retained: set[str] | None = None
        self._broken = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _WriterLock(self.path)
        try:
            if not self.path.exists():
                self._create(config)
            self._file = self._open()
            # Held open while writing: HDF5 flushes a dataset's cached chunks when the dataset
            # is closed, where a failed write could not be reported.
            self._datasets = {name: self._file[name] for name in _V2_DATASETS}
            try:
                self._load()
                self._reserve_fd = os.open(self.path, os.O_RDWR)
                self._file.swmr_mode = True
            except BaseException:
                self._datasets.clear()
                self._file.close()
                raise
        except BaseException:
            self._lock.release()
            raise

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
                file.create_dataset(
                    "vectors",
                    shape=(0, self.dim),
                    maxshape=(None, self.dim),
                    dtype=np.float32,
                    chunks=(vector_chunk_rows(self.dim), self.dim),
                )
                for column in _STRING_COLUMNS:
                    file.create_dataset(
                        f"{column}_bytes",
                        shape=(0,),
                        maxshape=(None,),
                        dtype=np.uint8,
                        chunks=(BYTE_CHUNK,),
                    )
                    file.create_dataset(
                        f"{column}_ends",
                        shape=(0,),
                        maxshape=(None,),
                        dtype=np.int64,
                        chunks=(ROW_CHUNK_ROWS,),
                    )
                file.create_dataset(
                    "fingerprints",
                    shape=(0,),
                    maxshape=(None,),
                    dtype=_FINGERPRINT,
                    chunks=(ROW_CHUNK_ROWS,),
                )
                file.create_dataset(
                    "n_events",
                    shape=(0,),
                    maxshape=(None,),
                    dtype=np.int32,
                    chunks=(ROW_CHUNK_ROWS,),
                )
                file.create_dataset(
                    "commits",
                    shape=(0, 3),
                    maxshape=(None, 3),
                    dtype=np.uint64,
                    chunks=(COMMIT_CHUNK_ROWS, 3),
                )
                file.create_dataset("n_commits", data=np.zeros(1, dtype=np.int64))
            os.replace(temporary, self.path)
        except (OSError, RuntimeError) as exc:
            if _is_disk_full(exc):
                raise self._full_error(exc) from exc
            raise
        finally:
            temporary.unlink(missing_ok=True)

    def _open(self) -> h5py.File:
        """Open the store for writing; a format-1 store is first rewritten in format 2."""
        with _open_hdf5(self.path, "r", lock_held=True) as file:
            _committed_rows(file, self.path)  # refuse a malformed store before any write
            version = int(file.attrs["format_version"])
        if version < FORMAT_VERSION:
            _rewrite(self.path, np.zeros(0, dtype=np.int64))
        return _open_hdf5(self.path, "r+", lock_held=True)

    def _load(self) -> None:
        file = self._file
        self._n_rows, self._n_commits = _committed_rows(file, self.path)
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
        n = self._n_rows
        self._bytes_used = {
            column: int(file[f"{column}_ends"][n - 1]) if n else 0 for column in _STRING_COLUMNS
        }
        ids = _read_strings(file, "ids", n).tolist()
        prints = [value.decode("ascii") for value in file["fingerprints"][:n]]
        self._fingerprint_of = dict(zip(ids, prints))  # the last row of each id wins
        self._superseded = n - len(self._fingerprint_of)

    @property
    def existing_ids(self) -> Any:
        """Ids of the committed rows (a live view: do not modify it)."""
        return self._fingerprint_of.keys()

    def fingerprint(self, item_id: str) -> str | None:
        """Fingerprint stored with ``item_id`` ("" when none was given), None when absent."""
        return self._fingerprint_of.get(item_id)

    def holds(self, item_id: str, fingerprint: str | None = None) -> bool:
        """Whether ``item_id`` is stored, with ``fingerprint`` when one is given."""
        stored = self._fingerprint_of.get(item_id)
        return stored is not None and (not fingerprint or stored == fingerprint)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._fingerprint_of

    def __len__(self) -> int:
        return self._n_rows

    @property
    def commits(self) -> np.ndarray:
        """Committed batches, as :attr:`EmbeddingStore.commits` reads them."""
        return self._datasets["commits"][: self._n_commits]

    def retain(self, ids: Iterable[str]) -> None:
        """Keep only rows of ``ids`` when the writer closes; the others are dropped then."""
        self._retained = set(ids)

    def append(
        self,
        ids: Iterable[str],
        vectors: Any,
        labels: Iterable[str | None] | None = None,
        fingerprints: Iterable[str | None] | None = None,
        n_events: Iterable[int | None] | None = None,
    ) -> int:
        """Write the rows that are new and commit them; the number of rows written.

        A row is skipped when its id is stored already, unless it carries a fingerprint that
        differs from the stored one: then the new row supersedes the stored row. Repeats
        within the batch after their first occurrence are skipped. ``n_events``: the beatmap
        events of each item (None where not counted). A batch with a NaN or infinite vector
        is rejected whole (NonFiniteError).
        """
        if self._broken:
            raise StoreError(f"{self.path}: this writer stopped after an error; open a new one")
        ids = _validated_ids(ids)
        array = _validated_vectors(vectors, self.dim, len(ids))
        label_list = [""] * len(ids) if labels is None else _validated_labels(labels, len(ids))
        print_list = (
            [""] * len(ids)
            if fingerprints is None
            else _validated_fingerprints(fingerprints, len(ids))
        )
        counts = (
            np.full(len(ids), NOT_COUNTED, np.int32)
            if n_events is None
            else _validated_counts(n_events, len(ids))
        )
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
            if item_id not in seen and not self.holds(item_id, print_list[row]):
                seen.add(item_id)
                keep.append(row)
        if not keep:
            return 0
        self._write(
            [ids[row] for row in keep],
            array[keep],
            [label_list[row] for row in keep],
            [print_list[row] for row in keep],
            counts[keep],
        )
        return len(keep)

    def _reserve(self, nbytes: int) -> None:
        """Allocate ``nbytes`` of disk after the file's allocated end before HDF5 writes.

        HDF5 cannot take back a write that failed for lack of space (its state in the
        process is damaged afterwards), so the space is reserved first: a full disk then
        raises StoreFullError with nothing written. Reserved space left unused is given
        back when the writer closes.
        """
        end = self._file.id.get_filesize()  # HDF5's end of allocation
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(self._reserve_fd, end, nbytes)
            elif shutil.disk_usage(self.path.parent).free < nbytes:
                raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            if not _is_disk_full(exc):
                raise StoreError(f"cannot reserve space for {self.path}: {exc}") from exc
            self._release_reserve()
            free = shutil.disk_usage(self.path.parent).free
            raise StoreFullError(
                f"no space left for {self.path.name}: {free / 2**20:.1f} MiB free on its disk, "
                f"the next batch needs about {nbytes / 2**20:.1f} MiB; every committed row is "
                "kept: free some space and run again to resume"
            ) from None

    def _release_reserve(self) -> None:
        """Give back reserved space beyond HDF5's end of allocation."""
        end = self._file.id.get_filesize()
        if os.fstat(self._reserve_fd).st_size > end:
            os.ftruncate(self._reserve_fd, end)

    def _write(
        self,
        ids: list[str],
        vectors: np.ndarray,
        labels: list[str],
        prints: list[str],
        counts: np.ndarray,
    ) -> None:
        start, stop = self._n_rows, self._n_rows + len(ids)
        encoded = {"ids": _encoded(ids), "labels": _encoded(labels)}
        self._reserve(
            2 * (vectors.nbytes + sum(blob.nbytes + ends.nbytes for blob, ends in encoded.values()))
            + RESERVE_MARGIN
        )
        vector_sum, string_sum = batch_checksums(vectors, ids, labels, prints, counts)
        file, data = self._file, self._datasets
        try:
            _grow(data["vectors"], stop)
            data["vectors"][start:stop] = vectors
            for column, (blob, ends) in encoded.items():
                base = self._bytes_used[column]
                if blob.size:
                    _grow(data[f"{column}_bytes"], base + blob.size)
                    data[f"{column}_bytes"][base : base + blob.size] = blob
                _grow(data[f"{column}_ends"], stop)
                data[f"{column}_ends"][start:stop] = base + ends
            _grow(data["fingerprints"], stop)
            data["fingerprints"][start:stop] = np.array(prints, dtype=_FINGERPRINT)
            _grow(data["n_events"], stop)
            data["n_events"][start:stop] = counts
            _grow(data["commits"], self._n_commits + 1)
            data["commits"][self._n_commits] = (stop, vector_sum, string_sum)
            file.flush()  # the batch is on disk before the count that makes it visible
            data["n_commits"][0] = self._n_commits + 1
            file.flush()
        except (OSError, RuntimeError) as exc:  # h5py raises either for a failed write
            self._broken = True
            if _is_disk_full(exc):
                raise self._full_error(exc) from exc
            raise StoreError(f"writing {self.path} failed: {exc}") from exc
        self._n_rows, self._n_commits = stop, self._n_commits + 1
        for column, (blob, _) in encoded.items():
            self._bytes_used[column] += blob.size
        for item_id, value in zip(ids, prints):
            if item_id in self._fingerprint_of:
                self._superseded += 1
            self._fingerprint_of[item_id] = value

    def _rows_to_drop(self) -> np.ndarray:
        """Rows that closing drops: superseded rows and rows of ids :meth:`retain` left out."""
        if not self._superseded and (
            self._retained is None or self._retained.issuperset(self._fingerprint_of)
        ):
            return np.zeros(0, dtype=np.int64)
        ids = _read_strings(self._file, "ids", self._n_rows)
        last_row = {item_id: row for row, item_id in enumerate(ids)}
        drop = [
            row
            for row, item_id in enumerate(ids)
            if last_row[item_id] != row
            or (self._retained is not None and item_id not in self._retained)
        ]
        return np.asarray(drop, dtype=np.int64)

    def close(self) -> None:
        """Flush, drop superseded rows, close the file and release the lock (idempotent)."""
        try:
            if self._file.id.valid:
                drop = np.zeros(0, np.int64) if self._broken else self._rows_to_drop()
                self._release_reserve()
                self._datasets.clear()
                try:
                    self._file.close()
                except (OSError, RuntimeError) as exc:  # the disk is full: committed rows are safe
                    if not _is_disk_full(exc):
                        raise
                finally:
                    os.close(self._reserve_fd)
                if drop.size:
                    _rewrite(self.path, drop)
        finally:
            self._lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _copy_rows(store: EmbeddingStore, writer: StoreWriter, keep: np.ndarray | None = None) -> None:
    """Append ``store``'s rows (those where ``keep`` is True, default all) to ``writer``.

    Ids the writer holds already are skipped, whatever their fingerprints.
    """
    ids, labels, prints, counts = store.ids, store.labels, store.fingerprints, store.n_events
    new = np.fromiter((item_id not in writer for item_id in ids), dtype=bool, count=len(ids))
    keep = new if keep is None else keep & new
    for start, block in store.iter_blocks():
        rows = np.flatnonzero(keep[start : start + len(block)]) + start
        if rows.size == 0:
            continue
        writer.append(
            ids[rows],
            block[rows - start],
            None if labels is None else labels[rows],
            [value or None for value in prints[rows]],
            None if counts is None else [c if c >= 0 else None for c in counts[rows].tolist()],
        )


def _rewrite(path: Path, drop: np.ndarray) -> None:
    """Rewrite the store at ``path`` in the current format without rows ``drop``.

    The caller holds the store's writer lock; the new file is renamed into place.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.rewrite.h5")
    temporary.unlink(missing_ok=True)
    try:
        with EmbeddingStore(path, _lock_held=True) as store:
            keep = np.ones(len(store), dtype=bool)
            keep[drop] = False
            with StoreWriter(temporary, store.extractor, store.config, store.dim) as writer:
                _copy_rows(store, writer, keep)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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
            _copy_rows(store, writer)
            bar.update(len(store))
    return output
