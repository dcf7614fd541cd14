"""Finding and reading ``.osu`` beatmaps, tolerant of the oddities found in real files.

Real ``.osu`` files come in many shapes: old format versions without the trailing hitSample
field, files in legacy encodings, hand-edited files with float times or stray sections, and
crafted maps with absurd timing. The ``slider`` parser is strict and crashes on several of
these (a circle without hitSample silently shifts its fields; a zero beat length divides by
zero), so the text is first normalised into a clean equivalent, following what the game
itself accepts, and only then handed to ``slider``.

Every refusal is a :class:`~beatmap_fid.errors.SourceError` whose message starts with a short
reason category before the first colon (``"malformed: line 12 in [HitObjects]: ..."``), so a
:class:`~beatmap_fid.errors.SkipLog` can count skips per reason. Categories: ``missing``,
``unreadable``, ``too large``, ``empty``, ``not a beatmap``, ``malformed``, ``absurd``,
``unsupported mode``, ``no hit objects``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import slider
from tqdm import tqdm

from beatmap_fid.errors import SkipLog, SourceError

MODE_NAMES = {0: "osu", 1: "taiko", 2: "catch", 3: "mania"}
"""``Mode`` values of the ``[General]`` section and the names used in messages."""

DEFAULT_FORMAT_VERSION = 14
"""Format version assumed for a file without its ``osu file format vN`` header (as the game)."""

MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_COORDINATE = 131072.0
"""Largest object coordinate or slider length the game accepts."""
MAX_CONTROL_POINT = 1_000_000.0
"""Largest slider control point coordinate read (real maps place some far off screen)."""
MAX_REPEATS = 9000
"""Largest slider repeat count the game accepts."""
MAX_TIME_MS = 2**31 - 1
MAX_OBJECT_MS = 3_600_000
"""A single slider or spinner lasting longer than an hour is treated as absurd."""
MAX_END_MS = 6 * 3_600_000
"""A map whose objects end later than six hours is treated as absurd."""

_CIRCLE, _SLIDER, _SPINNER, _HOLD = 1, 2, 8, 128
_COMBO_BITS = 0b0111_0100  # new combo (4) and combo colour skip (16, 32, 64)
_DEFAULT_HIT_SAMPLE = "0:0:0:0:"
_DEFAULT_TIMING_LINE = "0,1000,4,0,0,100,1,0"

_HEADER = re.compile(r"^osu file format v(\d+)$", re.IGNORECASE)
_SECTION = re.compile(r"^\[(.+)\]$")
_EDGE_SETS = re.compile(r"^-?\d+:-?\d+(\|-?\d+:-?\d+)*$")

_MAPPING_SECTIONS = ("General", "Editor", "Metadata", "Difficulty")
_KNOWN_SECTIONS = (*_MAPPING_SECTIONS, "Events", "TimingPoints", "Colours", "HitObjects")

# Fields slider needs, with the defaults the game uses when they are absent.
_REQUIRED_FIELDS = {
    "General": {"AudioFilename": ""},
    "Metadata": {"Title": "", "Artist": "", "Creator": "", "Version": ""},
    "Difficulty": {"HPDrainRate": "5", "CircleSize": "5", "OverallDifficulty": "5"},
}
# Difficulty values the game clamps to these ranges; a value that is not a number is fatal.
_DIFFICULTY_RANGES = {
    "HPDrainRate": (0.0, 10.0),
    "CircleSize": (0.0, 10.0),
    "OverallDifficulty": (0.0, 10.0),
    "ApproachRate": (0.0, 10.0),
    "SliderMultiplier": (0.4, 3.6),
    "SliderTickRate": (0.5, 8.0),
}
# Cosmetic numeric fields slider parses: dropped (slider then uses its default) when unreadable.
_INT_FIELDS = {
    "General": (
        "AudioLeadIn",
        "PreviewTime",
        "Countdown",
        "LetterboxInBreaks",
        "WidescreenStoryboard",
    ),
    "Editor": ("BeatDivisor", "GridSize"),
    "Metadata": ("BeatmapID", "BeatmapSetID"),
}
_FLOAT_FIELDS = {"General": ("StackLeniency",), "Editor": ("DistanceSpacing", "TimelineZoom")}


@dataclass(frozen=True)
class BeatmapFile:
    """A beatmap read from disk, with its stable id and the audio file it names (if present).

    ``id`` is the path relative to the source root in POSIX form (a single file: its name);
    ``notes`` lists the repairs made while reading (for example a legacy text encoding).
    """

    path: Path
    id: str
    beatmap: slider.Beatmap
    audio_path: Path | None
    notes: tuple[str, ...] = field(default=())

    @property
    def creator(self) -> str:
        """The mapper named in ``[Metadata]`` (empty when the file names none)."""
        return self.beatmap.creator or ""


class _BadLine(Exception):
    """A line that cannot be repaired; ``category`` becomes the reason category."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category


