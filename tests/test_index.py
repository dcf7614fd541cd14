"""Self-tuning FAISS indexes: family choice, recall on held-out queries, ids, save/load, errors."""

from __future__ import annotations

import json
import warnings

import faiss
import numpy as np
import pytest

from beatmap_fid.errors import (
    ConfigMismatchError,
    DimensionMismatchError,
    IndexFileError,
    InputError,
    InsufficientSamplesError,
    NonFiniteError,
)
from beatmap_fid.index import (
    FAMILIES,
    build_index,
    choose_index,
    file_checksum,
    ids_checksum,
    load_index,
    parse_memory_size,
    recall_at_k,
    sealed_sidecar,
    sidecar_path_of,
)
from beatmap_fid.store import StoreWriter


def reseal(sidecar, meta: dict) -> None:
    """Write ``meta`` with checksums of its ids and content recomputed (as a tool editing a
    sidecar on purpose would), so that the schema, not the checksum, has to catch what is
    wrong."""
    meta["checksums"]["ids"] = ids_checksum(meta["ids"])
    sidecar.write_bytes(sealed_sidecar(meta))


def clustered(n: int, dim: int, *, clusters: int = 40, seed: int = 0) -> np.ndarray:
    """Gaussian blobs around random centres: realistic neighbourhoods for ANN indexes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 3.0
    return (centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatL2(base.shape[1])
    index.add(base)
    return index.search(queries, k)[1]


def write_store(path, vectors, *, ids=None, labels=None, config=None, extractor="toy"):
    ids = [f"item-{i}" for i in range(len(vectors))] if ids is None else ids
    with StoreWriter(path, extractor, config or {"options": {}}, vectors.shape[1]) as writer:
        writer.append(ids, vectors, labels)
    return path


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """8 000 indexed vectors and 300 fresh queries from the same distribution."""
    data = clustered(8300, 16)
    return data[:8000], data[8000:]


@pytest.fixture(scope="module")
def ivf_store(tmp_path_factory, blobs):
    base, _ = blobs
    path = tmp_path_factory.mktemp("index") / "blobs.h5"
    labels = [f"class-{i % 7}" for i in range(len(base))]
    return write_store(path, base, labels=labels)


# ----------------------------------------------------------------------------- choosing


def test_memory_sizes_parse():
    assert parse_memory_size("4G") == 4 * 1024**3
    assert parse_memory_size("512m") == 512 * 1024**2
    assert parse_memory_size("1.5GB") == int(1.5 * 1024**3)
    assert parse_memory_size(1000) == 1000
    assert parse_memory_size(None) is None
    with pytest.raises(InputError):
        parse_memory_size("lots")
    with pytest.raises(InputError):
        parse_memory_size("0G")


def test_chooser_follows_size_and_budget():
    assert choose_index(5_000, 128).family == "flat"
    assert choose_index(60_000, 128).family == "hnsw"
    assert choose_index(60_000, 128, memory_budget=60_000 * 128 * 4.5).family == "ivf-flat"
    large = choose_index(2_000_000, 128)
    assert large.family == "ivf-pq" and large.refine == "SQ8"
    raw = 2_000_000 * 128 * 4
    compressed = choose_index(2_000_000, 128, memory_budget=raw // 2)
    assert compressed.family == "ivf-pq" and compressed.refine == "SQ8"
    assert compressed.memory_bytes <= raw // 2
    tight = choose_index(2_000_000, 128, memory_budget=raw // 8)
    assert tight.family == "ivf-pq" and tight.refine is None
    assert tight.memory_bytes <= raw // 8
    with pytest.raises(InputError, match="too small"):
        choose_index(2_000_000, 128, memory_budget=1_000_000)


def test_ivf_lists_grow_with_n_within_bounds():
    previous = 0
    for n in (50_000, 400_000, 3_000_000, 40_000_000):
        plan = choose_index(n, 64, family="ivf-flat")
        assert plan.nlist > previous
        assert 2 * np.sqrt(n) <= plan.nlist <= 16 * np.sqrt(n)
        assert plan.train_size >= 30 * plan.nlist or plan.train_size == n
        previous = plan.nlist


# ----------------------------------------------------------------------------- recall


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_reaches_recall_on_fresh_queries(blobs, family):
    base, fresh = blobs
    target = 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missed target would warn
        vindex = build_index(base, family=family, recall=target, k=10, progress=False)
    assert vindex.family == family
    assert vindex.tuning.reached
    assert len(vindex) == len(base) == vindex.index.ntotal
    found = vindex.search(fresh, 10)
    recall = recall_at_k(found.positions, exact_neighbours(base, fresh, 10)).mean()
    assert recall >= target, (family, vindex.search_params, recall)
    if family != "flat":
        assert vindex.tuning.n_eval_queries > 0 and vindex.tuning.recall_eval >= target - 0.03


def test_held_out_queries_are_added_back_and_ids_follow_rows(blobs):
    base, _ = blobs
    ids = [f"v{i}" for i in range(len(base))]
    vindex = build_index(base, ids=ids, family="ivf-flat", recall=0.9, progress=False)
    assert sorted(vindex.row_positions.tolist()) == list(range(len(base)))
    assert not np.array_equal(vindex.row_positions, np.arange(len(base)))  # queries went last
    probe = [5, 1234, 7999]
    found = vindex.search(base[probe], 1)
    assert found.ids[:, 0].tolist() == [ids[p] for p in probe]
    assert np.allclose(found.distances[:, 0], 0.0, atol=1e-3)


def test_cosine_metric_matches_normalised_inner_product(blobs):
    base, fresh = blobs
    vindex = build_index(base[:3000], metric="cosine", family="flat", progress=False)
    found = vindex.search(fresh[:20], 5)
    unit = base[:3000] / np.linalg.norm(base[:3000], axis=1, keepdims=True)
    q = fresh[:20] / np.linalg.norm(fresh[:20], axis=1, keepdims=True)
    similarity = q @ unit.T
    expected = np.argsort(-similarity, axis=1)[:, :5]
    assert np.array_equal(found.positions, expected)
    assert np.allclose(found.distances, 1 - np.take_along_axis(similarity, expected, 1), atol=1e-5)


# ----------------------------------------------------------------------------- store, ids, files


def test_store_index_round_trip_with_mmap(tmp_path, ivf_store, blobs):
    base, fresh = blobs
    vindex = build_index(ivf_store, family="ivf-flat", recall=0.9, progress=False)
    assert vindex.ids[0] == "item-0" and vindex.labels[3] == "class-3"
    assert vindex.config_hash and vindex.provenance["extractor"] == "toy"
    path = vindex.save(tmp_path / "blobs.faiss")
    sidecar = json.loads(sidecar_path_of(path).read_text())
    assert sidecar["dim"] == 16 and sidecar["metric"] == "l2"
    assert sidecar["faiss_version"] == faiss.__version__
    assert sidecar["source"]["config_hash"] == vindex.config_hash
    before = vindex.search(fresh, 10)
    for mmap in (False, True):
        loaded = load_index(path, mmap=mmap)
        assert loaded.search_params == vindex.search_params
        after = loaded.search(fresh, 10)
        assert np.array_equal(after.ids, before.ids)
        assert np.array_equal(after.labels, before.labels)
        assert np.allclose(after.distances, before.distances)
        by_id = loaded.search(["item-7"], 3)  # reads the stored vector back from the lists
        assert by_id.ids[0].tolist() == vindex.search(base[7], 4).ids[0, 1:].tolist()


def test_search_by_id_leaves_the_item_out(ivf_store):
    vindex = build_index(ivf_store, family="hnsw", recall=0.9, progress=False)
    found = vindex.search(["item-10", "item-20"], 5)
    assert found.query_ids == ["item-10", "item-20"]
    assert "item-10" not in found.ids[0] and "item-20" not in found.ids[1]
    assert found.k == 5
    with_self = vindex.search(["item-10"], 5, exclude_self=False)
    assert with_self.ids[0, 0] == "item-10"
    with pytest.raises(InputError, match="neither ids"):
        vindex.search(["no-such-id"], 5)


def test_k_larger_than_index_is_clipped_with_a_warning():
    vindex = build_index(clustered(50, 8), family="flat", progress=False)
    with pytest.warns(UserWarning, match="larger than"):
        found = vindex.search(clustered(2, 8, seed=3), 80)
    assert found.k == 50
    with pytest.raises(InputError):
        vindex.search(clustered(2, 8, seed=3), 0)


def test_adding_vectors_skips_known_ids_and_checks_config(tmp_path, blobs):
    base, _ = blobs
    first = write_store(tmp_path / "a.h5", base[:3000], ids=[f"a{i}" for i in range(3000)])
    vindex = build_index(first, family="ivf-flat", recall=0.9, progress=False)
    more = base[2500:4000]
    added = vindex.add(more, ids=[f"a{i}" for i in range(2500, 4000)], progress=False)
    assert added == 1000 and len(vindex) == 4000 == vindex.index.ntotal
    assert vindex.search(base[3999], 1).ids[0, 0] == "a3999"
    other = write_store(tmp_path / "b.h5", base[:10], config={"options": {"x": 1}})
    with pytest.raises(ConfigMismatchError):
        vindex.add(other, progress=False)
    with pytest.raises(DimensionMismatchError):
        vindex.add(np.zeros((3, 8), np.float32), ids=["z1", "z2", "z3"], progress=False)


def test_search_by_file_embeds_with_the_store_config(tmp_path, synthetic_beatmaps):
    from beatmap_fid.api import embed_to_store

    store = tmp_path / "flow.h5"
    embed_to_store(synthetic_beatmaps / "flow", "descriptors", store, progress=False)
    vindex = build_index(store, progress=False)
    query = sorted((synthetic_beatmaps / "jumps").rglob("*.osu"))[0]
    found = vindex.search([query, vindex.ids[0]], 3)
    assert found.query_ids[-1] == vindex.ids[0]
    assert len(found.query_ids) > 2  # the file gave one query per window
    assert all(str(q).startswith(query.stem) or "#" in str(q) for q in found.query_ids[:-1])
    assert (found.positions >= 0).all()

    mismatched = tmp_path / "mismatch.h5"
    write_store(
        mismatched,
        clustered(30, vindex.dim),
        extractor="descriptors",
        config={"not": "the descriptors config"},
    )
    other = build_index(mismatched, progress=False)
    with pytest.raises(ConfigMismatchError):
        other.search([query], 3)


# ----------------------------------------------------------------------------- bad input


def test_bad_vectors_are_refused(tmp_path):
    data = clustered(100, 8)
    vindex = build_index(data, family="flat", progress=False)
    with pytest.raises(DimensionMismatchError):
        vindex.search(np.zeros((2, 9), np.float32), 3)
    nan_query = data[:2].copy()
    nan_query[1, 3] = np.nan
    with pytest.raises(NonFiniteError):
        vindex.search(nan_query, 3)
    broken = data.copy()
    broken[7, 0] = np.inf
    with pytest.raises(NonFiniteError, match=r"row 7|id '7'"):
        build_index(broken, progress=False)
    with pytest.raises(InsufficientSamplesError):
        build_index(np.zeros((0, 8), np.float32), progress=False)
    with pytest.raises(InputError, match="unique"):
        build_index(data[:3], ids=["a", "a", "b"], progress=False)
    with pytest.raises(InputError, match="zero vector"):
        build_index(np.zeros((3, 8), np.float32), metric="cosine", progress=False)
    empty = tmp_path / "empty.h5"
    with StoreWriter(empty, "toy", {"options": {}}, 8):
        pass
    with pytest.raises(InsufficientSamplesError):
        build_index(empty, progress=False)


def test_damaged_index_files_give_clear_errors(tmp_path):
    vindex = build_index(clustered(3000, 8), family="ivf-flat", recall=0.9, progress=False)
    path = vindex.save(tmp_path / "x.faiss")
    content = path.read_bytes()

    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(IndexFileError, match="truncated"):
        load_index(path)

    path.write_bytes(b"\0" * len(content))  # same size: the checksum tells them apart
    with pytest.raises(IndexFileError, match="does not match the checksum"):
        load_index(path)

    # A file written by a "newer" FAISS that this FAISS cannot read, checksums intact.
    sidecar = sidecar_path_of(path)
    meta = json.loads(sidecar.read_text())
    meta["faiss_version"] = "99.0.0"
    meta["checksums"]["index_file"] = file_checksum(path)
    reseal(sidecar, meta)
    with pytest.raises(IndexFileError, match=r"99\.0\.0"):
        load_index(path)

    path.write_bytes(content)  # readable again, the version note only warns
    meta["checksums"]["index_file"] = file_checksum(path)
    reseal(sidecar, meta)
    with pytest.warns(UserWarning, match=r"99\.0\.0"):
        assert len(load_index(path)) == 3000

    sidecar.unlink()
    with pytest.raises(IndexFileError, match="missing"):
        load_index(path)
    with pytest.raises(IndexFileError, match="does not exist"):
        load_index(tmp_path / "nothing.faiss")


@pytest.mark.gpu
def test_gpu_index_matches_cpu(blobs):
    if faiss.get_num_gpus() == 0:
        pytest.skip("FAISS was built without GPU support (install faiss-gpu)")
    base, fresh = blobs
    cpu = build_index(base, family="flat", device="cpu", progress=False)
    gpu = build_index(base, family="flat", device="gpu", progress=False)
    assert gpu.on_gpu
    assert np.array_equal(gpu.search(fresh, 10).positions, cpu.search(fresh, 10).positions)
