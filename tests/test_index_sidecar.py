"""Index sidecars: schema, checksums of the index file, the ids and the sidecar itself; every
tampered or mismatched sidecar refused with one line; search by file with the store's options."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import beatmap_fid.index as index_module
from beatmap_fid.api import embed_to_store
from beatmap_fid.cli import main
from beatmap_fid.errors import ConfigMismatchError, IndexFileError, InputError
from beatmap_fid.index import (
    build_index,
    file_checksum,
    ids_checksum,
    load_index,
    read_sidecar,
    sealed_sidecar,
    sidecar_path_of,
)
from beatmap_fid.store import EmbeddingStore, StoreWriter, merge_stores

REPO_ROOT = Path(__file__).resolve().parents[1]


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim)) * 3.0
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, dim))).astype(np.float32)


def _store(path: Path, vectors: np.ndarray, prefix: str = "item") -> Path:
    ids = [f"{prefix}-{i}" for i in range(len(vectors))]
    labels = [f"class-{i % 5}" for i in range(len(vectors))]
    with StoreWriter(path, "toy", {"layer": "pool"}, vectors.shape[1]) as writer:
        writer.append(ids, vectors, labels)
    return path


@pytest.fixture(scope="module")
def saved_index(tmp_path_factory) -> Path:
    """An IVF-Flat index of a labelled store, with held-out rows (non-trivial row positions)."""
    folder = tmp_path_factory.mktemp("sidecar")
    store = _store(folder / "a.h5", _vectors(3000, 8, seed=1))
    vindex = build_index(store, family="ivf-flat", recall=0.9, progress=False)
    assert not np.array_equal(vindex.row_positions, np.arange(len(vindex)))
    return vindex.save(folder / "a.faiss")


def _copy(saved: Path, folder: Path) -> tuple[Path, dict]:
    """A copy of the saved index and its parsed sidecar in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / saved.name
    shutil.copyfile(saved, target)
    shutil.copyfile(sidecar_path_of(saved), sidecar_path_of(target))
    return target, json.loads(sidecar_path_of(target).read_text())


def _reseal(meta: dict) -> bytes:
    """The sidecar's bytes with its ids and own checksums recomputed, as a tool editing the
    sidecar on purpose would write them."""
    if isinstance(meta.get("ids"), list):
        meta["checksums"]["ids"] = ids_checksum(meta["ids"])
    return sealed_sidecar(meta)


def _swap_first_two(values: list) -> list:
    return [values[1], values[0], *values[2:]]


