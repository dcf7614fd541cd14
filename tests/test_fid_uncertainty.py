"""FD∞ and the bootstrap confidence interval of FID, checked on Gaussians whose FD is known.

For X ~ N(0, I) and Y ~ N(δ·1, a²I) in d dimensions the Fréchet distance is exactly
d·δ² + d·(1 − a)², which the simulations compare against.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from beatmap_fid.errors import InputError, InsufficientSamplesError
from beatmap_fid.frechet import frechet_distance
from beatmap_fid.metrics import default_fd_sizes, fd_infinity, fid_confidence_interval
from beatmap_fid.metrics.fid_uncertainty import _group_moments
from beatmap_fid.store import StoreWriter


def true_fd(dim: int, scale: float, shift: float) -> float:
    return dim * shift**2 + dim * (1.0 - scale) ** 2


def gaussian_pair(rng, n, dim, scale, shift):
    return rng.standard_normal((n, dim)), scale * rng.standard_normal((n, dim)) + shift


def simulate_coverage(trials, dim, n, scale, shift, groups=None, seed=0):
    """Share of intervals holding the true FD, mean error of FID and of the corrected estimate."""
    rng = np.random.default_rng(seed)
    target = true_fd(dim, scale, shift)
    hits, errors = 0, []
    # Thousands of tiny matrix products: BLAS threads only add overhead here.
    with threadpool_limits(1):
        for trial in range(trials):
            real, fake = gaussian_pair(rng, n, dim, scale, shift)
            interval = fid_confidence_interval(real, fake, seed=trial, groups=groups)
            hits += interval.low <= target <= interval.high
            errors.append((interval.estimate - target, interval.bias_corrected - target))
    errors = np.asarray(errors)
    return hits / trials, errors[:, 0].mean(), errors[:, 1].mean()


# --- confidence interval --------------------------------------------------------------------


def test_interval_coverage_is_nominal_and_the_bias_is_removed():
    coverage, bias, corrected_bias = simulate_coverage(200, dim=6, n=300, scale=1.3, shift=0.3)
    assert abs(coverage - 0.95) <= 0.05
    assert bias > 0.1  # FID at n = 300 overestimates FD = 1.08 by about 0.15
    assert abs(corrected_bias) < 0.25 * bias


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dim", "n", "scale", "shift", "groups"),
    [
        (8, 300, 1.3, 0.3, None),
        (4, 200, 1.5, 0.5, None),
        (16, 400, 1.2, 0.2, None),  # bias three times the standard deviation
        (8, 500, 1.0, 0.4, None),  # means differ only
        (8, 1000, 1.3, 0.3, 32),  # grouped bootstrap, as used for large d
    ],
)
def test_interval_coverage_in_more_settings(dim, n, scale, shift, groups):
    coverage, bias, corrected_bias = simulate_coverage(400, dim, n, scale, shift, groups, seed=1)
    assert abs(coverage - 0.95) <= 0.05
    assert abs(corrected_bias) < 0.25 * bias


def test_interval_estimate_is_the_fid_and_brackets_the_corrected_value():
    rng = np.random.default_rng(1)
    real, fake = gaussian_pair(rng, 400, 5, 1.2, 0.2)
    narrow = fid_confidence_interval(real, fake, level=0.8, n_resamples=100)
    wide = fid_confidence_interval(real, fake, level=0.99, n_resamples=400)
    assert narrow.estimate == pytest.approx(frechet_distance(real, fake), rel=1e-10)
    assert narrow.low <= narrow.bias_corrected <= narrow.high
    assert wide.high - wide.low > narrow.high - narrow.low
    assert narrow.bias_corrected < narrow.estimate  # the bias is positive
    assert narrow.as_dict()["fid_low"] == narrow.low
    assert narrow.groups == (400, 400)


def test_group_moments_resample_like_repeated_rows():
    """A resample of groups has the statistics of the rows it draws, repeated."""
    rng = np.random.default_rng(2)
    features = rng.standard_normal((50, 3)) * [1.0, 2.0, 3.0] + 5.0
    for n_groups in (50, 7):
        labels = np.random.default_rng(0).permutation(50) % n_groups
        moments = _group_moments(features, labels, n_groups)
        draws = rng.integers(0, 3, size=(4, n_groups)).astype(np.float64)
        draws[:, 0] += 1  # at least two rows
        means, covariances = moments.resample(draws)
        for r in range(4):
            rows = np.concatenate(
                [np.repeat(np.flatnonzero(labels == g), int(c)) for g, c in enumerate(draws[r])]
            )
            np.testing.assert_allclose(means[r], features[rows].mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(covariances[r], np.cov(features[rows].T), rtol=1e-10)


def test_interval_arguments_are_checked():
    rng = np.random.default_rng(3)
    real, fake = gaussian_pair(rng, 50, 3, 1.0, 0.0)
    with pytest.raises(InputError, match="at least 40 are needed"):
        fid_confidence_interval(real, fake, n_resamples=20)
    with pytest.raises(InputError, match="level"):
        fid_confidence_interval(real, fake, level=1.5)
    with pytest.raises(InsufficientSamplesError, match="at least 2 samples"):
        fid_confidence_interval(real, fake[:1])


# --- FD∞ ------------------------------------------------------------------------------------


def test_fd_infinity_recovers_the_true_fd_better_than_fid():
    dim, n, scale, shift = 16, 2000, 1.2, 0.2
    target = true_fd(dim, scale, shift)
    rng = np.random.default_rng(4)
    fid_errors, fd_inf_errors = [], []
    with threadpool_limits(1):
        for trial in range(30):
            real, fake = gaussian_pair(rng, n, dim, scale, shift)
            result = fd_infinity(real, fake, seed=trial, device="numpy")
            fid_errors.append(result.fids[-1] - target)
            fd_inf_errors.append(result.value - target)
    fid_bias, fd_inf_bias = np.mean(fid_errors), np.mean(fd_inf_errors)
    assert fid_bias > 0.08  # about 0.12: the 1/N bias at N = 2000, d = 16
    assert abs(fd_inf_bias) < 0.5 * fid_bias


def test_fd_infinity_fits_fid_against_one_over_n():
    rng = np.random.default_rng(5)
    real, fake = gaussian_pair(rng, 3000, 8, 1.3, 0.1)
    result = fd_infinity(real, fake, device="numpy")
    assert result.sizes.tolist() == default_fd_sizes(3000).tolist()
    assert result.sizes[0] == 600 and result.sizes[-1] == 3000 and len(result.sizes) == 15
    np.testing.assert_array_equal(result.real_sizes, result.sizes)
    # The largest subset is the whole set: its FID is the plain FID.
    assert result.fids[-1] == pytest.approx(frechet_distance(real, fake), rel=1e-9)
    slope, intercept = np.polyfit(1.0 / result.sizes, result.fids, 1)
    assert (result.value, result.slope) == pytest.approx((intercept, slope))
    assert result.slope > 0  # smaller subsets, larger FID
    assert result.as_dict() == {"fd_inf": result.value, "fd_inf_slope": result.slope}


def test_fd_infinity_can_keep_the_real_set_whole():
    rng = np.random.default_rng(6)
    real, fake = gaussian_pair(rng, 500, 4, 1.0, 0.3)
    result = fd_infinity(real[:400], fake, subsample="generated", sizes=[100, 300, 500])
    assert result.real_sizes.tolist() == [400, 400, 400]
    assert result.sizes.tolist() == [100, 300, 500]
    both = fd_infinity(real[:400], fake, sizes=[100, 300, 500])
    assert both.real_sizes.tolist() == [80, 240, 400]


def test_default_sizes_follow_the_paper_and_scale_down():
    sizes = default_fd_sizes(50_000)
    assert (sizes[0], sizes[-1], len(sizes)) == (5000, 50_000, 15)
    assert default_fd_sizes(1000)[0] == 200
    assert default_fd_sizes(12, num_points=15).tolist() == list(range(2, 13))
    with pytest.raises(InsufficientSamplesError, match="at least 10 samples"):
        default_fd_sizes(9)


def test_fd_infinity_rejects_unusable_sizes():
    rng = np.random.default_rng(7)
    real, fake = gaussian_pair(rng, 100, 3, 1.0, 0.0)
    with pytest.raises(InsufficientSamplesError, match="two different sizes"):
        fd_infinity(real, fake, sizes=[50, 50])
    with pytest.raises(InsufficientSamplesError, match="two different sizes"):
        fd_infinity(real, fake, sizes=[50, 200])
    with pytest.raises(InputError, match="subsample"):
        fd_infinity(real, fake, subsample="real")


def test_stores_work_like_arrays(tmp_path):
    rng = np.random.default_rng(8)
    real, fake = (a.astype(np.float32) for a in gaussian_pair(rng, 200, 4, 1.2, 0.2))
    paths = []
    for name, vectors in (("real", real), ("fake", fake)):
        path = tmp_path / f"{name}.h5"
        with StoreWriter(path, "test-extractor", {"v": 1}, 4) as writer:
            writer.append([f"{name}{i}" for i in range(len(vectors))], vectors)
        paths.append(path)
    assert fd_infinity(*paths, num_points=5).value == fd_infinity(real, fake, num_points=5).value
    from_stores = fid_confidence_interval(*paths, n_resamples=50)
    assert from_stores == fid_confidence_interval(real, fake, n_resamples=50)


def test_interval_on_a_torch_device_matches_the_batched_numpy_route():
    pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    real, fake = gaussian_pair(rng, 150, 4, 1.2, 0.1)
    batched = fid_confidence_interval(real, fake, n_resamples=50)
    one_by_one = fid_confidence_interval(real, fake, n_resamples=50, device="cpu")
    assert one_by_one.as_dict() == pytest.approx(batched.as_dict(), rel=1e-9)


# --- maps as resampling units ----------------------------------------------------------------


def clustered_pair(rng, n_maps, dim, icc, scale, shift):
    """Windows of maps (4–30 each) with intra-map correlation ``icc``; ids ``map<m>#<k>``.
    Windows are N(0, I) for the real set and N(shift, scale²I) for the generated one."""
    sides = []
    for side_scale, side_shift in ((1.0, 0.0), (scale, shift)):
        sizes = rng.integers(4, 31, n_maps)
        maps = np.repeat(np.arange(n_maps), sizes)
        centres = rng.standard_normal((n_maps, dim)) * np.sqrt(icc)
        noise = rng.standard_normal((len(maps), dim)) * np.sqrt(1.0 - icc)
        ids = [f"map{m}#{k}" for m, size in enumerate(sizes) for k in range(size)]
        sides += [side_scale * (centres[maps] + noise) + side_shift, ids]
    return sides


def test_bootstrap_of_whole_maps_covers_where_the_window_bootstrap_does_not():
    """Correlated windows of 40 maps a side: resampling maps keeps the nominal 95 %, resampling
    windows as if independent gives far too narrow intervals (benchmarks/bench_fid_coverage.py
    has the full table)."""
    rng = np.random.default_rng(11)
    target = true_fd(6, 1.3, 0.3)
    hits = {"maps": 0, "windows": 0}
    trials = 100
    with threadpool_limits(1):
        for trial in range(trials):
            real, real_ids, fake, fake_ids = clustered_pair(rng, 40, 6, 0.5, 1.3, 0.3)
            by_map = fid_confidence_interval(
                real, fake, seed=trial, real_ids=real_ids, generated_ids=fake_ids
            )
            by_window = fid_confidence_interval(real, fake, seed=trial)
            assert by_map.units == ("maps", "maps") and by_window.units == ("rows", "rows")
            assert by_map.estimate == pytest.approx(by_window.estimate, rel=1e-9)
            hits["maps"] += by_map.low <= target <= by_map.high
            hits["windows"] += by_window.low <= target <= by_window.high
    assert hits["maps"] / trials >= 0.9
    assert hits["windows"] / trials <= 0.6


def test_stores_resample_their_maps_and_one_map_is_refused(tmp_path):
    rng = np.random.default_rng(12)
    real, real_ids, fake, fake_ids = clustered_pair(rng, 12, 4, 0.5, 1.2, 0.2)
    paths = []
    for name, vectors, ids in (("real", real, real_ids), ("fake", fake, fake_ids)):
        path = tmp_path / f"{name}.h5"
        with StoreWriter(path, "test-extractor", {"v": 1}, 4) as writer:
            writer.append(ids, vectors.astype(np.float32))
        paths.append(path)
    from_stores = fid_confidence_interval(*paths, n_resamples=50)
    with_ids = fid_confidence_interval(
        real.astype(np.float32),
        fake.astype(np.float32),
        n_resamples=50,
        real_ids=real_ids,
        generated_ids=fake_ids,
    )
    assert from_stores == with_ids
    assert from_stores.units == ("maps", "maps") and from_stores.groups == (12, 12)
    pooled = fid_confidence_interval(*paths, n_resamples=50, groups=5)
    assert pooled.groups == (5, 5) and pooled.units == ("maps", "maps")
    one_map = [f"only.osu#{k}" for k in range(len(fake))]
    with pytest.raises(InsufficientSamplesError, match="single map"):
        fid_confidence_interval(real, fake, real_ids=real_ids, generated_ids=one_map)
    with pytest.raises(InputError, match="ids for"):
        fid_confidence_interval(real, fake, real_ids=real_ids[:-1])


def test_groups_of_maps_never_split_a_map():
    from beatmap_fid.metrics.fid_uncertainty import _resampling_groups

    ids = [f"m{m}#{k}" for m in range(30) for k in range(m % 5 + 1)]
    labels, n_groups, unit = _resampling_groups(
        "real", (len(ids), 3), ids, 7, np.random.default_rng(0)
    )
    assert unit == "maps" and n_groups == 7 and set(labels) == set(range(7))
    maps = np.array([i.split("#")[0] for i in ids])
    for name in set(maps):
        assert len(set(labels[maps == name])) == 1


def test_split_half_fid_keeps_maps_whole():
    """With 4 maps there are 3 ways to deal 2 maps to each half; every split FID is one of
    them (dealing out windows would almost never give these values)."""
    from itertools import combinations

    from beatmap_fid.metrics.fid_uncertainty import split_half_fid

    rng = np.random.default_rng(13)
    maps = np.repeat(np.arange(4), 15)
    x = rng.standard_normal((4, 3))[maps] * 3 + rng.standard_normal((60, 3))
    ids = [f"m{m}#{k}" for m, k in zip(maps, np.tile(np.arange(15), 4))]
    result = split_half_fid(x, ids, n_splits=12, seed=1)
    possible = [
        frechet_distance(x[np.isin(maps, pair)], x[~np.isin(maps, pair)], device="numpy")
        for pair in combinations(range(4), 2)
    ]
    for value in result.fids:
        assert min(abs(value - p) for p in possible) < 1e-9 * max(possible)
    assert result.n_maps == 4 and result.mean == pytest.approx(np.mean(result.fids))
    assert split_half_fid(x, n_splits=3).n_maps == 60  # without ids every row is a map
    with pytest.raises(InsufficientSamplesError, match="2 maps"):
        split_half_fid(x, ["one#0"] * 60)
