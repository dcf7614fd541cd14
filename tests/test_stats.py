"""Streaming Gaussian statistics against NumPy's two-pass mean and covariance."""

from __future__ import annotations

import numpy as np
import pytest

from beatmap_fid import stats as stats_module
from beatmap_fid.errors import (
    DimensionMismatchError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
    StoreError,
)
from beatmap_fid.stats import GaussianStats, RunningGaussian, gaussian_stats

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def correlated(rng: np.random.Generator, n: int, d: int, offset: float = 3.0) -> np.ndarray:
    mixing = rng.standard_normal((d, d)) * (1.0 + np.arange(d)) ** -0.75
    return rng.standard_normal((n, d)) @ mixing.T + offset * rng.standard_normal(d)


def assert_matches_numpy(result: GaussianStats, data: np.ndarray, rtol: float = 1e-10) -> None:
    data = np.asarray(data, dtype=np.float64)
    mean, cov = data.mean(axis=0), np.cov(data, rowvar=False)
    assert result.n == data.shape[0]
    assert np.abs(result.mu - mean).max() <= rtol * max(np.abs(mean).max(), 1e-300)
    assert np.abs(result.sigma - cov).max() <= rtol * np.abs(cov).max()
    assert np.array_equal(result.sigma, result.sigma.T)


def random_split(rng: np.random.Generator, n: int) -> list[int]:
    """Batch sizes summing to n, with several batches of exactly one row."""
    sizes = [1, 1]
    while sum(sizes) < n:
        sizes.append(int(rng.choice([1, 2, 7, 64, 333])))
    sizes[-1] -= sum(sizes) - n
    order = rng.permutation(len(sizes))
    return [sizes[i] for i in order if sizes[i] > 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,d", [(2, 3), (50, 1), (1000, 17), (700, 64)])
def test_random_batch_splits_match_numpy(seed: int, n: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    data = correlated(rng, n, d)
    running = RunningGaussian()
    start = 0
    for size in random_split(rng, n):
        running.update(data[start : start + size])
        start += size
    assert running.n == n
    assert_matches_numpy(running.result(), data)


def test_single_vectors_one_at_a_time() -> None:
    data = correlated(np.random.default_rng(3), 40, 9)
    running = RunningGaussian(dim=9)
    for row in data:
        running.update(row)  # 1-D: one vector
    assert_matches_numpy(running.result(), data)


def test_large_offset_is_numerically_stable() -> None:
    # A naive sum-of-squares accumulator loses every digit here; the pairwise merge does not.
    rng = np.random.default_rng(4)
    data = 1e7 + rng.standard_normal((3000, 5))
    running = RunningGaussian().update(data[:1])
    for start in range(1, 3000, 500):
        running.update(data[start : start + 500])
    assert_matches_numpy(running.result(), data, rtol=1e-9)


def test_big_batch_is_folded_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_module, "_CHUNK_BYTES", 8 * 12 * 7)  # 7 rows of 12 float64
    data = correlated(np.random.default_rng(5), 500, 12)
    assert_matches_numpy(RunningGaussian().update(data).result(), data)


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_merged_shards_equal_whole(shards: int) -> None:
    rng = np.random.default_rng(6)
    data = correlated(rng, 1500, 24)
    cuts = np.sort(rng.choice(np.arange(1, 1500), shards - 1, replace=False))
    parts = [RunningGaussian().update(part) for part in np.split(data, cuts)]
    merged = RunningGaussian()
    for part in parts:
        merged.merge(part)
    assert_matches_numpy(merged.result(), data)


def test_merge_finished_statistics_and_empty_accumulator() -> None:
    rng = np.random.default_rng(7)
    data = correlated(rng, 300, 6)
    merged = RunningGaussian().update(data[:1])
    merged.merge(gaussian_stats(data[1:200]))  # finished shard with n recorded
    merged.merge(RunningGaussian())  # empty: no effect
    merged.merge(RunningGaussian().update(data[200:]))
    assert_matches_numpy(merged.result(), data)
    with pytest.raises(InputError, match="unknown"):
        merged.merge(GaussianStats(mu=np.zeros(6), sigma=np.eye(6), n=None))
    with pytest.raises(DimensionMismatchError):
        merged.merge(RunningGaussian().update(np.ones((3, 5))))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.float16, np.float32, bool])
