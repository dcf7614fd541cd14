"""Reading .osu files (tolerant parsing, clear refusals) and loading audio."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import slider
import soundfile

from beatmap_fid.beatmap.audio import audio_num_samples, load_audio, resampled_length
from beatmap_fid.beatmap.reading import (
    decode_osu_bytes,
    find_beatmaps,
    iter_beatmap_files,
    missing_audio_reason,
    parse_beatmap_text,
    read_beatmap,
    read_beatmap_file,
)
from beatmap_fid.beatmap.synthetic import synthetic_beatmap
from beatmap_fid.errors import SkipLog, SourceError

REASONS = {
    "missing",
    "unreadable",
    "too large",
    "empty",
    "not a beatmap",
    "malformed",
    "absurd",
    "unsupported mode",
    "no hit objects",
}


@pytest.fixture(scope="module")
def map_text() -> str:
    return synthetic_beatmap(7, "flow", duration_s=20.0)


def _replace_objects(text: str, lines: list[str]) -> str:
    head, _, _ = text.partition("[HitObjects]\n")
    return head + "[HitObjects]\n" + "\n".join(lines) + "\n"


def _object_lines(text: str) -> list[str]:
    return [line for line in text.partition("[HitObjects]\n")[2].splitlines() if line]


def _reason(exc: pytest.ExceptionInfo[SourceError]) -> str:
    return str(exc.value).split(":", 1)[0]


def test_find_beatmaps_is_recursive_sorted_and_case_insensitive(tmp_path: Path) -> None:
    for name in ("b/z.osu", "a.OSU", "b/a.osu", "notes.txt", "c/d/e.osu"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found = [p.relative_to(tmp_path).as_posix() for p in find_beatmaps(tmp_path)]
    assert found == ["a.OSU", "b/a.osu", "b/z.osu", "c/d/e.osu"]
    assert find_beatmaps(tmp_path / "b" / "z.osu") == [tmp_path / "b" / "z.osu"]
    with pytest.raises(SourceError, match=r"^missing"):
        find_beatmaps(tmp_path / "absent")
    with pytest.raises(SourceError, match=r"^not a beatmap"):
        find_beatmaps(tmp_path / "notes.txt")


def test_reads_a_valid_map_without_notes(tmp_path: Path, map_text: str) -> None:
    path = tmp_path / "set" / "map.osu"
    path.parent.mkdir()
    path.write_text(map_text, encoding="utf-8")
    beatmap_file = read_beatmap_file(path, root=tmp_path)
    assert beatmap_file.id == "set/map.osu"
    assert beatmap_file.notes == ()
    assert beatmap_file.creator == "synthetic flow"
    assert beatmap_file.audio_path is None  # audio.wav is named but absent
    assert len(beatmap_file.beatmap.hit_objects(stacking=False)) == len(_object_lines(map_text))


def test_finds_audio_case_insensitively(tmp_path: Path, map_text: str) -> None:
    (tmp_path / "map.osu").write_text(map_text, encoding="utf-8")
    soundfile.write(str(tmp_path / "AUDIO.WAV"), np.zeros(1600, np.float32), 16000)
    assert read_beatmap_file(tmp_path / "map.osu").audio_path == tmp_path / "AUDIO.WAV"


def test_the_classify_verb_names_a_refused_audio_name(
    tmp_path: Path, map_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A map naming audio outside its folder: the reason says so, and ``classify`` stops on
    it in one line before any checkpoint is read (the file named does exist)."""
    (tmp_path / "song.wav").write_bytes(b"RIFF")
    (tmp_path / "maps").mkdir()
    text = map_text.replace("AudioFilename: audio.wav", "AudioFilename: ../song.wav")
    assert text != map_text
    (tmp_path / "maps" / "map.osu").write_text(text, encoding="utf-8")
    beatmap_file = read_beatmap_file(tmp_path / "maps" / "map.osu")
    assert beatmap_file.audio_path is None
    reason = missing_audio_reason(beatmap_file.beatmap.audio_filename)
    assert reason == "no audio: AudioFilename '../song.wav' points outside the map's folder"
    assert missing_audio_reason("gone.mp3") == (
        "no audio: the audio file it names (gone.mp3) is missing"
    )
    from beatmap_fid.cli import main

    code = main(["classify", str(tmp_path / "maps" / "map.osu"), "--checkpoint", "absent.ckpt"])
    error = capsys.readouterr().err
    assert code == 1 and error.count("\n") == 1
    assert f"{reason}; pass it with --audio" in error


