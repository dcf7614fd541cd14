"""Embedding on a Ray cluster: one worker per process (or GPU), one shard per worker.

The driver lists the work: the ``.osu`` files of a folder for beatmap extractors (each worker
reads and cuts its maps itself, where the time goes), the items of the source for the others
(an image's item is its path). Ray Data's ``map_batches`` hands batches of that list to a
pool of stateful actors (:class:`ShardWorker`), each of which builds its extractor once,
fingerprints its items, embeds those that no shard holds yet with that fingerprint, and
appends them to its own shard (an ordinary store, one writer per file) in one commit per
batch, keeping the partial statistics (count, mean, scatter) of what it wrote. When the
dataset is done the driver finalizes the folder (:func:`beatmap_fid.shards.finalize_shards`):
one row per id, partial statistics merged exactly, the manifest written last.

Fault tolerance comes from Ray and the store: an actor that dies (node lost, out of memory,
killed) is restarted and its batch retried, on a new shard; the dead actor's shard keeps the
batches it committed, and an item whose batch was committed before the actor died but
retried anyway is kept once when the folder is finalized. A re-run after an interruption
reads the committed rows of every shard in the folder and embeds only what they lack.

:class:`ShardWorker` is plain Python: without Ray, ``engine="local"`` runs the same stages in
this process with one worker.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import pickle
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.api import EmbedResult, StoreSession, embed_beatmaps
from beatmap_fid.errors import (
    BeatmapFidError,
    ConfigMismatchError,
    InputError,
    SkipLog,
    WorkerError,
)
from beatmap_fid.extractors.base import (
    Extractor,
    build_extractor,
    config_hash,
    extractor_batches,
    map_id,
)
from beatmap_fid.shards import (
    SHARD_DIR,
    finalize_shards,
    free_shards,
    partial_path_of,
    save_partial,
)
from beatmap_fid.stats import RunningGaussian
from beatmap_fid.store import EmbeddingStore

ENGINES = ("local", "ray")
PARTIAL_EVERY_S = 10.0
"""Partial statistics of a shard are saved after a batch at most this often (and always when
the worker closes, and after every batch when they are small); the driver completes them from
the shard for rows they do not cover."""
_SMALL_SCATTER = 512  # dimension up to which partial statistics are saved after every batch
WAIT_S = 60.0
"""How long the driver waits for a worker of an earlier (or ending) run to close its shard."""
MAX_RESTARTS = 4
"""How often Ray restarts a worker actor that died, and retries the batch it was running."""


@dataclass(frozen=True)
class ExtractorSpec:
    """How a worker gets its extractor: built by name with options (each worker on its own
    device), or a built extractor shipped to it."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    instance: Extractor | None = None

    def build(self) -> Extractor:
        if self.instance is not None:
            return self.instance
        return build_extractor(self.name, **self.options)


def is_beatmap_extractor(extractor: Extractor) -> bool:
    """Whether the extractor cuts items from parsed maps one file at a time."""
    return callable(getattr(extractor, "beatmap_items", None))


# -- the work list --------------------------------------------------------------------------


def _shard_paths(folder: Path) -> list[Path]:
    return sorted((folder / SHARD_DIR).glob("*.h5"))


def held_rows(folder: Path, extractor: Extractor) -> dict[str, str]:
    """``id -> fingerprint`` of the committed rows of every shard in ``folder`` (the newest
    shard's row where an id is in several). Shards of another configuration raise; shards a
    live writer still holds are left out, with a warning (:func:`free_shards`)."""
    wanted = config_hash(extractor.config)
    held: dict[str, str] = {}
    for path in free_shards(_shard_paths(folder), WAIT_S, since_ns=time.time_ns()):
        with EmbeddingStore(path) as store:
            if (store.extractor, store.config_hash) != (extractor.name, wanted):
                raise ConfigMismatchError(
                    f"{folder} holds shards of extractor {store.extractor!r} with config hash "
                    f"{store.config_hash} ({path.name}); this run embeds with {extractor.name!r}, "
                    f"config hash {wanted}: write to another folder"
                )
            held.update(zip(store.ids.tolist(), store.fingerprints.tolist()))
    return held


