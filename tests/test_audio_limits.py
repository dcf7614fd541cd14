"""Audio headers are not trusted: forged headers are refused in one line without allocating what
they claim, lengths come from what decodes, and every audio path keeps to the same limits."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile
from cli_child import run_cli_child

from beatmap_fid.beatmap import audio
from beatmap_fid.beatmap.audio import (
    MIN_SAMPLE_RATE,
    audio_frames,
    audio_num_samples,
    decode_audio,
    load_audio,
)
from beatmap_fid.beatmap.audio_librosa import load_audio_librosa
from beatmap_fid.beatmap.pcm import ffmpeg_available, load_pcm_audio
from beatmap_fid.errors import SourceError


def flac_header(sample_rate: int, frames: int, channels: int = 1, bits: int = 16) -> bytes:
    """A 42-byte FLAC file: the signature and a STREAMINFO block claiming ``frames`` frames at
    ``sample_rate``, and no audio frames at all."""
    fields = (sample_rate << 44) | ((channels - 1) << 41) | ((bits - 1) << 36) | frames
    info = struct.pack(">HH", 4096, 4096) + bytes(6) + fields.to_bytes(8, "big") + bytes(16)
    return b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info


def write_forged(folder: Path) -> dict[str, Path]:
    """The three hostile files: 42-byte FLACs claiming 10^8 and 2^36 - 1 frames at 1 Hz, and a
    real 200 KB WAV at 1 Hz."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "flac_1e8_frames_1hz": folder / "flac_1e8_frames_1hz.flac",
        "flac_2e36_frames_1hz": folder / "flac_2e36_frames_1hz.flac",
        "wav_1hz": folder / "wav_1hz.wav",
    }
    files["flac_1e8_frames_1hz"].write_bytes(flac_header(1, 10**8))
    files["flac_2e36_frames_1hz"].write_bytes(flac_header(1, 2**36 - 1))
    noise = np.random.default_rng(0).standard_normal(100_000) * 3000
    soundfile.write(str(files["wav_1hz"]), noise.astype(np.int16), 1, subtype="PCM_16")
    return files


LOADERS = {
    "audio_num_samples": audio_num_samples,
    "load_audio": load_audio,
    "load_audio_librosa": load_audio_librosa,
    "pcm soundfile": lambda path: load_pcm_audio(path, decoder="soundfile"),
    "pcm ffmpeg": lambda path: load_pcm_audio(path, decoder="ffmpeg"),
}


def _loaders() -> list:
    needs_ffmpeg = pytest.mark.skipif(not ffmpeg_available(), reason="needs ffmpeg")
    return [
        pytest.param(name, marks=needs_ffmpeg) if "ffmpeg" in name else name for name in LOADERS
    ]


@pytest.fixture(scope="module")
def forged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_forged(tmp_path_factory.mktemp("forged"))


def test_the_forged_files_are_what_they_claim(forged: dict[str, Path]) -> None:
    assert forged["flac_1e8_frames_1hz"].stat().st_size == 42
    info = soundfile.info(str(forged["flac_2e36_frames_1hz"]))
    assert (info.samplerate, info.frames) == (1, 2**36 - 1)
    info = soundfile.info(str(forged["wav_1hz"]))
    assert (info.samplerate, info.frames) == (1, 100_000)
    assert forged["wav_1hz"].stat().st_size > 200_000


@pytest.mark.parametrize("loader", _loaders())
@pytest.mark.parametrize("name", ["flac_1e8_frames_1hz", "flac_2e36_frames_1hz", "wav_1hz"])
def test_every_audio_path_refuses_a_rate_below_the_floor(
    forged: dict[str, Path], loader: str, name: str
) -> None:
    with pytest.raises(SourceError) as caught:
        LOADERS[loader](forged[name])
    message = str(caught.value)
    assert message.startswith(f"audio rate too low: {forged[name].name}: 1 Hz")
    assert str(MIN_SAMPLE_RATE) in message and "\n" not in message


