"""Loading beatmap audio for the audio extractors: mono, resampled, peak-normalised.

Decoding uses ``soundfile`` (libsndfile 1.1 or newer reads MP3 as well as OGG, FLAC and WAV)
and resampling ``soxr``: float throughout, no clipping, high-quality resampling. The mapper
classifier instead reads audio exactly as its reference does (16-bit PCM, pydub's arithmetic):
see :func:`beatmap_fid.beatmap.pcm.load_pcm_audio`. Any failure is a :class:`~beatmap_fid.errors.SourceError`; callers
that can go on without audio (window counts from the beatmap's length) turn it into a note.

Audio headers are not trusted. Every audio path of the library (this module,
:mod:`~beatmap_fid.beatmap.pcm` and :mod:`~beatmap_fid.beatmap.audio_librosa`) refuses sample
rates below :data:`MIN_SAMPLE_RATE` before decoding anything, and audio that decodes to more
than :data:`MAX_AUDIO_SECONDS` or :data:`MAX_AUDIO_SAMPLES`; a header's frame count is used
only once the decoder has produced the last frame it claims, and otherwise the audio is
decoded in blocks and counted. So a forged header can neither allocate what it claims nor
make a few bytes of audio resample into gigabytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr

from beatmap_fid.errors import SourceError

DEFAULT_SAMPLE_RATE = 16000
"""The mapper classifier's sample rate."""

MIN_SAMPLE_RATE = 8_000
"""Lowest sample rate read, in Hz (the lowest of MP3). Audio at a lower rate is refused
(``audio rate too low``): resampling 1 Hz audio to 16 kHz would multiply it 16 000-fold."""
MAX_AUDIO_SECONDS = 3_600
"""Longest audio read, in decoded seconds; longer audio is refused (``audio too long``)."""
MAX_AUDIO_SAMPLES = MAX_AUDIO_SECONDS * 48_000 * 2
"""Most decoded samples (frames × channels) read from one file: an hour of 48 kHz stereo,
1.4 GB as float32. Files at higher rates or with more channels get proportionally less time
(``audio too long``)."""

_BLOCK_SAMPLES = 1 << 20
"""Samples (frames × channels) decoded at a time: 4 MiB of float32."""


def _open_error(path: Path, exc: Exception) -> SourceError:
    if not path.exists():
        return SourceError(f"missing audio: no such file: {path}")
    return SourceError(f"undecodable audio: {path.name}: {exc}")


