"""Fréchet distance against pytorch-fid's sqrtm formula, closed forms, and across routes/backends."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import scipy.linalg

from beatmap_fid.errors import (
    DimensionMismatchError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
    StoreError,
)
from beatmap_fid.frechet import _lower_congruence, as_stats, frechet_distance, frechet_terms
from beatmap_fid.stats import GaussianStats, RunningGaussian, gaussian_stats

torch = pytest.importorskip("torch")


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def features(seed: int, n: int, d: int, decay: float = 0.75, shift: float = 0.0) -> np.ndarray:
    """Correlated features: a random linear map with a decaying spectrum, plus an offset."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) * (1.0 + np.arange(d)) ** -decay
    return rng.standard_normal((n, d)) @ mixing.T + shift * rng.standard_normal(d)


def rotated_features(seed: int, n: int, d: int, decay: float, shift: float = 0.0) -> np.ndarray:
    """Features z·Aᵀ with A a random rotation times a power-law spectrum (as the benchmark)."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    mixing = rotation * (1.0 + np.arange(d)) ** -decay
    return rng.standard_normal((n, d)) @ mixing.T + shift * rng.standard_normal(d)


def stats_with_spectrum(seed: int, eigenvalues: np.ndarray, shift: float) -> GaussianStats:
    rng = np.random.default_rng(seed)
    d = eigenvalues.shape[0]
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    sigma = (rotation * eigenvalues) @ rotation.T
    return GaussianStats(mu=shift * rng.standard_normal(d), sigma=(sigma + sigma.T) / 2)


def pytorch_fid_reference(a: GaussianStats, b: GaussianStats) -> float | None:
    """pytorch-fid's calculate_frechet_distance in float64 (SciPy no longer takes disp=).

    None when sqrtm of the product is not finite: pytorch-fid then adds 1e-6 to the diagonals,
    which changes the value, so there is nothing exact to compare with.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(a.sigma.dot(b.sigma))
    if not np.isfinite(covmean).all():
        return None
    diff = a.mu - b.mu
    return float(
        diff.dot(diff) + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean.real)
    )


GRID = [
    (2, 2),
    (2, 64),
    (2, 512),
    (3, 16),
    (10, 2),
    (10, 64),
    (10, 512),
    (100, 16),
    (100, 256),
    (1000, 64),
    (1000, 512),
    (5000, 16),
    (5000, 256),
]


@pytest.mark.parametrize("n,d", GRID)
def test_matches_pytorch_fid_formula(n: int, d: int) -> None:
    x, y = features(1, n, d), features(2, n, d, shift=0.3)
    reference = pytorch_fid_reference(gaussian_stats(x), gaussian_stats(y))
    assert reference is not None
    for method in ("auto", "cholesky"):
        value = frechet_distance(x, y, device="numpy", method=method)
        assert abs(value - reference) <= 1e-6 * abs(reference), method


@pytest.mark.parametrize("d", [16, 128])
@pytest.mark.parametrize("condition", [1e6, 1e10, 1e14])
def test_ill_conditioned_covariances(d: int, condition: float) -> None:
    spectrum = np.logspace(0, -np.log10(condition), d)
    a = stats_with_spectrum(3, spectrum, shift=0.0)
    b = stats_with_spectrum(4, spectrum[::-1].copy(), shift=0.1)
    reference = pytorch_fid_reference(a, b)
    value = frechet_distance(a, b, device="numpy")
    assert np.isfinite(value) and value >= 0
    if reference is not None:
        assert abs(value - reference) <= 1e-6 * abs(reference)


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_closed_form_isotropic(device: str) -> None:
    rng = np.random.default_rng(5)
    d, scale_a, scale_b = 50, 1.7, 0.4
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    a = GaussianStats(mu=mu_a, sigma=scale_a**2 * np.eye(d))
    b = GaussianStats(mu=mu_b, sigma=scale_b**2 * np.eye(d))
    expected = np.sum((mu_a - mu_b) ** 2) + d * (scale_a - scale_b) ** 2
    assert frechet_distance(a, b, device=device) == pytest.approx(expected, rel=1e-12)


