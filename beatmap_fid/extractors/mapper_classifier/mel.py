"""The classifier's mel front end: power mel spectrogram, state-dict compatible with nnAudio.

The reference model wraps ``nnAudio.features.MelSpectrogram`` (Hann window, centred frames with
zero padding, power 2, Slaney mel scale with area normalisation, no log). Its checkpoints
therefore carry nnAudio's buffers under ``spectrogram.transform.mel_basis`` and
``spectrogram.transform.stft.{wsin,wcos,window_mask}``. This module builds the same buffers with
the same float32 arithmetic, so checkpoints load strictly either way, and computes the
spectrogram with an FFT (``torch.stft``) instead of nnAudio's 1-D convolution with the Fourier
kernels: the same numbers to float32 rounding, far less work. The Fourier kernels ``wsin``/``wcos``
are fixed functions of the window (the reference never trains them); they are kept for the state
dict, and :func:`check_fourier_kernels` confirms a loaded checkpoint's kernels are those.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_SLANEY_LINEAR_HZ_PER_MEL = 200.0 / 3
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_start_mel = _SLANEY_LOG_START_HZ / _SLANEY_LINEAR_HZ_PER_MEL
    log_part = np.log(np.maximum(hz, _SLANEY_LOG_START_HZ) / _SLANEY_LOG_START_HZ)
    return np.where(
        hz >= _SLANEY_LOG_START_HZ,
        log_start_mel + log_part / _SLANEY_LOG_STEP,
        hz / _SLANEY_LINEAR_HZ_PER_MEL,
    )


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_start_mel = _SLANEY_LOG_START_HZ / _SLANEY_LINEAR_HZ_PER_MEL
    return np.where(
        mel >= log_start_mel,
        _SLANEY_LOG_START_HZ * np.exp(_SLANEY_LOG_STEP * (mel - log_start_mel)),
        mel * _SLANEY_LINEAR_HZ_PER_MEL,
    )


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Slaney-normalised triangular mel filters, float32 (n_mels, n_fft // 2 + 1).

    Rounded like nnAudio's (librosa 0.7) version: triangles in float64 stored as float32,
    then scaled by the band widths in float64 and stored as float32 again.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_mel = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    edges_hz = _mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)
    area = 2.0 / (edges_hz[2:] - edges_hz[:-2])
    return (weights * area[:, None]).astype(np.float32)


def fourier_kernels(n_fft: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windowed sine and cosine kernels (n_fft//2+1, 1, n_fft) and the periodic Hann window."""
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    # Evaluated in nnAudio's operation order so the float32 kernels come out bit-identical.
    phase = (2 * np.pi * np.arange(n_fft // 2 + 1))[:, None] * np.arange(n_fft, dtype=np.float64)
    sin = np.sin(phase / n_fft).astype(np.float32)[:, None, :]
    cos = np.cos(phase / n_fft).astype(np.float32)[:, None, :]
    return sin * window, cos * window, window


class FourierKernels(nn.Module):
    """Holds nnAudio's STFT buffers: ``wsin``, ``wcos`` and ``window_mask`` (1, n_fft, 1)."""

    def __init__(self, n_fft: int):
        super().__init__()
        wsin, wcos, window = fourier_kernels(n_fft)
        self.register_buffer("wsin", torch.from_numpy(wsin))
        self.register_buffer("wcos", torch.from_numpy(wcos))
        self.register_buffer("window_mask", torch.from_numpy(window)[None, :, None].clone())


class MelTransform(nn.Module):
    """Power mel spectrogram (batch, n_mels, frames) of waveforms (batch, samples)."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int, hop_length: int):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.stft = FourierKernels(n_fft)
        basis = mel_filterbank(sample_rate, n_fft, n_mels, 0.0, sample_rate // 2)
        self.register_buffer("mel_basis", torch.from_numpy(basis))

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        with torch.autocast(samples.device.type, enabled=False):
            samples = samples.float()
            padded = nn.functional.pad(samples, (self.n_fft // 2, self.n_fft // 2))
            spectrum = torch.stft(
                padded,
                self.n_fft,
                hop_length=self.hop_length,
                window=self.stft.window_mask.flatten(),
                center=False,
                return_complex=True,
            )
            power = spectrum.real.square() + spectrum.imag.square()
            return torch.matmul(self.mel_basis, power)


class MelSpectrogram(nn.Module):
    """Mel frames (batch, frames, n_mels) of waveforms (batch, samples); frames = samples // hop + 1."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int, hop_length: int):
        super().__init__()
        self.transform = MelTransform(sample_rate, n_fft, n_mels, hop_length)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.transform(samples).transpose(1, 2)


def check_fourier_kernels(spectrogram: MelSpectrogram, atol: float = 1e-6) -> bool:
    """Whether the module's STFT kernels are the fixed windowed Fourier kernels this FFT computes."""
    kernels = spectrogram.transform.stft
    wsin, wcos, window = fourier_kernels(kernels.wsin.shape[-1])
    device = kernels.wsin.device
    return (
        torch.allclose(kernels.wsin, torch.from_numpy(wsin).to(device), atol=atol)
        and torch.allclose(kernels.wcos, torch.from_numpy(wcos).to(device), atol=atol)
        and torch.allclose(kernels.window_mask.flatten(), torch.from_numpy(window).to(device))
    )
