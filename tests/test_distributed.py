"""Embedding and indexing on a local Ray cluster started by this module (two CPUs): equal to
the single-process run, a killed worker, an interrupted run resumed, the on-disk index."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'beatmap_fid[ray]')")

from distributed_helpers import PacedDescriptors  # noqa: E402

from beatmap_fid.api import compute_fid, embed_to_store  # noqa: E402
from beatmap_fid.beatmap.synthetic import write_synthetic_set  # noqa: E402
from beatmap_fid.cli import main  # noqa: E402
from beatmap_fid.distributed import embed_sharded, held_rows  # noqa: E402
from beatmap_fid.errors import WorkerError  # noqa: E402
from beatmap_fid.shards import SHARD_DIR, finalize_shards  # noqa: E402
from beatmap_fid.store import EmbeddingStore, StoreWriter, open_store  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
N_MAPS = 12

pytestmark = pytest.mark.timeout(900)


def start_cluster() -> None:
    """A local Ray cluster of two CPUs: starting one takes 10-20 s on two cores."""
    path = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray cluster for the module (restarted where a test needs a new driver)."""
    start_cluster()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    write_synthetic_set(root / "maps", N_MAPS, seed=5, style="flow", duration_s=30.0, audio=True)
    write_synthetic_set(root / "other", 6, seed=6, style="jumps", duration_s=30.0)
    single = embed_to_store(root / "maps", "descriptors", root / "single.h5", progress=False)
    embed_to_store(root / "other", "descriptors", root / "other.h5", progress=False)
    return {"root": root, "maps": root / "maps", "single": root / "single.h5", "ids": single.ids}


def assert_equals_single(folder: Path, single: Path) -> None:
    """Same ids once each, statistics equal to 1e-12 relative."""
    with open_store(folder) as store, EmbeddingStore(single) as reference:
        ids = store.ids.tolist()
        assert len(ids) == len(set(ids)) == len(reference)
        assert set(ids) == set(reference.ids.tolist())
        row = {item_id: r for r, item_id in enumerate(ids)}
        order = [row[i] for i in reference.ids]
        np.testing.assert_array_equal(store.vectors(order), reference.vectors())
        a, b = store.statistics(), reference.statistics()
        assert a.n == b.n
        assert np.abs(a.sigma - b.sigma).max() <= 1e-12 * np.abs(b.sigma).max()
        assert np.abs(a.mu - b.mu).max() <= 1e-12 * np.abs(b.mu).max()


def test_two_workers_equal_the_single_process_run(maps):
    folder = maps["root"] / "two"
    result = embed_to_store(
        maps["maps"], "descriptors", folder, engine="ray", workers=2, progress=False
    )
    assert sorted(result.ids) == sorted(maps["ids"]) and result.written == len(maps["ids"])
    assert_equals_single(folder, maps["single"])
    other = maps["root"] / "other.h5"
    sharded = compute_fid(folder, other, progress=False).fid
    assert sharded == pytest.approx(
        compute_fid(maps["single"], other, progress=False).fid, rel=1e-9
    )
    again = embed_to_store(maps["maps"], "descriptors", folder, engine="ray", workers=2, progress=False)  # fmt: skip
    assert (again.written, again.reused) == (0, len(maps["ids"]))