def test_constant_sets_reduce_to_the_mean_term() -> None:
    flat_a, flat_b = np.full((5, 8), 2.0), np.full((7, 8), -1.0)
    spread = features(6, 40, 8)
    assert frechet_distance(flat_a, flat_b, device="numpy") == pytest.approx(8 * 9.0)
    expected = np.sum((2.0 - spread.mean(axis=0)) ** 2) + np.trace(np.cov(spread, rowvar=False))
    for method in ("cholesky", "lowrank"):
        value = frechet_distance(flat_a, spread, device="numpy", method=method)
        assert value == pytest.approx(expected, rel=1e-10)


SELF_CASES = {
    "features n>d": lambda: features(7, 400, 32),
    "features n<d": lambda: features(8, 20, 96),
    "stats full rank": lambda: gaussian_stats(features(9, 500, 64)),
    "stats singular": lambda: gaussian_stats(features(10, 30, 96)),
    "stats condition 1e12": lambda: stats_with_spectrum(11, np.logspace(0, -12, 64), 0.0),
}


@pytest.mark.parametrize("device", ["numpy", "cpu"])
@pytest.mark.parametrize("case", sorted(SELF_CASES))
def test_set_against_itself_is_zero(case: str, device: str) -> None:
    x = SELF_CASES[case]()
    trace = np.trace(as_stats(x).sigma)
    for method in ("auto", "cholesky"):
        value = frechet_distance(x, x, device=device, method=method)
        assert 0.0 <= value <= 1e-9 * trace, method


