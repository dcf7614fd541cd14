"""Inputs embedded with a fallback are reported beside the skips, by the API and every verb."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beatmap_fid.api import StreamingFID, compute_fid, embed_to_store
from beatmap_fid.beatmap.synthetic import write_synthetic_set
from beatmap_fid.cli import main
from beatmap_fid.extractors.base import build_extractor, extractor_fallbacks
from beatmap_fid.store import EmbeddingStore


@pytest.fixture(scope="module")
def maps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic maps with click tracks, one naming a missing audio file and one naming
    a file that is not audio."""
    folder = tmp_path_factory.mktemp("fallback_maps")
    paths = write_synthetic_set(folder, 4, seed=7, duration_s=40.0, audio=True)
    for path, audio_name in ((paths[2], "missing.wav"), (paths[3], "broken.wav")):
        text = path.read_text(encoding="utf-8")
        old = next(line for line in text.splitlines() if line.startswith("AudioFilename:"))
        path.write_text(text.replace(old, f"AudioFilename: {audio_name}"), encoding="utf-8")
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file" * 10)
    return folder


EXPECTED = {
    "flow_7_002.osu": "no audio: the audio file it names (missing.wav) is missing; windows",
    "flow_7_003.osu": "undecodable audio: broken.wav: ",
}


def _check(entries: list[dict[str, str]]) -> None:
    assert [entry["source"] for entry in entries] == sorted(EXPECTED)
    for entry in entries:
        assert entry["reason"].startswith(EXPECTED[entry["source"]])
        assert entry["reason"].endswith("windows counted from the map's length")


def test_embed_reports_fallbacks_whether_embedded_now_or_before(maps: Path, tmp_path) -> None:
    store = tmp_path / "maps.h5"
    first = embed_to_store(maps, "descriptors", store, progress=False)
    assert not first.skipped and first.written == first.n_items > 0
    _check([{"source": f.source, "reason": f.reason} for f in first.fallbacks.entries])
    again = embed_to_store(maps, "descriptors", store, progress=False)
    assert again.written == 0 and again.reused == first.n_items
    assert again.fallbacks.entries == first.fallbacks.entries
    with EmbeddingStore(store) as stored:  # maps with a fallback are read again on each run
        assert sorted(stored.completed_sources) == ["flow_7_000.osu", "flow_7_001.osu"]
    quiet = embed_to_store(
        maps,
        "descriptors",
        tmp_path / "no_audio.h5",
        progress=False,
        extractor_options={"use_audio": False},
    )
    assert not quiet.fallbacks  # counting from the map's length was asked for


def test_one_extractor_two_sources_keeps_their_fallbacks_apart(maps: Path, tmp_path) -> None:
    extractor = build_extractor("descriptors")
    result = compute_fid(
        maps, maps / "flow_7_003.osu", extractor=extractor, store_dir=tmp_path, progress=False
    )
    data = result.to_dict()
    _check(data["real"]["fallbacks"])
    assert [f["source"] for f in data["generated"]["fallbacks"]] == ["flow_7_003.osu"]
    assert len(extractor_fallbacks(extractor)) == 3
    streaming = StreamingFID(result.real.store_path, extractor)
    streaming.update(maps / "flow_7_002.osu")
    streaming.update(maps / "flow_7_000.osu")
    assert [f.source for f in streaming.fallbacks.entries] == ["flow_7_002.osu"]
    streaming.reset()
    assert not streaming.fallbacks


def test_embed_and_fid_verbs_print_fallbacks(maps: Path, tmp_path, capsys) -> None:
    assert main(["embed", str(maps), "-o", str(tmp_path / "a.h5"), "--quiet", "--json"]) == 0
    _check(json.loads(capsys.readouterr().out)["fallbacks"])
    assert main(["embed", str(maps), "-o", str(tmp_path / "a.h5"), "--quiet", "--strict"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[1:3] == ["nothing skipped", "2 embedded with a fallback, by reason:"]
    listed = "\n".join(text[3:])
    for name, reason in _reasons(tmp_path / "a.h5", maps):
        assert f"      {name}: " in listed and reason.split(":", 1)[0] in listed
    args = ["fid", str(maps), str(maps), "--store-dir", str(tmp_path), "--quiet"]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    _check(data["real"]["fallbacks"])
    _check(data["generated"]["fallbacks"])
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("2 embedded with a fallback")
    text = "\n".join(lines)
    assert "generated: 2 embedded with a fallback, by reason:" in text
    assert sum(line.strip().startswith("flow_7_00") for line in lines) == 4  # both sides


def _reasons(store: Path, maps: Path) -> list[tuple[str, str]]:
    result = embed_to_store(maps, "descriptors", store, progress=False)
    return [(f.source, f.reason) for f in result.fallbacks.entries]


def test_report_and_nearest_verbs_list_fallbacks(maps: Path, tmp_path, capsys) -> None:
    store_dir = ["--store-dir", str(tmp_path / "stores")]
    code = main(
        [
            "report",
            str(maps),
            str(maps),
            "-o",
            str(tmp_path / "report"),
            "--metrics",
            "fid",
            "--projection",
            "pca",
            "--seeds",
            "1",
            "--quiet",
            *store_dir,
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "real: 0 skipped, 2 embedded with a fallback (listed in the report)" in text
    data = json.loads(next((tmp_path / "report").glob("*.json")).read_text())
    _check(data["generated"]["fallbacks"])
    page = next((tmp_path / "report").glob("*.html")).read_text()
    assert "Inputs embedded with a fallback" in page and "broken.wav" in page
    assert main(["nearest", str(maps), str(maps), "--quiet", "--json", *store_dir]) == 0
    data = json.loads(capsys.readouterr().out)
    _check(data["generated_fallbacks"])
    _check(data["real_fallbacks"])
