"""Every command ends in one clear line: no tracebacks, honest skip counts, named extras."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beatmap_fid import embed_to_store
from beatmap_fid.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(capsys, verb: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"beatmap-fid {verb}: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def test_an_unknown_extractor_option_is_one_line(synthetic_beatmaps: Path, tmp_path, capsys):
    folder = synthetic_beatmaps / "flow"
    code = main(["embed", str(folder), "-o", str(tmp_path / "s.h5"), "--option", "foo=bar"])
    assert code == 1
    assert "has no option 'foo'" in _one_line_error(capsys, "embed")
    code = main(["fid", str(folder), str(folder), "--option", "device=cpu", "--quiet"])
    assert code == 1
    assert "has no option 'device'" in _one_line_error(capsys, "fid")
    out = tmp_path / "report"
    code = main(
        ["report", str(folder), str(folder), "-o", str(out), "--option", "device=cpu", "--quiet"]
    )
    assert code == 1
    assert "has no option 'device'" in _one_line_error(capsys, "report")


def test_an_option_the_extractor_has_is_taken(synthetic_beatmaps: Path, tmp_path, capsys):
    folder = synthetic_beatmaps / "flow"
    args = ["fid", str(folder), str(folder), "--quiet", "--json", "--store-dir", str(tmp_path)]
    assert main([*args, "--option", "use_audio=false"]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(0.0, abs=1e-9)


def _run(*args: str, stdin_closed_early: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "beatmap_fid", *args]
    if not stdin_closed_early:
        return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT
    ) as process:
        first = process.stdout.readline()
        process.stdout.close()  # as `| head -1` does
        err = process.stderr.read()
        code = process.wait(timeout=300)
    return subprocess.CompletedProcess(command, code, first, err)


@pytest.fixture(scope="module")
def knn_store(synthetic_beatmaps: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("knn") / "maps.h5"
    embed_to_store(synthetic_beatmaps, "descriptors", path, progress=False)
    return path


def test_knn_into_a_closed_pipe_and_search_beyond_the_index_are_quiet(knn_store: Path, tmp_path):
    done = _run("knn", str(knn_store), "--quiet", stdin_closed_early=True)
    assert (
        done.returncode == 0 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    )
    index = tmp_path / "x.faiss"
    assert _run("index", str(knn_store), "-o", str(index), "--quiet").returncode == 0
    done = _run("search", str(index), "flow/flow_1_000.osu#0", "-k", "5000")
    assert done.returncode == 0, done.stderr
    warning = done.stderr.strip()
    assert warning.startswith("beatmap-fid search: warning: k=5000 is larger")
    assert "\n" not in warning and "UserWarning" not in warning


def _images(folder: Path, n_good: int, bad: bool) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(str(folder)))
    for index in range(n_good):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"image{index:02d}.png")
    if bad:
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return folder


def test_image_skips_are_counted_on_the_side_they_belong_to(tmp_path, capsys):
    real = _images(tmp_path / "real", 13, bad=False)
    generated = _images(tmp_path / "generated", 13, bad=True)
    args = ["--extractor", "efficientnet", "--option", "num_workers=0", "--quiet", "--json"]
    code = main(["fid", str(real), str(generated), "--store-dir", str(tmp_path / "s"), *args])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["real"]["n_vectors"] == 13 and result["real"]["skipped"] == []
    assert result["generated"]["n_vectors"] == 13
    assert [s["source"] for s in result["generated"]["skipped"]] == ["broken.png"]
    code = main(["embed", str(generated), "-o", str(tmp_path / "g.h5"), *args])
    assert code == 0
    embedded = json.loads(capsys.readouterr().out)
    assert embedded["items"] == 13 and len(embedded["skipped"]) == 1


MISSING = """
import sys

class Uninstalled:  # as if the package were not installed
    def find_spec(self, name, path=None, target=None):
        if name == {module!r} or name.startswith({module!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, Uninstalled())
from beatmap_fid.cli import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize(
    ("module", "extra", "verb"),
    [("matplotlib", "plot", "report"), ("torch", "torch", "embed")],
)
def test_a_missing_extra_is_named(synthetic_beatmaps: Path, tmp_path, module, extra, verb):
    folder = synthetic_beatmaps / "flow"
    if verb == "report":
        argv = ["report", str(folder), str(folder), "-o", str(tmp_path / "r"), "--quiet"]
        argv += ["--store-dir", str(tmp_path / "s")]
    else:
        images = _images(tmp_path / "images", 2, bad=False)
        argv = ["embed", str(images), "-o", str(tmp_path / "i.h5"), "--extractor", "efficientnet"]
    done = subprocess.run(
        [sys.executable, "-c", MISSING.format(module=module, argv=argv)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 1, done.stderr
    err = done.stderr.strip().splitlines()[-1]
    assert err.startswith(f"beatmap-fid {verb}: error: ") and "Traceback" not in done.stderr
    assert f"beatmap_fid[{extra}]" in err
