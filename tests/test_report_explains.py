"""The report explains itself: which descriptor features make up the FID (an exact split),
why a section is missing, a word when the FD∞ fit misses the full sets' FID, and the furthest
maps on a log scale with their full names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from beatmap_fid.frechet import frechet_distance
from beatmap_fid.metrics.attribution import feature_shares
from beatmap_fid.metrics.fid_uncertainty import FDInfinity
from beatmap_fid.plots import _wrapped
from beatmap_fid.report import FIT_MISS_TOLERANCE, build_report, fd_inf_fit

REPO_ROOT = Path(__file__).resolve().parents[1]


def correlated(seed: int, n: int, dim: int, scale: float = 1.0, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) * scale) + shift


@pytest.mark.parametrize(("n_real", "n_gen", "dim"), [(400, 300, 12), (40, 60, 30)])
def test_feature_terms_add_up_to_fid(n_real, n_gen, dim):
    real = correlated(1, n_real, dim, shift=1.0)
    generated = correlated(2, n_gen, dim, scale=0.7)
    real[:, 3] = 2.5  # a constant real feature: a singular real covariance
    shares = feature_shares(real, generated)
    assert shares.fid == pytest.approx(frechet_distance(real, generated, device="numpy"), rel=1e-8)
    np.testing.assert_allclose(shares.mean_terms, (real.mean(0) - generated.mean(0)) ** 2)


def test_a_feature_that_differs_alone_takes_the_whole_distance():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(5000, 6))
    generated = rng.normal(size=(5000, 6))
    generated[:, 2] = generated[:, 2] * 3.0 + 1.0  # feature 2 moves and spreads
    shares = feature_shares(real, generated)
    table = shares.table([f"f{i}" for i in range(6)])
    assert table[0]["feature"] == "f2" and table[0]["share"] > 0.97
    assert table[0]["mean_term"] == pytest.approx(1.0, abs=0.2)  # sampling noise of the means
    assert table[0]["covariance_term"] == pytest.approx((3.0 - 1.0) ** 2, rel=0.1)


def curve(value: float, slope: float, fids: list[float]) -> FDInfinity:
    sizes = np.linspace(100, 500, len(fids)).astype(np.int64)
    return FDInfinity(value, slope, sizes, sizes, np.asarray(fids))


def test_fd_inf_fit_is_quiet_when_the_line_holds():
    sizes = np.linspace(100, 500, 5)
    good = curve(2.0, 300.0, (2.0 + 300.0 / sizes).tolist())
    fit = fd_inf_fit([good, curve(2.05, 290.0, (2.05 + 290.0 / sizes).tolist())], 50)
    assert fit["note"] is None and fit["relative_miss"] < 1e-9


def test_fd_inf_fit_says_so_when_it_misses_the_full_set():
    missing = curve(1.0, 100.0, [3.0, 2.6, 2.4, 2.2, 2.0])  # the line gives 1.2 at N = 500
    fit = fd_inf_fit([missing], 104)
    assert fit["relative_miss"] == pytest.approx(0.4) and fit["relative_miss"] > FIT_MISS_TOLERANCE
    assert "FD∞ is unreliable here" in fit["note"] and "40% off" in fit["note"]
    assert "104 dimensions" in fit["note"] and fit["short_note"]


def test_fd_inf_fit_says_so_when_subsets_are_smaller_than_the_dimension():
    sizes = np.linspace(100, 500, 5)
    exact = curve(2.0, 300.0, (2.0 + 300.0 / sizes).tolist())
    assert fd_inf_fit([exact], 99)["note"] is None
    note = fd_inf_fit([exact], 100)["note"]
    assert "100 vectors for 100 dimensions" in note


def test_long_names_wrap_without_losing_a_character():
    name = "songs/718960 DJ Noriken - Stargazer/DJ Noriken - Stargazer feat. YUC'e (PSYQUI " \
        "Remix) (Hishiro Chizuru) [Starg-Azer isn't so great Are you kidding me].osu"  # fmt: skip
    wrapped = _wrapped(name, 60)
    assert max(len(line) for line in wrapped.splitlines()) <= 60
    assert wrapped.replace("\n", "").replace(" ", "") == name.replace(" ", "")


@pytest.fixture(scope="module")
def example_report(tmp_path_factory) -> dict:
    """The bundled examples: 8 maps a side, names that do not pair up."""
    out = tmp_path_factory.mktemp("explains")
    result = build_report(
        REPO_ROOT / "examples" / "data" / "real",
        REPO_ROOT / "examples" / "data" / "generated",
        out / "report",
        store_dir=out / "stores",
        projection="pca",
        curve_seeds=2,
        fid_ci={"n_resamples": 30},
    )
    page = result.html_path.read_text(encoding="utf-8")
    return {"data": json.loads(result.json_path.read_text(encoding="utf-8")), "html": page}


def test_report_says_why_sections_are_missing(example_report):
    notes = example_report["data"]["notes"]
    assert "do not pair up" in notes["rhythm"] and notes["paired"] == notes["rhythm"]
    assert "--training-ids" in notes["overlap"]
    assert "Not shown, and why" in example_report["html"]
    assert "Rhythm, calc_fid pair metrics" in example_report["html"]


def test_report_splits_the_descriptor_fid_by_named_feature(example_report):
    data = example_report["data"]
    shares = data["feature_shares"]
    assert shares["fid"] == pytest.approx(data["metrics"]["fid"], rel=1e-8)
    assert len(shares["features"]) == 104
    assert sum(row["share"] for row in shares["features"]) == pytest.approx(1.0)
    assert sum(group["share"] for group in shares["groups"]) == pytest.approx(1.0)
    top = shares["features"][0]["feature"]
    assert "Which descriptor features make up the FID" in example_report["html"]
    assert f"<td>{top}</td>" in example_report["html"]


def test_small_sets_get_a_word_about_the_fd_inf_fit(example_report):
    data = example_report["data"]
    fit = data["fd_inf_fit"]
    assert fit["full_size"] == data["generated"]["n_vectors"]
    assert fit["measured_fid"] == pytest.approx(data["metrics"]["fid"], rel=1e-9)
    assert fit["note"] in data["warnings"]
    assert "FD∞ is unreliable here" in example_report["html"]
