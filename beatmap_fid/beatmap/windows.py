"""Analysis windows over a beatmap, exactly as the mapper classifier cuts its audio.

A window is ``window_samples`` audio samples (1023 hops of 128 samples at 16 kHz = 8.184 s).
Starts are ``range(0, n_samples - window_samples, hop_samples)``: non-overlapping windows from
t = 0 by default, the trailing partial window dropped, and, as in the reference, audio of
exactly k windows yields k - 1 of them.

Without audio the sample count comes from the beatmap's length: the end of its last object
plus :data:`DEFAULT_LENGTH_MARGIN_MS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slider

from beatmap_fid.errors import InputError

DEFAULT_WINDOW_SAMPLES = 1023 * 128
DEFAULT_SAMPLE_RATE = 16000
DEFAULT_LENGTH_MARGIN_MS = 3000.0
"""Time added after the last object to estimate the audio length of a map without audio.

The median gap between the end of the last object and the end of the audio in 133 real
osu!standard maps with audio was 3.06 s; with this margin the estimated window count equals
the audio-based one for about three maps in four and is off by one for the rest.
"""


@dataclass(frozen=True)
class WindowSpec:
    """Window length and hop in samples at ``sample_rate`` (hop defaults to the length)."""

    window_samples: int = DEFAULT_WINDOW_SAMPLES
    sample_rate: int = DEFAULT_SAMPLE_RATE
    hop_samples: int | None = None

    def __post_init__(self) -> None:
        if self.window_samples <= 0 or self.sample_rate <= 0:
            raise InputError("window_samples and sample_rate must be positive integers")
        if self.hop_samples is not None and self.hop_samples <= 0:
            raise InputError(
                "hop_samples must be a positive integer (or None for the window length)"
            )

    @property
    def hop(self) -> int:
        """Samples between window starts."""
        return self.hop_samples if self.hop_samples is not None else self.window_samples

    @property
    def window_ms(self) -> float:
        """Window length in milliseconds."""
        return self.window_samples * 1000.0 / self.sample_rate

    def as_config(self) -> dict[str, int]:
        """JSON-able description, for extractor configurations."""
        return {
            "window_samples": self.window_samples,
            "hop_samples": self.hop,
            "sample_rate": self.sample_rate,
        }


def window_starts(n_samples: int, spec: WindowSpec = WindowSpec()) -> np.ndarray:
    """Start sample of every window of a signal of ``n_samples`` samples (int64)."""
    return np.arange(0, max(n_samples - spec.window_samples, 0), spec.hop, dtype=np.int64)


def window_bounds_ms(starts: np.ndarray, spec: WindowSpec = WindowSpec()) -> np.ndarray:
    """``(k, 2)`` float64 array of window start and end times in ms; an event at time t
    belongs to window i when ``start_i <= t < end_i``."""
    starts = np.asarray(starts, dtype=np.float64)
    to_ms = 1000.0 / spec.sample_rate
    return np.stack([starts * to_ms, (starts + spec.window_samples) * to_ms], axis=1)


def beatmap_end_ms(beatmap: slider.Beatmap) -> float:
    """End time in ms of the beatmap's last-ending hit object (0 when it has none)."""
    ends = [
        getattr(obj, "end_time", obj.time).total_seconds() * 1000.0
        for obj in beatmap.hit_objects(stacking=False)
    ]
    return max(ends, default=0.0)


def beatmap_num_samples(
    beatmap: slider.Beatmap,
    spec: WindowSpec = WindowSpec(),
    margin_ms: float = DEFAULT_LENGTH_MARGIN_MS,
) -> int:
    """Estimated audio length in samples of a beatmap without audio: last end + margin."""
    length_ms = max(beatmap_end_ms(beatmap) + margin_ms, 0.0)
    return int(length_ms * spec.sample_rate / 1000.0)
