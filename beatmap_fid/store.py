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
import itertools
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
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
    StoreDamagedError,
    StoreError,
    StoreFullError,
    StoreLockedError,
)

if TYPE_CHECKING:
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
_STRING_COLUMNS = ("ids", "labels", "sources")
_V2_DATASETS = (
    "vectors",
    "ids_bytes",
    "ids_ends",
    "labels_bytes",
    "labels_ends",
    "fingerprints",
    "n_events",
    "sources_bytes",
    "sources_ends",
    "source_keys",
    "commits",
    "n_commits",
)
NOT_COUNTED = -1
"""``n_events`` of rows whose events were not counted."""
COMMIT_COLUMNS = ("end_row", "end_source", "vector_checksum", "column_checksum")
"""Columns of the ``commits`` table, one row per committed batch."""


def canonical_config_json(config: dict[str, Any]) -> str:
    """The JSON text stored for ``config``: sorted keys, no spaces (what its hash is taken of)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def vector_chunk_rows(dim: int) -> int:
    """Rows per ``vectors`` chunk: whole rows, about :data:`CHUNK_BYTES` per chunk."""
    return max(1, CHUNK_BYTES // (4 * dim))


def _digest64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def vector_checksum(vectors: np.ndarray) -> int:
    """Checksum of a batch's vectors: BLAKE2b-64 of their little-endian float32 bytes."""
    return _digest64(np.ascontiguousarray(vectors, "<f4").tobytes())


def column_checksum(
    ids: Sequence[str],
    labels: Sequence[str],
    prints: Sequence[str],
    n_events: Sequence[int],
    sources: Sequence[str] = (),
    source_keys: Sequence[str] = (),
) -> int:
    """Checksum of a batch's other columns (ids, labels, fingerprints, event counts) and of
    the completed sources it records, as one UTF-8 text."""
    counts = ",".join(str(int(count)) for count in n_events)
    text = "\x1e".join(
        [
            "\x1f".join(ids),
            "\x1f".join(labels),
            "".join(prints),
            counts,
            "\x1f".join(sources),
            "".join(source_keys),
        ]
    )
    return _digest64(text.encode("utf-8"))


def header_checksum(
    format_version: int, extractor: str, config: str, config_hash: str, dim: int
) -> str:
    """Checksum of the attributes that say what a store holds (stored as ``header_checksum``)."""
    text = json.dumps([int(format_version), extractor, config, config_hash, int(dim)])
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


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
        raise StoreError(f"{path} is not a file (expected an HDF5 embedding store)")
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


def _damaged(path: Path, what: str) -> StoreDamagedError:
    return StoreDamagedError(
        f"{path} is damaged: {what}; run `beatmap-fid check {path} --repair` to keep every "
        "batch that is intact"
    )


@dataclass(frozen=True)
class _Layout:
    """What a store's commit point says: committed rows, batches and completed sources."""

    format_version: int
    n_rows: int
    n_commits: int
    n_sources: int


def _commit_count(file: h5py.File, path: Path) -> int:
    """``n_commits`` holds the count and its bitwise complement, so a damaged count shows."""
    raw = file["n_commits"][:]
    if raw.shape != (2,) or int(raw[1]) != ~int(raw[0]) or int(raw[0]) < 0:
        raise _damaged(path, "its commit count is unreadable")
    return int(raw[0])


