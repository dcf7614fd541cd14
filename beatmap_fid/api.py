"""The library's front door: embed sources into stores and compute FID in one call.

These functions tie the stages together (extractor → store → statistics → Fréchet distance);
every numeric step lives in its own module. Sources may be folders or files (embedded with an
extractor, resumably, into an HDF5 store), existing stores, or cached ``.npz`` statistics.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import slider
from tqdm.auto import tqdm

from beatmap_fid.beatmap.reading import BeatmapFile, parse_beatmap_text, read_beatmap_file
from beatmap_fid.errors import (
    BeatmapFidError,
    ExtractorError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
    SkipLog,
    SourceError,
)
from beatmap_fid.extractors.base import (
    Extractor,
    Fingerprinter,
    Item,
    batched,
    build_extractor,
    config_hash,
    extractor_batches,
    extractor_fallbacks,
    map_id,
)
from beatmap_fid.frechet import frechet_distance
from beatmap_fid.metrics.fid_uncertainty import sample_warnings
from beatmap_fid.shards import ShardedStore, is_store_path
from beatmap_fid.stats import GaussianStats, RunningGaussian
from beatmap_fid.store import EmbeddingStore, StoreWriter, open_store

DEFAULT_EXTRACTOR = "descriptors"
STORE_SUFFIXES = (".h5", ".hdf5")


def default_store_dir() -> Path:
    """Where stores of embedded folders go when no ``store_dir`` is given.

    ``$BEATMAP_FID_CACHE`` when set, else ``~/.cache/beatmap_fid/stores``.
    """
    root = os.environ.get("BEATMAP_FID_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "beatmap_fid" / "stores"


@dataclass
class EmbedResult:
    """What :func:`embed_to_store` did: the store, its rows for this source, and what was skipped.

    ``ids`` are the source's items that have a row in the store (embedded now or before);
    ``replaced`` counts rows embedded again because a source file changed; ``fallbacks``
    lists the sources embedded with a fallback (for example windows counted from a map's
    length because its audio is unreadable), whether embedded now or before.
    """

    store_path: Path
    ids: list[str]
    written: int
    reused: int
    skipped: SkipLog = field(default_factory=SkipLog)
    replaced: int = 0
    fallbacks: SkipLog = field(default_factory=SkipLog)

    @property
    def n_items(self) -> int:
        return len(self.ids)

    @property
    def n_sources(self) -> int:
        """Number of distinct files behind the items (ids are ``file#index`` for windows)."""
        return len({map_id(item_id) for item_id in self.ids})

    def vectors(self) -> np.ndarray:
        """float32 vectors of :attr:`ids`, in that order, read from the store."""
        with open_store(self.store_path) as store:
            row_of = {item_id: row for row, item_id in enumerate(store.ids)}
            return store.vectors(np.array([row_of[i] for i in self.ids], dtype=np.int64))


class StoreSession:
    """One extractor writing one store: the rows of the items it is offered, each embedded
    at most once per fingerprint.

    :meth:`new_items` fingerprints items and passes on those the store does not hold with
    that fingerprint; :meth:`write` embeds a batch of them and appends it; :meth:`close`
    returns what was done. Items offered per source file with :meth:`source_items` make the
    file *complete* once all of them are stored: the store records the file's key, and a
    later run (a resume after a kill) skips the file without reading it
    (:meth:`is_complete`, :meth:`reuse_source`). A file embedded with a fallback is never
    recorded complete: later runs read it again, so that they report its fallback too.

    A worker writing one shard of a sharded store sets :attr:`held_elsewhere` (id →
    fingerprint of the rows other shards hold: those count as stored) and :attr:`running`
    (partial statistics every written vector is folded into).
    """

    def __init__(self, extractor: Extractor, store_path: Path, skipped: SkipLog) -> None:
        self.extractor = extractor
        self.store_path = store_path
        self.skipped = skipped
        self.ids: list[str] = []
        self.new_ids: list[str] = []  # the ids written by this session, in order
        self.written = self.reused = self.replaced = 0
        self.held_elsewhere: Mapping[str, str] = {}
        self.running: RunningGaussian | None = None
        self._fingerprint = Fingerprinter(extractor.config)
        self._prints: dict[str, str | None] = {}
        self._fallbacks_before = self._fallbacks_scanned = len(extractor_fallbacks(extractor))
        self._fallback_sources: set[str] = set()
        self._outstanding: dict[str, tuple[set[str], str]] = {}  # source -> (ids, key)
        self._finished: list[tuple[str, str]] = []  # complete, not yet recorded
        self._stored_by_source: dict[str, list[str]] | None = None
        store_path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = StoreWriter(
            store_path,
            extractor.name,
            extractor.config,
            extractor.dim,
            options=getattr(extractor, "build_options", None),
        )

    def source_key(self, paths: Sequence[Path]) -> str:
        """Key of a source file and the files beside it that it names (its audio)."""
        return self._fingerprint(Item("", None, sources=tuple(paths)))

    def is_complete(self, source_id: str, key: str) -> bool:
        """Whether every item of the source file is stored, from the file as it is now."""
        return self._writer.completed_key(source_id) == key

    def reuse_source(self, source_id: str) -> None:
        """Count the stored items of a complete source file as this run's, unread."""
        if self._stored_by_source is None:
            self._stored_by_source = {}
            for item_id in self._writer.existing_ids:
                self._stored_by_source.setdefault(map_id(item_id), []).append(item_id)
        stored = self._stored_by_source.get(source_id, [])
        self.ids.extend(stored)
        self.reused += len(stored)

    def new_items(self, items: Iterable[Item]) -> Iterator[Item]:
        """The items that need embedding; the others are counted as reused."""
        for item in items:
            try:
                self._prints[item.id] = self._fingerprint(item)
            except SourceError as error:
                self.skipped.add(item.id, str(error))
                continue
            if self._writer.holds(item.id, self._prints[item.id]) or self._held_elsewhere(item.id):
                self.reused += 1
                self.ids.append(item.id)
                continue
            yield item

    def _held_elsewhere(self, item_id: str) -> bool:
        stored = self.held_elsewhere.get(item_id)
        fingerprint = self._prints[item_id]
        return stored is not None and (not fingerprint or stored == fingerprint)

    def fingerprint(self, item_id: str) -> str | None:
        """Fingerprint of an item offered to :meth:`new_items` (None: it has none)."""
        return self._prints.get(item_id)

    @property
    def commits(self) -> np.ndarray:
        """The store's committed batches (:attr:`EmbeddingStore.commits`)."""
        return self._writer.commits

    def source_items(self, source_id: str, key: str, items: Sequence[Item]) -> list[Item]:
        """The items of one source file that need embedding; the file is recorded complete
        once they are written (at once when there are none)."""
        new = list(self.new_items(items))
        if items and source_id not in self._sources_with_fallbacks():
            if new:
                self._outstanding[source_id] = ({item.id for item in new}, key)
            else:
                self._finished.append((source_id, key))
        return new

    def write(self, batch: Sequence[Item]) -> None:
        """Embed ``batch`` and append its rows, with the source files it completes."""
        if not batch:
            return
        batch_ids = [item.id for item in batch]
        vectors = self.extractor.embed([item.payload for item in batch])
        labels = [item.label or "" for item in batch]
        written = set(batch_ids)
        for source_id in [s for s, (ids, _) in self._outstanding.items() if ids & written]:
            ids, key = self._outstanding[source_id]
            ids -= written
            if not ids:
                self._finished.append((source_id, key))
                del self._outstanding[source_id]
        self.replaced += sum(item_id in self._writer for item_id in batch_ids)
        self.written += self._writer.append(
            batch_ids,
            vectors,
            labels if any(labels) else None,
            fingerprints=[self._prints[i] for i in batch_ids],
            n_events=[item.n_events for item in batch],
            completed=self._finished,
        )
        self._finished = []
        self.ids.extend(batch_ids)
        self.new_ids.extend(batch_ids)
        if self.running is not None:
            self.running.update(np.asarray(vectors))

    def close(self, prune: bool = False) -> EmbedResult:
        """Close the store (with ``prune``, keeping only this session's rows)."""
        try:
            self._writer.complete(self._finished)
            if prune:
                self._writer.retain(self.ids)
        finally:
            self._writer.close()
        return EmbedResult(
            self.store_path,
            self.ids,
            self.written,
            self.reused,
            self.skipped,
            self.replaced,
            self.fallbacks(),
        )

    def fallbacks(self) -> SkipLog:
        """The extractor's fallbacks recorded since this session began."""
        entries = extractor_fallbacks(self.extractor).entries[self._fallbacks_before :]
        return SkipLog(list(entries))

    def _sources_with_fallbacks(self) -> set[str]:
        """Ids of the sources embedded with a fallback since this session began."""
        entries = extractor_fallbacks(self.extractor).entries
        self._fallback_sources.update(e.source for e in entries[self._fallbacks_scanned :])
        self._fallbacks_scanned = len(entries)
        return self._fallback_sources

    def abort(self) -> None:
        """Close the store after an error, keeping what was committed."""
        self._writer.close()


def extractor_modes(extractor: Extractor) -> tuple[int, ...]:
    """The game modes a beatmap extractor reads (its ``modes``, else its config's, else
    osu!standard)."""
    modes = getattr(extractor, "modes", None) or extractor.config.get("modes") or (0,)
    return tuple(int(m) for m in modes)


def embed_beatmaps(
    source: Path,
    sessions: Sequence[StoreSession],
    *,
    batch_size: int,
    progress: bool,
    paths: Sequence[Path] | None = None,
) -> None:
    """One pass over the ``.osu`` files under ``source`` (or ``paths`` among them) for every
    session's beatmap extractor: each map is read at most once, and not at all when every
    session holds it complete from the same bytes (a resume skips finished maps without
    parsing them)."""
    from beatmap_fid.beatmap.reading import (
        find_beatmaps,
        map_source_files,
        mode_name,
        read_beatmap_file,
        source_id,
    )

    modes = [extractor_modes(session.extractor) for session in sessions]
    union = sorted({m for chosen in modes for m in chosen})
    pending: list[list[Item]] = [[] for _ in sessions]
    paths = find_beatmaps(source) if paths is None else list(paths)
    for path in tqdm(paths, desc=f"embedding {source.name}", unit="file", disable=not progress):
        file_id = source_id(path, source)
        try:
            keys = [session.source_key(map_source_files(path)) for session in sessions]
        except SourceError as error:
            for session in sessions:
                session.skipped.add(file_id, str(error))
            continue
        todo = []
        for index, (session, key) in enumerate(zip(sessions, keys)):
            if session.is_complete(file_id, key):
                session.reuse_source(file_id)
            else:
                todo.append(index)
        if not todo:
            continue
        try:
            beatmap_file = read_beatmap_file(path, root=source, modes=union)
        except SourceError as error:
            for index in todo:
                sessions[index].skipped.add(file_id, str(error))
            continue
        mode = int(beatmap_file.beatmap.mode)
        for index in todo:
            session = sessions[index]
            if mode not in modes[index]:
                allowed = ", ".join(mode_name(m) for m in modes[index])
                session.skipped.add(
                    file_id,
                    f"unsupported mode: {mode_name(mode)} (Mode {mode}); modes read here: "
                    f"{allowed}",
                )
                continue
            items = session.extractor.beatmap_items(beatmap_file, session.skipped)
            pending[index] += session.source_items(file_id, keys[index], items)
            if len(pending[index]) >= batch_size:
                session.write(pending[index])
                pending[index] = []
    for session, batch in zip(sessions, pending):
        session.write(batch)


def embed_to_store(
    source: str | Path,
    extractor: Extractor | str = DEFAULT_EXTRACTOR,
    store_path: str | Path | None = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
    prune: bool = False,
    extractor_options: dict[str, Any] | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0,
) -> EmbedResult:
    """Embed every item of ``source`` into the store at ``store_path``, resumably.

    Every row records a fingerprint of the files it was computed from (and of the extractor
    configuration). Items stored with the same fingerprint are not embedded again, so an
    interrupted run continues where it stopped; items whose files changed are embedded again
    and their old rows dropped; maps already complete are not even read again. With
    ``prune`` the store keeps only this source's rows (what a cache of one folder wants).
    Without ``store_path`` the store goes to the cache (:func:`store_path_for`), pruned.
    ``progress`` shows a bar with the files done, their total and the time left.


    ``engine="ray"`` embeds on a Ray cluster (``address``, default a local one) with
    ``workers`` actors of ``gpus_per_worker`` GPUs each, into a sharded store: ``store_path``
    is then a folder (see :func:`beatmap_fid.distributed.embed_sharded`).
    """
    if engine != "local":
        from beatmap_fid.distributed import embed_sharded

        if engine != "ray":
            raise InputError(f"unknown engine {engine!r}; choose 'local' or 'ray'")
        if store_path is None or prune:
            raise InputError("engine='ray' writes a sharded store: pass store_path, a folder")
        return embed_sharded(
            source,
            extractor,
            store_path,
            engine="ray",
            address=address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            batch_size=batch_size,
            progress=progress,
            extractor_options=extractor_options,
        )
    if isinstance(extractor, str):
        extractor = build_extractor(extractor, **(extractor_options or {}))
    source = Path(source)
    if not source.exists():
        raise InputError(f"source {source} does not exist")
    if store_path is None:
        store_path, prune = store_path_for(source, extractor), True
    skipped = SkipLog()
    session = StoreSession(extractor, Path(store_path), skipped)
    try:
        if hasattr(extractor, "beatmap_items"):
            embed_beatmaps(source, [session], batch_size=batch_size, progress=progress)
        elif getattr(extractor, "batches", None) is not None:
            # Items are files (images): list them, then count batches of them as they embed.
            items = list(session.new_items(extractor.items(source, skipped)))
            with tqdm(
                total=len(items), desc=f"embedding {source.name}", unit="file", disable=not progress
            ) as bar:
                for batch in extractor_batches(extractor, items, batch_size, skipped):
                    session.write(batch)
                    bar.update(len(batch))
        else:
            total = _count_sources(extractor, source) if progress else None
            with tqdm(
                total=total, desc=f"embedding {source.name}", unit="file", disable=not progress
            ) as bar:
                raw_items = _counting_sources(extractor.items(source, skipped), skipped, bar)
                for batch in extractor_batches(
                    extractor, session.new_items(raw_items), batch_size, skipped
                ):
                    session.write(batch)
    except BaseException:
        session.abort()
        raise
    return session.close(prune)


def _count_sources(extractor: Extractor, source: Path) -> int | None:
    """How many files ``extractor`` reads under ``source`` (None when unknown)."""
    if source.is_file():
        return 1
    if extractor.name == "audio":
        from beatmap_fid.extractors.audio import audio_files

        return len(audio_files(source, SkipLog()))
    return None


def _counting_sources(items: Iterable[Item], skipped: SkipLog, bar: Any) -> Iterator[Item]:
    """``items`` unchanged, moving ``bar`` to the number of source files reached so far
    (files that gave items, and files skipped)."""
    reached: set[str] = set()
    skips_seen = 0

    def advance() -> None:
        nonlocal skips_seen
        reached.update(map_id(entry.source) for entry in skipped.entries[skips_seen:])
        skips_seen = len(skipped.entries)
        bar.update(len(reached) - bar.n)

    for item in items:
        reached.add(map_id(item.id))
        advance()
        yield item
    advance()


def store_path_for(source: Path, extractor: Extractor, store_dir: str | Path | None = None) -> Path:
    """The cache store of ``source`` embedded with ``extractor`` (one file per config).

    The name holds the folder's name for people and a hash of its resolved absolute path, so
    two sources never share a store.
    """
    resolved = str(Path(source).resolve())
    path_hash = hashlib.sha256(resolved.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(resolved).name)[:40] or "root"
    folder = Path(store_dir) if store_dir is not None else default_store_dir()
    return folder / f"{name}-{path_hash}.{extractor.name}.{config_hash(extractor.config)}.h5"


def embed_cached(
    source: str | Path,
    extractor: Extractor,
    store_dir: str | Path | None = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> EmbedResult:
    """Embed ``source`` into its cache store under ``store_dir`` (see :func:`store_path_for`).

    The store follows the folder: changed files are embedded again and removed files leave
    it, so its rows are always those of the folder as it is now.
    """
    target = store_path_for(Path(source), extractor, store_dir)
    return embed_to_store(
        source, extractor, target, batch_size=batch_size, progress=progress, prune=True
    )


def _stats_cache_key(store_path: Path, store: EmbeddingStore) -> str:
    """Identifies one state of a store file: any write or rewrite changes it."""
    info = store_path.stat()
    return f"{store.config_hash}:{len(store)}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"


def store_statistics(store_path: str | Path, ids: Iterable[str] | None = None) -> GaussianStats:
    """Gaussian statistics of a store's rows (only those whose id is in ``ids`` when given).

    Statistics of a whole store are cached beside it as ``<store>.stats.npz`` and reused while
    the store file is unchanged; a sharded store gives the merged statistics its manifest
    names.
    """
    store_path = Path(store_path)
    with open_store(store_path) as store:
        keep = None
        if ids is not None:
            wanted = set(ids)
            keep = np.fromiter((item_id in wanted for item_id in store.ids), dtype=bool)
            if keep.all():
                keep = None
        if keep is not None:
            running = RunningGaussian(store.dim)
            for start, block in store.iter_blocks():
                mask = keep[start : start + len(block)]
                if mask.any():
                    running.update(block[mask])
            return running.result()
        if isinstance(store, ShardedStore):
            return store.statistics()  # merged from the shards' partial statistics
        cache = store_path.with_name(store_path.name + ".stats.npz")
        key = _stats_cache_key(store_path, store)
        if cache.exists():
            try:
                with np.load(cache, allow_pickle=False) as cached:
                    fresh = "key" in cached.files and str(cached["key"]) == key
                if fresh:
                    return GaussianStats.load(cache)
            except (BeatmapFidError, OSError, EOFError, ValueError, zipfile.BadZipFile):
                pass  # a damaged cache is computed again
        stats = store.statistics()
        partial = cache.with_name(cache.name + ".partial")
        with open(partial, "wb") as handle:
            np.savez(handle, mu=stats.mu, sigma=stats.sigma, n=stats.n, key=key)
        os.replace(partial, cache)
        return stats


def skip_entries(log: SkipLog) -> list[dict[str, str]]:
    """A skip (or fallback) record as JSON: ``[{"source": ..., "reason": ...}, ...]``."""
    return [{"source": entry.source, "reason": entry.reason} for entry in log.entries]


@dataclass
class SideSummary:
    """One side of an FID comparison: where it came from, how much went in, what was skipped
    and what was embedded with a fallback (see :class:`EmbedResult`)."""

    source: str
    kind: str  # "folder", "store" or "statistics"
    n_sources: int | None
    n_vectors: int | None
    store_path: str | None = None
    skipped: SkipLog = field(default_factory=SkipLog)
    fallbacks: SkipLog = field(default_factory=SkipLog)

    @classmethod
    def of_folder(cls, source: str | Path, result: EmbedResult) -> SideSummary:
        """The summary of a folder (or file) embedded into ``result``."""
        return cls(
            str(source),
            "folder",
            result.n_sources,
            result.n_items,
            str(result.store_path),
            result.skipped,
            result.fallbacks,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "n_sources": self.n_sources,
            "n_vectors": self.n_vectors,
            "store": self.store_path,
            "skipped": skip_entries(self.skipped),
            "fallbacks": skip_entries(self.fallbacks),
        }


@dataclass
class FIDResult:
    """The Fréchet distance between two sets and what each side held."""

    fid: float
    real: SideSummary
    generated: SideSummary
    extractor: str
    warnings: list[str] = field(default_factory=list)  # sets too small to trust the value

    def __float__(self) -> float:
        return self.fid

    def to_dict(self) -> dict[str, Any]:
        return {
            "fid": self.fid,
            "extractor": self.extractor,
            "real": self.real.to_dict(),
            "generated": self.generated.to_dict(),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class SideStatistics:
    """Statistics of a set with the summary of where they came from (e.g. a named reference,
    :meth:`beatmap_fid.references.Reference.side`); a side of :func:`compute_fid` as it is."""

    stats: GaussianStats
    summary: SideSummary


def resolve_statistics(
    source: str | Path | GaussianStats | SideStatistics | np.ndarray,
    extractor: Extractor,
    *,
    store_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[GaussianStats, SideSummary]:
    """Statistics of a folder/file (embedded first), a store, a ``.npz``, statistics or a
    feature array (n, d), with a summary."""
    if isinstance(source, SideStatistics):
        return source.stats, source.summary
    if isinstance(source, GaussianStats):
        return source, SideSummary("<statistics>", "statistics", None, source.n)
    if not isinstance(source, str | os.PathLike):
        features = feature_array(source)
        return RunningGaussian(features.shape[1]).update(features).result(), SideSummary(
            "<array>", "array", None, len(features)
        )
    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        stats = GaussianStats.load(path)
        return stats, SideSummary(str(path), "statistics", None, stats.n)
    if is_store_path(path) and path.exists():
        stats = store_statistics(path)
        with open_store(path) as store:
            n_sources = len({map_id(item_id) for item_id in store.ids})
        return stats, SideSummary(str(path), "store", n_sources, stats.n, str(path))
    if not path.exists():
        raise InputError(f"{path} does not exist (expected a folder, a file, a store or a .npz)")
    result = embed_cached(path, extractor, store_dir, batch_size=batch_size, progress=progress)
    summary = SideSummary.of_folder(path, result)
    if result.n_items < 2:
        raise InsufficientSamplesError(
            f"{path}: {result.n_items} usable item(s) from {result.n_sources} file(s); "
            f"at least 2 are needed. {result.skipped.brief()}"
        )
    return store_statistics(result.store_path, result.ids), summary


def feature_array(features: Any) -> np.ndarray:
    """A float64 array (n, d) of features given as a NumPy array or a torch tensor (on any
    device); InputError for anything else."""
    if hasattr(features, "detach"):  # a torch tensor
        features = features.detach().to("cpu").double().numpy()
    array = np.asarray(features)
    if array.ndim != 2 or array.dtype.kind not in "biuf":
        raise InputError(
            f"features must be a numeric array or tensor of shape (n, d), got "
            f"{type(features).__name__} of shape {getattr(array, 'shape', None)}"
        )
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise NonFiniteError("features contain NaN or infinite values")
    return array


def compute_fid(
    real: str | Path | GaussianStats | SideStatistics,
    generated: str | Path | GaussianStats | SideStatistics,
    *,
    extractor: Extractor | str = DEFAULT_EXTRACTOR,
    store_dir: str | Path | None = None,
    batch_size: int = 64,
    device: str | None = None,
    strict: bool = False,
    progress: bool = False,
    cache: bool = True,
    extractor_options: dict[str, Any] | None = None,
) -> FIDResult:
    """FID between two sets given as folders of maps (or files), stores, ``.npz`` statistics,
    statistics or feature arrays.

    Folders are embedded with ``extractor`` into cache stores under ``store_dir`` (default
    :func:`default_store_dir`), which follow the folders' contents: a re-run embeds only new
    or changed files. ``cache=False`` embeds into a temporary folder removed afterwards.
    Unusable inputs are skipped and listed in the result, or raise
    :class:`~beatmap_fid.errors.SourceError` when ``strict``; inputs embedded with a fallback
    are listed in each side's ``fallbacks`` (``strict`` does not refuse them). ``progress``
    shows embedding progress bars.
    """
    if isinstance(extractor, str):
        extractor = build_extractor(extractor, **(extractor_options or {}))
    sides = []
    with tempfile.TemporaryDirectory(prefix="beatmap_fid-") as scratch:
        for source in (real, generated):
            stats, summary = resolve_statistics(
                source,
                extractor,
                store_dir=store_dir if cache else scratch,
                batch_size=batch_size,
                progress=progress,
            )
            if not cache and summary.kind == "folder":
                summary.store_path = None
            if strict and summary.skipped:
                raise SourceError(f"{summary.source}: {summary.skipped.brief()}")
            sides.append((stats, summary))
    (real_stats, real_summary), (gen_stats, gen_summary) = sides
    fid = frechet_distance(real_stats, gen_stats, device=device)
    warnings = sample_warnings(
        real_stats.dim,
        real=(real_summary.n_vectors, real_summary.n_sources),
        generated=(gen_summary.n_vectors, gen_summary.n_sources),
    )
    return FIDResult(fid, real_summary, gen_summary, extractor.name, warnings)


MapLike = str | Path | slider.Beatmap


class MapEmbedder:
    """Vectors of maps held in memory (paths, ``.osu`` text or ``slider.Beatmap`` objects) or
    of feature arrays and tensors passed as they are; what :class:`StreamingFID` and the
    torchmetrics metric feed their statistics with. Maps that cannot be used are recorded in
    :attr:`skipped`."""

    def __init__(self, extractor: Extractor, batch_size: int = 64) -> None:
        self.extractor = extractor
        self.batch_size = batch_size
        self.skipped = SkipLog()
        self.n_maps = 0
        self._fallbacks_before = len(extractor_fallbacks(self.extractor))

    @property
    def fallbacks(self) -> SkipLog:
        """Generated maps embedded with a fallback since the last reset (see
        :class:`EmbedResult`)."""
        entries = extractor_fallbacks(self.extractor).entries[self._fallbacks_before :]
        return SkipLog(list(entries))

    def _beatmap_file(self, source: MapLike, audio: str | Path | None) -> BeatmapFile:
        audio_path = Path(audio) if audio is not None else None
        if isinstance(source, slider.Beatmap):
            name = f"<map {self.n_maps}>"
            return BeatmapFile(Path(name), name, source, audio_path)
        if isinstance(source, str) and ("\n" in source or source.startswith("osu file format")):
            beatmap, notes = parse_beatmap_text(source)
            name = f"<map {self.n_maps}>"
            return BeatmapFile(Path(name), name, beatmap, audio_path, tuple(notes))
        beatmap_file = read_beatmap_file(source)
        if audio_path is not None:
            beatmap_file = replace(beatmap_file, audio_path=audio_path)
        return beatmap_file

    def vectors(self, maps: Any, audio: str | Path | None = None) -> Iterator[np.ndarray]:
        """Blocks of vectors (n, dim) of ``maps``: one map or features, or a list of maps;
        ``audio`` (optional) is the audio file the maps were made for."""
        if is_features(maps):
            yield feature_array(maps)
            return
        if not hasattr(self.extractor, "beatmap_items"):
            raise ExtractorError(
                f"extractor {self.extractor.name!r} cannot embed beatmaps held in memory: "
                "pass its features as an array"
            )
        if isinstance(maps, str | Path | slider.Beatmap):
            maps = [maps]
        for source in maps:
            try:
                beatmap_file = self._beatmap_file(source, audio)
            except SourceError as error:
                label = source if isinstance(source, Path) or "\n" not in str(source) else "text"
                self.skipped.add(f"<map {self.n_maps}> {label}"[:200], str(error))
                self.n_maps += 1
                continue
            self.n_maps += 1
            items = self.extractor.beatmap_items(beatmap_file, self.skipped)
            for batch in batched(items, self.batch_size):
                yield self.extractor.embed([item.payload for item in batch])


def is_features(value: Any) -> bool:
    """Whether ``value`` is a feature array or tensor (anything with two dimensions and a
    numeric dtype) rather than maps."""
    if hasattr(value, "detach") and hasattr(value, "shape"):
        return True
    return isinstance(value, np.ndarray)


class StreamingFID:
    """FID of maps or features held in memory against a fixed reference, in the torchmetrics
    style.

    Built once against a reference (folder, store, ``.npz`` statistics,
    :class:`GaussianStats`, a named reference's :meth:`~beatmap_fid.references.Reference.side`
    or a feature array), then fed with :meth:`update`: maps as paths, ``.osu`` text or parsed
    ``slider.Beatmap`` objects, or feature arrays / torch tensors (n, dim) made by the
    extractor elsewhere; :meth:`compute` returns the FID. Nothing is written to disk: only the
    running mean and covariance are kept. See :mod:`beatmap_fid.integrations.torchmetrics`
    for a torchmetrics ``Metric`` that synchronises across processes.
    """

    def __init__(
        self,
        reference: Any,
        extractor: Extractor | str = DEFAULT_EXTRACTOR,
        *,
        store_dir: str | Path | None = None,
        device: str | None = None,
        batch_size: int = 64,
        progress: bool = False,
        extractor_options: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(extractor, str):
            extractor = build_extractor(extractor, **(extractor_options or {}))
        self.extractor = extractor
        self.device = device
        self._embedder = MapEmbedder(extractor, batch_size)
        self.reference, self.reference_summary = resolve_statistics(
            reference, extractor, store_dir=store_dir, batch_size=batch_size, progress=progress
        )
        self.reset()

    def reset(self) -> None:
        """Forget every generated map seen so far (the reference is kept)."""
        self._running = RunningGaussian(self.extractor.dim)
        self._embedder.skipped = SkipLog()
        self._embedder.n_maps = 0
        self._fallbacks_before = len(extractor_fallbacks(self.extractor))

    @property
    def skipped(self) -> SkipLog:
        return self._embedder.skipped

    @property
    def fallbacks(self) -> SkipLog:
        """Generated maps embedded with a fallback since the last reset (see
        :class:`EmbedResult`)."""
        entries = extractor_fallbacks(self.extractor).entries[self._fallbacks_before :]
        return SkipLog(list(entries))

    @property
    def n_maps(self) -> int:
        return self._embedder.n_maps

    @property
    def n_vectors(self) -> int:
        return self._running.n

    def update(self, maps: Any, audio: str | Path | None = None) -> None:
        """Add generated maps, or their features (an array or tensor (n, dim)); ``audio``
        (optional) is the audio file the maps were made for.

        Maps that cannot be used are recorded in :attr:`skipped` with their reason.
        """
        for block in self._embedder.vectors(maps, audio):
            self._running.update(block)

    def compute(self) -> float:
        """FID between the reference and every generated map given since the last reset."""
        if self._running.n < 2:
            raise InsufficientSamplesError(
                f"{self._running.n} generated window(s) so far; at least 2 are needed. "
                f"{self.skipped.brief()}"
            )
        return frechet_distance(self.reference, self._running.result(), device=self.device)
