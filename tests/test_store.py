"""HDF5 embedding store: round trips, chunking, block reads, resume, locking, merge, kills."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from beatmap_fid.errors import (
    ConfigMismatchError,
    DimensionMismatchError,
    InputError,
    NonFiniteError,
    StoreError,
    StoreFullError,
    StoreLockedError,
)
from beatmap_fid.extractors.base import config_hash
from beatmap_fid.store import (
    CHUNK_BYTES,
    FORMAT_VERSION,
    EmbeddingStore,
    StoreWriter,
    column_checksum,
    lookup3,
    merge_stores,
    open_store,
    superblock_eoa_field,
    vector_checksum,
)

CHILD_SCRIPT = Path(__file__).with_name("store_writer_child.py")
REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"model": "tiny", "layers": [1, 2], "scale": 0.5}


def _load_child_module():
    spec = importlib.util.spec_from_file_location("store_writer_child", CHILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


child = _load_child_module()


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _write(path: Path, ids, vectors, labels=None, extractor="tiny", config=CONFIG) -> None:
    with StoreWriter(path, extractor, config, vectors.shape[1]) as writer:
        writer.append(ids, vectors, labels)


@pytest.mark.parametrize("dim", [1, 7, 300])
def test_round_trip_keeps_ids_vectors_labels_and_attributes(tmp_path, dim):
    path = tmp_path / "store.h5"
    first = _vectors(5, dim, seed=1)
    second = _vectors(4, dim, seed=2) * 1e30  # large but finite in float32
    first_ids = ["ビートマップ/1", "naïve map", "emoji 🎵", "a#0", "a#1"]
    second_ids = ["b", "c", "d", "e"]
    with StoreWriter(path, "tiny", CONFIG, dim) as writer:
        assert writer.append(first_ids, first.astype(np.float64)) == 5
        assert writer.append(second_ids, second, ["x", None, "ラベル", ""]) == 4
        assert len(writer) == 9

    with open_store(path) as store:
        assert len(store) == 9
        assert store.dim == dim
        assert store.extractor == "tiny"
        assert store.config == CONFIG
        assert store.config_hash == config_hash(CONFIG)
        assert store.format_version == FORMAT_VERSION
        assert isinstance(store.library_version, str) and store.library_version
        assert store.ids.tolist() == first_ids + second_ids
        assert all(type(item_id) is str for item_id in store.ids)
        assert store.labels.tolist() == [""] * 5 + ["x", "", "ラベル", ""]
        vectors = store.vectors()
        assert vectors.dtype == np.float32
        np.testing.assert_array_equal(vectors, np.concatenate([first, second]))


def test_reading_a_cleanly_closed_store_leaves_it_byte_identical(tmp_path):
    path = tmp_path / "store.h5"
    _write(path, ["a", "b"], _vectors(2, 8), ["x", "y"])
    before = path.read_bytes()
    header = before[:64]
    at, size = superblock_eoa_field(header)
    assert int.from_bytes(header[at : at + size], "little") == len(before)
    with EmbeddingStore(path) as store:
        store.vectors()
        store.ids  # noqa: B018
    assert path.read_bytes() == before


def test_labels_absent_until_a_row_has_one(tmp_path):
    path = tmp_path / "store.h5"
    with StoreWriter(path, "tiny", CONFIG, 3) as writer:
        writer.append(["a", "b"], _vectors(2, 3), [None, ""])
        with EmbeddingStore(path, _lock_held=True) as store:
            assert store.labels is None
        writer.append(["c"], _vectors(1, 3), ["late"])
    with EmbeddingStore(path) as store:
        assert store.labels.tolist() == ["", "", "late"]


def test_event_counts_are_stored_once_some_row_has_one_and_survive_resume_and_merge(tmp_path):
    path = tmp_path / "store.h5"
    with StoreWriter(path, "tiny", CONFIG, 3) as writer:
        writer.append(["a", "b"], _vectors(2, 3))
    with EmbeddingStore(path) as store:
        assert store.n_events is None
    with StoreWriter(path, "tiny", CONFIG, 3) as writer:
        writer.append(["c", "d", "a"], _vectors(3, 3, seed=1), n_events=[0, None, 9])
        writer.append(["e"], _vectors(1, 3, seed=2))
        writer.append(["f"], _vectors(1, 3, seed=3), n_events=[np.int64(4)])
        with pytest.raises(InputError, match="non-negative ints"):
            writer.append(["g"], _vectors(1, 3), n_events=[-1])
        with pytest.raises(InputError, match="2 event counts for 1 ids"):
            writer.append(["g"], _vectors(1, 3), n_events=[1, 2])
    with EmbeddingStore(path) as store:
        assert store.ids.tolist() == ["a", "b", "c", "d", "e", "f"]
        assert store.n_events.tolist() == [-1, -1, 0, -1, -1, 4]
        assert store.n_events.dtype == np.int32
    other = tmp_path / "other.h5"
    _write(other, ["x"], _vectors(1, 3, seed=4))
    merged = merge_stores([other, path], tmp_path / "merged.h5")
    with EmbeddingStore(merged) as store:
        assert store.n_events.tolist() == [-1, -1, -1, 0, -1, -1, 4]


@pytest.mark.parametrize("dim", [1, 100, 2048, 300_000])
def test_vectors_chunks_are_whole_rows_of_about_one_mib(tmp_path, dim):
    path = tmp_path / "store.h5"
    with StoreWriter(path, "tiny", CONFIG, dim):
        pass
    with h5py.File(path, "r") as file:
        vectors = file["vectors"]
        rows, width = vectors.chunks
        assert width == dim
        assert vectors.maxshape == (None, dim)
        assert vectors.compression is None
        assert vectors.dtype == np.float32
        chunk_bytes = rows * dim * 4
        if rows > 1:
            assert CHUNK_BYTES / 2 < chunk_bytes <= CHUNK_BYTES
        else:
            assert dim * 4 >= CHUNK_BYTES / 2
        assert file["ids_bytes"].dtype == np.uint8  # UTF-8 bytes, no variable-length data
        assert file["ids_ends"].dtype == np.int64


@pytest.fixture(scope="module")
def block_store(tmp_path_factory):
    """A store whose chunks hold 256 rows, with 1000 rows (not a whole number of chunks)."""
    path = tmp_path_factory.mktemp("blocks") / "store.h5"
    vectors = _vectors(1000, 1024, seed=3)
    _write(path, [f"row{i}" for i in range(1000)], vectors)
    return path, vectors


@pytest.mark.parametrize("block_rows", [None, 1, 100, 256, 600, 5000])
def test_iter_blocks_covers_every_row_once_in_order(block_store, block_rows):
    path, vectors = block_store
    with EmbeddingStore(path) as store:
        assert store.chunk_rows == 256
        blocks = list(store.iter_blocks(block_rows))
    starts = [start for start, _ in blocks]
    expected_starts = np.cumsum([0] + [len(block) for _, block in blocks[:-1]]).tolist()
    assert starts == expected_starts
    np.testing.assert_array_equal(np.concatenate([block for _, block in blocks]), vectors)
    if block_rows is None or block_rows >= 256:
        assert all(start % 256 == 0 for start in starts)
    else:
        assert all(len(block) <= block_rows for _, block in blocks)


def test_vectors_reads_slices_indices_and_masks(block_store):
    path, vectors = block_store
    rng = np.random.default_rng(4)
    index = rng.integers(-1000, 1000, size=300)  # unsorted, repeats, negative
    mask = rng.random(1000) < 0.3
    with EmbeddingStore(path) as store:
        np.testing.assert_array_equal(store.vectors(index), vectors[index])
        np.testing.assert_array_equal(store.vectors(index.tolist()), vectors[index])
        np.testing.assert_array_equal(store.vectors(mask), vectors[mask])
        np.testing.assert_array_equal(store.vectors(slice(10, 900, 7)), vectors[10:900:7])
        np.testing.assert_array_equal(store.vectors(slice(-5, None)), vectors[-5:])
        np.testing.assert_array_equal(store.vectors(-3), vectors[-3])
        assert store.vectors(slice(5, 5)).shape == (0, 1024)
        assert store.vectors([]).shape == (0, 1024)
        with pytest.raises(InputError, match="out of range"):
            store.vectors([1000])
        with pytest.raises(InputError):
            store.vectors(np.ones(10, dtype=bool))


def test_statistics_equal_numpy_mean_and_covariance(tmp_path):
    pytest.importorskip("beatmap_fid.stats", reason="beatmap_fid.stats is not written yet")
    path = tmp_path / "store.h5"
    vectors = _vectors(700, 64, seed=5) * 3.0 + 10.0
    _write(path, [str(i) for i in range(700)], vectors)
    data = vectors.astype(np.float64)
    with EmbeddingStore(path) as store:
        for block_rows in (None, 50):
            stats = store.statistics(block_rows)
            assert stats.n == 700
            np.testing.assert_allclose(stats.mu, data.mean(axis=0), rtol=0, atol=1e-10)
            np.testing.assert_allclose(stats.sigma, np.cov(data, rowvar=False), atol=1e-9)


def test_resume_skips_ids_already_stored_and_repeats_in_a_batch(tmp_path):
    path = tmp_path / "store.h5"
    vectors = _vectors(6, 4)
    _write(path, ["a", "b", "c"], vectors[:3])
    with StoreWriter(path, "tiny", CONFIG, 4) as writer:
        assert writer.existing_ids == {"a", "b", "c"}
        assert "b" in writer and "z" not in writer
        assert len(writer) == 3
        written = writer.append(["b", "d", "d", "e", "a"], vectors[1:6])
        assert written == 2
        assert writer.append(["a", "d"], vectors[:2]) == 0
        assert len(writer) == 5
    with EmbeddingStore(path) as store:
        assert store.ids.tolist() == ["a", "b", "c", "d", "e"]
        np.testing.assert_array_equal(store.vectors(), vectors[[0, 1, 2, 2, 4]])


def test_reopening_with_another_config_or_extractor_is_refused(tmp_path):
    path = tmp_path / "store.h5"
    _write(path, ["a"], _vectors(1, 4))
    other = dict(CONFIG, scale=0.25)
    with pytest.raises(ConfigMismatchError) as error:
        StoreWriter(path, "tiny", other, 4)
    assert config_hash(CONFIG) in str(error.value)
    assert config_hash(other) in str(error.value)
    with pytest.raises(ConfigMismatchError, match="'other'"):
        StoreWriter(path, "other", CONFIG, 4)
    with StoreWriter(path, "tiny", dict(reversed(CONFIG.items())), 4) as writer:
        assert len(writer) == 1  # key order is not part of the config


def test_dimension_and_batch_validation(tmp_path):
    path = tmp_path / "store.h5"
    _write(path, ["a"], _vectors(1, 4))
    with pytest.raises(DimensionMismatchError, match="dimension 4"):
        StoreWriter(path, "tiny", CONFIG, 5)
    with StoreWriter(path, "tiny", CONFIG, 4) as writer:
        with pytest.raises(DimensionMismatchError):
            writer.append(["b"], _vectors(1, 5))
        with pytest.raises(InputError, match="one vector per id"):
            writer.append(["b", "c"], _vectors(1, 4))
        with pytest.raises(InputError):
            writer.append(["b"], _vectors(1, 4)[0])
        with pytest.raises(InputError):
            writer.append([b"bytes-id"], _vectors(1, 4))
        with pytest.raises(InputError):
            writer.append(["b"], np.array([["x"] * 4]))
        bad = _vectors(3, 4)
        bad[1, 2] = np.nan
        with pytest.raises(NonFiniteError, match="nan-row"):
            writer.append(["ok", "nan-row", "ok2"], bad)
        with pytest.raises(NonFiniteError):  # finite float64, infinite as float32
            writer.append(["huge"], np.full((1, 4), 1e300))
        assert len(writer) == 1
    with EmbeddingStore(path) as store:
        assert store.ids.tolist() == ["a"]


LOCK_PROBE = """
import sys
from beatmap_fid.errors import StoreLockedError
from beatmap_fid.store import EmbeddingStore, StoreWriter
try:
    if sys.argv[2] == "write":
        StoreWriter(sys.argv[1], "tiny", {}, 4).close()
    else:
        EmbeddingStore(sys.argv[1]).close()
    print("OPENED")
