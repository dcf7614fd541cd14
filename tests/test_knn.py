"""k-NN on FAISS: scikit-learn agreement, leak-aware evaluation, reports, copy detection."""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from beatmap_fid.errors import (
    ConfigMismatchError,
    DimensionMismatchError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
)
from beatmap_fid.knn import (
    KNNClassifier,
    evaluate_knn,
    leak_aware_splits,
    leak_components,
    memorisation_scores,
)
from beatmap_fid.store import StoreWriter


def labelled_blobs(n: int = 600, dim: int = 8, classes: int = 4, seed: int = 0, shift: float = 1.2):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim)) * shift
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def write_store(path, vectors, ids=None, labels=None, config=None):
    ids = [f"r{i}" for i in range(len(vectors))] if ids is None else ids
    with StoreWriter(path, "toy", config or {"options": {}}, vectors.shape[1]) as writer:
        writer.append(ids, vectors, labels)
    return path


# ----------------------------------------------------------------------------- classifier


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("weights", ["uniform", "distance"])
def test_agrees_with_sklearn_brute_force(weights, metric):
    X, y = labelled_blobs()
    queries, _ = labelled_blobs(200, seed=1)
    labels = np.array(["ant", "bee", "cat", "dog"])[y]
    ours = KNNClassifier(7, weights=weights, metric=metric).fit(X, labels)
    sk_metric = "euclidean" if metric == "l2" else "cosine"
    reference = KNeighborsClassifier(7, weights=weights, algorithm="brute", metric=sk_metric)
    reference.fit(X, labels)
    assert list(ours.classes_) == list(reference.classes_)
    assert np.array_equal(ours.predict(queries), reference.predict(queries))
    assert np.allclose(ours.predict_proba(queries), reference.predict_proba(queries), atol=1e-5)
    ours_d, ours_i = ours.kneighbors(queries)
    ref_d, ref_i = reference.kneighbors(queries)
    assert np.array_equal(ours_i, ref_i)
    assert np.allclose(ours_d, ref_d, atol=1e-4)
    train_i = ours.kneighbors(return_distance=False)  # training rows leave themselves out
    assert not (train_i == np.arange(len(X))[:, None]).any()
    assert np.array_equal(train_i, reference.kneighbors(return_distance=False))


def test_softmax_temperature_moves_between_nearest_and_uniform():
    X, y = labelled_blobs()
    queries, _ = labelled_blobs(100, seed=2)
    sharp = KNNClassifier(9, weights="softmax", temperature=1e-4).fit(X, y)
    flat = KNNClassifier(9, weights="softmax", temperature=1e4).fit(X, y)
    nearest = KNNClassifier(1).fit(X, y)
    uniform = KNNClassifier(9).fit(X, y)
    assert np.allclose(sharp.predict_proba(queries).sum(axis=1), 1.0)
    assert np.array_equal(sharp.predict(queries), nearest.predict(queries))
    assert np.allclose(flat.predict_proba(queries), uniform.predict_proba(queries), atol=1e-3)


def test_pipeline_cross_val_and_label_types():
    X, y = labelled_blobs(400)
    for labels in (y, y.astype(str), np.array([f"class {v}" for v in y], dtype=object)):
        scores = cross_val_score(make_pipeline(StandardScaler(), KNNClassifier(5)), X, labels, cv=3)
        assert scores.shape == (3,) and scores.mean() > 0.5  # four classes: chance is 0.25
    model = KNNClassifier(5).fit(X, y)
    assert model.score(X, y) > 0.6
    with pytest.raises(DimensionMismatchError):
        model.predict(X[:, :4])
    with pytest.raises(NonFiniteError):
        model.predict(np.full((1, 8), np.nan))
    with pytest.raises(InputError):
        KNNClassifier(5, weights="distance", metric="ip").fit(X, y)
    with pytest.raises(InputError):
        KNNClassifier(500).fit(X[:10], y[:10]).predict(X[:2])


