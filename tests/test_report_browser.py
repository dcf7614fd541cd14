"""The report in a real browser: built from real maps, opened in headless Chromium (Debian's
``chromium``, which CI installs), every figure drawn, no request leaves the page and nothing
is logged as an error. Also: the checks do catch a page that breaks each rule."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beatmap_fid.beatmap.perturb import Disturbance, perturb_file
from beatmap_fid.evaluate import copy_sources
from beatmap_fid.report import build_report

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "examples" / "screenshot_report.py"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="needs Chromium (apt-get install chromium)"
)
FIGURES = {
    "2-D map of both sets",
    "FID against the number of samples",
    "Per-map distances from the real set",
    "Features that make up the FID",
}


def check_page(report_dir: Path, screenshot: Path) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(report_dir), str(screenshot), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def real_report(shared_data, tmp_path_factory) -> Path:
    """A report of 12 real osu!standard maps (one per beatmap set, with audio) against copies
    of them, two disturbed heavily and the others lightly; the copies keep their names, so
    the rhythm section is there too."""
    rows = list(
        csv.DictReader(
            (shared_data / "beatmaps" / "MANIFEST.tsv").open(encoding="utf-8"), delimiter="\t"
        )
    )
    chosen, sets = [], set()
    for row in rows:
        parts = row["relpath"].split("/")
        if row["Mode"] == "0" and row["audio"] and parts[0] == "songs" and parts[1] not in sets:
            sets.add(parts[1])
            chosen.append("/".join(parts[1:]))
        if len(chosen) == 12:
            break
    root = tmp_path_factory.mktemp("browser_report")
    songs = shared_data / "beatmaps" / "songs"
    copy_sources(chosen, songs, root / "real")
    copy_sources(chosen, songs, root / "gen")
    heavy = Disturbance(timing_jitter_ms=40, position_noise_px=100, drop_fraction=0.4)
    light = Disturbance(position_noise_px=2)
    for index, name in enumerate(chosen):
        perturb_file(songs / name, root / "gen" / name, heavy if index in (2, 7) else light, index)
    build_report(
        root / "real",
        root / "gen",
        root / "report",
        store_dir=root / "stores",
        projection="pca",
        curve_seeds=2,
        fid_ci={"n_resamples": 50},
    )
    return root / "report"


@needs_chromium
def test_report_of_real_maps_renders_offline_without_errors(real_report, tmp_path):
    data = json.loads((real_report / "report.json").read_text(encoding="utf-8"))
    assert data["rhythm"] is not None and data["feature_shares"] is not None
    code, check = check_page(real_report, tmp_path / "page.png")
    assert check["problems"] == [] and code == 0
    assert check["requests"] == [] and check["console"] == []
    figures = {figure["alt"]: figure for figure in check["figures"]}
    assert set(figures) == FIGURES
    for figure in figures.values():
        assert figure["loaded"] and min(figure["shown_size"]) >= 200
        assert figure["foreground"] > 0.02 and figure["colours"] > 50
    assert (tmp_path / "page.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@needs_chromium
def test_page_checks_catch_requests_console_errors_and_blank_figures(tmp_path):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), "white").save(buffer, "PNG")
    blank = base64.b64encode(buffer.getvalue()).decode()
    (tmp_path / "report.html").write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        '<link rel="stylesheet" href="https://example.invalid/style.css"></head><body>'
        f'<img alt="blank" src="data:image/png;base64,{blank}">'
        '<script>console.error("boom"); notDefined();</script></body></html>',
        encoding="utf-8",
    )
    code, check = check_page(tmp_path, tmp_path / "page.png")
    assert code == 1
    assert check["requests"] == ["https://example.invalid/style.css"]
    assert any("boom" in text for text in check["console"])
    assert any("notDefined" in text for text in check["console"])
    assert [f["alt"] for f in check["figures"]] == ["blank"]
    assert check["figures"][0]["foreground"] == 0.0
    assert any(problem.startswith("figure not rendered: 'blank'") for problem in check["problems"])