# name -> (edit of the parsed sidecar, what the one-line error says once checksums are resealed)
TAMPERS: dict[str, tuple[Callable[[dict], None], str]] = {
    "missing ids": (lambda m: m.pop("ids"), "lacks 'ids'"),
    "missing plan": (lambda m: m.pop("plan"), "lacks 'plan'"),
    "missing checksums": (lambda m: m.pop("checksums"), "lacks 'checksums'"),
    "unknown key": (lambda m: m.update(note="hi"), "unknown key 'note'"),
    "unknown plan key": (lambda m: m["plan"].update(extra=1), "plan has unknown key 'extra'"),
    "unknown tuning key": (lambda m: m["tuning"].update(x=1), "tuning has unknown key 'x'"),
    "row_positions short": (
        lambda m: m.update(row_positions=m["row_positions"][:-1]),
        "permutation",
    ),
    "row_positions repeated": (
        lambda m: m["row_positions"].__setitem__(0, m["row_positions"][1]),
        "permutation",
    ),
    "row_positions out of range": (
        lambda m: m["row_positions"].__setitem__(0, -1),
        "permutation",
    ),
    "row_positions text": (
        lambda m: m.update(row_positions=[str(p) for p in m["row_positions"]]),
        "permutation",
    ),
    "row_positions nested": (
        lambda m: m.update(row_positions=[[p] for p in m["row_positions"]]),
        "permutation",
    ),
    "row_positions a number": (lambda m: m.update(row_positions=7), "list of integers"),
    "labels short": (lambda m: m.update(labels=m["labels"][:-1]), "labels for ntotal"),
    "labels numbers": (
        lambda m: m.update(labels=list(range(len(m["labels"])))),
        "labels must all be strings",
    ),
    "labels text": (lambda m: m.update(labels="class-0"), "list of strings"),
    "search_params unknown": (
        lambda m: m.update(search_params={"efSearch": 16}),
        "no search parameter 'efSearch'",
    ),
    "search_params zero": (lambda m: m.update(search_params={"nprobe": 0}), "nprobe must be"),
    "search_params above nlist": (
        lambda m: m.update(search_params={"nprobe": m["plan"]["nlist"] + 1}),
        "nprobe must be",
    ),
    "search_params text": (
        lambda m: m.update(search_params={"nprobe": "8"}),
        "object of integers",
    ),
    "search_params a list": (lambda m: m.update(search_params=[8]), "object of integers"),
    "bogus metric": (lambda m: m.update(metric="euclid"), "'metric' must be one of"),
    "other metric": (lambda m: m.update(metric="ip"), "metric l2 in the file, ip"),
    "other family": (
        lambda m: m["plan"].update(family="hnsw", nlist=None),
        "no search parameter 'nprobe'",
    ),
    "other family, no parameters": (
        lambda m: (
            m["plan"].update(family="flat", nlist=None),
            m.update(search_params={}, tuning=None),
        ),
        "family ivf-flat in the file, flat in the sidecar",
    ),
    "other nlist": (lambda m: m["plan"].update(nlist=m["plan"]["nlist"] * 2), "nlist"),
    "ntotal": (lambda m: m.update(ntotal=m["ntotal"] + 1), "plan is for"),
    "dimension": (lambda m: (m.update(dim=9), m["plan"].update(dim=9)), "dimension 8 in the file"),
    "ids numbers": (lambda m: m.update(ids=list(range(len(m["ids"])))), "ids must all be"),
    "options not an object": (lambda m: m["source"].update(options=[1]), "'options' must be"),
    "checksum not hex": (
        lambda m: m["checksums"].update(index_file="zz"),
        "64 hexadecimal digits",
    ),
    "old format": (lambda m: m.update(format_version=1), "written without checksums"),
    "newer format": (lambda m: m.update(format_version=3), "upgrade beatmap_fid"),
    "not a sidecar": (lambda m: m.update(format="other"), "not a beatmap_fid index sidecar"),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_every_tampered_sidecar_is_refused(saved_index: Path, tmp_path: Path, name: str):
    edit, message = TAMPERS[name]
    path, meta = _copy(saved_index, tmp_path / "edited")
    edit(meta)
    sidecar_path_of(path).write_text(json.dumps(meta))
    with pytest.raises(IndexFileError) as edited:
        load_index(path)
    assert "\n" not in str(edited.value)
    if "checksums" not in meta:
        return
    # Checksums recomputed: the schema or the comparison with the FAISS file must catch it.
    sidecar_path_of(path).write_bytes(_reseal(meta))
    with pytest.raises(IndexFileError, match=message) as resealed:
        load_index(path)
    assert "\n" not in str(resealed.value)


@pytest.mark.parametrize(
    "reorder",
    [
        lambda ids: ids[::-1],
        lambda ids: [ids[i] for i in np.random.default_rng(0).permutation(len(ids))],
        _swap_first_two,
        lambda ids: [ids[1], *ids[1:]],
    ],
    ids=["reversed", "shuffled", "two swapped", "duplicated"],
)
def test_reordered_ids_are_refused(saved_index: Path, tmp_path: Path, reorder):
    path, meta = _copy(saved_index, tmp_path / "ids")
    meta["ids"] = reorder(meta["ids"])
    sidecar_path_of(path).write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match="ids do not match their checksum"):
        load_index(path)


