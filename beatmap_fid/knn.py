"""k-nearest-neighbour classification on FAISS, its honest evaluation, and copy detection.

* :class:`KNNClassifier`: a scikit-learn classifier (``fit`` / ``predict`` / ``predict_proba``
  / ``kneighbors`` / ``score``; works in Pipelines and ``cross_val_score``) searching an exact
  FAISS index or a self-tuned approximate one (:func:`beatmap_fid.index.build_index`).
* :func:`evaluate_knn`: leave-one-out or stratified k-fold accuracy that never lets a query
  see its own copies. Rows linked by an identical vector or a shared group form one "leak
  component"; leave-one-out leaves the query's whole component out of its neighbours, k-fold
  keeps each component inside one fold (StratifiedGroupKFold). By default the groups are
  maps: windows ``file#k`` of one file are near each other and share their label, so letting
  them vote for each other measures recognising the map, not its label. The ungrouped
  ("naive") figure is reported beside the grouped one.
* :func:`map_memorisation_scores`: copy detection for whole generated maps, each scored
  against the real map it sits nearest; :func:`memorisation_scores` does the same for single
  items. Both leave out empty windows (breaks, intros: no beatmap events), which look alike in
  every map. Whether a window is empty is counted by the extractor that cut it and stored
  beside its vector (``n_events``), so this works for every beatmap extractor.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from beatmap_fid.errors import (
    BeatmapFidError,
    ConfigMismatchError,
    DimensionMismatchError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
)
from beatmap_fid.extractors.base import map_id
from beatmap_fid.index import (
    METRICS,
    _as_distances,
    _as_source,
    _drop_positions,
    _faiss_metric,
    _prepare,
    build_index,
)

WEIGHTS = ("uniform", "distance", "softmax")
_SMALL_COMPONENT = 64  # components up to this size are excluded by over-fetching neighbours


def _check_features(X: Any, what: str = "X") -> np.ndarray:
    from sklearn.utils.validation import check_array

    try:
        array = check_array(X, dtype=np.float32, ensure_all_finite=False)
    except ValueError as error:
        raise InputError(f"{what}: {error}") from error
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise NonFiniteError(f"{what} contains NaN or infinite values (first at row {bad})")
    return np.ascontiguousarray(array)


def _check_labels(y: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes, encoded labels) for any sortable label type."""
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import column_or_1d

    if y is None:
        raise InputError("KNNClassifier requires y to be passed, but the target y is None")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = column_or_1d(y, warn=True)
    if y.ndim != 1:
        raise InputError(f"y must be one label per row, got shape {y.shape}")
    if len(y) != n:
        raise InputError(f"{len(y)} labels for {n} rows")
    try:
        check_classification_targets(y)
        classes, encoded = np.unique(y, return_inverse=True)
    except (TypeError, ValueError) as error:
        raise InputError(f"labels must be classes of one comparable type: {error}") from error
    return classes, encoded.ravel()


def _check_weights(weights: str, temperature: float, metric: str) -> None:
    if weights not in WEIGHTS:
        raise InputError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if weights == "distance" and metric == "ip":
        raise InputError("weights='distance' needs a distance; with metric='ip' use 'softmax'")
    if weights == "softmax" and not temperature > 0:
        raise InputError(f"temperature must be positive, got {temperature}")


def neighbour_weights(
    distances: np.ndarray,
    positions: np.ndarray,
    weights: str = "uniform",
    temperature: float = 1.0,
    metric: str = "l2",
) -> np.ndarray:
    """Vote weight of each neighbour (0 where ``positions`` is -1, i.e. no neighbour).

    "uniform": 1 each. "distance": 1/d, and as in scikit-learn a query with neighbours at
    distance 0 gives weight only to those. "softmax": exp(−d/T) normalised per query (for the
    inner product, exp(s/T)).
    """
    valid = positions >= 0
    if weights == "uniform":
        return valid.astype(np.float64)
    d = np.asarray(distances, dtype=np.float64)
    if weights == "distance":
        d = np.maximum(d, 0.0)
        with np.errstate(divide="ignore"):
            w = np.where(valid, 1.0 / d, 0.0)
        zero = valid & (d == 0)
        exact = zero.any(axis=1)
        w[exact] = zero[exact]
        return w
    score = np.where(valid, d if metric == "ip" else -d, -np.inf)
    top = score.max(axis=1, keepdims=True)
    top[~np.isfinite(top)] = 0.0
    return np.where(valid, np.exp((score - top) / temperature), 0.0)


def vote(
    distances: np.ndarray,
    positions: np.ndarray,
    encoded_labels: np.ndarray,
    n_classes: int,
    weights: str = "uniform",
    temperature: float = 1.0,
    metric: str = "l2",
) -> np.ndarray:
    """Class probabilities (n_queries, n_classes) from neighbours and their encoded labels."""
    w = neighbour_weights(distances, positions, weights, temperature, metric)
    proba = np.zeros((len(positions), n_classes))
    rows = np.broadcast_to(np.arange(len(positions))[:, None], positions.shape)
    valid = positions >= 0
    np.add.at(proba, (rows[valid], encoded_labels[positions[valid]]), w[valid])
    totals = proba.sum(axis=1, keepdims=True)
    np.divide(proba, totals, out=proba, where=totals > 0)
    return proba


