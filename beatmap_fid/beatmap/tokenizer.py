"""Vocabulary and token windows compatible with Mapperatorinator's mapper classifier.

The reference tokenizer (``classifier/libs/tokenizer/tokenizer.py``) is a fixed vocabulary:
token 0 is padding, and every event range gets a consecutive block of ids, in the order of its
``event_ranges`` list, starting at ``offset = 1``:
``id = event_start[type] + value - min_value``. There are no start, end or other special
tokens; a window's tokens are its events in order, cut to ``seq_len`` and padded with 0.

Default classifier vocabulary (2946 ids): pad 0; ``TIME_SHIFT`` 0..818 → 1..819 (818 =
``int(1023 * 128 * 1000 / 16000 / 10)``, the 10 ms steps of one window); ``SNAPPING`` 0..16 →
820..836; ``POS_X`` −256..768 → 837..1861; ``POS_Y`` −256..640 → 1862..2758; ``NEW_COMBO``
2759; ``HITSOUND`` 0..72 → 2760..2832; ``VOLUME`` 0..100 → 2833..2933; then one id each for
``CIRCLE``, ``SPINNER``, ``SPINNER_END``, ``SLIDER_HEAD``, ``BEZIER_ANCHOR``,
``PERFECT_ANCHOR``, ``CATMULL_ANCHOR``, ``RED_ANCHOR``, ``LAST_ANCHOR``, ``SLIDER_END``,
``BEAT``, ``MEASURE`` → 2934..2945.

Windows follow the reference's ``classify.py``: a window starting at ``time`` seconds holds
the events with ``time <= t / 1000 < time + duration`` (float seconds, as there), and each
``TIME_SHIFT`` becomes ``int((t - time * 1000) * 0.1)``. The same float operations are used
here so boundary events and 10 ms steps come out identical.

A trained checkpoint pickles the reference ``Tokenizer``; its attributes that matter are
``offset`` (1), ``event_ranges`` (list of ``EventRange(type, min_value, max_value)`` whose
``type`` is the reference ``EventType`` enum with string values such as ``"t"`` or
``"pos_x"``), ``num_classes``, ``mapper_idx`` (mapper user id → class index),
``beatmap_mapper`` (beatmap id → mapper user id), ``vocab_size`` and ``event_start`` /
``event_end`` / ``event_range`` (derived from the ranges). ``input_event_ranges`` is declared
but not set by the reference; it is accepted when present. :meth:`Tokenizer.from_state` takes
such a state (a dict or any object with those attributes) and checks it is self-consistent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from beatmap_fid.beatmap.events import (
    EVENT_TYPES,
    Event,
    EventArray,
    EventConfig,
    EventRange,
    EventType,
    event_type_code,
)
from beatmap_fid.errors import InputError

__all__ = [
    "DEFAULT_SEQ_LEN",
    "DEFAULT_WINDOW_MS",
    "PAD_ID",
    "Tokenizer",
    "default_event_ranges",
    "window_tokens",
    "windows_tokens",
]

PAD_ID = 0
DEFAULT_SEQ_LEN = 1024
DEFAULT_WINDOW_MS = 8184
"""One classifier window: 1023 frames of 128 samples at 16 kHz."""

_MS_PER_STEP = 10
_STEPS_PER_MS = 0.1  # the reference multiplies by this float, not divides by 10
_TIME_SHIFT = event_type_code(EventType.TIME_SHIFT)


def max_time_shift(src_seq_len: int = 1024, hop_length: int = 128, sample_rate: int = 16000) -> int:
    """The reference's largest ``TIME_SHIFT`` value: the window length in 10 ms steps."""
    window_ms = (src_seq_len - 1) * hop_length * 1000 / sample_rate
    return int(window_ms / _MS_PER_STEP)