def test_duplicated_ids_with_checksums_recomputed_are_refused_when_searched(saved_index, tmp_path):
    path, meta = _copy(saved_index, tmp_path / "duplicated")
    meta["ids"][0] = meta["ids"][1]
    sidecar_path_of(path).write_bytes(_reseal(meta))
    vindex = load_index(path)  # uniqueness is checked when the ids are first looked up
    with pytest.raises(IndexFileError, match="ids are not unique"):
        vindex.search(["item-3"], 2)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "unreadable"),
        ("{not json", "unreadable"),
        ("[1, 2]", "not a beatmap_fid index sidecar"),
        ('{"format": "beatmap_fid.index", "format": "x"}', "appears twice"),
        ('{"format": "beatmap_fid.index", "dim": NaN}', "not a JSON number"),
        ('{"format": "beatmap_fid.index", "dim": 1e999}', "not finite"),
        ("[" * 100_000 + "]" * 100_000, "unreadable"),
        ('{"format": "beatmap_fid.index", "format_version": 2}', "lacks"),
    ],
    ids=["empty", "broken", "a list", "repeated key", "NaN", "infinity", "deep", "bare"],
)
def test_malformed_sidecar_text_is_refused(saved_index, tmp_path, text, message):
    path, _ = _copy(saved_index, tmp_path / "text")
    sidecar_path_of(path).write_text(text)
    with pytest.raises(IndexFileError, match=message):
        load_index(path)


def test_an_index_file_of_another_store_with_the_same_size_is_refused(tmp_path):
    a = build_index(_store(tmp_path / "a.h5", _vectors(500, 8, 1)), family="flat", progress=False)
    b = build_index(_store(tmp_path / "b.h5", _vectors(500, 8, 2)), family="flat", progress=False)
    path_a, path_b = a.save(tmp_path / "a.faiss"), b.save(tmp_path / "b.faiss")
    assert path_a.stat().st_size == path_b.stat().st_size
    shutil.copyfile(path_b, path_a)
    with pytest.raises(IndexFileError, match="does not match the checksum in its sidecar"):
        load_index(path_a)
    with pytest.raises(IndexFileError, match="does not match the checksum"):
        load_index(path_a, mmap=True)
    # Skipping the hash (for files known intact) still checks the size, not the content.
    assert len(load_index(path_a, verify_file=False)) == 500


def test_the_sidecar_records_checksums_and_loads_memory_mapped(saved_index: Path):
    meta = read_sidecar(saved_index)
    assert meta["format_version"] == 2
    assert meta["checksums"]["index_file"] == file_checksum(saved_index)
    assert meta["checksums"]["ids"] == ids_checksum(meta["ids"])
    loaded = load_index(saved_index, mmap=True)
    assert loaded.search(["item-5"], 3).k == 3


def test_the_tree_checksum_hashes_every_leaf_in_parallel(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "_LEAF_BYTES", 1 << 16)
    monkeypatch.setattr(index_module, "_READ_BYTES", 1 << 12)
    data = np.random.default_rng(0).bytes(5 * (1 << 16) + 123)
    path = tmp_path / "blob"
    path.write_bytes(data)
    one = file_checksum(path, workers=1)
    assert file_checksum(path, workers=4) == one and len(one) == 64
    for offset in (0, 1 << 16, len(data) - 1):  # a flipped byte in any leaf shows
        flipped = bytearray(data)
        flipped[offset] ^= 1
        path.write_bytes(bytes(flipped))
        assert file_checksum(path) != one
    path.write_bytes(data + b"\0")  # so does a byte more
    assert file_checksum(path) != one
    path.write_bytes(b"")
    assert len(file_checksum(path)) == 64


def test_search_parameters_and_k_are_checked(saved_index: Path):
    vindex = load_index(saved_index)
    with pytest.raises(InputError, match="no search parameter 'efSearch'"):
        vindex.set_search_params(efSearch=32)
    with pytest.raises(InputError, match="nprobe must be"):
        vindex.set_search_params(nprobe=0)
    for k in (2.5, True, "3", None):
        with pytest.raises(InputError, match="whole number"):
            vindex.search(["item-1"], k)
    assert vindex.search(["item-1"], np.int64(2)).k == 2
    with pytest.raises(InputError, match="whole number"):
        build_index(_vectors(50, 4, 0), k=2.5, progress=False)


