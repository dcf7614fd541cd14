"""Sharded embedding stores: a folder of ordinary stores (shards) described by a JSON manifest.

Written by distributed embedding (:mod:`beatmap_fid.distributed`), where every worker writes
its own shard, and read by every verb that reads a store: :func:`beatmap_fid.store.open_store`
returns a :class:`ShardedStore` for a manifest or the folder holding it, with the API of
:class:`~beatmap_fid.store.EmbeddingStore`, streaming shard by shard.

A sharded store folder::

    manifest.json                  extractor, config and hash, dimension, every shard with its
                                   rows and a checksum of its commit table (written last)
    statistics.npz                 Gaussian statistics of every row (mu, sigma, n)
    shards/<name>.h5               the shards: stores of the ordinary format, one writer each
    shards/<name>.h5.partial.npz   a shard's partial statistics (count, mean, scatter) and
                                   the commits they cover

:func:`finalize_shards` turns the shards of a folder into that: it keeps one row per id (a
worker that was retried, or an item embedded again because its files changed, may leave a
row in two shards), rewrites shards that hold rows no longer wanted, completes each shard's
partial statistics, merges them exactly (Chan et al.) and writes the manifest atomically.
Only committed batches of a shard are ever read, so a shard whose writer was killed counts
with what it committed and nothing more.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from beatmap_fid._version import __version__
from beatmap_fid.errors import (
    ConfigMismatchError,
    DimensionMismatchError,
    InputError,
    StoreError,
    StoreLockedError,
)
from beatmap_fid.stats import GaussianStats, RunningGaussian
from beatmap_fid.store import COMMIT_COLUMNS, NOT_COUNTED, EmbeddingStore, StoreWriter

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "beatmap_fid.sharded_store"
MANIFEST_VERSION = 1
SHARD_DIR = "shards"
STATISTICS_NAME = "statistics.npz"
PARTIAL_SUFFIX = ".partial.npz"
STORE_SUFFIXES = (".h5", ".hdf5")


def find_manifest(path: str | os.PathLike) -> Path | None:
    """The manifest of a sharded store given as the manifest file or its folder, else None."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    try:
        with open(path, "rb") as file:
            head = file.read(256)
    except OSError:
        return None
    return path if MANIFEST_FORMAT.encode() in head else None


def is_store_path(path: Any) -> bool:
    """Whether ``path`` names an embedding store: an ``.h5``/``.hdf5`` path (not a folder),
    or a sharded store (its manifest, or the folder holding one)."""
    if not isinstance(path, str | os.PathLike):
        return False
    path = Path(path)
    if path.suffix.lower() in STORE_SUFFIXES and not path.is_dir():
        return True
    return find_manifest(path) is not None


def commits_checksum(commits: np.ndarray) -> str:
    """Checksum of a store's commit table (end row and row checksums of every batch)."""
    width = len(COMMIT_COLUMNS)
    table = np.ascontiguousarray(np.asarray(commits, dtype=np.uint64).reshape(-1, width), "<u8")
    return hashlib.blake2b(table.tobytes(), digest_size=16).hexdigest()


def partial_path_of(shard: Path) -> Path:
    """Where the partial statistics of ``shard`` are kept."""
    return shard.with_name(shard.name + PARTIAL_SUFFIX)


@dataclass(frozen=True)
class ShardEntry:
    """One shard in a manifest: its path relative to the folder, committed rows and batches,
    the checksum of its commit table and its partial statistics file."""

    path: str
    rows: int
    commits: int
    checksum: str
    partial: str


# -- partial statistics ------------------------------------------------------------------------


def save_partial(path: Path, running: RunningGaussian, commits: np.ndarray) -> None:
    """Write ``running`` (count, mean, scatter) as the partial statistics of the first
    ``len(commits)`` committed batches of a shard (atomically)."""
    n, mean, scatter = running.state()
    partial = path.with_name(path.name + ".tmp")
    with open(partial, "wb") as handle:
        np.savez(
            handle,
            n=np.int64(n),
            mean=mean,
            scatter=scatter,
            commits=np.int64(len(commits)),
            checksum=np.array(commits_checksum(commits)),
        )
    os.replace(partial, path)


