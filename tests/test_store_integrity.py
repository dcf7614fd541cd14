"""Stores survive kills at any instant and say when their bytes were damaged: a seeded kill test
of an API writer, bit flips that `check` detects, and `check --repair`."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from beatmap_fid.cli import main
from beatmap_fid.errors import StoreDamagedError, StoreError
from beatmap_fid.store import EmbeddingStore, StoreWriter, check_store

EXTRACTOR, CONFIG, DIM, BATCH, N_BATCHES = "kill", {"test": "integrity"}, 16, 4, 60
KILLS = 200


def _batch(index: int) -> tuple[list[str], np.ndarray, list[str | None], list[int | None]]:
    """Batch ``index``: its first id repeats the previous batch's last (skipped on append)."""
    rng = np.random.default_rng(index)
    ids = [f"map {index // 3}.osu#{index % 3 * BATCH + row}" for row in range(BATCH)]
    if index:
        ids[0] = _batch_ids_last(index - 1)
    labels = [None if (index + row) % 3 == 0 else f"mapper {row}" for row in range(BATCH)]
    return ids, rng.standard_normal((BATCH, DIM)).astype(np.float32), labels, [index % 5] * BATCH


def _batch_ids_last(index: int) -> str:
    return f"map {index // 3}.osu#{index % 3 * BATCH + BATCH - 1}"


def _completed(index: int) -> list[tuple[str, str]]:
    """After every third batch a map is complete."""
    return [(f"map {index // 3}.osu", f"{index:032x}")] if index % 3 == 2 else []


def _write_all(path: Path) -> None:
    with StoreWriter(path, EXTRACTOR, CONFIG, DIM) as writer:
        for index in range(N_BATCHES):
            ids, vectors, labels, counts = _batch(index)
            writer.append(ids, vectors, labels, n_events=counts, completed=_completed(index))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("reference") / "reference.h5"
    started = time.perf_counter()
    _write_all(path)
    seconds = time.perf_counter() - started
    with EmbeddingStore(path) as store:
        return {
            "ids": store.ids.tolist(),
            "vectors": store.vectors(),
            "labels": store.labels.tolist(),
            "n_events": store.n_events.tolist(),
            "completed": store.completed_sources,
            "commits": store.commits[:, 0].tolist(),
            "seconds": seconds,
            "path": path,
        }


def _assert_committed_prefix(path: Path, reference: dict) -> int:
    """Every read of the store finishes, and it holds a prefix of whole committed batches."""
    with EmbeddingStore(path) as store:
        n = len(store)
        assert n == 0 or n in reference["commits"]
        assert store.ids.tolist() == reference["ids"][:n]
        np.testing.assert_array_equal(store.vectors(), reference["vectors"][:n])
        labels = store.labels
        assert (labels.tolist() if labels is not None else [""] * n) == reference["labels"][:n]
        if n > 1:
            np.testing.assert_allclose(
                store.statistics().mu, reference["vectors"][:n].mean(0), rtol=1e-6, atol=1e-6
            )
        assert set(store.completed_sources.items()) <= set(reference["completed"].items())
    return n


@pytest.mark.timeout(1200)
def test_kills_of_an_api_writer_never_lose_or_duplicate_a_row(tmp_path, reference) -> None:
    """At least 200 SIGKILLs at random instants of a writer appending small batches with
    labels (forked, so each restart is cheap): after every kill the store opens, every read
    finishes and `check` passes; each resume continues, and the finished store equals an
    uninterrupted run."""
    rng = random.Random(14)
    kills = stores = checks_failed = 0
    path = tmp_path / "store0.h5"
    while kills < KILLS:
        pid = os.fork()
        if pid == 0:  # the child: resume the store and write until done
            try:
                _write_all(path)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.5 * reference["seconds"]))  # each resume goes on
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status)
        kills += killed
        if not path.exists():  # killed before the store was created
            continue
        checked = check_store(path)
        if not checked.ok:  # not expected: counted, and the repair must restore the store
            checks_failed += 1
            check_store(path, repair=True)
        n = _assert_committed_prefix(path, reference)
        if not killed or n == len(reference["ids"]):  # finished: compare, then a new store
            _write_all(path)
            _assert_committed_prefix(path, reference)
            with EmbeddingStore(path) as store:
                assert store.ids.tolist() == reference["ids"]
                assert store.completed_sources == reference["completed"]
            stores += 1
            path = tmp_path / f"store{stores}.h5"
    _write_all(path)  # the last, interrupted store finishes exactly once too
    with EmbeddingStore(path) as store:
        assert store.ids.tolist() == reference["ids"]
        np.testing.assert_array_equal(store.vectors(), reference["vectors"])
    assert checks_failed == 0, f"{checks_failed} of {kills} kills left a store `check` refused"
    print(f"\n{kills} kills, {stores} stores finished, {checks_failed} needed a repair")


