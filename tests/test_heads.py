"""Score heads: fitting known functions of the embedding, files, stores and bad input."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from beatmap_fid.errors import (  # noqa: E402
    ConfigMismatchError,
    DimensionMismatchError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
)
from beatmap_fid.heads import ScoreHead, apply_head, load_head, train_head  # noqa: E402
from beatmap_fid.store import StoreWriter  # noqa: E402

DIM = 12
LABELS = np.array(["calm", "fast", "tech"], dtype=object)
FAST = {"hidden": 64, "max_epochs": 100, "patience": 10, "batch_size": 256, "learning_rate": 3e-3}


def nonlinear_score(x: np.ndarray) -> np.ndarray:
    """A smooth, clearly non-linear score of the embedding."""
    return np.sin(1.5 * x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.3 * x[:, 3] + 2.0


def class_of(x: np.ndarray) -> np.ndarray:
    weights = np.random.default_rng(99).standard_normal((x.shape[1], len(LABELS)))
    return LABELS[(x @ weights).argmax(axis=1)]


def r_squared(predicted: np.ndarray, truth: np.ndarray) -> float:
    return 1.0 - np.mean((predicted - truth) ** 2) / np.var(truth)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    train, test = rng.standard_normal((2000, DIM)), rng.standard_normal((1000, DIM))
    return {"train": train.astype(np.float32), "test": test.astype(np.float32)}


@pytest.fixture(scope="module")
def regression_head(data) -> ScoreHead:
    return train_head(data["train"], nonlinear_score(data["train"]), seed=1, **FAST)


def test_mlp_head_fits_a_nonlinear_score_on_held_out_data(data, regression_head):
    predicted = regression_head.predict(data["test"])
    assert r_squared(predicted, nonlinear_score(data["test"])) > 0.9
    report = regression_head.report
    assert report.val_metrics["r2"] > 0.9
    assert report.n_train + report.n_val == 2000 and report.n_val == 400
    # The kept weights are those of the best validation epoch.
    assert report.val_loss[report.best_epoch] == min(report.val_loss)


def test_linear_head_fits_a_linear_score_but_not_a_nonlinear_one(data):
    weights = np.linspace(-1, 1, DIM)
    linear = train_head(data["train"], data["train"] @ weights + 5, architecture="linear", **FAST)
    assert r_squared(linear.predict(data["test"]), data["test"] @ weights + 5) > 0.99
    curved = train_head(
        data["train"], nonlinear_score(data["train"]), architecture="linear", **FAST
    )
    assert r_squared(curved.predict(data["test"]), nonlinear_score(data["test"])) < 0.6


def test_classification_head_learns_labels(data):
    head = train_head(data["train"], class_of(data["train"]), kind="classification", **FAST)
    assert head.label_names == list(LABELS)
    predicted = head.predict(data["test"])
    assert np.mean(predicted == class_of(data["test"])) > 0.9
    probabilities = head.predict_proba(data["test"][:5])
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert head.report.val_metrics["accuracy"] > 0.9


def test_training_is_seeded_and_leaves_torch_alone(data):
    targets = nonlinear_score(data["train"])[:300]
    options = {"hidden": 16, "max_epochs": 5}
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    first = train_head(data["train"][:300], targets, seed=4, **options)
    assert torch.rand(1) == expected_next  # the global random state is untouched
    assert torch.get_num_threads() == threads
    second = train_head(data["train"][:300], targets, seed=4, **options)
    other = train_head(data["train"][:300], targets, seed=5, **options)
    np.testing.assert_array_equal(first.predict(data["test"]), second.predict(data["test"]))
    assert not np.array_equal(first.predict(data["test"]), other.predict(data["test"]))


def test_saved_head_loads_with_weights_only_and_predicts_the_same(tmp_path, data, regression_head):
    path = regression_head.save(tmp_path / "heads" / "score.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["dim"] == DIM and payload["kind"] == "regression"
    assert payload["config_hash"] is None and payload["label_names"] is None
    loaded = load_head(path)
    np.testing.assert_array_equal(
        loaded.predict(data["test"]), regression_head.predict(data["test"])
    )
    assert loaded.report.val_metrics == regression_head.report.val_metrics
    np.testing.assert_array_equal(
        apply_head(path, data["test"][:3]), loaded.predict(data["test"][:3])
    )


def write_store(path, vectors, config, labels=None):
    with StoreWriter(path, "test-extractor", config, vectors.shape[1]) as writer:
        writer.append([f"map{i}" for i in range(len(vectors))], vectors, labels=labels)
    return path


def test_heads_train_on_stores_and_refuse_other_configurations(tmp_path, data):
    train = data["train"][:600]
    labels = class_of(train).tolist()
    labels[:50] = [""] * 50  # unlabelled rows are left out
    store = write_store(tmp_path / "train.h5", train, {"model": "a"}, labels)
    head = train_head(store, kind="classification", **FAST)
    assert head.config_hash is not None and head.extractor == "test-extractor"
    assert head.report.n_train + head.report.n_val == 550

    same = write_store(tmp_path / "same.h5", data["test"][:100], {"model": "a"})
    assert np.mean(apply_head(head, same) == class_of(data["test"][:100])) > 0.8
    assert apply_head(head, same, proba=True).shape == (100, 3)

    other = write_store(tmp_path / "other.h5", data["test"][:100], {"model": "b"})
    with pytest.raises(ConfigMismatchError, match="config hash"):
        apply_head(head, other)
    saved = load_head(head.save(tmp_path / "label.pt"))
    with pytest.raises(ConfigMismatchError):
        saved.predict(other)


def test_regression_targets_by_store_id(tmp_path, data):
    train = data["train"][:500]
    store = write_store(tmp_path / "scores.h5", train, {"model": "a"})
    scores = {f"map{i}": float(value) for i, value in enumerate(train @ np.ones(DIM))}
    del scores["map0"], scores["map1"]
    options = {**FAST, "max_epochs": 400, "patience": 20, "learning_rate": 1e-2}
    head = train_head(store, scores, architecture="linear", **options)
    assert head.report.n_train + head.report.n_val == 498
    assert r_squared(head.predict(data["test"]), data["test"] @ np.ones(DIM)) > 0.99


def test_bad_inputs_are_refused_with_reasons(data, regression_head):
    x = data["train"][:100]
    with pytest.raises(InputError, match="one value per embedding row"):
        train_head(x, np.zeros(99))
    with pytest.raises(InputError, match="at least 2 labels"):
        train_head(x, ["calm"] * 100, kind="classification")
    with pytest.raises(InsufficientSamplesError, match="validation"):
        train_head(x[:3], [1.0, 2.0, 3.0])
    with pytest.raises(NonFiniteError):
        train_head(x, np.full(100, np.nan))
    with pytest.raises(InputError, match="targets are needed"):
        train_head(x)
    with pytest.raises(DimensionMismatchError, match="12-dimensional"):
        regression_head.predict(np.zeros((2, DIM + 1)))
    with pytest.raises(InputError, match="classification head"):
        regression_head.predict_proba(x)
