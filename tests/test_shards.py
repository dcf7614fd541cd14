"""Sharded stores without Ray: the manifest reader, finalizing, every verb reading a manifest,
the one-worker engine, IVF indexes merged on disk, and npy-parquet export and import."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from beatmap_fid.api import compute_fid, embed_to_store
from beatmap_fid.beatmap.synthetic import write_synthetic_set
from beatmap_fid.cli import main
from beatmap_fid.distributed import embed_sharded
from beatmap_fid.errors import ConfigMismatchError, StoreError
from beatmap_fid.evaluate import evaluate
from beatmap_fid.interchange import export_npy_parquet, import_npy_parquet
from beatmap_fid.shards import (
    MANIFEST_NAME,
    SHARD_DIR,
    ShardedStore,
    finalize_shards,
    is_store_path,
    partial_path_of,
)
from beatmap_fid.stats import gaussian_stats
from beatmap_fid.store import EmbeddingStore, StoreWriter, open_store

REPO_ROOT = Path(__file__).resolve().parents[1]
CHILD_SCRIPT = REPO_ROOT / "tests" / "store_writer_child.py"


def assert_stats_close(a, b, rtol=1e-12):
    assert a.n == b.n
    scale = max(np.abs(b.sigma).max(), 1e-300)
    assert np.abs(a.sigma - b.sigma).max() <= rtol * scale
    assert np.abs(a.mu - b.mu).max() <= rtol * max(np.abs(b.mu).max(), 1e-300)


def split_into_shards(store_path: Path, folder: Path, n_shards: int) -> Path:
    """Copy the rows of a store into ``n_shards`` shards of ``folder`` and finalize it."""
    with EmbeddingStore(store_path) as store:
        bounds = np.linspace(0, len(store), n_shards + 1).astype(int)
        labels, prints, counts = store.labels, store.fingerprints, store.n_events
        for shard, (low, high) in enumerate(pairwise(bounds)):
            rows = slice(low, high)
            path = folder / SHARD_DIR / f"{shard:04d}.h5"
            with StoreWriter(path, store.extractor, store.config, store.dim) as writer:
                writer.append(
                    store.ids[rows],
                    store.vectors(rows),
                    None if labels is None else labels[rows],
                    [value or None for value in prints[rows]],
                    None if counts is None else [c if c >= 0 else None for c in counts[rows]],
                )
    return finalize_shards(folder)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    """Real "flow" and generated "jumps" maps, their single stores, and the real store split
    into three shards."""
    root = tmp_path_factory.mktemp("shards")
    for seed, (name, style) in enumerate((("real", "flow"), ("gen", "jumps")), start=1):
        write_synthetic_set(root / name, 6, seed=seed, style=style, duration_s=30.0)
        embed_to_store(root / name, "descriptors", root / f"{name}.h5", progress=False)
    split_into_shards(root / "real.h5", root / "sharded", 3)
    return {
        "root": root,
        "real": root / "real",
        "gen": root / "gen",
        "real_store": root / "real.h5",
        "gen_store": root / "gen.h5",
        "sharded": root / "sharded",
    }


def cli_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# -- reading -----------------------------------------------------------------------------------


def test_sharded_store_reads_like_the_single_store(sets):
    with EmbeddingStore(sets["real_store"]) as single, open_store(sets["sharded"]) as sharded:
        assert isinstance(sharded, ShardedStore) and len(sharded.shards) == 3
        assert len(sharded) == len(single) == 18
        assert (sharded.dim, sharded.extractor, sharded.config_hash) == (
            single.dim,
            single.extractor,
            single.config_hash,
        )
        assert sharded.config == single.config
        assert sharded.ids.tolist() == single.ids.tolist()
        assert sharded.labels.tolist() == single.labels.tolist()
        assert sharded.fingerprints.tolist() == single.fingerprints.tolist()
        assert sharded.n_events.tolist() == single.n_events.tolist()
        reference = single.vectors()
        np.testing.assert_array_equal(sharded.vectors(), reference)
        rows = np.array([len(single) - 1, 0, 5, -2, 5, 11])
        np.testing.assert_array_equal(sharded.vectors(rows), reference[rows])
        np.testing.assert_array_equal(sharded.vectors(slice(3, None, 7)), reference[3::7])
        np.testing.assert_array_equal(sharded.vectors(7), reference[7])
        mask = np.arange(len(single)) % 3 == 1
        np.testing.assert_array_equal(sharded.vectors(mask), reference[mask])
        blocks = list(sharded.iter_blocks(block_rows=4))
        assert [start for start, _ in blocks] == sorted({start for start, _ in blocks})
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), reference)
        assert sharded.commits[-1, 0] == len(single)
        assert_stats_close(sharded.statistics(), single.statistics())
    with open_store(sets["sharded"] / MANIFEST_NAME) as by_manifest:
        assert len(by_manifest) == len(single)
    assert is_store_path(sets["sharded"]) and is_store_path(sets["sharded"] / MANIFEST_NAME)
    assert not is_store_path(sets["real"])
    with pytest.raises(StoreError, match="open_store"):
        EmbeddingStore(sets["sharded"])


def test_a_shard_changed_after_its_manifest_is_refused(tmp_path, sets):
    folder = tmp_path / "changed"
    split_into_shards(sets["real_store"], folder, 2)
    shard = sorted((folder / SHARD_DIR).glob("*.h5"))[1]
    with open_store(folder) as store:
        extra = store.vectors(slice(0, 2))
        extractor, config, dim = store.extractor, store.config, store.dim
    with StoreWriter(shard, extractor, config, dim) as writer:
        writer.append(["new#0", "new#1"], extra)
    with open_store(folder) as store, pytest.raises(StoreError, match="changed since"):
        store.vectors()
    finalize_shards(folder)  # finalizing again accepts the shard as it is now
    with open_store(folder) as store:
        assert "new#1" in store.ids.tolist()
        assert_stats_close(store.statistics(), gaussian_stats(store.vectors()), 1e-10)


# -- finalizing ------------------------------------------------------------------------------


def test_finalizing_keeps_one_current_row_per_id(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(90, 6)).astype(np.float32)
    ids = [f"map{i // 3}.osu#{i % 3}" for i in range(90)]
    old, new = "a" * 32, "b" * 32
    folder = tmp_path / "dedupe"
    with StoreWriter(folder / SHARD_DIR / "1.h5", "x", {"v": 1}, 6) as writer:
        writer.append(ids[:60], vectors[:60], fingerprints=[old] * 60)
    with StoreWriter(folder / SHARD_DIR / "2.h5", "x", {"v": 1}, 6) as writer:
        writer.append(ids[40:], vectors[40:], fingerprints=[old] * 20 + [new] * 30)
    changed = vectors.copy()
    changed[:10] += 1.0  # ids 0-9 were embedded again from changed files, into shard 3
    with StoreWriter(folder / SHARD_DIR / "3.h5", "x", {"v": 1}, 6) as writer:
        writer.append(ids[:10], changed[:10], fingerprints=[new] * 10)
    current = {item_id: (new if i < 10 or i >= 60 else old) for i, item_id in enumerate(ids)}
    finalize_shards(folder, current)
    with open_store(folder) as store:
        assert sorted(store.ids.tolist()) == sorted(ids)
        row = {item_id: r for r, item_id in enumerate(store.ids)}
        expected = np.concatenate([changed[:10], vectors[10:]])
        np.testing.assert_array_equal(store.vectors([row[i] for i in ids]), expected)
        assert_stats_close(store.statistics(), gaussian_stats(expected))
        # shard 1 lost its 20 rows repeated in the newer shard 2 and its 10 stale rows
        assert [entry.rows for entry in store.shards] == [30, 50, 10]


def test_a_killed_writers_uncommitted_batch_is_never_counted(tmp_path):
    folder = tmp_path / "killed"
    shard = folder / SHARD_DIR / "0001.h5"
    shard.parent.mkdir(parents=True)
    process = subprocess.Popen(
        [sys.executable, str(CHILD_SCRIPT), str(shard), "6", "16", "8", "--die-before-commit", "3"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL
    finalize_shards(folder)
    with open_store(folder) as store:
        # batches 0-2 committed (16 rows each, the first id of a batch repeats the last one)
        assert len(store) == 16 + 15 + 15 == len(set(store.ids.tolist()))
        assert_stats_close(store.statistics(), gaussian_stats(store.vectors()), 1e-10)


def test_partial_statistics_are_completed_from_the_shard(tmp_path):
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(50, 5))
    folder = tmp_path / "partial"
    with StoreWriter(folder / SHARD_DIR / "1.h5", "x", {}, 5) as writer:
        writer.append([f"i{k}" for k in range(20)], vectors[:20])
    finalize_shards(folder)
    partial = partial_path_of(folder / SHARD_DIR / "1.h5")
    saved = partial.read_bytes()
    with StoreWriter(folder / SHARD_DIR / "1.h5", "x", {}, 5) as writer:
        writer.append([f"i{k}" for k in range(20, 50)], vectors[20:])
    partial.write_bytes(saved)  # the partial statistics cover the first commit only
    finalize_shards(folder)
    with open_store(folder) as store:
        assert_stats_close(store.statistics(), gaussian_stats(vectors.astype(np.float32)))


def test_a_folder_of_another_configuration_is_refused(tmp_path, sets):
    folder = tmp_path / "other"
    split_into_shards(sets["real_store"], folder, 1)
    with StoreWriter(folder / SHARD_DIR / "x.h5", "descriptors", {"other": 1}, 104) as writer:
        writer.append(["a"], np.zeros((1, 104)))
    with pytest.raises(ConfigMismatchError, match="one extractor configuration"):
        finalize_shards(folder)


# -- every verb reads a manifest -------------------------------------------------------------


def test_stats_and_fd_verbs_read_a_manifest(sets, tmp_path, capsys):
    from beatmap_fid.stats import GaussianStats

    for name, store in (("single", sets["real_store"]), ("sharded", sets["sharded"])):
        cli_json(capsys, "stats", str(store), "-o", str(tmp_path / f"{name}.npz"))
    assert_stats_close(
        GaussianStats.load(tmp_path / "sharded.npz"), GaussianStats.load(tmp_path / "single.npz")
    )
    single = cli_json(capsys, "fd", str(sets["real_store"]), str(sets["gen_store"]))
    sharded = cli_json(capsys, "fd", str(sets["sharded"] / MANIFEST_NAME), str(sets["gen_store"]))
    assert sharded["fd"] == pytest.approx(single["fd"], rel=1e-9) and single["fd"] > 0


def test_fid_verb_and_api_read_a_manifest(sets, capsys):
    stores = str(sets["root"] / "cache")
    single = cli_json(
        capsys, "fid", str(sets["real_store"]), str(sets["gen"]), "--store-dir", stores, "--quiet"
    )
    sharded = cli_json(capsys, "fid", str(sets["sharded"]), str(sets["gen"]), "--store-dir", stores, "--quiet")  # fmt: skip
    assert sharded["fid"] == pytest.approx(single["fid"], rel=1e-9) and single["fid"] > 0
    assert sharded["real"]["kind"] == "store" and sharded["real"]["n_sources"] == 6
    assert compute_fid(sets["sharded"], sets["gen_store"], progress=False).fid == pytest.approx(
        compute_fid(sets["real_store"], sets["gen_store"], progress=False).fid, rel=1e-9
    )


def test_metrics_read_a_manifest(sets):
    options = {"kid": {"subset_size": 10, "subsets": 20}}
    single = evaluate(sets["real_store"], sets["gen_store"], ["fid", "kid", "prdc"], progress=False, **options)  # fmt: skip
    sharded = evaluate(sets["sharded"], sets["gen_store"], ["fid", "kid", "prdc"], progress=False, **options)  # fmt: skip
    assert sharded.keys() == single.keys()
    for key, value in single.items():
        assert sharded[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_index_and_search_verbs_read_a_manifest(sets, tmp_path, capsys):
    found = {}
    for name, store in (("single", sets["real_store"]), ("sharded", sets["sharded"])):
        index = tmp_path / f"{name}.faiss"
        built = cli_json(capsys, "index", str(store), "-o", str(index), "--quiet")
        assert built["n"] == 18 and built["family"] == "flat"
        found[name] = cli_json(capsys, "search", str(index), "flow_1_002.osu#1", "-k", "5")
    assert found["sharded"]["queries"] == found["single"]["queries"]


def test_knn_verb_reads_a_manifest(sets, capsys):
    single = cli_json(capsys, "knn", str(sets["real_store"]), "-k", "3", "--group-by", "none", "--quiet")  # fmt: skip
    sharded = cli_json(capsys, "knn", str(sets["sharded"]), "-k", "3", "--group-by", "none", "--quiet")  # fmt: skip
    single.pop("store"), sharded.pop("store")
    assert sharded == single and single["n_samples"] == 18


def test_nearest_verb_reads_a_manifest(sets, capsys):
    single = cli_json(capsys, "nearest", str(sets["gen_store"]), str(sets["real_store"]), "--quiet")
    sharded = cli_json(capsys, "nearest", str(sets["gen_store"]), str(sets["sharded"]), "--quiet")
    for key in ("generated", "real"):
        single.pop(key), sharded.pop(key)
    assert sharded == single and single["maps"]


def test_report_verb_reads_a_manifest(sets, tmp_path, capsys):
    common = ["--projection", "pca", "--metrics", "fid,kid", "--seeds", "1", "--quiet"]
    single = cli_json(capsys, "report", str(sets["real_store"]), str(sets["gen_store"]), "-o", str(tmp_path / "a"), *common)  # fmt: skip
    sharded = cli_json(capsys, "report", str(sets["sharded"]), str(sets["gen_store"]), "-o", str(tmp_path / "b"), *common)  # fmt: skip
    assert sharded["metrics"]["fid"] == pytest.approx(single["metrics"]["fid"], rel=1e-9)
    assert sharded["metrics"]["kid"] == pytest.approx(single["metrics"]["kid"], rel=1e-9)
    assert (tmp_path / "b" / "report.html").is_file()


# -- one worker in this process --------------------------------------------------------------


def test_local_engine_equals_embedding_into_one_store_and_resumes(sets, tmp_path):
    maps = tmp_path / "maps"
    write_synthetic_set(maps, 4, seed=7, style="flow", duration_s=30.0)
    single = embed_to_store(maps, "descriptors", tmp_path / "single.h5", progress=False)
    folder = tmp_path / "sharded"
    first = embed_sharded(maps, "descriptors", folder, engine="local", units_per_batch=1, progress=False)  # fmt: skip
    assert sorted(first.ids) == sorted(single.ids) and first.written == len(single.ids)
    again = embed_sharded(maps, "descriptors", folder, engine="local", progress=False)
    assert (again.written, again.reused) == (0, len(single.ids))
    # one map changes: only its windows are embedded again, and its old rows leave
    changed = sorted(maps.glob("*.osu"))[0]
    changed.write_text(changed.read_text().replace("Version:", "Version:changed "))
    n_changed = sum(1 for i in single.ids if i.startswith(changed.name + "#"))
    third = embed_sharded(maps, "descriptors", folder, engine="local", progress=False)
    assert (third.written, third.replaced, third.reused) == (n_changed, n_changed, len(single.ids) - n_changed)  # fmt: skip
    resumed = embed_to_store(maps, "descriptors", tmp_path / "single.h5", progress=False)
    assert resumed.replaced == n_changed
    with open_store(folder) as store, EmbeddingStore(tmp_path / "single.h5") as reference:
        assert sorted(store.ids.tolist()) == sorted(reference.ids.tolist())
        assert_stats_close(store.statistics(), reference.statistics())


def write_photos(root: Path) -> Path:
    """Small real photographs in class folders, and one file that is not an image."""
    from PIL import Image
    from skimage import data

    for name, label in (("chelsea", "cats"), ("cat", "cats"), ("coffee", "drinks"),
                        ("rocket", "things"), ("astronaut", "people")):  # fmt: skip
        (root / label).mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((96, 96))
        image.save(root / label / f"{name}.jpg", quality=95)
    (root / "things" / "broken.jpg").write_text("not a picture")
    return root


def test_local_engine_embeds_images_as_one_store_does(tmp_path):
    photos = write_photos(tmp_path / "photos")
    options = {"device": "cpu", "num_workers": 0}
    single = embed_to_store(photos, "efficientnet", tmp_path / "one.h5", progress=False, extractor_options=options)  # fmt: skip
    sharded = embed_sharded(photos, "efficientnet", tmp_path / "sharded", engine="local", units_per_batch=2, progress=False, extractor_options=options)  # fmt: skip
    assert sorted(sharded.ids) == sorted(single.ids) and len(single.ids) == 5
    assert [s.source for s in sharded.skipped.entries] == ["things/broken.jpg"]
    with open_store(tmp_path / "sharded") as store, EmbeddingStore(tmp_path / "one.h5") as one:
        row = {item_id: r for r, item_id in enumerate(store.ids)}
        order = [row[i] for i in one.ids]
        assert store.labels[order].tolist() == one.labels.tolist()
        np.testing.assert_allclose(store.vectors(order), one.vectors(), rtol=1e-4, atol=1e-5)


# -- IVF indexes merged on disk --------------------------------------------------------------


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(20, dim))
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def big_sharded(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("big") / "store"
    vectors = clustered(6000, 16)
    for shard, (low, high) in enumerate([(0, 2500), (2500, 3100), (3100, 6000)]):
        with StoreWriter(folder / SHARD_DIR / f"{shard}.h5", "x", {"k": 1}, 16) as writer:
            writer.append([f"v{i}" for i in range(low, high)], vectors[low:high])
    finalize_shards(folder)
    return folder


def single_process_search(trained, store, queries, k, nprobe):
    """The same trained index filled in one process, every row added in order."""
    import faiss

    index = faiss.clone_index(trained)
    index.add_with_ids(store.vectors(), np.arange(len(store), dtype=np.int64))
    faiss.extract_index_ivf(index).nprobe = nprobe
    return index.search(queries, k)


@pytest.mark.parametrize("factory", ["IVF64,Flat", "OPQ4_8,IVF32,PQ4"])
def test_index_merged_on_disk_equals_one_process_with_the_same_quantizer(
    big_sharded, tmp_path, factory
):
    import faiss

    from beatmap_fid.index import load_index
    from beatmap_fid.shard_index import build_sharded_index

    with open_store(big_sharded) as store:
        trained = faiss.index_factory(16, factory)
        if isinstance(trained, faiss.IndexPreTransform):  # a quick training
            rotation = faiss.downcast_VectorTransform(trained.chain.at(0))
            rotation.niter, rotation.niter_pq_0, rotation.niter_pq = 3, 3, 3
            faiss.downcast_index(faiss.extract_index_ivf(trained)).do_polysemous_training = False
        trained.train(store.vectors(np.arange(0, 6000, 3)))
        vindex = build_sharded_index(
            store, tmp_path / "x.faiss", engine="local", trained=trained, part_rows=1000,
            progress=False,
        )  # fmt: skip
        queries = clustered(50, 16, seed=9)
        nprobe = vindex.search_params["nprobe"]
        distances, rows = single_process_search(trained, store, queries, 10, nprobe)
        ids = store.ids
    loaded = load_index(tmp_path / "x.faiss", mmap=True)
    assert (tmp_path / "x.faiss.ivfdata").is_file() and len(loaded) == 6000
    found_d, found_rows = loaded.index.search(queries, 10)
    np.testing.assert_array_equal(found_rows, rows)
    np.testing.assert_array_equal(found_d, distances)
    result = loaded.search(queries, 10)
    assert result.ids.tolist() == ids[rows].tolist()
    assert vindex.family == ("ivf-pq" if "PQ" in factory else "ivf-flat")


def test_index_verb_merges_on_disk_and_search_maps_it(big_sharded, tmp_path, capsys):
    from beatmap_fid.shard_index import build_sharded_index

    vindex = build_sharded_index(big_sharded, tmp_path / "y.faiss", engine="local", progress=False)
    assert vindex.family == "ivf-flat" and vindex.tuning.reached
    assert vindex.tuning.recall_eval >= 0.9
    found = cli_json(capsys, "search", str(tmp_path / "y.faiss"), "v17", "-k", "3", "--mmap")
    assert len(found["queries"][0]["neighbours"]) == 3


# -- export and import -----------------------------------------------------------------------


def test_export_import_round_trip_is_bit_identical(sets, tmp_path, capsys):
    out = tmp_path / "exported"
    printed = cli_json(
        capsys, "export", str(sets["sharded"]), "--format", "npy-parquet", "-o", str(out),
        "--rows-per-file", "5", "--quiet",
    )  # fmt: skip
    assert printed["rows"] == 18
    assert len(list((out / "embeddings").glob("*.npy"))) == 4
    assert len(list((out / "metadata").glob("*.parquet"))) == 4
    cli_json(capsys, "import", str(out), "-o", str(tmp_path / "back.h5"), "--quiet")
    with open_store(sets["sharded"]) as a, open_store(tmp_path / "back.h5") as b:
        assert a.vectors().tobytes() == b.vectors().tobytes()
        for column in ("ids", "labels", "fingerprints", "n_events"):
            assert getattr(a, column).tolist() == getattr(b, column).tolist(), column
        assert (a.extractor, a.config, a.config_hash) == (b.extractor, b.config, b.config_hash)
    with pytest.raises(StoreError, match="not an empty folder"):
        export_npy_parquet(sets["real_store"], out, progress=False)


def test_import_reads_a_folder_written_by_other_tools(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float16)
    (tmp_path / "embeddings").mkdir()
    (tmp_path / "metadata").mkdir()
    for part, rows in enumerate((slice(0, 12), slice(12, 30))):
        np.save(tmp_path / "embeddings" / f"img_emb_{part}.npy", vectors[rows])
        paths = [f"images/{i}.jpg" for i in range(30)][rows]
        pq.write_table(pa.table({"image_path": paths}), tmp_path / "metadata" / f"metadata_{part}.parquet")  # fmt: skip
    path = import_npy_parquet(tmp_path, tmp_path / "clip.h5", extractor="clip", id_column="image_path", progress=False)  # fmt: skip
    with open_store(path) as store:
        assert store.extractor == "clip" and store.ids[13] == "images/13.jpg"
        np.testing.assert_array_equal(store.vectors(), vectors.astype(np.float32))
        assert store.labels is None


def test_exported_folder_reads_with_embedding_reader(sets, tmp_path):
    embedding_reader = pytest.importorskip(
        "embedding_reader",
        reason="embedding-reader is not installed (its release needs pandas<3, which this "
        "environment does not have)",
    )
    out = export_npy_parquet(sets["sharded"], tmp_path / "er", rows_per_file=10, progress=False)
    reader = embedding_reader.EmbeddingReader(
        str(out / "embeddings"),
        file_format="parquet_npy",
        metadata_folder=str(out / "metadata"),
        meta_columns=["id", "label"],
    )
    batches = list(reader(batch_size=7, show_progress=False))
    with open_store(sets["sharded"]) as store:
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), store.vectors())
        ids = [i for _, meta in batches for i in meta["id"].tolist()]
        assert ids == store.ids.tolist()