def test_tampered_sidecars_are_one_line_from_the_cli_under_a_gigabyte(saved_index, tmp_path):
    """Every tampered sidecar through ``beatmap-fid search``: exit 1, one line, no traceback;
    all of them in one process whose peak memory stays under 1 GB."""
    cases = []
    for name, (edit, _) in sorted(TAMPERS.items()):
        path, meta = _copy(saved_index, tmp_path / name.replace(" ", "_"))
        edit(meta)
        if "checksums" in meta:
            sidecar_path_of(path).write_bytes(_reseal(meta))
        else:
            sidecar_path_of(path).write_text(json.dumps(meta))
        cases.append(str(path))
    path, meta = _copy(saved_index, tmp_path / "reversed")
    meta["ids"] = meta["ids"][::-1]
    sidecar_path_of(path).write_text(json.dumps(meta))
    cases.append(str(path))
    path, meta = _copy(saved_index, tmp_path / "duplicated")
    meta["ids"][0] = meta["ids"][1]
    sidecar_path_of(path).write_bytes(_reseal(meta))
    cases.append(str(path))
    script = (
        "import contextlib, io, json, resource, sys\n"
        "from beatmap_fid.cli import main\n"
        "results = []\n"
        "for path in sys.argv[1:]:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        code = main(['search', path, 'item-3', '-k', '3'])\n"
        "    results.append((code, err.getvalue()))\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "for line in open('/proc/self/status'):  # this process's own peak (Linux)\n"
        "    if line.startswith('VmHWM:'):\n"
        "        peak = int(line.split()[1]) * 1024\n"
        "print(json.dumps({'results': results, 'peak': peak}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *cases],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["results"]) == len(cases)
    for case, (code, err) in zip(cases, report["results"]):
        lines = err.strip().splitlines()
        assert code == 1, (case, err)
        assert len(lines) == 1 and lines[0].startswith("beatmap-fid search: error: "), (case, err)
        assert "Traceback" not in err
    assert report["peak"] < 2**30, report["peak"]


# ----------------------------------------------------------------------------- extractor options


def test_search_by_file_rebuilds_the_extractor_with_the_store_options(synthetic_beatmaps, tmp_path):
    store = tmp_path / "no_audio.h5"
    embed_to_store(
        synthetic_beatmaps / "flow",
        "descriptors",
        store,
        progress=False,
        extractor_options={"use_audio": False},
    )
    with EmbeddingStore(store) as opened:
        assert opened.options == {"use_audio": False}
        assert opened.config["use_audio"] is False
    path = build_index(store, progress=False).save(tmp_path / "no_audio.faiss")
    vindex = load_index(path)
    assert vindex.provenance["options"] == {"use_audio": False}
    query = sorted((synthetic_beatmaps / "flow").rglob("*.osu"))[0]
    found = vindex.search([query], 1)
    assert found.query_ids[0].endswith("#0")
    assert found.ids[0, 0] == found.query_ids[0]  # the map's own window, at distance 0
    assert found.distances[0, 0] == pytest.approx(0.0, abs=1e-5)


def test_stores_keep_their_options_through_rewrites_and_merges(tmp_path):
    options = {"use_audio": False, "checkpoint": "/models/x"}
    path = tmp_path / "a.h5"
    with StoreWriter(path, "toy", {"k": 1}, 4, options=options) as writer:
        writer.append(["a", "b"], np.ones((2, 4), np.float32), fingerprints=["1" * 32, "1" * 32])
    with StoreWriter(path, "toy", {"k": 1}, 4) as writer:  # a superseded row: rewritten on close
        writer.append(["a"], np.zeros((1, 4), np.float32), fingerprints=["2" * 32])
    with EmbeddingStore(path) as store:
        assert len(store) == 2 and store.options == options
    merged = merge_stores([path], tmp_path / "merged.h5")
    with EmbeddingStore(merged) as store:
        assert store.options == options
    with StoreWriter(tmp_path / "none.h5", "toy", {"k": 1}, 4):
        pass
    with EmbeddingStore(tmp_path / "none.h5") as store:
        assert store.options is None
    with pytest.raises(InputError, match="options must be a dict"):
        StoreWriter(tmp_path / "bad.h5", "toy", {"k": 1}, 4, options=["x"])


def test_a_store_without_options_says_how_to_search_by_file(synthetic_beatmaps, tmp_path):
    from beatmap_fid.extractors.descriptors import DescriptorExtractor

    store = tmp_path / "direct.h5"  # built without build_extractor: no options recorded
    extractor = DescriptorExtractor(use_audio=False)
    embed_to_store(synthetic_beatmaps / "flow", extractor, store, progress=False)
    vindex = build_index(store, progress=False)
    query = sorted((synthetic_beatmaps / "flow").rglob("*.osu"))[0]
    with pytest.raises(ConfigMismatchError, match="does not record the options"):
        vindex.search([query], 1)
    found = vindex.search([query], 1, extractor_options={"use_audio": False})
    assert found.distances[0, 0] == pytest.approx(0.0, abs=1e-5)


def test_cli_search_by_file_over_a_store_with_options(synthetic_beatmaps, tmp_path, capsys):
    store, index = tmp_path / "s.h5", tmp_path / "s.faiss"
    folder = synthetic_beatmaps / "jumps"
    embed = ["embed", str(folder), "-o", str(store), "--option", "use_audio=false", "--quiet"]
    assert main(embed) == 0
    assert main(["index", str(store), "-o", str(index), "--quiet"]) == 0
    capsys.readouterr()
    query = sorted(folder.rglob("*.osu"))[0]
    assert main(["search", str(index), str(query), "-k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    first = result["queries"][0]
    assert first["neighbours"][0]["id"] == first["query"]
    # Options given on the command line go over the recorded ones: another config is refused.
    search = ["search", str(index), str(query), "--no-verify-file"]
    assert main([*search, "--option", "use_audio=true"]) == 1
    assert "config hash" in capsys.readouterr().err
    assert main([*search, "--option", "use_audio=false", "--json"]) == 0


def test_the_header_checksum_covers_the_options_and_repair_keeps_them(tmp_path):
    import hashlib

    import h5py

    from beatmap_fid.errors import StoreDamagedError
    from beatmap_fid.store import check_store

    plain = tmp_path / "plain.h5"
    with StoreWriter(plain, "toy", {"k": 1}, 4):
        pass
    with h5py.File(plain, "r") as file:  # without options: the checksum of format 2 as before
        fields = [2, "toy", file.attrs["config"], file.attrs["config_hash"], 4]
        before = hashlib.blake2b(json.dumps(fields).encode(), digest_size=8).hexdigest()
        assert file.attrs["header_checksum"] == before
    options = {"use_audio": False}
    path = tmp_path / "a.h5"
    with StoreWriter(path, "toy", {"k": 1}, 4, options=options) as writer:
        writer.append(["a", "b"], np.ones((2, 4), np.float32))
        writer.append(["c"], np.ones((1, 4), np.float32))
    for edit in ("changed", "removed"):
        edited = tmp_path / f"{edit}.h5"
        shutil.copyfile(path, edited)
        with h5py.File(edited, "r+") as file:
            if edit == "changed":
                file.attrs["options"] = json.dumps({"use_audio": True})
            else:
                del file.attrs["options"]
        with pytest.raises(StoreDamagedError, match="do not match their checksum"):
            EmbeddingStore(edited)
    with h5py.File(path, "r+") as file:  # damage the second batch's vectors
        file["vectors"][2] = np.zeros(4, np.float32)
    result = check_store(path, repair=True)
    assert result.dropped_rows == 1
    with EmbeddingStore(path) as store:
        assert list(store.ids) == ["a", "b"] and store.options == options
