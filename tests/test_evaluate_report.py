"""evaluate(), the HTML/JSON report, the ``report`` and ``score`` verbs, and the screenshot."""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from beatmap_fid.api import compute_fid, store_path_for
from beatmap_fid.beatmap.perturb import Disturbance, perturb_file
from beatmap_fid.beatmap.synthetic import write_synthetic_set
from beatmap_fid.cli import report as report_cli
from beatmap_fid.errors import ConfigMismatchError, InputError
from beatmap_fid.evaluate import copy_sources, evaluate, score_source
from beatmap_fid.extractors.base import build_extractor
from beatmap_fid.frechet import frechet_distance
from beatmap_fid.metrics import METRICS
from beatmap_fid.report import build_report, project_2d, real_gaussian_distances
from beatmap_fid.stats import gaussian_stats

N_MAPS = 6
ALL_METRICS = ["fid", "fid_ci", "fd_inf", "kid", "prdc", "cmmd", "rhythm"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """Real "flow" maps and generated "jumps" maps under the same file names, and a store dir."""
    root = tmp_path_factory.mktemp("evaluate")
    real = write_synthetic_set(root / "real", N_MAPS, seed=1, style="flow", duration_s=40.0)
    generated = write_synthetic_set(root / "raw", N_MAPS, seed=2, style="jumps", duration_s=40.0)
    (root / "gen").mkdir()
    for real_path, gen_path in zip(real, generated):
        gen_path.rename(root / "gen" / real_path.name)
    return {"real": root / "real", "gen": root / "gen", "stores": root / "stores", "root": root}


@pytest.fixture(scope="module")
def synthetic_report(sets) -> Path:
    out = sets["root"] / "report"
    build_report(
        sets["real"],
        sets["gen"],
        out,
        store_dir=sets["stores"],
        projection="pca",
        progress=False,
        fid_ci={"n_resamples": 50},
    )
    return out


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="beatmap-fid")
    report_cli.register(result.add_subparsers(dest="verb"))
    return result


def test_evaluate_returns_every_metric_asked_for(sets):
    values = evaluate(
        sets["real"],
        sets["gen"],
        ALL_METRICS,
        store_dir=sets["stores"],
        progress=False,
        fid_ci={"n_resamples": 50},
    )
    expected = {
        "fid", "fid_low", "fid_high", "fid_bias_corrected", "fid_std", "fd_inf",
        "fd_inf_slope", "kid", "kid_std", "precision", "recall", "density", "coverage",
        "cmmd", "active_precision", "active_recall", "active_f1", "passive_precision",
        "passive_recall", "passive_f1", "bpm_rmse", "drain_time_rmse", "rhythm_pairs",
        "n_real", "n_generated",
    }  # fmt: skip
    assert expected <= values.keys()
    assert all(math.isfinite(v) for v in values.values())
    assert values["rhythm_pairs"] == N_MAPS
    assert values["fid_low"] <= values["fid_bias_corrected"] <= values["fid_high"]
    assert values["fid"] > 0 and values["bpm_rmse"] > 0  # flow and jumps differ in tempo
    default = evaluate(sets["real"], sets["gen"], store_dir=sets["stores"], progress=False)
    assert {"fid", "kid", "precision", "active_f1"} <= default.keys()


def test_evaluate_agrees_with_compute_fid_stores_arrays_and_the_registry(sets):
    by_folder = evaluate(
        sets["real"], sets["gen"], ["fid", "kid"], store_dir=sets["stores"], progress=False
    )
    fid = compute_fid(sets["real"], sets["gen"], store_dir=sets["stores"], progress=False).fid
    assert by_folder["fid"] == pytest.approx(fid, rel=1e-9)

    extractor = build_extractor("descriptors")
    stores = [store_path_for(sets[k], extractor, sets["stores"]) for k in ("real", "gen")]
    by_store = evaluate(*stores, ["fid", "kid"], progress=False)
    assert by_store["fid"] == pytest.approx(by_folder["fid"], rel=1e-9)
    assert by_store["kid"] == pytest.approx(by_folder["kid"], rel=1e-9)

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), rng.normal(0.5, 1.0, size=(50, 5))
    by_array = evaluate(x, y, ["kid", "prdc"], kid={"subset_size": 40}, progress=False)
    assert by_array["kid"] == pytest.approx(METRICS["kid"](x, y, subset_size=40)["kid"])
    assert by_array["coverage"] == pytest.approx(METRICS["prdc"](x, y)["coverage"])
    assert by_array["n_real"] == 60 and by_array["n_generated"] == 50