def test_circle_without_hit_sample_keeps_its_fields(map_text: str) -> None:
    lines = _object_lines(map_text)
    stripped = []
    for line in lines:
        fields = line.split(",")
        stripped.append(",".join(fields[:5]) if int(fields[3]) & 1 else line)
    assert stripped != lines
    original, _ = parse_beatmap_text(map_text)
    repaired, notes = parse_beatmap_text(_replace_objects(map_text, stripped))
    assert any("hitSample" in note for note in notes)
    for a, b in zip(original.hit_objects(stacking=False), repaired.hit_objects(stacking=False)):
        assert (a.time, a.position, a.new_combo, a.hitsound) == (
            b.time,
            b.position,
            b.new_combo,
            b.hitsound,
        )
        if isinstance(b, slider.beatmap.Circle):
            assert b.addition == "0:0:0:0:"
            assert b.pack()  # slider crashes here when the field shifted into ``addition``


def test_legacy_encoding_is_decoded_and_noted(tmp_path: Path, map_text: str) -> None:
    text = map_text.replace("Title:Synthetic flow 7", "Title:Café Ümlaut")
    (tmp_path / "cp.osu").write_bytes(text.encode("cp1252"))
    (tmp_path / "bom.osu").write_bytes(text.encode("utf-8-sig"))
    legacy = read_beatmap_file(tmp_path / "cp.osu")
    assert legacy.beatmap.title == "Café Ümlaut"
    assert any("cp1252" in note for note in legacy.notes)
    utf8 = read_beatmap_file(tmp_path / "bom.osu")
    assert utf8.beatmap.title == "Café Ümlaut"
    assert utf8.notes == ()


def test_a_byte_order_mark_before_legacy_bytes_is_dropped(tmp_path: Path, map_text: str) -> None:
    """A UTF-8 byte order mark followed by one byte that is not UTF-8 (an editor that added a
    BOM to a cp1252 file): the legacy decoding must not keep the mark as 'ï»¿'."""
    text = map_text.replace("Title:Synthetic flow 7", "Title:Café")
    (tmp_path / "mixed.osu").write_bytes(b"\xef\xbb\xbf" + text.encode("cp1252"))
    decoded, note = decode_osu_bytes((tmp_path / "mixed.osu").read_bytes())
    assert decoded.startswith("osu file format") and "cp1252" in note
    mixed = read_beatmap_file(tmp_path / "mixed.osu")
    assert mixed.beatmap.title == "Café"
    assert any("cp1252" in note for note in mixed.notes)


def test_unsupported_mode_is_refused_unless_allowed(map_text: str) -> None:
    taiko = map_text.replace("Mode: 0", "Mode: 1")
    with pytest.raises(SourceError, match=r"^unsupported mode: taiko"):
        parse_beatmap_text(taiko)
    beatmap, _ = parse_beatmap_text(taiko, modes=(0, 1))
    assert int(beatmap.mode) == 1


def test_zero_hit_objects_and_empty_files_are_refused(tmp_path: Path, map_text: str) -> None:
    with pytest.raises(SourceError, match=r"^no hit objects"):
        parse_beatmap_text(_replace_objects(map_text, []))
    (tmp_path / "empty.osu").write_bytes(b"  \n\n")
    with pytest.raises(SourceError, match=r"^empty"):
        read_beatmap(tmp_path / "empty.osu")
    (tmp_path / "binary.osu").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SourceError, match=r"^not a beatmap"):
        read_beatmap(tmp_path / "binary.osu")
    with pytest.raises(SourceError, match=r"^not a beatmap"):
        parse_beatmap_text("hello\nworld\n")
    with pytest.raises(SourceError, match=r"^missing"):
        read_beatmap(tmp_path / "absent.osu")


def test_truncated_last_line_is_dropped_but_a_broken_middle_line_is_refused(map_text: str) -> None:
    lines = _object_lines(map_text)
    truncated = map_text[: map_text.rindex(lines[-1]) + 6]
    beatmap, notes = parse_beatmap_text(truncated)
    assert len(beatmap.hit_objects(stacking=False)) == len(lines) - 1
    assert any("truncated" in note for note in notes)

    broken = [*lines[:3], "12,34,oops,1,0,0:0:0:0:", *lines[3:]]
    text = _replace_objects(map_text, broken)
    line_number = text.splitlines().index("12,34,oops,1,0,0:0:0:0:") + 1
    with pytest.raises(SourceError, match=rf"^malformed: line {line_number} in \[HitObjects\]"):
        parse_beatmap_text(text)


def test_absurd_sliders_are_refused(map_text: str) -> None:
    lines = _object_lines(map_text)
    for slider_line in (
        "100,100,5000,2,0,L|200:100,1,9999999",
        "100,100,5000,2,0,L|200:100,99999,100",
    ):
        with pytest.raises(SourceError) as exc:
            parse_beatmap_text(_replace_objects(map_text, [*lines, slider_line]))
        assert _reason(exc) == "absurd"


