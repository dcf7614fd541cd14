"""Statistics files are refused with one line unless they hold n >= 2, a real finite mu and a
symmetric positive semi-definite sigma; pytorch-fid and clean-fid files (no n) still load."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from beatmap_fid.errors import InputError, InsufficientSamplesError, StoreError
from beatmap_fid.frechet import as_stats, frechet_distance
from beatmap_fid.stats import COVARIANCE_TOLERANCE, GaussianStats, check_positive_semidefinite

REPO_ROOT = Path(__file__).resolve().parents[1]
D = 6


def _good() -> tuple[np.ndarray, np.ndarray]:
    features = np.random.default_rng(0).normal(size=(40, D))
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _npz(path: Path, **arrays) -> Path:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def _huge_header() -> bytes:
    """An .npz whose ``mu`` header claims 2**40 float64 values in a few bytes."""
    member = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (2**40,)}
    np.lib.format.write_array_header_1_0(member, header)
    member.write(b"\0" * 64)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("mu.npy", member.getvalue())
        out.writestr("sigma.npy", member.getvalue())
    return archive.getvalue()


def _malformed(folder: Path) -> dict[str, tuple[Path, type[Exception], str]]:
    """name -> (file, error class, what its one line says)."""
    mu, sigma = _good()
    asymmetric = sigma.copy()
    asymmetric[0, 1] += 0.5
    indefinite = np.eye(D)
    indefinite[0, 1] = indefinite[1, 0] = 2.0  # eigenvalues -1 and 3, non-negative diagonal
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "n = 0": (dict(mu=mu, sigma=sigma, n=np.int64(0)), InsufficientSamplesError, "n = 0"),
        "n = 1": (dict(mu=mu, sigma=sigma, n=np.int64(1)), InsufficientSamplesError, "n = 1"),
        "n an array": (dict(mu=mu, sigma=sigma, n=np.array([5, 6])), InputError, "shape ()"),
        "n complex": (dict(mu=mu, sigma=sigma, n=np.complex128(5)), InputError, "complex"),
        "n a float": (dict(mu=mu, sigma=sigma, n=np.float64(5.0)), InputError, "whole number"),
        "n text": (dict(mu=mu, sigma=sigma, n=np.array("5")), InputError, "whole number"),
        "mu complex": (dict(mu=mu + 1j, sigma=sigma), InputError, "mu is complex"),
        "mu text": (dict(mu=np.array(["0.1"] * D), sigma=sigma), InputError, "real numbers"),
        "mu a matrix": (dict(mu=sigma, sigma=sigma), InputError, "mu must have shape"),
        "mu NaN": (dict(mu=np.full(D, np.nan), sigma=sigma), InputError, "NaN"),
        "sigma complex": (dict(mu=mu, sigma=sigma + 0j), InputError, "sigma is complex"),
        "sigma wrong shape": (dict(mu=mu, sigma=sigma[:-1]), InputError, "sigma must have"),
        "sigma not symmetric": (dict(mu=mu, sigma=asymmetric), InputError, "not symmetric"),
        "sigma negative definite": (dict(mu=mu, sigma=-sigma), InputError, "negative variance"),
        "sigma indefinite": (dict(mu=mu, sigma=indefinite), InputError, "semi-definite"),
        "no sigma": (dict(mu=mu), StoreError, "lacks sigma"),
    }
    out = {}
    for name, (arrays, error, message) in files.items():
        out[name] = (_npz(folder / f"{name.replace(' ', '_')}.npz", **arrays), error, message)
    raw = {
        "empty file": (b"", "not a zip file"),
        "random bytes": (np.random.default_rng(1).bytes(300), "not a zip file"),
        "truncated": ((folder / "n_=_0.npz").read_bytes()[:200], "cannot read"),
        "huge header": (_huge_header(), "declares"),
    }
    for name, (data, message) in raw.items():
        path = folder / f"{name.replace(' ', '_')}.npz"
        path.write_bytes(data)
        out[name] = (path, StoreError if message != "declares" else InputError, message)
    objects = folder / "objects.npz"
    np.savez(objects, mu=np.array([object()] * D), sigma=sigma)
    out["mu objects"] = (objects, InputError, "real numbers")
    return out


@pytest.fixture(scope="module")
def malformed(tmp_path_factory) -> dict[str, tuple[Path, type[Exception], str]]:
    return _malformed(tmp_path_factory.mktemp("npz"))


CASES = [
    "n = 0",
    "n = 1",
    "n an array",
    "n complex",
    "n a float",
    "n text",
    "mu complex",
    "mu text",
    "mu a matrix",
    "mu NaN",
    "mu objects",
    "sigma complex",
    "sigma wrong shape",
    "sigma not symmetric",
    "sigma negative definite",
    "sigma indefinite",
    "no sigma",
    "empty file",
    "random bytes",
    "truncated",
    "huge header",
]


@pytest.mark.parametrize("name", CASES)
def test_a_malformed_statistics_file_is_refused_with_one_line(malformed, name):
    path, error, message = malformed[name]
    for read in (GaussianStats.load, as_stats, lambda p: frechet_distance(p, p)):
        with pytest.raises(error, match=message) as caught:
            read(path)
        text = str(caught.value)
        assert "\n" not in text and str(path) in text


def test_malformed_files_through_the_cli_under_a_gigabyte(malformed):
    """``beatmap-fid fd`` on every malformed file in one process: exit 1 and one line each,
    no traceback, peak memory under 1 GB."""
    paths = [str(malformed[name][0]) for name in CASES]
    script = (
        "import contextlib, io, json, resource, sys\n"
        "from beatmap_fid.cli import main\n"
        "results = []\n"
        "for path in sys.argv[1:]:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        code = main(['fd', path, path])\n"
        "    results.append((code, err.getvalue()))\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "for line in open('/proc/self/status'):  # this process's own peak (Linux)\n"
        "    if line.startswith('VmHWM:'):\n"
        "        peak = int(line.split()[1]) * 1024\n"
        "print(json.dumps({'results': results, 'peak': peak}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *paths],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for path, (code, err) in zip(paths, report["results"]):
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1, (path, err)
        assert lines[0].startswith("beatmap-fid fd: error: ") and "Traceback" not in err
    assert report["peak"] < 2**30, report["peak"]


def test_pytorch_fid_and_clean_fid_files_without_n_still_load(tmp_path):
    features = np.random.default_rng(2).normal(size=(30, D)).astype(np.float32)
    mu, sigma = np.mean(features, axis=0), np.cov(features, rowvar=False)
    np.savez_compressed(tmp_path / "pytorch_fid.npz", mu=mu, sigma=sigma)  # float32 mu
    np.savez(tmp_path / "plain.npz", mu=mu.astype(np.float64), sigma=sigma)
    for name in ("pytorch_fid.npz", "plain.npz"):
        loaded = GaussianStats.load(tmp_path / name)
        assert loaded.n is None and np.allclose(loaded.sigma, sigma)
        assert frechet_distance(loaded, tmp_path / name) == pytest.approx(0.0, abs=1e-9)


def test_float32_covariances_of_fewer_vectors_than_dimensions_pass_the_tolerance(tmp_path):
    """A singular covariance (n < d) stored in float32 has eigenvalues a rounding below zero."""
    rng = np.random.default_rng(3)
    features = rng.normal(size=(50, 256)) @ rng.normal(size=(256, 256)) + 5.0
    sigma32 = np.cov(features, rowvar=False).astype(np.float32)
    smallest = np.linalg.eigvalsh(sigma32.astype(np.float64))[0]
    assert smallest < 0  # what the tolerance is for
    path = _npz(tmp_path / "f32.npz", mu=features.mean(0).astype(np.float32), sigma=sigma32)
    stats = GaussianStats.load(path)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-6 * np.trace(stats.sigma))


def test_the_semidefinite_tolerance_is_relative_to_the_norm():
    basis = np.linalg.qr(np.random.default_rng(4).normal(size=(D, D)))[0]
    eigenvalues = np.linspace(1.0, 10.0, D)
    for scale in (1e-6, 1.0, 1e6):
        for smallest, accepted in ((-0.1, False), (-1e-3 * COVARIANCE_TOLERANCE, True)):
            values = eigenvalues.copy()
            values[0] = smallest * np.linalg.norm(eigenvalues)
            sigma = scale * (basis * values) @ basis.T
            sigma = (sigma + sigma.T) / 2
            if accepted:
                check_positive_semidefinite(sigma)
            else:
                with pytest.raises(InputError, match="semi-definite"):
                    check_positive_semidefinite(sigma)
    check_positive_semidefinite(np.zeros((D, D)))  # constant features: a zero covariance


def test_statistics_built_in_memory_are_checked_too():
    mu, sigma = _good()
    with pytest.raises(InputError, match="complex"):
        GaussianStats(mu + 1j, sigma)
    with pytest.raises(InputError, match="real numbers"):
        GaussianStats(np.array(["a"] * D), sigma)
    with pytest.raises(InputError, match="whole number"):
        GaussianStats(mu, sigma, n=2.0)
    with pytest.raises(InputError, match="whole number"):
        GaussianStats(mu, sigma, n=True)
    with pytest.raises(InsufficientSamplesError):
        GaussianStats(mu, sigma, n=1)
    with pytest.raises(InputError, match="not symmetric"):
        GaussianStats(mu, sigma + np.triu(np.ones((D, D)), 1))
    with pytest.raises(InputError, match="negative variance"):
        GaussianStats(mu, -np.eye(D))
    assert GaussianStats(mu, sigma, n=np.int64(40)).n == 40
    assert GaussianStats(mu, sigma, n=np.array(40)).n == 40


def test_the_store_statistics_cache_survives_a_damaged_cache_file(tmp_path):
    from beatmap_fid.api import store_statistics
    from beatmap_fid.store import StoreWriter

    store = tmp_path / "s.h5"
    vectors = np.random.default_rng(5).normal(size=(20, 4)).astype(np.float32)
    with StoreWriter(store, "toy", {}, 4) as writer:
        writer.append([f"i{k}" for k in range(20)], vectors)
    first = store_statistics(store)
    cache = store.with_name(store.name + ".stats.npz")
    assert cache.is_file()
    cache.write_bytes(b"")  # as a writer killed mid-write would leave it
    again = store_statistics(store)
    assert np.array_equal(again.sigma, first.sigma) and again.n == 20
    assert GaussianStats.load(cache).n == 20