def test_fid_alone_takes_statistics_and_other_metrics_refuse_them(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 4)), rng.normal(1.0, 1.0, size=(40, 4))
    paths = [gaussian_stats(a).save(tmp_path / f"{i}.npz") for i, a in enumerate((x, y))]
    assert evaluate(*paths, ["fid"], progress=False)["fid"] == pytest.approx(
        frechet_distance(x, y, device="numpy"), rel=1e-9
    )
    with pytest.raises(InputError, match="statistics"):
        evaluate(*paths, ["kid"], progress=False)


def test_evaluate_refuses_bad_requests(sets):
    x = np.random.default_rng(2).normal(size=(20, 3))
    with pytest.raises(InputError, match="unknown metric"):
        evaluate(x, x, ["fid", "inception_score"], progress=False)
    with pytest.raises(InputError, match="unknown option"):
        evaluate(x, x, ["kid"], subset_size=10, progress=False)
    with pytest.raises(InputError, match="dict"):
        evaluate(x, x, ["kid"], kid=10, progress=False)
    with pytest.raises(InputError, match=r"folders of \.osu"):
        evaluate(x, x, ["rhythm"], progress=False)
    with pytest.raises(InputError, match="does not exist"):
        evaluate(sets["root"] / "nowhere", x, ["fid"], progress=False)


def test_real_gaussian_distances_match_sklearn_and_find_an_outlying_map():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(3)
    real = rng.normal(size=(80, 6)) * [1, 2, 3, 1, 1, 5]
    generated = rng.normal(size=(30, 6)) * [1, 2, 3, 1, 1, 5]
    generated[:5] += 8.0
    ours, own = real_gaussian_distances(real, generated)
    scale = real.std(axis=0)
    model = LedoitWolf(assume_centered=True).fit((real - real.mean(axis=0)) / scale)
    expected = model.mahalanobis((generated - real.mean(axis=0)) / scale)
    assert ours == pytest.approx(expected, rel=1e-6)
    assert own.mean() < ours[5:].mean() * 1.5
    assert ours[:5].min() > ours[5:].max()


def test_2d_projections_keep_both_sets_apart_and_subsample():
    rng = np.random.default_rng(4)
    real, generated = rng.normal(size=(300, 8)), rng.normal(3.0, 1.0, size=(100, 8))
    for method in ("pca", "tsne"):
        # one thread: OpenMP threads of Barnes-Hut t-SNE crawl on an oversubscribed machine
        with threadpool_limits(1):
            projected = project_2d(real, generated, method=method, max_points=80, seed=0)
        assert projected.method == method
        assert len(projected.real_xy) == 60 and len(projected.generated_xy) == 20
        assert np.isfinite(projected.real_xy).all() and np.isfinite(projected.generated_xy).all()
        gap = np.linalg.norm(projected.real_xy.mean(0) - projected.generated_xy.mean(0))
        assert gap > projected.real_xy.std(0).mean()
    with pytest.raises(InputError):
        project_2d(real, generated, method="mds")


def test_report_writes_json_and_a_self_contained_html(synthetic_report, sets):
    data = json.loads((synthetic_report / "report.json").read_text(encoding="utf-8"))
    page = (synthetic_report / "report.html").read_text(encoding="utf-8")
    metrics = data["metrics"]
    for key in ("fid", "fid_low", "fid_high", "fd_inf", "kid", "precision", "active_f1"):
        assert math.isfinite(metrics[key]), key
    assert f"{metrics['fid']:.4g}" in page
    assert f"{metrics['fd_inf']:.4g}" in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # projection, FID against N, per-map distances, descriptor features making up the FID
    assert len(images) == 4 and all(len(image) > 1000 for image in images)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(https?:)?//[a-z]", text) and "url(" not in text
    assert "<script" not in page and "<link" not in page
    maps = data["contributions"]["maps"]
    assert sorted(m["map"] for m in maps) == sorted(p.name for p in sets["gen"].glob("*.osu"))
    assert [m["distance"] for m in maps] == sorted((m["distance"] for m in maps), reverse=True)
    assert len(data["fd_inf_curves"]) == 3
    assert data["rhythm"]["active"]["precision"] == metrics["active_precision"]


