"""CM3P's vocabularies and tokenizers: beatmap events per window, and beatmap metadata.

Vocabularies are built by the reference's rules (used when writing a checkpoint; a loaded
checkpoint brings its own ``vocab.json``). With the released settings the beatmap vocabulary
has 3958 tokens: 23 event types, ``[CIRCLE_NEW_COMBO]`` and ``[SLIDER_HEAD_NEW_COMBO]``, time
shifts 0–16000 ms in 10 ms steps, snappings, distances, x and y positions in 4-pixel steps,
mania columns, scroll speeds, hitsound triples and volumes; ten special tokens follow
(``[BOS]`` 3958 … ``[PAD]`` 3962 … ``[AUDIO]`` 3967).

A window's sequence is ``[AUDIO_BOS]``, one ``[AUDIO]`` per audio token, ``[AUDIO_EOS]``,
``[CLS]``, ``[BOS]``, the window's events, ``[EOS]``, cut to the token limit (2000). An event is
its type token, then (when it has a time) its time relative to the window start in
``time_step`` steps (rounded half to even, clipped to the range), its position (x and y rounded
to ``position_step``), a new-combo token when written separately, a scroll speed, and one
hitsound and one volume token per hitsound it carries. A token missing from the vocabulary
becomes ``[UNK]``, as in the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from beatmap_fid.extractors.cm3p.checkpoint import (
    BeatmapTokenizerSettings,
    MetadataTokenizerSettings,
    Vocabulary,
)
from beatmap_fid.extractors.cm3p.events import EVENT_TYPES, NEW_COMBO_TYPES, Group

BEATMAP_SPECIAL_TOKENS = {
    "bos_token": "[BOS]",
    "eos_token": "[EOS]",
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
BEATMAP_ADDITIONAL_TOKENS = ["[AUDIO_BOS]", "[AUDIO_EOS]", "[AUDIO]"]
METADATA_SPECIAL_TOKENS = {
    "bos_token": "[BOS]",
    "eos_token": "[EOS]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
}
METADATA_FIELDS = (
    "difficulty",
    "year",
    "mode",
    "status",
    "mapper",
    "cs",
    "hitsounded",
    "song_length",
    "song_position",
    "global_sv",
    "mania_keycount",
    "hold_note_ratio",
    "scroll_speed_ratio",
    "tags",
)
"""Fields of a metadata dict, in the order of their tokens."""
_TOKEN_NAMES = {name: "TAG" if name == "tags" else name.upper() for name in METADATA_FIELDS}
METADATA_UNK_TOKENS = [f"[{_TOKEN_NAMES[name]}_UNK]" for name in METADATA_FIELDS]


def _steps(start: float, stop: float, step: float) -> np.ndarray:
    return np.arange(start, stop + 1e-5, step)


def beatmap_vocab(settings: BeatmapTokenizerSettings) -> dict[str, int]:
    """The beatmap vocabulary (token → id, without the special tokens) of ``settings``."""
    s = settings
    tokens = [f"[{name.upper()}]" for name in EVENT_TYPES]
    if not s.separate_new_combo_token:
        tokens += [f"[{name.upper()}_NEW_COMBO]" for name in NEW_COMBO_TYPES]
    tokens += [f"[TIME_SHIFT_{int(t)}]" for t in _steps(s.min_time, s.max_time, s.time_step)]
    tokens += [f"[SNAPPING_{i}]" for i in range(17)]
    tokens += [f"[DISTANCE_{d}]" for d in range(s.max_distance + 1)]
    x0, x1, y0, y1 = s.position_range
    xs, ys = _steps(x0, x1, s.position_step), _steps(y0, y1, s.position_step)
    if s.position_split_axes:
        tokens += [f"[POS_X_{int(x)}]" for x in xs] + [f"[POS_Y_{int(y)}]" for y in ys]
    else:
        tokens += [f"[POS_{int(x)}_{int(y)}]" for x in xs for y in ys]
    tokens += [f"[MANIA_COLUMN_{c}]" for c in range(1, 19)]
    tokens += [f"[SCROLL_SPEED_{v:.2f}]" for v in _steps(0.0, 10.0, 0.01)]
    if s.separate_new_combo_token:
        tokens.append("[NEW_COMBO]")
    tokens += [
        f"[HITSOUND_{h << 1}_{sample}_{addition}]"
        for h in range(8)
        for sample in range(1, 4)
        for addition in range(1, 4)
    ]
    tokens += [f"[VOLUME_{v}]" for v in range(101)]
    return {token: index for index, token in enumerate(tokens)}


def metadata_vocab(settings: MetadataTokenizerSettings) -> dict[str, int]:
    """The metadata vocabulary (token → id, without the special tokens) of ``settings``."""
    s = settings
    tokens = [
        f"[DIFFICULTY_{d:.1f}]"
        for d in _steps(s.min_difficculty, s.max_difficulty, s.difficulty_step)
    ]
    tokens += [f"[YEAR_{y}]" for y in range(s.min_year, s.max_year + 1)]
    tokens += [f"[MODE_{name}]" for name in s.modes.values()]
    tokens += [f"[STATUS_{name}]" for name in s.statuses.values()]
    tokens += [f"[MAPPER_{key}]" for key in s.mappers]
    tokens += [f"[CS_{v:.1f}]" for v in _steps(0.0, 10.0, 0.1)]
    tokens += ["[HITSOUNDED_TRUE]", "[HITSOUNDED_FALSE]"]
    tokens += [f"[SONG_LENGTH_{int(v)}]" for v in _steps(0, s.max_song_length, s.song_length_step)]
    tokens += [f"[SONG_POSITION_{v:.2f}]" for v in _steps(0.0, 1.0, s.song_position_step)]
    tokens += [f"[GLOBAL_SV_{v:.2f}]" for v in _steps(0.4, 3.6, s.global_sv_step)]
    tokens += [f"[MANIA_KEYCOUNT_{k}]" for k in range(1, 19)]
    tokens += [f"[HOLD_NOTE_RATIO_{v:.1f}]" for v in _steps(0.0, 1.0, s.hold_note_ratio_step)]
    tokens += [f"[SCROLL_SPEED_RATIO_{v:.1f}]" for v in _steps(0.0, 1.0, s.scroll_speed_ratio_step)]
    tokens += [f"[TAG_{tag['name']}]" for tag in s.tags.values()]
    return {token: index for index, token in enumerate(tokens)}


def _rounded(value: float, step: float) -> float:
    """``round(value / step) * step`` as the reference writes it (halves to even)."""
    return round(float(value) / step) * step


class BeatmapTokenizer:
    """Token ids of a window of events, by the checkpoint's settings and vocabulary."""

    def __init__(self, settings: BeatmapTokenizerSettings, vocab: Vocabulary) -> None:
        self.settings = settings
        self.vocab = vocab
        self.unk_id = vocab.id_of("unk_token")
        self.pad_id = vocab.id_of("pad_token")
        self.bos_id = vocab.id_of("bos_token")
        self.eos_id = vocab.id_of("eos_token")
        self.cls_id = vocab.id_of("cls_token")
        self.audio_bos_id = vocab.ids["[AUDIO_BOS]"]
        self.audio_eos_id = vocab.ids["[AUDIO_EOS]"]
        self.audio_id = vocab.ids["[AUDIO]"]

    def _id(self, token: str) -> int:
        return self.vocab.ids.get(token, self.unk_id)

    def event_tokens(self, group: Group, window_start_ms: float) -> list[str]:
        """The tokens of one event (see the module documentation)."""
        s = self.settings
        if group.new_combo and not s.separate_new_combo_token and group.kind in NEW_COMBO_TYPES:
            tokens = [f"[{group.kind.upper()}_NEW_COMBO]"]
        else:
            tokens = [f"[{group.kind.upper()}]"]
        if group.has_time:
            shift = min(max(group.time - window_start_ms, s.min_time), s.max_time)
            tokens.append(f"[TIME_SHIFT_{int(_rounded(shift, s.time_step))}]")
            if group.snapping is not None:
                tokens.append(f"[SNAPPING_{group.snapping}]")
        if group.distance is not None:
            distance = min(max(group.distance, 0), s.max_distance)
            tokens.append(f"[DISTANCE_{_rounded(distance, s.distance_step)}]")
        if group.x is not None and group.y is not None:
            x0, x1, y0, y1 = s.position_range
            x = int(_rounded(min(max(group.x, x0), x1), s.position_step))
            y = int(_rounded(min(max(group.y, y0), y1), s.position_step))
            if s.position_split_axes:
                tokens += [f"[POS_X_{x}]", f"[POS_Y_{y}]"]
            else:
                tokens.append(f"[POS_{x}_{y}]")
        if group.new_combo and s.separate_new_combo_token:
            tokens.append("[NEW_COMBO]")
        if group.scroll_speed is not None:
            speed = min(max(float(group.scroll_speed), 0.0), 10.0)
            tokens.append(f"[SCROLL_SPEED_{_rounded(speed, 0.01):.2f}]")
        for hitsound, sample_set, addition, volume in group.hitsounds:
            hitsound = min(max(hitsound >> 1, 0), 7) << 1
            sample_set = min(max(sample_set, 1), 3)
            addition = min(max(addition, 1), 3)
            tokens.append(f"[HITSOUND_{hitsound}_{sample_set}_{addition}]")
            tokens.append(f"[VOLUME_{volume}]")
        return tokens

    def window_ids(
        self,
        groups: Sequence[Group],
        window_start_ms: float,
        num_audio_tokens: int,
        max_length: int,
    ) -> np.ndarray:
        """int64 token ids of one window: audio block, ``[CLS]``, ``[BOS]``, events, ``[EOS]``,
        cut to ``max_length``."""
        ids: list[int] = []
        if num_audio_tokens > 0:
            ids = [self.audio_bos_id, *([self.audio_id] * num_audio_tokens), self.audio_eos_id]
        if self.settings.add_cls_token:
            ids.append(self.cls_id)
        ids.append(self.bos_id)
        for group in groups:
            ids.extend(self._id(token) for token in self.event_tokens(group, window_start_ms))
            if len(ids) > max_length:
                break
        ids.append(self.eos_id)
        return np.asarray(ids[:max_length], dtype=np.int64)


