"""Embedding one folder of beatmaps with several extractors in a single pass over the maps.

Every ``.osu`` file is found and parsed once; each extractor then makes its items from the
parsed map (``beatmap_items``) and its vectors go to its own store (one store per extractor
configuration, as :func:`beatmap_fid.api.embed_to_store` writes them: resumable, ids already
stored are not embedded again). Extractors without ``beatmap_items`` (images, audio) are
embedded on their own. A map outside an extractor's modes is skipped for that extractor only.
Stores are the cache stores of :func:`beatmap_fid.api.embed_cached`, which follow the folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.api import (
    EmbedResult,
    SideSummary,
    StoreSession,
    embed_beatmaps,
    embed_cached,
    store_path_for,
)
from beatmap_fid.errors import InputError, InsufficientSamplesError, SkipLog
from beatmap_fid.extractors.base import Extractor, config_hash

ALL_MODES = (0, 1, 2, 3)


def embed_many(
    source: str | Path,
    extractors: Sequence[Extractor],
    *,
    store_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> list[EmbedResult]:
    """Embed ``source`` into each extractor's cache store (as :func:`beatmap_fid.api.embed_cached`
    does), reading each map once; one result per extractor."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"source {source} does not exist")
    shared = [e for e in extractors if hasattr(e, "beatmap_items")]
    results: dict[int, EmbedResult] = {
        index: embed_cached(source, e, store_dir, batch_size=batch_size, progress=progress)
        for index, e in enumerate(extractors)
        if e not in shared
    }
    sessions: list[StoreSession] = []
    try:
        for extractor in shared:
            path = store_path_for(source, extractor, store_dir)
            sessions.append(StoreSession(extractor, path, SkipLog()))
        embed_beatmaps(source, sessions, batch_size=batch_size, progress=progress)
    except BaseException:
        for session in sessions:
            session.abort()
        raise
    for extractor, session in zip(shared, sessions):
        results[extractors.index(extractor)] = session.close(prune=True)
    return [results[i] for i in range(len(extractors))]


def _side(source: Path, extractor: Extractor, result: EmbedResult) -> Any:
    from beatmap_fid.evaluate import EvalSide, is_beatmap_folder

    if result.n_items < 2:
        raise InsufficientSamplesError(
            f"{source} with {extractor.name!r}: {result.n_items} usable item(s) from "
            f"{result.n_sources} file(s); at least 2 are needed. {result.skipped.summary()}"
        )
    summary = SideSummary(
        str(source),
        "folder",
        result.n_sources,
        result.n_items,
        str(result.store_path),
        result.skipped,
    )
    return EvalSide(
        summary,
        result.vectors(),
        np.asarray(result.ids, dtype=object),
        None,
        extractor.name,
        config_hash(extractor.config),
        source if is_beatmap_folder(source) else None,
    )


def sides_for_extractors(
    real: Any,
    generated: Any,
    extractors: Sequence[Extractor],
    *,
    store_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> list[tuple[Any, Any]]:
    """``(real, generated)`` loaded sides for each extractor. Folders of beatmaps are read
    once for all extractors (:func:`embed_many`); other sides go through
    :func:`beatmap_fid.evaluate.load_sides` per extractor."""
    from beatmap_fid.evaluate import is_beatmap_folder, load_sides

    if len(extractors) > 1 and all(is_beatmap_folder(s) for s in (real, generated)):
        per_side = [
            embed_many(s, extractors, store_dir=store_dir, batch_size=batch_size, progress=progress)
            for s in (real, generated)
        ]
        return [
            (_side(Path(real), e, per_side[0][i]), _side(Path(generated), e, per_side[1][i]))
            for i, e in enumerate(extractors)
        ]
    return [
        load_sides(
            real, generated, e, store_dir=store_dir, batch_size=batch_size, progress=progress
        )
        for e in extractors
    ]
