"""KID, precision/recall, density/coverage and CMMD against their reference formulas and peers."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from beatmap_fid.errors import (
    ConfigMismatchError,
    DimensionMismatchError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
)
from beatmap_fid.frechet import frechet_distance
from beatmap_fid.metrics import (
    METRICS,
    cmmd,
    density_coverage,
    kid,
    knn_radii,
    prdc,
    precision_recall,
)
from beatmap_fid.store import StoreWriter

# --- reference formulas, written out naively (float64, explicit pairwise matrices) -----------


def naive_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    d = x.shape[1]

    def kernel(a, b):
        return (a @ b.T / d + 1.0) ** 3

    m = len(x)
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    off = ~np.eye(m, dtype=bool)
    return kxx[off].mean() + kyy[off].mean() - 2.0 * kxy.mean()


def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def naive_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Closed balls (distance ≤ radius), radius = k-th nearest other sample."""
    real_radius = np.sort(pairwise(real, real), axis=1)[:, k]
    fake_radius = np.sort(pairwise(fake, fake), axis=1)[:, k]
    cross = pairwise(real, fake)  # (n_real, n_fake)
    inside_real_ball = cross <= real_radius[:, None]
    return {
        "precision": inside_real_ball.any(axis=0).mean(),
        "recall": (cross <= fake_radius[None, :]).any(axis=1).mean(),
        "density": inside_real_ball.sum() / (k * len(fake)),
        "coverage": (cross.min(axis=1) <= real_radius).mean(),
    }


