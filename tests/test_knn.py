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
    map_memorisation_scores,
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


def with_break(text: str, start_ms: float, end_ms: float) -> str:
    """The map without the hit objects that start in [start_ms, end_ms): a break."""
    lines, in_objects = [], False
    for line in text.splitlines():
        if line.startswith("["):
            in_objects = line.strip() == "[HitObjects]"
        elif in_objects and line.strip() and start_ms <= float(line.split(",")[2]) < end_ms:
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


WINDOW_MS = 8184.0  # 1023 hops of 128 samples at 16 kHz


@pytest.fixture(scope="module")
def copy_sets(tmp_path_factory):
    """Real maps with a break over windows 1-3; generated maps: a whole copy of a real map,
    a new map with the same break (its empty windows equal the real maps' empty windows), a
    map that is nothing but break after its first window, and new maps without breaks."""
    from beatmap_fid.beatmap.synthetic import synthetic_beatmap

    root = tmp_path_factory.mktemp("copies")
    real, gen = root / "real", root / "gen"
    real.mkdir()
    gen.mkdir()
    texts = [synthetic_beatmap(100 + i, "flow", duration_s=60.0) for i in range(8)]
    for i, text in enumerate(texts):
        (real / f"real{i}.osu").write_text(with_break(text, WINDOW_MS, 4 * WINDOW_MS))
    (gen / "copy.osu").write_bytes((real / "real2.osu").read_bytes())
    new = synthetic_beatmap(200, "flow", duration_s=60.0)
    (gen / "breaky.osu").write_text(with_break(new, WINDOW_MS, 4 * WINDOW_MS))
    lone = synthetic_beatmap(201, "flow", duration_s=60.0)
    (gen / "mostly_break.osu").write_text(with_break(lone, WINDOW_MS, 7 * WINDOW_MS - 2000))
    for i in range(4):
        text = synthetic_beatmap(300 + i, "flow", duration_s=60.0)
        (gen / f"novel{i}.osu").write_text(text)
    return {"real": real, "gen": gen, "stores": root / "stores"}


def test_event_counts_are_recorded_at_embedding_time(copy_sets):
    from beatmap_fid.api import embed_to_store
    from beatmap_fid.knn import window_events
    from beatmap_fid.store import open_store

    result = embed_to_store(copy_sets["real"], "descriptors", copy_sets["stores"] / "r.h5")
    with open_store(result.store_path) as store:
        counts = store.n_events
        ids = store.ids
        for item_id, count in zip(ids, counts):
            name, k = item_id.split("#")
            times = [
                float(line.split(",")[2])
                for line in (copy_sets["real"] / name).read_text().split("[HitObjects]")[1].split()
            ]
            start = int(k) * WINDOW_MS
            assert count == sum(start <= t < start + WINDOW_MS for t in times), item_id
        assert sorted({int(i.split("#")[1]) for i, c in zip(ids, counts) if c == 0}) == [1, 2, 3]
        np.testing.assert_array_equal(window_events(store), counts)
        vectors = store.vectors()
    # a descriptors store written without counts: the "empty" feature tells
    bare = copy_sets["stores"] / "bare.h5"
    with StoreWriter(bare, "descriptors", {"v": 1}, vectors.shape[1]) as writer:
        writer.append(ids, vectors)
    with open_store(bare) as store:
        assert store.n_events is None
        np.testing.assert_array_equal(window_events(store) == 0, counts == 0)
        assert window_events(store, ids[::-1])[0] == int(counts[-1] > 0)