@pytest.mark.parametrize("device", ["numpy", "cpu"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rank_deficient_set_against_itself(device: str, seed: int) -> None:
    """More vectors than dimensions, yet singular (dependent and constant columns, as in real
    descriptors): the pivoted factor keeps d²(x, x) at rounding level, where a factor from an
    eigen-decomposition left up to 1e-8 of tr Σ."""
    base = features(40 + seed, 500, 48, decay=1.0)
    rng = np.random.default_rng(seed)
    x = np.hstack([base, base[:, :24] @ rng.standard_normal((24, 40)), np.full((500, 8), 3.0)])
    stats = gaussian_stats(x)
    terms = frechet_terms(stats, stats, device=device)
    assert terms.route == "pivoted-cholesky"
    assert terms.distance <= 1e-13 * terms.trace1


@pytest.mark.parametrize("n1,n2,d", [(20, 30, 64), (5, 200, 64), (80, 90, 48)])
def test_lowrank_routes_equal_full_route(n1: int, n2: int, d: int) -> None:
    x, y = features(12, n1, d), features(13, n2, d, shift=0.2)
    full = frechet_terms(x, y, device="numpy", method="cholesky")
    low = frechet_terms(x, y, device="numpy", method="lowrank")
    gram = frechet_terms(x, gaussian_stats(y), device="numpy", method="lowrank")
    gram_swapped = frechet_terms(gaussian_stats(y), x, device="numpy", method="lowrank")
    assert low.route == "lowrank-svd" and gram.route == "lowrank-gram"
    for other in (low, gram, gram_swapped):
        assert other.distance == pytest.approx(full.distance, rel=1e-9)
    assert gram_swapped.trace1 == pytest.approx(full.trace2, rel=1e-12)


def test_auto_route_choice() -> None:
    small, large = features(14, 10, 64), features(15, 200, 64)
    assert frechet_terms(small, small, device="numpy").route == "lowrank-svd"
    assert frechet_terms(small, large, device="numpy").route == "lowrank-gram"
    assert frechet_terms(large, large, device="numpy").route == "cholesky"
    singular = gaussian_stats(small)
    for device in ("numpy", "cpu"):
        assert frechet_terms(large, singular, device=device).route == "pivoted-cholesky"


@pytest.mark.parametrize("n", [30, 500])
def test_torch_cpu_matches_numpy(n: int) -> None:
    x, y = features(16, n, 128), features(17, n, 128, decay=1.5, shift=0.5)
    for method in ("auto", "cholesky"):
        expected = frechet_distance(x, y, device="numpy", method=method)
        value = frechet_distance(x, y, device="cpu", method=method)
        assert value == pytest.approx(expected, rel=1e-10)
    assert frechet_terms(x, y, device="cpu").backend.startswith("torch:cpu (")


@pytest.mark.parametrize("device", ["numpy", "cpu"])
@pytest.mark.parametrize(
    "decay,bound",
    [(0.75, 1e-6), (2.0, 1e-4)],  # the documented bounds for condition numbers ~1e2 and ~1e5
)
def test_float32_within_documented_error(device: str, decay: float, bound: float) -> None:
    spectrum = (1.0 + np.arange(256)) ** -decay
    a = stats_with_spectrum(18, spectrum, shift=0.0)
    for b in (stats_with_spectrum(19, spectrum, shift=0.05), stats_with_spectrum(20, spectrum, 0)):
        exact = frechet_terms(a, b, device="numpy")
        single = frechet_distance(a, b, device=device, precision="float32")
        assert abs(single - exact.distance) <= bound * (exact.trace1 + exact.trace2)


def test_accepts_every_input_kind(tmp_path) -> None:
    x, y = features(21, 300, 24).astype(np.float32), features(22, 250, 24, shift=0.2)
    expected = frechet_distance(x, y, device="numpy")
    stats_y = gaussian_stats(y)
    stats_y.save(tmp_path / "y.npz")
    np.savez(tmp_path / "y_pytorch_fid.npz", mu=stats_y.mu, sigma=stats_y.sigma)
    for other in (
        y,
        y.tolist(),
        torch.from_numpy(y),
        stats_y,
        RunningGaussian().update(y),
        tmp_path / "y.npz",
        str(tmp_path / "y_pytorch_fid.npz"),
    ):
        value = frechet_distance(x, other, device="numpy")
        assert isinstance(value, float)
        assert value == pytest.approx(expected, rel=1e-9), type(other)


@pytest.mark.parametrize("device", ["numpy", "cpu"])
@pytest.mark.parametrize("factor", [1e-80, 1e-3, 1e3, 1e80])
def test_scale_invariance_far_from_unit_variance(device: str, factor: float) -> None:
    """d² scales with the variance; products of covariances of 1e±160 would leave float64."""
    a = gaussian_stats(features(37, 300, 24))
    b = gaussian_stats(features(38, 250, 24, shift=0.3))
    expected = frechet_distance(a, b, device=device) * factor**2
    scaled = [GaussianStats(mu=s.mu * factor, sigma=s.sigma * factor**2, n=s.n) for s in (a, b)]
    assert frechet_distance(*scaled, device=device) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("device", ["numpy", "cpu"])
def test_inputs_left_unchanged_and_read_only_inputs_accepted(device: str) -> None:
    a = gaussian_stats(features(35, 400, 32))
    b = gaussian_stats(features(36, 300, 32, shift=0.2))
    expected = frechet_distance(a, b, device="numpy")
    copies = [array.copy() for array in (a.mu, a.sigma, b.mu, b.sigma)]
    for array in (a.mu, a.sigma, b.mu, b.sigma):
        array.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it shares a read-only array
        assert frechet_distance(a, b, device=device) == pytest.approx(expected, rel=1e-13)
    for array, copy in zip((a.mu, a.sigma, b.mu, b.sigma), copies):
        np.testing.assert_array_equal(array, copy)


def test_store_inputs(tmp_path) -> None:
    store = pytest.importorskip("beatmap_fid.store")
    x, y = features(23, 120, 16).astype(np.float32), features(24, 90, 16, shift=0.3)
    path = tmp_path / "x.h5"
    with store.StoreWriter(path, "test-extractor", {"seed": 23}, dim=16) as writer:
        writer.append([f"item{i}" for i in range(len(x))], x)
    expected = frechet_distance(x, y, device="numpy")
    assert frechet_distance(path, y, device="numpy") == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(y, str(path), device="numpy") == pytest.approx(expected, rel=1e-10)
    with store.EmbeddingStore(path) as opened:
        assert frechet_distance(opened, y, device="numpy") == pytest.approx(expected, rel=1e-10)
        assert as_stats(opened).n == 120


def test_never_negative_never_nan() -> None:
    rng = np.random.default_rng(25)
    for _ in range(20):
        d = int(rng.integers(2, 40))
        x = features(int(rng.integers(1 << 30)), int(rng.integers(2, 60)), d)
        y = x + 1e-9 * rng.standard_normal(x.shape)
        for device in ("numpy", "cpu"):
            value = frechet_distance(x, y, device=device)
            assert isinstance(value, float) and np.isfinite(value) and value >= 0


def test_default_device_is_torch() -> None:
    x = features(26, 50, 8)
    backend = frechet_terms(x, x).backend
    if torch.cuda.is_available():
        assert backend.startswith("torch:cuda")
    else:
        lapack = "mkl" if torch.backends.mkl.is_available() else "lapack"
        threads = torch.get_num_threads()
        assert backend == f"torch:cpu ({lapack}, {threads} thread{'s' if threads > 1 else ''})"


def test_backend_names_the_thread_count() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    x = features(28, 50, 8)
    for threads, words in ((1, "1 thread)"), (2, "2 threads)")):
        with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
            assert frechet_terms(x, x, device="numpy").backend.endswith(words)
        previous = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            assert frechet_terms(x, x, device="cpu").backend.endswith(words)
        finally:
            torch.set_num_threads(previous)


def test_default_device_without_torch(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    x, y = features(26, 300, 16), features(27, 200, 16, shift=0.4)
    terms = frechet_terms(x, y)
    assert terms.backend.startswith("numpy (") and terms.route == "cholesky"
    assert terms.distance == pytest.approx(frechet_distance(x, y, device="numpy"), rel=1e-14)
    with pytest.raises(InputError, match="needs torch"):
        frechet_distance(x, y, device="cpu")


@pytest.mark.parametrize("d", [40, 256, 300, 700])
def test_default_route_equals_sqrtm_route_on_full_rank_sets(d: int) -> None:
    """float64 exactness of the fast route: within 1e-14 of sqrtm where sqrtm is accurate.

    d = 256, 300 and 700 put the blocked triangular product at, across and well past its
    block width; the spectrum is that of the benchmark (condition number ~d^1.5)."""
    a = gaussian_stats(rotated_features(31, 4 * d, d, decay=0.75))
    b = gaussian_stats(rotated_features(32, 4 * d, d, decay=0.75, shift=0.05))
    reference = pytorch_fid_reference(a, b)
    assert reference is not None
    for device in (None, "numpy"):
        terms = frechet_terms(a, b, device=device)
        assert terms.route == "cholesky"
        assert abs(terms.distance - reference) <= 1e-14 * reference, terms.backend


@pytest.mark.parametrize("decay", [1.5, 3.0])
def test_exact_against_40_digit_reference_when_ill_conditioned(decay: float) -> None:
    """Where sqrtm loses digits (κ(Σ) ~ 1e5 and ~ 1e10: off by up to 6e-13 and 9e-9 relative
    on these sets), both backends stay within 1e-13 (measured: up to 5e-14).

    The reference is the same identity evaluated with mpmath at 40 digits: Cholesky of Σ₂,
    eigenvalues of the symmetric Lᵀ Σ₁ L, traces and the mean term."""
    mpmath = pytest.importorskip("mpmath")
    d = 40
    a = gaussian_stats(rotated_features(33, 4 * d, d, decay=decay))
    b = gaussian_stats(rotated_features(34, 4 * d, d, decay=decay, shift=0.05))
    with mpmath.workdps(40):
        sigma1, sigma2 = mpmath.matrix(a.sigma.tolist()), mpmath.matrix(b.sigma.tolist())
        lower = mpmath.cholesky(sigma2)
        eigenvalues = mpmath.eigsy(lower.T * sigma1 * lower, eigvals_only=True)
        exact = (
            sum((mpmath.mpf(p) - mpmath.mpf(q)) ** 2 for p, q in zip(a.mu, b.mu))
            + sum(sigma1[i, i] + sigma2[i, i] for i in range(d))
            - 2 * sum(mpmath.sqrt(value) for value in eigenvalues)
        )
        exact = float(exact)
    for device in (None, "numpy"):
        value = frechet_distance(a, b, device=device)
        assert abs(value - exact) <= 1e-13 * exact, device


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("d", [1, 7, 256, 257, 600])
def test_blocked_triangular_product_equals_two_full_products(library: str, d: int) -> None:
    rng = np.random.default_rng(d)
    sigma = rng.standard_normal((d, d))
    sigma = sigma + sigma.T
    lower = np.tril(rng.standard_normal((d, d)))
    expected = np.tril(lower.T @ sigma @ lower)
    if library == "numpy":
        product = _lower_congruence(sigma, lower, np.zeros_like)
    else:
        product = _lower_congruence(
            torch.from_numpy(sigma), torch.from_numpy(lower), torch.zeros_like
        ).numpy()
    tolerance = 1e-13 * np.abs(expected).max()
    np.testing.assert_allclose(np.tril(product), expected, rtol=0, atol=tolerance)


def test_errors(tmp_path) -> None:
    x = features(27, 30, 8)
    with pytest.raises(DimensionMismatchError):
        frechet_distance(x, features(28, 30, 9))
    nan = x.copy()
    nan[3, 4] = np.nan
    with pytest.raises(NonFiniteError):
        frechet_distance(nan, x, device="numpy")
    with pytest.raises(NonFiniteError):
        frechet_distance(x[:5], nan[:5], device="numpy")  # low-rank route
    with pytest.raises(InsufficientSamplesError):
        frechet_distance(x[:1], x, device="numpy")
    with pytest.raises(InputError):
        frechet_distance(x[0], x, device="numpy")  # one vector is not a set
    with pytest.raises(InputError):
        frechet_distance(x, x, precision="float16")
    with pytest.raises(InputError):
        frechet_distance(x, x, method="sqrtm")
    with pytest.raises(InputError, match="lowrank"):
        frechet_distance(gaussian_stats(x), gaussian_stats(x), method="lowrank")
    with pytest.raises(InputError, match=r"expected a \.npz"):
        frechet_distance(tmp_path / "features.csv", x)
    with pytest.raises(StoreError):
        frechet_distance(tmp_path / "missing.npz", x)
    with pytest.raises(InputError):
        frechet_distance(x, x, device="no-such-device")


@pytest.mark.gpu
@pytest.mark.parametrize("precision,rel", [("float64", 1e-10), ("float32", 1e-4)])
def test_cuda_matches_numpy(precision: str, rel: float) -> None:
    x, y = features(29, 3000, 300), features(30, 2000, 300, shift=0.5)
    expected = frechet_distance(x, y, device="numpy")
    value = frechet_distance(x, y, device="cuda", precision=precision)
    assert value == pytest.approx(expected, rel=rel)


@pytest.mark.gpu
def test_cuda_singular_covariance_and_default_device() -> None:
    full, singular = gaussian_stats(features(31, 400, 300)), gaussian_stats(features(32, 50, 300))
    terms = frechet_terms(full, singular, device="cuda")
    assert terms.route == "pivoted-cholesky" and terms.backend.startswith("torch:cuda")
    expected = frechet_distance(full, singular, device="numpy")
    assert terms.distance == pytest.approx(expected, rel=1e-10)
    assert frechet_terms(full, full).backend.startswith("torch:cuda")