def frame_limit(sample_rate: int, channels: int) -> int:
    """Most frames read from a file of this rate and channel count (see the limits above)."""
    return min(MAX_AUDIO_SECONDS * sample_rate, MAX_AUDIO_SAMPLES // max(channels, 1))


def check_audio_format(name: str, sample_rate: int, channels: int) -> None:
    """Refuse a sample rate below :data:`MIN_SAMPLE_RATE` or a stream without channels."""
    if sample_rate < MIN_SAMPLE_RATE:
        raise SourceError(
            f"audio rate too low: {name}: {sample_rate} Hz (at least {MIN_SAMPLE_RATE} Hz is read)"
        )
    if channels < 1:
        raise SourceError(f"undecodable audio: {name}: {channels} channels")


def too_long_error(name: str, sample_rate: int, channels: int) -> SourceError:
    """The refusal of audio that decodes to more than :func:`frame_limit` frames."""
    seconds = frame_limit(sample_rate, channels) / sample_rate
    return SourceError(
        f"audio too long: {name}: more than {seconds:g} s of {channels}-channel "
        f"{sample_rate} Hz audio decoded (at most {MAX_AUDIO_SECONDS} s and "
        f"{MAX_AUDIO_SAMPLES} samples are read)"
    )


def _open(path: Path) -> soundfile.SoundFile:
    try:
        handle = soundfile.SoundFile(str(path))
    except Exception as exc:  # libsndfile raises LibsndfileError, RuntimeError, TypeError, ...
        raise _open_error(path, exc) from exc
    try:
        check_audio_format(path.name, handle.samplerate, handle.channels)
    except SourceError:
        handle.close()
        raise
    return handle


def _decoded_blocks(
    handle: soundfile.SoundFile, path: Path, dtype: str, *, rewind: bool
) -> Iterator[np.ndarray]:
    """Blocks ``(frames, channels)`` of ``dtype`` decoded from an open file until its end;
    :class:`SourceError` once more than :func:`frame_limit` frames are decoded."""
    rate, channels = handle.samplerate, handle.channels
    limit = frame_limit(rate, channels)
    block = max(_BLOCK_SAMPLES // channels, 1)
    decoded = 0
    try:
        if rewind and handle.seekable():
            handle.seek(0)
        while True:
            data = handle.read(block, dtype=dtype, always_2d=True)
            decoded += len(data)
            if decoded > limit:
                raise too_long_error(path.name, rate, channels)
            if len(data):
                yield data
            if len(data) < block:
                return
    except SourceError:
        raise
    except Exception as exc:  # libsndfile raises LibsndfileError, RuntimeError, ...
        raise SourceError(f"undecodable audio: {path.name}: {exc}") from exc


def _last_frame_decodes(handle: soundfile.SoundFile, frames: int) -> bool:
    """Whether the decoder produces frame ``frames - 1`` of an open file."""
    try:
        handle.seek(frames - 1)
        return len(handle.read(2, dtype="int16")) == 1
    except Exception:  # libsndfile raises LibsndfileError, RuntimeError, ...
        return False


def _confirmed_frames(path: Path) -> int:
    """The header's frame count when it is within the limits and the decoder produces the last
    frame it claims (a seek and one short read), else 0."""
    with _open(path) as handle:
        claimed = handle.frames
        if 0 < claimed <= frame_limit(handle.samplerate, handle.channels):
            return claimed if _last_frame_decodes(handle, claimed) else 0
    return 0


def decode_audio(path: str | Path, dtype: str, *, rewind: bool = True) -> tuple[np.ndarray, int]:
    """Every frame of ``path`` as ``(frames, channels)`` of ``dtype``, and its sample rate.

    A confirmed header (see :func:`audio_frames`) lets the file be read in one call, exactly as
    ``soundfile.read`` reads it (``rewind``: after a seek to the first frame) or, without
    ``rewind``, as librosa reads it (straight from its opening). libsndfile's MP3 decoder
    rounds a few samples differently after that seek, and after block boundaries, so this
    matters to the last bit. Any other file is decoded in blocks and refused once it exceeds
    the limits.
    """
    path = Path(path)
    confirmed = _confirmed_frames(path)
    with _open(path) as handle:  # afresh: a failed seek can leave the decoder unusable
        rate, channels = handle.samplerate, handle.channels
        if confirmed:
            try:
                if rewind:
                    handle.seek(0)
                data = handle.read(confirmed, dtype=dtype, always_2d=True)
            except Exception as exc:  # libsndfile raises LibsndfileError, RuntimeError, ...
                raise SourceError(f"undecodable audio: {path.name}: {exc}") from exc
        else:
            blocks = list(_decoded_blocks(handle, path, dtype, rewind=rewind))
            data = np.concatenate(blocks) if blocks else np.zeros((0, channels), dtype=dtype)
    if len(data) == 0:
        raise SourceError(f"undecodable audio: {path.name}: no samples")
    return data, rate


def load_audio(path: str | Path, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """Samples of ``path`` as float32 mono at ``sample_rate``, scaled so the peak is 1.0.

    Channels are averaged, the signal resampled with soxr, then divided by its largest
    absolute value (silence stays all zeros).
    """
    path = Path(path)
    data, source_rate = decode_audio(path, "float32")
    mono = data.mean(axis=1, dtype=np.float32)
    if source_rate != sample_rate:
        mono = soxr.resample(mono, source_rate, sample_rate).astype(np.float32, copy=False)
    peak = float(np.max(np.abs(mono)))
    if not np.isfinite(peak):
        raise SourceError(f"undecodable audio: {path.name}: samples are not finite")
    if peak > 0:
        mono = mono * np.float32(1.0 / peak)
    return mono


def resampled_length(n_samples: int, source_rate: int, sample_rate: int) -> int:
    """Number of samples soxr produces when resampling ``n_samples`` (it rounds half up)."""
    return (2 * n_samples * sample_rate + source_rate) // (2 * source_rate)


def audio_frames(path: str | Path) -> tuple[int, int]:
    """Decoded length of ``path`` in frames, and its sample rate.

    The header's frame count is used when it is within the limits and the decoder produces
    the last frame it claims (a seek and one short read: about as costly as hashing the
    file); otherwise the frames are counted by decoding the file in blocks, up to the limits.
    """
    path = Path(path)
    confirmed = _confirmed_frames(path)
    with _open(path) as handle:
        rate = handle.samplerate
        if confirmed:
            return confirmed, rate
        frames = sum(len(data) for data in _decoded_blocks(handle, path, "int16", rewind=False))
    if frames == 0:
        raise SourceError(f"undecodable audio: {path.name}: no samples")
    return frames, rate


def audio_num_samples(path: str | Path, sample_rate: int = DEFAULT_SAMPLE_RATE) -> int:
    """Length of ``load_audio(path, sample_rate)`` without decoding all of it (see
    :func:`audio_frames`): what window counts need, at a fraction of the cost."""
    frames, source_rate = audio_frames(path)
    return resampled_length(frames, source_rate, sample_rate)