def _store_layout(file: h5py.File, path: Path) -> _Layout:
    """The committed extent of a store, its attributes and datasets checked on the way."""
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
    if version >= 2:
        expected = header_checksum(
            version,
            _text_attribute(file, "extractor"),
            _text_attribute(file, "config"),
            _text_attribute(file, "config_hash"),
            dim,
        )
        if _text_attribute(file, "header_checksum") != expected:
            raise _damaged(
                path, "its attributes (extractor, configuration) do not match their checksum"
            )
    vectors = file["vectors"]
    if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.dtype != np.float32:
        raise StoreError(
            f"{path} is malformed: 'vectors' is {vectors.dtype} {vectors.shape}, "
            f"expected float32 (N, {dim})"
        )
    if version < 2:
        if "n_rows" not in file.attrs:
            raise StoreError(f"{path} is malformed: attribute 'n_rows' is missing")
        n_rows = int(file.attrs["n_rows"])
        for name in ("vectors", "ids", "labels", "n_events"):
            if name in file and file[name].shape[0] < n_rows:
                raise StoreError(
                    f"{path} is malformed: {name!r} has {file[name].shape[0]} rows but "
                    f"{n_rows} are committed"
                )
        return _Layout(version, n_rows, 0, 0)
    n_commits = _commit_count(file, path)
    commits = file["commits"]
    if n_commits > commits.shape[0]:
        raise _damaged(
            path, f"{n_commits} batches are committed but its commit table holds {commits.shape[0]}"
        )
    table = commits[:n_commits].astype(np.int64)
    ends = np.concatenate([[0, 0], table[:, :2].ravel()]).reshape(-1, 2)
    if np.any(np.diff(ends, axis=0) < 0):
        raise _damaged(path, "its commit table is out of order")
    n_rows, n_sources = (int(x) for x in ends[-1])
    for name, needed in (
        ("vectors", n_rows),
        ("ids_ends", n_rows),
        ("labels_ends", n_rows),
        ("fingerprints", n_rows),
        ("n_events", n_rows),
        ("sources_ends", n_sources),
        ("source_keys", n_sources),
    ):
        if file[name].shape[0] < needed:
            raise _damaged(
                path, f"{name!r} holds {file[name].shape[0]} rows, {needed} are committed"
            )
    return _Layout(version, n_rows, n_commits, n_sources)


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
        raise _damaged(Path(file.filename), f"the offsets of its {column} are invalid")
    blob = file[f"{column}_bytes"][: int(ends[-1])].tobytes()
    bounds = np.concatenate([[0], ends]).tolist()
    out = np.empty(len(ends), dtype=object)
    try:
        if blob.isascii():
            text = blob.decode("ascii")
            out[:] = [text[a:b] for a, b in itertools.pairwise(bounds)]
        else:
            out[:] = [blob[a:b].decode("utf-8") for a, b in itertools.pairwise(bounds)]
    except UnicodeDecodeError:
        raise _damaged(Path(file.filename), f"its {column} are not valid UTF-8") from None
    return out


@dataclass(frozen=True)
class _Columns:
    """Every column of the committed rows but the vectors, and the completed sources."""

    ids: np.ndarray
    labels: np.ndarray
    fingerprints: np.ndarray
    n_events: np.ndarray
    sources: np.ndarray
    source_keys: np.ndarray


def _read_columns(file: h5py.File, path: Path, layout: _Layout) -> _Columns:
    """The columns of a store, each committed batch checked against its checksum."""
    n, m = layout.n_rows, layout.n_sources
    ids = _read_strings(file, "ids", n)
    labels = _read_strings(file, "labels", n)
    if "fingerprints" in file:
        prints = np.array([v.decode("ascii", "replace") for v in file["fingerprints"][:n]], object)
    else:
        prints = np.full(n, "", dtype=object)
    counts = (
        file["n_events"][:n].astype(np.int32)
        if "n_events" in file
        else np.full(n, NOT_COUNTED, np.int32)
    )
    if layout.format_version < 2:
        empty = np.empty(0, dtype=object)
        return _Columns(ids, labels, prints, counts, empty, empty)
    sources = _read_strings(file, "sources", m)
    keys = np.array([v.decode("ascii", "replace") for v in file["source_keys"][:m]], object)
    table = file["commits"][: layout.n_commits].astype(np.uint64)
    row = source = 0
    for index, (end_row, end_source, _, expected) in enumerate(table.tolist()):
        got = column_checksum(
            ids[row:end_row],
            labels[row:end_row],
            prints[row:end_row],
            counts[row:end_row],
            sources[source:end_source],
            keys[source:end_source],
        )
        if got != expected:
            raise _damaged(
                path,
                f"batch {index + 1} of {layout.n_commits} (rows {row}..{end_row - 1}): its ids, "
                "labels, fingerprints or event counts do not match their checksum",
            )
        row, source = end_row, end_source
    return _Columns(ids, labels, prints, counts, sources, keys)