class MetadataTokenizer:
    """Token ids of a metadata dict (keys of :data:`METADATA_FIELDS`; missing ones unknown)."""

    def __init__(
        self, settings: MetadataTokenizerSettings, vocab: Vocabulary, max_length: int
    ) -> None:
        self.settings = settings
        self.vocab = vocab
        self.max_length = max_length
        self.pad_id = vocab.id_of("pad_token")
        self.mode_names = {int(k): v for k, v in settings.modes.items()}
        self.status_names = {int(k): v for k, v in settings.statuses.items()}
        self.mapper_names = {int(k): v for k, v in settings.mappers.items()}
        self.mapper_ids = {v: int(k) for k, v in settings.mappers.items()}
        self.tag_names = {int(k): v["name"] for k, v in settings.tags.items()}

    def _named(self, value: Any, names: Mapping[int, str]) -> str | None:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return names.get(int(value))
        return value if value in names.values() else None

    def field_token(self, name: str, value: Any) -> list[str]:
        """The token(s) of one field (its ``[..._UNK]`` token when unknown or not in the
        vocabulary)."""
        s = self.settings
        unknown = [f"[{_TOKEN_NAMES[name]}_UNK]"]
        if value is None:
            return unknown
        if name == "difficulty":
            v = min(max(float(value), s.min_difficculty), s.max_difficulty)
            token = f"[DIFFICULTY_{_rounded(v, s.difficulty_step):.1f}]"
        elif name == "year":
            token = f"[YEAR_{min(max(int(value), s.min_year), s.max_year)}]"
        elif name in ("mode", "status"):
            named = self._named(value, self.mode_names if name == "mode" else self.status_names)
            token = f"[{name.upper()}_{named}]" if named is not None else unknown[0]
        elif name == "mapper":
            mapper_id = self.mapper_ids.get(value) if isinstance(value, str) else int(value)
            known = mapper_id is not None and mapper_id in self.mapper_names
            token = f"[MAPPER_{mapper_id}]" if known else unknown[0]
        elif name == "cs":
            token = f"[CS_{_rounded(min(max(float(value), 0.0), 10.0), 0.1):.1f}]"
        elif name == "hitsounded":
            token = f"[HITSOUNDED_{str(bool(value)).upper()}]"
        elif name == "song_length":
            v = min(max(float(value), 0), s.max_song_length)
            token = f"[SONG_LENGTH_{int(_rounded(v, s.song_length_step))}]"
        elif name == "song_position":
            v = min(max(float(value), 0.0), 1.0)
            token = f"[SONG_POSITION_{_rounded(v, s.song_position_step):.2f}]"
        elif name == "global_sv":
            v = min(max(float(value), 0.4), 3.6)
            token = f"[GLOBAL_SV_{_rounded(v, s.global_sv_step):.2f}]"
        elif name == "mania_keycount":
            token = f"[MANIA_KEYCOUNT_{min(max(int(value), 1), 18)}]"
        elif name in ("hold_note_ratio", "scroll_speed_ratio"):
            step = (
                s.hold_note_ratio_step if name == "hold_note_ratio" else s.scroll_speed_ratio_step
            )
            token = f"[{name.upper()}_{_rounded(min(max(float(value), 0.0), 1.0), step):.1f}]"
        elif name == "tags":
            names = [self._named(tag, self.tag_names) for tag in value]
            tokens = [f"[TAG_{tag}]" for tag in names if tag is not None]
            return tokens or unknown
        else:
            raise KeyError(name)
        return [token] if token in self.vocab.ids else unknown

    def tokens(self, metadata: Mapping[str, Any]) -> list[str]:
        """Token texts of ``metadata``: ``[CLS]``, ``[BOS]``, one per field, tags, ``[EOS]``."""
        tokens = [self.vocab.special["cls_token"]] if self.settings.add_cls_token else []
        tokens.append(self.vocab.special["bos_token"])
        for name in METADATA_FIELDS:
            tokens += self.field_token(name, metadata.get(name))
        tokens.append(self.vocab.special["eos_token"])
        return tokens

    def ids(self, metadata: Mapping[str, Any]) -> np.ndarray:
        """int64 token ids of ``metadata`` (cut to the checkpoint's metadata length)."""
        ids = [self.vocab.ids[token] for token in self.tokens(metadata)]
        return np.asarray(ids[: self.max_length], dtype=np.int64)


def pad_batch(sequences: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids (n, longest) padded on the right with ``pad_id``, and the 0/1 attention mask."""
    longest = max((len(s) for s in sequences), default=0)
    ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = 1
    return ids, mask