def test_approximate_index_agrees_with_exact():
    data, labels = labelled_blobs(6300, dim=16, classes=5)
    X, y, queries, truth = data[:6000], labels[:6000], data[6000:], labels[6000:]
    exact = KNNClassifier(10).fit(X, y)
    approximate = KNNClassifier(10, index="hnsw", recall=0.95).fit(X, y)
    assert approximate.index_.family == "hnsw"
    found = approximate.kneighbors(queries, return_distance=False)
    true = exact.kneighbors(queries, return_distance=False)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, true)])
    assert recall >= 0.93
    assert abs(approximate.score(queries, truth) - exact.score(queries, truth)) <= 0.03


# ----------------------------------------------------------------------------- evaluation


def test_duplicates_inflate_naive_leave_one_out():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    y = rng.integers(0, 3, 300)  # labels carry no signal
    X, y = np.vstack([X, X, X]), np.concatenate([y, y, y])  # every row three times
    naive = evaluate_knn(X, y, groups=None, n_neighbors=1, exclude_duplicates=False, progress=False)
    aware = evaluate_knn(X, y, groups=None, n_neighbors=1, exclude_duplicates=True, progress=False)
    assert naive.accuracy > 0.99
    assert aware.accuracy < 0.5
    assert aware.mean_excluded == pytest.approx(2.0)
    assert aware.n_components == 300


def test_leave_one_out_leaves_whole_groups_out():
    rng = np.random.default_rng(1)
    sizes = [3] * 60 + [100] * 2  # small groups and two large ones (the selector path)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    group_label = rng.integers(0, 3, len(sizes))
    offsets = rng.normal(size=(len(sizes), 8)) * 5  # rows of a group sit together
    X = (offsets[groups] + rng.normal(size=(len(groups), 8)) * 0.1).astype(np.float32)
    y = group_label[groups]
    naive = evaluate_knn(X, y, n_neighbors=3, groups=None, progress=False)
    grouped = evaluate_knn(X, y, n_neighbors=3, groups=groups, progress=False)
    assert naive.accuracy > 0.99
    assert grouped.accuracy < 0.7  # neighbours come from other groups only
    assert grouped.grouped and grouped.n_components == len(sizes)
    assert grouped.group_by == "groups" and grouped.naive["accuracy"] == naive.accuracy
    assert naive.naive is None and naive.group_by == "none"


def test_group_aware_folds_keep_groups_together():
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 40, 500)
    y = groups % 3
    X = rng.normal(size=(500, 4)).astype(np.float32)
    X[10] = X[200]  # a duplicate across two groups merges them
    component = leak_components(X, groups)
    splits = leak_aware_splits(y, component, n_splits=4)
    assert len(splits) == 4
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert set(component[train]).isdisjoint(component[test])
    assert component[10] == component[200]


def test_group_aware_kfold_is_honest():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(60), 8)
    offsets = rng.normal(size=(60, 8)) * 5
    X = (offsets[groups] + rng.normal(size=(480, 8)) * 0.1).astype(np.float32)
    y = rng.integers(0, 3, 60)[groups]
    naive = evaluate_knn(X, y, method="kfold", groups=None, n_neighbors=3, progress=False)
    honest = evaluate_knn(X, y, method="kfold", groups=groups, n_neighbors=3, progress=False)
    assert naive.accuracy > 0.95 and honest.accuracy < 0.7


def test_report_contents_text_and_png(tmp_path):
    X, y = labelled_blobs(400, classes=6)
    labels = np.array([f"mapper {v}" for v in y])
    report = evaluate_knn(X, labels, method="kfold", groups=None, n_splits=4, progress=False)
    assert report.confusion.sum() == 400 and report.confusion.shape == (6, 6)
    assert sum(row["support"] for row in report.per_class) == 400
    assert report.accuracy == pytest.approx(np.trace(report.confusion) / 400)
    assert report.accuracy <= report.top_k_accuracy[3] <= report.top_k_accuracy[5]
    assert 0 <= report.f1_macro <= 1 and 0 <= report.f1_weighted <= 1
    data = json.loads(json.dumps(report.to_dict()))
    assert data["classes"] == sorted(set(labels.tolist()))
    assert "accuracy" in report.to_text() and "mapper 0" in report.to_text()
    paths = report.save(tmp_path / "report")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["n_samples"] == 400


