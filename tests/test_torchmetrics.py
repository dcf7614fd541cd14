"""``BeatmapFID`` (torchmetrics) and ``StreamingFID`` fed with maps or features: both equal
``compute_fid`` on the same vectors, in one process and across two gloo processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchmetrics")
import torch

from beatmap_fid import StreamingFID, compute_fid
from beatmap_fid.integrations.torchmetrics import BeatmapFID

REPO_ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-9


def features(seed: int, n: int, dim: int = 24, shift: float = 0.0) -> np.ndarray:
    """Correlated features with a mean far from 0 (as beatmap descriptors have)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return (rng.normal(size=(n, dim)) @ mixing + 3.0 + shift).astype(np.float32)


def test_beatmap_fid_of_features_equals_compute_fid():
    real, fake = features(1, 400), features(2, 300, shift=0.2)
    metric = BeatmapFID(num_features=24)
    for block in np.array_split(real, 3):
        metric.update(torch.from_numpy(block), real=True)
    metric.update(fake[:100], real=False)
    metric.update(torch.from_numpy(fake[100:]).double(), real=False)
    expected = compute_fid(real, fake, device="numpy").fid
    assert float(metric.compute()) == pytest.approx(expected, rel=RTOL)
    assert int(metric.real_n) == 400 and int(metric.fake_n) == 300


def test_reset_keeps_the_real_side_only_when_asked():
    real, fake, other = features(1, 200), features(2, 200, shift=0.3), features(3, 200)
    kept = BeatmapFID(num_features=24, reset_real_features=False)
    dropped = BeatmapFID(num_features=24)
    for metric in (kept, dropped):
        metric.update(real, real=True)
        metric.update(fake, real=False)
        metric.reset()
        metric.update(other, real=False)
    assert float(kept.compute()) == pytest.approx(
        compute_fid(real, other, device="numpy").fid, rel=RTOL
    )
    with pytest.raises(Exception, match="real side has 0"):
        dropped.compute()


def test_wrong_dimension_is_refused():
    metric = BeatmapFID(num_features=24)
    with pytest.raises(Exception, match=r"shape \(n, 24\)"):
        metric.update(np.zeros((5, 7), dtype=np.float32), real=True)


@pytest.fixture(scope="module")
def real_map_sets(shared_data, tmp_path_factory) -> dict[str, list[Path]]:
    """Two sets of 12 real osu!standard maps with their audio (different beatmap sets)."""
    songs = shared_data / "beatmaps" / "songs"
    chosen = []
    for folder in sorted(p for p in songs.iterdir() if p.is_dir()):
        maps = sorted(folder.glob("*.osu"))
        standard = [m for m in maps if "Mode: 0" in m.read_text("utf-8", "replace")[:3000]]
        chosen += standard[:2]
        if len(chosen) >= 24:
            break
    root = tmp_path_factory.mktemp("tm_sets")
    sets: dict[str, list[Path]] = {"real": [], "generated": []}
    for index, path in enumerate(chosen[:24]):
        name = "real" if index % 2 == 0 else "generated"
        target = root / name / path.parent.name
        target.mkdir(parents=True, exist_ok=True)
        for audio in path.parent.glob("*.mp3"):
            if not (target / audio.name).exists():
                shutil.copy2(audio, target / audio.name)
        shutil.copy2(path, target / path.name)
        sets[name].append(target / path.name)
    return sets


def test_maps_in_memory_equal_compute_fid_on_folders(real_map_sets, tmp_path):
    real_folder = real_map_sets["real"][0].parents[1]
    gen_folder = real_map_sets["generated"][0].parents[1]
    expected = compute_fid(real_folder, gen_folder, store_dir=tmp_path, device="numpy")
    assert expected.real.n_vectors > 104  # enough windows for a full-rank covariance

    metric = BeatmapFID("descriptors")
    metric.update([str(p) for p in real_map_sets["real"]], real=True)
    for path in real_map_sets["generated"]:
        metric.update(path.read_text(encoding="utf-8"), real=False)  # .osu text, no audio
    assert int(metric.real_n) == expected.real.n_vectors
    # Text has no audio beside it: windows follow the map's own length instead.
    text_fid = float(metric.compute())
    assert np.isfinite(text_fid) and text_fid > 0

    metric = BeatmapFID("descriptors")
    metric.update(real_map_sets["real"], real=True)
    metric.update(real_map_sets["generated"], real=False)
    assert float(metric.compute()) == pytest.approx(expected.fid, rel=RTOL)

    streaming = StreamingFID(real_folder, store_dir=tmp_path)
    streaming.update(real_map_sets["generated"][:6])
    from beatmap_fid.extractors.base import build_extractor

    extractor = build_extractor("descriptors")
    rest = [
        extractor.embed([item.payload for item in extractor.items(path, streaming.skipped)])
        for path in real_map_sets["generated"][6:]
    ]
    streaming.update(torch.from_numpy(np.concatenate(rest)))  # features made elsewhere
    assert streaming.compute() == pytest.approx(expected.fid, rel=RTOL)


@pytest.mark.slow
def test_two_processes_on_gloo_agree_with_compute_fid(tmp_path):
    real, fake, fake2 = features(1, 301), features(2, 250, shift=0.25), features(4, 199, shift=0.1)
    data = tmp_path / "features.npz"
    np.savez(data, real=real, fake=fake, fake2=fake2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    rendezvous = tmp_path / "rendezvous"
    worker = str(REPO_ROOT / "tests" / "ddp_fid_worker.py")
    children = []
    for rank in range(2):
        command = [sys.executable, worker, str(data), str(rendezvous), str(rank), "2"]
        command.append(str(tmp_path / f"rank{rank}.json"))
        children.append(
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    for child in children:
        output, _ = child.communicate(timeout=300)
        assert child.returncode == 0, output
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    first = compute_fid(real, fake, device="numpy").fid
    second = compute_fid(real, fake2, device="numpy").fid
    assert results[0]["local_counts"] != [301, 250]  # each process saw only its share...
    for result in results:  # ...and compute() saw everything
        assert result["first"] == pytest.approx(first, rel=RTOL)
        assert result["second"] == pytest.approx(second, rel=RTOL)