def _load_partial(path: Path, commits: np.ndarray, dim: int) -> RunningGaussian | None:
    """The saved partial statistics of a shard when they cover a prefix of its commits."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            covered = int(data["commits"])
            if covered > len(commits) or str(data["checksum"]) != commits_checksum(
                commits[:covered]
            ):
                return None
            rows = int(commits[covered - 1, 0]) if covered else 0
            if int(data["n"]) != rows or data["mean"].shape != (dim,):
                return None
            return RunningGaussian.from_state(rows, data["mean"], data["scatter"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, InputError):
        return None


def shard_statistics(store: EmbeddingStore, *, save: bool = True) -> RunningGaussian:
    """The partial statistics of a shard: those saved beside it, completed with the rows they
    do not cover yet (and saved again when ``save``)."""
    path = partial_path_of(store.path)
    commits = store.commits
    running = _load_partial(path, commits, store.dim)
    start = running.n if running is not None else 0
    if running is None:
        running = RunningGaussian(store.dim)
    if start < len(store):
        step = max(1, (64 << 20) // (4 * store.dim))
        for low in range(start, len(store), step):
            running.update(store.vectors(slice(low, min(low + step, len(store)))))
        if save:
            save_partial(path, running, commits)
    return running


# -- reading -----------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StoreError(f"manifest {path} is unreadable: {error}") from error
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise StoreError(f"{path} is not a beatmap_fid sharded-store manifest")
    if int(data.get("format_version", 0)) > MANIFEST_VERSION:
        raise StoreError(
            f"{path} has manifest format {data['format_version']}; this beatmap_fid reads up "
            f"to {MANIFEST_VERSION}: upgrade beatmap_fid"
        )
    missing = [
        key
        for key in ("extractor", "config", "config_hash", "dim", "rows", "shards")
        if key not in data
    ]
    if missing:
        raise StoreError(f"manifest {path} is malformed: missing {', '.join(missing)}")
    return data


class ShardedStore:
    """Read-only view of a sharded store, with the API of :class:`EmbeddingStore`.

    Rows are the shards' rows in manifest order. Shards are opened when read and closed
    again, and checked against the manifest (row count, commit-table checksum, extractor
    configuration) the first time: a shard changed since the manifest was written raises
    StoreError. Memory stays that of one block whatever the number of shards.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        manifest = find_manifest(path)
        if manifest is None:
            raise StoreError(
                f"{path} is not a sharded store: expected its {MANIFEST_NAME} or the folder "
                "holding it"
            )
        data = _read_manifest(manifest)
        self.manifest_path = manifest
        self.path = manifest.parent
        self.extractor = str(data["extractor"])
        self.config_hash = str(data["config_hash"])
        self._config_json = json.dumps(data["config"], sort_keys=True)
        self.dim = int(data["dim"])
        self.library_version = str(data.get("library_version", ""))
        self.format_version = MANIFEST_VERSION
        try:
            self.shards = [ShardEntry(**entry) for entry in data["shards"]]
        except TypeError as error:
            raise StoreError(f"manifest {manifest} is malformed: {error}") from error
        self._statistics_file = data.get("statistics")
        sizes = np.array([entry.rows for entry in self.shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if int(self._starts[-1]) != int(data["rows"]):
            raise StoreError(
                f"manifest {manifest} is malformed: its shards hold {int(self._starts[-1])} "
                f"rows, it says {data['rows']}"
            )
        absent = [entry.path for entry in self.shards if not (self.path / entry.path).is_file()]
        if absent:
            raise StoreError(
                f"{len(absent)} shard(s) of {manifest} are missing (first: {absent[0]}); "
                "copy the whole folder, or run the embedding again to rebuild them"
            )
        self._checked: set[int] = set()
        self._cache: dict[str, Any] = {}

    # -- identity

    @property
    def config(self) -> dict[str, Any]:
        """The extractor configuration the vectors were made with (a fresh copy)."""
        return json.loads(self._config_json)

    @property
    def options(self) -> dict[str, Any] | None:
        """The options the extractor was built with, as the first shard records them."""
        if not self.shards:
            return None
        with self.open_shard(0) as store:
            return store.options

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return (
            f"ShardedStore({str(self.path)!r}, extractor={self.extractor!r}, "
            f"rows={len(self)}, shards={len(self.shards)}, dim={self.dim})"
        )

    @contextmanager
    def open_shard(self, index: int) -> Iterator[EmbeddingStore]:
        """The shard ``index`` opened for reading (checked against the manifest once)."""
        entry = self.shards[index]
        with EmbeddingStore(self.path / entry.path) as store:
            if index not in self._checked:
                self._check(entry, store)
                self._checked.add(index)
            yield store

    def _check(self, entry: ShardEntry, store: EmbeddingStore) -> None:
        if (store.extractor, store.config_hash) != (self.extractor, self.config_hash):
            raise ConfigMismatchError(
                f"shard {entry.path} holds extractor {store.extractor!r} with config hash "
                f"{store.config_hash}; its manifest says {self.extractor!r}, {self.config_hash}"
            )
        if store.dim != self.dim:
            raise DimensionMismatchError(
                f"shard {entry.path} has dimension {store.dim}, its manifest {self.dim}"
            )
        commits = store.commits
        if len(store) != entry.rows or commits_checksum(commits) != entry.checksum:
            raise StoreError(
                f"shard {entry.path} changed since {self.manifest_path.name} was written "
                f"({len(store)} rows, manifest: {entry.rows}); finalize the folder again "
                "(beatmap_fid.shards.finalize_shards) or run the embedding again"
            )

    # -- per-row columns

    def _column(self, name: str, read: Any) -> Any:
        if name not in self._cache:
            parts = []
            for index in range(len(self.shards)):
                with self.open_shard(index) as store:
                    parts.append(read(store))
            self._cache[name] = parts
        return self._cache[name]

    @property
    def ids(self) -> np.ndarray:
        """Row ids, an object array of str."""
        parts = self._column("ids", lambda store: store.ids)
        return np.concatenate(parts) if parts else np.empty(0, dtype=object)

    @property
    def labels(self) -> np.ndarray | None:
        """Row labels ("" = none), or None when no row has one."""
        parts = self._column("labels", lambda store: store.labels)
        if all(part is None for part in parts):
            return None
        return np.concatenate(
            [
                np.full(entry.rows, "", dtype=object) if part is None else part
                for entry, part in zip(self.shards, parts)
            ]
        )

    @property
    def fingerprints(self) -> np.ndarray:
        """Row fingerprints ("" = none recorded)."""
        parts = self._column("fingerprints", lambda store: store.fingerprints)
        return np.concatenate(parts) if parts else np.empty(0, dtype=object)

    @property
    def n_events(self) -> np.ndarray | None:
        """Beatmap events per row (−1: not counted), or None when no row was counted."""
        parts = self._column("n_events", lambda store: store.n_events)
        if all(part is None for part in parts):
            return None
        return np.concatenate(
            [
                np.full(entry.rows, NOT_COUNTED, dtype=np.int32) if part is None else part
                for entry, part in zip(self.shards, parts)
            ]
        )

    @property
    def commits(self) -> np.ndarray:
        """Committed batches of every shard, end rows counted over the whole store."""
        parts = self._column("commits", lambda store: store.commits)
        width = len(COMMIT_COLUMNS)
        tables = []
        sources = np.uint64(0)
        for start, part in zip(self._starts[:-1], parts):
            table = np.array(part, dtype=np.uint64).reshape(-1, width)
            table[:, 0] += np.uint64(start)
            table[:, 1] += sources
            sources = table[-1, 1] if len(table) else sources
            tables.append(table)
        return np.concatenate(tables) if tables else np.zeros((0, width), dtype=np.uint64)

    # -- vectors

    def iter_blocks(self, block_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start_row, float32 block)`` over all rows in order, shard by shard."""
        for index, start in enumerate(self._starts[:-1].tolist()):
            with self.open_shard(index) as store:
                for offset, block in store.iter_blocks(block_rows):
                    yield start + offset, block

    def vectors(self, rows: int | slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """float32 vectors of all rows, a slice, an int, or an index / boolean mask array,
        in the order asked for."""
        n = len(self)
        if rows is None:
            rows = slice(None)
        if isinstance(rows, slice):
            index = np.arange(*rows.indices(n))
        elif isinstance(rows, int | np.integer):
            return self._take(np.array([rows]))[0]
        else:
            index = np.asarray(rows)
            if index.dtype == bool:
                if index.shape != (n,):
                    raise InputError(f"boolean row mask has shape {index.shape}, expected ({n},)")
                index = np.flatnonzero(index)
            elif index.ndim != 1 or (index.size and not np.issubdtype(index.dtype, np.integer)):
                raise InputError(
                    "rows must be None, an int, a slice, or a 1-D integer or bool array"
                )
        return self._take(index.astype(np.int64))

    def _take(self, index: np.ndarray) -> np.ndarray:
        n = len(self)
        out = np.empty((index.size, self.dim), dtype=np.float32)
        if index.size == 0:
            return out
        if index.min() < -n or index.max() >= n:
            raise InputError(f"row index out of range for a store of {n} rows")
        index = np.where(index < 0, index + n, index)
        shard_of = np.searchsorted(self._starts, index, side="right") - 1
        for shard in np.unique(shard_of).tolist():
            where = np.flatnonzero(shard_of == shard)
            with self.open_shard(shard) as store:
                out[where] = store.vectors(index[where] - self._starts[shard])
        return out

    def statistics(self, block_rows: int | None = None, *, progress: bool = False) -> GaussianStats:
        """Mean and covariance of all rows: the merged statistics the manifest names, else
        one streaming pass over the shards (float64, O(D²) memory)."""
        if self._statistics_file:
            path = self.path / self._statistics_file
            if path.is_file():
                stats = GaussianStats.load(path)
                if stats.n == len(self) and stats.dim == self.dim:
                    return stats
        running = RunningGaussian(self.dim)
        with tqdm(
            total=len(self), desc=f"statistics {self.path.name}", unit="row", disable=not progress
        ) as bar:
            for _, block in self.iter_blocks(block_rows):
                running.update(block)
                bar.update(len(block))
        return running.result()

    def close(self) -> None:
        """Forget cached columns (shards are only open while read)."""
        self._cache.clear()

    def __enter__(self) -> ShardedStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


STORE_TYPES = (EmbeddingStore, ShardedStore)
"""The classes of open stores, for ``isinstance`` checks."""


# -- finalizing --------------------------------------------------------------------------------


@contextmanager
def open_when_free(path: Path, wait_s: float) -> Iterator[EmbeddingStore]:
    """Open a shard for reading, waiting up to ``wait_s`` for its writer to let go of it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            store = EmbeddingStore(path)
            break
        except StoreLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    with store:
        yield store


def shard_created_ns(path: Path) -> int:
    """When a shard was created, from its name (nanoseconds since 1970; 0 if unnamed so)."""
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def free_shards(paths: Sequence[Path], wait_s: float, since_ns: int = 0) -> list[Path]:
    """``paths`` less the shards a live writer still holds, with a warning for each.

    Shards created at or after ``since_ns`` (this run's) are waited for up to ``wait_s``;
    older ones (a worker of an earlier run in this process that Ray has not stopped yet, or
    another run) are left out at once: their rows are embedded again, and a later run that
    finds them closed keeps one row per id.
    """
    free = []
    for path in paths:
        try:
            with open_when_free(path, wait_s if shard_created_ns(path) >= since_ns else 0.0):
                free.append(path)
        except StoreLockedError as error:
            warnings.warn(f"left out: {error}", RuntimeWarning, stacklevel=2)
    return free


def _remove_shard(path: Path) -> None:
    for stale in (path, partial_path_of(path)):
        stale.unlink(missing_ok=True)


def finalize_shards(
    folder: str | os.PathLike,
    current: Mapping[str, str | None] | None = None,
    *,
    extractor: Any = None,
    wait_s: float = 120.0,
    since_ns: int = 0,
    progress: bool = False,
) -> Path:
    """Write the manifest of the shards in ``folder/shards``; returns its path.

    Every id keeps one row: with ``current`` (id → fingerprint of the item as it is now),
    rows of an id whose fingerprint differs are dropped (their files changed); of the rows
    left, the one in the newest shard (shard names sort by time) is kept. Shards holding
    dropped rows are rewritten; shards left empty are removed. Writers still holding a shard
    are waited for up to ``wait_s`` seconds, those created before ``since_ns`` not at all
    (:func:`free_shards`: one still held is left out of the manifest). Shards of another extractor configuration raise
    ConfigMismatchError (or DimensionMismatchError). ``extractor`` (anything with ``name``,
    ``config`` and ``dim``) names the configuration of a folder without shards.
    """
    folder = Path(folder)
    paths = free_shards(sorted((folder / SHARD_DIR).glob("*.h5")), wait_s, since_ns)
    reference: tuple[str, dict[str, Any], str, int] | None = None
    if extractor is not None:
        from beatmap_fid.extractors.base import config_hash

        config = dict(extractor.config)
        reference = (extractor.name, config, config_hash(config), int(extractor.dim))
    if not paths and reference is None:
        raise InputError(f"{folder} holds no shards ({SHARD_DIR}/*.h5)")
    columns: list[tuple[np.ndarray, np.ndarray]] = []
    for path in paths:
        with EmbeddingStore(path) as store:
            identity = (store.extractor, store.config, store.config_hash, store.dim)
            if reference is None:
                reference = identity
            elif identity[2] != reference[2] or identity[0] != reference[0]:
                raise ConfigMismatchError(
                    f"{path} holds extractor {identity[0]!r} with config hash {identity[2]}, "
                    f"not {reference[0]!r} with {reference[2]}: one folder holds the shards "
                    "of one extractor configuration"
                )
            elif identity[3] != reference[3]:
                raise DimensionMismatchError(
                    f"{path} has dimension {identity[3]}, not {reference[3]}"
                )
            columns.append((store.ids, store.fingerprints))
    assert reference is not None
    extractor, config, hash_, dim = reference
    winner: dict[str, tuple[int, int]] = {}
    for shard, (ids, prints) in enumerate(columns):
        for row, (item_id, value) in enumerate(zip(ids.tolist(), prints.tolist())):
            wanted = current.get(item_id) if current is not None else None
            if wanted and value and value != wanted:
                continue  # computed from files that have changed since
            winner[item_id] = (shard, row)
    kept: list[Path] = []
    for shard, (path, (ids, _)) in enumerate(zip(paths, columns)):
        keep = {item_id for row, item_id in enumerate(ids) if winner.get(item_id) == (shard, row)}
        if len(keep) == len(ids) and len(ids):
            kept.append(path)
        elif not keep:
            _remove_shard(path)
        else:
            with StoreWriter(path, extractor, config, dim) as writer:
                writer.retain(keep)
            kept.append(path)
    total = RunningGaussian(dim)
    entries = []
    for path in tqdm(kept, desc="shard statistics", unit="shard", disable=not progress):
        with EmbeddingStore(path) as store:
            total.merge(shard_statistics(store))
            commits = store.commits
            entries.append(
                ShardEntry(
                    path.relative_to(folder).as_posix(),
                    len(store),
                    len(commits),
                    commits_checksum(commits),
                    partial_path_of(path).relative_to(folder).as_posix(),
                )
            )
    statistics = folder / STATISTICS_NAME
    if total.n >= 2:
        total.result().save(statistics)
    else:
        statistics.unlink(missing_ok=True)
    manifest = {
        "format": MANIFEST_FORMAT,  # first: find_manifest looks for it in the file's head
        "format_version": MANIFEST_VERSION,
        "library_version": __version__,
        "extractor": extractor,
        "config": config,
        "config_hash": hash_,
        "dim": dim,
        "rows": int(total.n),
        "statistics": STATISTICS_NAME if total.n >= 2 else None,
        "shards": [asdict(entry) for entry in entries],
    }
    path = folder / MANIFEST_NAME
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(partial, path)
    return path