def test_evaluation_refuses_hopeless_inputs():
    X, y = labelled_blobs(50)
    with pytest.raises(InsufficientSamplesError):
        evaluate_knn(X, y, groups=np.zeros(50), progress=False)
    with pytest.raises(InputError):
        evaluate_knn(X, y[:40], progress=False)
    with pytest.raises(InputError):
        evaluate_knn(X, y, method="bootstrap", progress=False)
    with pytest.raises(InputError, match="pass ids"):
        evaluate_knn(X, y, progress=False)  # map grouping needs the ids
    with pytest.raises(InputError, match="50 rows"):
        evaluate_knn(X, y, ids=[f"m{i}" for i in range(40)], progress=False)


def map_windows(n_maps: int = 80, windows: int = 12, dim: int = 8, seed: int = 5):
    """Windows ``map#k`` that sit near their map's centre; labels (3 "mappers") carry little
    signal beyond the map itself, as with real maps and creators."""
    rng = np.random.default_rng(seed)
    maps = np.repeat(np.arange(n_maps), windows)
    centres = rng.normal(size=(n_maps, dim)) * 3
    X = (centres[maps] + rng.normal(size=(len(maps), dim)) * 0.3).astype(np.float32)
    y = np.array([f"mapper{v}" for v in rng.integers(0, 3, n_maps)])[maps]
    ids = [f"set/map{m}.osu#{k}" for m, k in zip(maps, np.tile(np.arange(windows), n_maps))]
    return X, y, ids, maps


@pytest.mark.parametrize("method", ["loo", "kfold"])
def test_windows_are_grouped_by_map_by_default_with_the_naive_figure_beside(method):
    X, y, ids, maps = map_windows()
    report = evaluate_knn(X, y, ids=ids, method=method, progress=False)
    by_hand = evaluate_knn(X, y, groups=maps, method=method, naive=False, progress=False)
    ungrouped = evaluate_knn(X, y, groups=None, method=method, progress=False)
    assert report.group_by == "map" and report.n_groups == 80
    assert report.accuracy == by_hand.accuracy
    assert report.naive["accuracy"] == ungrouped.accuracy
    assert report.naive["accuracy"] > 0.95 > 0.6 > report.accuracy  # the map, not the mapper
    data = json.loads(json.dumps(report.to_dict()))
    assert data["group_by"] == "map" and data["naive"]["accuracy"] == ungrouped.accuracy
    text = report.to_text()
    assert "grouped by map (80 maps)" in text and "naive" in text
    assert "vote for each other" in ungrouped.to_text()


# ----------------------------------------------------------------------------- copies


def test_memorisation_flags_planted_near_copies():
    rng = np.random.default_rng(4)
    real, _ = labelled_blobs(800, dim=16, seed=5)
    novel, _ = labelled_blobs(40, dim=16, seed=6)
    copied = real[[3, 50, 400, 777]] + rng.normal(size=(4, 16)).astype(np.float32) * 0.01
    generated = np.vstack([novel, copied])
    names = [f"novel{i}" for i in range(40)] + [f"copy{i}" for i in range(4)]
    report = memorisation_scores(generated, real, generated_ids=names, k=3)
    assert set(report.generated_ids[:4]) == {f"copy{i}" for i in range(4)}
    assert set(report.generated_ids[report.flagged]) == {f"copy{i}" for i in range(4)}
    assert np.all(np.diff(report.score) >= 0)
    assert set(report.nearest_real_ids[:4, 0]) == {"3", "50", "400", "777"}
    assert report.nearest_real_ids.shape == (44, 3)
    assert report.median_real_distance > 0