def test_integer_and_narrow_float_input(dtype: type) -> None:
    rng = np.random.default_rng(8)
    data = (rng.standard_normal((400, 10)) * 20 + 100).astype(dtype)
    result = gaussian_stats(data, batch_size=33)
    assert result.mu.dtype == np.float64 and result.sigma.dtype == np.float64
    assert_matches_numpy(result, data)


def test_gaussian_stats_inputs() -> None:
    rng = np.random.default_rng(9)
    data = correlated(rng, 250, 8).astype(np.float32)
    whole = gaussian_stats(data)
    assert_matches_numpy(whole, data)
    from_batches = gaussian_stats(np.array_split(data, 9))
    assert np.allclose(from_batches.sigma, whole.sigma, rtol=1e-12, atol=0)
    with pytest.raises(InputError):
        gaussian_stats(data, batch_size=0)
    with pytest.raises(InputError):
        gaussian_stats(np.zeros((2, 3, 4)))


def test_errors_leave_the_accumulator_usable() -> None:
    running = RunningGaussian().update(np.ones((2, 4)))
    bad = np.ones((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(NonFiniteError):
        running.update(bad)
    bad[1, 2] = np.inf
    with pytest.raises(NonFiniteError):
        running.update(bad)
    with pytest.raises(DimensionMismatchError):
        running.update(np.ones((3, 5)))
    with pytest.raises(InputError):
        running.update(np.array([["a", "b", "c", "d"]]))
    with pytest.raises(InputError):
        running.update(np.ones((2, 4), dtype=complex))
    assert running.n == 2
    assert np.array_equal(running.result().sigma, np.zeros((4, 4)))


def test_too_few_samples() -> None:
    with pytest.raises(InsufficientSamplesError):
        RunningGaussian().result()
    with pytest.raises(InsufficientSamplesError):
        RunningGaussian().update(np.ones(5)).result()
    with pytest.raises(InsufficientSamplesError):
        gaussian_stats(np.zeros((0, 5)))


def test_npz_round_trip(tmp_path) -> None:
    original = gaussian_stats(correlated(np.random.default_rng(10), 30, 7))
    path = original.save(tmp_path / "stats.npz")
    loaded = GaussianStats.load(path)
    assert loaded.n == 30 and loaded.dim == 7
    assert np.array_equal(loaded.mu, original.mu)
    assert np.array_equal(loaded.sigma, original.sigma)
    assert sorted(np.load(path).files) == ["mu", "n", "sigma"]


def test_loads_pytorch_fid_layout(tmp_path) -> None:
    # pytorch-fid's --save-stats and clean-fid write only mu and sigma, often as float32.
    rng = np.random.default_rng(11)
    mu, sigma = rng.standard_normal(5).astype(np.float32), np.eye(5, dtype=np.float32) * 2
    np.savez_compressed(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    loaded = GaussianStats.load(tmp_path / "ref.npz")
    assert loaded.n is None
    assert loaded.mu.dtype == np.float64 and np.array_equal(loaded.mu, mu.astype(np.float64))
    assert np.array_equal(loaded.sigma, sigma.astype(np.float64))
    loaded.save(tmp_path / "again.npz")
    assert GaussianStats.load(tmp_path / "again.npz").n is None


def test_load_errors(tmp_path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        GaussianStats.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(3))
    with pytest.raises(StoreError, match="sigma"):
        GaussianStats.load(tmp_path / "no_sigma.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(InputError, match="shape"):
        GaussianStats.load(tmp_path / "shape.npz")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    with pytest.raises(StoreError):
        GaussianStats.load(tmp_path / "garbage.npz")


def test_constructor_validation() -> None:
    with pytest.raises(InputError):
        GaussianStats(mu=np.zeros((2, 2)), sigma=np.eye(2))
    with pytest.raises(InputError):
        GaussianStats(mu=np.zeros(3), sigma=np.eye(2))
    with pytest.raises(NonFiniteError):
        GaussianStats(mu=np.array([0.0, np.nan]), sigma=np.eye(2))
    with pytest.raises(InputError):
        RunningGaussian(dim=0)