def work_units(
    source: Path, extractor: Extractor, held: Mapping[str, str], skipped: SkipLog
) -> list[dict[str, Any]]:
    """The rows of the work list: one per ``.osu`` file for beatmap extractors, else one per
    item. Each row carries what the shards already hold of it (``held``, JSON)."""
    from beatmap_fid.beatmap.reading import find_beatmaps, source_id

    if is_beatmap_extractor(extractor):
        held_by_map: dict[str, dict[str, str]] = defaultdict(dict)
        for item_id, value in held.items():
            held_by_map[map_id(item_id)][item_id] = value
        units = []
        for path in find_beatmaps(source):
            key = source_id(path, source)
            units.append(
                {
                    "key": key,
                    "path": str(path),
                    "item": b"",
                    "held": json.dumps(held_by_map.get(key, {})),
                }
            )
        return units
    units = []
    for item in extractor.items(source, skipped):
        value = held.get(item.id)
        units.append(
            {
                "key": item.id,
                "path": "",
                "item": pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL),
                "held": json.dumps({} if value is None else {item.id: value}),
            }
        )
    return units


# -- the worker -----------------------------------------------------------------------------


def _shard_name() -> str:
    """A new shard's file name: it sorts by creation time (what finalizing relies on)."""
    return f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"


class ShardWorker:
    """One worker: an extractor built once and a shard of its own, written through a
    :class:`~beatmap_fid.api.StoreSession` (the path of single-process embedding).

    Called with a batch of work-list rows (columns ``key``, ``path``, ``item``, ``held``), it
    returns one row per item it has a vector for (``kind`` "row": id, fingerprint, whether it
    was written now) and one per input it skipped (``kind`` "skip": source and reason).
    """

    def __init__(self, folder: str, spec: ExtractorSpec, root: str, batch_size: int = 64) -> None:
        self.extractor = spec.build()
        self.folder = Path(folder)
        self.root = Path(root)
        self.batch_size = batch_size
        self.shard = self.folder / SHARD_DIR / _shard_name()
        self.session: StoreSession | None = None
        self._saved_at = time.monotonic()

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        try:
            return self._process(batch)
        except BaseException:
            self.close()  # let go of the shard: the run stops, and the next one reads it
            raise

    def _process(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        skipped = SkipLog()
        if self.session is None:
            self.session = StoreSession(self.extractor, self.shard, skipped)
            self.session.running = RunningGaussian(self.extractor.dim)
        session = self.session
        session.skipped = skipped
        session.held_elsewhere = {
            item_id: value for held in batch["held"] for item_id, value in json.loads(held).items()
        }
        first, first_new = len(session.ids), len(session.new_ids)
        if is_beatmap_extractor(self.extractor):
            paths = [Path(str(path)) for path in batch["path"]]
            embed_beatmaps(
                self.root, [session], batch_size=self.batch_size, progress=False, paths=paths
            )
        else:
            items = session.new_items(pickle.loads(bytes(blob)) for blob in batch["item"])
            for chunk in extractor_batches(self.extractor, items, self.batch_size, skipped):
                session.write(chunk)
        fresh = set(session.new_ids[first_new:])
        rows = session.ids[first:]
        if fresh:
            small = self.extractor.dim <= _SMALL_SCATTER
            if small or time.monotonic() - self._saved_at >= PARTIAL_EVERY_S:
                self._save_partial()
        return {
            "kind": np.array(["row"] * len(rows) + ["skip"] * len(skipped), dtype=object),
            "id": np.array(rows + [str(s.source) for s in skipped.entries], dtype=object),
            "fingerprint": np.array(
                [session.fingerprint(i) or "" for i in rows] + [""] * len(skipped), dtype=object
            ),
            "written": np.array([i in fresh for i in rows] + [False] * len(skipped), dtype=bool),
            "reason": np.array([""] * len(rows) + [s.reason for s in skipped.entries], object),
        }

    def _save_partial(self) -> None:
        if self.session is None or self.session.running is None or not self.session.new_ids:
            return
        save_partial(partial_path_of(self.shard), self.session.running, self.session.commits)
        self._saved_at = time.monotonic()

    def close(self) -> None:
        """Save the partial statistics and close the shard (idempotent)."""
        if self.session is None:
            return
        try:
            self._save_partial()
        finally:
            self.session.close()
            self.session = None

    def __del__(self) -> None:  # Ray Data deletes the worker when the pool shuts down
        try:
            self.close()
        except Exception:
            pass


# -- the driver -----------------------------------------------------------------------------


def _worker_errors_explained(
    outputs: Iterable[dict[str, np.ndarray]],
) -> Iterator[dict[str, np.ndarray]]:
    """``outputs``, with a worker's failure raised as the library error it was (a bad option,
    a missing model), or else as one :class:`WorkerError` line.

    The error is raised without Ray's exception attached: that exception's traceback holds
    the failed dataset, whose workers (and the CPUs or GPUs they hold) are released only when
    nothing refers to it any more, which a later run in this process needs.
    """
    failure: BeatmapFidError | None = None
    try:
        yield from outputs
    except BeatmapFidError:
        raise
    except Exception as error:  # Ray wraps what a worker raised in its own exceptions
        failure = _explained(error)
        del error
    if failure is not None:
        gc.collect()
        raise failure


def _explained(error: BaseException) -> BeatmapFidError:
    """The library error behind ``error``, or a :class:`WorkerError` naming its root cause."""
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and all(cause is not seen for seen in chain):
        if isinstance(cause, BeatmapFidError):
            return type(cause)(*cause.args)
        chain.append(cause)
        cause = cause.__cause__ or getattr(cause, "cause", None)
    lines = str(chain[-1]).strip().splitlines()
    return WorkerError(
        f"a worker failed: {type(chain[-1]).__name__}: {lines[0] if lines else ''}; every "
        "batch committed so far is kept, run again to resume (Ray's logs hold the traceback)"
    )


def _init_ray(address: str | None, workers: int | None) -> Any:
    import ray

    if not ray.is_initialized():
        if address:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError) as error:
                lines = str(error).strip().splitlines()
                raise InputError(
                    f"cannot connect to the Ray cluster at {address}: "
                    f"{lines[0] if lines else type(error).__name__} (is it running? with "
                    "token authentication, set RAY_AUTH_MODE=token and the cluster's token)"
                ) from None
        else:
            ray.init(
                address="local",
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
            )
    return ray


