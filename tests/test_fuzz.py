"""Seeded, bounded fuzzing of the beatmap pipeline: mutated real maps are read or refused with
a reason, never an uncaught exception or a hang."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from beatmap_fid import embed_to_store
from beatmap_fid.beatmap.reading import decode_osu_bytes, read_beatmap_file
from beatmap_fid.errors import SourceError
from beatmap_fid.extractors.base import map_id

N_MUTANTS = 240
HOSTILE_NAMES = [
    "ビートマップ [Insane].osu",
    "-starts with a dash.osu",
    "new\nline.osu",
    "tab\tand spaces  .osu",
    "semi;colon 'quote\" $HOME.osu",
    "#hash#in#name.osu",
    "x" * 240 + ".osu",
    "émoji 🎵.OSU",
]
HOSTILE_AUDIO = [
    "../../../../etc/passwd",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
    "a" * 5000 + ".mp3",
    "nul\x00byte.mp3",
    "sub/../../escape.mp3",
]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One random mutation of the kinds real damage and hostile edits produce."""
    lines = data.split(b"\n")
    kind = rng.randrange(9)
    if kind == 0:  # truncation
        return data[: rng.randrange(len(data) + 1)]
    if kind == 1:  # byte flips
        out = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return bytes(out)
    if kind == 2:  # deleted lines
        for _ in range(rng.randint(1, 10)):
            if lines:
                del lines[rng.randrange(len(lines))]
        return b"\n".join(lines)
    if kind == 3:  # duplicated lines
        for _ in range(rng.randint(1, 10)):
            line = lines[rng.randrange(len(lines))]
            lines.insert(rng.randrange(len(lines) + 1), line)
        return b"\n".join(lines)
    if kind == 4:  # other encodings, some of them broken
        text = data.decode("utf-8", errors="replace")
        encoded = rng.choice(
            [
                text.encode("utf-16"),
                text.encode("utf-16-be"),
                b"\xff\xfe" + text.encode("utf-16-le")[:-1],  # odd byte count
                b"\xff\xfe" + "\ud800".encode("utf-16-le", "surrogatepass") + b"x\x00",
                b"\xef\xbb\xbf" + text.encode("cp1252", errors="replace") + b"\xe9",
                text.encode("latin-1", errors="replace"),
            ]
        )
        return encoded
    if kind == 5:  # huge and non-finite numbers
        number = rng.choice([b"1e308", b"-1e308", b"nan", b"inf", b"-inf", b"99999999999999999999"])
        target = rng.randrange(len(lines))
        fields = lines[target].split(b",")
        fields[rng.randrange(len(fields))] = number
        lines[target] = b",".join(fields)
        return b"\n".join(lines)
    if kind == 6:  # a hostile audio file name
        audio = rng.choice(HOSTILE_AUDIO).encode("utf-8")
        return b"\n".join(
            b"AudioFilename: " + audio if line.startswith(b"AudioFilename") else line
            for line in lines
        )
    if kind == 7:  # sections shuffled
        rng.shuffle(lines)
        return b"\n".join(lines)
    return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 500)))  # garbage tail


def _sources(shared: Path | None, synthetic: Path) -> list[bytes]:
    if shared is not None:
        paths = sorted((shared / "beatmaps" / "songs").rglob("*.osu"))[:40]
    else:
        paths = sorted(synthetic.rglob("*.osu"))
    return [path.read_bytes() for path in paths]


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory, synthetic_beatmaps, request) -> Path:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    sources = _sources(shared if (shared / "beatmaps").is_dir() else None, synthetic_beatmaps)
    rng = random.Random(1306)
    folder = tmp_path_factory.mktemp("fuzz")
    for index in range(N_MUTANTS):
        data = _mutate(rng.choice(sources), rng)
        name = HOSTILE_NAMES[index % len(HOSTILE_NAMES)]
        sub = folder / f"{index:03d}"
        sub.mkdir()
        (sub / name).write_bytes(data)
    return folder


@pytest.mark.timeout(600)
def test_every_mutated_map_is_read_or_refused_with_a_reason(fuzz_folder: Path) -> None:
    read = refused = 0
    for path in sorted(fuzz_folder.rglob("*")):
        if not path.is_file():
            continue
        decode_osu_bytes(path.read_bytes())  # any bytes decode to some text
        try:
            beatmap_file = read_beatmap_file(path, modes=(0, 1, 2, 3))
        except SourceError as error:
            assert str(error) and ":" in str(error)  # "category: detail"
            refused += 1
            continue
        read += 1
        if beatmap_file.audio_path is not None:
            assert beatmap_file.audio_path.resolve().is_relative_to(path.parent.resolve())
    assert read + refused == N_MUTANTS
    assert read > N_MUTANTS // 4 and refused > N_MUTANTS // 10  # the mutations bite


@pytest.mark.timeout(600)
def test_the_descriptor_pipeline_embeds_mutants_or_skips_them(
    fuzz_folder: Path, tmp_path: Path
) -> None:
    result = embed_to_store(fuzz_folder, "descriptors", tmp_path / "fuzz.h5", progress=False)
    assert result.n_items > 0
    embedded = {map_id(item_id) for item_id in result.ids}
    skipped = {map_id(entry.source) for entry in result.skipped.entries}
    files = {p.relative_to(fuzz_folder).as_posix() for p in fuzz_folder.rglob("*") if p.is_file()}
    assert files <= embedded | skipped
    again = embed_to_store(fuzz_folder, "descriptors", tmp_path / "fuzz.h5", progress=False)
    assert again.written == 0 and sorted(again.ids) == sorted(result.ids)