class EmbeddingStore:
    """Read-only view of the committed rows of an embedding store.

    Every read of a store's columns, and every pass over all of its vectors (``vectors()``,
    ``iter_blocks``, ``statistics``), is checked against the checksums of its committed
    batches: a damaged store raises :class:`~beatmap_fid.errors.StoreDamagedError`
    naming ``beatmap-fid check --repair``, never returns changed data.
    """

    def __init__(self, path: str | Path, *, _lock_held: bool = False) -> None:
        self.path = Path(path)
        self._file = _open_hdf5(self.path, "r", _lock_held)
        try:
            self._layout = _store_layout(self._file, self.path)
            self.dim = int(self._file.attrs["dim"])
            self.extractor = _text_attribute(self._file, "extractor")
            self.config_hash = _text_attribute(self._file, "config_hash")
            self.library_version = _text_attribute(self._file, "library_version")
            self.format_version = self._layout.format_version
            self._config_json = _text_attribute(self._file, "config")
            try:
                json.loads(self._config_json)
            except json.JSONDecodeError as exc:
                raise StoreError(f"{self.path} is malformed: its config is not JSON") from exc
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            self._file.close()
            raise _damaged(self.path, f"HDF5 cannot read it ({exc})") from exc
        except BaseException:
            self._file.close()
            raise
        self._n_rows = self._layout.n_rows
        self._vectors = self._file["vectors"]
        self._columns: _Columns | None = None

    def _column_data(self) -> _Columns:
        if self._columns is None:
            try:
                self._columns = _read_columns(self._file, self.path, self._layout)
            except (OSError, RuntimeError) as exc:
                raise _damaged(self.path, f"HDF5 cannot read its columns ({exc})") from exc
        return self._columns

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
        return self._column_data().ids

    @property
    def labels(self) -> np.ndarray | None:
        """Row labels as an object array of str ("" = no label), or None when no row has one."""
        labels = self._column_data().labels
        return labels if any(labels) else None

    @property
    def fingerprints(self) -> np.ndarray:
        """Row fingerprints as an object array of str ("" = none recorded; see ``append``)."""
        return self._column_data().fingerprints

    @property
    def n_events(self) -> np.ndarray | None:
        """Beatmap events per row, int32 (0: an empty window; −1: not counted), or None when
        no row was counted (see :attr:`beatmap_fid.extractors.base.Item.n_events`)."""
        counts = self._column_data().n_events
        return counts if (counts != NOT_COUNTED).any() else None

    @property
    def completed_sources(self) -> dict[str, str]:
        """Source files whose every item is stored: source id → key of the file's bytes
        (see :meth:`StoreWriter.append`)."""
        columns = self._column_data()
        return dict(zip(columns.sources.tolist(), columns.source_keys.tolist()))

    @property
    def commits(self) -> np.ndarray:
        """Committed batches, uint64 ``(k, 4)`` (:data:`COMMIT_COLUMNS`); empty for format 1."""
        if self.format_version < 2:
            return np.zeros((0, len(COMMIT_COLUMNS)), dtype=np.uint64)
        return self._file["commits"][: self._layout.n_commits]

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
        chunk is rounded down to whole chunks so that every read is chunk aligned. Each
        committed batch's vectors are checked against its checksum as the pass goes by.
        """
        step = self._block_rows(block_rows)
        verifier = _VectorVerifier(self.path, self.commits) if self.format_version >= 2 else None
        for start in range(0, self._n_rows, step):
            try:
                block = self._vectors[start : min(start + step, self._n_rows)]
            except (OSError, RuntimeError) as exc:
                raise _damaged(self.path, f"HDF5 cannot read rows from {start} ({exc})") from exc
            if verifier is not None:
                verifier.feed(block)
            yield start, block

    def vectors(self, rows: int | slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 vectors of all rows, a slice, an int, or an index / boolean mask array.

        Index arrays are read in sorted order, one contiguous range per chunk, and returned
        in the order asked for (negative indices count from the end, repeats are allowed).
        All rows at once are checked against the batch checksums.
        """
        n = self._n_rows
        if rows is None:
            out = np.empty((n, self.dim), dtype=np.float32)
            for start, block in self.iter_blocks():
                out[start : start + len(block)] = block
            return out
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


