"""Loading beatmap audio for the audio extractors: mono, resampled, peak-normalised.

Decoding uses ``soundfile`` (libsndfile 1.1 or newer reads MP3 as well as OGG, FLAC and WAV)
and resampling ``soxr``: float throughout, no clipping, high-quality resampling. The mapper
classifier instead reads audio exactly as its reference does (16-bit PCM, pydub's arithmetic):
see :func:`beatmap_fid.beatmap.pcm.load_pcm_audio`. Any failure is a :class:`~beatmap_fid.errors.SourceError`; callers
that can go on without audio (window counts from the beatmap's length) turn it into a note.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import soxr

from beatmap_fid.errors import SourceError

DEFAULT_SAMPLE_RATE = 16000
"""The mapper classifier's sample rate."""


def _open_error(path: Path, exc: Exception) -> SourceError:
    if not path.exists():
        return SourceError(f"missing audio: no such file: {path}")
    return SourceError(f"undecodable audio: {path.name}: {exc}")


def load_audio(path: str | Path, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """Samples of ``path`` as float32 mono at ``sample_rate``, scaled so the peak is 1.0.

    Channels are averaged, the signal resampled with soxr, then divided by its largest
    absolute value (silence stays all zeros).
    """
    path = Path(path)
    try:
        data, source_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises LibsndfileError, RuntimeError, TypeError, ...
        raise _open_error(path, exc) from exc
    if data.size == 0:
        raise SourceError(f"undecodable audio: {path.name}: no samples")
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


def audio_num_samples(path: str | Path, sample_rate: int = DEFAULT_SAMPLE_RATE) -> int:
    """Length of ``load_audio(path, sample_rate)`` read from the file header, without decoding.

    libsndfile reports exact frame counts for the formats it reads (MP3 included), so this
    equals the decoded length; it is what window counts need, at a fraction of the cost.
    """
    path = Path(path)
    try:
        info = soundfile.info(str(path))
    except Exception as exc:  # libsndfile raises LibsndfileError, RuntimeError, TypeError, ...
        raise _open_error(path, exc) from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise SourceError(f"undecodable audio: {path.name}: no samples")
    return resampled_length(info.frames, info.samplerate, sample_rate)
