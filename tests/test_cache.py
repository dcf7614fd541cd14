"""Cache stores of folders follow the folders' contents: changed files are embedded again,
removed files leave the result, and no two folders share a store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from beatmap_fid import compute_fid, embed_to_store
from beatmap_fid.api import store_path_for
from beatmap_fid.cli import main
from beatmap_fid.extractors.base import build_extractor
from beatmap_fid.store import EmbeddingStore


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_overwriting_files_in_place_changes_fid_as_recomputing_would(
    synthetic_beatmaps: Path, tmp_path: Path
) -> None:
    real = synthetic_beatmaps / "flow"
    generated = _copy(synthetic_beatmaps / "jumps", tmp_path / "generated")
    cache = tmp_path / "cache"
    before = compute_fid(real, generated, store_dir=cache, progress=False).fid
    assert before > 0.1
    for path in sorted(generated.iterdir()):  # the generator overwrites its outputs in place
        path.unlink()
    for path in sorted(real.iterdir()):
        shutil.copy(path, generated / path.name)
    after = compute_fid(real, generated, store_dir=cache, progress=False)
    assert after.fid == pytest.approx(0.0, abs=1e-9)
    fresh = compute_fid(real, generated, store_dir=tmp_path / "fresh", progress=False).fid
    assert after.fid == pytest.approx(fresh, abs=1e-12)
    with EmbeddingStore(after.generated.store_path) as store:  # the old rows are gone
        assert len(store) == len(set(store.ids)) == after.generated.n_vectors


def test_changed_and_removed_files_in_a_cached_folder(synthetic_beatmaps: Path, tmp_path: Path):
    folder = _copy(synthetic_beatmaps / "flow", tmp_path / "maps")
    cache = tmp_path / "cache"
    extractor = build_extractor("descriptors")
    target = store_path_for(folder, extractor, cache)
    first = embed_to_store(folder, extractor, target, progress=False, prune=True)
    maps = sorted(folder.glob("*.osu"))
    jumps = sorted((synthetic_beatmaps / "jumps").glob("*.osu"))
    shutil.copy(jumps[0], maps[0])  # same name, other content
    maps[1].unlink()
    second = embed_to_store(folder, extractor, target, progress=False, prune=True)
    assert second.replaced > 0 and second.written >= second.replaced
    changed = {i for i in second.ids if i.startswith(maps[0].name + "#")}
    assert changed and not any(i.startswith(maps[1].name + "#") for i in second.ids)
    assert second.reused == sum(
        not i.startswith((maps[0].name + "#", maps[1].name + "#")) for i in first.ids
    )
    with EmbeddingStore(target) as store:
        assert sorted(store.ids) == sorted(second.ids)
    reference = embed_to_store(folder, extractor, tmp_path / "fresh.h5", progress=False)
    assert sorted(second.ids) == sorted(reference.ids)
    by_id = dict(zip(reference.ids, reference.vectors()))
    np.testing.assert_array_equal(second.vectors(), np.stack([by_id[i] for i in second.ids]))


def test_folders_whose_paths_once_collided_get_their_own_stores(
    synthetic_beatmaps: Path, tmp_path: Path
) -> None:
    one = _copy(synthetic_beatmaps / "flow", tmp_path / "x" / "y_z")
    two = _copy(synthetic_beatmaps / "jumps", tmp_path / "x_y" / "z")
    extractor = build_extractor("descriptors")
    assert store_path_for(one, extractor) != store_path_for(two, extractor)
    result = compute_fid(one, two, store_dir=tmp_path / "cache", progress=False)
    assert result.real.store_path != result.generated.store_path
    expected = compute_fid(
        synthetic_beatmaps / "flow",
        synthetic_beatmaps / "jumps",
        store_dir=tmp_path / "other",
        progress=False,
    ).fid
    assert result.fid == pytest.approx(expected, rel=1e-12) and result.fid > 0.1


def test_the_cli_without_cache_leaves_nothing_behind(
    synthetic_beatmaps: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BEATMAP_FID_CACHE", str(cache))
    real, generated = synthetic_beatmaps / "flow", synthetic_beatmaps / "jumps"
    assert main(["fid", str(real), str(generated), "--no-cache", "--quiet", "--json"]) == 0
    uncached = json.loads(capsys.readouterr().out)
    assert not cache.exists() or not any(cache.iterdir())
    assert main(["fid", str(real), str(generated), "--quiet", "--json"]) == 0
    cached = json.loads(capsys.readouterr().out)
    assert cached["fid"] == pytest.approx(uncached["fid"], rel=1e-12)
    assert main(["cache", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["location"] == str(cache) and listing["stores"] == 2
    assert main(["cache", "--clear", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 2
    assert not list(cache.glob("*.h5"))


def test_a_resume_does_not_read_maps_already_complete(
    synthetic_beatmaps: Path, tmp_path: Path, monkeypatch
) -> None:
    import beatmap_fid.beatmap.reading as reading

    folder = _copy(synthetic_beatmaps, tmp_path / "maps")
    reads: list[str] = []
    real_read = reading.read_beatmap_file

    def counting_read(path, **kwargs):
        reads.append(Path(path).name)
        return real_read(path, **kwargs)

    monkeypatch.setattr(reading, "read_beatmap_file", counting_read)
    extractor = build_extractor("descriptors")
    store = tmp_path / "store.h5"
    real_embed = extractor.embed
    calls = {"n": 0}

    def dying_embed(payloads):  # the run is interrupted after its second batch
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_embed(payloads)

    extractor.embed = dying_embed
    with pytest.raises(KeyboardInterrupt):
        embed_to_store(folder, extractor, store, batch_size=8, progress=False)
    extractor.embed = real_embed
    first_reads = len(reads)
    reads.clear()
    resumed = embed_to_store(folder, extractor, store, batch_size=8, progress=False)
    assert 0 < len(reads) < first_reads  # maps finished before the interruption are not read
    reads.clear()
    again = embed_to_store(folder, extractor, store, batch_size=8, progress=False)
    assert reads == [] and again.written == 0
    assert sorted(again.ids) == sorted(resumed.ids)
    fresh = embed_to_store(folder, extractor, tmp_path / "fresh.h5", progress=False)
    assert sorted(again.ids) == sorted(fresh.ids)
    maps = sorted(folder.rglob("*.osu"))
    maps[0].write_text(maps[0].read_text(encoding="utf-8") + "\n", encoding="utf-8")
    reads.clear()
    embed_to_store(folder, extractor, store, batch_size=8, progress=False)
    assert reads == [maps[0].name]  # only the changed map is read again
