"""Audio as the mapper classifier's reference loads it: integer PCM, resampled and down-mixed.

The reference (Mapperatorinator's classifier and ``calc_fid.py``) loads audio with pydub:
ffmpeg decodes the file to integer PCM (16-bit for MP3 and AAC, so every sample is rounded and
clipped to the int16 range), ``set_frame_rate`` resamples each channel with the arithmetic of
the standard library's ``audioop.ratecv`` (linear interpolation, truncating integer
arithmetic), ``set_channels(1)`` averages the channels with ``audioop.tomono``, and the samples
are divided by their peak. This module does the same with numpy, bit for bit (``audioop`` is
gone from Python 3.13), so that the classifier sees exactly the reference's waveform. Songs
that peak above full scale once decoded to float (most real MP3s do) are clipped on the way,
as in the reference; :func:`beatmap_fid.beatmap.audio.load_audio` (soxr, no clipping) remains
the high-quality path of the other audio extractors.

Decoders: ``"ffmpeg"`` runs the ``ffmpeg`` and ``ffprobe`` programs with the options pydub
passes, which makes the samples identical to the reference's. ``"soundfile"`` decodes with
libsndfile and converts to integers with ffmpeg's rounding and clipping; it needs no external
program, but its MP3 and Vorbis decoders are not ffmpeg's, so a few samples differ by one
integer step (measured in ``benchmarks/RESULTS.md``). ``"auto"`` picks ffmpeg when both
programs are on ``PATH``. Both keep to the audio limits of :mod:`beatmap_fid.beatmap.audio`:
the sample rate is checked before decoding and the decoded output is refused once it passes
the most frames read.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from beatmap_fid.beatmap.audio import check_audio_format, decode_audio, frame_limit, too_long_error
from beatmap_fid.errors import ExtractorError, InputError, SourceError

DECODERS = ("auto", "ffmpeg", "soundfile")

_SIGNED = {1: np.int8, 2: np.int16, 4: np.int32}
_BLOCK_FRAMES = 1 << 18
"""Output frames resampled at a time, which bounds the int64 temporaries to a few MiB."""


@dataclass(frozen=True)
class Pcm:
    """Integer samples ``(frames, channels)`` at ``sample_rate``.

    ``width`` is the bytes per sample of the reference's data: 1 (``int8``, unsigned 8-bit
    audio with its bias removed), 2 (``int16``) or 4 (``int32``; 24-bit audio as pydub
    widens it, see :func:`widen_24_bit`).
    """

    samples: np.ndarray
    sample_rate: int
    width: int


# --- audioop arithmetic --------------------------------------------------------------------------


def ratecv(samples: np.ndarray, width: int, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample integer ``samples`` (frames, channels) as ``audioop.ratecv`` does from a fresh
    state with its default weights (what pydub's ``set_frame_rate`` calls).

    Output frame ``j`` sits at input position ``t = j · in / out`` (rates divided by their
    gcd); with ``k = ceil(t)`` and ``d = (k - t) · out`` it is ``trunc((x[k-1]·d +
    x[k]·(out - d)) / out)`` computed in float64 on samples shifted to 32 bits, then shifted
    back (flooring). There are ``floor((n - 1) · out / in) + 1`` output frames. The products
    are exact in float64 (for reduced output rates below 2^21), so the result is identical to
    the C code's.
    """
    if in_rate <= 0 or out_rate <= 0:
        raise InputError(f"sample rates must be positive, not {in_rate} and {out_rate}")
    if in_rate == out_rate or len(samples) == 0:
        return samples.copy()
    divisor = math.gcd(in_rate, out_rate)
    in_step, out_step = in_rate // divisor, out_rate // divisor
    shift = 32 - 8 * width
    n_out = (len(samples) - 1) * out_step // in_step + 1
    result = np.empty((n_out, samples.shape[1]), dtype=samples.dtype)
    for begin in range(0, n_out, _BLOCK_FRAMES):
        j = np.arange(begin, min(begin + _BLOCK_FRAMES, n_out), dtype=np.int64)
        k = -((-j * in_step) // out_step)
        d = (k * out_step - j * in_step)[:, None]
        previous = samples[k - 1].astype(np.int64) << shift  # k = 0 only where d = 0
        current = samples[k].astype(np.int64) << shift
        mixed = (previous * d + current * (out_step - d)).astype(np.float64) / out_step
        result[begin : begin + len(j)] = np.trunc(mixed).astype(np.int64) >> shift
    return result


def tomono(samples: np.ndarray) -> np.ndarray:
    """Average two channels as ``audioop.tomono(data, width, 0.5, 0.5)`` does: the floor of
    ``left / 2 + right / 2`` (pydub's ``set_channels(1)`` of stereo audio)."""
    pair = samples.astype(np.int64)
    return ((pair[:, 0] + pair[:, 1]) >> 1).astype(samples.dtype)


def downmix(samples: np.ndarray) -> np.ndarray:
    """One channel from ``samples`` (frames, channels) as pydub's ``set_channels(1)``: stereo
    through :func:`tomono`, more channels by adding each channel floor-divided by their count."""
    channels = samples.shape[1]
    if channels == 1:
        return samples[:, 0].copy()
    if channels == 2:
        return tomono(samples)
    return (samples.astype(np.int64) // channels).sum(axis=1).astype(samples.dtype)


# --- decoding ------------------------------------------------------------------------------------


def widen_24_bit(values: np.ndarray) -> np.ndarray:
    """24-bit samples as pydub stores them in 32 bits: each value's three bytes above a low
    byte of 0x00, or 0xFF for negative values, i.e. ``(v << 8) | (0xFF if v < 0)``."""
    values = values.astype(np.int32)
    return (values << 8) | np.where(values < 0, 0xFF, 0).astype(np.int32)


def ffmpeg_available() -> bool:
    """Whether the ``ffmpeg`` and ``ffprobe`` programs are on ``PATH``."""
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def resolve_decoder(decoder: str) -> str:
    """``"ffmpeg"`` or ``"soundfile"`` for ``decoder`` (``"auto"`` prefers ffmpeg)."""
    if decoder not in DECODERS:
        raise ExtractorError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    if decoder == "auto":
        return "ffmpeg" if ffmpeg_available() else "soundfile"
    if decoder == "ffmpeg" and not ffmpeg_available():
        raise ExtractorError(
            "decoder=ffmpeg needs the ffmpeg and ffprobe programs on PATH: install ffmpeg "
            "(apt-get install ffmpeg, brew install ffmpeg or conda install ffmpeg) or use "
            "decoder=soundfile"
        )
    return decoder


_FLOAT_CODECS_AS_16_BIT = ("mp3", "mp4", "aac", "webm", "ogg")
_BITS_OF_SAMPLE_FORMAT = {"u8": 8, "s16": 16, "s32": 32, "flt": 32, "dbl": 64, "s64": 64}


def reference_bits(codec: str, sample_format: str, bits_per_sample: int) -> int:
    """Bits per sample pydub asks ffmpeg for, from ffprobe's view of the first audio stream.

    Planar float from the codecs pydub lists becomes 16-bit; otherwise the stream's own bits
    (``bits_per_sample``, else those of its sample format), so Vorbis and float WAV decode to
    32-bit. 64-bit formats, which pydub cannot hold, are read as 32-bit.
    """
    if sample_format == "fltp" and codec in _FLOAT_CODECS_AS_16_BIT:
        return 16
    bits = bits_per_sample or _BITS_OF_SAMPLE_FORMAT.get(sample_format.rstrip("p"), 16)
    return min(bits, 32)


def _ffprobe_stream(path: Path) -> dict:
    command = ["ffprobe", "-v", "error", "-of", "json", "-show_streams"]
    command += ["-select_streams", "a:0", _ffmpeg_url(path)]
    result = subprocess.run(command, capture_output=True, check=False)
    try:
        streams = json.loads(result.stdout or b"{}").get("streams", [])
    except json.JSONDecodeError:
        streams = []
    if result.returncode != 0 or not streams:
        message = _last_line(result.stderr) or "no audio stream"
        raise SourceError(f"undecodable audio: {path.name}: {message}")
    return streams[0]


def _ffmpeg_url(path: Path) -> str:
    """``path`` for ffmpeg's command line: absolute, behind ``file:`` so that a leading ``-`` or
    a colon in the name is not read as an option or a protocol."""
    return f"file:{path.resolve()}"


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1].strip() if lines else ""


def _ffmpeg_output(
    command: list[str], path: Path, limit_bytes: int, too_long: SourceError
) -> bytes:
    """ffmpeg's standard output, read as it comes; :class:`SourceError` when it fails, and
    ``too_long`` once its output passes ``limit_bytes`` (the process is then stopped)."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
        output = bytearray()
        try:
            while chunk := process.stdout.read(1 << 20):
                output += chunk
                if len(output) > limit_bytes:
                    process.kill()
                    raise too_long
        finally:
            process.stdout.close()
            returncode = process.wait()
        if returncode != 0 or not output:
            errors.seek(0)
            message = _last_line(errors.read()) or "ffmpeg produced no samples"
            raise SourceError(f"undecodable audio: {path.name}: {message}")
    return bytes(output)


def decode_ffmpeg(path: str | Path) -> Pcm:
    """Integer PCM of the file's first audio stream, decoded by ffmpeg as pydub has it do,
    within the library's audio limits (see :mod:`beatmap_fid.beatmap.audio`)."""
    path = Path(path)
    stream = _ffprobe_stream(path)
    rate, channels = int(stream.get("sample_rate") or 0), int(stream.get("channels") or 0)
    check_audio_format(path.name, rate, channels)
    bits = reference_bits(
        stream.get("codec_name", ""),
        stream.get("sample_fmt", ""),
        int(stream.get("bits_per_sample") or 0),
    )
    sample_format = {8: "u8", 16: "s16le", 24: "s24le", 32: "s32le"}[bits]
    codec = "pcm_u8" if bits == 8 else f"pcm_{sample_format}"
    command = ["ffmpeg", "-nostdin", "-v", "error", "-i", _ffmpeg_url(path), "-map", "0:a:0"]
    command += ["-vn", "-acodec", codec, "-f", sample_format, "-"]
    limit_bytes = frame_limit(rate, channels) * channels * bits // 8
    stdout = _ffmpeg_output(command, path, limit_bytes, too_long_error(path.name, rate, channels))
    raw = np.frombuffer(stdout, dtype=np.uint8)
    if bits == 8:
        samples = (raw.astype(np.int16) - 128).astype(np.int8)
    elif bits == 24:
        triples = raw[: len(raw) // 3 * 3].reshape(-1, 3).astype(np.int32)
        samples = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        samples = widen_24_bit((samples << 8) >> 8)  # sign-extended, then as pydub widens
    else:
        samples = raw.view(f"<i{bits // 8}").astype(_SIGNED[bits // 8])
    frames = len(samples) // channels
    width = 4 if bits == 24 else bits // 8
    return Pcm(samples[: frames * channels].reshape(frames, channels), rate, width)


def quantize(samples: np.ndarray, bits: int) -> np.ndarray:
    """Float samples to integers as ffmpeg converts them: ``x · 2^(bits-1)`` rounded half to
    even, clipped to the integer range (8-bit audio is returned without its bias)."""
    scale = np.float32(1 << (bits - 1))
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * scale).astype(np.float64)
    low, high = -float(1 << (bits - 1)), float((1 << (bits - 1)) - 1)
    return np.clip(scaled, low, high).astype(_SIGNED[max(bits // 8, 1)])


_SUBTYPE_BITS = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}


def decode_soundfile(path: str | Path) -> Pcm:
    """Integer PCM decoded by libsndfile: integer formats read exactly, compressed and float
    formats converted with :func:`quantize` at the width the reference would use."""
    import soundfile

    path = Path(path)
    try:
        info = soundfile.info(str(path))
    except Exception as exc:  # libsndfile raises LibsndfileError, RuntimeError, TypeError, ...
        if not path.exists():
            raise SourceError(f"missing audio: no such file: {path}") from exc
        raise SourceError(f"undecodable audio: {path.name}: {exc}") from exc
    bits = _SUBTYPE_BITS.get(info.subtype)
    if bits is None:
        bits = 16 if info.format == "MP3" else 32
    elif bits == 24 and info.format == "FLAC":
        bits = 32  # ffmpeg decodes 24-bit FLAC to 32-bit samples; pydub keeps them so
    if bits in (8, 16, 32) and info.subtype in _SUBTYPE_BITS:
        data, rate = decode_audio(path, {8: "int16", 16: "int16", 32: "int32"}[bits])
        samples = (data >> 8).astype(np.int8) if bits == 8 else data
    elif bits == 24:
        data, rate = decode_audio(path, "int32")
        samples = widen_24_bit(data >> 8)
    else:
        data, rate = decode_audio(path, "float32")
        samples = quantize(data, bits)
    width = {8: 1, 16: 2, 24: 4, 32: 4}[bits]
    return Pcm(np.ascontiguousarray(samples), int(rate), width)


def decode_pcm(path: str | Path, decoder: str = "auto") -> Pcm:
    """Integer PCM of ``path`` with the given decoder (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"missing audio: no such file: {path}")
    if resolve_decoder(decoder) == "ffmpeg":
        return decode_ffmpeg(path)
    return decode_soundfile(path)


# --- the reference's waveform --------------------------------------------------------------------


def load_pcm_audio(path: str | Path, sample_rate: int = 16000, decoder: str = "auto") -> np.ndarray:
    """Float32 mono samples of ``path`` at ``sample_rate``, exactly as the reference classifier
    loads them: integer PCM, ``ratecv`` per channel, down-mix, divided by the peak.

    The division is float32 ``samples / peak`` as in ``calc_fid.py``'s loader; the classifier's
    own ``classify.py`` multiplies by ``1 / peak`` instead, which differs by one float32 step
    in some samples when the peak is not a power of two. Silence stays all zeros.
    """
    pcm = decode_pcm(path, decoder)
    if pcm.samples.size == 0:
        raise SourceError(f"undecodable audio: {Path(path).name}: no samples")
    resampled = ratecv(pcm.samples, pcm.width, pcm.sample_rate, sample_rate)
    mono = downmix(resampled).astype(np.float32)
    peak = np.max(np.abs(mono))
    return mono / peak if peak > 0 else mono