class KNNClassifier(ClassifierMixin, BaseEstimator):
    """k-NN classifier on a FAISS index, compatible with scikit-learn.

    ``index="exact"`` searches a flat index (same neighbours as scikit-learn's brute force);
    ``"auto"`` lets :func:`~beatmap_fid.index.choose_index` pick (approximate for large
    sets, tuned to ``recall``); a family name ("hnsw", "ivf-flat", "ivf-pq") forces one.
    ``weights``: "uniform", "distance" (1/d) or "softmax" (exp(−d/``temperature``)).
    Distances: Euclidean for "l2", 1 − cos for "cosine", the inner product for "ip".
    """

    def __init__(
        self,
        n_neighbors: int = 5,
        *,
        weights: str = "uniform",
        temperature: float = 1.0,
        metric: str = "l2",
        index: str = "exact",
        recall: float = 0.95,
        memory_budget: str | int | None = None,
    ) -> None:
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.temperature = temperature
        self.metric = metric
        self.index = index
        self.recall = recall
        self.memory_budget = memory_budget

    def fit(self, X: Any, y: Any) -> KNNClassifier:
        _check_weights(self.weights, self.temperature, self.metric)
        if not isinstance(self.n_neighbors, int | np.integer) or self.n_neighbors < 1:
            raise InputError(f"n_neighbors must be a positive int, got {self.n_neighbors!r}")
        X = _check_features(X)
        self.classes_, self._encoded = _check_labels(y, len(X))
        self.n_features_in_ = X.shape[1]
        self._fit_X = X
        family = "flat" if self.index == "exact" else None if self.index == "auto" else self.index
        self.index_ = build_index(
            X,
            metric=self.metric,
            recall=self.recall,
            k=min(self.n_neighbors, len(X)),
            memory_budget=self.memory_budget,
            family=family,
            progress=False,
        )
        return self

    def _check_query(self, X: Any) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "index_")
        X = _check_features(X)
        if X.shape[1] != self.n_features_in_:
            raise DimensionMismatchError(
                f"X has {X.shape[1]} features, but KNNClassifier is expecting "
                f"{self.n_features_in_} features as input"
            )
        return X

    def kneighbors(
        self, X: Any = None, n_neighbors: int | None = None, return_distance: bool = True
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """Distances and training-row indices of the nearest neighbours, closest first.

        With ``X=None`` the training rows are the queries and each is left out of its own
        neighbours, as in scikit-learn.
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "index_")
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        training_queries = X is None
        X = self._fit_X if training_queries else self._check_query(X)
        available = len(self._fit_X) - int(training_queries)
        if not 1 <= k <= available:
            raise InputError(
                f"n_neighbors={k} must be between 1 and the {available} training rows available"
            )
        raw, rows = self.index_.index.search(_prepare(X, self.metric), k + training_queries)
        rows = rows.astype(np.int64)
        positions = np.where(rows >= 0, self.index_.row_positions[np.maximum(rows, 0)], -1)
        distances = _as_distances(raw, rows, self.metric)
        if training_queries:
            positions, distances = _drop_positions(positions, distances, np.arange(len(X)), k)
        return (distances, positions) if return_distance else positions

    def predict_proba(self, X: Any) -> np.ndarray:
        """Share of the (weighted) neighbour votes for each class in :attr:`classes_`."""
        distances, positions = self.kneighbors(X)
        return vote(
            distances,
            positions,
            self._encoded,
            len(self.classes_),
            self.weights,
            self.temperature,
            self.metric,
        )

    def predict(self, X: Any) -> np.ndarray:
        """The class with the most (weighted) neighbour votes; ties go to the first class."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


# ----------------------------------------------------------------------------- evaluation


def duplicate_groups(X: np.ndarray) -> np.ndarray:
    """Per row, an id shared exactly by the rows with an identical vector."""
    X = np.ascontiguousarray(X)
    rows = X.view(np.dtype((np.void, X.dtype.itemsize * X.shape[1]))).ravel()
    return np.unique(rows, return_inverse=True)[1].ravel()


def leak_components(
    X: np.ndarray, groups: Sequence[Any] | None = None, exclude_duplicates: bool = True
) -> np.ndarray:
    """Per row, the id of its leak component: rows linked by identical vectors (when
    ``exclude_duplicates``) or by a shared group, transitively. Rows of one component must
    never be split between training and test."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(X)
    links = []
    if exclude_duplicates:
        links.append(duplicate_groups(X))
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != n:
            raise InputError(f"{len(groups)} groups for {n} rows")
        links.append(np.unique(groups.astype(str), return_inverse=True)[1].ravel())
    if not links:
        return np.arange(n)
    rows, cols, offset = [], [], n
    for link in links:
        rows.append(np.arange(n))
        cols.append(link + offset)
        offset += int(link.max()) + 1
    rows_all, cols_all = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows_all)), (rows_all, cols_all)), shape=(offset, offset))
    return np.unique(connected_components(graph, directed=False)[1][:n], return_inverse=True)[1]


def _loo_neighbours(
    X: np.ndarray, component: np.ndarray, k: int, metric: str, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of every row, its own leak component left out."""
    import faiss
    from tqdm import tqdm

    n = len(X)
    vectors = _prepare(X, metric)
    index = faiss.IndexFlat(vectors.shape[1], _faiss_metric(metric))
    index.add(vectors)
    sizes = np.bincount(component)
    size_of_row = sizes[component]
    positions = np.full((n, k), -1, dtype=np.int64)
    distances = np.full((n, k), np.inf, dtype=np.float32)
    small = np.flatnonzero(size_of_row <= _SMALL_COMPONENT)
    if len(small):
        fetch = min(n, k + int(size_of_row[small].max()))
        batch = max(1, 2**22 // fetch)
        for start in tqdm(range(0, len(small), batch), disable=not progress, desc="leave-one-out"):
            queries = small[start : start + batch]
            raw, rows = index.search(vectors[queries], fetch)
            rows = rows.astype(np.int64)
            keep = (rows >= 0) & (component[np.maximum(rows, 0)] != component[queries, None])
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            kept = np.take_along_axis(keep, order, 1)
            picked = np.take_along_axis(rows, order, 1)
            positions[queries] = np.where(kept, picked, -1)
            distances[queries] = _as_distances(
                np.take_along_axis(raw, order, 1), positions[queries], metric
            )
    for comp in np.flatnonzero(sizes > _SMALL_COMPONENT):
        members = np.flatnonzero(component == comp)
        allowed = np.packbits(component != comp, bitorder="little")
        selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(allowed))
        raw, rows = index.search(
            vectors[members], min(k, n - len(members)), params=faiss.SearchParameters(sel=selector)
        )
        rows = rows.astype(np.int64)
        positions[members, : rows.shape[1]] = rows
        distances[members, : rows.shape[1]] = _as_distances(raw, rows, metric)
    return distances, positions


@dataclass
class KNNReport:
    """Out-of-sample k-NN classification quality; ``to_dict`` / ``to_text`` / ``save``."""

    method: str
    metric: str
    weights: str
    n_neighbors: int
    n_samples: int
    n_splits: int | None
    exclude_duplicates: bool
    grouped: bool
    n_components: int
    mean_excluded: float
    accuracy: float
    top_k_accuracy: dict[int, float]
    f1_weighted: float
    f1_macro: float
    classes: list[Any]
    per_class: list[dict[str, Any]]
    confusion: np.ndarray
    y_true: np.ndarray = field(repr=False)
    y_pred: np.ndarray = field(repr=False)
    group_by: str = "none"  # "map" (the id before "#"), "groups" (given) or "none"
    n_groups: int | None = None
    naive: dict[str, float] | None = None  # the same evaluation without groups

    def to_dict(self) -> dict[str, Any]:
        """Every figure, JSON-ready (per-row predictions left out)."""
        return {
            "method": self.method,
            "metric": self.metric,
            "weights": self.weights,
            "n_neighbors": self.n_neighbors,
            "n_samples": self.n_samples,
            "n_splits": self.n_splits,
            "exclude_duplicates": self.exclude_duplicates,
            "grouped": self.grouped,
            "group_by": self.group_by,
            "n_groups": self.n_groups,
            "naive": self.naive,
            "n_components": self.n_components,
            "mean_excluded": self.mean_excluded,
            "accuracy": self.accuracy,
            "top_k_accuracy": {str(k): v for k, v in self.top_k_accuracy.items()},
            "f1_weighted": self.f1_weighted,
            "f1_macro": self.f1_macro,
            "classes": [_plain(c) for c in self.classes],
            "per_class": self.per_class,
            "confusion": self.confusion.tolist(),
        }

    def to_text(self, max_classes: int = 30) -> str:
        """A readable summary, the per-class table and (for few classes) the confusion matrix."""
        how = (
            "leave-one-out"
            if self.method == "loo"
            else f"stratified {'group ' if self.n_components < self.n_samples else ''}"
            f"{self.n_splits}-fold"
        )
        guards = []
        if self.exclude_duplicates:
            guards.append("exact duplicates kept apart")
        if self.group_by == "map":
            guards.append(f"windows grouped by map ({self.n_groups} maps)")
        elif self.grouped:
            guards.append(f"{self.n_groups} groups kept apart")
        lines = [
            f"k-NN ({self.n_neighbors} neighbours, {self.weights} weights, {self.metric}) "
            f"{how} on {self.n_samples} rows, {len(self.classes)} classes"
            + (
                f"; {', '.join(guards)} (mean {self.mean_excluded:.2f} rows excluded per query)"
                if guards
                else ""
            ),
            f"accuracy      {self.accuracy:.4f}" + self._naive_text(),
            *(f"top-{k} accuracy {v:.4f}" for k, v in self.top_k_accuracy.items()),
            f"F1 weighted   {self.f1_weighted:.4f}",
            f"F1 macro      {self.f1_macro:.4f}",
            "",
            f"{'class':<24} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}",
        ]
        for row in self.per_class[:max_classes]:
            lines.append(
                f"{str(row['class'])[:24]:<24} {row['precision']:>9.3f} {row['recall']:>7.3f} "
                f"{row['f1']:>6.3f} {row['support']:>7d}"
            )
        if len(self.per_class) > max_classes:
            lines.append(f"... and {len(self.per_class) - max_classes} more classes")
        if len(self.classes) <= 12:
            lines += ["", "confusion matrix (rows: true, columns: predicted)"]
            names = [str(c)[:8] for c in self.classes]
            lines.append(" " * 9 + " ".join(f"{name:>8}" for name in names))
            for name, row in zip(names, self.confusion):
                lines.append(f"{name:>8} " + " ".join(f"{v:>8d}" for v in row))
        return "\n".join(lines)

    def _naive_text(self) -> str:
        if self.naive is None:
            return "" if self.grouped else "  (ungrouped: rows of one map vote for each other)"
        who = "windows of one map" if self.group_by == "map" else "rows of one group"
        return f"  (naive {self.naive['accuracy']:.4f} when {who} may vote for each other)"

    def plot_confusion(self, path: str | os.PathLike) -> Path:
        """Save the row-normalised confusion matrix as a PNG (needs matplotlib)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise BeatmapFidError(
                "the confusion-matrix PNG needs matplotlib: pip install 'beatmap_fid[plot]'"
            ) from error
        counts = self.confusion.astype(float)
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        size = min(20.0, 3.0 + 0.35 * len(self.classes))
        fig, ax = plt.subplots(figsize=(size, size))
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
        if len(self.classes) <= 60:
            names = [str(c)[:20] for c in self.classes]
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
            ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"k-NN {self.method}: accuracy {self.accuracy:.3f}")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def save(self, directory: str | os.PathLike) -> dict[str, Path]:
        """Write ``knn_report.json``, ``knn_report.txt`` and ``knn_confusion.png``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "json": directory / "knn_report.json",
            "text": directory / "knn_report.txt",
            "png": directory / "knn_confusion.png",
        }
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        paths["text"].write_text(self.to_text(max_classes=10**9) + "\n", encoding="utf-8")
        self.plot_confusion(paths["png"])
        return paths


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _report(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: np.ndarray,
    top_k: Sequence[int],
    **fields: Any,
) -> KNNReport:
    from sklearn.metrics import (
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        top_k_accuracy_score,
    )

    y_pred = classes[np.argmax(proba, axis=1)]
    labels = np.arange(len(classes))
    true_index = np.searchsorted(classes, y_true)
    pred_index = np.argmax(proba, axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        true_index, pred_index, labels=labels, zero_division=0
    )
    top = {}
    for k in sorted(set(top_k)):
        if 1 < k < len(classes):
            top[k] = float(top_k_accuracy_score(true_index, proba, k=k, labels=labels))
    return KNNReport(
        accuracy=float(np.mean(pred_index == true_index)),
        top_k_accuracy=top,
        f1_weighted=float(
            f1_score(true_index, pred_index, labels=labels, average="weighted", zero_division=0)
        ),
        f1_macro=float(
            f1_score(true_index, pred_index, labels=labels, average="macro", zero_division=0)
        ),
        classes=[_plain(c) for c in classes],
        per_class=[
            {
                "class": _plain(c),
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        ],
        confusion=confusion_matrix(true_index, pred_index, labels=labels),
        y_true=y_true,
        y_pred=y_pred,
        **fields,
    )


def _resolve_groups(
    groups: str | Sequence[Any] | None, ids: Sequence[str] | None, n: int
) -> tuple[str, np.ndarray | None]:
    """``(group_by, group per row or None)`` from the ``groups`` argument of evaluate_knn."""
    if groups is None:
        return "none", None
    if isinstance(groups, str):
        if groups != "map":
            raise InputError(f"groups must be 'map', None or one group per row, got {groups!r}")
        if ids is None:
            raise InputError(
                "evaluate_knn groups windows by map by default: pass ids (the store's "
                "'file#window' ids) so that windows of one map never vote for each other, "
                "groups=[...] for your own groups, or groups=None for the naive figure"
            )
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) != n:
            raise InputError(f"{len(ids)} ids for {n} rows")
        return "map", np.array([map_id(i) for i in ids], dtype=object)
    return "groups", np.asarray(groups)


