"""IVF indexes of stores too large for one process: trained once, filled in parallel, merged
on disk, searched memory-mapped.

:func:`build_sharded_index` trains the index (coarse quantizer, and OPQ rotation and PQ codes
for IVF-PQ) on a sample of the store, then fills one partial index per part of the store (a
shard, or a range of rows of a large shard) in parallel Ray tasks, each adding its vectors
with their row numbers as FAISS ids, and merges the partial indexes' inverted lists into one
file on disk (FAISS ``OnDiskInvertedLists``). The index file ``X.faiss`` then holds the
trained quantizer and refers to ``X.faiss.ivfdata``, which searches map into memory, so the
index needs little RAM whatever its size. Given the same trained index, the merged index
holds exactly the lists one process adding every vector in row order would build, so
searches return the same ids and distances.

The search parameter is tuned as :func:`beatmap_fid.index.build_index` tunes it: random rows
are held out as queries, their exact neighbours among the other rows are found by the same
tasks (an exact search per part), and ``nprobe`` is raised until recall@k reaches the target
on half of them, measured on the other half; the held-out rows are in the index but left out
of those searches (an ID selector).

Families: IVF-Flat, and IVF-PQ with 8-bit codes (OPQ rotation, no re-ranking copy): the
4-bit fast-scan codes and the re-ranking copy that :func:`~beatmap_fid.index.build_index`
uses for IVF-PQ are laid out in ways FAISS cannot merge on disk.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.errors import InputError, InsufficientSamplesError
from beatmap_fid.index import (
    IndexPlan,
    VectorIndex,
    _configure_training,
    _exhaustive_params,
    _faiss_metric,
    _prepare,
    _store_provenance,
    _tune,
    choose_index,
    ondisk_lists_path,
)
from beatmap_fid.shards import ShardedStore
from beatmap_fid.store import EmbeddingStore, open_store

ENGINES = ("local", "ray")
PART_ROWS = 1 << 20
"""Rows per part at most: larger shards are split into ranges filled by separate tasks."""


@dataclass(frozen=True)
class Part:
    """Rows ``[start, stop)`` of one shard file, which are rows ``offset + (0 .. stop-start)``
    of the whole store."""

    shard: str
    start: int
    stop: int
    offset: int


def store_parts(store: EmbeddingStore | ShardedStore, part_rows: int = PART_ROWS) -> list[Part]:
    """The parts a store is filled in: its shards, split into ranges of ``part_rows`` rows."""
    if isinstance(store, ShardedStore):
        files = [(str(store.path / entry.path), entry.rows) for entry in store.shards]
    else:
        files = [(str(store.path), len(store))]
    parts, offset = [], 0
    for path, rows in files:
        for start in range(0, rows, part_rows):
            stop = min(rows, start + part_rows)
            parts.append(Part(path, start, stop, offset + start))
        offset += rows
    return parts


def ondisk_plan(
    n: int, dim: int, *, memory_budget: str | int | None = None, family: str | None = None
) -> IndexPlan:
    """The IVF index to build on disk for ``n`` vectors (see the module documentation)."""
    if family in ("flat", "hnsw"):
        raise InputError(
            f"an index merged on disk is an IVF index: family {family!r} cannot be built so; "
            "choose ivf-flat or ivf-pq, or build it in one process"
        )
    plan = choose_index(n, dim, memory_budget=memory_budget, family=family)
    if plan.family in ("flat", "hnsw"):
        plan = choose_index(n, dim, memory_budget=memory_budget, family="ivf-flat")
        return replace(plan, reason=f"{plan.reason or 'small set'}: IVF-Flat, merged on disk")
    if plan.family == "ivf-pq":
        m = int(plan.pq_m or 8)
        rotated = min(2 * m, dim - dim % m)
        factory = f"OPQ{m}_{rotated},IVF{plan.nlist},PQ{m}"
        memory = n * (m + 8) + int(plan.nlist or 0) * dim * 4 + dim * dim * 4
        return replace(
            plan,
            factory=factory,
            pq_bits=8,
            refine=None,
            memory_bytes=memory,
            reason=f"{plan.reason}; 8-bit PQ codes, which merge on disk",
        )
    return plan


@contextmanager
def faiss_prints_to_stderr() -> Iterator[None]:
    """Send what FAISS prints to standard output (on-disk lists report their file operations
    there) to standard error, keeping standard output for results (``--json``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


# -- filling one part (a Ray task, or a call in this process) ---------------------------------


def _read_part(part: Part, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    with EmbeddingStore(part.shard) as store:
        for low in range(part.start, part.stop, block_rows):
            high = min(part.stop, low + block_rows)
            yield part.offset + low - part.start, store.vectors(slice(low, high))


def fill_part(
    trained: bytes,
    part: Part,
    output: str,
    metric: str,
    queries: np.ndarray | None,
    held: np.ndarray,
    k: int,
    block_rows: int = 65_536,
) -> tuple[str, int, np.ndarray | None, np.ndarray | None]:
    """Add the vectors of ``part`` (FAISS ids: their rows in the store) to a copy of the
    trained index and write it to ``output``; with ``queries``, also their ``k`` exact
    nearest rows in this part, held-out rows left out. Returns (output, rows, D, I)."""
    import faiss

    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    faiss_metric = _faiss_metric(metric)
    heap = None
    if queries is not None and len(queries):
        heap = faiss.ResultHeap(len(queries), k, keep_max=metric != "l2")
    added = 0
    for start, block in _read_part(part, block_rows):
        rows = np.arange(start, start + len(block), dtype=np.int64)
        vectors = _prepare(block, metric)
        index.add_with_ids(vectors, rows)
        added += len(rows)
        if heap is not None:
            keep = ~np.isin(rows, held)
            if keep.any():
                exact = faiss.IndexFlat(vectors.shape[1], faiss_metric)
                exact.add(vectors[keep])
                found, local = exact.search(queries, min(k, int(keep.sum())))
                heap.add_result(found, np.where(local >= 0, rows[keep][np.maximum(local, 0)], -1))
    partial = output + ".tmp"
    faiss.write_index(index, partial)
    os.replace(partial, output)  # a retried task writes the same file again
    if heap is None:
        return output, added, None, None
    heap.finalize()
    return output, added, heap.D, heap.I


def merge_on_disk(trained: bytes, partials: list[str], output: Path) -> Any:
    """The trained index with the inverted lists of ``partials`` merged into
    ``output.ivfdata`` (in the partials' order); returns the FAISS index."""
    import faiss

    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    ivf = faiss.extract_index_ivf(index)
    lists_path = ondisk_lists_path(output)
    lists_path.unlink(missing_ok=True)
    loaded = [faiss.read_index(path, faiss.IO_FLAG_MMAP) for path in partials]
    sources = faiss.InvertedListsPtrVector()
    for part in loaded:
        sources.push_back(faiss.extract_index_ivf(part).invlists)
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(lists_path))
    with faiss_prints_to_stderr():
        total = ondisk.merge_from_multiple(sources.data(), sources.size(), False)
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()  # the index owns the lists now
    ivf.ntotal = index.ntotal = total
    del loaded, sources
    return index


class _HeldOut:
    """The index seen without its held-out rows, for :func:`beatmap_fid.index._tune`."""

    def __init__(self, vindex: VectorIndex, held: np.ndarray) -> None:
        import faiss

        self._vindex = vindex
        self._ivf = faiss.extract_index_ivf(vindex.index)
        self._selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(held.astype(np.int64)))
        self.plan = vindex.plan
        self.family = vindex.family
        self.index = self

    def set_search_params(self, **params: int) -> None:
        self._vindex.set_search_params(**params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        params = faiss.SearchParametersIVF(sel=self._selector, nprobe=int(self._ivf.nprobe))
        if isinstance(self._vindex.index, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform(index_params=params)
        return self._vindex.index.search(queries, k, params=params)


def _run_parts(
    engine: str,
    trained: bytes,
    parts: list[Part],
    outputs: list[str],
    metric: str,
    queries: np.ndarray | None,
    held: np.ndarray,
    k: int,
    address: str | None,
    workers: int | None,
    progress: bool,
) -> list[tuple[str, int, np.ndarray | None, np.ndarray | None]]:
    from tqdm.auto import tqdm

    if engine == "local":
        return [
            fill_part(trained, part, out, metric, queries, held, k)
            for part, out in tqdm(
                list(zip(parts, outputs)), desc="filling", unit="part", disable=not progress
            )
        ]
    from beatmap_fid.distributed import MAX_RESTARTS, _init_ray

    ray = _init_ray(address, workers)
    task = ray.remote(num_cpus=1, max_retries=MAX_RESTARTS)(fill_part)
    trained_ref = ray.put(trained)
    queries_ref = ray.put(queries)
    held_ref = ray.put(held)
    pending = [
        task.remote(trained_ref, part, out, metric, queries_ref, held_ref, k)
        for part, out in zip(parts, outputs)
    ]
    return ray.get(pending)


def build_sharded_index(
    source: Any,
    output: str | os.PathLike,
    *,
    metric: str = "l2",
    recall: float = 0.95,
    k: int = 10,
    memory_budget: str | int | None = None,
    family: str | None = None,
    engine: str = "ray",
    address: str | None = None,
    workers: int | None = None,
    trained: Any = None,
    n_tuning_queries: int = 2000,
    part_rows: int = PART_ROWS,
    seed: int = 0,
    progress: bool = True,
) -> VectorIndex:
    """Build, tune and save an IVF index of ``source`` (a store, sharded or not, or its path)
    at ``output``, its inverted lists merged on disk beside it; returns the index, loaded
    from disk. ``trained``: an already trained, empty FAISS IVF index to fill instead of
    training one. ``engine``: "ray" fills the parts in Ray tasks (cluster at ``address``, or
    a local one of ``workers`` CPUs), "local" in this process."""
    import faiss

    from beatmap_fid.index import load_index

    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if not 0.0 < recall <= 1.0:
        raise InputError(f"recall target must be in (0, 1], got {recall}")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    faiss_metric = _faiss_metric(metric)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        store = source
        if isinstance(source, str | os.PathLike):
            store = stack.enter_context(open_store(source))
        n, dim = len(store), int(store.dim)
        if n == 0:
            raise InsufficientSamplesError(f"store {store.path} holds no vectors")
        ids = np.asarray(store.ids).astype(str)
        if len(np.unique(ids)) != n:
            raise InputError("ids are not unique: every indexed vector needs its own id")
        labels = store.labels
        rng = np.random.default_rng(seed)
        n_held = min(n_tuning_queries, n // 10)
        if n_held < 20:
            warnings.warn(
                f"only {n} vectors: too few to hold out tuning queries; the search parameter "
                "is set to search exhaustively",
                stacklevel=2,
            )
            n_held = 0
        held = np.sort(rng.choice(n, n_held, replace=False)) if n_held else np.empty(0, np.int64)
        if trained is None:
            plan = ondisk_plan(n, dim, memory_budget=memory_budget, family=family)
            index = faiss.index_factory(dim, plan.factory, faiss_metric)
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
            if isinstance(ivf, faiss.IndexIVFPQ):
                ivf.do_polysemous_training = False  # slow, and of no use to these searches
            pool = np.setdiff1d(np.arange(n), held)
            sample = np.sort(rng.choice(pool, min(plan.train_size, len(pool)), replace=False))
            helpers = _configure_training(index)
            index.train(_prepare(store.vectors(sample), metric))
            for transform, _ in helpers:
                transform.pq = None
        else:
            index = trained
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
            if not index.is_trained or index.ntotal or index.d != dim:
                raise InputError(f"trained must be a trained, empty IVF index of dimension {dim}")
            family_name = "ivf-pq" if isinstance(ivf, faiss.IndexIVFPQ) else "ivf-flat"
            plan = IndexPlan(family_name, "given", n, dim, 0, nlist=int(ivf.nlist), reason="given")
        trained_bytes = faiss.serialize_index(index).tobytes()
        queries = _prepare(store.vectors(held), metric) if n_held else None
        k_eval = min(k, n - n_held) if n_held else k
        parts = store_parts(store, part_rows)
        provenance = _store_provenance(store)
    scratch = output.with_name(output.name + ".parts")
    scratch.mkdir(exist_ok=True)
    outputs = [str(scratch / f"part-{number:06d}.faiss") for number in range(len(parts))]
    results = _run_parts(
        engine,
        trained_bytes,
        parts,
        outputs,
        metric,
        queries,
        held,
        k_eval,
        address,
        workers,
        progress,
    )
    merged = merge_on_disk(trained_bytes, [result[0] for result in results], output)
    vindex = VectorIndex(
        index=merged,
        plan=replace(plan, n=n),
        metric=metric,
        ids=ids,
        labels=None if labels is None else np.asarray(labels).astype(str),
        row_positions=np.arange(n),
        provenance=provenance,
    )
    if n_held:
        heap = faiss.ResultHeap(n_held, k_eval, keep_max=metric != "l2")
        for _, _, distances, rows in results:
            heap.add_result(distances, rows)
        heap.finalize()
        vindex.tuning = _tune(_HeldOut(vindex, held), queries, heap.I, k_eval, recall)
    else:
        vindex.set_search_params(**_exhaustive_params(vindex.plan))
    vindex.save(output)
    del merged, vindex
    for path in outputs:
        Path(path).unlink(missing_ok=True)
    scratch.rmdir()
    return load_index(output)