def test_report_warns_and_shows_the_real_split_half_scale(synthetic_report, sets, capsys):
    """6 maps of 4 windows a side: too few vectors and maps, said in JSON, HTML and CLI text;
    the scale is the FID between halves of the real maps, maps kept whole."""
    from beatmap_fid.metrics.fid_uncertainty import sample_warnings, split_half_fid
    from beatmap_fid.store import EmbeddingStore

    data = json.loads((synthetic_report / "report.json").read_text(encoding="utf-8"))
    page = (synthetic_report / "report.html").read_text(encoding="utf-8")
    sides = {k: (data[k]["n_vectors"], data[k]["n_sources"]) for k in ("real", "generated")}
    assert sides["real"][1] == N_MAPS
    # the four sample-size warnings, then the FD∞ fit's: 30 vectors miss the 1/N law here
    fit_note = data["fd_inf_fit"]["note"]
    assert fit_note.startswith("FD∞ is unreliable here")
    assert data["warnings"] == [*sample_warnings(104, **sides), fit_note]
    for warning in data["warnings"]:
        assert f"Warning: {warning}".replace("'", "&#x27;") in page
    store = store_path_for(sets["real"], build_extractor("descriptors"), sets["stores"])
    with EmbeddingStore(store) as opened:
        vectors, ids = opened.vectors(), opened.ids
    expected = split_half_fid(vectors, ids)
    assert data["split_half"]["fids"] == pytest.approx(expected.fids, rel=1e-12)
    assert data["split_half"]["n_maps"] == N_MAPS
    assert "FID real vs real" in page and f"{expected.mean:.4g}" in page
    # the CLI prints both
    out = sets["root"] / "cli_report_text"
    args = parser().parse_args(
        ["report", str(sets["real"]), str(sets["gen"]), "-o", str(out), "--projection", "pca",
         "--metrics", "fid", "--seeds", "1", "--store-dir", str(sets["stores"]), "--quiet"]
    )  # fmt: skip
    assert args.run(args) == 0
    text = capsys.readouterr().out
    # (this run fits FD∞ with one seed, so its FD∞ note has other numbers)
    assert all(f"warning: {warning}" in text for warning in sample_warnings(104, **sides))
    assert "warning: FD∞ is unreliable here" in text
    assert f"FID real vs real (two halves of the real maps): {expected.mean:.4g}" in text