def _data_extents(path: Path) -> list[tuple[str, int, int]]:
    """(dataset, byte offset, byte count) of every committed byte of data in a store."""
    extents = []
    with EmbeddingStore(path) as store:
        n_rows, commits = len(store), store.commits
    n_sources = int(commits[-1, 1])
    with h5py.File(path, "r") as file:
        ends = {
            "ids_bytes": int(file["ids_ends"][n_rows - 1]),
            "labels_bytes": int(file["labels_ends"][n_rows - 1]),
            "sources_bytes": int(file["sources_ends"][n_sources - 1]),
        }
        used_rows = {"sources_ends": n_sources, "source_keys": n_sources, "commits": len(commits)}
        for name, dataset in file.items():
            row_bytes = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:]))
            committed = ends.get(name, used_rows.get(name, n_rows)) * row_bytes
            if dataset.chunks is None:
                extents.append((name, dataset.id.get_offset(), dataset.id.get_storage_size()))
                continue
            chunk_bytes = dataset.chunks[0] * row_bytes
            for index in range(dataset.id.get_num_chunks()):
                info = dataset.id.get_chunk_info(index)
                start = info.chunk_offset[0] * row_bytes
                size = min(info.size, committed - start)
                if size > 0:
                    extents.append((name, info.byte_offset, min(size, chunk_bytes)))
    return extents


def _flipped_copy(source: Path, target: Path, offset: int, bit: int) -> None:
    shutil.copy(source, target)
    with open(target, "r+b") as file:
        file.seek(offset)
        value = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([value ^ (1 << bit)]))


def _reads_identically(path: Path, reference: dict) -> bool:
    """True when the store reads exactly as the reference; StoreError when it refuses."""
    with EmbeddingStore(path) as store:
        same = store.ids.tolist() == reference["ids"]
        same &= bool(np.array_equal(store.vectors(), reference["vectors"]))
        same &= store.labels.tolist() == reference["labels"]
        same &= store.n_events.tolist() == reference["n_events"]
        same &= store.completed_sources == reference["completed"]
        same &= bool(
            np.array_equal(store.statistics().mu, reference["vectors"].astype(np.float64).mean(0))
        )
    return same


def test_every_flipped_bit_of_committed_data_is_detected(tmp_path, reference) -> None:
    rng = random.Random(7)
    extents = _data_extents(reference["path"])
    assert {name for name, _, _ in extents} >= {"vectors", "ids_bytes", "commits", "n_commits"}
    for trial in range(40):
        name, start, size = extents[trial % len(extents)]
        copy = tmp_path / f"flip{trial}.h5"
        _flipped_copy(reference["path"], copy, start + rng.randrange(size), rng.randrange(8))
        result = check_store(copy)
        assert not result.ok, f"a flip in {name} went unnoticed"
        with pytest.raises(StoreError):  # never silently read
            _reads_identically(copy, reference)


def test_a_flipped_bit_anywhere_is_detected_or_harmless(tmp_path, reference) -> None:
    rng = random.Random(8)
    size = reference["path"].stat().st_size
    outcomes = {"detected": 0, "harmless": 0}
    for trial in range(40):
        copy = tmp_path / f"anywhere{trial}.h5"
        _flipped_copy(reference["path"], copy, rng.randrange(size), rng.randrange(8))
        try:
            detected = not check_store(copy).ok
        except StoreDamagedError:
            detected = True
        if detected:
            outcomes["detected"] += 1
            continue
        try:
            assert _reads_identically(copy, reference), "a flip changed what the store reads"
        except StoreError:
            pass  # refused on read: never used silently either
        outcomes["harmless"] += 1
    assert outcomes["detected"] > 0


def test_repair_keeps_the_intact_batches_and_reports_what_it_dropped(
    tmp_path, reference, capsys
) -> None:
    copy = tmp_path / "damaged.h5"
    start = next(start for name, start, _ in _data_extents(reference["path"]) if name == "vectors")
    _flipped_copy(reference["path"], copy, start + 4 * DIM * 9, 3)  # row 9: batch 3
    with pytest.raises(StoreDamagedError, match=r"check .* --repair"):
        with EmbeddingStore(copy) as store:
            store.statistics()
    ids_damaged = tmp_path / "ids.h5"  # a writer reads the columns: damaged ids stop it
    ids_at = next(
        start for name, start, _ in _data_extents(reference["path"]) if name == "ids_bytes"
    )
    _flipped_copy(reference["path"], ids_damaged, ids_at + 5, 1)
    with pytest.raises(StoreDamagedError, match="--repair"):
        StoreWriter(ids_damaged, EXTRACTOR, CONFIG, DIM)
    assert main(["check", str(copy)]) == 1
    assert "batch 3 of" in capsys.readouterr().out
    assert main(["check", str(copy), "--repair", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["repaired"] and report["dropped_batches"] == 1
    assert report["dropped_rows"] == 3  # batch 3 held 3 new rows
    assert Path(report["backup"]).exists()
    assert check_store(copy).ok
    with EmbeddingStore(copy) as store:
        kept = store.ids.tolist()
    lost = [i for i in reference["ids"] if i not in kept]
    assert len(lost) == 3
    _write_all(copy)  # a resume embeds exactly what was dropped
    with EmbeddingStore(copy) as store:
        assert sorted(store.ids.tolist()) == sorted(reference["ids"])


def test_a_tiny_file_with_the_hdf5_signature_is_refused_in_one_line(tmp_path) -> None:
    for size in range(8, 14):
        path = tmp_path / f"tiny{size}.h5"
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * (size - 8))
        with pytest.raises(StoreError, match="truncated or corrupt") as caught:
            EmbeddingStore(path)
        assert "\n" not in str(caught.value)
