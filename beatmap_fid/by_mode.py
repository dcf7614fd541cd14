"""Metrics per game mode: the same metrics on the vectors (or pairs) of each mode alone.

calc_fid pools osu!standard, taiko, catch and mania maps into one number; a generator can be
good at one mode and bad at another. When the maps of an evaluation span more than one mode,
:func:`per_mode_values` computes every metric again for each mode present on both sides and
returns them as ``key@mode`` (``fid@taiko``, ``active_f1@mania``). A vector's mode is the
``Mode`` of the ``.osu`` file its id names (``file#k``); sides given as stores or arrays have
no files to read, so they get no per-mode values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.errors import InputError

_MODE_LINE = re.compile(rb"^\s*Mode\s*:\s*(\d+)", re.MULTILINE)


def read_mode(path: str | Path) -> int | None:
    """The ``Mode`` of an ``.osu`` file (0 when it has no Mode line), None when unreadable."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    found = _MODE_LINE.search(data)
    return int(found.group(1)) if found else 0


def vector_modes(folder: Path | None, ids: Any) -> np.ndarray | None:
    """The mode of each vector (ids ``file#k`` relative to ``folder``), or None without a folder."""
    if folder is None or ids is None:
        return None
    cache: dict[str, int | None] = {}
    modes = []
    for item in ids:
        name = str(item).split("#", 1)[0]
        if name not in cache:
            path = folder / name if folder.is_dir() else folder
            cache[name] = read_mode(path)
        modes.append(-1 if cache[name] is None else cache[name])
    return np.asarray(modes, dtype=np.int64)


def _subset(side: Any, rows: np.ndarray) -> Any:
    from dataclasses import replace

    return replace(side, vectors=side.vectors[rows], ids=np.asarray(side.ids)[rows])


def per_mode_values(
    real: Any,
    generated: Any,
    names: Sequence[str],
    options: dict[str, dict[str, Any]] | None = None,
    *,
    device: str | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """``key@mode`` values of ``names`` for each mode both sides hold, when they hold more
    than one; and notes on metrics a mode's subset is too small for."""
    from beatmap_fid.beatmap.reading import mode_name
    from beatmap_fid.evaluate import RHYTHM, compute_metrics
    from beatmap_fid.metrics.calc_fid import PAIRED

    options = options or {}
    values: dict[str, float] = {}
    notes: dict[str, str] = {}
    real_modes = vector_modes(real.beatmap_folder, real.ids) if real.vectors is not None else None
    gen_modes = (
        vector_modes(generated.beatmap_folder, generated.ids)
        if generated.vectors is not None
        else None
    )
    if real_modes is None or gen_modes is None:
        return values, notes
    present = sorted(set(real_modes.tolist()) | set(gen_modes.tolist()))
    if len(present) < 2:
        return values, notes
    pair_metrics = [n for n in names if n in (RHYTHM, PAIRED)]
    vector_metrics = [n for n in names if n not in pair_metrics and n != "overlap"]
    for mode in present:
        label = mode_name(mode)
        rows_r, rows_g = np.flatnonzero(real_modes == mode), np.flatnonzero(gen_modes == mode)
        if len(rows_r) < 2 or len(rows_g) < 2:
            notes[f"@{label}"] = (
                f"{len(rows_r)} real and {len(rows_g)} generated vectors: too few for metrics"
            )
            continue
        sub_r, sub_g = _subset(real, rows_r), _subset(generated, rows_g)
        for name in vector_metrics:
            try:
                found, _ = compute_metrics(
                    sub_r, sub_g, [name], options, device=device, progress=False
                )
            except InputError as error:
                notes[f"{name}@{label}"] = str(error)
                continue
            values.update({f"{k}@{label}": v for k, v in found.items()})
        if RHYTHM in pair_metrics:
            from beatmap_fid.metrics.rhythm import rhythm_metrics

            rhythm_options = {**options.get(RHYTHM, {}), "modes": (mode,)}
            try:
                found = rhythm_metrics(
                    real.beatmap_folder, generated.beatmap_folder, **rhythm_options
                )
            except InputError as error:
                notes[f"{RHYTHM}@{label}"] = str(error)
                continue
            values.update({f"{k}@{label}": v for k, v in found.as_dict().items()})
    return values, notes
