"""The extractor registry answers without loading models: the catalog of built-in extractors
matches their factories, ``beatmap-fid extractors`` prints the golden listing without importing
torch, and the package imports its names lazily."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import beatmap_fid
from beatmap_fid.extractors.base import extractor_info, extractor_infos
from beatmap_fid.extractors.catalog import BUILTIN

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden") / "extractors.txt"
HEAVY = ("torch", "transformers", "open_clip", "sklearn", "faiss", "numba", "h5py")


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_catalog_entry_matches_its_factory(name):
    """Options and defaults as the factory's signature has them; nothing missing, nothing extra."""
    info = extractor_info(name)
    parameters = inspect.signature(info.factory).parameters.values()
    expected = {
        p.name: p.default for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    assert dict(info.options) == expected
    assert info.more_options == any(p.kind is p.VAR_KEYWORD for p in parameters)


def test_catalog_dimensions_are_the_built_extractors():
    """The listed dimensions are those of the built extractors (the mapper classifier's: the
    projector width of the reference architecture, a checkpoint's default)."""
    from beatmap_fid.extractors.base import build_extractor
    from beatmap_fid.extractors.mapper_classifier.checkpoint import ClassifierSettings

    assert build_extractor("descriptors").dim == extractor_info("descriptors").dim == 104
    settings = ClassifierSettings(num_classes=3, vocab_size=10)
    assert settings.projector_dim == extractor_info("mapper-classifier").dim == 2048


def test_clip_weights_check_looks_where_open_clip_downloads():
    open_clip = pytest.importorskip("open_clip")
    from beatmap_fid.extractors import catalog

    config = open_clip.get_pretrained_cfg(
        BUILTIN["clip"]["options"]["model"], BUILTIN["clip"]["options"]["pretrained"]
    )
    assert config["hf_hub"].rstrip("/") == catalog.CLIP_DEFAULT_HF_REPO


def run_listing(*extra: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``beatmap-fid extractors`` in a fresh interpreter with an empty Hugging Face cache,
    reporting which heavy modules got imported."""
    code = (
        "import sys; from beatmap_fid.cli import main; code = main(sys.argv[1:]); "
        f"print('IMPORTED', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr); "
        "sys.exit(code)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", code, "extractors", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def normalised(text: str) -> str:
    """Whether local weights are installed depends on the machine: that word is masked."""
    return re.sub(r"weights: (on disk|not on disk)", "weights: <checked>", text)


def test_extractors_listing_is_golden_and_loads_no_model(tmp_path):
    done = run_listing(tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "IMPORTED []" in done.stderr  # no torch, transformers, sklearn, FAISS, ...
    assert normalised(done.stdout) == GOLDEN.read_text(encoding="utf-8")
    assert "weights: not on disk" in done.stdout  # cm3p: the Hugging Face cache is empty


def test_extractors_json_lists_options_and_dimensions(tmp_path):
    done = run_listing("--json", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)["extractors"]}
    assert set(rows) == {info.name for info in extractor_infos()}
    assert rows["mapper-classifier"]["dim"] == 2048
    assert rows["descriptors"]["weights"] == "none needed"
    assert rows["cm3p"]["options"]["modes"] == [0, 1, 2, 3]
    assert rows["efficientnet"]["options"]["device"] is None


def test_package_names_are_imported_on_first_use():
    assert sorted(beatmap_fid.__all__) == sorted([*beatmap_fid._EXPORTS, "__version__"])
    code = (
        "import sys, beatmap_fid; assert 'beatmap_fid.api' not in sys.modules; "
        "import beatmap_fid.evaluate; f = beatmap_fid.evaluate; assert callable(f), f; "
        "assert beatmap_fid.compute_fid.__module__ == 'beatmap_fid.api'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_weights_found_in_the_hugging_face_cache_as_the_hub_client_finds_them(tmp_path):
    """A snapshot laid out as huggingface_hub writes it: our cache check and the hub
    client's ``try_to_load_from_cache`` agree that the CM3P weights are there."""
    pytest.importorskip("huggingface_hub")
    repo = tmp_path / "hub" / "models--OliBomby--CM3P"
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    (repo / "snapshots" / "0123abc" / "model.safetensors").write_bytes(b"weights")
    done = run_listing("--json", tmp_path=tmp_path)
    rows = {row["name"]: row for row in json.loads(done.stdout)["extractors"]}
    assert rows["cm3p"]["weights"] == "on disk"
    assert rows["mapper-classifier"]["weights"] == "not on disk"
    code = (
        "from huggingface_hub import try_to_load_from_cache as f; "
        "print(isinstance(f('OliBomby/CM3P', 'model.safetensors'), str))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")}
    hub = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert hub.stdout.strip() == "True", hub.stderr