def test_a_header_claiming_more_than_the_data_is_not_believed(tmp_path: Path) -> None:
    """A real one-second FLAC whose header claims 100 s at 44.1 kHz: libsndfile cannot decode
    what the header claims (refused, not 100 s of windows); ffmpeg decodes the real second."""
    one_second = np.random.default_rng(1).standard_normal((44_100, 2)) * 0.1
    real = tmp_path / "real.flac"
    soundfile.write(str(real), one_second.astype(np.float32), 44_100, subtype="PCM_16")
    data = bytearray(real.read_bytes())
    fields = int.from_bytes(data[18:26], "big")
    data[18:26] = ((fields >> 36 << 36) | 44_100 * 100).to_bytes(8, "big")
    lying = tmp_path / "lying.flac"
    lying.write_bytes(bytes(data))
    assert soundfile.info(str(lying)).frames == 4_410_000
    assert audio_frames(real) == (44_100, 44_100)
    for loader in (audio_num_samples, load_audio, load_audio_librosa):
        with pytest.raises(SourceError, match=r"^undecodable audio: lying\.flac: "):
            loader(lying)
    if ffmpeg_available():
        assert len(load_pcm_audio(lying, 44_100, decoder="ffmpeg")) == 44_100


@pytest.mark.parametrize("loader", _loaders())
def test_audio_beyond_the_limits_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: str
) -> None:
    path = tmp_path / "three_seconds.wav"
    stereo = np.random.default_rng(2).standard_normal((3 * 16_000, 2)) * 3000
    soundfile.write(str(path), stereo.astype(np.int16), 16_000, subtype="PCM_16")
    loaded = LOADERS[loader](path)
    assert (loaded if isinstance(loaded, int) else len(loaded)) == 3 * 16_000
    monkeypatch.setattr(audio, "MAX_AUDIO_SECONDS", 2)
    with pytest.raises(SourceError, match=r"^audio too long: three_seconds\.wav: more than 2 s"):
        LOADERS[loader](path)
    monkeypatch.setattr(audio, "MAX_AUDIO_SECONDS", 60)
    monkeypatch.setattr(audio, "MAX_AUDIO_SAMPLES", 16_000 * 2 * 2)  # 2 s of this stereo
    with pytest.raises(SourceError, match=r"^audio too long: "):
        LOADERS[loader](path)


def test_counted_frames_equal_the_confirmed_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The length of a file whose header cannot be confirmed is counted by decoding it."""
    path = tmp_path / "stereo.ogg"
    stereo = np.random.default_rng(3).standard_normal((5 * 22_050 + 17, 2)) * 0.1
    soundfile.write(str(path), stereo.astype(np.float32), 22_050, format="OGG")
    confirmed = audio_frames(path)
    decoded, rate = decode_audio(path, "float32")
    monkeypatch.setattr(audio, "_last_frame_decodes", lambda handle, frames: False)
    assert audio_frames(path) == confirmed == (len(decoded), rate)
    counted, _ = decode_audio(path, "float32")  # decoded in blocks
    np.testing.assert_array_equal(counted, decoded)


_MAP = """osu file format v14

[General]
AudioFilename: {audio}
Mode: 0

[Metadata]
Title:t
Artist:a
Creator:c
Version:{version}

[Difficulty]
CircleSize:4
SliderMultiplier:1.4

[TimingPoints]
0,500,4,2,0,60,1,0