def test_memorisation_checks_its_inputs(tmp_path):
    real, _ = labelled_blobs(100)
    with pytest.raises(DimensionMismatchError):
        memorisation_scores(real[:, :4], real)
    with pytest.raises(InsufficientSamplesError):
        memorisation_scores(real, np.repeat(real[:1], 5, axis=0))
    a = write_store(tmp_path / "a.h5", real)
    b = write_store(tmp_path / "b.h5", real, config={"options": {"other": True}})
    with pytest.raises(ConfigMismatchError):
        memorisation_scores(a, b)


# ----------------------------------------------------------------------------- CLI


def run_cli(*argv: str) -> int:
    from beatmap_fid.cli import similarity

    parser = argparse.ArgumentParser()
    similarity.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(list(argv))
    return args.run(args)


def test_cli_verbs_end_to_end(tmp_path, capsys):
    X, y = labelled_blobs(3000, dim=12, classes=3)
    ids = [f"m{i}" for i in range(3000)]
    store = write_store(tmp_path / "real.h5", X, ids=ids, labels=[f"c{v}" for v in y])
    index = tmp_path / "real.faiss"
    assert (
        run_cli(
            "index",
            str(store),
            "-o",
            str(index),
            "--family",
            "ivf-flat",
            "--recall",
            "0.9",
            "--quiet",
            "--json",
        )
        == 0
    )
    built = json.loads(capsys.readouterr().out)
    assert built["family"] == "ivf-flat" and built["recall_measured"] >= 0.85

    assert run_cli("search", str(index), "m5", "m6", "-k", "4", "--json") == 0
    found = json.loads(capsys.readouterr().out)
    assert [q["query"] for q in found["queries"]] == ["m5", "m6"]
    assert all(len(q["neighbours"]) == 4 for q in found["queries"])
    assert "m5" not in [n["id"] for n in found["queries"][0]["neighbours"]]

    labels_csv = tmp_path / "labels.csv"
    rows = [f"m{i},g{y[i]}" for i in range(2000)] + ["stranger,g0"]
    labels_csv.write_text("id,label\n" + "\n".join(rows))
    assert (
        run_cli(
            "knn",
            str(store),
            "--labels",
            str(labels_csv),
            "--eval",
            "kfold",
            "--report-dir",
            str(tmp_path / "rep"),
            "--quiet",
            "--json",
        )
        == 0
    )
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["n_samples"] == 2000 and evaluated["n_unlabelled"] == 1000
    assert evaluated["n_unknown_label_ids"] == 1
    assert evaluated["classes"] == ["g0", "g1", "g2"]
    assert (tmp_path / "rep" / "knn_confusion.png").is_file()

    groups_json = tmp_path / "groups.json"
    groups_json.write_text(json.dumps({f"m{i}": f"s{i // 10}" for i in range(2990)}))
    with pytest.raises(InputError, match="no group"):
        run_cli("knn", str(store), "--groups", str(groups_json), "--quiet")

    generated = write_store(
        tmp_path / "gen.h5",
        np.vstack([X[:2] + 1e-4, X[2500:2510] + 3]),
        ids=[f"g{i}" for i in range(12)],
    )
    assert run_cli("nearest", str(generated), str(store), "--top", "5", "--json") == 0
    nearest = json.loads(capsys.readouterr().out)
    assert {item["id"] for item in nearest["items"][:2]} == {"g0", "g1"}
    assert nearest["n_flagged"] == 2 and len(nearest["items"]) == 5


