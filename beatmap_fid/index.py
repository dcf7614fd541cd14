"""FAISS indexes that choose and tune themselves, and carry the ids of the vectors they hold.

:func:`build_index` picks an index family from the number of vectors, their dimension and a
memory budget (:func:`choose_index`), trains it on a sample, adds every vector in batches, then
tunes the search parameters (``nprobe`` for IVF, ``efSearch`` for HNSW) until recall@k against
exact search reaches the requested target on held-out queries. The result, a
:class:`VectorIndex`, maps FAISS rows back to the store's ids (and labels), searches by vector,
by id or by file, accepts more vectors, and saves to ``X.faiss`` plus a JSON sidecar
``X.faiss.json`` holding its parameters, provenance and ids.

Index families (autofaiss-like heuristics, N vectors of dimension d):

==========  ======================================  ========================================
family      chosen when                             search parameters tuned
==========  ======================================  ========================================
flat        N <= 20 000 and N·d·4 bytes fit         none (exact)
hnsw        N <= 100 000 and the graph fits         ``efSearch``
ivf-flat    N <= 100 000, raw vectors fit but not   ``nprobe`` (nlist = 4·√N .. 16·√N)
            the graph (or forced)
ivf-pq      N > 100 000, or less memory: OPQ        ``nprobe`` and ``k_factor_rf`` (how many
            rotation + IVF + 4-bit fast-scan PQ,    PQ candidates per result are re-ranked);
            re-ranked by an 8-bit scalar-quantised  without the re-ranking copy recall tops
            copy when the budget allows (d bytes    out low and a warning says so
            a vector)
==========  ======================================  ========================================

Why PQ for every large set, not only when memory is short: on 200 000 × 512 clustered vectors
(benchmarks/bench_knn.py) re-ranked fast-scan PQ reached recall@10 0.95 at about 5× the queries
per second of HNSW and 30× those of IVF-Flat, and built faster than either.

Tuning is honest: a random sample of the vectors is held out of the index while it is built;
half of it tunes the parameter, the other half measures the recall that is reported. The
held-out vectors are added at the end, so the index holds every vector.

Distances in :class:`SearchResult`: Euclidean distance for ``"l2"``, cosine distance
(1 − cos) for ``"cosine"``, and the inner product for ``"ip"`` (the one metric where larger
means closer).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid._version import __version__
from beatmap_fid.errors import (
    ConfigMismatchError,
    DimensionMismatchError,
    IndexFileError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
    SkipLog,
)

FAMILIES = ("flat", "hnsw", "ivf-flat", "ivf-pq")
METRICS = ("l2", "ip", "cosine")
FLAT_MAX_ROWS = 20_000
HNSW_MAX_ROWS = 100_000
HNSW_M = 32
SIDECAR_FORMAT = "beatmap_fid.index"
SIDECAR_VERSION = 2
_TRAIN_POINTS_PER_CENTROID = 40  # FAISS k-means warns below 39 points per centroid
_CONFIDENCE_Z = 1.645  # one-sided 95 %: tuned recall's lower bound must reach the target


# ----------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class IndexPlan:
    """Which FAISS index to build and why: family, factory string and its sizes."""

    family: str
    factory: str
    n: int
    dim: int
    memory_bytes: int
    nlist: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    hnsw_m: int | None = None
    refine: str | None = None
    train_size: int = 0
    reason: str = ""


def parse_memory_size(size: str | int | float | None) -> int | None:
    """Bytes from ``4G``, ``512M``, ``1.5GB``, ``800k`` or a plain number; ``None`` stays None."""
    if size is None:
        return None
    if isinstance(size, int | float):
        if size <= 0:
            raise InputError(f"memory budget must be positive, got {size}")
        return int(size)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(size).lower())
    if not match:
        raise InputError(f"cannot read memory size {size!r}: write e.g. 4G, 512M or 800000000")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " ")
    if value <= 0:
        raise InputError(f"memory budget must be positive, got {size!r}")
    return int(value)


def _power_of_two_at_most(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(x, 1.0))))


def _nlist_for(n: int) -> int:
    """IVF list count: 4·√N up to a million vectors, 8·√N to ten million, 16·√N beyond."""
    factor = 4 if n <= 1_000_000 else 8 if n <= 10_000_000 else 16
    nlist = _power_of_two_at_most(factor * math.sqrt(n))
    return max(1, min(nlist, _power_of_two_at_most(n / _TRAIN_POINTS_PER_CENTROID)))


def _family_memory(family: str, n: int, dim: int, nlist: int = 0, code_bytes: int = 0) -> int:
    """Approximate bytes an index of this family needs (vectors, graph links, list ids)."""
    if family == "flat":
        return n * dim * 4
    if family == "hnsw":
        return int(n * (dim * 4 + HNSW_M * 2 * 4 * 1.1))
    if family == "ivf-flat":
        return n * (dim * 4 + 8) + nlist * dim * 4
    return n * (code_bytes + 8) + nlist * dim * 4 + dim * dim * 4


def _pq_shape(n: int, dim: int, nlist: int, budget: int | None) -> tuple[int, bool, int]:
    """(m, refine, bytes per vector) of the most precise PQ layout that fits the budget.

    Codes are 4-bit fast-scan PQ with m sub-quantisers (m/2 bytes); with ``refine`` an 8-bit
    scalar-quantised copy (dim bytes) re-ranks the PQ candidates, which is what lets recall
    reach high targets. Without the budget for it, recall tops out lower.
    """
    candidates = [m for m in (64, 48, 32, 24, 16, 8, 4, 2) if m <= max(2, dim // 2)]
    for refine in (True, False):
        for m in candidates:
            code_bytes = (m + 1) // 2 + (dim if refine else 0)
            if budget is None or _family_memory("ivf-pq", n, dim, nlist, code_bytes) <= budget:
                return m, refine, code_bytes
    smallest = _family_memory("ivf-pq", n, dim, nlist, (candidates[-1] + 1) // 2)
    raise InputError(
        f"memory budget {budget} bytes is too small for {n} vectors of dimension {dim}: the "
        f"smallest index (IVF-PQ, {candidates[-1]} sub-quantisers) needs about {smallest} "
        "bytes; raise --memory"
    )


def choose_index(
    n: int, dim: int, *, memory_budget: str | int | None = None, family: str | None = None
) -> IndexPlan:
    """The index to build for ``n`` vectors of dimension ``dim`` within ``memory_budget``.

    ``family`` forces one of :data:`FAMILIES` (sizes are still chosen from N and the budget).
    """
    if n <= 0:
        raise InsufficientSamplesError("cannot index an empty set of vectors")
    if dim <= 0:
        raise InputError(f"vector dimension must be positive, got {dim}")
    if family is not None and family not in FAMILIES:
        raise InputError(f"unknown index family {family!r}; choose one of {', '.join(FAMILIES)}")
    budget = parse_memory_size(memory_budget)
    fits = {
        name: budget is None or _family_memory(name, n, dim, _nlist_for(n)) <= budget
        for name in ("flat", "hnsw", "ivf-flat")
    }
    reason = "forced" if family else ""
    if family is None:
        if n <= FLAT_MAX_ROWS and fits["flat"]:
            family, reason = "flat", f"N={n} <= {FLAT_MAX_ROWS}: exact search is cheap"
        elif n <= HNSW_MAX_ROWS and fits["hnsw"]:
            family, reason = "hnsw", f"N={n} <= {HNSW_MAX_ROWS} and the HNSW graph fits"
        elif n <= HNSW_MAX_ROWS and fits["ivf-flat"]:
            family, reason = "ivf-flat", "the HNSW graph exceeds the budget, raw vectors fit"
        else:
            family, reason = (
                "ivf-pq",
                f"N={n}: fast-scan PQ codes, re-ranked when the budget allows",
            )
    if family == "flat":
        return IndexPlan("flat", "Flat", n, dim, _family_memory("flat", n, dim), reason=reason)
    if family == "hnsw":
        memory = _family_memory("hnsw", n, dim)
        return IndexPlan("hnsw", f"HNSW{HNSW_M}", n, dim, memory, hnsw_m=HNSW_M, reason=reason)
    nlist = _nlist_for(n)
    if family == "ivf-flat":
        train = min(n, _TRAIN_POINTS_PER_CENTROID * nlist)
        memory = _family_memory("ivf-flat", n, dim, nlist)
        return IndexPlan(
            "ivf-flat",
            f"IVF{nlist},Flat",
            n,
            dim,
            memory,
            nlist=nlist,
            train_size=train,
            reason=reason,
        )
    m, refine, code_bytes = _pq_shape(n, dim, nlist, budget)
    rotated_dim = min(2 * m, dim - dim % m)
    factory = f"OPQ{m}_{rotated_dim},IVF{nlist},PQ{m}x4fs" + (",Refine(SQ8)" if refine else "")
    return IndexPlan(
        "ivf-pq",
        factory,
        n,
        dim,
        _family_memory("ivf-pq", n, dim, nlist, code_bytes),
        nlist=nlist,
        pq_m=m,
        pq_bits=4,
        refine="SQ8" if refine else None,
        train_size=min(n, _TRAIN_POINTS_PER_CENTROID * nlist),
        reason=reason,
    )


# ----------------------------------------------------------------------------- sources


@dataclass
class _Source:
    """Vectors to index, whatever they came from, read block by block."""

    n: int
    dim: int
    ids: np.ndarray
    labels: np.ndarray | None
    provenance: dict[str, Any]
    array: np.ndarray | None = None
    store: Any = None

    def blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        if self.array is not None:
            for start in range(0, self.n, block_rows):
                yield start, self.array[start : start + block_rows]
        else:
            yield from self.store.iter_blocks(block_rows)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        if self.array is not None:
            return self.array[rows]
        return np.asarray(self.store.vectors(rows=rows), dtype=np.float32)


def _is_store(obj: Any) -> bool:
    return hasattr(obj, "iter_blocks") and hasattr(obj, "config_hash")


def _store_provenance(store: Any) -> dict[str, Any]:
    return {
        "extractor": store.extractor,
        "config": store.config,
        "config_hash": store.config_hash,
        "store_path": str(Path(store.path).resolve()),
        "options": store.options,
    }


def _as_source(
    source: Any, ids: Sequence[str] | None, labels: Sequence[Any] | None, stack: ExitStack
) -> _Source:
    if isinstance(source, str | os.PathLike):
        from beatmap_fid.store import open_store

        source = stack.enter_context(open_store(source))
    if _is_store(source):
        if ids is not None or labels is not None:
            raise InputError("ids and labels come from the store; do not pass them with one")
        n = len(source)
        if n == 0:
            raise InsufficientSamplesError(f"store {source.path} holds no vectors")
        store_labels = source.labels
        return _Source(
            n,
            int(source.dim),
            np.asarray(source.ids).astype(str),
            None if store_labels is None else np.asarray(store_labels).astype(str),
            _store_provenance(source),
            store=source,
        )
    array = np.asarray(source)
    if array.ndim != 2:
        raise InputError(f"vectors must be a 2-D array (n, dim), got shape {array.shape}")
    if array.shape[0] == 0:
        raise InsufficientSamplesError("cannot index an empty array of vectors")
    array = np.ascontiguousarray(array, dtype=np.float32)
    id_array = np.arange(array.shape[0]).astype(str) if ids is None else np.asarray(ids).astype(str)
    if len(id_array) != array.shape[0]:
        raise InputError(f"{len(id_array)} ids for {array.shape[0]} vectors")
    label_array = None if labels is None else np.asarray(labels).astype(str)
    if label_array is not None and len(label_array) != array.shape[0]:
        raise InputError(f"{len(label_array)} labels for {array.shape[0]} vectors")
    return _Source(array.shape[0], array.shape[1], id_array, label_array, {}, array=array)


def _prepare(block: np.ndarray, metric: str, ids: np.ndarray | None = None) -> np.ndarray:
    """A contiguous float32 copy, checked finite and, for cosine, unit-normalised."""
    vectors = np.array(block, dtype=np.float32, order="C", copy=True)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        name = f"id {str(ids[bad])!r}" if ids is not None else f"row {bad}"
        raise NonFiniteError(
            f"{int((~finite).sum())} vectors contain NaN or infinite values (first: {name}); "
            "remove them from the input"
        )
    if metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1)
        if (norms == 0).any():
            bad = int(np.flatnonzero(norms == 0)[0])
            name = f"id {str(ids[bad])!r}" if ids is not None else f"row {bad}"
            raise InputError(f"zero vector ({name}) has no direction: cosine is undefined")
        vectors /= norms[:, None]
    return vectors


def _faiss_metric(metric: str) -> int:
    import faiss

    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _as_distances(raw: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """FAISS scores as the distances documented for each metric; inf where nothing was found."""
    raw = np.asarray(raw, dtype=np.float32)
    if metric == "l2":
        out = np.sqrt(np.maximum(raw, 0.0))
    elif metric == "cosine":
        out = 1.0 - raw
    else:
        out = raw.copy()
    out[rows < 0] = -np.inf if metric == "ip" else np.inf
    return out


# ----------------------------------------------------------------------------- device


def _gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _wants_gpu(device: str, family: str) -> bool:
    if device not in ("auto", "cpu", "gpu"):
        raise InputError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    if device == "cpu" or family in ("hnsw", "ivf-pq"):  # no GPU HNSW nor fast-scan PQ
        return False
    if device == "gpu" and not _gpu_available():
        raise InputError("device='gpu' asked for, but FAISS sees no GPU (install faiss-gpu)")
    return _gpu_available()


def _to_gpu(index: Any) -> tuple[Any, bool]:
    import faiss

    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except (RuntimeError, AttributeError) as error:
        warnings.warn(
            f"FAISS could not move the index to the GPU ({error}); using the CPU", stacklevel=2
        )
        return index, False


def _set_search_param(index: Any, name: str, value: int, on_gpu: bool) -> None:
    import faiss

    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    space.set_index_parameter(index, name, int(value))


# ----------------------------------------------------------------------------- results


@dataclass
class SearchResult:
    """The k nearest indexed items of each query, closest first.

    ``ids`` and ``labels`` are string arrays (n_queries, k) with ``""`` where fewer than k items
    were found; ``positions`` index :attr:`VectorIndex.ids` (-1 where none); ``distances`` follow
    the metric (Euclidean, cosine distance, or inner product for ``"ip"``).
    """

    query_ids: list[str]
    ids: np.ndarray
    distances: np.ndarray
    positions: np.ndarray
    labels: np.ndarray | None
    metric: str

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def to_dict(self) -> dict[str, Any]:
        """One entry per query with its neighbours, ready for JSON."""
        queries = []
        for row, query in enumerate(self.query_ids):
            found = self.positions[row] >= 0
            neighbours = [
                {
                    "id": str(self.ids[row, j]),
                    "distance": float(self.distances[row, j]),
                    **({"label": str(self.labels[row, j])} if self.labels is not None else {}),
                }
                for j in np.flatnonzero(found)
            ]
            queries.append({"query": query, "neighbours": neighbours})
        return {"metric": self.metric, "k": self.k, "queries": queries}


@dataclass
class TuningReport:
    """The search parameters chosen and the recall they gave on held-out queries."""

    params: dict[str, int]
    k: int
    recall_target: float
    recall_tuning: float | None
    recall_eval: float | None
    n_tuning_queries: int
    n_eval_queries: int
    reached: bool


# ----------------------------------------------------------------------------- the index


@dataclass
class VectorIndex:
    """A FAISS index with the ids (and labels) of its vectors, its parameters and provenance.

    ``ids[i]`` is the i-th vector given to the index; ``row_positions`` maps FAISS rows to
    those positions (held-out tuning queries are added last, so the orders differ).
    """

    index: Any
    plan: IndexPlan
    metric: str
    ids: np.ndarray
    labels: np.ndarray | None
    row_positions: np.ndarray
    search_params: dict[str, int] = field(default_factory=dict)
    tuning: TuningReport | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    on_gpu: bool = False
    _position_of: dict[str, int] | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.plan.dim)

    @property
    def family(self) -> str:
        return self.plan.family

    @property
    def config_hash(self) -> str | None:
        return self.provenance.get("config_hash")

    def __len__(self) -> int:
        return len(self.ids)

    def position_of(self, item_id: str) -> int | None:
        """Position of ``item_id`` in :attr:`ids`, or None when it is not indexed."""
        if self._position_of is None:
            self._position_of = {str(v): i for i, v in enumerate(self.ids)}
            if len(self._position_of) != len(self.ids):
                self._position_of = None
                raise IndexFileError("the index's ids are not unique: rebuild the index")
        return self._position_of.get(str(item_id))

    def set_search_params(self, **params: int) -> None:
        """Set search parameters by hand: ``nprobe`` (IVF), ``efSearch`` (HNSW),
        ``k_factor_rf`` (IVF-PQ re-ranking: candidates per result)."""
        limits = search_param_limits(self.plan)
        for name, value in params.items():
            if name not in limits:
                takes = ", ".join(limits) or "none"
                raise InputError(
                    f"a {self.family} index has no search parameter {name!r} (it takes: {takes})"
                )
            if not _is_int(value, 1) and not isinstance(value, np.integer):
                raise InputError(f"{name} must be a positive integer, got {value!r}")
            if not 1 <= value <= limits[name]:
                raise InputError(f"{name} must be in [1, {limits[name]}], got {value}")
            _set_search_param(self.index, name, value, self.on_gpu)
            self.search_params[name] = int(value)

    def reconstruct(self, positions: Sequence[int]) -> np.ndarray:
        """Stored vectors at ``positions`` (IVF-PQ gives its lossy reconstruction)."""
        rows = np.empty(len(self.row_positions), dtype=np.int64)
        rows[self.row_positions] = np.arange(len(self.row_positions))
        index = self.index
        if self.family.startswith("ivf") and not self.plan.refine:  # refine copies need no map
            import faiss

            ivf = faiss.extract_index_ivf(index)
            if not ivf.direct_map.type:
                ivf.make_direct_map()
        return np.stack([index.reconstruct(int(rows[p])) for p in positions]).astype(np.float32)

    # -- searching

    def search(
        self,
        queries: np.ndarray | Sequence[str | os.PathLike],
        k: int = 10,
        *,
        exclude_self: bool = True,
        skipped: SkipLog | None = None,
        extractor_options: dict[str, Any] | None = None,
    ) -> SearchResult:
        """The ``k`` nearest indexed items of each query, closest first.

        ``queries``: an array (n, dim) or one vector; or a list whose entries are ids held by
        the index (their vectors are looked up; with ``exclude_self`` the item itself is left
        out of its own results) or paths of files, embedded with the store's extractor, rebuilt
        with the options its store recorded (``extractor_options`` adds to or overrides them,
        e.g. ``{"device": "cpu"}``; the config hash must still match the index's).
        ``k`` larger than the index is clipped to its size with a warning.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InputError(f"k must be a whole number of neighbours >= 1, got {k!r}")
        k = int(k)
        query_vectors, query_ids, self_positions = self._query_vectors(
            queries, skipped, extractor_options
        )
        n_excluded = 1 if exclude_self and (self_positions >= 0).any() else 0
        available = len(self) - n_excluded
        if available < 1:
            raise InsufficientSamplesError("the index holds no other item to return")
        if k > available:
            warnings.warn(
                f"k={k} is larger than the {available} items searchable: using k={available}",
                stacklevel=2,
            )
            k = available
        raw, rows = self.index.search(query_vectors, k + n_excluded)
        rows = rows.astype(np.int64)
        positions = np.where(rows >= 0, self.row_positions[np.maximum(rows, 0)], -1)
        distances = _as_distances(raw, rows, self.metric)
        if n_excluded:
            positions, distances = _drop_positions(positions, distances, self_positions, k)
        ids = np.where(positions >= 0, self.ids[np.maximum(positions, 0)], "")
        labels = None
        if self.labels is not None:
            labels = np.where(positions >= 0, self.labels[np.maximum(positions, 0)], "")
        return SearchResult(query_ids, ids, distances, positions, labels, self.metric)

    def _query_vectors(
        self, queries: Any, skipped: SkipLog | None, extractor_options: dict[str, Any] | None
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        if isinstance(queries, np.ndarray) or (
            isinstance(queries, Sequence)
            and len(queries) > 0
            and not isinstance(queries[0], str | os.PathLike)
        ):
            array = np.asarray(queries, dtype=np.float32)
            if array.ndim == 1:
                array = array[None, :]
            if array.ndim != 2 or array.shape[0] == 0:
                raise InputError(f"query vectors must have shape (n, dim), got {array.shape}")
            self._check_dim(array.shape[1], "queries")
            names = [f"query {i}" for i in range(array.shape[0])]
            return _prepare(array, self.metric), names, np.full(array.shape[0], -1)
        if isinstance(queries, str | os.PathLike):
            queries = [queries]
        if len(queries) == 0:
            raise InputError("no queries given")
        by_id = [self.position_of(str(q)) for q in queries]
        files = [q for q, p in zip(queries, by_id) if p is None]
        missing = [str(q) for q in files if not Path(q).exists()]
        if missing:
            raise InputError(
                f"{len(missing)} queries are neither ids in the index nor existing files "
                f"(first: {missing[0]!r})"
            )
        vectors: list[np.ndarray] = []
        names: list[str] = []
        self_positions: list[int] = []
        id_positions = [p for p in by_id if p is not None]
        if id_positions:
            id_vectors = self._vectors_of_positions(id_positions)
        id_row = 0
        file_rows = iter(self._embed_files(files, skipped, extractor_options) if files else [])
        for query, position in zip(queries, by_id):
            if position is not None:
                vectors.append(id_vectors[id_row])
                names.append(str(query))
                self_positions.append(position)
                id_row += 1
            else:
                for item_id, vector in next(file_rows):
                    vectors.append(vector)
                    names.append(item_id)
                    self_positions.append(-1)
        if not vectors:
            raise InputError("no query could be embedded: every file was skipped")
        return _prepare(np.stack(vectors), self.metric), names, np.asarray(self_positions)

    def _vectors_of_positions(self, positions: list[int]) -> np.ndarray:
        """Exact vectors of indexed items: from the index, or its store for PQ indexes."""
        if self.family != "ivf-pq":
            return self.reconstruct(positions)
        store_path = self.provenance.get("store_path")
        if store_path and Path(store_path).exists():
            from beatmap_fid.store import open_store

            with open_store(store_path) as store:
                if store.config_hash == self.config_hash and len(store) >= len(self):
                    rows = {str(v): i for i, v in enumerate(np.asarray(store.ids).astype(str))}
                    wanted = [rows.get(str(self.ids[p])) for p in positions]
                    if all(r is not None for r in wanted):
                        unique_rows, inverse = np.unique(wanted, return_inverse=True)
                        return np.asarray(store.vectors(rows=unique_rows))[inverse]
        if not self.plan.refine:  # the 8-bit re-ranking copy is close; bare PQ codes are not
            warnings.warn(
                "query vectors are the IVF-PQ index's lossy reconstructions: the source store "
                f"({store_path}) is not available to read the exact vectors",
                stacklevel=2,
            )
        return self.reconstruct(positions)

    def _embed_files(
        self,
        files: Sequence[str | os.PathLike],
        skipped: SkipLog | None,
        extractor_options: dict[str, Any] | None,
    ) -> list[list[tuple[str, np.ndarray]]]:
        """Per file, (item id, vector) pairs embedded with the index's extractor config."""
        from beatmap_fid.extractors.base import build_extractor, config_hash, extractor_batches

        name = self.provenance.get("extractor")
        if not name:
            raise InputError(
                "this index was built from an array, not a store: it does not know how to "
                "embed files; pass vectors or ids"
            )
        recorded = self.provenance.get("options")
        options = {**(recorded or {}), **(extractor_options or {})}
        extractor = build_extractor(name, **options)
        if self.config_hash and config_hash(extractor.config) != self.config_hash:
            unknown = (
                "; the store does not record the options it was built with: pass them "
                "(extractor_options, or --option in the CLI)"
                if recorded is None and not extractor_options
                else ""
            )
            raise ConfigMismatchError(
                f"extractor {name!r} rebuilt with options {options} has config hash "
                f"{config_hash(extractor.config)}, the index was built with "
                f"{self.config_hash}{unknown}"
            )
        self._check_dim(int(extractor.dim), f"extractor {name!r}")
        skipped = skipped if skipped is not None else SkipLog()
        per_file = []
        for path in files:
            items = list(extractor.items(path, skipped))
            pairs: list[tuple[str, np.ndarray]] = []
            for batch in extractor_batches(extractor, items, 64, skipped):
                vectors = np.asarray(extractor.embed([item.payload for item in batch]))
                pairs += [(item.id, v) for item, v in zip(batch, vectors)]
            per_file.append(pairs)
        return per_file

    def _check_dim(self, dim: int, what: str) -> None:
        if dim != self.dim:
            raise DimensionMismatchError(
                f"{what} have dimension {dim}, the index holds vectors of dimension {self.dim}"
            )

    # -- growing

    def add(
        self,
        source: Any,
        *,
        ids: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        batch_size: int = 65_536,
        progress: bool = True,
    ) -> int:
        """Add the vectors of a store, a store path or an array; ids already held are skipped.

        Returns the number of vectors added. A store must have this index's config hash.
        """
        with ExitStack() as stack:
            src = _as_source(source, ids, labels, stack)
            self._check_dim(src.dim, "added vectors")
            theirs, ours = src.provenance.get("config_hash"), self.config_hash
            if theirs and ours and theirs != ours:
                raise ConfigMismatchError(
                    f"store config hash {theirs} differs from the index's {ours}: vectors made "
                    "with different extractor configs cannot share an index"
                )
            if len(np.unique(src.ids)) != src.n:
                raise InputError("the added ids are not unique")
            new = np.array([self.position_of(i) is None for i in src.ids])
            if not new.any():
                return 0
            start_position = len(self.ids)
            added_ids = src.ids[new]
            faiss_rows = self.index.ntotal
            for start, block in _progress(src.blocks(batch_size), src.n, progress, "adding"):
                keep = new[start : start + len(block)]
                if keep.any():
                    vectors = _prepare(
                        block[keep], self.metric, src.ids[start : start + len(block)][keep]
                    )
                    self.index.add(vectors)
            added = self.index.ntotal - faiss_rows
            self.row_positions = np.concatenate(
                [self.row_positions, np.arange(start_position, start_position + added)]
            )
            self.ids = np.concatenate([self.ids, added_ids])
            if self.labels is not None or src.labels is not None:
                old = self.labels if self.labels is not None else np.full(start_position, "")
                extra = src.labels[new] if src.labels is not None else np.full(added, "")
                self.labels = np.concatenate([old.astype(str), extra.astype(str)])
            self._position_of = None
            self.plan = _with_size(self.plan, len(self.ids))
            return int(added)

    # -- saving

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to ``path`` and its sidecar ``path + '.json'``; returns ``path``.

        The sidecar records checksums of the index file, of the ids and of its own content
        (see :func:`load_index`).
        """
        import faiss

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        index = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        tmp_index = path.with_name(path.name + ".tmp")
        faiss.write_index(index, str(tmp_index))
        index_checksum = file_checksum(tmp_index)
        os.replace(tmp_index, path)
        identity = np.array_equal(self.row_positions, np.arange(len(self.row_positions)))
        sidecar = {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "library_version": __version__,
            "faiss_version": faiss.__version__,
            "index_file": path.name,
            "index_bytes": path.stat().st_size,
            "metric": self.metric,
            "dim": self.dim,
            "ntotal": len(self.ids),
            "plan": asdict(self.plan),
            "search_params": self.search_params,
            "tuning": asdict(self.tuning) if self.tuning else None,
            "source": self.provenance,
            "ids": self.ids.tolist(),
            "labels": None if self.labels is None else self.labels.tolist(),
            "row_positions": None if identity else self.row_positions.tolist(),
        }
        sidecar["checksums"] = {
            "algorithm": CHECKSUM_ALGORITHM,
            "index_file": index_checksum,
            "ids": ids_checksum(sidecar["ids"]),
            "sidecar": "",
        }
        sidecar_path = sidecar_path_of(path)
        tmp_sidecar = sidecar_path.with_name(sidecar_path.name + ".tmp")
        tmp_sidecar.write_bytes(sealed_sidecar(sidecar))
        os.replace(tmp_sidecar, sidecar_path)
        return path


def _with_size(plan: IndexPlan, n: int) -> IndexPlan:
    values = asdict(plan)
    values["n"] = n
    return IndexPlan(**values)


def _drop_positions(
    positions: np.ndarray, distances: np.ndarray, excluded: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, leave out the excluded position (or the last result) and keep ``k``."""
    keep = positions != excluded[:, None]
    surplus = keep.sum(axis=1) > k
    keep[surplus, -1] = False  # the excluded item was not among the results
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(positions, order, 1), np.take_along_axis(distances, order, 1)


def _progress(blocks: Iterator, total: int, progress: bool, desc: str) -> Iterator:
    from tqdm import tqdm

    bar = tqdm(total=total, disable=not progress, desc=desc, unit="vec")
    for start, block in blocks:
        yield start, block
        bar.update(len(block))
    bar.close()


def ondisk_lists_path(index_path: str | os.PathLike) -> Path:
    """Where an index merged on disk keeps its inverted lists: ``X.faiss`` -> ``X.faiss.ivfdata``
    (see :mod:`beatmap_fid.shard_index`)."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".ivfdata")


def sidecar_path_of(index_path: str | os.PathLike) -> Path:
    """The JSON sidecar beside an index file: ``X.faiss`` -> ``X.faiss.json``."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".json")


# ----------------------------------------------------------------------------- building


def build_index(
    source: Any,
    *,
    ids: Sequence[str] | None = None,
    labels: Sequence[Any] | None = None,
    metric: str = "l2",
    recall: float = 0.95,
    k: int = 10,
    memory_budget: str | int | None = None,
    family: str | None = None,
    device: str = "auto",
    n_tuning_queries: int = 2000,
    batch_size: int = 65_536,
    seed: int = 0,
    progress: bool = True,
) -> VectorIndex:
    """Choose, train, fill and tune a FAISS index over ``source``.

    ``source``: an :class:`~beatmap_fid.store.EmbeddingStore`, a store path, or an array
    (n, dim) with optional ``ids`` / ``labels``. The search parameter is tuned so that
    recall@``k`` against exact search reaches ``recall`` (a one-sided 95 % lower bound on
    tuning queries); the recall reported in :attr:`VectorIndex.tuning` is measured on separate
    held-out queries. ``family`` forces an index family; ``device`` is "auto", "cpu" or "gpu".
    """
    import faiss

    if not 0.0 < recall <= 1.0:
        raise InputError(f"recall target must be in (0, 1], got {recall}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be a whole number of neighbours >= 1, got {k!r}")
    faiss_metric = _faiss_metric(metric)
    with ExitStack() as stack:
        src = _as_source(source, ids, labels, stack)
        if len(np.unique(src.ids)) != src.n:
            raise InputError("ids are not unique: every indexed vector needs its own id")
        plan = choose_index(src.n, src.dim, memory_budget=memory_budget, family=family)
        rng = np.random.default_rng(seed)
        n_held = 0 if plan.family == "flat" else min(n_tuning_queries, src.n // 10)
        if plan.family != "flat" and n_held < 20:
            warnings.warn(
                f"only {src.n} vectors: too few to hold out tuning queries; the search "
                "parameter is set to search exhaustively",
                stacklevel=2,
            )
            n_held = 0
        held = np.sort(rng.choice(src.n, n_held, replace=False)) if n_held else np.empty(0, int)
        is_held = np.zeros(src.n, dtype=bool)
        is_held[held] = True

        index = faiss.index_factory(src.dim, plan.factory, faiss_metric)
        if plan.family == "hnsw":
            index.hnsw.efConstruction = 64
        use_gpu = _wants_gpu(device, plan.family)
        index, on_gpu = _to_gpu(index) if use_gpu else (index, False)
        if plan.train_size:
            pool = np.flatnonzero(~is_held)
            sample = rng.choice(pool, min(plan.train_size, len(pool)), replace=False)
            training_helpers = _configure_training(index)
            index.train(_prepare(src.rows(sample), metric, None))
            for transform, _ in training_helpers:
                transform.pq = None

        queries = _prepare(src.rows(held), metric) if n_held else None
        k_eval = min(k, src.n - n_held)
        heap = faiss.ResultHeap(n_held, k_eval, keep_max=metric != "l2") if n_held else None
        db_row = 0
        for start, block in _progress(src.blocks(batch_size), src.n, progress, "indexing"):
            keep = ~is_held[start : start + len(block)]
            vectors = _prepare(block[keep], metric, src.ids[start : start + len(block)][keep])
            index.add(vectors)
            if heap is not None and len(vectors):
                exact = faiss.IndexFlat(src.dim, faiss_metric)
                exact.add(vectors)
                found, rows = exact.search(queries, min(k_eval, len(vectors)))
                heap.add_result(found, np.where(rows >= 0, rows + db_row, -1))
            db_row += len(vectors)

        vindex = VectorIndex(
            index=index,
            plan=plan,
            metric=metric,
            ids=src.ids,
            labels=src.labels,
            row_positions=np.concatenate([np.flatnonzero(~is_held), held]),
            provenance=src.provenance,
            on_gpu=on_gpu,
        )
        if heap is not None:
            heap.finalize()
            vindex.tuning = _tune(vindex, queries, heap.I, k_eval, recall)
        elif plan.family != "flat":
            vindex.set_search_params(**_exhaustive_params(plan))
        else:
            vindex.tuning = TuningReport({}, k, recall, 1.0, 1.0, 0, 0, True)
        if n_held:
            index.add(queries)
        return vindex


def _search_ladder(plan: IndexPlan) -> tuple[list[dict[str, int]], str, list[int]]:
    """Settings to try, cheapest first: fixed parameters per stage, the tuned one, its values."""
    if plan.family == "hnsw":
        return [{}], "efSearch", [16 << i for i in range(9)]  # 16 .. 4096
    nprobes = [1 << i for i in range(int(math.log2(plan.nlist)) + 1)]
    stages = [{"k_factor_rf": f} for f in (4, 16, 64)] if plan.refine else [{}]
    return stages, "nprobe", nprobes


def _exhaustive_params(plan: IndexPlan) -> dict[str, int]:
    stages, name, values = _search_ladder(plan)
    return {**stages[-1], name: values[-1]}


def _configure_training(index: Any) -> list[Any]:
    """Lighter OPQ training (fewer iterations, 4-bit inner PQ, as the codes use); returns the
    objects FAISS must not outlive during training."""
    import faiss

    keep = []
    inner = faiss.downcast_index(index.base_index) if hasattr(index, "base_index") else index
    if isinstance(inner, faiss.IndexPreTransform):
        for i in range(inner.chain.size()):
            transform = faiss.downcast_VectorTransform(inner.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = 10  # FAISS defaults (50, first PQ 40 rounds) take minutes
                transform.niter_pq_0 = 10
                transform.max_train_points = 32_768
                quantizer = faiss.ProductQuantizer(transform.d_out, transform.M, 4)
                transform.pq = quantizer
                keep.append((transform, quantizer))
    return keep


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per query, the share of the true k nearest rows among the k rows found."""
    k = truth.shape[1]
    hits = (found[:, :k, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    return hits.any(axis=1).sum(axis=1) / k


def _tune(
    vindex: VectorIndex, queries: np.ndarray, truth: np.ndarray, k: int, target: float
) -> TuningReport:
    """Cheapest search parameters whose recall lower bound reaches ``target`` on tuning queries.

    The first half of the held-out queries tunes, the second half measures the recall reported.
    """
    half = len(queries) // 2
    tune_q, eval_q = queries[:half], queries[half:]
    tune_t, eval_t = truth[:half], truth[half:]
    stages, name, values = _search_ladder(vindex.plan)

    def settings(stage: dict[str, int], value: int) -> dict[str, int]:
        return {**stage, name: max(value, k) if name == "efSearch" else value}

    def measure(params: dict[str, int], q: np.ndarray, t: np.ndarray) -> np.ndarray:
        vindex.set_search_params(**params)
        return recall_at_k(vindex.index.search(q, k)[1], t)

    def passes(recalls: np.ndarray) -> bool:
        spread = recalls.std(ddof=1) / math.sqrt(len(recalls)) if len(recalls) > 1 else 0.0
        return recalls.mean() - _CONFIDENCE_Z * spread >= target

    tried: list[tuple[dict[str, int], float]] = []
    chosen: dict[str, int] | None = None
    for stage in stages:
        failing = 0
        for value in values:
            recalls = measure(settings(stage, value), tune_q, tune_t)
            tried.append((settings(stage, value), float(recalls.mean())))
            if passes(recalls):
                passing = value
                while passing - failing > 1:  # bisect between last failing and first passing
                    middle = (failing + passing) // 2
                    recalls_mid = measure(settings(stage, middle), tune_q, tune_t)
                    tried.append((settings(stage, middle), float(recalls_mid.mean())))
                    failing, passing = (
                        (failing, middle) if passes(recalls_mid) else (middle, passing)
                    )
                chosen = settings(stage, passing)
                break
            failing = value
        if chosen is not None:
            break
    reached = chosen is not None
    if chosen is None:
        best = max(recall for _, recall in tried)
        chosen = next(params for params, recall in tried if recall >= best - 0.005)
        hint = ""
        if vindex.family == "ivf-pq" and not vindex.plan.refine:
            hint = "; a memory budget with room for d bytes a vector enables re-ranking"
        warnings.warn(
            f"recall@{k} target {target} not reached by the {vindex.family} index: best "
            f"{best:.3f} on tuning queries; using {chosen}{hint}",
            stacklevel=2,
        )
    recall_tuning = next(recall for params, recall in tried if params == chosen)
    recall_eval = float(measure(chosen, eval_q, eval_t).mean())
    return TuningReport(
        dict(chosen), k, target, recall_tuning, recall_eval, len(tune_q), len(eval_q), reached
    )


# ----------------------------------------------------------------------------- sidecar

CHECKSUM_ALGORITHM = "sha256-tree-64MiB"
_LEAF_BYTES = 64 << 20  # the tree hash's leaf: one thread hashes one leaf at a time
_READ_BYTES = 1 << 20
_MAX_EF_SEARCH = 1 << 20
_MAX_K_FACTOR_RF = 1 << 16


def file_checksum(path: str | os.PathLike, workers: int | None = None) -> str:
    """Tree hash of a file's bytes, as 64 hexadecimal digits (:data:`CHECKSUM_ALGORITHM`).

    The file is cut into 64 MiB leaves; each leaf's SHA-256 is computed by one of ``workers``
    threads (default: one per CPU; ``hashlib`` releases the GIL while it hashes), and the root
    is the SHA-256 of the file size (8 bytes, little-endian) followed by the leaf digests.
    Memory stays one 1 MiB buffer per thread whatever the size of the file, which is read,
    never mapped or loaded whole. SHA-256 rather than BLAKE2b: with the SHA extensions of
    current CPUs it is the faster of the two (3.5 times in ``benchmarks/RESULTS.md``).
    """
    path = Path(path)
    size = path.stat().st_size
    n_leaves = max(1, -(-size // _LEAF_BYTES))

    def leaf(number: int) -> bytes:
        digest = hashlib.sha256()
        start, end = number * _LEAF_BYTES, min(size, (number + 1) * _LEAF_BYTES)
        buffer = memoryview(bytearray(_READ_BYTES))
        with open(path, "rb") as file:
            file.seek(start)
            while start < end:
                got = file.readinto(buffer[: min(_READ_BYTES, end - start)])
                if not got:
                    raise IndexFileError(f"{path} shrank while its checksum was computed")
                digest.update(buffer[:got])
                start += got
        return digest.digest()

    workers = max(1, min(n_leaves, workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        leaves = list(pool.map(leaf, range(n_leaves)))
    return hashlib.sha256(size.to_bytes(8, "little") + b"".join(leaves)).hexdigest()


def ids_checksum(ids: Sequence[str]) -> str:
    """SHA-256 of a list of ids written as a compact JSON array (UTF-8, no spaces), in order."""
    text = json.dumps(list(ids), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_UNSEALED = b"0" * 64


def _sidecar_digest(data: bytes, digest: str) -> str:
    """SHA-256 of a sidecar's bytes with its own checksum (the last occurrence of ``digest``)
    replaced by 64 zeros."""
    at = data.rfind(digest.encode("ascii"))
    if at >= 0:
        data = data[:at] + _UNSEALED + data[at + len(digest) :]
    return hashlib.sha256(data).hexdigest()


def sealed_sidecar(meta: dict[str, Any]) -> bytes:
    """The JSON bytes of ``meta`` with ``checksums.sidecar`` set to their own checksum.

    ``checksums`` must be the last key, so that its digest is the last 64 digits of the file.
    """
    meta = {**meta, "checksums": {**meta["checksums"], "sidecar": _UNSEALED.decode()}}
    data = json.dumps(meta, ensure_ascii=False, allow_nan=False).encode("utf-8")
    digest = _sidecar_digest(data, _UNSEALED.decode())
    at = data.rfind(_UNSEALED)
    return data[:at] + digest.encode("ascii") + data[at + len(_UNSEALED) :]


@dataclass(frozen=True)
class _Field:
    """One key of the sidecar schema (every key is required): what its value must be."""

    expected: str
    check: Callable[[Any], bool]


def _is_int(value: Any, low: int = 0) -> bool:
    return type(value) is int and value >= low


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _or_null(spec: _Field) -> _Field:
    return _Field(f"{spec.expected} or null", lambda v: v is None or spec.check(v))


_TEXT = _Field("a string", lambda v: isinstance(v, str))
_COUNT = _Field("an integer >= 0", _is_int)
_POSITIVE = _Field("an integer >= 1", lambda v: _is_int(v, 1))
_OBJECT = _Field("an object", lambda v: isinstance(v, dict))
_HEX64 = _Field("64 hexadecimal digits", lambda v: isinstance(v, str) and _is_hex64(v))
_INT_MAP = _Field(
    "an object of integers",
    lambda v: isinstance(v, dict) and all(type(x) is int for x in v.values()),
)
_FRACTION = _Field("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1)

# The sidecar's schema: every key and its type; every key is required and no other is
# allowed. Relations between keys (lengths, permutation, search parameters of the family)
# are checked by _check_sidecar.
_PLAN_SCHEMA: dict[str, _Field] = {
    "family": _Field(f"one of {', '.join(FAMILIES)}", lambda v: v in FAMILIES),
    "factory": _TEXT,
    "n": _POSITIVE,
    "dim": _POSITIVE,
    "memory_bytes": _COUNT,
    "nlist": _or_null(_POSITIVE),
    "pq_m": _or_null(_POSITIVE),
    "pq_bits": _or_null(_POSITIVE),
    "hnsw_m": _or_null(_POSITIVE),
    "refine": _or_null(_TEXT),
    "train_size": _COUNT,
    "reason": _TEXT,
}
_TUNING_SCHEMA: dict[str, _Field] = {
    "params": _INT_MAP,
    "k": _POSITIVE,
    "recall_target": _Field("a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1),
    "recall_tuning": _or_null(_FRACTION),
    "recall_eval": _or_null(_FRACTION),
    "n_tuning_queries": _COUNT,
    "n_eval_queries": _COUNT,
    "reached": _Field("true or false", lambda v: type(v) is bool),
}
_SOURCE_SCHEMA: dict[str, _Field] = {  # an index of a store; an index of an array has {}
    "extractor": _TEXT,
    "config": _OBJECT,
    "config_hash": _TEXT,
    "store_path": _TEXT,
    "options": _or_null(_OBJECT),
}
_CHECKSUMS_SCHEMA: dict[str, _Field] = {
    "algorithm": _Field(repr(CHECKSUM_ALGORITHM), lambda v: v == CHECKSUM_ALGORITHM),
    "index_file": _HEX64,
    "ids": _HEX64,
    "sidecar": _HEX64,
}
_SIDECAR_SCHEMA: dict[str, _Field] = {
    "format": _Field(repr(SIDECAR_FORMAT), lambda v: v == SIDECAR_FORMAT),
    "format_version": _Field(str(SIDECAR_VERSION), lambda v: v == SIDECAR_VERSION),
    "library_version": _TEXT,
    "faiss_version": _TEXT,
    "index_file": _TEXT,
    "index_bytes": _COUNT,
    "metric": _Field(f"one of {', '.join(METRICS)}", lambda v: v in METRICS),
    "dim": _POSITIVE,
    "ntotal": _POSITIVE,
    "plan": _OBJECT,
    "search_params": _INT_MAP,
    "tuning": _or_null(_OBJECT),
    "source": _OBJECT,
    "ids": _Field("a list of strings", lambda v: isinstance(v, list)),
    "labels": _or_null(_Field("a list of strings", lambda v: isinstance(v, list))),
    "row_positions": _or_null(_Field("a list of integers", lambda v: isinstance(v, list))),
    "checksums": _OBJECT,
}


def _is_hex64(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _check_object(value: dict[str, Any], schema: dict[str, _Field], where: str) -> None:
    unknown = sorted(set(value) - set(schema))
    if unknown:
        raise IndexFileError(f"{where} has unknown key {unknown[0]!r}")
    for key, spec in schema.items():
        if key not in value:
            raise IndexFileError(f"{where} lacks {key!r}")
        if not spec.check(value[key]):
            raise IndexFileError(
                f"{where}: {key!r} must be {spec.expected}, got {_shown(value[key])}"
            )


def _shown(value: Any) -> str:
    """A short description of a JSON value for an error message."""
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"an object with keys {', '.join(map(repr, list(value)[:4]))}"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def search_param_limits(plan: IndexPlan | dict[str, Any]) -> dict[str, int]:
    """The search parameters an index of this plan takes, and the largest value of each."""
    plan = asdict(plan) if isinstance(plan, IndexPlan) else plan
    if plan["family"] == "hnsw":
        return {"efSearch": _MAX_EF_SEARCH}
    if plan["family"] in ("ivf-flat", "ivf-pq"):
        limits = {"nprobe": int(plan["nlist"] or 1)}
        if plan["refine"]:
            limits["k_factor_rf"] = _MAX_K_FACTOR_RF
        return limits
    return {}


def _check_search_params(params: dict[str, int], plan: dict[str, Any], where: str) -> None:
    limits = search_param_limits(plan)
    for name, value in params.items():
        if name not in limits:
            takes = ", ".join(limits) or "none"
            raise IndexFileError(
                f"{where}: a {plan['family']} index has no search parameter {name!r} "
                f"(it takes: {takes})"
            )
        if not 1 <= value <= limits[name]:
            raise IndexFileError(f"{where}: {name} must be in [1, {limits[name]}], got {value}")


def _check_strings(values: list[Any], n: int, what: str, where: str) -> None:
    if len(values) != n:
        raise IndexFileError(f"{where}: {len(values)} {what} for ntotal {n}")
    if set(map(type, values)) - {str}:
        raise IndexFileError(f"{where}: {what} must all be strings")


def _check_sidecar(meta: dict[str, Any], where: str) -> None:
    """Refuse a sidecar that does not follow the schema, with one line naming the key."""
    _check_object(meta, _SIDECAR_SCHEMA, where)
    _check_object(meta["plan"], _PLAN_SCHEMA, f"{where} plan")
    plan, n = meta["plan"], meta["ntotal"]
    if plan["dim"] != meta["dim"] or plan["n"] != n:
        raise IndexFileError(
            f"{where}: plan is for {plan['n']} vectors of dimension {plan['dim']}, the sidecar "
            f"holds {n} of dimension {meta['dim']}"
        )
    if plan["family"] in ("ivf-flat", "ivf-pq") and plan["nlist"] is None:
        raise IndexFileError(f"{where}: an {plan['family']} plan needs 'nlist'")
    _check_search_params(meta["search_params"], plan, f"{where} search_params")
    if meta["tuning"] is not None:
        _check_object(meta["tuning"], _TUNING_SCHEMA, f"{where} tuning")
        _check_search_params(meta["tuning"]["params"], plan, f"{where} tuning params")
    if meta["source"]:
        _check_object(meta["source"], _SOURCE_SCHEMA, f"{where} source")
    _check_object(meta["checksums"], _CHECKSUMS_SCHEMA, f"{where} checksums")
    _check_strings(meta["ids"], n, "ids", where)
    if meta["labels"] is not None:
        _check_strings(meta["labels"], n, "labels", where)
    if meta["row_positions"] is not None:
        try:
            positions = np.asarray(meta["row_positions"])
        except (ValueError, OverflowError):
            positions = np.zeros(0)
        if (
            positions.shape != (n,)
            or positions.dtype.kind not in "iu"
            or not np.array_equal(np.sort(positions), np.arange(n))
        ):
            raise IndexFileError(
                f"{where}: row_positions must be a permutation of 0..{n - 1}, one per id"
            )


def _strict_json(text: str) -> Any:
    """JSON that refuses repeated keys, NaN and infinities (which Python's json accepts)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        value = dict(items)
        if len(value) != len(items):
            seen = [key for key, _ in items]
            repeated = next(key for key in seen if seen.count(key) > 1)
            raise ValueError(f"key {repeated!r} appears twice")
        return value

    def finite(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise ValueError(f"number {literal} is not finite")
        return value

    def refuse(literal: str) -> None:
        raise ValueError(f"{literal} is not a JSON number")

    return json.loads(text, object_pairs_hook=pairs, parse_float=finite, parse_constant=refuse)


def read_sidecar(path: str | os.PathLike, *, verify_file: bool = True) -> dict[str, Any]:
    """The validated sidecar of the index file ``path``.

    Refused with :class:`IndexFileError` (one line): a sidecar that is not JSON, breaks the
    schema (a missing or unknown key, a value of the wrong type, ids that are not unique,
    row positions that are not a permutation, search parameters the family does not take),
    whose ids or content no longer match their checksums, or whose index file has another
    size or (with ``verify_file``) another checksum.
    """
    path = Path(path)
    sidecar_path = sidecar_path_of(path)
    if not path.is_file():
        raise IndexFileError(f"index file {path} does not exist")
    if not sidecar_path.is_file():
        raise IndexFileError(
            f"{sidecar_path.name} is missing beside {path}: the index was not written by "
            "beatmap_fid or its sidecar was moved; rebuild it with `beatmap-fid index`"
        )
    where = str(sidecar_path)
    try:
        data = sidecar_path.read_bytes()
        meta = _strict_json(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise IndexFileError(f"sidecar {where} is unreadable: {error}") from error
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise IndexFileError(f"{where} is not a beatmap_fid index sidecar")
    version = meta.get("format_version")
    if type(version) is int and version < SIDECAR_VERSION:
        raise IndexFileError(
            f"{where} has sidecar format {version}, written without checksums; rebuild the "
            "index with `beatmap-fid index`"
        )
    if type(version) is int and version > SIDECAR_VERSION:
        raise IndexFileError(
            f"{where} has sidecar format {version}; this beatmap_fid reads up to "
            f"{SIDECAR_VERSION}: upgrade beatmap_fid"
        )
    _check_sidecar(meta, where)
    checksums = meta["checksums"]
    if _sidecar_digest(data, checksums["sidecar"]) != checksums["sidecar"]:
        # The ids checksum is only needed to say what changed: the sidecar's own covers them.
        if ids_checksum(meta["ids"]) != checksums["ids"]:
            raise IndexFileError(
                f"{where}: the ids do not match their checksum (edited, reordered or damaged); "
                "rebuild the index"
            )
        raise IndexFileError(
            f"{where} does not match its checksum: it was edited or damaged after it was "
            "written; rebuild the index"
        )
    size = path.stat().st_size
    if size != meta["index_bytes"]:
        raise IndexFileError(
            f"{path} has {size} bytes, its sidecar says {meta['index_bytes']}: the file is "
            "truncated or was overwritten; rebuild the index"
        )
    if verify_file and file_checksum(path) != checksums["index_file"]:
        raise IndexFileError(
            f"{path} does not match the checksum in its sidecar: it is damaged or is another "
            "index file; rebuild the index"
        )
    return meta


def _family_of(index: Any) -> str:
    """The family of a FAISS index as :func:`choose_index` names them."""
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:
        return type(index).__name__
    return "ivf-flat" if isinstance(ivf, faiss.IndexIVFFlat) else "ivf-pq"


def _check_index_matches(index: Any, meta: dict[str, Any], path: Path) -> None:
    """Refuse an index file whose shape, metric or family differs from its sidecar's."""
    import faiss

    plan = meta["plan"]
    metric = faiss.METRIC_L2 if meta["metric"] == "l2" else faiss.METRIC_INNER_PRODUCT
    metric_names = {faiss.METRIC_L2: "l2", faiss.METRIC_INNER_PRODUCT: "inner product"}
    file_metric = metric_names.get(index.metric_type, f"metric {index.metric_type}")
    found = _family_of(index)
    nlist = faiss.extract_index_ivf(index).nlist if found.startswith("ivf") else None
    differences = [
        f"{what} {theirs} in the file, {ours} in the sidecar"
        for what, theirs, ours, same in (
            ("vectors:", index.ntotal, meta["ntotal"], index.ntotal == meta["ntotal"]),
            ("dimension", index.d, meta["dim"], index.d == meta["dim"]),
            ("metric", file_metric, meta["metric"], index.metric_type == metric),
            ("family", found, plan["family"], found == plan["family"]),
            ("nlist", nlist, plan["nlist"], nlist is None or nlist == plan["nlist"]),
        )
        if not same
    ]
    if differences:
        raise IndexFileError(
            f"{path} and its sidecar do not belong together: {'; '.join(differences)}"
        )


# ----------------------------------------------------------------------------- loading


def load_index(
    path: str | os.PathLike, *, mmap: bool = False, device: str = "cpu", verify_file: bool = True
) -> VectorIndex:
    """Read an index written by :meth:`VectorIndex.save`.

    The sidecar is validated against its schema and its checksums, and the index file against
    the sidecar's size and checksum (:func:`read_sidecar`); anything that does not match is
    refused with :class:`IndexFileError`. ``verify_file=False`` skips hashing the index file
    (one read of it; figures in ``benchmarks/RESULTS.md``) for a file known to be intact; its
    size is still checked.

    ``mmap=True`` maps the inverted lists of IVF indexes instead of reading them into memory,
    for indexes larger than RAM (FAISS 1.15 still reads a flat index whole); such an index
    stays on the CPU.
    """
    import faiss

    path = Path(path)
    meta = read_sidecar(path, verify_file=verify_file)
    written_by = meta["faiss_version"]
    try:
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        if ondisk_lists_path(path).is_file():  # inverted lists on disk: mapped in any case
            from beatmap_fid.shard_index import faiss_prints_to_stderr

            with faiss_prints_to_stderr():
                index = faiss.read_index(
                    str(path), faiss.IO_FLAG_READ_ONLY | faiss.IO_FLAG_ONDISK_SAME_DIR
                )
        else:
            index = faiss.read_index(str(path), flags)
    except RuntimeError as error:
        versions = (
            f" (written by FAISS {written_by}, this is FAISS {faiss.__version__})"
            if written_by != faiss.__version__
            else ""
        )
        raise IndexFileError(
            f"FAISS cannot read {path}{versions}: {str(error).splitlines()[0][:200]}; "
            "rebuild the index"
        ) from error
    if written_by != faiss.__version__:
        warnings.warn(
            f"{path} was written by FAISS {written_by}, read by FAISS {faiss.__version__}",
            stacklevel=2,
        )
    _check_index_matches(index, meta, path)
    plan = IndexPlan(**meta["plan"])
    tuning = TuningReport(**meta["tuning"]) if meta["tuning"] else None
    on_gpu = False
    if not mmap and _wants_gpu(device, plan.family):
        index, on_gpu = _to_gpu(index)
    ids = np.asarray(meta["ids"]).astype(str)
    row_positions = meta["row_positions"]
    vindex = VectorIndex(
        index=index,
        plan=plan,
        metric=meta["metric"],
        ids=ids,
        labels=None if meta["labels"] is None else np.asarray(meta["labels"]).astype(str),
        row_positions=np.arange(len(ids)) if row_positions is None else np.asarray(row_positions),
        tuning=tuning,
        provenance=meta["source"],
        on_gpu=on_gpu,
    )
    vindex.set_search_params(**meta["search_params"])
    return vindex