def evaluate_knn(
    X: Any,
    y: Any,
    *,
    ids: Sequence[str] | None = None,
    groups: str | Sequence[Any] | None = "map",
    naive: bool = True,
    method: str = "loo",
    n_neighbors: int = 5,
    weights: str = "uniform",
    temperature: float = 1.0,
    metric: str = "l2",
    exclude_duplicates: bool = True,
    n_splits: int = 5,
    top_k: Sequence[int] = (3, 5),
    index: str = "exact",
    random_state: int = 0,
    progress: bool = False,
) -> KNNReport:
    """Out-of-sample k-NN accuracy, top-k accuracy, F1 and confusion matrix.

    ``groups``: ``"map"`` (default) keeps the windows of one map together, the map being the
    part of each row's id before ``#`` (``ids`` required); a sequence gives each row's group;
    ``None`` lets rows of one map vote for each other (optimistic). With groups and
    ``naive``, the ungrouped figures are computed too and reported in ``report.naive``.

    ``method="loo"``: every row is classified by its neighbours among all other rows, minus
    its leak component (its exact duplicates when ``exclude_duplicates``, its whole group).
    ``method="kfold"``: ``n_splits`` stratified folds that keep each leak component in one
    fold (StratifiedGroupKFold). ``index`` is passed to :class:`KNNClassifier` for k-fold;
    leave-one-out always searches exactly.
    """
    if method not in ("loo", "kfold"):
        raise InputError(f"method must be 'loo' or 'kfold', got {method!r}")
    _check_weights(weights, temperature, metric)
    X = _check_features(X)
    classes, encoded = _check_labels(y, len(X))
    y = classes[encoded]
    if len(X) < 2:
        raise InsufficientSamplesError("evaluation needs at least two labelled rows")
    group_by, groups = _resolve_groups(groups, ids, len(X))
    component = leak_components(X, groups, exclude_duplicates)
    sizes = np.bincount(component)
    if sizes.max() == len(X):
        raise InsufficientSamplesError(
            "every row is linked to every other (one group or all identical vectors): no row "
            "has neighbours left to be classified by"
        )
    fields = {
        "method": method,
        "metric": metric,
        "weights": weights,
        "n_neighbors": n_neighbors,
        "n_samples": len(X),
        "exclude_duplicates": exclude_duplicates,
        "grouped": groups is not None,
        "group_by": group_by,
        "n_groups": None if groups is None else len(np.unique(groups.astype(str))),
        "n_components": len(sizes),
        "mean_excluded": float(np.mean(sizes[component] - 1)),
    }
    if naive and groups is not None:
        ungrouped = evaluate_knn(
            X,
            y,
            groups=None,
            method=method,
            n_neighbors=n_neighbors,
            weights=weights,
            temperature=temperature,
            metric=metric,
            exclude_duplicates=exclude_duplicates,
            n_splits=n_splits,
            top_k=(),
            index=index,
            random_state=random_state,
            progress=progress,
        )
        fields["naive"] = {
            "accuracy": ungrouped.accuracy,
            "f1_weighted": ungrouped.f1_weighted,
            "f1_macro": ungrouped.f1_macro,
            "mean_excluded": ungrouped.mean_excluded,
        }
    if method == "loo":
        distances, positions = _loo_neighbours(X, component, n_neighbors, metric, progress)
        proba = vote(distances, positions, encoded, len(classes), weights, temperature, metric)
        return _report(y, proba, classes, top_k, n_splits=None, **fields)

    proba = _kfold_proba(
        X,
        encoded,
        component,
        len(classes),
        n_splits,
        random_state,
        progress,
        KNNClassifier(
            n_neighbors, weights=weights, temperature=temperature, metric=metric, index=index
        ),
    )
    return _report(y, proba, classes, top_k, n_splits=n_splits, **fields)


