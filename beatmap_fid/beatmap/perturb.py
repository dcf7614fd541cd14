"""Seeded disturbances of beatmaps: timing jitter, position noise, dropped objects.

A good distance between sets of beatmaps grows as a set is disturbed more; these functions
make such disturbed copies. They work on the ``[HitObjects]`` lines of the normalised text
(see :func:`beatmap_fid.beatmap.reading.normalise_osu_text`), so what they write is always a
valid ``.osu`` file that reads back with :func:`~beatmap_fid.beatmap.reading.read_beatmap`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from beatmap_fid.beatmap.reading import (
    decode_osu_bytes,
    find_audio,
    find_beatmaps,
    normalise_osu_text,
    source_id,
)
from beatmap_fid.errors import InputError, SkipLog, SourceError

_SPINNER, _HOLD = 8, 128
_WIDTH, _HEIGHT = 512, 384


@dataclass(frozen=True)
class Disturbance:
    """How strongly to disturb: time jitter and position noise (standard deviations, in ms
    and osu! pixels) and the fraction of hit objects removed."""

    timing_jitter_ms: float = 0.0
    position_noise_px: float = 0.0
    drop_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.timing_jitter_ms < 0 or self.position_noise_px < 0:
            raise InputError("timing_jitter_ms and position_noise_px must be >= 0")
        if not 0 <= self.drop_fraction < 1:
            raise InputError("drop_fraction must be in [0, 1)")


def _disturb_object(
    fields: list[str], disturbance: Disturbance, rng: np.random.Generator
) -> tuple[int, str]:
    shift_ms = round(rng.normal(0.0, disturbance.timing_jitter_ms))
    dx, dy = rng.normal(0.0, disturbance.position_noise_px, size=2)
    x, y, time, type_ = int(fields[0]), int(fields[1]), int(fields[2]) + shift_ms, int(fields[3])
    if type_ & _SPINNER or type_ & _HOLD:
        fields[5] = str(int(fields[5]) + shift_ms)
    if not type_ & (_SPINNER | _HOLD):
        new_x = int(np.clip(round(x + dx), 0, _WIDTH))
        new_y = int(np.clip(round(y + dy), 0, _HEIGHT))
        if type_ & 2:  # slider: move the control points with the head to keep the shape
            kind, *points = fields[5].split("|")
            moved = []
            for point in points:
                px, py = point.split(":")
                moved.append(f"{int(px) + new_x - x}:{int(py) + new_y - y}")
            fields[5] = "|".join([kind, *moved])
        x, y = new_x, new_y
    fields[0], fields[1], fields[2] = str(x), str(y), str(time)
    return time, ",".join(fields)


def perturb_text(
    text: str, disturbance: Disturbance, seed: int | np.random.SeedSequence = 0
) -> str:
    """A disturbed copy of the ``.osu`` text (normalised first; :class:`SourceError` if it
    cannot be read). At least one hit object is always kept."""
    clean, _ = normalise_osu_text(text)
    head, _, objects_text = clean.partition("[HitObjects]\n")
    lines = [line for line in objects_text.splitlines() if line]
    rng = np.random.default_rng(seed)
    keep = rng.random(len(lines)) >= disturbance.drop_fraction
    if lines and not keep.any():
        keep[rng.integers(len(lines))] = True
    disturbed = [
        _disturb_object(line.split(","), disturbance, rng)
        for line, kept in zip(lines, keep)
        if kept
    ]
    disturbed.sort(key=lambda item: item[0])
    return head + "[HitObjects]\n" + "\n".join(text for _, text in disturbed) + "\n"


def perturb_file(
    source: str | Path,
    destination: str | Path,
    disturbance: Disturbance,
    seed: int | np.random.SeedSequence = 0,
) -> Path:
    """Write a disturbed copy of the beatmap ``source`` to ``destination``."""
    source, destination = Path(source), Path(destination)
    try:
        text, _ = decode_osu_bytes(source.read_bytes())
    except OSError as exc:
        raise SourceError(f"unreadable: {exc.strerror or exc}") from None
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(perturb_text(text, disturbance, seed), encoding="utf-8")
    return destination


def perturb_folder(
    source: str | Path,
    destination: str | Path,
    disturbance: Disturbance,
    seed: int = 0,
    *,
    copy_audio: bool = True,
    skipped: SkipLog | None = None,
) -> list[Path]:
    """Disturbed copies of every beatmap under ``source`` at the same relative paths under
    ``destination``; returns the paths written.

    Map ``i`` (in :func:`find_beatmaps` order) uses the seed sequence ``(seed, i)``. With
    ``copy_audio`` the audio file each map names is copied beside it, so window counts stay
    those of the original. Unreadable maps are recorded in ``skipped`` (or raise when it is
    None).
    """
    source, destination = Path(source), Path(destination)
    written = []
    for index, path in enumerate(find_beatmaps(source)):
        target = destination / source_id(path, source)
        try:
            perturb_file(path, target, disturbance, seed=np.random.SeedSequence([seed, index]))
        except SourceError as exc:
            if skipped is None:
                raise
            skipped.add(source_id(path, source), str(exc))
            continue
        written.append(target)
        if copy_audio:
            _copy_audio(path, target)
    return written


def _copy_audio(path: Path, target: Path) -> None:
    text, _ = decode_osu_bytes(path.read_bytes())
    name = next(
        (
            line.split(":", 1)[1].strip()
            for line in text.splitlines()
            if line.strip().startswith("AudioFilename")
        ),
        "",
    )
    audio = find_audio(path, name)
    if audio is None:
        return
    copy = target.parent / audio.relative_to(path.parent)
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(audio, copy)