def _committed_writer(folder: Path, timeout_s: float = 300.0) -> int:
    """The pid of a worker whose shard has committed a batch (it saved partial statistics)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for partial in (folder / SHARD_DIR).glob("*.partial.npz"):
            lock = partial.with_name(partial.name.removesuffix(".partial.npz") + ".lock")
            try:
                text = lock.read_text().strip()
            except OSError:
                continue
            if text.isdigit():
                return int(text)
        time.sleep(0.1)
    raise AssertionError("no worker committed a batch in time")


def test_a_worker_killed_mid_run_still_gives_one_row_per_item(maps):
    folder = maps["root"] / "killed"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = embed_sharded(
                maps["maps"], PacedDescriptors(delay_s=1.0), folder, workers=2,
                units_per_batch=1, progress=False,
            )  # fmt: skip
        except BaseException as error:  # reported by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    pid = _committed_writer(folder)
    time.sleep(0.4)  # inside the next batch (1 s of embedding), its first batch delivered
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert sorted(result.ids) == sorted(maps["ids"])
    assert_equals_single(folder, maps["single"])
    shards = [p.name for p in (folder / SHARD_DIR).glob("*.h5")]
    assert any(f"-{pid}-" in name for name in shards)  # the killed worker's commits count
    assert len(shards) >= 2


def test_a_rerun_after_an_interruption_embeds_only_what_is_missing(maps):
    folder = maps["root"] / "interrupted"
    with pytest.raises(WorkerError, match="interrupted on purpose"):
        embed_sharded(
            maps["maps"], PacedDescriptors(fail_after=2), folder, workers=2, units_per_batch=1,
            progress=False,
        )  # fmt: skip
    # The run is done with, as when the command stopped: Ray Data keeps the failed run's
    # workers (and their CPUs) until its driver ends, so the re-run gets a new driver.
    ray.shutdown()
    start_cluster()
    held = held_rows(folder, PacedDescriptors())
    assert 0 < len(held) < len(maps["ids"])
    assert not (folder / "manifest.json").exists()
    result = embed_sharded(maps["maps"], "descriptors", folder, workers=2, progress=False)
    assert result.written == len(maps["ids"]) - len(held)
    assert result.reused == len(held)
    assert_equals_single(folder, maps["single"])


def test_cli_embeds_and_indexes_on_ray(maps, capsys):
    folder = maps["root"] / "cli"
    assert main(["embed", str(maps["maps"]), "-o", str(folder), "--engine", "ray", "--workers", "2", "--quiet", "--json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["store"] == str(folder) and printed["written"] == len(maps["ids"])
    index = maps["root"] / "cli.faiss"
    assert main(["index", str(folder), "-o", str(index), "--engine", "ray", "--quiet", "--json"]) == 0  # fmt: skip
    built = json.loads(capsys.readouterr().out)
    assert built["family"] == "ivf-flat" and built["n"] == len(maps["ids"])
    assert main(["search", str(index), maps["ids"][0], "-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["queries"][0]["neighbours"]) == 3


def test_index_filled_by_ray_tasks_equals_one_process_with_the_same_quantizer(tmp_path):
    import faiss

    from beatmap_fid.index import load_index
    from beatmap_fid.shard_index import build_sharded_index

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(20, 16))
    vectors = (centres[rng.integers(0, 20, 5000)] + rng.normal(size=(5000, 16))).astype(np.float32)
    folder = tmp_path / "store"
    for shard, (low, high) in enumerate([(0, 1800), (1800, 2000), (2000, 5000)]):
        with StoreWriter(folder / SHARD_DIR / f"{shard}.h5", "x", {"k": 1}, 16) as writer:
            writer.append([f"v{i}" for i in range(low, high)], vectors[low:high])
    finalize_shards(folder)
    trained = faiss.index_factory(16, "IVF64,Flat")
    trained.train(vectors[::2])
    vindex = build_sharded_index(
        folder, tmp_path / "x.faiss", engine="ray", trained=trained, part_rows=1500,
        progress=False,
    )  # fmt: skip
    reference = faiss.clone_index(trained)
    reference.add_with_ids(vectors, np.arange(5000, dtype=np.int64))
    faiss.extract_index_ivf(reference).nprobe = vindex.search_params["nprobe"]
    queries = rng.normal(scale=4.0, size=(40, 16)).astype(np.float32)
    distances, rows = reference.search(queries, 10)
    loaded = load_index(tmp_path / "x.faiss", mmap=True)
    found_d, found_rows = loaded.index.search(queries, 10)
    np.testing.assert_array_equal(found_rows, rows)
    np.testing.assert_array_equal(found_d, distances)


@pytest.mark.gpu
def test_gpu_workers_embed_images_as_the_cpu_does(tmp_path):
    from test_shards import write_photos

    photos = write_photos(tmp_path / "photos")
    cpu = embed_to_store(
        photos, "efficientnet", tmp_path / "cpu.h5", progress=False,
        extractor_options={"device": "cpu", "num_workers": 0},
    )  # fmt: skip
    gpu = embed_sharded(
        photos, "efficientnet", tmp_path / "gpu", workers=1, gpus_per_worker=1, progress=False,
        extractor_options={"device": "cuda", "num_workers": 0},
    )  # fmt: skip
    assert sorted(gpu.ids) == sorted(cpu.ids)
    with open_store(tmp_path / "gpu") as store, EmbeddingStore(tmp_path / "cpu.h5") as one:
        row = {item_id: r for r, item_id in enumerate(store.ids)}
        on_gpu = store.vectors([row[i] for i in one.ids])
        np.testing.assert_allclose(on_gpu, one.vectors(), rtol=1e-2, atol=1e-3)
