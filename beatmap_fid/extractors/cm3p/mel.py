"""CM3P's audio features: Whisper's log-mel spectrogram, computed per window.

Each window's audio (16 s at 16 kHz) is zero-padded to the checkpoint's block (256 000
samples) and turned into Whisper's log-mel: a Hann-windowed STFT (n_fft 400, hop 160, centred,
reflect padding), the last frame dropped, power spectrum, 80 Slaney mel filters from 0 to
8 kHz (Whisper's fixed upper edge), ``log10`` of at least 1e-10, floored at the window's own maximum − 8, then
``(x + 4) / 4``. The floor is per window: one log-mel over the whole song sliced afterwards is
not the same feature. The filters come from transformers' ``mel_filter_bank``, the transform
from ``torch.stft``; a batch of windows is one call, on any device.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from beatmap_fid.extractors.cm3p.checkpoint import WindowSettings


@lru_cache(maxsize=4)
def mel_filters(n_fft: int, n_mels: int, sampling_rate: int) -> np.ndarray:
    """Whisper's mel filter bank, shape (n_fft // 2 + 1, n_mels), float64."""
    from transformers.audio_utils import mel_filter_bank

    return mel_filter_bank(
        num_frequency_bins=1 + n_fft // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=sampling_rate,
        norm="slaney",
        mel_scale="slaney",
    )


def pad_window_audio(samples: np.ndarray, settings: WindowSettings) -> np.ndarray:
    """A window's samples zero-padded to the next multiple of the audio block."""
    block = settings.pad_to_multiple_of
    length = max(-(-len(samples) // block) * block, block)
    padded = np.zeros(length, dtype=np.float32)
    padded[: len(samples)] = samples
    return padded


def num_audio_tokens(settings: WindowSettings) -> int:
    """Audio tokens per window: mel frames of one block over the frames per token."""
    samples, hop = settings.pad_to_multiple_of, settings.hop_length
    frames = math.ceil(samples / hop - 1) if samples % hop else samples // hop
    return math.ceil(frames / settings.audio_length_per_tok)


def log_mel(windows, settings: WindowSettings):
    """Log-mel features (batch, n_mels, frames) float32 of a (batch, samples) tensor of padded
    window audio, on the tensor's device."""
    import torch

    waveform = windows.to(torch.float32)
    window = torch.hann_window(settings.n_fft, device=waveform.device)
    stft = torch.stft(
        waveform, settings.n_fft, settings.hop_length, window=window, return_complex=True
    )
    power = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(
        mel_filters(settings.n_fft, settings.feature_size, settings.sampling_rate)
    ).to(waveform.device, torch.float32)
    mel = filters.T @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0