[HitObjects]
{objects}
"""


def test_forged_audio_through_the_command_line_stays_small(tmp_path: Path) -> None:
    """The audio extractor skips each forged file with one line, the descriptor extractor
    counts windows from the map's length and reports that fallback; no traceback, and both
    stay under 1 GB of memory (peak resident set of the process). ``fid`` then shows
    the fallbacks (its peak is not asserted: importing torch for the distance alone takes
    about 0.7 GB)."""
    files = write_forged(tmp_path / "audio")
    maps = tmp_path / "maps"
    maps.mkdir()
    objects = "\n".join(
        f"{64 + i % 384},{96 + i % 192},{1000 + 250 * i},1,0,0:0:0:0:" for i in range(80)
    )
    for name, path in files.items():
        (maps / path.name).write_bytes(path.read_bytes())
        (maps / f"{name}.osu").write_text(
            _MAP.format(audio=path.name, version=name, objects=objects)
        )
    runs = {
        "audio": [
            "embed",
            str(tmp_path / "audio"),
            "-o",
            str(tmp_path / "a.h5"),
            "--extractor",
            "audio",
            "--option",
            "backbone=stats",
            "--option",
            "device=cpu",
            "--quiet",
            "--json",
        ],
        "descriptors": ["embed", str(maps), "-o", str(tmp_path / "d.h5"), "--quiet", "--json"],
        "fid": ["fid", str(maps), str(maps), "--no-cache", "--quiet"],
    }
    out = run_cli_child(runs)
    assert out["descriptors"]["peak_kib"] < 1024 * 1024  # after both embed runs
    for run in out.values():
        assert run["code"] == 0 and "Traceback" not in run["stdout"] + run["stderr"]
    skipped = {s["source"]: s["reason"] for s in json.loads(out["audio"]["stdout"])["skipped"]}
    assert set(skipped) == {path.name for path in files.values()}
    for reason in skipped.values():
        assert reason.startswith("audio rate too low: ") and "\n" not in reason
    embedded = json.loads(out["descriptors"]["stdout"])
    assert embedded["items"] > 0 and not embedded["skipped"]
    fallbacks = {f["source"]: f["reason"] for f in embedded["fallbacks"]}
    assert set(fallbacks) == {f"{name}.osu" for name in files}
    for reason in fallbacks.values():
        assert reason.startswith("audio rate too low: ")
        assert reason.endswith("; windows counted from the map's length")
    fid_lines = out["fid"]["stdout"].splitlines()
    assert "3 embedded with a fallback" in fid_lines[1]
    fid_text = out["fid"]["stdout"]
    assert "generated: 3 embedded with a fallback, by reason:" in fid_text
    assert "3 × audio rate too low" in fid_text
    assert all(f"{name}.osu" in fid_text for name in files)


@pytest.mark.realdata
def test_real_audio_lengths_are_the_decoded_lengths(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sorted(
        p for p in (shared_data / "beatmaps").rglob("*") if p.suffix.lower() in (".mp3", ".ogg")
    )
    assert len(files) >= 30
    confirmed = [audio_frames(path) for path in files]
    assert confirmed == [
        (soundfile.info(str(p)).frames, soundfile.info(str(p)).samplerate) for p in files
    ]
    monkeypatch.setattr(audio, "_last_frame_decodes", lambda handle, frames: False)
    assert [audio_frames(path) for path in files] == confirmed


def test_audio_names_outside_the_map_folder_are_not_opened(tmp_path: Path) -> None:
    """Maps naming a real, longer song outside their folder (``..``, an absolute path, a
    climb through a sub-folder): the song is not opened, the windows are counted from each
    map's length and the fallback says why, in one line and under 1 GB of memory."""
    outside = tmp_path / "outside.wav"
    song = np.random.default_rng(4).standard_normal(120 * 8_000) * 3000
    soundfile.write(str(outside), song.astype(np.int16), 8_000, subtype="PCM_16")
    maps = tmp_path / "maps"
    maps.mkdir()
    objects = "\n".join(f"{64 + i},{96 + i},{1000 + 250 * i},1,0,0:0:0:0:" for i in range(80))
    names = {"parent": "../outside.wav", "absolute": str(outside), "climb": "sub/../../outside.wav"}
    for version, name in names.items():
        (maps / f"{version}.osu").write_text(
            _MAP.format(audio=name, version=version, objects=objects)
        )
    embed = ["embed", str(maps), "--quiet", "--json"]
    out = run_cli_child(
        {
            "named": [*embed, "-o", str(tmp_path / "named.h5")],
            "own_length": [*embed, "-o", str(tmp_path / "own.h5"), "--option", "use_audio=false"],
        }
    )
    assert out["named"]["peak_kib"] < 1024 * 1024
    named, own = (json.loads(out[run]["stdout"]) for run in ("named", "own_length"))
    assert out["named"]["code"] == 0 and "Traceback" not in out["named"]["stderr"]
    assert named["items"] == own["items"] > 0 and not named["skipped"]
    fallbacks = {f["source"]: f["reason"] for f in named["fallbacks"]}
    assert set(fallbacks) == {f"{version}.osu" for version in names}
    for reason in fallbacks.values():
        assert reason.startswith("no audio: AudioFilename ") and "\n" not in reason
        assert "points outside the map's folder; windows counted from the map's length" in reason
