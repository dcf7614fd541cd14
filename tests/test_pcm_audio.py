"""The mapper classifier's audio path: integer PCM, audioop arithmetic, pydub's waveform.

The arithmetic is checked bit for bit against the standard library's ``audioop`` (Python ≤ 3.12),
decoding against ffmpeg's own conversions and pydub (tests skip when ffmpeg or pydub is absent).
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile
from loud_audio import music_like, pydub_segment, pydub_waveform, write_loud

from beatmap_fid.beatmap import pcm
from beatmap_fid.beatmap.audio import load_audio
from beatmap_fid.errors import ExtractorError, SourceError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # removed in Python 3.13
        audioop = None

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop left the stdlib in 3.13")
needs_ffmpeg = pytest.mark.skipif(
    not pcm.ffmpeg_available(), reason="needs the ffmpeg and ffprobe programs"
)


@pytest.fixture(scope="module")
def loud_files(tmp_path_factory) -> dict[str, Path]:
    """3 s of loud 44.1 kHz stereo as MP3, OGG and WAV (16-bit, 24-bit, float, 8-bit)."""
    folder = tmp_path_factory.mktemp("loud")
    signal = music_like(3.0)
    files = {
        "mp3": write_loud(folder / "song.mp3", signal, 2.0),
        "ogg": write_loud(folder / "song.ogg", signal, 1.6),
    }
    for name, subtype in (("wav16", "PCM_16"), ("wav24", "PCM_24"), ("float", "FLOAT")):
        files[name] = folder / f"{name}.wav"
        soundfile.write(str(files[name]), signal * 0.9, 44100, subtype=subtype)
    files["wav8"] = folder / "wav8.wav"
    soundfile.write(str(files["wav8"]), signal * 0.9, 22050, subtype="PCM_U8")
    return files


# --- audioop arithmetic --------------------------------------------------------------------------

RATES = [(44100, 16000), (48000, 16000), (22050, 16000), (32000, 16000), (11025, 16000)]
RATES += [(16000, 44100), (8000, 16000), (96000, 16000), (44100, 48000), (12345, 16000)]


def _integers(rng, n, channels, width):
    info = np.iinfo(pcm._SIGNED[width])
    values = rng.integers(info.min, info.max, size=(n, channels), endpoint=True)
    edges = rng.random((n, channels)) < 0.2
    values[edges] = rng.choice([info.min, info.max, info.min + 1, -1, 0, 1], size=edges.sum())
    return values.astype(pcm._SIGNED[width])


@needs_audioop
@pytest.mark.parametrize(("in_rate", "out_rate"), RATES)
@pytest.mark.parametrize("width", [1, 2, 4])
def test_ratecv_is_audioops_bit_for_bit(in_rate, out_rate, width):
    rng = np.random.default_rng(in_rate * 7 + out_rate + width)
    for n, channels in [(0, 1), (1, 1), (2, 2), (3, 1), (441, 2), (4000, 2), (3001, 3)]:
        samples = _integers(rng, n, channels, width)
        expected, _ = audioop.ratecv(samples.tobytes(), width, channels, in_rate, out_rate, None)
        ours = pcm.ratecv(samples, width, in_rate, out_rate)
        assert ours.dtype == samples.dtype and ours.shape[1] == channels
        assert ours.tobytes() == expected, (n, channels)


@needs_audioop
def test_ratecv_over_blocks_and_extremes():
    """Long inputs cross the block boundary; full-scale square waves stress the rounding."""
    rng = np.random.default_rng(1)
    samples = _integers(rng, 3 * pcm._BLOCK_FRAMES, 2, 2)
    samples[::7] = 32767
    samples[3::7] = -32768
    expected, _ = audioop.ratecv(samples.tobytes(), 2, 2, 44100, 16000, None)
    assert pcm.ratecv(samples, 2, 44100, 16000).tobytes() == expected
    assert pcm.ratecv(samples, 2, 16000, 16000).tobytes() == samples.tobytes()


@needs_audioop
@pytest.mark.parametrize("width", [1, 2, 4])
def test_tomono_is_audioops(width):
    samples = _integers(np.random.default_rng(width), 20000, 2, width)
    expected = audioop.tomono(samples.tobytes(), width, 0.5, 0.5)
    assert pcm.tomono(samples).tobytes() == expected
    assert pcm.downmix(samples).tobytes() == expected


def test_downmix_of_three_channels_is_pydubs():
    pydub = pytest.importorskip("pydub")
    samples = _integers(np.random.default_rng(3), 500, 3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        segment = pydub.AudioSegment(
            samples.tobytes(), sample_width=2, frame_rate=16000, channels=3
        ).set_channels(1)
        expected = np.array(segment.get_array_of_samples())
    np.testing.assert_array_equal(pcm.downmix(samples), expected)


# --- decoding ------------------------------------------------------------------------------------


def _ffmpeg_raw(path: Path, sample_format: str, codec: str, dtype: str) -> np.ndarray:
    command = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-acodec", codec]
    output = subprocess.run([*command, "-f", sample_format, "-"], capture_output=True, check=True)
    return np.frombuffer(output.stdout, dtype=dtype)


@needs_ffmpeg
def test_quantize_is_ffmpegs_conversion(tmp_path):
    """Rounding half to even and clipping, on ties, out-of-range values and real decoded audio."""
    steps = (np.arange(-40000, 40000) + 0.5) / 32768  # every value a tie at 16 bits
    values = np.concatenate([steps, [1.0, -1.0, 1.7, -2.4, 0.0, 1e-9, -1e-9]])
    values = np.concatenate([values, music_like(1.0).ravel() * 2.0]).astype(np.float32)
    path = tmp_path / "values.wav"
    soundfile.write(str(path), values, 16000, subtype="FLOAT")
    decoded = _ffmpeg_raw(path, "f32le", "pcm_f32le", "<f4")
    np.testing.assert_array_equal(decoded, values)
    for bits, sample_format, codec, dtype in (
        (16, "s16le", "pcm_s16le", "<i2"),
        (32, "s32le", "pcm_s32le", "<i4"),
        (8, "u8", "pcm_u8", "u1"),
    ):
        expected = _ffmpeg_raw(path, sample_format, codec, dtype).astype(np.int64)
        if bits == 8:
            expected -= 128
        np.testing.assert_array_equal(pcm.quantize(values, bits), expected, err_msg=codec)


@needs_ffmpeg
@pytest.mark.parametrize("kind", ["mp3", "ogg", "wav16", "wav24", "float", "wav8"])
def test_ffmpeg_decoding_is_pydubs(loud_files, kind):
    path = loud_files[kind]
    segment = pydub_segment(path)
    decoded = pcm.decode_pcm(path, "ffmpeg")
    expected = np.array(segment.get_array_of_samples()).reshape(-1, segment.channels)
    assert (decoded.sample_rate, decoded.width) == (segment.frame_rate, segment.sample_width)
    np.testing.assert_array_equal(decoded.samples, expected)
    np.testing.assert_array_equal(pcm.load_pcm_audio(path, decoder="ffmpeg"), pydub_waveform(path))


@needs_ffmpeg
def test_loud_mp3_is_clipped_as_the_reference_clips_it(loud_files):
    """Decoded to float the MP3 peaks near 2; the reference's 16-bit PCM clips it, and the
    soxr path (no clipping) ends up at about half the reference's scale."""
    path = loud_files["mp3"]
    floats = _ffmpeg_raw(path, "f32le", "pcm_f32le", "<f4")
    assert np.abs(floats).max() > 1.5
    decoded = pcm.decode_pcm(path, "ffmpeg").samples
    assert decoded.max() == 32767 and decoded.min() == -32768
    ours = pcm.load_pcm_audio(path, decoder="ffmpeg")
    soxr_path = load_audio(path)
    assert len(ours) == len(soxr_path) == 48000
    scale = np.dot(soxr_path, ours) / np.dot(ours, ours)
    assert scale < 0.7