except StoreLockedError as exc:
    print("LOCKED", exc)
"""


def _probe(path: Path, mode: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", LOCK_PROBE, str(path), mode],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_second_writer_in_another_process_is_refused_with_the_pid(tmp_path):
    path = tmp_path / "store.h5"
    with StoreWriter(path, "tiny", {}, 4) as writer:
        writer.append(["a"], _vectors(1, 4))
        assert Path(f"{path}.lock").read_text().strip() == str(os.getpid())
        output = _probe(path, "write")
        assert output.startswith("LOCKED") and f"pid {os.getpid()}" in output
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            StoreWriter(path, "tiny", {}, 4)  # also within one process
    assert not Path(f"{path}.lock").exists()
    with StoreWriter(path, "tiny", {}, 4) as writer:
        assert len(writer) == 1


def test_readers_and_writers_of_another_process_exclude_each_other(tmp_path):
    path = tmp_path / "store.h5"
    _write(path, ["a"], _vectors(1, 4), config={})
    with EmbeddingStore(path):
        assert _probe(path, "write").startswith("LOCKED")
        assert _probe(path, "read").startswith("OPENED")  # readers share
    with StoreWriter(path, "tiny", {}, 4):
        output = _probe(path, "read")
        assert output.startswith("LOCKED") and f"pid {os.getpid()}" in output


def _foreign_hdf5(path: Path) -> None:
    with h5py.File(path, "w") as file:
        file.create_dataset("data", data=np.arange(10))


def _newer_format(path: Path) -> None:
    _write(path, ["a"], _vectors(1, 4))
    with h5py.File(path, "r+") as file:
        file.attrs["format_version"] = FORMAT_VERSION + 1


def _truncated(path: Path) -> None:
    _write(path, [f"id{i}" for i in range(300)], _vectors(300, 256))
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.truncate(size // 2)


def _missing_dataset(path: Path) -> None:
    _write(path, ["a"], _vectors(1, 4))
    with h5py.File(path, "r+") as file:
        del file["ids_ends"]


def _count_beyond_rows(path: Path) -> None:
    _write(path, ["a"], _vectors(1, 4))
    with h5py.File(path, "r+") as file:
        file["commits"][0, 0] = 5


def _count_damaged(path: Path) -> None:
    _write(path, ["a"], _vectors(1, 4))
    with h5py.File(path, "r+") as file:
        file["n_commits"][0] = 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: None, "no embedding store"),
        (lambda path: path.mkdir(), "not a file"),
        (lambda path: path.write_text("id,vector\na,1\n"), "not an HDF5 file"),
        (lambda path: path.write_bytes(b""), "not an HDF5 file"),
        (_foreign_hdf5, "not a beatmap_fid embedding store"),
        (_newer_format, "newer than the version"),
        (_truncated, "truncated or corrupt"),
        (_missing_dataset, "'ids_ends' is missing"),
        (_count_beyond_rows, "are committed"),
        (_count_damaged, "commit count is unreadable"),
    ],
    ids=[
        "missing",
        "directory",
        "text",
        "empty",
        "foreign",
        "newer",
        "truncated",
        "no-ids",
        "count",
        "damaged-count",
    ],
)
def test_unusable_files_raise_store_error(tmp_path, make, message):
    path = tmp_path / "store.h5"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(StoreError, match=message):
        EmbeddingStore(path)
    if path.exists():
        with pytest.raises(StoreError):
            StoreWriter(path, "tiny", CONFIG, 4)
        if before is not None:
            assert path.read_bytes() == before  # a writer never repairs a file it rejects
    assert not Path(f"{path}.lock").exists()


def test_merge_deduplicates_ids_first_occurrence_wins(tmp_path):
    one, two, three = tmp_path / "1.h5", tmp_path / "2.h5", tmp_path / "3.h5"
    a, b, c = _vectors(4, 6, seed=7), _vectors(3, 6, seed=8), _vectors(2, 6, seed=9)
    _write(one, ["p", "q", "r", "s"], a)
    _write(two, ["r", "t", "p"], b, ["lab-r", "lab-t", "lab-p"])
    _write(three, ["u", "t"], c)
    merged = merge_stores([one, two, three], tmp_path / "out" / "merged.h5")
    with EmbeddingStore(merged) as store:
        assert store.ids.tolist() == ["p", "q", "r", "s", "t", "u"]
        np.testing.assert_array_equal(store.vectors(), np.concatenate([a, b[1:2], c[:1]]))
        assert store.labels.tolist() == ["", "", "", "", "lab-t", ""]
        assert store.config_hash == config_hash(CONFIG)
        assert store.config == CONFIG
    with pytest.raises(StoreError, match="already exists"):
        merge_stores([one], merged)


def test_merge_refuses_shards_of_another_config_or_dimension(tmp_path):
    one, other, wide = tmp_path / "1.h5", tmp_path / "2.h5", tmp_path / "3.h5"
    _write(one, ["a"], _vectors(1, 4))
    _write(other, ["b"], _vectors(1, 4), config={"model": "big"})
    _write(wide, ["c"], _vectors(1, 5))
    with pytest.raises(ConfigMismatchError, match=config_hash({"model": "big"})):
        merge_stores([one, other], tmp_path / "m1.h5")
    with pytest.raises(DimensionMismatchError):
        merge_stores([one, wide], tmp_path / "m2.h5")
    assert not (tmp_path / "m1.h5").exists() and not (tmp_path / "m2.h5").exists()


# The kill test: a child process appends batches and is SIGKILLed at random moments.
N_BATCHES, BATCH_SIZE, DIM = 60, 64, 48


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    """The uninterrupted run, and the committed row count after each of its batches."""
    path = tmp_path_factory.mktemp("reference") / "reference.h5"
    counts = []
    with StoreWriter(path, child.EXTRACTOR, child.CONFIG, DIM) as writer:
        for index in range(N_BATCHES):
            writer.append(*child.make_batch(index, BATCH_SIZE, DIM))
            counts.append(len(writer))
    with EmbeddingStore(path) as store:
        return store.ids, store.vectors(), store.labels, counts


def _assert_prefix_of_reference(path: Path, reference, at_least_batches: int) -> int:
    ids, vectors, labels, counts = reference
    with EmbeddingStore(path) as store:
        n = len(store)
        assert n in counts, f"{n} rows is not a whole number of batches"
        assert n >= counts[at_least_batches - 1]
        assert store.ids.tolist() == ids[:n].tolist()
        np.testing.assert_array_equal(store.vectors(), vectors[:n])
        stored_labels = store.labels
        if stored_labels is None:
            assert not any(labels[:n])
        else:
            assert stored_labels.tolist() == labels[:n].tolist()
        assert len(store.fingerprints) == n
        if n > 1:
            np.testing.assert_allclose(store.statistics().mu, vectors[:n].mean(0), atol=1e-6)
    return n


def _assert_equals_reference(path: Path, reference) -> None:
    ids, vectors, labels, _ = reference
    with EmbeddingStore(path) as store:
        assert store.ids.tolist() == ids.tolist()
        np.testing.assert_array_equal(store.vectors(), vectors)
        assert store.labels.tolist() == labels.tolist()


def _start_child(path: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(CHILD_SCRIPT), str(path), str(N_BATCHES), str(BATCH_SIZE)]
    return subprocess.Popen(
        [*command, str(DIM), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    )


KILLS = 24


@pytest.mark.timeout(900)
def test_killed_writer_keeps_completed_batches_and_resume_matches_uninterrupted_run(
    tmp_path, reference_store
):
    """SIGKILL at random moments while batches with labels are appended: every read of the
    killed store finishes, and a resume leaves each item exactly once."""
    rng = random.Random(20240611)
    for trial in range(KILLS):
        path = tmp_path / f"killed{trial}.h5"
        kill_after = rng.randrange(1, N_BATCHES - 5)
        process = _start_child(path, "--paced")
        process.stdin.write(b"x" * (kill_after + 3))  # it may start 3 batches more, no more
        process.stdin.flush()
        for line in process.stdout:
            if line == f"done {kill_after - 1}\n".encode():
                break
        time.sleep(rng.random() * 0.004)  # land anywhere inside one of the next batches
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdin.close()
        process.stdout.close()
        assert process.returncode == -signal.SIGKILL

        n = _assert_prefix_of_reference(path, reference_store, at_least_batches=kill_after)
        assert n <= reference_store[3][kill_after + 2]
        child.write_batches(str(path), N_BATCHES, BATCH_SIZE, DIM)  # the lock died with it
        _assert_equals_reference(path, reference_store)


def _stale_allocation(path: Path) -> None:
    """Lower the superblock's end of allocation below the file's end, checksum kept valid:
    what a kill leaves when HDF5 grew the file but had not rewritten its superblock yet."""
    header = bytearray(path.read_bytes()[:64])
    at, size = superblock_eoa_field(bytes(header))
    header[at : at + size] = (path.stat().st_size - 4096).to_bytes(size, "little")
    end = 12 + 4 * size
    header[end : end + 4] = lookup3(bytes(header[:end])).to_bytes(4, "little")
    with open(path, "r+b") as file:
        file.write(header)


@pytest.mark.parametrize("stale_superblock", [False, True], ids=["flushed", "stale-superblock"])
def test_writer_killed_between_flushing_rows_and_committing_them(
    tmp_path, reference_store, stale_superblock
):
    path = tmp_path / "killed.h5"
    process = _start_child(path, "--die-before-commit", "3")
    process.communicate(timeout=60)  # stdin closed at once: the child runs unpaced
    assert process.returncode == -signal.SIGKILL
    assert path.read_bytes()[11] != 0  # the superblock still says "open for writing"
    if stale_superblock:
        _stale_allocation(path)
        with pytest.raises(OSError):  # HDF5 alone refuses the file
            h5py.File(path, "r", locking=False)
    n = _assert_prefix_of_reference(path, reference_store, at_least_batches=3)
    assert n == reference_store[3][2]  # batch 3 reached the file, but only batches 0-2 count
    with h5py.File(path, "r") as file:
        assert file["vectors"].shape[0] > n
    with StoreWriter(path, child.EXTRACTOR, child.CONFIG, DIM) as writer:
        assert len(writer) == n
    child.write_batches(str(path), N_BATCHES, BATCH_SIZE, DIM)
    _assert_equals_reference(path, reference_store)
    with h5py.File(path, "r") as file:
        assert json.loads(file.attrs["config"]) == child.CONFIG
        assert file["vectors"].shape[0] == len(reference_store[0])


# -- fingerprints, superseded rows, older stores, full disks ------------------------------

PRINT_A, PRINT_B = "a" * 32, "b" * 32


def test_a_changed_fingerprint_supersedes_the_row_and_closing_drops_the_old_one(tmp_path):
    path = tmp_path / "store.h5"
    first, second = _vectors(3, 4, seed=1), _vectors(3, 4, seed=2)
    with StoreWriter(path, "tiny", CONFIG, 4) as writer:
        writer.append(["x", "y", "z"], first, ["l", "l", "l"], [PRINT_A] * 3)
    with StoreWriter(path, "tiny", CONFIG, 4) as writer:
        assert writer.holds("y", PRINT_A) and not writer.holds("y", PRINT_B)
        assert writer.append(["x", "y"], second[:2], None, [PRINT_A, PRINT_B]) == 1
        assert len(writer) == 4  # both rows of "y" until the writer closes
    with EmbeddingStore(path) as store:
        assert store.ids.tolist() == ["x", "z", "y"]
        assert store.fingerprints.tolist() == [PRINT_A, PRINT_A, PRINT_B]
        np.testing.assert_array_equal(store.vectors(), np.stack([first[0], first[2], second[1]]))
        assert store.labels.tolist() == ["l", "l", ""]


def test_retain_drops_rows_of_other_ids_when_the_writer_closes(tmp_path):
    path = tmp_path / "store.h5"
    vectors = _vectors(4, 3)
    with StoreWriter(path, "tiny", CONFIG, 3) as writer:
        writer.append(["a", "b", "c", "d"], vectors)
    with StoreWriter(path, "tiny", CONFIG, 3) as writer:
        writer.retain(["b", "d"])
    with EmbeddingStore(path) as store:
        assert store.ids.tolist() == ["b", "d"]
        np.testing.assert_array_equal(store.vectors(), vectors[[1, 3]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.h5"]


def test_fingerprints_are_checked(tmp_path):
    with StoreWriter(tmp_path / "s.h5", "tiny", CONFIG, 2) as writer:
        with pytest.raises(InputError, match="hexadecimal"):
            writer.append(["a"], _vectors(1, 2), None, ["not-a-fingerprint"])
        with pytest.raises(InputError, match="1 fingerprints for 2 ids"):
            writer.append(["a", "b"], _vectors(2, 2), None, [PRINT_A])
        with pytest.raises(InputError, match="valid Unicode"):
            writer.append(["bad \udc80 id"], _vectors(1, 2))


def _format_1_store(path: Path, ids, vectors, labels) -> None:
    """A store in the layout of format version 1 (variable-length strings, ``n_rows``)."""
    with h5py.File(path, "w", libver=("earliest", "v110")) as file:
        file.attrs.update(
            format_version=1,
            extractor="tiny",
            config=json.dumps(CONFIG, sort_keys=True, separators=(",", ":")),
            config_hash=config_hash(CONFIG),
            library_version="0.1.0",
            dim=vectors.shape[1],
            n_rows=len(ids),
        )
        file.create_dataset("vectors", data=vectors, maxshape=(None, vectors.shape[1]))
        string = h5py.string_dtype("utf-8")
        file.create_dataset("ids", data=np.array(ids, object), dtype=string, maxshape=(None,))
        file.create_dataset("labels", data=np.array(labels, object), dtype=string, maxshape=(None,))


def test_a_format_1_store_is_read_as_is_and_rewritten_when_a_writer_opens_it(tmp_path):
    path = tmp_path / "old.h5"
    vectors = _vectors(3, 5)
    _format_1_store(path, ["a", "ビ", "c"], vectors, ["x", "", "z"])
    with EmbeddingStore(path) as store:
        assert store.format_version == 1 and len(store) == 3
        assert store.ids.tolist() == ["a", "ビ", "c"]
        assert store.labels.tolist() == ["x", "", "z"]
        assert store.fingerprints.tolist() == ["", "", ""]
        np.testing.assert_array_equal(store.vectors(), vectors)
    with StoreWriter(path, "tiny", CONFIG, 5) as writer:
        assert "ビ" in writer and len(writer) == 3
        writer.append(["d"], _vectors(1, 5, seed=9), ["w"])
    with EmbeddingStore(path) as store:
        assert store.format_version == FORMAT_VERSION
        assert store.ids.tolist() == ["a", "ビ", "c", "d"]
        assert store.labels.tolist() == ["x", "", "z", "w"]
        np.testing.assert_array_equal(store.vectors()[:3], vectors)


def test_commits_record_checksums_of_each_batch(tmp_path):
    path = tmp_path / "store.h5"
    batches = [(["a", "b"], _vectors(2, 3, 1), ["x", ""]), (["c"], _vectors(1, 3, 2), None)]
    with StoreWriter(path, "tiny", CONFIG, 3) as writer:
        for ids, vectors, labels in batches:
            writer.append(ids, vectors, labels, completed=[("src", PRINT_A)] if labels else ())
    with EmbeddingStore(path) as store:
        commits = store.commits
        assert store.completed_sources == {"src": PRINT_A}
    assert commits[:, :2].tolist() == [[2, 1], [3, 1]]
    for (ids, vectors, labels), row, sources in zip(batches, commits, (["src"], [])):
        labels = labels or [""] * len(ids)
        blank, keys = [""] * len(ids), [PRINT_A] * len(sources)
        assert row[2] == vector_checksum(vectors)
        assert row[3] == column_checksum(ids, labels, blank, [-1] * len(ids), sources, keys)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (skipped where this process may not mount one)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def _fill_batches(path: Path, n_batches: int) -> None:
    with StoreWriter(path, "tiny", CONFIG, 512) as writer:
        for index in range(n_batches):
            ids = [f"{index}-{row}" for row in range(256)]
            labels = [f"label {row % 7}" for row in range(256)]
            writer.append(ids, _vectors(256, 512, seed=index), labels)


def test_a_full_disk_stops_with_one_error_and_the_store_resumes(small_disk):
    path = small_disk / "store.h5"
    with pytest.raises(StoreFullError, match="every committed row is kept") as caught:
        _fill_batches(path, 40)  # 40 batches of 512 KiB do not fit in 16 MiB
    assert "\n" not in str(caught.value)
    with EmbeddingStore(path) as store:
        n = len(store)
        assert 0 < n < 40 * 256 and n % 256 == 0
        assert store.statistics().n == n
        assert store.labels[-1] == "label 3"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    _fill_batches(path, 40)
    with EmbeddingStore(path) as store:
        assert len(store) == len(set(store.ids)) == 40 * 256
        expected = np.concatenate([_vectors(256, 512, seed=i) for i in range(40)])
        np.testing.assert_array_equal(store.vectors(), expected)


def test_a_full_disk_is_simulated_where_no_tmpfs_can_be_mounted(tmp_path, monkeypatch):
    path = tmp_path / "store.h5"
    _fill_batches(path, 2)

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(StoreFullError, match=r"no space left for store\.h5"):
        _fill_batches(path, 4)
    monkeypatch.undo()
    with EmbeddingStore(path) as store:
        assert len(store) == 2 * 256
    _fill_batches(path, 4)
    with EmbeddingStore(path) as store:
        assert len(store) == len(set(store.ids)) == 4 * 256