def leak_aware_splits(
    y: np.ndarray, component: np.ndarray, n_splits: int = 5, random_state: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train, test) row indices that keep every leak component in one fold.

    StratifiedKFold when every component is a single row, StratifiedGroupKFold otherwise.
    """
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    grouped = len(np.unique(component)) < len(y)
    splitter = (
        StratifiedGroupKFold(n_splits, shuffle=True, random_state=random_state)
        if grouped
        else StratifiedKFold(n_splits, shuffle=True, random_state=random_state)
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class")
            return list(splitter.split(np.zeros(len(y)), y, component if grouped else None))
    except ValueError as error:
        raise InputError(f"cannot make {n_splits} folds: {error}") from error


def _kfold_proba(
    X: np.ndarray,
    encoded: np.ndarray,
    component: np.ndarray,
    n_classes: int,
    n_splits: int,
    random_state: int,
    progress: bool,
    classifier: KNNClassifier,
) -> np.ndarray:
    from sklearn.base import clone
    from tqdm import tqdm

    proba = np.zeros((len(X), n_classes))
    splits = leak_aware_splits(encoded, component, n_splits, random_state)
    for train, test in tqdm(splits, disable=not progress, desc="folds"):
        model = clone(classifier).fit(X[train], encoded[train])
        proba[np.ix_(test, model.classes_)] = model.predict_proba(X[test])
    return proba


# ----------------------------------------------------------------------------- copies


@dataclass
class MemorisationReport:
    """Generated items sorted most suspicious first, with their nearest real items.

    Empty windows (no beatmap events) are left out on both sides. ``score`` = d(g, r*) /
    d(r*, nearest other real item), where r* is the nearest real item
    of generated item g (the per-neighbour "authenticity" test of Alaa et al., 2022, as a
    ratio): below 1, g sits closer to r* than any other real item does, a sign of copying;
    near 0, a near-exact copy. ``score_global`` divides by the median real-to-real
    nearest-neighbour distance instead. ``flagged``: ``score < threshold``.
    """

    generated_ids: np.ndarray
    score: np.ndarray
    score_global: np.ndarray
    distance: np.ndarray
    reference_distance: np.ndarray
    nearest_real_ids: np.ndarray
    nearest_real_distances: np.ndarray
    median_real_distance: float
    threshold: float
    metric: str
    n_empty: tuple[int, int] = (0, 0)  # empty windows left out (generated, real)
    empty_known: bool = True  # whether every window's emptiness was known

    @property
    def flagged(self) -> np.ndarray:
        return self.score < self.threshold

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        rows = range(len(self.generated_ids) if top is None else min(top, len(self.generated_ids)))
        return {
            "level": "window",
            "metric": self.metric,
            "empty_windows_left_out": {"generated": self.n_empty[0], "real": self.n_empty[1]},
            "empty_windows_known": self.empty_known,
            "threshold": self.threshold,
            "median_real_distance": self.median_real_distance,
            "n_generated": len(self.generated_ids),
            "n_flagged": int(self.flagged.sum()),
            "items": [
                {
                    "id": str(self.generated_ids[i]),
                    "score": float(self.score[i]),
                    "score_global": float(self.score_global[i]),
                    "distance": float(self.distance[i]),
                    "reference_distance": float(self.reference_distance[i]),
                    "flagged": bool(self.flagged[i]),
                    "nearest_real": [
                        {"id": str(r), "distance": float(d)}
                        for r, d in zip(self.nearest_real_ids[i], self.nearest_real_distances[i])
                        if r != ""
                    ],
                }
                for i in rows
            ],
        }

    def to_text(self, top: int = 20) -> str:
        lines = [
            f"{int(self.flagged.sum())} of {len(self.generated_ids)} generated items score "
            f"below {self.threshold} (score = distance to nearest real / that real item's own "
            f"nearest-real distance; median real-to-real distance "
            f"{self.median_real_distance:.4g}, {self.metric}; {self.n_empty[0]} generated and "
            f"{self.n_empty[1]} real empty windows left out)",
            f"{'generated':<32} {'score':>7} {'global':>7} {'distance':>10}  nearest real",
        ]
        for i in range(min(top, len(self.generated_ids))):
            mark = " *" if self.flagged[i] else ""
            lines.append(
                f"{str(self.generated_ids[i])[:32]:<32} {self.score[i]:>7.3f} "
                f"{self.score_global[i]:>7.3f} {self.distance[i]:>10.4g}  "
                f"{self.nearest_real_ids[i, 0]}{mark}"
            )
        return "\n".join(lines)


def window_events(store: Any, ids: Sequence[str] | None = None) -> np.ndarray:
    """Beatmap events of each row of an embedding store (of the rows with ``ids``, in that
    order, when given): int64, 0 for an empty window, −1 where unknown.

    Counts are those the extractor recorded at embedding time (``n_events``). Stores of the
    ``descriptors`` extractor written without counts fall back to the vectors' own ``empty``
    feature, which says exactly whether the window holds objects.
    """
    rows = None
    if ids is not None:
        row_of = {item_id: row for row, item_id in enumerate(np.asarray(store.ids).astype(str))}
        missing = [i for i in ids if str(i) not in row_of]
        if missing:
            raise InputError(f"{store.path} holds no row with id {missing[0]!r}")
        rows = np.array([row_of[str(i)] for i in ids], dtype=np.int64)
    counted = store.n_events
    events = (
        np.full(len(store) if rows is None else len(rows), -1, dtype=np.int64)
        if counted is None
        else np.asarray(counted if rows is None else counted[rows], dtype=np.int64)
    )
    unknown = events < 0
    if unknown.any() and store.extractor == "descriptors":
        from beatmap_fid.extractors.descriptors import DESCRIPTOR_NAMES

        column = DESCRIPTOR_NAMES.index("empty")
        picked = np.flatnonzero(unknown) if rows is None else rows[unknown]
        empty = store.vectors(picked)[:, column] > 0.5
        events[unknown] = np.where(empty, 0, 1)  # 1: "holds objects", the count is not known
    return events


@dataclass
class _CopySide:
    vectors: np.ndarray
    ids: np.ndarray
    config_hash: str | None
    events: np.ndarray  # per row; 0 = empty window, −1 = unknown


def _copy_side(
    source: Any,
    ids: Sequence[str] | None,
    events: Sequence[int] | None,
    stack: ExitStack,
    what: str,
) -> _CopySide:
    src = _as_source(source, ids, None, stack)
    if src.store is not None:
        if events is not None:
            raise InputError(f"{what}: event counts come from the store; do not pass them")
        vectors, counts = np.asarray(src.store.vectors()), window_events(src.store)
    else:
        vectors = src.array
        counts = np.full(len(vectors), -1) if events is None else np.asarray(events, np.int64)
        if counts.shape != (len(vectors),):
            raise InputError(f"{what}: {len(counts)} event counts for {len(vectors)} vectors")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise NonFiniteError(
            f"{what} vectors contain NaN or infinite values (first: id "
            f"{str(src.ids[np.flatnonzero(~finite)[0]])!r})"
        )
    return _CopySide(vectors, src.ids, src.provenance.get("config_hash"), counts)


def _check_copy_pair(gen: _CopySide, ref: _CopySide, metric: str) -> None:
    if metric not in ("l2", "cosine"):
        raise InputError(
            f"memorisation scores need a distance: use metric 'l2' or 'cosine', got {metric!r}"
        )
    if gen.config_hash and ref.config_hash and gen.config_hash != ref.config_hash:
        raise ConfigMismatchError(
            f"generated store has config hash {gen.config_hash}, real store {ref.config_hash}: "
            "distances between vectors of different extractor configurations mean nothing"
        )
    if gen.vectors.shape[1] != ref.vectors.shape[1]:
        raise DimensionMismatchError(
            f"generated vectors have dimension {gen.vectors.shape[1]}, real vectors "
            f"{ref.vectors.shape[1]}"
        )


def memorisation_scores(
    generated: Any,
    real: Any,
    *,
    k: int = 5,
    metric: str = "l2",
    threshold: float = 0.5,
    generated_ids: Sequence[str] | None = None,
    real_ids: Sequence[str] | None = None,
    generated_events: Sequence[int] | None = None,
    real_events: Sequence[int] | None = None,
) -> MemorisationReport:
    """How close each generated item sits to its nearest real items, most suspicious first.

    ``generated`` / ``real``: embedding stores, store paths, or arrays (with optional ids and
    event counts). Empty windows (0 events: breaks, intros) are left out on both sides: they
    look alike in every map and would rank first. Real items identical to each other count as
    one when measuring the real-to-real distance. See :class:`MemorisationReport` for the
    score; :func:`map_memorisation_scores` scores whole maps. Search is exact.
    """
    import faiss

    with ExitStack() as stack:
        gen = _copy_side(generated, generated_ids, generated_events, stack, "generated")
        ref = _copy_side(real, real_ids, real_events, stack, "real")
    _check_copy_pair(gen, ref, metric)
    gen_keep, ref_keep = gen.events != 0, ref.events != 0
    if not gen_keep.any():
        raise InsufficientSamplesError("every generated window is empty (no beatmap events)")
    gen_ids, ref_ids = gen.ids[gen_keep], ref.ids[ref_keep]
    gen_v = _prepare(gen.vectors[gen_keep], metric)
    ref_v = _prepare(ref.vectors[ref_keep], metric)
    real_copies = duplicate_groups(ref_v)  # after normalising: scaled copies are one for cosine
    first_of = np.unique(real_copies, return_index=True)[1]
    if len(first_of) < 2:
        raise InsufficientSamplesError(
            "memorisation needs at least two distinct real vectors with beatmap events"
        )
    k = min(k, len(ref_v))
    faiss_metric = _faiss_metric(metric)

    everything = faiss.IndexFlat(ref_v.shape[1], faiss_metric)
    everything.add(ref_v)
    raw, rows = everything.search(gen_v, k)
    nearest_distances = _as_distances(raw, rows, metric)

    distinct = faiss.IndexFlat(ref_v.shape[1], faiss_metric)
    distinct.add(ref_v[first_of])
    raw_rr, _ = distinct.search(ref_v[first_of], 2)
    own_nn = _as_distances(raw_rr, np.zeros_like(raw_rr, dtype=np.int64), metric)[:, 1]
    nn_of_row = own_nn[real_copies]
    median = float(np.median(own_nn))

    distance = nearest_distances[:, 0].astype(np.float64)
    reference = nn_of_row[rows[:, 0]].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(distance == 0, 0.0, distance / reference)
        score_global = np.where(distance == 0, 0.0, distance / median)
    order = np.argsort(score, kind="stable")
    neighbour_ids = np.where(rows >= 0, ref_ids[np.maximum(rows, 0)], "")
    return MemorisationReport(
        generated_ids=gen_ids[order],
        score=score[order],
        score_global=score_global[order],
        distance=distance[order],
        reference_distance=reference[order],
        nearest_real_ids=neighbour_ids[order],
        nearest_real_distances=nearest_distances[order],
        median_real_distance=median if math.isfinite(median) else float("nan"),
        threshold=threshold,
        metric=metric,
        n_empty=(int((~gen_keep).sum()), int((~ref_keep).sum())),
        empty_known=bool((gen.events >= 0).all() and (ref.events >= 0).all()),
    )


@dataclass
class MapMemorisationReport:
    """Generated maps sorted most suspicious first, each with the real map it sits nearest.

    Only windows with beatmap events count. For a generated map G, ``distance`` D(G) is the
    mean, over its windows, of the distance to the nearest real window; ``nearest_real_map``
    R* is the real map holding most of those nearest windows. ``reference_distance`` is the
    same measure for R* against the other real maps (its windows' distances to the nearest
    window of another real map; the median over real maps where that is 0), the distance a
    fresh map from the same distribution keeps.
    ``score`` = D(G) / D(R*): about 1 for a map as new as a real one, below 1 closer to R*
    than other real maps come, 0 for a copy. ``score_global`` divides by the median of D over
    all real maps. ``share_closer``: share of G's windows closer to their nearest real window
    than that window is to any other real map. ``flagged``: ``score < threshold``.
    """

    maps: np.ndarray
    score: np.ndarray
    score_global: np.ndarray
    distance: np.ndarray
    reference_distance: np.ndarray
    nearest_real_map: np.ndarray
    share_on_nearest: np.ndarray  # share of G's windows whose nearest real window is in R*
    share_closer: np.ndarray
    n_windows: np.ndarray  # windows with events
    n_empty: np.ndarray  # empty windows left out
    median_real_distance: float
    threshold: float
    metric: str
    left_out: list[str]  # generated maps without a single window with events
    n_real_maps: int
    empty_known: bool  # whether every window's emptiness was known

    @property
    def flagged(self) -> np.ndarray:
        return self.score < self.threshold

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        rows = range(len(self.maps) if top is None else min(top, len(self.maps)))
        return {
            "level": "map",
            "metric": self.metric,
            "threshold": self.threshold,
            "median_real_distance": self.median_real_distance,
            "n_generated_maps": len(self.maps),
            "n_real_maps": self.n_real_maps,
            "n_flagged": int(self.flagged.sum()),
            "empty_windows_known": self.empty_known,
            "left_out": list(self.left_out),
            "maps": [
                {
                    "map": str(self.maps[i]),
                    "score": float(self.score[i]),
                    "score_global": float(self.score_global[i]),
                    "distance": float(self.distance[i]),
                    "reference_distance": float(self.reference_distance[i]),
                    "nearest_real_map": str(self.nearest_real_map[i]),
                    "share_on_nearest": float(self.share_on_nearest[i]),
                    "share_closer": float(self.share_closer[i]),
                    "windows": int(self.n_windows[i]),
                    "empty_windows": int(self.n_empty[i]),
                    "flagged": bool(self.flagged[i]),
                }
                for i in rows
            ],
        }

    def to_text(self, top: int = 20) -> str:
        lines = [
            f"{int(self.flagged.sum())} of {len(self.maps)} generated maps score below "
            f"{self.threshold} (score = mean distance of the map's windows to the nearest real "
            "window / the same for its nearest real map against the other real maps; "
            f"{self.n_real_maps} real maps, {self.metric}; empty windows left out)",
            f"{'generated map':<40} {'score':>7} {'global':>7} {'closer':>7} {'windows':>7}  "
            "nearest real map",
        ]
        for i in range(min(top, len(self.maps))):
            mark = " *" if self.flagged[i] else ""
            lines.append(
                f"{str(self.maps[i])[-40:]:<40} {self.score[i]:>7.3f} "
                f"{self.score_global[i]:>7.3f} {self.share_closer[i]:>7.0%} "
                f"{self.n_windows[i]:>7d}  {self.nearest_real_map[i]}{mark}"
            )
        if self.left_out:
            lines.append(f"{len(self.left_out)} generated map(s) have no window with events")
        if not self.empty_known:
            lines.append(
                "some windows' event counts are unknown (store written without them): those "
                "were kept, so empty windows may take part; embed again to count them"
            )
        return "\n".join(lines)


def map_memorisation_scores(
    generated: Any,
    real: Any,
    *,
    metric: str = "l2",
    threshold: float = 0.5,
    generated_ids: Sequence[str] | None = None,
    real_ids: Sequence[str] | None = None,
    generated_events: Sequence[int] | None = None,
    real_events: Sequence[int] | None = None,
) -> MapMemorisationReport:
    """Whole generated maps scored for copying, most suspicious first.

    ``generated`` / ``real``: embedding stores, store paths, or arrays with ids (``file#k``:
    the map is the part before ``#``) and optional event counts per row. Windows without
    beatmap events (breaks, intros, outros; counted by the extractor at embedding time, see
    :func:`window_events`) are left out on both sides: they look alike in every map, so
    they would make unrelated maps look like copies. A real map that another real map
    duplicates (distance 0 to the other real maps) is judged by the median real distance
    instead. See :class:`MapMemorisationReport` for the score. Search is exact.
    """
    import faiss

    with ExitStack() as stack:
        gen = _copy_side(generated, generated_ids, generated_events, stack, "generated")
        ref = _copy_side(real, real_ids, real_events, stack, "real")
    _check_copy_pair(gen, ref, metric)
    gen_maps_all = np.array([map_id(i) for i in gen.ids], dtype=object)
    gen_keep, ref_keep = gen.events != 0, ref.events != 0
    ref_v = _prepare(ref.vectors[ref_keep], metric)
    ref_names, ref_map = np.unique(
        np.array([map_id(i) for i in ref.ids[ref_keep]], dtype=object), return_inverse=True
    )
    ref_map = ref_map.ravel()
    if len(ref_names) < 2:
        raise InsufficientSamplesError("map scores need at least two real maps with events")
    own, _ = _loo_neighbours(ref_v, ref_map, 1, metric, progress=False)
    own_nn = own[:, 0].astype(np.float64)  # nearest window of another real map
    ref_windows = np.bincount(ref_map, minlength=len(ref_names))
    ref_distance = np.bincount(ref_map, own_nn, minlength=len(ref_names)) / ref_windows
    median = float(np.median(ref_distance))

    names, gen_map = np.unique(gen_maps_all[gen_keep], return_inverse=True)
    gen_map = gen_map.ravel()
    left_out = sorted(set(gen_maps_all.tolist()) - set(names.tolist()))
    if not len(names):
        raise InsufficientSamplesError("every generated window is empty (no beatmap events)")
    index = faiss.IndexFlat(ref_v.shape[1], _faiss_metric(metric))
    index.add(ref_v)
    raw, rows = index.search(_prepare(gen.vectors[gen_keep], metric), 1)
    nearest = _as_distances(raw, rows, metric)[:, 0].astype(np.float64)
    rows = rows[:, 0].astype(np.int64)
    windows = np.bincount(gen_map, minlength=len(names))
    distance = np.bincount(gen_map, nearest, minlength=len(names)) / windows
    closer = np.bincount(gen_map, nearest < own_nn[rows], minlength=len(names)) / windows
    # R*: the real map with most nearest windows; ties go to the smaller summed distance
    pairs, pair_of = np.unique(gen_map * len(ref_names) + ref_map[rows], return_inverse=True)
    votes = np.bincount(pair_of.ravel())
    sums = np.bincount(pair_of.ravel(), nearest)
    pair_gen = pairs // len(ref_names)
    ranked = np.lexsort((sums, -votes, pair_gen))  # per generated map, its best pair first
    first = ranked[np.r_[True, pair_gen[ranked][1:] != pair_gen[ranked][:-1]]]
    best = pairs[first] % len(ref_names)  # one per generated map, in map order
    reference = np.where(ref_distance[best] > 0, ref_distance[best], median)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(distance == 0, 0.0, distance / reference)
        score_global = np.where(distance == 0, 0.0, distance / median)
    order = np.lexsort((distance, score))
    all_windows = np.bincount(
        np.searchsorted(names, gen_maps_all[np.isin(gen_maps_all, names)]), minlength=len(names)
    )
    return MapMemorisationReport(
        maps=names[order],
        score=score[order],
        score_global=score_global[order],
        distance=distance[order],
        reference_distance=reference[order],
        nearest_real_map=ref_names[best][order],
        share_on_nearest=(votes[first] / windows)[order],
        share_closer=closer[order],
        n_windows=windows[order],
        n_empty=(all_windows - windows)[order],
        median_real_distance=median,
        threshold=threshold,
        metric=metric,
        left_out=left_out,
        n_real_maps=len(ref_names),
        empty_known=bool((gen.events >= 0).all() and (ref.events >= 0).all()),
    )