def test_report_verb_prints_json(sets, capsys):
    out = sets["root"] / "cli_report"
    args = parser().parse_args(
        ["report", str(sets["real"]), str(sets["gen"]), "-o", str(out), "--projection", "pca",
         "--metrics", "fid,kid", "--seeds", "1", "--store-dir", str(sets["stores"]),
         "--quiet", "--json"]
    )  # fmt: skip
    assert args.run(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["html"] == str(out / "report.html") and (out / "report.html").is_file()
    assert {"fid", "kid", "fd_inf"} <= printed["metrics"].keys()
    assert "fid_low" not in printed["metrics"]
    assert len(printed["warnings"]) == 5 and printed["split_half"]["n_maps"] == N_MAPS
    assert printed["warnings"][-1].startswith("FD∞ is unreliable here")


@pytest.fixture(scope="module")
def head_file(sets) -> Path:
    """A linear regression head on descriptor windows predicting objects per second."""
    from beatmap_fid.api import embed_to_store
    from beatmap_fid.heads import train_head
    from beatmap_fid.store import EmbeddingStore

    store = sets["root"] / "train.h5"
    embed_to_store(sets["real"], "descriptors", store, progress=False)
    with EmbeddingStore(store) as opened:
        targets = opened.vectors()[:, 0]
    head = train_head(store, targets, architecture="linear", max_epochs=30, seed=0)
    return head.save(sets["root"] / "head.pt")


def test_score_verb_scores_filters_and_copies(sets, head_file, capsys, tmp_path):
    result = score_source(sets["gen"], head_file, store_dir=sets["stores"], progress=False)
    assert len(result.files) == N_MAPS and np.isfinite(result.file_scores).all()
    threshold = float(np.median(result.file_scores))
    args = parser().parse_args(
        ["score", str(sets["gen"]), "--head", str(head_file), "--min", str(threshold),
         "--copy-to", str(tmp_path / "kept"), "--store-dir", str(sets["stores"]),
         "--quiet", "--json"]
    )  # fmt: skip
    assert args.run(args) == 0
    printed = json.loads(capsys.readouterr().out)
    scores = [entry["score"] for entry in printed["files"]]
    assert scores == sorted(scores, reverse=True)
    passing = [e["file"] for e in printed["files"] if e["score"] >= threshold]
    assert printed["passing"] == passing and 0 < len(passing) < N_MAPS
    assert sorted(p.name for p in (tmp_path / "kept").glob("*.osu")) == sorted(passing)

    store = Path(result.store_path)
    from_store = score_source(store, head_file, progress=False)
    assert from_store.file_scores == pytest.approx(result.file_scores)


def test_classification_heads_score_with_a_label_probability(sets, head_file):
    from beatmap_fid.heads import train_head

    store = head_file.with_name("train.h5")  # labelled with the creators flow_0 and flow_1
    head = train_head(store, kind="classification", architecture="linear", max_epochs=5)
    result = score_source(store, head, label="flow_0", progress=False)
    assert result.score_name == "p(flow_0)"
    assert ((result.file_scores >= 0) & (result.file_scores <= 1)).all()
    assert set(result.file_labels) <= {"flow_0", "flow_1"}
    top = score_source(store, head, progress=False)
    assert (top.file_scores >= 0.5).all()  # the probability of the likelier of two labels
    with pytest.raises(InputError, match="label"):
        score_source(store, head, label="nobody", progress=False)


def test_score_refuses_another_extractor_configuration(sets, head_file):
    args = parser().parse_args(
        ["score", str(sets["gen"]), "--head", str(head_file), "--option", "use_audio=false",
         "--store-dir", str(sets["stores"]), "--quiet"]
    )  # fmt: skip
    with pytest.raises(ConfigMismatchError, match="config hash"):
        args.run(args)
    args = parser().parse_args(
        ["score", str(head_file.with_name("train.h5")), "--head", str(head_file), "--copy-to", "x"]
    )
    with pytest.raises(InputError, match="--root"):
        args.run(args)


def real_maps_and_disturbed_copies(shared_data: Path, root: Path, count: int, heavy: set[int]):
    """``count`` osu!standard maps with audio (one per set) copied to ``root/real``, and copies
    in ``root/gen`` disturbed lightly, except the indices in ``heavy``: heavily."""
    manifest = shared_data / "beatmaps" / "MANIFEST.tsv"
    with manifest.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    chosen, seen = [], set()
    for row in rows:
        parts = row["relpath"].split("/")
        if row["Mode"] == "0" and row["audio"] and parts[0] == "songs" and parts[1] not in seen:
            seen.add(parts[1])
            chosen.append("/".join(parts[1:]))
        if len(chosen) == count:
            break
    songs = shared_data / "beatmaps" / "songs"
    copy_sources(chosen, songs, root / "real")
    copy_sources(chosen, songs, root / "gen")
    strong = Disturbance(timing_jitter_ms=40, position_noise_px=100, drop_fraction=0.4)
    light = Disturbance(position_noise_px=2)
    for index, name in enumerate(chosen):
        perturb_file(songs / name, root / "gen" / name, strong if index in heavy else light, index)
    return [chosen[i] for i in sorted(heavy)]


def test_report_on_real_maps_ranks_the_most_disturbed_maps_first(shared_data, tmp_path):
    disturbed = real_maps_and_disturbed_copies(shared_data, tmp_path, 8, {1, 4})
    result = build_report(
        tmp_path / "real",
        tmp_path / "gen",
        tmp_path / "report",
        store_dir=tmp_path / "stores",
        metrics=["fid", "rhythm"],
        projection="pca",
        curve_seeds=1,
        progress=False,
    )
    metrics = result.data["metrics"]
    assert metrics["fid"] > 0
    assert metrics["rhythm_pairs"] == 8 and metrics["active_recall"] < 1.0
    top = [m["map"] for m in result.data["contributions"]["maps"][:3]]
    assert set(disturbed) <= set(top)
