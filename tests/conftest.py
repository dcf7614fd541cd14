"""Shared fixtures: the real data beside the repository, and GPU detection."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests using it skip when it is absent."""
    if not (SHARED_DATA / "beatmaps").is_dir():
        pytest.skip("real data folder ../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_beatmaps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of synthetic osu!standard maps in two styles, ``flow/`` and ``jumps/``
    (6 maps of 30 s each, creators ``<style>_0`` and ``<style>_1``, click-track audio)."""
    from beatmap_fid.beatmap.synthetic import write_synthetic_set

    root = tmp_path_factory.mktemp("synthetic_beatmaps")
    for seed, style in enumerate(("flow", "jumps"), start=1):
        write_synthetic_set(root / style, 6, seed=seed, style=style, duration_s=30.0, audio=True)
    return root


@pytest.fixture(scope="module")
def one_blas_thread():
    """Limit BLAS to one thread: on a busy machine threaded BLAS only slows small matrices."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1):
        yield