def test_nearest_ranks_a_copied_map_first_and_never_an_empty_window(copy_sets, capsys):
    folders = [str(copy_sets["gen"]), str(copy_sets["real"]), "--store-dir"]
    args = [*folders, str(copy_sets["stores"]), "--quiet", "--json", "--top", "100"]
    assert run_cli("nearest", *args) == 0
    by_map = json.loads(capsys.readouterr().out)
    maps = {entry["map"]: entry for entry in by_map["maps"]}
    first = by_map["maps"][0]
    assert first["map"] == "copy.osu" and first["score"] == 0.0 and first["flagged"]
    assert first["nearest_real_map"] == "real2.osu" and first["share_closer"] == 1.0
    assert by_map["n_flagged"] == 1 and by_map["empty_windows_known"] is True
    assert maps["breaky.osu"]["empty_windows"] == 3 and maps["breaky.osu"]["score"] > 0.5
    assert (maps["mostly_break.osu"]["windows"], maps["mostly_break.osu"]["empty_windows"]) == (
        2,
        5,
    )
    assert all(entry["windows"] >= 1 for entry in by_map["maps"])

    assert run_cli("nearest", *args, "--windows") == 0
    by_window = json.loads(capsys.readouterr().out)
    ranked = [item["id"] for item in by_window["items"]]
    assert set(ranked[:4]) == {f"copy.osu#{k}" for k in (0, 4, 5, 6)}
    assert not {f"breaky.osu#{k}" for k in (1, 2, 3)} & set(ranked)
    assert by_window["empty_windows_left_out"]["generated"] == 3 + 3 + 5
    assert run_cli("nearest", *folders, str(copy_sets["stores"]), "--quiet") == 0
    text = capsys.readouterr().out
    assert "1 of 7 generated maps score below 0.5" in text and "copy.osu" in text


def test_without_event_counts_empty_windows_look_like_copies(copy_sets):
    """What the exclusion prevents: the same vectors with their counts forgotten."""
    from beatmap_fid.api import embed_to_store
    from beatmap_fid.store import open_store

    sides = []
    for name in ("gen", "real"):
        stored = embed_to_store(copy_sets[name], "descriptors", copy_sets["stores"] / f"{name}.h5")
        with open_store(stored.store_path) as store:
            sides.append((store.vectors(), np.asarray(store.ids), store.n_events))
    (gen, gen_ids, gen_events), (real, real_ids, real_events) = sides
    blind = memorisation_scores(gen, real, generated_ids=gen_ids, real_ids=real_ids)
    empty = set(gen_ids[gen_events == 0].tolist())
    assert empty & set(blind.generated_ids[:12].tolist())  # empty windows at distance 0
    assert not blind.empty_known
    seeing = memorisation_scores(
        gen, real, generated_ids=gen_ids, real_ids=real_ids,
        generated_events=gen_events, real_events=real_events,
    )  # fmt: skip
    assert not empty & set(seeing.generated_ids.tolist())
    blind_maps = map_memorisation_scores(gen, real, generated_ids=gen_ids, real_ids=real_ids)
    seeing_maps = map_memorisation_scores(
        gen, real, generated_ids=gen_ids, real_ids=real_ids,
        generated_events=gen_events, real_events=real_events,
    )  # fmt: skip
    blind_distance = dict(zip(blind_maps.maps, blind_maps.distance))
    seeing_distance = dict(zip(seeing_maps.maps, seeing_maps.distance))
    # 5 of its 7 windows are empty and sit at distance 0 from the real empty windows
    name = "mostly_break.osu"
    assert blind_distance[name] <= seeing_distance[name] * 2 / 7 + 1e-9
    assert "event counts are unknown" in blind_maps.to_text()
    assert seeing_maps.empty_known and "unknown" not in seeing_maps.to_text()