@pytest.mark.parametrize("kind", ["mp3", "ogg", "wav16", "wav24", "float", "wav8"])
def test_soundfile_decoding_is_close_to_ffmpegs(loud_files, kind):
    """libsndfile's MP3 and Vorbis decoders are not ffmpeg's: a few samples differ by one
    integer step; PCM is read exactly. Without ffmpeg, compare with the width's rules only."""
    path = loud_files[kind]
    ours = pcm.decode_pcm(path, "soundfile")
    assert ours.width == {"mp3": 2, "wav16": 2, "wav8": 1}.get(kind, 4)
    assert ours.samples.dtype == pcm._SIGNED[ours.width]
    if not pcm.ffmpeg_available():
        pytest.skip("needs ffmpeg for the comparison")
    reference = pcm.decode_pcm(path, "ffmpeg")
    assert ours.samples.shape == reference.samples.shape
    difference = np.abs(ours.samples.astype(np.int64) - reference.samples)
    if kind in ("mp3", "ogg"):
        if kind == "mp3":
            assert difference.max() == 1 and np.mean(difference > 0) < 0.01
        else:  # 32-bit samples of two float Vorbis decoders
            assert difference.max() < 1 << 12
        waveform = pcm.load_pcm_audio(path, decoder="soundfile")
        expected = pcm.load_pcm_audio(path, decoder="ffmpeg")
        assert np.abs(waveform - expected).max() < 1e-4
    else:
        assert difference.max() == 0


def test_silence_stays_zero_and_lengths_follow_ratecv(tmp_path):
    path = tmp_path / "silence.wav"
    soundfile.write(str(path), np.zeros((4410, 2), np.float32), 44100, subtype="PCM_16")
    audio = pcm.load_pcm_audio(path, decoder="soundfile")
    assert audio.dtype == np.float32 and len(audio) == (4410 - 1) * 160 // 441 + 1
    assert not audio.any()


def test_bad_audio_and_decoders_give_one_clear_line(tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"this is not audio" * 50)
    decoders = ["soundfile"] + (["ffmpeg"] if pcm.ffmpeg_available() else [])
    for decoder in decoders:
        with pytest.raises(SourceError, match=r"^missing audio"):
            pcm.load_pcm_audio(tmp_path / "absent.mp3", decoder=decoder)
        with pytest.raises(SourceError, match=r"^undecodable audio: garbage\.mp3: .") as error:
            pcm.load_pcm_audio(garbage, decoder=decoder)
        assert "\n" not in str(error.value)
    with pytest.raises(ExtractorError, match="decoder must be one of"):
        pcm.resolve_decoder("pydub")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert pcm.resolve_decoder("auto") == "soundfile"
    with pytest.raises(ExtractorError, match=r"install ffmpeg .* or use decoder=soundfile"):
        pcm.resolve_decoder("ffmpeg")


@needs_ffmpeg
def test_odd_file_names_reach_ffmpeg_as_files(loud_files, tmp_path, monkeypatch):
    odd = tmp_path / "-i: song?.mp3"
    shutil.copy(loud_files["mp3"], odd)
    monkeypatch.chdir(tmp_path)
    expected = pcm.decode_pcm(loud_files["mp3"], "ffmpeg").samples
    np.testing.assert_array_equal(pcm.decode_pcm(Path(odd.name), "ffmpeg").samples, expected)