class _VectorVerifier:
    """Checks the vectors of each committed batch as consecutive blocks of rows go by."""

    def __init__(self, path: Path, commits: np.ndarray) -> None:
        self.path = path
        self.ends = commits[:, 0].astype(np.int64).tolist()
        self.sums = commits[:, 2].tolist()
        self.batch = 0
        self.row = 0
        self.digest = hashlib.blake2b(digest_size=8)
        self._close_empty_batches()

    def _close_empty_batches(self) -> None:
        while self.batch < len(self.ends) and self.ends[self.batch] == self.row:
            self._check()

    def _check(self) -> None:
        if int.from_bytes(self.digest.digest(), "little") != self.sums[self.batch]:
            start = self.ends[self.batch - 1] if self.batch else 0
            raise _damaged(
                self.path,
                f"batch {self.batch + 1} of {len(self.ends)} (rows {start}.."
                f"{self.ends[self.batch] - 1}): its vectors do not match their checksum",
            )
        self.batch += 1
        self.digest = hashlib.blake2b(digest_size=8)

    def feed(self, block: np.ndarray) -> None:
        position = 0
        while position < len(block):
            take = min(len(block) - position, self.ends[self.batch] - self.row)
            self.digest.update(np.ascontiguousarray(block[position : position + take], "<f4"))
            position += take
            self.row += take
            self._close_empty_batches()


def open_store(path: str | Path) -> EmbeddingStore:
    """Open the store at ``path`` for reading."""
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


def _commit_count_record(n_commits: int) -> np.ndarray:
    """The ``n_commits`` dataset: the count and its bitwise complement (see ``_commit_count``)."""
    return np.array([n_commits, ~n_commits], dtype=np.int64)