def test_knn_verb_groups_by_map_unless_told_otherwise(tmp_path, capsys):
    X, y, ids, maps = map_windows()
    store = write_store(tmp_path / "maps.h5", X, ids=ids, labels=list(y))
    assert run_cli("knn", str(store), "--quiet", "--json") == 0
    grouped = json.loads(capsys.readouterr().out)
    expected = evaluate_knn(X, y, groups=maps, naive=False, progress=False).accuracy
    assert grouped["group_by"] == "map" and grouped["accuracy"] == expected
    assert grouped["naive"]["accuracy"] > grouped["accuracy"]
    assert run_cli("knn", str(store), "--quiet") == 0
    text = capsys.readouterr().out
    assert (
        "grouped by map (80 maps)" in text and f"naive {grouped['naive']['accuracy']:.4f}" in text
    )
    assert run_cli("knn", str(store), "--group-by", "none", "--quiet", "--json") == 0
    ungrouped = json.loads(capsys.readouterr().out)
    assert ungrouped["group_by"] == "none" and ungrouped["naive"] is None
    assert ungrouped["accuracy"] == grouped["naive"]["accuracy"]


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def songs_store(shared_data, tmp_path_factory):
    """Descriptors of every osu!standard map of the real Songs folder, labelled by creator."""
    from beatmap_fid.api import embed_to_store

    store_path = tmp_path_factory.mktemp("songs") / "songs.h5"
    embed_to_store(shared_data / "beatmaps" / "songs", "descriptors", store_path, progress=False)
    return store_path


@pytest.mark.realdata
@pytest.mark.slow
def test_knn_verb_on_real_maps_reports_the_grouped_accuracy(songs_store, capsys):
    from beatmap_fid.store import open_store

    with open_store(songs_store) as store:
        ids = np.asarray(store.ids).astype(str)
        creators = np.asarray(store.labels).astype(str)
        X = store.vectors()
    maps = np.array([i.split("#")[0] for i in ids])
    assert run_cli("knn", str(songs_store), "--quiet", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    grouped = evaluate_knn(X, creators, groups=maps, naive=False, progress=False)
    naive = evaluate_knn(X, creators, groups=None, progress=False)
    assert report["group_by"] == "map" and report["n_groups"] == len(set(maps))
    assert report["accuracy"] == grouped.accuracy
    assert report["naive"]["accuracy"] == naive.accuracy
    assert report["accuracy"] < report["naive"]["accuracy"] - 0.1
    print(f"\nknn on real maps: grouped {grouped.accuracy:.3f}, naive {naive.accuracy:.3f}")


@pytest.mark.realdata
@pytest.mark.slow
def test_mapper_identification_on_real_beatmaps(songs_store, tmp_path):
    """Descriptors of real maps, labelled by creator: grouping windows by map is the honest
    protocol, and it must cost accuracy against the naive one while staying above chance."""
    from beatmap_fid.store import open_store

    with open_store(songs_store) as store:
        ids = np.asarray(store.ids).astype(str)
        creators = np.asarray(store.labels).astype(str)
        X = store.vectors()
    maps = np.array([i.split("#")[0] for i in ids])
    maps_of = {c: len(set(maps[creators == c])) for c in set(creators)}
    keep = np.array([maps_of[c] >= 2 for c in creators]) & (creators != "")
    X = (X[keep] - X[keep].mean(0)) / (X[keep].std(0) + 1e-6)
    naive = evaluate_knn(
        X, creators[keep], groups=None, n_neighbors=10, exclude_duplicates=False, progress=False
    )
    honest = evaluate_knn(X, creators[keep], n_neighbors=10, groups=maps[keep], progress=False)
    chance = max(Counter(creators[keep]).values()) / keep.sum()
    assert honest.accuracy < naive.accuracy
    assert honest.accuracy > chance
    report = honest.save(tmp_path / "report")
    assert report["png"].is_file()
    print(
        f"\nmapper LOO on {keep.sum()} windows, {len(set(creators[keep]))} creators: naive "
        f"{naive.accuracy:.3f}, grouped by map {honest.accuracy:.3f}, chance {chance:.3f}"
    )