def test_map_scores_check_their_inputs():
    rng = np.random.default_rng(7)
    real = rng.normal(size=(40, 4)).astype(np.float32)
    ids = [f"r{i // 10}#{i % 10}" for i in range(40)]
    gen = rng.normal(size=(6, 4)).astype(np.float32)
    gen_ids = ["a#0", "a#1", "b#0", "b#1", "c#0", "c#1"]
    report = map_memorisation_scores(
        gen, real, generated_ids=gen_ids, real_ids=ids, generated_events=[3, 4, 0, 0, 1, 0]
    )
    assert sorted(report.maps.tolist()) == ["a", "c"] and report.left_out == ["b"]
    assert dict(zip(report.maps, report.n_empty)) == {"a": 0, "c": 1}
    patchwork = np.vstack([real[10:13], real[30:31]])  # 3 windows of r1, one of r3
    copied = map_memorisation_scores(
        patchwork, real, generated_ids=["p#0", "p#1", "p#2", "p#3"], real_ids=ids
    )
    assert copied.nearest_real_map.tolist() == ["r1"] and copied.share_on_nearest[0] == 0.75
    assert copied.score[0] == 0.0 and copied.share_closer[0] == 1.0
    with pytest.raises(InsufficientSamplesError, match="two real maps"):
        map_memorisation_scores(gen, real, generated_ids=gen_ids, real_ids=["one#0"] * 40)
    with pytest.raises(InsufficientSamplesError, match="every generated window is empty"):
        map_memorisation_scores(gen, real, real_ids=ids, generated_events=[0] * 6)
    with pytest.raises(InputError, match="event counts for"):
        map_memorisation_scores(gen, real, real_ids=ids, generated_events=[1, 2])
    with pytest.raises(InputError, match="distance"):
        map_memorisation_scores(gen, real, real_ids=ids, metric="ip")


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
    assert run_cli("nearest", str(generated), str(store), "--top", "5", "--windows", "--json") == 0
    nearest = json.loads(capsys.readouterr().out)
    assert {item["id"] for item in nearest["items"][:2]} == {"g0", "g1"}
    assert nearest["n_flagged"] == 2 and len(nearest["items"]) == 5
    assert run_cli("nearest", str(generated), str(store), "--top", "5", "--json") == 0
    by_map = json.loads(capsys.readouterr().out)  # ids without '#': every item is a map
    assert {entry["map"] for entry in by_map["maps"][:2]} == {"g0", "g1"}
    assert by_map["level"] == "map" and by_map["n_flagged"] == 2
    assert by_map["empty_windows_known"] is False  # stores written without event counts


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


@pytest.mark.realdata
def test_nearest_on_real_maps_ranks_a_copied_map_first(shared_data, tmp_path, capsys):
    """Real sets: 10 song folders; generated: 4 other song folders and one real map copied
    whole (with its audio). Empty windows (intros, breaks, outros) are never scored."""
    import shutil

    from beatmap_fid.store import open_store

    songs = sorted((shared_data / "beatmaps" / "songs").iterdir())
    real, gen = tmp_path / "real", tmp_path / "gen"
    for folder in songs[4:14]:
        shutil.copytree(folder, real / folder.name)
    for folder in songs[-4:]:
        shutil.copytree(folder, gen / folder.name)
    source = real / songs[6].name
    original = sorted(source.glob("*.osu"))[0]
    (gen / "copy").mkdir()
    shutil.copy2(original, gen / "copy" / original.name)
    for audio in source.glob("*.mp3"):
        shutil.copy2(audio, gen / "copy" / audio.name)
    stores = tmp_path / "stores"
    args = [str(gen), str(real), "--store-dir", str(stores), "--quiet", "--json", "--top", "1000"]
    assert run_cli("nearest", *args) == 0
    by_map = json.loads(capsys.readouterr().out)
    first = by_map["maps"][0]
    assert first["map"] == f"copy/{original.name}" and first["score"] == 0.0
    assert first["nearest_real_map"] == f"{source.name}/{original.name}"
    assert by_map["maps"][1]["score"] > 0 and by_map["empty_windows_known"]
    assert sum(entry["empty_windows"] for entry in by_map["maps"]) > 0

    assert run_cli("nearest", *args, "--windows") == 0
    by_window = json.loads(capsys.readouterr().out)
    (gen_store,) = [p for p in stores.glob("*gen*.h5")]
    with open_store(gen_store) as store:
        events = dict(zip(store.ids, store.n_events.tolist()))
    ranked = [item["id"] for item in by_window["items"]]
    assert all(events[i] > 0 for i in ranked)
    copied = [i for i in events if i.startswith("copy/") and events[i] > 0]
    assert set(ranked[: len(copied)]) == set(copied)
    assert by_window["empty_windows_left_out"]["generated"] > 0