def _validated_sources(completed: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    out = [(str(source), str(key)) for source, key in completed]
    _check_encodable([source for source, _ in out], "source ids")
    _validated_fingerprints([key for _, key in out], len(out))
    return out


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
                file.attrs["header_checksum"] = header_checksum(
                    FORMAT_VERSION,
                    self.extractor,
                    canonical_config_json(config),
                    self.config_hash,
                    self.dim,
                )
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
                for name in ("fingerprints", "source_keys"):
                    file.create_dataset(
                        name,
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
                width = len(COMMIT_COLUMNS)
                file.create_dataset(
                    "commits",
                    shape=(0, width),
                    maxshape=(None, width),
                    dtype=np.uint64,
                    chunks=(COMMIT_CHUNK_ROWS, width),
                )
                file.create_dataset("n_commits", data=_commit_count_record(0))
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
            version = _store_layout(file, self.path).format_version  # refuse a bad store
        _remove_stale_temporaries(self.path)
        if version < FORMAT_VERSION:
            _rewrite(self.path, np.zeros(0, dtype=np.int64))
        return _open_hdf5(self.path, "r+", lock_held=True)

    def _load(self) -> None:
        file = self._file
        layout = _store_layout(file, self.path)
        self._n_rows, self._n_commits, self._n_sources = (
            layout.n_rows,
            layout.n_commits,
            layout.n_sources,
        )
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
        columns = _read_columns(file, self.path, layout)
        self._bytes_used = {
            column: int(file[f"{column}_ends"][count - 1]) if count else 0
            for column, count in (
                ("ids", self._n_rows),
                ("labels", self._n_rows),
                ("sources", self._n_sources),
            )
        }
        # The last row of each id wins (earlier ones were superseded).
        self._fingerprint_of = dict(zip(columns.ids.tolist(), columns.fingerprints.tolist()))
        self._superseded = self._n_rows - len(self._fingerprint_of)
        self._completed = dict(zip(columns.sources.tolist(), columns.source_keys.tolist()))

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

    def completed_key(self, source_id: str) -> str | None:
        """Key of a source file recorded as complete (every item stored), None otherwise."""
        return self._completed.get(source_id)

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
        completed: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Write the rows that are new and commit them; the number of rows written.

        A row is skipped when its id is stored already, unless it carries a fingerprint that
        differs from the stored one: then the new row supersedes the stored row. Repeats
        within the batch after their first occurrence are skipped. ``n_events``: the beatmap
        events of each item (None where not counted). ``completed``: (source id, key) of
        source files whose every item is stored once this batch is (a resumed run skips
        them without reading them), committed with the batch. A batch with a NaN or
        infinite vector is rejected whole (NonFiniteError).
        """
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
        records = _validated_sources(completed)
        keep: list[int] = []
        seen: set[str] = set()
        for row, item_id in enumerate(ids):
            if item_id not in seen and not self.holds(item_id, print_list[row]):
                seen.add(item_id)
                keep.append(row)
        if not keep and not records:
            return 0
        self._write(
            [ids[row] for row in keep],
            array[keep],
            [label_list[row] for row in keep],
            [print_list[row] for row in keep],
            counts[keep],
            records,
        )
        return len(keep)

    def complete(self, completed: Sequence[tuple[str, str]]) -> None:
        """Record source files as complete (see :meth:`append`) in a commit of their own."""
        records = _validated_sources(completed)
        if records:
            empty = np.zeros((0, self.dim), np.float32)
            self._write([], empty, [], [], np.zeros(0, np.int32), records)

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
        records: list[tuple[str, str]],
    ) -> None:
        if self._broken:
            raise StoreError(f"{self.path}: this writer stopped after an error; open a new one")
        start, stop = self._n_rows, self._n_rows + len(ids)
        sources = [source for source, _ in records]
        keys = [key for _, key in records]
        source_stop = self._n_sources + len(records)
        encoded = {"ids": _encoded(ids), "labels": _encoded(labels), "sources": _encoded(sources)}
        self._reserve(
            2 * (vectors.nbytes + sum(blob.nbytes + ends.nbytes for blob, ends in encoded.values()))
            + RESERVE_MARGIN
        )
        commit = (
            stop,
            source_stop,
            vector_checksum(vectors),
            column_checksum(ids, labels, prints, counts, sources, keys),
        )
        file, data = self._file, self._datasets
        try:
            _grow(data["vectors"], stop)
            data["vectors"][start:stop] = vectors
            for column, (blob, ends) in encoded.items():
                first = self._n_sources if column == "sources" else start
                base = self._bytes_used[column]
                if blob.size:
                    _grow(data[f"{column}_bytes"], base + blob.size)
                    data[f"{column}_bytes"][base : base + blob.size] = blob
                _grow(data[f"{column}_ends"], first + len(ends))
                data[f"{column}_ends"][first : first + len(ends)] = base + ends
            _grow(data["fingerprints"], stop)
            data["fingerprints"][start:stop] = np.array(prints, dtype=_FINGERPRINT)
            _grow(data["n_events"], stop)
            data["n_events"][start:stop] = counts
            _grow(data["source_keys"], source_stop)
            data["source_keys"][self._n_sources : source_stop] = np.array(keys, _FINGERPRINT)
            _grow(data["commits"], self._n_commits + 1)
            data["commits"][self._n_commits] = commit
            file.flush()  # the batch is on disk before the count that makes it visible
            data["n_commits"][:] = _commit_count_record(self._n_commits + 1)
            file.flush()
        except (OSError, RuntimeError) as exc:  # h5py raises either for a failed write
            self._broken = True
            if _is_disk_full(exc):
                raise self._full_error(exc) from exc
            raise StoreError(f"writing {self.path} failed: {exc}") from exc
        self._n_rows, self._n_commits, self._n_sources = stop, self._n_commits + 1, source_stop
        for column, (blob, _) in encoded.items():
            self._bytes_used[column] += blob.size
        for item_id, value in zip(ids, prints):
            if item_id in self._fingerprint_of:
                self._superseded += 1
            self._fingerprint_of[item_id] = value
        self._completed.update(records)

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
    """Append ``store``'s rows (those where ``keep`` is True, default all) to ``writer``, with
    the completed sources that still have rows.

    Ids the writer holds already are skipped, whatever their fingerprints.
    """
    from beatmap_fid.extractors.base import map_id

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
    kept_maps = {map_id(item_id) for item_id in ids[keep]}
    writer.complete(
        [
            (source, key)
            for source, key in store.completed_sources.items()
            if source in kept_maps and writer.completed_key(source) is None
        ]
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


def _remove_stale_temporaries(path: Path) -> None:
    """Remove temporary files that writers of ``path`` killed mid-rewrite left beside it.

    Only called under the store's writer lock, so no live writer owns them.
    """
    for pattern in (f".{path.name}.*.rewrite.h5", f".{path.name}.*.tmp"):
        for stale in path.parent.glob(pattern):
            stale.unlink(missing_ok=True)
            _lock_path(stale).unlink(missing_ok=True)


@dataclass
class StoreCheck:
    """What :func:`check_store` found, and what ``repair`` did."""

    path: Path
    n_rows: int
    n_batches: int
    problems: list[str]
    dropped_rows: int = 0
    dropped_batches: int = 0
    backup: Path | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def _batch_data(file: h5py.File, start: int, stop: int, first: int, last: int) -> tuple:
    """Vectors, ids, labels, fingerprints, counts, sources and keys of one batch's rows."""

    def strings(column: str, a: int, b: int) -> list[str]:
        if a == b:
            return []
        ends = file[f"{column}_ends"][max(a - 1, 0) : b].astype(np.int64)
        base = int(ends[0]) if a > 0 else 0
        bounds = [base, *(ends[1:] if a > 0 else ends).tolist()]
        if any(y < x for x, y in itertools.pairwise(bounds)) or not (
            0 <= bounds[0] and bounds[-1] <= file[f"{column}_bytes"].shape[0]
        ):
            raise ValueError(f"the offsets of the {column} are invalid")
        blob = file[f"{column}_bytes"][bounds[0] : bounds[-1]].tobytes()
        return [blob[x - base : y - base].decode("utf-8") for x, y in itertools.pairwise(bounds)]

    prints = [v.decode("ascii") for v in file["fingerprints"][start:stop]]
    keys = [v.decode("ascii") for v in file["source_keys"][first:last]]
    return (
        file["vectors"][start:stop],
        strings("ids", start, stop),
        strings("labels", start, stop),
        prints,
        file["n_events"][start:stop].astype(np.int32),
        strings("sources", first, last),
        keys,
    )


def _intact_batches(file: h5py.File, path: Path) -> tuple[list[tuple], list[str], int, int]:
    """The batches of a format-2 store whose checksums hold, what is wrong with the others,
    and the numbers of batches and rows examined."""
    problems: list[str] = []
    try:
        n_commits = _commit_count(file, path)
    except StoreDamagedError:
        n_commits = file["commits"].shape[0]  # look at every recorded batch
        problems.append("the commit count is unreadable; every recorded batch was examined")
    table = file["commits"][:n_commits].astype(np.uint64).tolist()
    whole = None
    if table and all(
        b[0] >= a[0] and b[1] >= a[1] for a, b in itertools.pairwise([(0, 0), *table])
    ):
        try:  # one read of everything; batch by batch only when that fails
            whole = _batch_data(file, 0, int(table[-1][0]), 0, int(table[-1][1]))
        except (OSError, RuntimeError, ValueError, UnicodeDecodeError):
            whole = None
    intact: list[tuple] = []
    row = source = 0
    for index, (end_row, end_source, vector_sum, column_sum) in enumerate(table):
        where = f"batch {index + 1} of {len(table)} (rows {row}..{end_row - 1})"
        if end_row < row or end_source < source:
            problems.append(f"{where}: its extent is out of order")
            continue
        try:
            if whole is not None:
                rows, sources = slice(row, end_row), slice(source, end_source)
                data = tuple(part[rows] for part in whole[:5]) + tuple(
                    part[sources] for part in whole[5:]
                )
            else:
                data = _batch_data(file, row, end_row, source, end_source)
        except (OSError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
            problems.append(f"{where}: unreadable ({type(exc).__name__})")
        else:
            if vector_checksum(data[0]) != vector_sum:
                problems.append(f"{where}: its vectors do not match their checksum")
            elif column_checksum(*data[1:]) != column_sum:
                problems.append(f"{where}: its ids, labels or fingerprints do not match")
            else:
                intact.append(data)
        row, source = end_row, end_source
    return intact, problems, len(table), row


def check_store(path: str | Path, *, repair: bool = False) -> StoreCheck:
    """Check every committed batch of a store against its checksums.

    With ``repair``, a damaged store is rebuilt from the batches that are intact (the
    damaged file is kept beside it as ``<name>.damaged``); what was dropped is reported.
    Runs under the store's writer lock.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no embedding store at {path}")
    with _WriterLock(path):
        try:
            file = _open_hdf5(path, "r", lock_held=True)
        except StoreLockedError:
            raise
        except StoreError as exc:
            raise StoreDamagedError(f"{path} cannot be checked or repaired: {exc}") from exc
        with file:
            try:
                layout = _store_layout(file, path)
            except StoreDamagedError as exc:
                if "attributes" in str(exc):
                    raise StoreDamagedError(
                        f"{path} cannot be repaired: its extractor and configuration attributes "
                        "are damaged, so nothing says what its vectors are"
                    ) from exc
                layout = None
            if layout is not None and layout.format_version < 2:
                return StoreCheck(
                    path,
                    layout.n_rows,
                    0,
                    [],
                    note="format 1 records no checksums; the next writer rewrites it as format 2",
                )
            intact, problems, n_batches, examined_rows = _intact_batches(file, path)
            extractor = _text_attribute(file, "extractor")
            config = json.loads(_text_attribute(file, "config"))
            dim = int(file.attrs["dim"])
        n_rows = sum(len(batch[1]) for batch in intact)
        result = StoreCheck(path, n_rows, n_batches, problems)
        if not problems or not repair:
            return result
        temporary = path.with_name(f".{path.name}.{os.getpid()}.repair.h5")
        temporary.unlink(missing_ok=True)
        try:
            with StoreWriter(temporary, extractor, config, dim) as writer:
                for vectors, ids, labels, prints, counts, sources, keys in intact:
                    writer.append(
                        ids,
                        vectors,
                        labels,
                        [value or None for value in prints],
                        [c if c >= 0 else None for c in counts.tolist()],
                        completed=list(zip(sources, keys)),
                    )
            result.backup = path.with_name(path.name + ".damaged")
            os.replace(path, result.backup)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        result.dropped_batches = n_batches - len(intact)
        result.dropped_rows = examined_rows - n_rows
        return result


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
