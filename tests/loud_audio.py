"""Loud test audio and the reference's waveform (pydub + ffmpeg), shared by the audio tests."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile

from beatmap_fid.beatmap import pcm


def pydub_segment(path: Path):
    """pydub's ``AudioSegment`` of ``path``, opened as the reference opens audio files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audio_segment = pytest.importorskip("pydub").AudioSegment
        return audio_segment.from_file(path, format=path.suffix[1:])


def pydub_waveform(path: Path, sample_rate: int = 16000) -> np.ndarray:
    """The reference's waveform: pydub + ffmpeg, resampled, mono, divided by the peak."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        segment = pydub_segment(path).set_frame_rate(sample_rate).set_channels(1)
        samples = np.array(segment.get_array_of_samples()).astype(np.float32)
    return samples / np.max(np.abs(samples))


def music_like(seconds: float, rate: int = 44100, seed: int = 0) -> np.ndarray:
    """Stereo float32 with notes, kick drums and a slightly different right channel, peak 1."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    left = np.zeros(n)
    for start in np.arange(0.0, seconds, 0.25):
        note = 110.0 * 2 ** (rng.integers(0, 36) / 12)
        span = (t >= start) & (t < start + 0.5)
        decay = np.exp(-(t[span] - start) * 4)
        left[span] += decay * sum(np.sin(2 * np.pi * note * h * t[span]) / h for h in (1, 2, 3))
    for hit in np.arange(0.0, seconds, 0.5):
        span = (t >= hit) & (t < hit + 0.4)
        local = t[span] - hit
        left[span] += (
            1.5
            * np.sin(2 * np.pi * (50 + 80 * np.exp(-local / 0.03)) * local)
            * np.exp(-local / 0.15)
        )
    right = 0.85 * left + 0.03 * rng.standard_normal(n)
    stereo = np.stack([left, right], axis=1)
    return (stereo / np.abs(stereo).max()).astype(np.float32)


def write_loud(path: Path, signal: np.ndarray, gain: float, rate: int = 44100) -> Path:
    """``signal · gain`` encoded by its suffix (ffmpeg when present, else libsndfile), so that
    the decoded float peaks above full scale for lossy formats."""
    if pcm.ffmpeg_available():
        source = path.with_name(path.stem + "_source.wav")
        soundfile.write(str(source), signal * gain, rate, subtype="FLOAT")
        codec = {".mp3": ["-c:a", "libmp3lame", "-b:a", "192k"], ".ogg": ["-c:a", "libvorbis"]}
        command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source)]
        subprocess.run([*command, *codec.get(path.suffix, []), str(path)], check=True)
        source.unlink()
    else:
        soundfile.write(str(path), np.clip(signal * gain, -1, 1), rate)
    return path