def reference_cmmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0) -> float:
    """The formula of the google-research/cmmd reference: means over all pairs, ×1000."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    gamma = 1.0 / (2 * sigma**2)

    def mean_kernel(a, b):
        return np.exp(-gamma * pairwise(a, b) ** 2).mean()

    return 1000.0 * (mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y))


def naive_cmmd_unbiased(x: np.ndarray, y: np.ndarray, sigma: float = 10.0) -> float:
    gamma = 1.0 / (2 * sigma**2)
    kxx = np.exp(-gamma * pairwise(x, x) ** 2)
    kyy = np.exp(-gamma * pairwise(y, y) ** 2)
    kxy = np.exp(-gamma * pairwise(x, y) ** 2)
    off_x, off_y = ~np.eye(len(x), dtype=bool), ~np.eye(len(y), dtype=bool)
    return 1000.0 * (kxx[off_x].mean() + kyy[off_y].mean() - 2.0 * kxy.mean())


@pytest.fixture
def sets() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    real = rng.standard_normal((180, 12)).astype(np.float32)
    fake = (1.3 * rng.standard_normal((150, 12)) + 0.4).astype(np.float32)
    return real, fake


# --- KID ------------------------------------------------------------------------------------


def test_kid_with_whole_sets_equals_the_unbiased_mmd_formula(sets):
    real, fake = sets
    fake = fake[:120]
    result = kid(real[:120], fake, subsets=1, subset_size=120)
    assert result["kid"] == pytest.approx(naive_mmd2_unbiased(real[:120], fake), rel=1e-5)
    assert result["kid_std"] == 0.0


def test_kid_averages_the_documented_subsets(sets):
    real, fake = sets
    rng = np.random.RandomState(7)
    values = []
    for _ in range(5):
        x = real[rng.choice(len(real), 50, replace=False)]
        y = fake[rng.choice(len(fake), 50, replace=False)]
        values.append(naive_mmd2_unbiased(x, y))
    result = kid(real, fake, subsets=5, subset_size=50, seed=7)
    assert result["kid"] == pytest.approx(np.mean(values), rel=1e-5)
    assert result["kid_std"] == pytest.approx(np.std(values), rel=1e-4)


def test_kid_agrees_with_torch_fidelity(sets):
    torch = pytest.importorskip("torch")
    metric_kid = pytest.importorskip("torch_fidelity.metric_kid")
    real, fake = sets
    theirs = metric_kid.kid_features_to_metric(
        torch.from_numpy(real),
        torch.from_numpy(fake),
        kid_subsets=10,
        kid_subset_size=100,
        rng_seed=3,
        verbose=False,
    )
    ours = kid(real, fake, subsets=10, subset_size=100, seed=3)
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-3)


def test_kid_is_near_zero_for_one_distribution_and_positive_otherwise():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 600, 8))
    same = kid(a, b, subsets=20, subset_size=200)
    different = kid(a, 1.5 * b, subsets=20, subset_size=200)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert different["kid"] > 10 * same["kid_std"]


def test_kid_subset_larger_than_a_set_names_the_minimum(sets):
    real, fake = sets
    with pytest.raises(
        InsufficientSamplesError,
        match=r"at least 1000 samples.*real set has 180 and the generated set 150",
    ):
        kid(real, fake)


# --- precision / recall / density / coverage ------------------------------------------------


@pytest.mark.parametrize("k", [3, 5])
def test_prdc_equals_the_reference_formulas(sets, k):
    real, fake = sets
    expected = naive_prdc(real, fake, k)
    ours = prdc(real, fake, k=k, batch_size=17)  # several blocks, one ragged
    assert ours.keys() == expected.keys()
    for name, value in expected.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name


def test_precision_recall_and_density_coverage_use_their_own_k(sets):
    real, fake = sets
    pr, dc = precision_recall(real, fake), density_coverage(real, fake)
    expected3, expected5 = naive_prdc(real, fake, 3), naive_prdc(real, fake, 5)
    assert pr == pytest.approx({key: expected3[key] for key in ("precision", "recall")})
    assert dc == pytest.approx({key: expected5[key] for key in ("density", "coverage")})


def test_prdc_agrees_with_the_prdc_package(sets):
    compute_prdc = pytest.importorskip("prdc").compute_prdc
    real, fake = sets
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints the set sizes
        theirs = compute_prdc(real, fake, nearest_k=5)
    ours = prdc(real, fake, k=5)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(float(value), abs=1e-12), name


def test_precision_and_recall_follow_their_conventions():
    """A generated set squeezed into the middle of the real one: faithful but not diverse."""
    rng = np.random.default_rng(2)
    real = 3.0 * rng.standard_normal((200, 16))
    fake = 0.1 * rng.standard_normal((200, 16))
    result = precision_recall(real, fake)
    assert result["precision"] > 0.8
    assert result["recall"] < 0.3


def test_knn_radii_are_distances_to_the_kth_other_sample(sets):
    real, _ = sets
    expected = np.sort(pairwise(real, real), axis=1)[:, 4]
    np.testing.assert_allclose(knn_radii(real, 4), expected, rtol=1e-5)


def test_duplicated_samples_have_zero_radius_balls_holding_their_exact_copies():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((60, 6)).astype(np.float32) * 50 + 200  # large offset: round-off
    real[10:16] = real[0]  # six copies of one sample: its radius is 0 for k ≤ 6
    fake = real.copy()
    expected = naive_prdc(real, fake, 3)
    ours = prdc(real, fake, k=3)
    assert ours == pytest.approx(expected, abs=1e-12)
    assert ours["precision"] == ours["recall"] == ours["coverage"] == 1.0
    assert knn_radii(real, 3)[[0, 10, 15]].tolist() == [0.0, 0.0, 0.0]


def test_constant_features_are_refused():
    constant = np.ones((20, 4), dtype=np.float32)
    other = np.random.default_rng(4).standard_normal((20, 4))
    with pytest.raises(InputError, match="exact copies"):
        prdc(constant, other)


def test_prdc_needs_k_plus_one_samples(sets):
    real, fake = sets
    with pytest.raises(InsufficientSamplesError, match=r"at least 6 samples.*generated set 5"):
        prdc(real, fake[:5], k=5)


# --- CMMD -----------------------------------------------------------------------------------


def test_cmmd_biased_estimator_equals_the_reference_code(sets):
    real, fake = sets
    expected = reference_cmmd(real, fake)
    assert cmmd(real, fake, estimator="biased")["cmmd"] == pytest.approx(expected, rel=1e-5)


def test_cmmd_unbiased_estimator_equals_the_formula_in_blocks(sets):
    real, fake = sets
    expected = naive_cmmd_unbiased(real, fake, sigma=3.0)
    for batch_size in (None, 7, 1000):
        value = cmmd(real, fake, sigma=3.0, batch_size=batch_size)["cmmd"]
        assert value == pytest.approx(expected, rel=1e-5)


def test_cmmd_normalize_uses_unit_vectors(sets):
    real, fake = sets
    unit = [a / np.linalg.norm(a, axis=1, keepdims=True) for a in (real, fake)]
    assert cmmd(real, fake, normalize=True)["cmmd"] == pytest.approx(
        naive_cmmd_unbiased(*unit), rel=1e-4
    )


def test_cmmd_unbiased_is_centred_on_zero_for_one_distribution():
    rng = np.random.default_rng(5)
    unbiased, biased = [], []
    for _ in range(30):
        a, b = rng.standard_normal((2, 100, 4)) * 4
        unbiased.append(cmmd(a, b)["cmmd"])
        biased.append(cmmd(a, b, estimator="biased")["cmmd"])
    standard_error = np.std(unbiased) / np.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * standard_error
    assert np.mean(biased) > 10 * standard_error
    shifted = cmmd(a, b + 6.0)["cmmd"]
    assert shifted > 10 * np.std(unbiased)


# --- inputs: stores, bad input --------------------------------------------------------------


def write_store(path, vectors, config):
    with StoreWriter(path, "test-extractor", config, vectors.shape[1]) as writer:
        writer.append([f"item{i}" for i in range(len(vectors))], vectors)
    return path


def test_metrics_read_stores_like_arrays(tmp_path, sets):
    real, fake = sets
    real_path = write_store(tmp_path / "real.h5", real, {"variant": 1})
    fake_path = write_store(tmp_path / "fake.h5", fake, {"variant": 1})
    assert prdc(real_path, fake_path) == prdc(real, fake)
    options = {"subsets": 3, "subset_size": 40}
    assert kid(str(real_path), str(fake_path), **options) == kid(real, fake, **options)
    assert cmmd(real_path, fake_path) == pytest.approx(cmmd(real, fake))


def test_stores_of_different_extractor_configs_are_refused(tmp_path, sets):
    real, fake = sets
    real_path = write_store(tmp_path / "real.h5", real, {"variant": 1})
    fake_path = write_store(tmp_path / "fake.h5", fake, {"variant": 2})
    with pytest.raises(ConfigMismatchError, match="different extractor configurations"):
        precision_recall(real_path, fake_path)


def test_statistics_files_are_refused_with_a_reason(tmp_path, sets):
    real, fake = sets
    path = tmp_path / "stats.npz"
    np.savez(path, mu=real.mean(0), sigma=np.cov(real.T))
    with pytest.raises(InputError, match="not samples"):
        kid(path, fake, subset_size=50)


@pytest.mark.parametrize("metric", [kid, prdc, precision_recall, density_coverage, cmmd])
def test_dimension_mismatch_and_non_finite_values_are_refused(metric, sets):
    real, fake = sets
    options = {"subset_size": 50} if metric is kid else {}
    with pytest.raises(DimensionMismatchError, match="dimension 12 and generated features 11"):
        metric(real, fake[:, :11], **options)
    broken = fake.copy()
    broken[3, 2] = np.nan
    with pytest.raises(NonFiniteError, match="rows \\[3\\]"):
        metric(real, broken, **options)


# --- registry -------------------------------------------------------------------------------

REGISTRY_OPTIONS = {
    "fd_inf": {"num_points": 4},
    "fid_ci": {"n_resamples": 50},
    "kid": {"subsets": 4, "subset_size": 60},
}


def test_every_registered_metric_returns_a_dict_of_floats(sets):
    real, fake = sets
    assert set(METRICS) == {
        "fid",
        "fd_inf",
        "fid_ci",
        "kid",
        "precision_recall",
        "density_coverage",
        "prdc",
        "cmmd",
    }
    for name, metric in METRICS.items():
        result = metric(real, fake, **REGISTRY_OPTIONS.get(name, {}))
        assert result and all(type(value) is float for value in result.values()), name
    assert METRICS["fid"](real, fake)["fid"] == pytest.approx(frechet_distance(real, fake))
