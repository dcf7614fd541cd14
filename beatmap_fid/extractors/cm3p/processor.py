"""A beatmap and its audio → CM3P's windows: token ids and audio per 16 s window.

Windows start at ``np.arange(0, song_length − min_window_length, stride)`` seconds, the song
length being that of the decoded audio (or, without audio, of the map: last object end +
0.999 ms), so windows cover intro and outro whether or not they hold objects. A window's audio
is ``audio[int(start · rate) : int(end · rate)]``; its events are found with the reference's
scan over the time-sorted events (``start ≤ t < end`` for sorted events). Metadata of a map,
as the reference's processor fills it in from the map itself, is here too.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import slider

from beatmap_fid.extractors.cm3p.checkpoint import CM3PCheckpoint
from beatmap_fid.extractors.cm3p.events import (
    TIMING_TYPES,
    beatmap_groups,
    song_length_from_beatmap,
)
from beatmap_fid.extractors.cm3p.mel import num_audio_tokens
from beatmap_fid.extractors.cm3p.tokens import BeatmapTokenizer


@dataclass(frozen=True)
class WindowPayload:
    """One window: int64 token ids, its float32 samples (unpadded) when audio is used, its
    start, and how many hit-object events it holds (0 for a break, an intro or an outro)."""

    tokens: np.ndarray
    audio: np.ndarray | None
    start_ms: float
    n_events: int


def window_starts(song_length_s: float, checkpoint: CM3PCheckpoint) -> np.ndarray:
    """Window start times (s), as ``np.arange`` gives them in the reference."""
    w = checkpoint.windows
    return np.arange(0, song_length_s - w.min_window_length_sec, w.window_stride_sec)


def map_windows(
    beatmap: slider.Beatmap,
    audio: np.ndarray | None,
    checkpoint: CM3PCheckpoint,
    tokenizer: BeatmapTokenizer,
) -> list[WindowPayload]:
    """Every window of ``beatmap`` (with ``audio`` at the checkpoint's rate, or without)."""
    w = checkpoint.windows
    rate = w.sampling_rate
    song_length = len(audio) / rate if audio is not None else song_length_from_beatmap(beatmap)
    timing_length = song_length or song_length_from_beatmap(beatmap)
    groups = beatmap_groups(beatmap, checkpoint.parser, timing_length)
    audio_tokens = num_audio_tokens(w) if audio is not None else 0
    windows = []
    search = 0
    for start in window_starts(song_length, checkpoint):
        end = start + w.window_length_sec
        start_ms, end_ms = start * 1000, end * 1000
        next_start_ms = (start + w.window_stride_sec) * 1000
        inside = []
        for group in itertools.islice(groups, search, None):
            if group.time < next_start_ms:
                search += 1
            if group.time < start_ms:
                continue
            if group.time < end_ms:
                inside.append(group)
            else:
                break
        samples = audio[int(start * rate) : int(end * rate)] if audio is not None else None
        ids = tokenizer.window_ids(inside, start_ms, audio_tokens, w.max_length)
        n_events = sum(group.kind not in TIMING_TYPES for group in inside)
        windows.append(WindowPayload(ids, samples, float(start_ms), n_events))
    return windows


def _hold_note_ratio(objects: list) -> float | None:
    if not objects:
        return None
    return sum(isinstance(o, slider.beatmap.HoldNote) for o in objects) / len(objects)


def _scroll_speed_ratio(beatmap: slider.Beatmap, objects: list) -> float | None:
    """Scroll speed changes per distinct object time."""
    if not objects:
        return None
    times, last = 0, None
    for obj in objects:
        if obj.time != last:
            times += 1
            last = obj.time
    changes, speed = 0, -1.0
    for point in beatmap.timing_points:
        if point.parent is None:
            speed = 1.0
        else:
            new = -100 / point.ms_per_beat
            if new != speed and speed != -1:
                changes += 1
            speed = new
    return changes / times


def map_metadata(
    beatmap: slider.Beatmap, song_length_s: float, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The metadata the reference's processor fills in from a map itself (mode, circle size,
    hitsounded, song length, slider multiplier, mania key count, hold-note and scroll-speed
    ratios), updated with ``extra`` (e.g. ``mapper``, ``difficulty``, ``year``)."""
    mode = int(beatmap.mode)
    objects = list(beatmap.hit_objects(stacking=False))
    metadata: dict[str, Any] = {
        "mode": mode,
        "cs": beatmap.circle_size if mode in (0, 2) else None,
        "hitsounded": any(o.hitsound != 0 for o in objects),
        "song_length": song_length_s,
        "global_sv": beatmap.slider_multiplier if mode in (0, 2) else None,
        "mania_keycount": int(beatmap.circle_size) if mode == 3 else None,
        "hold_note_ratio": _hold_note_ratio(objects) if mode == 3 else None,
        "scroll_speed_ratio": _scroll_speed_ratio(beatmap, objects) if mode in (1, 3) else None,
    }
    metadata.update({k: v for k, v in (extra or {}).items() if v is not None})
    return metadata


def batch_tensors(payloads, checkpoint: CM3PCheckpoint, pad_id: int, device: str):
    """``input_ids``, ``attention_mask`` and (when the windows have audio) ``input_features``
    tensors of a batch of windows, on ``device``."""
    import torch

    from beatmap_fid.extractors.cm3p.mel import log_mel, pad_window_audio
    from beatmap_fid.extractors.cm3p.tokens import pad_batch

    ids, mask = pad_batch([p.tokens for p in payloads], pad_id)
    input_ids = torch.from_numpy(ids).to(device)
    attention_mask = torch.from_numpy(mask).to(device)
    features = None
    if payloads and payloads[0].audio is not None:
        audio = np.stack([pad_window_audio(p.audio, checkpoint.windows) for p in payloads])
        features = log_mel(torch.from_numpy(audio).to(device), checkpoint.windows)
    return input_ids, attention_mask, features