def default_event_ranges(
    config: EventConfig | None = None, time_shift_max: int | None = None
) -> list[EventRange]:
    """The event ranges the reference tokenizer builds for a data configuration."""
    config = config or EventConfig()
    time_shift_max = max_time_shift() if time_shift_max is None else time_shift_max
    ranges = [
        EventRange(EventType.TIME_SHIFT, 0, time_shift_max),
        EventRange(EventType.SNAPPING, 0, 16),
    ]
    if config.add_distances:
        ranges.append(EventRange(EventType.DISTANCE, *config.distance_range))
    if config.add_positions:
        p = config.position_precision
        x_min, x_max, y_min, y_max = (v // p for v in config.position_range)
        if config.position_split_axes:
            ranges.append(EventRange(EventType.POS_X, x_min, x_max))
            ranges.append(EventRange(EventType.POS_Y, y_min, y_max))
        else:
            cells = (x_max - x_min + 1) * (y_max - y_min + 1)
            ranges.append(EventRange(EventType.POS, 0, cells - 1))
    ranges.append(EventRange(EventType.NEW_COMBO, 0, 0))
    ranges.append(EventRange(EventType.HITSOUND, 0, 2**3 * 3 * 3))
    ranges.append(EventRange(EventType.VOLUME, 0, 100))
    for event_type in (
        EventType.CIRCLE,
        EventType.SPINNER,
        EventType.SPINNER_END,
        EventType.SLIDER_HEAD,
        EventType.BEZIER_ANCHOR,
        EventType.PERFECT_ANCHOR,
        EventType.CATMULL_ANCHOR,
        EventType.RED_ANCHOR,
        EventType.LAST_ANCHOR,
        EventType.SLIDER_END,
        EventType.BEAT,
        EventType.MEASURE,
    ):
        ranges.append(EventRange(event_type, 0, 0))
    if config.add_timing_points:
        ranges.append(EventRange(EventType.TIMING_POINT, 0, 0))
    return ranges


def _as_event_type(value: Any) -> EventType:
    """Our EventType from ours, the reference's enum member, its value or its name."""
    if isinstance(value, EventType):
        return value
    candidates = [getattr(value, "value", None), getattr(value, "name", None), value]
    for candidate in candidates:
        if isinstance(candidate, str):
            if candidate in EventType._value2member_map_:
                return EventType(candidate)
            if candidate in EventType.__members__:
                return EventType[candidate]
    raise InputError(f"unknown event type {value!r}: expected one of the reference's EventType")


def _as_event_range(value: Any) -> EventRange:
    """An EventRange from ours, a reference-like object, a mapping or a 3-tuple."""
    if isinstance(value, EventRange):
        return value
    if isinstance(value, Mapping):
        fields = (value["type"], value["min_value"], value["max_value"])
    elif isinstance(value, tuple | list):
        fields = tuple(value)
    else:
        fields = (value.type, value.min_value, value.max_value)
    if len(fields) != 3:
        raise InputError(f"an event range needs (type, min_value, max_value), got {value!r}")
    event_type, low, high = fields
    if int(high) < int(low):
        raise InputError(f"event range {value!r} has max_value below min_value")
    return EventRange(_as_event_type(event_type), int(low), int(high))


def _get(state: Any, name: str, default: Any = None) -> Any:
    if isinstance(state, Mapping):
        return state.get(name, default)
    return getattr(state, name, default)


class Tokenizer:
    """Fixed vocabulary of the mapper classifier: events ↔ token ids, plus the class map.

    Build it with :meth:`default`, :meth:`from_config`, :meth:`from_event_ranges` or
    :meth:`from_state` (a checkpoint's pickled tokenizer state).
    """

    def __init__(
        self,
        event_ranges: Sequence[EventRange],
        *,
        offset: int = 1,
        input_event_ranges: Sequence[EventRange] = (),
        mapper_idx: Mapping[int, int] | None = None,
        num_classes: int | None = None,
        beatmap_mapper: Mapping[int, int] | None = None,
    ) -> None:
        self.offset = int(offset)
        self.event_ranges = [_as_event_range(r) for r in event_ranges]
        self.input_event_ranges = [_as_event_range(r) for r in input_event_ranges]
        seen = [r.type for r in self.event_ranges]
        if len(set(seen)) != len(seen):
            raise InputError(f"event ranges repeat an event type: {seen}")
        self.mapper_idx = {int(k): int(v) for k, v in (mapper_idx or {}).items()}
        self.num_classes = int(num_classes) if num_classes is not None else len(self.mapper_idx)
        self.beatmap_mapper = {int(k): int(v) for k, v in (beatmap_mapper or {}).items()}
        self.event_range = {r.type: r for r in self.event_ranges}
        self.event_start: dict[EventType, int] = {}
        self.event_end: dict[EventType, int] = {}
        start = self.offset
        for r in self.event_ranges:
            self.event_start[r.type] = start
            start += r.size
            self.event_end[r.type] = start
        self.vocab_size = start
        self._class_mapper = {index: mapper for mapper, index in self.mapper_idx.items()}
        # per event code: first id, min and max value (-1 id for types outside the vocabulary)
        n = len(EVENT_TYPES)
        self._start = np.full(n, -1, np.int64)
        self._min = np.zeros(n, np.int64)
        self._max = np.full(n, -1, np.int64)
        for r in self.event_ranges:
            code = event_type_code(r.type)
            self._start[code], self._min[code], self._max[code] = (
                self.event_start[r.type],
                r.min_value,
                r.max_value,
            )

    # --- construction -------------------------------------------------------------------

    @classmethod
    def default(cls, **kwargs: Any) -> Tokenizer:
        """The default classifier vocabulary (train.yaml's data settings, 1024-frame windows)."""
        return cls(default_event_ranges(), **kwargs)

    @classmethod
    def from_config(
        cls,
        config: EventConfig,
        *,
        src_seq_len: int = 1024,
        hop_length: int = 128,
        sample_rate: int = 16000,
        **kwargs: Any,
    ) -> Tokenizer:
        """The vocabulary the reference builds for a data configuration and window size."""
        time_shift_max = max_time_shift(src_seq_len, hop_length, sample_rate)
        return cls(default_event_ranges(config, time_shift_max), **kwargs)

    @classmethod
    def from_event_ranges(cls, event_ranges: Iterable[Any], **kwargs: Any) -> Tokenizer:
        """From event ranges in vocabulary order (ours, reference-like objects or tuples)."""
        return cls(list(event_ranges), **kwargs)

    @classmethod
    def from_state(cls, state: Any) -> Tokenizer:
        """From a reference tokenizer's attributes: a dict or an object carrying them.

        Reads ``event_ranges``, ``offset``, ``input_event_ranges``, ``mapper_idx``,
        ``num_classes`` and ``beatmap_mapper``; checks ``vocab_size`` and ``event_start``
        when present.
        """
        ranges = _get(state, "event_ranges")
        if not ranges:
            raise InputError(
                "tokenizer state has no event_ranges; pass the checkpoint's tokenizer "
                "(hyper_parameters['tokenizer']) or its attribute dict"
            )
        tokenizer = cls(
            ranges,
            offset=_get(state, "offset", 1),
            input_event_ranges=_get(state, "input_event_ranges", None) or (),
            mapper_idx=_get(state, "mapper_idx", None),
            num_classes=_get(state, "num_classes", None),
            beatmap_mapper=_get(state, "beatmap_mapper", None),
        )
        vocab_size = _get(state, "vocab_size", None)
        if vocab_size is not None and int(vocab_size) != tokenizer.vocab_size:
            raise InputError(
                f"tokenizer state says vocab_size {vocab_size} but its event ranges give "
                f"{tokenizer.vocab_size}; the state is inconsistent"
            )
        starts = _get(state, "event_start", None) or {}
        for event_type, start in dict(starts).items():
            ours = tokenizer.event_start.get(_as_event_type(event_type))
            if ours != int(start):
                raise InputError(
                    f"tokenizer state puts {event_type} at id {start} but its event ranges "
                    f"give {ours}; the state is inconsistent"
                )
        return tokenizer

    def state(self) -> dict[str, Any]:
        """The reference tokenizer's attributes (plain values, our EventType)."""
        return {
            "offset": self.offset,
            "event_ranges": list(self.event_ranges),
            "input_event_ranges": list(self.input_event_ranges),
            "num_classes": self.num_classes,
            "event_range": dict(self.event_range),
            "event_start": dict(self.event_start),
            "event_end": dict(self.event_end),
            "vocab_size": self.vocab_size,
            "beatmap_mapper": dict(self.beatmap_mapper),
            "mapper_idx": dict(self.mapper_idx),
        }

    # --- vocabulary ---------------------------------------------------------------------

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, ranges={len(self.event_ranges)}, "
            f"num_classes={self.num_classes})"
        )

    def encode(self, event: Event) -> int:
        """Token id of one event; InputError for a type or value outside the vocabulary."""
        er = self.event_range.get(event.type)
        if er is None:
            raise InputError(f"event type {event.type.name} is not in this vocabulary")
        if not er.min_value <= event.value <= er.max_value:
            raise InputError(
                f"{event.type.name} value {event.value} is outside [{er.min_value}, {er.max_value}]"
            )
        return self.event_start[event.type] + event.value - er.min_value

    def decode(self, token: int) -> Event:
        """Event of one token id (output ranges, then input ranges); InputError otherwise."""
        token = int(token)
        start = self.offset
        for er in (*self.event_ranges, *self.input_event_ranges):
            if start <= token < start + er.size:
                return Event(er.type, er.min_value + token - start)
            start += er.size
        raise InputError(f"token id {token} is not mapped to any event (pad is {PAD_ID})")

    def event_type_range(self, event_type: EventType) -> tuple[int, int]:
        """First and last token id of an event type."""
        if event_type not in self.event_range:
            raise InputError(f"event type {event_type.name} is not in this vocabulary")
        return self.event_start[event_type], self.event_end[event_type] - 1

    def encode_array(self, events: EventArray) -> np.ndarray:
        """Token ids (int64) of many events at once, with the same checks as :meth:`encode`."""
        codes = np.asarray(events.codes, dtype=np.int64)
        values = np.asarray(events.values, dtype=np.int64)
        starts = self._start[codes]
        bad = (starts < 0) | (values < self._min[codes]) | (values > self._max[codes])
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            self.encode(events[first])  # raises with the precise reason
        return starts + values - self._min[codes]

    # --- classes ------------------------------------------------------------------------

    def class_index(self, mapper_id: int) -> int:
        """Classifier output index of a mapper user id."""
        try:
            return self.mapper_idx[int(mapper_id)]
        except KeyError:
            raise InputError(
                f"mapper id {mapper_id} is not one of the classifier's classes"
            ) from None

    def mapper_id(self, class_index: int) -> int:
        """Mapper user id of a classifier output index."""
        try:
            return self._class_mapper[int(class_index)]
        except KeyError:
            raise InputError(f"class index {class_index} has no mapper in this tokenizer") from None