def _outputs_local(
    units: list[dict[str, Any]], worker: ShardWorker, units_per_batch: int, progress: bool
) -> Iterator[dict[str, np.ndarray]]:
    from tqdm.auto import tqdm

    try:
        with tqdm(total=len(units), desc="embedding", unit="file", disable=not progress) as bar:
            for start in range(0, len(units), units_per_batch):
                chunk = units[start : start + units_per_batch]
                yield worker({name: [unit[name] for unit in chunk] for name in chunk[0]})
                bar.update(len(chunk))
    finally:
        worker.close()


def _outputs_ray(
    units: list[dict[str, Any]],
    folder: Path,
    spec: ExtractorSpec,
    root: Path,
    *,
    address: str | None,
    workers: int,
    gpus_per_worker: float,
    batch_size: int,
    units_per_batch: int,
    progress: bool,
) -> Iterator[dict[str, np.ndarray]]:
    ray = _init_ray(address, None if address else workers)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.raise_original_map_exception = True  # a worker's own error, not Ray's wrapper
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    n_blocks = max(1, min(len(units), workers * 16))
    dataset = ray.data.from_items(units, override_num_blocks=n_blocks)
    resources: dict[str, Any] = {"num_gpus": gpus_per_worker} if gpus_per_worker else {}
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing actor options this way, but still honours them.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        embedded = dataset.map_batches(
            ShardWorker,
            fn_constructor_kwargs={
                "folder": str(folder),
                "spec": spec,
                "root": str(root),
                "batch_size": batch_size,
            },
            compute=ray.data.ActorPoolStrategy(size=workers),
            batch_size=units_per_batch,
            batch_format="numpy",
            zero_copy_batch=True,
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_RESTARTS,
            **resources,
        )
    yield from embedded.iter_batches(batch_size=None, batch_format="numpy")