def test_odd_but_repairable_text_is_read(map_text: str) -> None:
    lines = _object_lines(map_text)
    text = map_text.replace("osu file format v14\n", "")  # no header
    text = text.replace("[Editor]", "[Unknown]\nfoo\n[Editor]")
    text = text.replace("DistanceSpacing: 1", "DistanceSpacing: lots")  # cosmetic field
    text = text.replace(
        "[TimingPoints]\n", "[TimingPoints]\n0,0,4,2,0,60,1,0\n"
    )  # zero beat length
    odd = [
        lines[0].replace(lines[0].split(",")[2], lines[0].split(",")[2] + ".6", 1),  # float time
        "100.5,200.25,999999,2,0,P|150:250|200:200,2,0",  # float position, no length
        "256,192,1000000,12,0,999000",  # spinner ending before it starts
    ]
    beatmap, notes = parse_beatmap_text(_replace_objects(text, [*odd, *lines[1:]]))
    objects = beatmap.hit_objects(stacking=False)
    assert len(objects) == len(lines) + 2
    assert [o.time for o in objects] == sorted(o.time for o in objects)
    assert all((getattr(o, "end_time", o.time) - o.time).total_seconds() >= 0 for o in objects)
    joined = " | ".join(notes)
    for expected in ("header", "unknown section", "DistanceSpacing", "beat length", "length"):
        assert expected in joined


def test_iter_beatmap_files_records_skips(tmp_path: Path, map_text: str) -> None:
    (tmp_path / "good.osu").write_text(map_text, encoding="utf-8")
    (tmp_path / "bad.osu").write_text("osu file format v14\n[General]\nMode: 3\n", encoding="utf-8")
    skipped = SkipLog()
    files = list(iter_beatmap_files(tmp_path, skipped))
    assert [f.id for f in files] == ["good.osu"]
    assert [entry.source for entry in skipped.entries] == ["bad.osu"]
    assert skipped.reasons() == {"unsupported mode": 1}


def test_edge_files_are_read_or_refused_with_a_reason(shared_data: Path) -> None:
    paths = find_beatmaps(shared_data / "edge")
    assert len(paths) > 100
    outcomes = {"read": 0}
    for path in paths:
        try:
            read_beatmap(path, modes=(0, 1, 2, 3))
            outcomes["read"] += 1
        except SourceError as exc:
            reason = str(exc).split(":", 1)[0]
            assert reason in REASONS, f"{path.name}: {exc}"
            outcomes[reason] = outcomes.get(reason, 0) + 1
    assert outcomes["read"] > len(paths) // 2
    assert len(outcomes) > 3  # several kinds of refusal, each with its own reason


def _standard_rows(shared_data: Path) -> list[dict[str, str]]:
    with open(shared_data / "beatmaps" / "MANIFEST.tsv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [row for row in rows if row["Mode"] == "0"]


def _check_real_maps(shared_data: Path, rows: list[dict[str, str]]) -> None:
    matched = 0
    for row in rows:
        try:
            beatmap_file = read_beatmap_file(shared_data / "beatmaps" / row["relpath"])
        except SourceError as exc:
            assert str(exc).split(":", 1)[0] in REASONS
            continue
        assert beatmap_file.creator == row["Creator"]
        matched += len(beatmap_file.beatmap.hit_objects(stacking=False)) == int(row["n_hitobjects"])
    assert matched >= 0.95 * len(rows)


def test_real_standard_maps_parse(shared_data: Path) -> None:
    _check_real_maps(shared_data, _standard_rows(shared_data)[::16])


@pytest.mark.slow
def test_all_real_standard_maps_parse(shared_data: Path) -> None:
    _check_real_maps(shared_data, _standard_rows(shared_data))


def test_audio_of_a_real_mp3(shared_data: Path) -> None:
    mp3 = sorted((shared_data / "beatmaps" / "songs").rglob("*.mp3"))[0]
    audio = load_audio(mp3)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.max(np.abs(audio)) == pytest.approx(1.0, abs=1e-6)
    assert len(audio) == audio_num_samples(mp3)
    assert len(audio) == soundfile.info(str(mp3)).frames  # stored at 16 kHz already


def test_audio_is_mixed_to_mono_resampled_and_normalised(tmp_path: Path) -> None:
    rate = 44100
    t = np.arange(int(1.5 * rate)) / rate
    stereo = np.stack(
        [0.2 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 440 * t)], axis=1
    )
    path = tmp_path / "stereo.ogg"
    soundfile.write(str(path), stereo, rate)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == resampled_length(soundfile.info(str(path)).frames, rate, 16000)
    assert len(audio) == audio_num_samples(path)
    assert np.max(np.abs(audio)) == pytest.approx(1.0, abs=1e-6)
    silent = tmp_path / "silent.wav"
    soundfile.write(str(silent), np.zeros(800, np.float32), 8000)
    quiet = load_audio(silent)
    assert len(quiet) == 1600 and not np.any(quiet)


def test_bad_audio_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"^missing audio"):
        load_audio(tmp_path / "absent.mp3")
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"this is not audio" * 50)
    with pytest.raises(SourceError, match=r"^undecodable audio"):
        load_audio(garbage)
    with pytest.raises(SourceError, match=r"^undecodable audio"):
        audio_num_samples(garbage)
