"""FID between folders of beatmaps, end to end: Python API, streaming metric and command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from beatmap_fid import StreamingFID, compute_fid, embed_to_store
from beatmap_fid.beatmap.perturb import Disturbance, perturb_folder
from beatmap_fid.cli import main
from beatmap_fid.errors import InsufficientSamplesError

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples" / "data"


def test_fid_of_a_set_with_itself_is_zero(synthetic_beatmaps: Path, tmp_path: Path) -> None:
    result = compute_fid(
        synthetic_beatmaps / "flow", synthetic_beatmaps / "flow", store_dir=tmp_path, progress=False
    )
    assert result.fid == pytest.approx(0.0, abs=1e-9)
    assert result.real.n_sources == 6
    assert result.real.n_vectors == result.generated.n_vectors > 6


def test_styles_differ_more_than_halves_of_one_style(
    synthetic_beatmaps: Path, tmp_path: Path
) -> None:
    across = compute_fid(
        synthetic_beatmaps / "flow",
        synthetic_beatmaps / "jumps",
        store_dir=tmp_path,
        progress=False,
    ).fid
    assert across > 0.1


def test_rerun_reuses_stores(synthetic_beatmaps: Path, tmp_path: Path) -> None:
    store = tmp_path / "flow.h5"
    first = embed_to_store(synthetic_beatmaps / "flow", "descriptors", store, progress=False)
    second = embed_to_store(synthetic_beatmaps / "flow", "descriptors", store, progress=False)
    assert first.written == first.n_items > 0 and first.reused == 0
    assert second.written == 0 and second.reused == first.n_items
    assert second.ids == first.ids


def test_streaming_metric_matches_folder_fid(synthetic_beatmaps: Path, tmp_path: Path) -> None:
    reference = synthetic_beatmaps / "flow"
    generated = sorted((synthetic_beatmaps / "jumps").glob("*.osu"))
    expected = compute_fid(
        reference, synthetic_beatmaps / "jumps", store_dir=tmp_path, progress=False
    ).fid
    metric = StreamingFID(reference, store_dir=tmp_path)
    metric.update(generated[:3])
    metric.update([path.read_text(encoding="utf-8") for path in generated[3:]])
    metric.update("osu file format v14\n[HitObjects]\nnot an object\n")
    assert metric.compute() == pytest.approx(expected, rel=1e-9)
    assert len(metric.skipped) == 1
    metric.reset()
    with pytest.raises(InsufficientSamplesError):
        metric.compute()


def test_empty_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "broken.osu").write_text("not a beatmap", encoding="utf-8")
    code = main(
        [
            "fid",
            str(EXAMPLES / "real"),
            str(tmp_path / "empty"),
            "--quiet",
            "--store-dir",
            str(tmp_path / "stores"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "at least 2 are needed" in err and "broken.osu" in err


def test_too_few_samples_is_one_line_however_many_were_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for index in range(25):
        (folder / f"broken{index:02d}.osu").write_text("not a beatmap", encoding="utf-8")
    (folder / "empty.osu").write_bytes(b"")
    args = ["fid", str(EXAMPLES / "real"), str(folder), "--quiet"]
    code = main([*args, "--store-dir", str(tmp_path / "stores")])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("beatmap-fid fid: error: ") and "\n" not in err
    assert (
        "0 usable item(s)" in err
        and "26 skipped: 25 not a beatmap (first: broken00.osu); 1 empty" in err
    )
    assert "first: broken00.osu" in err


def test_cli_fid_json_on_bundled_examples(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "fid",
            str(EXAMPLES / "real"),
            str(EXAMPLES / "generated"),
            "--json",
            "--quiet",
            "--store-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fid"] > 0
    assert result["real"]["n_sources"] == 8 and result["generated"]["n_sources"] == 8
    stores = sorted(tmp_path.glob("*.h5"))
    code = main(["fd", str(stores[0]), str(stores[1]), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["fd"] == pytest.approx(result["fid"], rel=1e-9)


def test_fid_warns_about_small_sets_in_the_result_text_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The bundled examples hold 8 maps and 56 windows a side, for 104 descriptor dimensions."""
    from beatmap_fid.metrics.fid_uncertainty import sample_warnings

    result = compute_fid(
        EXAMPLES / "real", EXAMPLES / "generated", store_dir=tmp_path, progress=False
    )
    sides = {
        name: (side.n_vectors, side.n_sources)
        for name, side in (("real", result.real), ("generated", result.generated))
    }
    assert sides == {"real": (56, 8), "generated": (56, 8)}
    assert result.warnings == sample_warnings(104, **sides)
    assert len(result.warnings) == 4
    assert "56 vectors for 104 dimensions" in result.warnings[0]
    assert "only 8 map(s)" in result.warnings[1]
    folders = [str(EXAMPLES / "real"), str(EXAMPLES / "generated"), "--store-dir", str(tmp_path)]
    assert main(["fid", *folders, "--quiet"]) == 0
    text = capsys.readouterr().out
    assert all(f"warning: {warning}" in text for warning in result.warnings)
    assert main(["fid", *folders, "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == result.warnings


def test_sample_warnings_name_what_is_too_small() -> None:
    from beatmap_fid.metrics.fid_uncertainty import FEW_MAPS, sample_warnings

    assert sample_warnings(104, real=(5000, 300), generated=(105, FEW_MAPS)) == []
    assert sample_warnings(104, real=(None, None), generated=(400, None)) == []
    (few_vectors,) = sample_warnings(104, generated=(104, 50))
    assert "104 vectors for 104 dimensions" in few_vectors and "rank at most 103" in few_vectors
    (few_maps,) = sample_warnings(8, real=(500, FEW_MAPS - 1))
    assert f"only {FEW_MAPS - 1} map(s)" in few_maps
    assert sample_warnings(8, real=(9, 9)) == []  # items that are not windows of maps


def _real_standard_maps(shared_data: Path, destination: Path, limit: int) -> Path:
    """Copy up to ``limit`` osu!standard song folders (maps and audio) into ``destination``."""
    songs = sorted((shared_data / "beatmaps" / "songs").iterdir())
    for folder in songs[:limit]:
        shutil.copytree(folder, destination / folder.name)
    return destination


@pytest.mark.realdata
@pytest.mark.slow
def test_fid_rises_with_disturbance_on_real_maps(shared_data: Path, tmp_path: Path) -> None:
    real = _real_standard_maps(shared_data, tmp_path / "real", limit=12)
    stores = tmp_path / "stores"
    assert compute_fid(real, real, store_dir=stores, progress=False).fid == pytest.approx(
        0.0, abs=1e-9
    )
    kinds = {
        "timing_jitter_ms": (0.0, 5.0, 20.0, 60.0),
        "position_noise_px": (0.0, 10.0, 40.0, 120.0),
        "drop_fraction": (0.0, 0.1, 0.3, 0.6),
    }
    for kind, levels in kinds.items():
        fids = []
        for level in levels:
            disturbed = tmp_path / f"{kind}-{level}"
            perturb_folder(real, disturbed, Disturbance(**{kind: level}), seed=7)
            fids.append(compute_fid(real, disturbed, store_dir=stores, progress=False).fid)
        assert fids[0] == pytest.approx(0.0, abs=1e-6), kind
        assert np.all(np.diff(fids) > 0), (kind, fids)


def test_quickstart_example_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = REPO_ROOT / "examples" / "quickstart.py"
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "streaming FID" in done.stdout and "precision" in done.stdout