def _first_ms_reaching(bound_s: float) -> int:
    """Smallest integer t (ms) with ``t / 1000 >= bound_s`` in float arithmetic."""
    t = math.ceil(bound_s * 1000.0)
    while (t - 1) / 1000 >= bound_s:
        t -= 1
    while t / 1000 < bound_s:
        t += 1
    return t


def _as_event_array(events: EventArray | Sequence[Event]) -> EventArray:
    return events if isinstance(events, EventArray) else EventArray.from_events(events)


def window_tokens(
    events: EventArray | Sequence[Event],
    times: np.ndarray,
    window_start_ms: float,
    window_end_ms: float,
    tokenizer: Tokenizer,
    seq_len: int = DEFAULT_SEQ_LEN,
) -> np.ndarray:
    """Token ids (int64, ``(seq_len,)``) of the events in one window, padded with 0.

    ``events``/``times`` come from :func:`~beatmap_fid.beatmap.events.beatmap_events`. As in
    the reference, the window holds events with ``start_s <= t / 1000 < start_s + length_s``
    (``start_s = window_start_ms / 1000``), time shifts are ``int((t - start_s * 1000) * 0.1)``
    and the sequence is cut to ``seq_len``. For the reference's window grid pass integer
    ``window_start_ms = k * 8184`` and ``window_end_ms = window_start_ms + 8184``.
    """
    if not window_end_ms > window_start_ms:
        raise InputError(
            f"window end {window_end_ms} ms must be after its start {window_start_ms} ms"
        )
    events = _as_event_array(events)
    times = np.asarray(times, dtype=np.int64)
    if len(times) != len(events):
        raise InputError(f"{len(events)} events but {len(times)} event times")
    start_s = window_start_ms / 1000
    end_s = start_s + (window_end_ms - window_start_ms) / 1000
    low, high = _first_ms_reaching(start_s), _first_ms_reaching(end_s)
    if len(times) < 2 or bool(np.all(times[1:] >= times[:-1])):
        first, stop = np.searchsorted(times, [low, high], side="left")
        index = np.arange(first, stop)
    else:
        index = np.flatnonzero((times >= low) & (times < high))
    index = index[:seq_len]
    codes = events.codes[index]
    values = events.values[index].astype(np.int64)
    is_shift = codes == _TIME_SHIFT
    shifts = (times[index][is_shift] - start_s * 1000) * _STEPS_PER_MS
    values[is_shift] = np.trunc(shifts).astype(np.int64)
    tokens = np.full(seq_len, PAD_ID, dtype=np.int64)
    tokens[: len(index)] = tokenizer.encode_array(EventArray(codes, values))
    return tokens


def windows_tokens(
    events: EventArray | Sequence[Event],
    times: np.ndarray,
    window_starts_ms: Iterable[float],
    tokenizer: Tokenizer,
    window_ms: float = DEFAULT_WINDOW_MS,
    seq_len: int = DEFAULT_SEQ_LEN,
) -> np.ndarray:
    """Token ids (int64, ``(n_windows, seq_len)``) of windows of ``window_ms`` at each start."""
    events = _as_event_array(events)
    starts = list(window_starts_ms)
    out = np.zeros((len(starts), seq_len), dtype=np.int64)
    for row, start in enumerate(starts):
        out[row] = window_tokens(events, times, start, start + window_ms, tokenizer, seq_len)
    return out
