"""Audio embeddings from log-mel spectrogram pictures.

Each audio file (wav, mp3, ogg/opus, flac, ...) is read by
:func:`beatmap_fid.beatmap.audio.load_audio` (soundfile, mono, soxr resampling, peak-normalised
to 1, so loudness does not matter) and cut into fixed segments (15 s by default, optionally
overlapping); each segment becomes a log-mel spectrogram picture (torch STFT, HTK mel
filterbank, dB on a fixed scale mapped to [0, 1], low frequencies at the bottom), embedded by an
EfficientNet backbone (EfficientNet-Lite0 with its ImageNet weights by default) or summarised
without weights (``backbone="stats"``: per mel band mean, standard deviation and 10/50/90th
percentiles).

Ids are ``f"{relpath}#{k}"`` (k = segment index from the start of the track) and the label is
the track's relative path. Segments holding less than half a segment of audio (a short track,
the tail of a long one) are dropped; a kept partial segment is zero-padded to full length, so a
track shorter than half a segment yields nothing and is skipped as too short. Unreadable
files, silent tracks and silent segments are skipped with a reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.beatmap.audio import load_audio
from beatmap_fid.errors import ExtractorError, SkipLog, SourceError
from beatmap_fid.extractors.base import Item
from beatmap_fid.extractors.efficientnet import load_backbone
from beatmap_fid.extractors.images import autocast_context, check_autocast, default_device

AUDIO_EXTENSIONS = frozenset({".aif", ".aiff", ".au", ".flac", ".mp3", ".ogg", ".opus", ".wav"})
DEFAULT_BACKBONE = "efficientnet-lite0"
STATS_PERCENTILES = (10.0, 50.0, 90.0)
# Tracks are peak-normalised to 1; a segment whose RMS level is below this (-80 dB under the
# track's peak) counts as silent.
SILENT_RMS = 1e-4
# A segment is kept when it holds at least this fraction of a segment of audio.
MIN_SEGMENT_FRACTION = 0.5


def audio_files(source: str | Path, skipped: SkipLog) -> list[tuple[str, Path]]:
    """(relative id, path) of the audio files of a folder (recursive) or of one file."""
    root = Path(source)
    if not root.exists():
        raise SourceError(f"audio source {root} does not exist")
    if root.is_file():
        if root.suffix.lower() not in AUDIO_EXTENSIONS:
            skipped.add(root, f"not an audio file: extension {root.suffix or '(none)'!r}")
            return []
        return [(root.name, root)]
    files = [p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()]
    return sorted((p.relative_to(root).as_posix(), p) for p in files)


def segment_starts(n_samples: int, segment: int, hop: int) -> list[int]:
    """Start samples of the segments kept for a track of ``n_samples`` samples."""
    starts: list[int] = []
    start = 0
    while n_samples - start >= MIN_SEGMENT_FRACTION * segment:
        starts.append(start)
        if start + segment >= n_samples:
            break
        start += hop
    return starts


def htk_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
) -> np.ndarray:
    """Triangular filters (n_mels, n_fft // 2 + 1), equally spaced on the HTK mel scale."""
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mels = np.linspace(
        2595.0 * np.log10(1.0 + fmin / 700.0), 2595.0 * np.log10(1.0 + fmax / 700.0), n_mels + 2
    )
    edges = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


@dataclass(frozen=True)
class MelSettings:
    """How a segment becomes a log-mel picture."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None  # None: half the sample rate
    db_range: tuple[float, float] = (-100.0, 0.0)

    def as_config(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "window": "hann (periodic), centred, zero padding",
            "n_mels": self.n_mels,
            "mel_scale": "htk, triangular, unnormalised",
            "fmin": self.fmin,
            "fmax": self.fmax if self.fmax is not None else self.sample_rate / 2,
            "power": "|STFT * 2 / sum(window)|^2 (a full-scale sine is 0 dB)",
            "db_range": list(self.db_range),
        }


def mel_pictures(waveforms: Any, settings: MelSettings) -> Any:
    """(n, samples) float tensor → (n, n_mels, frames) log-mel pictures in [0, 1].

    Row 0 is the highest band (pictures show low frequencies at the bottom).
    """
    import torch

    fmax = settings.fmax if settings.fmax is not None else settings.sample_rate / 2
    filters = torch.from_numpy(
        htk_mel_filterbank(
            settings.sample_rate, settings.n_fft, settings.n_mels, settings.fmin, fmax
        )
    ).to(waveforms.device)
    window = torch.hann_window(settings.n_fft, device=waveforms.device)
    spectrum = torch.stft(
        waveforms.float(),
        settings.n_fft,
        settings.hop_length,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = (spectrum.abs() * (2.0 / window.sum())) ** 2
    decibels = 10.0 * torch.log10(torch.matmul(filters, power).clamp_min(1e-10))
    low, high = settings.db_range
    return ((decibels - low) / (high - low)).clamp(0.0, 1.0).flip(-2)


@dataclass
class AudioExtractor:
    """Segments of audio files → log-mel pictures → vectors (see the module docstring)."""

    name: str
    dim: int
    config: dict[str, Any]
    mel: MelSettings
    segment_samples: int
    hop_samples: int
    backbone: Any = None  # an efficientnet Backbone, or None for the "stats" summary
    device: str = "cpu"
    batch_size: int = 16
    autocast: str | None = None

    def items(self, source: str | Path, skipped: SkipLog) -> Iterator[Item]:
        """One item per kept segment; payloads are mono float32 waveforms."""
        for track_id, path in audio_files(source, skipped):
            try:
                samples = load_audio(path, self.mel.sample_rate)
            except SourceError as error:
                skipped.add(track_id, str(error))
                continue
            if not np.any(samples):
                skipped.add(track_id, "silent audio: every sample is zero")
                continue
            starts = segment_starts(len(samples), self.segment_samples, self.hop_samples)
            if not starts:
                seconds = len(samples) / self.mel.sample_rate
                skipped.add(
                    track_id,
                    f"too short: {seconds:.2f} s is less than half a segment "
                    f"({self.segment_samples / self.mel.sample_rate:g} s)",
                )
                continue
            for index, start in enumerate(starts):
                segment = np.zeros(self.segment_samples, dtype=np.float32)
                chunk = samples[start : start + self.segment_samples]
                segment[: len(chunk)] = chunk
                if float(np.sqrt(np.mean(chunk.astype(np.float64) ** 2))) < SILENT_RMS:
                    skipped.add(f"{track_id}#{index}", "silent segment: RMS 80 dB below the peak")
                    continue
                yield Item(f"{track_id}#{index}", segment, track_id, (path,))

    def pictures(self, payloads: Sequence[Any]) -> Any:
        """(n, n_mels, frames) log-mel pictures of a batch of waveforms, on ``device``."""
        import torch

        waveforms = np.stack([np.asarray(p, dtype=np.float32) for p in payloads])
        if waveforms.shape[1] != self.segment_samples:
            raise ExtractorError(
                f"audio payloads must hold {self.segment_samples} samples (one segment), "
                f"not {waveforms.shape[1]}"
            )
        return mel_pictures(torch.from_numpy(waveforms).to(self.device), self.mel)

    def embed(self, payloads: Sequence[Any]) -> np.ndarray:
        """Float32 vectors (n, dim) of a batch of segment waveforms."""
        import torch

        if len(payloads) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            pictures = self.pictures(payloads)
            if self.backbone is None:
                features = band_statistics(pictures)
            else:
                mean = torch.tensor(self.backbone.mean, device=self.device).view(1, 3, 1, 1)
                std = torch.tensor(self.backbone.std, device=self.device).view(1, 3, 1, 1)
                images = (pictures.unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std
                with autocast_context(self.device, self.autocast):
                    features = self.backbone.features(images)
        return features.float().cpu().numpy().astype(np.float32, copy=False)


def band_statistics(pictures: Any) -> Any:
    """Per mel band: mean, standard deviation and 10/50/90th percentiles over time (n, 5·n_mels)."""
    import torch

    quantiles = torch.tensor([q / 100.0 for q in STATS_PERCENTILES], device=pictures.device)
    per_band = [pictures.mean(-1), pictures.std(-1)]
    per_band += list(torch.quantile(pictures, quantiles, dim=-1))
    return torch.cat(per_band, dim=1)


def build_audio_extractor(
    backbone: str = DEFAULT_BACKBONE,
    segment_seconds: float = 15.0,
    overlap_seconds: float = 0.0,
    sample_rate: int = 16000,
    n_fft: int = 1024,
    hop_length: int = 512,
    n_mels: int = 128,
    fmin: float = 0.0,
    fmax: float | None = None,
    db_range: tuple[float, float] = (-100.0, 0.0),
    weights_path: str | Path | None = None,
    pretrained: bool = True,
    seed: int = 0,
    device: str | None = None,
    batch_size: int = 16,
    autocast: str | None = None,
) -> AudioExtractor:
    """Log-mel pictures of audio segments, embedded by ``backbone``.

    ``backbone``: ``"efficientnet-<variant>"`` (lite0 default, b0 … b7; ``weights_path``,
    ``pretrained`` and ``seed`` as for the efficientnet extractor) or ``"stats"``.
    """
    if segment_seconds <= 0 or not 0 <= overlap_seconds < segment_seconds:
        raise ExtractorError(
            "segment_seconds must be positive and overlap_seconds in [0, segment_seconds), "
            f"not {segment_seconds} and {overlap_seconds}"
        )
    low, high = db_range
    if not low < high:
        raise ExtractorError(f"db_range must be (low, high) with low < high, not {db_range}")
    nyquist = sample_rate / 2
    if not 0 <= fmin < (fmax if fmax is not None else nyquist) <= nyquist:
        raise ExtractorError(f"need 0 <= fmin < fmax <= {nyquist} Hz, not {fmin} and {fmax}")
    device = device or default_device()
    mel = MelSettings(sample_rate, n_fft, hop_length, n_mels, fmin, fmax, (float(low), float(high)))
    segment_samples = round(segment_seconds * sample_rate)
    hop_samples = segment_samples - round(overlap_seconds * sample_rate)
    config: dict[str, Any] = {
        "input": "mono, soxr resampling, peak-normalised (beatmap_fid.beatmap.audio.load_audio)",
        "segment_seconds": segment_seconds,
        "overlap_seconds": overlap_seconds,
        "min_segment_fraction": MIN_SEGMENT_FRACTION,
        "mel": mel.as_config(),
        "autocast": check_autocast(autocast),
    }
    if backbone == "stats":
        net = None
        dim = 2 * n_mels + len(STATS_PERCENTILES) * n_mels
        config["backbone"] = {"name": "stats", "percentiles": list(STATS_PERCENTILES)}
    elif backbone.startswith("efficientnet-"):
        net = load_backbone(backbone.removeprefix("efficientnet-"), weights_path, pretrained, seed)
        net.model.to(device)
        dim = net.dim
        config["backbone"] = {
            "name": backbone,
            "weights": net.weights,
            "input": "picture repeated on 3 channels, no resizing",
            "mean": list(net.mean),
            "std": list(net.std),
        }
    else:
        raise ExtractorError(
            f"unknown audio backbone {backbone!r}: use 'stats' or 'efficientnet-<variant>' "
            "(e.g. 'efficientnet-lite0')"
        )
    return AudioExtractor(
        name="audio",
        dim=dim,
        config=config,
        mel=mel,
        segment_samples=segment_samples,
        hop_samples=hop_samples,
        backbone=net,
        device=device,
        batch_size=batch_size,
        autocast=autocast,
    )