def embed_sharded(
    source: str | os.PathLike,
    extractor: Extractor | str,
    folder: str | os.PathLike,
    *,
    engine: str = "ray",
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0,
    batch_size: int = 64,
    units_per_batch: int | None = None,
    progress: bool = True,
    extractor_options: dict[str, Any] | None = None,
) -> EmbedResult:
    """Embed every item of ``source`` into the sharded store ``folder``, resumably.

    ``engine``: "ray" (a pool of ``workers`` Ray actors, each with ``gpus_per_worker`` GPUs,
    on the cluster at ``address``, or a local one started here; "auto" joins a running
    cluster) or "local" (one worker in this process). ``extractor``: a registered name, built
    by every worker with ``extractor_options``, or a built extractor shipped to the workers.
    ``units_per_batch``: work-list rows per Ray batch, one commit each (default: 4 maps, or
    ``batch_size`` items). Items the folder's shards hold with the same fingerprint are not
    embedded again. The result's ``store_path`` is the folder (its manifest is
    ``folder/manifest.json``).
    """
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    source, folder = Path(source), Path(folder)
    if not source.exists():
        raise InputError(f"source {source} does not exist")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file: a sharded store is written to a folder")
    if isinstance(extractor, str):
        spec = ExtractorSpec(extractor, dict(extractor_options or {}))
        built = spec.build()
    else:
        spec, built = ExtractorSpec(extractor.name, instance=extractor), extractor
    if workers is None:
        workers = max(1, min(os.cpu_count() or 1, 4)) if engine == "ray" else 1
    if workers < 1 or gpus_per_worker < 0 or batch_size < 1:
        raise InputError("workers and batch_size must be at least 1, gpus_per_worker at least 0")
    (folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    started_ns = time.time_ns()
    held = held_rows(folder, built)
    skipped = SkipLog()
    units = work_units(source, built, held, skipped)
    if units_per_batch is None:
        units_per_batch = 4 if is_beatmap_extractor(built) else batch_size
    if units_per_batch < 1:
        raise InputError(f"units_per_batch must be at least 1, got {units_per_batch}")
    root = source
    if not units:
        outputs: Iterable[dict[str, np.ndarray]] = []
    elif engine == "local":
        outputs = _outputs_local(
            units, ShardWorker(str(folder), spec, str(root), batch_size), units_per_batch, progress
        )
    else:
        outputs = _outputs_ray(
            units,
            folder,
            spec,
            root,
            address=address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            batch_size=batch_size,
            units_per_batch=units_per_batch,
            progress=progress,
        )
    current: dict[str, str] = {}
    written = replaced = 0
    for output in _worker_errors_explained(outputs):
        for kind, item_id, value, fresh, reason in zip(
            output["kind"], output["id"], output["fingerprint"], output["written"], output["reason"]
        ):
            if kind == "skip":
                skipped.add(str(item_id), str(reason))
                continue
            current[str(item_id)] = str(value)
            if fresh:
                written += 1
                replaced += str(item_id) in held
    finalize_shards(
        folder, current, extractor=built, wait_s=WAIT_S, since_ns=started_ns, progress=progress
    )
    ids = list(current)
    return EmbedResult(folder, ids, written, len(ids) - written, skipped, replaced)
