"""Zero-shot description of a map with CM3P: which metadata values fit it best.

As CM3P's zero-shot classification does, a field is ranked by giving the metadata tower one
metadata per candidate value (the map's own fields, :func:`map_metadata`, with only that
field changed; the other ranked fields unknown) and comparing each window's beatmap embedding
with them: ``softmax(exp(logit_scale) · cos)`` over the candidates, per window. A candidate's
score is its probability averaged over the map's windows. Candidates come from the
checkpoint's metadata vocabulary: years, difficulties (star ratings in the tokenizer's steps),
modes, statuses, tags and mappers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.errors import InputError, SkipLog

DESCRIBE_FIELDS = ("year", "difficulty", "mode", "status", "tags", "mapper")


@dataclass(frozen=True)
class Ranking:
    """Candidates of one field, best first: ``(label, mean probability)``."""

    field: str
    candidates: list[tuple[str, float]]


@dataclass(frozen=True)
class Description:
    """A map's rankings, and how many windows they were averaged over."""

    map: str
    windows: int
    metadata: dict[str, Any]
    rankings: list[Ranking]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        return {
            "map": self.map,
            "windows": self.windows,
            "metadata": self.metadata,
            "rankings": {
                r.field: [{"value": label, "probability": p} for label, p in r.candidates[:top]]
                for r in self.rankings
            },
        }


def candidates(tokenizer: Any, field: str) -> list[tuple[str, Any]]:
    """``(label, value)`` of every value of ``field`` in the checkpoint's vocabulary."""
    s = tokenizer.settings
    if field == "year":
        return [(str(y), y) for y in range(s.min_year, s.max_year + 1)]
    if field == "difficulty":
        steps = np.arange(s.min_difficculty, s.max_difficulty + 1e-5, s.difficulty_step)
        return [(f"{v:.1f}", float(v)) for v in steps]
    if field == "mode":
        return [(name, mode) for mode, name in sorted(tokenizer.mode_names.items())]
    if field == "status":
        return [(name, name) for _, name in sorted(tokenizer.status_names.items())]
    if field == "tags":
        return [(name, [name]) for _, name in sorted(tokenizer.tag_names.items())]
    if field == "mapper":
        return [(f"{name} ({i})", i) for i, name in sorted(tokenizer.mapper_names.items())]
    raise InputError(f"unknown field {field!r}; choose from {', '.join(DESCRIBE_FIELDS)}")


def describe(
    extractor: Any, path: str | Path, fields: Sequence[str] = DESCRIBE_FIELDS
) -> Description:
    """Rankings of ``fields`` for the map at ``path`` (see the module documentation), with a
    ``"cm3p"`` extractor (:class:`~beatmap_fid.extractors.cm3p.extractor.CM3PExtractor`)."""
    from beatmap_fid.beatmap.reading import read_beatmap_file
    from beatmap_fid.extractors.cm3p.events import song_length_from_beatmap
    from beatmap_fid.extractors.cm3p.processor import map_metadata

    if getattr(extractor, "name", None) != "cm3p" or extractor.side != "beatmap":
        raise InputError("describe needs the 'cm3p' extractor with side=beatmap")
    for field in fields:
        candidates(extractor.metadata_tokenizer, field)  # unknown fields fail before the work
    beatmap_file = read_beatmap_file(path, modes=extractor.modes)
    skipped = SkipLog()
    items = extractor.beatmap_items(beatmap_file, skipped)
    if not items:
        raise InputError(f"{path}: nothing to describe. {skipped.brief()}")
    windows = extractor.window_embeds([item.payload for item in items]).astype(np.float64)
    if extractor.audio:
        rate = extractor.checkpoint.windows.sampling_rate
        length = len(extractor._audio(beatmap_file)) / rate
    else:
        length = song_length_from_beatmap(beatmap_file.beatmap)
    base = map_metadata(beatmap_file.beatmap, length)
    scale = extractor.logit_scale()
    rankings = []
    for field in fields:
        options = candidates(extractor.metadata_tokenizer, field)
        if not options:
            rankings.append(Ranking(field, []))
            continue
        held_out = {name: None for name in DESCRIBE_FIELDS if name != "mode"}
        ids = [
            extractor.metadata_tokenizer.ids({**base, **held_out, field: value})
            for _, value in options
        ]
        texts = extractor.metadata_embeds(ids).astype(np.float64)
        logits = scale * windows @ texts.T
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        mean = probabilities.mean(axis=0)
        order = np.argsort(-mean, kind="stable")
        rankings.append(Ranking(field, [(options[i][0], float(mean[i])) for i in order]))
    return Description(beatmap_file.id, len(items), base, rankings)