@dataclass
class _Normalised:
    text: str
    n_objects: int
    object_lines: list[int]  # original line number of each hit object, in output order
    notes: list[str]


def find_beatmaps(root: str | Path) -> list[Path]:
    """``.osu`` files under ``root`` (searched recursively), sorted by relative path.

    ``root`` may also be a single ``.osu`` file. A missing path or a file of another kind
    raises :class:`SourceError`; a folder without beatmaps gives an empty list.
    """
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() != ".osu":
            raise SourceError(f"not a beatmap: {root} is not an .osu file")
        return [root]
    if not root.is_dir():
        raise SourceError(f"missing: no such file or folder: {root}")
    found = [p for p in root.rglob("*") if p.suffix.lower() == ".osu" and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def source_id(path: str | Path, root: str | Path) -> str:
    """Stable id of ``path``: relative to the folder ``root`` in POSIX form, or the file name."""
    path, root = Path(path), Path(root)
    if root.is_dir():
        return path.relative_to(root).as_posix()
    return path.name


def decode_osu_bytes(data: bytes) -> tuple[str, str | None]:
    """Text of an ``.osu`` file and a note naming the encoding when it was not UTF-8.

    Bytes that do not decode (a UTF-16 file with an odd length or a lone surrogate) are
    replaced by U+FFFD and noted, so any file yields text for the parser to judge.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "decoded as UTF-16"
        except UnicodeDecodeError:
            return (
                data.decode("utf-16", errors="replace"),
                "decoded as UTF-16 with undecodable bytes replaced",
            )
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        pass
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark before legacy bytes
    try:
        return data.decode("cp1252"), "decoded as cp1252 (the file is not valid UTF-8)"
    except UnicodeDecodeError:
        return data.decode("latin-1"), "decoded as latin-1 (the file is not valid UTF-8)"


def mode_name(mode: int) -> str:
    """Readable name of a game mode number."""
    return MODE_NAMES.get(mode, f"mode {mode}")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _BadLine("malformed", f"{what} is not a number: {text.strip()!r}") from None
    if not math.isfinite(value):
        raise _BadLine("malformed", f"{what} is not finite: {text.strip()!r}")
    return value


def _integer(
    text: str, what: str, *, strict: bool = True, limit: float | None = MAX_TIME_MS
) -> int:
    """An integer field; ``strict`` refuses non-integral values (bit fields), else rounds."""
    value = _number(text, what)
    if strict and value != int(value):
        raise _BadLine("malformed", f"{what} is not an integer: {text.strip()!r}")
    if limit is not None and abs(value) > limit:
        raise _BadLine("absurd", f"{what} is out of range: {text.strip()!r}")
    return round(value)


def _coordinate(text: str, what: str, limit: float = MAX_COORDINATE) -> int:
    value = _number(text, what)
    if abs(value) > limit:
        raise _BadLine("absurd", f"{what} is out of range: {text.strip()!r}")
    return int(value)


def _split_sections(
    lines: list[str],
) -> tuple[int, dict[str, list[tuple[int, str]]], list[str]]:
    """Format version, section lines (with 1-based line numbers) and notes."""
    notes: list[str] = []
    numbered = [(i + 1, line.strip()) for i, line in enumerate(lines)]
    content = [(n, line) for n, line in numbered if line and not line.startswith("//")]
    if not content:
        raise SourceError("empty: the file holds no text")
    first_number, first = content[0]
    match = _HEADER.match(first)
    if match:
        version = int(match.group(1))
        content = content[1:]
    elif _SECTION.match(first):
        version = DEFAULT_FORMAT_VERSION
        notes.append(f"no 'osu file format' header; assumed v{version}")
    else:
        raise SourceError(
            f"not a beatmap: line {first_number} is {first[:60]!r}, expected 'osu file format vN'"
        )
    sections: dict[str, list[tuple[int, str]]] = {}
    current: str | None = None
    unknown: list[str] = []
    for number, line in content:
        match = _SECTION.match(line)
        if match:
            current = match.group(1).strip()
            if current not in _KNOWN_SECTIONS:
                unknown.append(f"[{current}]")
            sections.setdefault(current, [])
        elif current is not None:
            sections[current].append((number, line))
    if unknown:
        notes.append(f"ignored unknown section(s) {', '.join(unknown)}")
    return version, sections, notes


def _mapping(lines: list[tuple[int, str]]) -> dict[str, tuple[int, str]]:
    mapping: dict[str, tuple[int, str]] = {}
    for number, line in lines:
        key, _, value = line.partition(":")
        mapping[key.strip()] = (number, value.strip())
    return mapping


def _normalise_mappings(
    sections: dict[str, list[tuple[int, str]]], notes: list[str]
) -> dict[str, dict[str, str]]:
    mappings: dict[str, dict[str, str]] = {}
    filled: list[str] = []
    dropped: list[str] = []
    clamped: list[str] = []
    for name in _MAPPING_SECTIONS:
        raw = _mapping(sections.get(name, []))
        values = {key: value for key, (_, value) in raw.items()}
        for key in _INT_FIELDS.get(name, ()):
            if key in values:
                try:
                    values[key] = str(_integer(values[key], key, strict=False))
                except _BadLine:
                    del values[key]
                    dropped.append(f"{name}.{key}")
        for key in _FLOAT_FIELDS.get(name, ()):
            if key in values:
                try:
                    _number(values[key], key)
                except _BadLine:
                    del values[key]
                    dropped.append(f"{name}.{key}")
        if name == "Editor" and "Bookmarks" in values:
            try:
                marks = [
                    str(_integer(v, "bookmark", strict=False))
                    for v in values["Bookmarks"].split(",")
                    if v.strip()
                ]
                values["Bookmarks"] = ",".join(marks)
            except _BadLine:
                del values["Bookmarks"]
                dropped.append("Editor.Bookmarks")
        if name == "Difficulty":
            for key, (low, high) in _DIFFICULTY_RANGES.items():
                if key not in values:
                    continue
                try:
                    value = _number(values[key], key)
                except _BadLine as exc:
                    raise SourceError(
                        f"malformed: line {raw[key][0]} in [Difficulty]: {exc}"
                    ) from None
                if not low <= value <= high:
                    values[key] = repr(min(max(value, low), high))
                    clamped.append(f"{key}={value:g}")
        if name == "General" and "Mode" in values:
            try:
                values["Mode"] = str(_integer(values["Mode"], "Mode"))
            except _BadLine as exc:
                raise SourceError(f"malformed: line {raw['Mode'][0]} in [General]: {exc}") from None
        for key, default in _REQUIRED_FIELDS.get(name, {}).items():
            if key not in values:
                values[key] = default
                filled.append(f"{name}.{key}")
        mappings[name] = values
    if filled:
        notes.append(f"missing fields set to defaults: {', '.join(filled)}")
    if dropped:
        notes.append(f"unreadable fields ignored: {', '.join(dropped)}")
    if clamped:
        notes.append(f"difficulty values clamped to the game's range: {', '.join(clamped)}")
    return mappings


def _normalise_timing_points(lines: list[tuple[int, str]], notes: list[str]) -> list[str]:
    """Timing point lines with all eight fields, sorted by time, beat lengths as the game clamps."""
    points: list[tuple[float, list[str]]] = []
    clamped = 0
    for number, line in lines:
        fields = [f.strip() for f in line.split(",")]
        try:
            if len(fields) < 2:
                raise _BadLine("malformed", "a timing point needs at least time and beat length")
            offset = _number(fields[0], "time")
            beat_length = _number(fields[1], "beat length")
            defaults = [4, 0, 0, 100, int(beat_length > 0), 0]
            for i, text in enumerate(fields[2:8]):
                if text:
                    defaults[i] = _integer(text, "timing field", strict=False, limit=None)
        except _BadLine as exc:
            raise SourceError(f"{exc.category}: line {number} in [TimingPoints]: {exc}") from None
        meter, sample_set, sample_index, volume, uninherited, effects = defaults
        if uninherited:
            if not 6.0 <= beat_length <= 60000.0:
                beat_length = min(max(beat_length, 6.0), 60000.0)
                clamped += 1
            beat_text = fields[1] if beat_length == float(fields[1]) else repr(beat_length)
        else:
            # An inherited point holds -100 / slider velocity; the game reads others as 1.
            beat_text = fields[1] if beat_length < 0 else "-100"
        if meter < 1:
            meter = 4
        points.append(
            (
                offset,
                [
                    fields[0],
                    beat_text,
                    str(meter),
                    str(sample_set),
                    str(sample_index),
                    str(volume),
                    "1" if uninherited else "0",
                    str(effects),
                ],
            )
        )
    points.sort(key=lambda p: p[0])
    first_red = next((i for i, (_, f) in enumerate(points) if f[6] == "1"), None)
    if first_red is None:
        notes.append("no uninherited timing point; assumed 60 BPM from time 0")
        return [_DEFAULT_TIMING_LINE]
    if first_red > 0:
        notes.append(f"ignored {first_red} inherited timing point(s) before the first red line")
    if clamped:
        notes.append(f"clamped {clamped} beat length(s) to the game's range 6..60000 ms")
    return [",".join(f) for _, f in points[first_red:]]


def _path_length(points: list[tuple[int, int]]) -> float:
    return sum(math.dist(a, b) for a, b in pairwise(points))


def _normalise_hit_object(fields: list[str], notes: set[str]) -> tuple[int, str]:
    """Time and clean text of one hit object line (fields already split on commas)."""
    if len(fields) < 4:
        raise _BadLine("malformed", f"a hit object needs at least 4 fields, got {len(fields)}")
    x = _coordinate(fields[0], "x")
    y = _coordinate(fields[1], "y")
    time = _integer(fields[2], "time", strict=False)
    type_ = _integer(fields[3], "type")
    hitsound = _integer(fields[4], "hitsound", strict=False) if len(fields) > 4 and fields[4] else 0
    rest = fields[5:]
    combo = type_ & _COMBO_BITS
    head = f"{x},{y},{time}"
    if type_ & _CIRCLE:
        sample = rest[0] if rest and rest[0] else _DEFAULT_HIT_SAMPLE
        if not rest:
            notes.add("circle(s) without the hitSample field read as 0:0")
        return time, f"{head},{_CIRCLE | combo},{hitsound},{sample}"
    if type_ & _SLIDER:
        return time, _normalise_slider(head, x, y, combo, hitsound, rest, notes)
    if type_ & _SPINNER:
        end = _integer(rest[0], "spinner end time", strict=False) if rest and rest[0] else time
        if end < time:
            notes.add("spinner(s) ending before they start shortened to zero length")
            end = time
        sample = rest[1] if len(rest) > 1 and rest[1] else _DEFAULT_HIT_SAMPLE
        return time, f"{head},{_SPINNER | combo},{hitsound},{end},{sample}"
    if type_ & _HOLD:
        end_text = rest[0].split(":", 1)[0] if rest else ""
        end = max(_integer(end_text, "hold end time", strict=False), time) if end_text else time
        return time, f"{head},{_HOLD | combo},{hitsound},{end}"
    raise _BadLine("malformed", f"unknown hit object type {type_}")


def _normalise_slider(
    head: str, x: int, y: int, combo: int, hitsound: int, rest: list[str], notes: set[str]
) -> str:
    if not rest or not rest[0]:
        raise _BadLine("malformed", "slider without a curve")
    kind, *tokens = rest[0].split("|")
    kind = kind.strip().upper()
    if kind not in ("B", "L", "P", "C"):
        notes.add(f"unknown slider curve type(s) read as Catmull, e.g. {kind!r}")
        kind = "C"
    points = [(x, y)]
    for token in tokens:
        px, sep, py = token.partition(":")
        if not sep:
            if token.strip().upper() in ("B", "L", "P", "C"):
                # A newer per-segment curve type: approximated as a Bezier segment boundary
                # (a repeated point), which is how the legacy format writes one.
                notes.add("per-segment slider curve types read as Bezier segments")
                if len(points) > 1:
                    points.append(points[-1])
                kind = "B"
                continue
            raise _BadLine("malformed", f"slider point {token!r} is not x:y")
        points.append(
            (
                _coordinate(px, "slider point x", MAX_CONTROL_POINT),
                _coordinate(py, "slider point y", MAX_CONTROL_POINT),
            )
        )
    if len(points) == 1:
        notes.add("slider(s) without control points read as zero-length lines")
        points.append((x, y))
        kind = "L"
    slides = (
        _integer(rest[1], "slider repeat count", strict=False) if len(rest) > 1 and rest[1] else 1
    )
    if slides > MAX_REPEATS:
        raise _BadLine("absurd", f"slider repeat count {slides} exceeds {MAX_REPEATS}")
    slides = max(slides, 1)
    length = _number(rest[2], "slider length") if len(rest) > 2 and rest[2] else 0.0
    if length > MAX_COORDINATE:
        raise _BadLine("absurd", f"slider length {length:g} exceeds {MAX_COORDINATE:g}")
    if length <= 0:
        notes.add("slider length(s) missing or not positive; taken from the control points")
        length = max(_path_length(points), 1.0)
    edge_sounds = rest[3] if len(rest) > 3 else ""
    if edge_sounds and not all(s.strip().lstrip("-").isdigit() for s in edge_sounds.split("|")):
        edge_sounds = ""
    edge_sets = rest[4] if len(rest) > 4 and _EDGE_SETS.match(rest[4]) else ""
    sample = rest[5] if len(rest) > 5 and rest[5] else _DEFAULT_HIT_SAMPLE
    curve = "|".join([kind, *(f"{px}:{py}" for px, py in points[1:])])
    length_text = (
        rest[2] if len(rest) > 2 and rest[2] and float(rest[2]) == length else repr(length)
    )
    return (
        f"{head},{_SLIDER | combo},{hitsound},{curve},{slides},{length_text},"
        f"{edge_sounds},{edge_sets},{sample}"
    )


def _normalise_hit_objects(
    lines: list[tuple[int, str]], notes: list[str]
) -> tuple[list[str], list[int]]:
    """Clean hit object lines sorted by time (stable), and their original line numbers."""
    objects: list[tuple[int, int, str]] = []
    line_notes: set[str] = set()
    for index, (number, line) in enumerate(lines):
        try:
            time, text = _normalise_hit_object([f.strip() for f in line.split(",")], line_notes)
        except _BadLine as exc:
            if exc.category == "malformed" and index == len(lines) - 1 and index > 0:
                notes.append(f"ignored the incomplete last line {number} (file truncated?): {exc}")
                break
            raise SourceError(f"{exc.category}: line {number} in [HitObjects]: {exc}") from None
        objects.append((time, number, text))
    notes.extend(sorted(line_notes))
    if any(a[0] > b[0] for a, b in pairwise(objects)):
        notes.append("hit objects were out of time order; sorted them")
        objects.sort(key=lambda o: o[0])
    return [text for _, _, text in objects], [number for _, number, _ in objects]


def normalise_osu_text(text: str) -> tuple[str, list[str]]:
    """A clean ``.osu`` text that ``slider`` parses, and notes on what was repaired.

    Raises :class:`SourceError` for text that cannot be repaired.
    """
    normalised = _normalise(text)
    return normalised.text, normalised.notes


def _normalise(text: str, modes: Collection[int] | None = None) -> _Normalised:
    """Normalised text; refuses modes not in ``modes`` (None: any) before the costly part."""
    if "\x00" in text:
        raise SourceError("not a beatmap: the file holds binary data")
    version, sections, notes = _split_sections(text.splitlines())
    mappings = _normalise_mappings(sections, notes)
    mode = int(mappings["General"].get("Mode", "0"))
    if modes is not None and mode not in modes:
        allowed = ", ".join(f"{mode_name(m)} ({m})" for m in sorted(modes)) or "none"
        raise SourceError(
            f"unsupported mode: {mode_name(mode)} (Mode {mode}); modes read here: {allowed}"
        )
    timing = _normalise_timing_points(sections.get("TimingPoints", []), notes)
    objects, object_lines = _normalise_hit_objects(sections.get("HitObjects", []), notes)
    out = [f"osu file format v{version}", ""]
    for name in _MAPPING_SECTIONS:
        out.append(f"[{name}]")
        out.extend(f"{key}: {value}" for key, value in mappings[name].items())
        out.append("")
    for name, body in (
        ("Events", [line for _, line in sections.get("Events", [])]),
        ("TimingPoints", timing),
        ("Colours", [line for _, line in sections.get("Colours", [])]),
        ("HitObjects", objects),
    ):
        out.append(f"[{name}]")
        out.extend(body)
        out.append("")
    return _Normalised("\n".join(out), len(objects), object_lines, notes)


def parse_beatmap_text(
    text: str, *, modes: Collection[int] = (0,)
) -> tuple[slider.Beatmap, list[str]]:
    """Parse ``.osu`` text into a ``slider.Beatmap``, repairing what the game would accept.

    Returns the beatmap and notes on repairs. Raises :class:`SourceError` with a reason
    category (see the module docstring) for anything that cannot be used, including game
    modes not in ``modes``.
    """
    normalised = _normalise(text, modes)
    if normalised.n_objects == 0:
        raise SourceError("no hit objects: the [HitObjects] section is missing or empty")
    try:
        beatmap = slider.Beatmap.parse(normalised.text)
        objects = beatmap.hit_objects(stacking=False)
    except Exception as exc:  # slider raises ValueError, IndexError, ZeroDivisionError, ...
        raise SourceError(f"malformed: {type(exc).__name__}: {exc}") from exc
    _check_durations(objects, normalised.object_lines)
    return beatmap, normalised.notes


def _check_durations(objects: tuple, object_lines: list[int]) -> None:
    for obj, number in zip(objects, object_lines):
        end = getattr(obj, "end_time", obj.time)
        duration_ms = (end - obj.time).total_seconds() * 1000.0
        end_ms = end.total_seconds() * 1000.0
        if duration_ms > MAX_OBJECT_MS or end_ms > MAX_END_MS:
            raise SourceError(
                f"absurd: line {number} in [HitObjects]: {type(obj).__name__.lower()} "
                f"lasts {duration_ms / 1000:.3g} s and ends at {end_ms / 1000:.3g} s"
            )


def _read_text(path: Path) -> tuple[str, str | None]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SourceError(f"too large: {size} bytes (at most {MAX_FILE_BYTES} are read)")
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"missing: no such file: {path}") from None
    except OSError as exc:
        raise SourceError(f"unreadable: {exc.strerror or exc}") from None
    if not data.strip():
        raise SourceError("empty: the file holds no text")
    return decode_osu_bytes(data)


def read_beatmap(path: str | Path, *, modes: Collection[int] = (0,)) -> slider.Beatmap:
    """Read one ``.osu`` file into a ``slider.Beatmap``; any failure is a :class:`SourceError`."""
    return read_beatmap_file(path, modes=modes).beatmap


def audio_name_problem(audio_filename: str | None) -> str | None:
    """Why an ``AudioFilename`` cannot name a file beside its map, or None when it can.

    Only files inside the map's folder are read: absolute names and names that climb out
    with ``..`` are refused, as are names no file system accepts.
    """
    name = (audio_filename or "").strip().replace("\\", "/")
    if not name:
        return None
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
        return f"AudioFilename {name[:80]!r} points outside the map's folder; ignored"
    if "\x00" in name or any(
        len(part.encode("utf-8", "replace")) > 255 for part in name.split("/")
    ):
        return f"AudioFilename {name[:80]!r} is not a usable file name; ignored"
    return None


def find_audio(osu_path: str | Path, audio_filename: str | None) -> Path | None:
    """The audio file a beatmap names, beside the ``.osu`` file (case-insensitive), or None
    (also when the name is refused by :func:`audio_name_problem`)."""
    name = (audio_filename or "").strip().replace("\\", "/")
    if not name or audio_name_problem(name):
        return None
    folder = Path(osu_path).parent
    candidate = folder / name
    try:
        if candidate.is_file():
            return candidate
        wanted = candidate.name.lower()
        matches = [
            p for p in candidate.parent.iterdir() if p.name.lower() == wanted and p.is_file()
        ]
    except OSError:
        return None
    return min(matches) if matches else None


_AUDIO_LINE = re.compile(r"^\s*AudioFilename\s*:(.*)$", re.MULTILINE)


def map_source_files(path: Path) -> tuple[Path, ...]:
    """The ``.osu`` file and the audio file it names (when present), found without parsing
    the map: what a map's embeddings can depend on."""
    try:
        text, _ = decode_osu_bytes(path.read_bytes()[:MAX_FILE_BYTES])
    except OSError:
        return (path,)
    match = _AUDIO_LINE.search(text)
    audio = find_audio(path, match.group(1)) if match else None
    return (path,) if audio is None else (path, audio)


def read_beatmap_file(
    path: str | Path, *, root: str | Path | None = None, modes: Collection[int] = (0,)
) -> BeatmapFile:
    """Read ``path`` with its id (relative to ``root``, default: its name) and its audio path."""
    path = Path(path)
    text, encoding_note = _read_text(path)
    beatmap, notes = parse_beatmap_text(text, modes=modes)
    if encoding_note:
        notes.insert(0, encoding_note)
    audio_problem = audio_name_problem(beatmap.audio_filename)
    if audio_problem:
        notes.append(audio_problem)
    file_id = source_id(path, root) if root is not None else path.name
    return BeatmapFile(
        path, file_id, beatmap, find_audio(path, beatmap.audio_filename), tuple(notes)
    )


def iter_beatmap_files(
    source: str | Path,
    skipped: SkipLog,
    *,
    modes: Collection[int] = (0,),
    progress: bool = False,
) -> Iterator[BeatmapFile]:
    """Every readable beatmap under ``source``; the others are recorded in ``skipped``.

    Raises :class:`SourceError` only when ``source`` itself does not exist.
    """
    root = Path(source)
    for path in tqdm(find_beatmaps(root), desc="beatmaps", unit="map", disable=not progress):
        file_id = source_id(path, root)
        try:
            beatmap_file = read_beatmap_file(path, root=root, modes=modes)
        except SourceError as exc:
            skipped.add(file_id, str(exc))
            continue
        yield beatmap_file
