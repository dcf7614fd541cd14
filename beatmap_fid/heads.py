"""Small heads trained on stored embeddings: a score (regression) or a label (classification).

The classic case is an aesthetic predictor, a small network on CLIP image embeddings; any
extractor's embeddings work, e.g. a difficulty score or a mapper label on beatmap embeddings.

- Networks: ``"linear"`` (one linear layer) or ``"mlp"`` (Linear → GELU → one pre-norm
  residual block [LayerNorm → Linear → GELU → Dropout → Linear] → LayerNorm → Linear).
- Inputs are standardised with the training split's per-feature mean and standard deviation;
  regression targets are standardised too, so the learning rate suits any score scale.
- Losses: mean squared error (regression) or cross-entropy (classification), AdamW.
- A validation split (``val_fraction``) is scored after every epoch; training stops after
  ``patience`` epochs without improvement and keeps the weights of the best epoch. With
  ``groups`` (e.g. ``"map"``: the windows of one map) the split keeps each group on one side.
- :func:`train_head_held_out` first sets aside a test split grouped by map (or by folder, a
  beatmap set), trains on the rest and scores the head on the held-out maps against a
  baseline that ignores the embeddings (the training mean, or the most frequent training
  label): the figures ``beatmap-fid train-head`` prints and saves with the head.
- Seeded: the split, the initial weights, the batch order and dropout all follow ``seed``;
  the global torch random state is left untouched.

A saved head is a ``.pt`` file holding only tensors, numbers, strings and lists, so it loads
with ``torch.load(weights_only=True)``: the weights, the standardisation, the kind, the
architecture, the embedding dimension, the label names, the validation metrics, the held-out
evaluation, and the extractor name and config hash of the store it was trained on. Applying a head to a store made
with another extractor configuration raises ConfigMismatchError (a head trained on a plain
array records no configuration and is not checked).
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from beatmap_fid.errors import (
    ConfigMismatchError,
    DimensionMismatchError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
)
from beatmap_fid.extractors.base import map_id
from beatmap_fid.shards import STORE_TYPES
from beatmap_fid.store import open_store

KINDS = ("regression", "classification")
ARCHITECTURES = ("linear", "mlp")
FILE_FORMAT = "beatmap_fid.head"
FILE_VERSION = 1
_PREDICT_ROWS = 4096


@dataclass
class TrainingReport:
    """How training went: loss curves (standardised units), the epoch kept, and validation
    metrics of the kept weights (regression: ``mse``, ``rmse``, ``r2`` in score units;
    classification: ``accuracy``, ``cross_entropy``)."""

    n_train: int
    n_val: int
    best_epoch: int
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)


class ScoreHead:
    """A trained head. :meth:`predict` gives scores (regression) or label names
    (classification); :meth:`predict_proba` gives class probabilities."""

    def __init__(
        self,
        network: Any,
        *,
        kind: str,
        architecture: str,
        dim: int,
        hidden: int,
        dropout: float,
        label_names: list[str] | None,
        input_mean: np.ndarray,
        input_scale: np.ndarray,
        target_mean: float = 0.0,
        target_scale: float = 1.0,
        extractor: str | None = None,
        config_hash: str | None = None,
        report: TrainingReport | None = None,
        held_out: dict[str, Any] | None = None,
    ) -> None:
        self.network = network.eval()
        self.kind = kind
        self.architecture = architecture
        self.dim = dim
        self.hidden = hidden
        self.dropout = dropout
        self.label_names = label_names
        self.input_mean = np.asarray(input_mean, dtype=np.float32)
        self.input_scale = np.asarray(input_scale, dtype=np.float32)
        self.target_mean = float(target_mean)
        self.target_scale = float(target_scale)
        self.extractor = extractor
        self.config_hash = config_hash
        self.report = report
        self.held_out = held_out

    def __repr__(self) -> str:
        labels = f", labels={self.label_names}" if self.label_names else ""
        return (
            f"ScoreHead(kind={self.kind!r}, architecture={self.architecture!r}, dim={self.dim}"
            f"{labels}, extractor={self.extractor!r}, config_hash={self.config_hash!r})"
        )

    def predict(self, features: Any) -> np.ndarray:
        """Scores (float64, (n,)) or label names (object array of str, (n,)) for ``features``
        (an array (n, d) or (d,), an embedding store or an ``.h5`` path)."""
        outputs = self._outputs(features)
        if self.kind == "regression":
            return outputs[:, 0] * self.target_scale + self.target_mean
        return np.asarray(self.label_names, dtype=object)[outputs.argmax(axis=1)]

    def predict_proba(self, features: Any) -> np.ndarray:
        """Class probabilities (float64, (n, classes)), columns in ``label_names`` order."""
        if self.kind != "classification":
            raise InputError("predict_proba needs a classification head; this one regresses")
        outputs = self._outputs(features)
        outputs -= outputs.max(axis=1, keepdims=True)
        np.exp(outputs, out=outputs)
        return outputs / outputs.sum(axis=1, keepdims=True)

    def _outputs(self, features: Any) -> np.ndarray:
        import torch

        blocks = []
        with torch.no_grad():
            for block in self._blocks(features):
                standardised = (block.astype(np.float32) - self.input_mean) / self.input_scale
                blocks.append(self.network(torch.from_numpy(standardised)).double().numpy())
        if not blocks:
            return np.empty((0, len(self.label_names or [None])))
        return np.concatenate(blocks)

    def _blocks(self, features: Any):
        """Float blocks of ``features``; a store is checked against the head's configuration."""
        if isinstance(features, (str, os.PathLike)):
            with open_store(features) as store:
                yield from self._blocks(store)
            return
        if isinstance(features, STORE_TYPES):
            self._check_store(features)
            for _, block in features.iter_blocks():
                yield block
            return
        array = np.asarray(features)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.dtype.kind not in "biuf":
            raise InputError(
                f"features must be a numeric array (n, d) or (d,), got {array.dtype} {array.shape}"
            )
        if array.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"this head takes {self.dim}-dimensional embeddings, got {array.shape[1]}"
            )
        if not np.isfinite(array).all():
            raise NonFiniteError("features contain NaN or infinite values")
        for start in range(0, len(array), _PREDICT_ROWS):
            yield array[start : start + _PREDICT_ROWS]

    def _check_store(self, store: Any) -> None:
        if self.config_hash is not None and store.config_hash != self.config_hash:
            raise ConfigMismatchError(
                f"this head was trained on {self.extractor!r} embeddings with config hash "
                f"{self.config_hash}, but {store.path} holds {store.extractor!r} embeddings "
                f"with config hash {store.config_hash}; embed with the head's configuration"
            )
        if store.dim != self.dim:
            raise DimensionMismatchError(
                f"this head takes {self.dim}-dimensional embeddings, {store.path} holds "
                f"{store.dim}-dimensional ones"
            )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the head to ``path`` (``.pt``); see the module documentation for the contents."""
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        report = self.report
        payload = {
            "format": FILE_FORMAT,
            "format_version": FILE_VERSION,
            "kind": self.kind,
            "architecture": self.architecture,
            "dim": self.dim,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "label_names": self.label_names,
            "extractor": self.extractor,
            "config_hash": self.config_hash,
            "input_mean": torch.from_numpy(self.input_mean.copy()),
            "input_scale": torch.from_numpy(self.input_scale.copy()),
            "target_mean": self.target_mean,
            "target_scale": self.target_scale,
            "state_dict": self.network.state_dict(),
            "val_metrics": dict(report.val_metrics) if report else {},
            "best_epoch": report.best_epoch if report else -1,
            "held_out": self.held_out,
        }
        partial = path.with_name(path.name + ".partial")
        torch.save(payload, partial)
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ScoreHead:
        """Read a head written by :meth:`save` (with ``torch.load(weights_only=True)``)."""
        import torch

        path = Path(path)
        if not path.is_file():
            raise InputError(f"head file {path} does not exist")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises pickle, zip and runtime errors alike
            raise InputError(f"cannot read head file {path}: {err}") from err
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise InputError(f"{path} is not a beatmap_fid head file")
        if payload["format_version"] > FILE_VERSION:
            raise InputError(
                f"{path} has head format version {payload['format_version']}; this "
                f"beatmap_fid reads up to {FILE_VERSION}: upgrade beatmap_fid"
            )
        label_names = payload["label_names"]
        outputs = 1 if payload["kind"] == "regression" else len(label_names)
        network = _build_network(
            payload["architecture"], payload["dim"], payload["hidden"], outputs, payload["dropout"]
        )
        network.load_state_dict(payload["state_dict"])
        return cls(
            network,
            kind=payload["kind"],
            architecture=payload["architecture"],
            dim=payload["dim"],
            hidden=payload["hidden"],
            dropout=payload["dropout"],
            label_names=label_names,
            input_mean=payload["input_mean"].numpy(),
            input_scale=payload["input_scale"].numpy(),
            target_mean=payload["target_mean"],
            target_scale=payload["target_scale"],
            extractor=payload["extractor"],
            config_hash=payload["config_hash"],
            report=TrainingReport(
                n_train=0,
                n_val=0,
                best_epoch=payload["best_epoch"],
                val_metrics=dict(payload["val_metrics"]),
            ),
            held_out=payload.get("held_out"),
        )


def load_head(path: str | os.PathLike) -> ScoreHead:
    """Read a head saved with :meth:`ScoreHead.save`."""
    return ScoreHead.load(path)


def apply_head(
    head: ScoreHead | str | os.PathLike, source: Any, *, proba: bool = False
) -> np.ndarray:
    """Predictions of ``head`` (or of the head file at that path) for every row of ``source``
    (an array, an embedding store or an ``.h5`` path), in row order; class probabilities with
    ``proba``. A store made with another extractor configuration raises ConfigMismatchError."""
    if not isinstance(head, ScoreHead):
        head = load_head(head)
    return head.predict_proba(source) if proba else head.predict(source)


def train_head(
    embeddings: Any,
    targets: Any = None,
    *,
    kind: str = "regression",
    architecture: str = "mlp",
    hidden: int = 256,
    dropout: float = 0.1,
    val_fraction: float = 0.2,
    max_epochs: int = 200,
    patience: int = 10,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    num_threads: int | None = 1,
    progress: bool = False,
    groups: Any = None,
) -> ScoreHead:
    """Train a head on ``embeddings`` (an array (n, d), an embedding store or an ``.h5`` path).

    ``targets``: one value per row (scores for regression, labels for classification), or a
    mapping from store id, or from map (the id without its ``#k`` window number), to value
    (rows without a value are left out). For classification from a store, None uses the
    store's labels (rows labelled "" are left out). The training report is in
    ``head.report``. ``groups``: None (rows split at random), ``"map"`` or ``"folder"``
    (a store's windows grouped by map, or by the folder of the map: a beatmap set), or one
    group per row; the validation split keeps each group on one side.

    ``num_threads``: torch CPU threads while training (restored afterwards). One is the
    fastest for heads this small, whose steps are too short to share: on a busy machine, extra
    threads spin-waiting for each other slowed training down by orders of magnitude. None
    keeps torch's own setting.
    """
    import torch

    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    if architecture not in ARCHITECTURES:
        raise InputError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if min(max_epochs, patience, batch_size, hidden) < 1:
        raise InputError("max_epochs, patience, batch_size and hidden must all be at least 1")

    features, values, extractor, config, ids = _training_data(embeddings, targets, kind)
    n, dim = features.shape
    if groups is None:
        order = np.random.default_rng(seed).permutation(n)
        n_val = round(n * val_fraction)
        train_rows, val_rows = np.sort(order[n_val:]), np.sort(order[:n_val])
    else:
        train_rows, val_rows = group_split(row_groups_of(groups, ids, n), val_fraction, seed)
    if n < 4 or len(val_rows) < 1 or len(train_rows) < 2:
        raise InsufficientSamplesError(
            f"training a head needs at least 2 training and 1 validation sample; got {n} "
            f"samples ({len(train_rows)} for training) with val_fraction={val_fraction}"
        )

    input_mean = features[train_rows].mean(axis=0)
    input_scale = features[train_rows].std(axis=0)
    input_scale[input_scale < 1e-12] = 1.0  # constant features: leave them centred, unscaled
    inputs = ((features - input_mean) / input_scale).astype(np.float32)

    label_names = None
    target_mean, target_scale = 0.0, 1.0
    if kind == "regression":
        target_mean = float(values[train_rows].mean())
        target_scale = float(values[train_rows].std()) or 1.0
        encoded = ((values - target_mean) / target_scale).astype(np.float32)[:, None]
        outputs = 1
    else:
        label_names = sorted(set(values.tolist()))
        if len(label_names) < 2:
            raise InputError(f"classification needs at least 2 labels, got {label_names}")
        encoded = np.searchsorted(np.asarray(label_names, dtype=object), values).astype(np.int64)
        outputs = len(label_names)

    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _build_network(architecture, dim, hidden, outputs, dropout)
        try:
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            report = _fit(
                network,
                torch.from_numpy(inputs[train_rows]),
                torch.from_numpy(encoded[train_rows]),
                torch.from_numpy(inputs[val_rows]),
                torch.from_numpy(encoded[val_rows]),
                kind=kind,
                max_epochs=max_epochs,
                patience=patience,
                batch_size=batch_size,
                learning_rate=learning_rate,
                weight_decay=weight_decay,
                progress=progress,
            )
        finally:
            torch.set_num_threads(threads)
    head = ScoreHead(
        network,
        kind=kind,
        architecture=architecture,
        dim=dim,
        hidden=hidden,
        dropout=dropout,
        label_names=label_names,
        input_mean=input_mean,
        input_scale=input_scale,
        target_mean=target_mean,
        target_scale=target_scale,
        extractor=extractor,
        config_hash=config,
        report=report,
    )
    head.report.val_metrics = _validation_metrics(head, features[val_rows], values[val_rows])
    return head


def _training_data(
    embeddings: Any, targets: Any, kind: str
) -> tuple[np.ndarray, np.ndarray, str | None, str | None, np.ndarray | None]:
    """Features (float64), targets (float64 scores or str labels), extractor, config hash and
    the ids of the rows kept (None for arrays)."""
    extractor = config = ids = labels = None
    if isinstance(embeddings, (str, os.PathLike)):
        with open_store(embeddings) as store:
            return _training_data(store, targets, kind)
    if isinstance(embeddings, STORE_TYPES):
        features = embeddings.vectors().astype(np.float64)
        extractor, config = embeddings.extractor, embeddings.config_hash
        ids, labels = embeddings.ids, embeddings.labels
    else:
        features = np.asarray(embeddings, dtype=np.float64)
        if features.ndim != 2:
            raise InputError(f"embeddings must have shape (n, d), got {features.shape}")
    if not np.isfinite(features).all():
        raise NonFiniteError("embeddings contain NaN or infinite values; remove those rows")

    if targets is None:
        if kind != "classification" or labels is None:
            raise InputError(
                "targets are needed: one value per row or a mapping id → value "
                "(only classification from a store with labels can do without)"
            )
        keep = labels != ""
        values = labels
    elif isinstance(targets, Mapping):
        if ids is None:
            raise InputError("targets by id need an embedding store (arrays have no ids)")
        values = np.array(
            [targets.get(item_id, targets.get(map_id(item_id))) for item_id in ids], dtype=object
        )
        keep = np.array([value is not None for value in values], dtype=bool)
    else:
        values = np.asarray(targets, dtype=object)
        if values.shape != (len(features),):
            raise InputError(
                f"targets must hold one value per embedding row ({len(features)}), "
                f"got shape {values.shape}"
            )
        keep = np.ones(len(features), dtype=bool)

    features, values = features[keep], values[keep]
    kept_ids = np.asarray(ids, dtype=object)[keep] if ids is not None else None
    if kind == "regression":
        try:
            values = values.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(f"regression targets must be numbers: {err}") from err
        if not np.isfinite(values).all():
            raise NonFiniteError("regression targets contain NaN or infinite values")
    else:
        values = np.array([str(value) for value in values], dtype=object)
    return features, values, extractor, config, kept_ids


GROUPINGS = ("map", "folder", "none")


def row_groups_of(groups: Any, ids: np.ndarray | None, n: int) -> np.ndarray:
    """One group name per row: ``groups`` given per row, or ``"map"`` / ``"folder"`` from
    the rows' ids (the map of a window, or the folder holding the map), or each row alone
    (None, ``"none"``)."""
    if groups is None or (isinstance(groups, str) and groups == "none"):
        return np.array([str(i) for i in range(n)], dtype=object)
    if isinstance(groups, str):
        if groups not in GROUPINGS:
            raise InputError(f"groups must be one of {GROUPINGS} or one group per row")
        if ids is None:
            raise InputError(f"groups={groups!r} needs a store: plain arrays have no ids")
        maps = [map_id(str(item_id)) for item_id in ids]
        if groups == "folder":
            return np.array([m.rpartition("/")[0] or m for m in maps], dtype=object)
        return np.array(maps, dtype=object)
    found = np.asarray([str(g) for g in groups], dtype=object)
    if found.shape != (n,):
        raise InputError(f"groups must hold one value per row ({n}), got {found.shape}")
    return found


def group_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the larger and of the smaller side of a split that keeps every group on one
    side: ``round(fraction · groups)`` (at least one) random groups form the smaller side."""
    names, index = np.unique(groups, return_inverse=True)
    chosen = np.random.default_rng(seed).permutation(len(names))[
        : max(1, round(len(names) * fraction))
    ]
    inside = np.isin(index, chosen)
    return np.flatnonzero(~inside), np.flatnonzero(inside)


@dataclass
class HeldOutEvaluation:
    """How a head does on maps it never saw, against a baseline that ignores the embeddings.

    ``metric``: ``"rmse"`` (regression; baseline the training mean) or ``"accuracy"``
    (classification; baseline the most frequent training label). ``rows`` and ``groups``:
    ``{"head": ..., "baseline": ...}`` scored per row (window) and per group (map: the mean
    prediction of its windows, or their mean class probabilities).
    """

    kind: str
    metric: str
    grouping: str
    n_train_rows: int
    n_test_rows: int
    n_train_groups: int
    n_test_groups: int
    rows: dict[str, float]
    groups: dict[str, float]
    unseen_test_labels: int = 0  # test groups whose label never occurs in training

    @property
    def beats_baseline(self) -> bool:
        """Whether the head is better than the baseline on the held-out groups."""
        head, base = self.groups["head"], self.groups["baseline"]
        return head < base if self.metric == "rmse" else head > base

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "grouping": self.grouping,
            "n_train_rows": self.n_train_rows,
            "n_test_rows": self.n_test_rows,
            "n_train_groups": self.n_train_groups,
            "n_test_groups": self.n_test_groups,
            "rows": dict(self.rows),
            "groups": dict(self.groups),
            "unseen_test_labels": self.unseen_test_labels,
            "beats_baseline": self.beats_baseline,
        }


def train_head_held_out(
    embeddings: Any,
    targets: Any = None,
    *,
    kind: str = "regression",
    group_by: str = "map",
    test_fraction: float = 0.2,
    seed: int = 0,
    **options: Any,
) -> tuple[ScoreHead, HeldOutEvaluation]:
    """Train a head on all but a held-out ``test_fraction`` of the groups (``group_by``:
    ``"map"``, ``"folder"`` or ``"none"``) and score it on them against the baseline.

    ``embeddings`` and ``targets`` are as in :func:`train_head`, which gets ``options``; its
    validation split is grouped the same way. The head keeps the store's extractor and config
    hash, and the evaluation (``head.held_out``), which :meth:`ScoreHead.save` writes.
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    features, values, extractor, config, ids = _training_data(embeddings, targets, kind)
    groups = row_groups_of(group_by, ids, len(features))
    train_rows, test_rows = group_split(groups, test_fraction, seed)
    if len(np.unique(groups[train_rows])) < 2 or len(test_rows) == 0:
        raise InsufficientSamplesError(
            f"a held-out split by {group_by} needs at least 3 groups; got {len(np.unique(groups))}"
        )
    head = train_head(
        features[train_rows],
        values[train_rows],
        kind=kind,
        seed=seed,
        groups=groups[train_rows],
        **options,
    )
    head.extractor, head.config_hash = extractor, config
    evaluation = _held_out(head, features, values, groups, train_rows, test_rows, group_by)
    head.held_out = evaluation.to_dict()
    return head, evaluation


def _held_out(
    head: ScoreHead,
    features: np.ndarray,
    values: np.ndarray,
    groups: np.ndarray,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    grouping: str,
) -> HeldOutEvaluation:
    test_groups, index = np.unique(groups[test_rows], return_inverse=True)
    counts = np.bincount(index, minlength=len(test_groups))
    truth = values[test_rows]
    common = {
        "kind": head.kind,
        "grouping": grouping,
        "n_train_rows": len(train_rows),
        "n_test_rows": len(test_rows),
        "n_train_groups": len(np.unique(groups[train_rows])),
        "n_test_groups": len(test_groups),
    }
    if head.kind == "regression":
        predicted = head.predict(features[test_rows])
        baseline = float(values[train_rows].astype(np.float64).mean())
        group_truth = np.bincount(index, truth.astype(np.float64)) / counts
        group_predicted = np.bincount(index, predicted) / counts

        def rmse(found: Any, expected: np.ndarray) -> float:
            return float(np.sqrt(np.mean((found - expected) ** 2)))

        return HeldOutEvaluation(
            metric="rmse",
            rows={"head": rmse(predicted, truth), "baseline": rmse(baseline, truth)},
            groups={
                "head": rmse(group_predicted, group_truth),
                "baseline": rmse(baseline, group_truth),
            },
            **common,
        )
    labels = np.asarray(head.label_names, dtype=object)
    probabilities = head.predict_proba(features[test_rows])
    group_probabilities = np.zeros((len(test_groups), len(labels)))
    np.add.at(group_probabilities, index, probabilities)
    group_truth = np.array(
        [Counter(truth[index == g].tolist()).most_common(1)[0][0] for g in range(len(test_groups))],
        dtype=object,
    )
    majority = Counter(values[train_rows].tolist()).most_common(1)[0][0]
    return HeldOutEvaluation(
        metric="accuracy",
        rows={
            "head": float(np.mean(labels[probabilities.argmax(axis=1)] == truth)),
            "baseline": float(np.mean(truth == majority)),
        },
        groups={
            "head": float(np.mean(labels[group_probabilities.argmax(axis=1)] == group_truth)),
            "baseline": float(np.mean(group_truth == majority)),
        },
        unseen_test_labels=int(sum(label not in set(labels) for label in group_truth)),
        **common,
    )


def _build_network(architecture: str, dim: int, hidden: int, outputs: int, dropout: float):
    from torch import nn

    if architecture == "linear":
        return nn.Linear(dim, outputs)

    class ResidualBlock(nn.Module):
        """x + f(LayerNorm(x)): the pre-norm residual block."""

        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(hidden)
            self.inner = nn.Sequential(
                nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
            )

        def forward(self, x):
            return x + self.inner(self.norm(x))

    return nn.Sequential(
        nn.Linear(dim, hidden),
        nn.GELU(),
        ResidualBlock(),
        nn.LayerNorm(hidden),
        nn.Linear(hidden, outputs),
    )


def _fit(
    network,
    train_x,
    train_y,
    val_x,
    val_y,
    *,
    kind: str,
    max_epochs: int,
    patience: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    progress: bool,
) -> TrainingReport:
    """Train with early stopping on the validation loss; leaves the best epoch's weights."""
    import torch
    from torch import nn

    loss_fn = nn.MSELoss() if kind == "regression" else nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=weight_decay)
    report = TrainingReport(n_train=len(train_x), n_val=len(val_x), best_epoch=0)
    best_loss, best_state, waited = float("inf"), None, 0
    bar = tqdm(range(max_epochs), desc="training head", unit="epoch", disable=not progress)
    for epoch in bar:
        network.train()
        total = 0.0
        for batch in torch.randperm(len(train_x)).split(batch_size):
            optimizer.zero_grad()
            loss = loss_fn(network(train_x[batch]), train_y[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        network.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(network(val_x), val_y))
        report.train_loss.append(total / len(train_x))
        report.val_loss.append(val_loss)
        bar.set_postfix(val_loss=f"{val_loss:.4g}")
        if val_loss < best_loss:
            best_loss, best_state, waited = val_loss, copy.deepcopy(network.state_dict()), 0
            report.best_epoch = epoch
        else:
            waited += 1
            if waited >= patience:
                break
    network.load_state_dict(best_state)
    network.eval()
    return report


def _validation_metrics(
    head: ScoreHead, features: np.ndarray, values: np.ndarray
) -> dict[str, float]:
    if head.kind == "regression":
        errors = head.predict(features) - values
        mse = float(np.mean(errors**2))
        variance = float(np.var(values))
        r2 = 1.0 - mse / variance if variance > 0 else float("nan")
        return {"mse": mse, "rmse": float(np.sqrt(mse)), "r2": r2}
    probabilities = head.predict_proba(features)
    truth = np.searchsorted(np.asarray(head.label_names, dtype=object), values)
    picked = probabilities[np.arange(len(truth)), truth]
    return {
        "accuracy": float(np.mean(probabilities.argmax(axis=1) == truth)),
        "cross_entropy": float(-np.mean(np.log(np.clip(picked, 1e-300, None)))),
    }
