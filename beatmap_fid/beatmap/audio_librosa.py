"""Loading audio the way ``librosa.load(path, sr=rate)`` does: mean of the channels, soxr HQ.

This is how transformers' ``audio_utils.load_audio`` decodes a file when torchcodec is not
installed, and so how CM3P's processor reads a map's audio: ``soundfile`` decodes to float32
(MP3 included, values above full scale kept), the channels are averaged, the signal is
resampled with soxr at high quality and its length fixed to ``ceil(n · rate / source_rate)``
samples (padded with zeros or cut). Unlike :func:`beatmap_fid.beatmap.audio.load_audio` there
is no peak normalisation. Any failure is a :class:`~beatmap_fid.errors.SourceError`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soxr

from beatmap_fid.beatmap.audio import decode_audio
from beatmap_fid.errors import SourceError


def load_audio_librosa(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """float32 mono samples of ``path`` at ``sample_rate``, as ``librosa.load`` returns them.

    Decoded by :func:`~beatmap_fid.beatmap.audio.decode_audio` in one read from the start, as
    librosa reads (``soundfile.read`` seeks first, which makes libsndfile's MP3 decoder give
    slightly different samples), within the library's audio limits.
    """
    path = Path(path)
    data, source_rate = decode_audio(path, "float32", rewind=False)
    mono = np.mean(data.T, axis=0) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise SourceError(f"undecodable audio: {path.name}: samples are not finite")
    if source_rate == sample_rate:
        return np.ascontiguousarray(mono, dtype=np.float32)
    target = math.ceil(len(mono) * (float(sample_rate) / source_rate))
    resampled = soxr.resample(mono, source_rate, sample_rate, quality="soxr_hq")
    fixed = np.zeros(target, dtype=np.float32)
    fixed[: min(target, len(resampled))] = resampled[:target]
    return fixed
