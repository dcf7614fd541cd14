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

from beatmap_fid.api import EmbedResult, SideSummary, StoreSession, embed_cached, store_path_for
from beatmap_fid.errors import InputError, InsufficientSamplesError, SkipLog
from beatmap_fid.extractors.base import Extractor, Item, config_hash

ALL_MODES = (0, 1, 2, 3)


def extractor_modes(extractor: Extractor) -> tuple[int, ...]:
    """The game modes an extractor reads (its ``modes``, else its config's, else standard)."""
    modes = getattr(extractor, "modes", None) or extractor.config.get("modes") or (0,)
    return tuple(int(m) for m in modes)


def embed_many(
    source: str | Path,
    extractors: Sequence[Extractor],
    *,
    store_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[EmbedResult]:
    """Embed ``source`` into each extractor's cache store (as :func:`beatmap_fid.api.embed_cached`
    does), reading each map once; one result per extractor."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"source {source} does not exist")
    from beatmap_fid.beatmap.reading import iter_beatmap_files, mode_name

    shared = [e for e in extractors if hasattr(e, "beatmap_items")]
    results: dict[int, EmbedResult] = {
        index: embed_cached(source, e, store_dir, batch_size=batch_size, progress=progress)
        for index, e in enumerate(extractors)
        if e not in shared
    }
    if not shared:
        return [results[i] for i in range(len(extractors))]
    modes = [extractor_modes(e) for e in shared]
    union = sorted({m for chosen in modes for m in chosen})
    read_skips = SkipLog()
    sessions: list[StoreSession] = []
    try:
        for extractor in shared:
            path = store_path_for(source, extractor, store_dir)
            sessions.append(StoreSession(extractor, path, SkipLog()))
        pending: list[list[Item]] = [[] for _ in shared]
        for beatmap_file in iter_beatmap_files(source, read_skips, modes=union, progress=progress):
            mode = int(beatmap_file.beatmap.mode)
            for i, (extractor, session) in enumerate(zip(shared, sessions)):
                if mode not in modes[i]:
                    allowed = ", ".join(mode_name(m) for m in modes[i])
                    session.skipped.add(
                        beatmap_file.id,
                        f"unsupported mode: {mode_name(mode)} (Mode {mode}); modes read here: "
                        f"{allowed}",
                    )
                    continue
                for item in session.new_items(
                    extractor.beatmap_items(beatmap_file, session.skipped)
                ):
                    pending[i].append(item)
                    if len(pending[i]) >= batch_size:
                        session.write(pending[i])
                        pending[i] = []
        for session, batch in zip(sessions, pending):
            session.write(batch)
    except BaseException:
        for session in sessions:
            session.abort()
        raise
    for extractor, session in zip(shared, sessions):
        session.skipped.entries[:0] = read_skips.entries
        results[extractors.index(extractor)] = session.close(prune=True)
    return [results[i] for i in range(len(extractors))]


def _side(source: Path, extractor: Extractor, result: EmbedResult) -> Any:
    from beatmap_fid.evaluate import EvalSide, is_beatmap_folder

    if result.n_items < 2:
        raise InsufficientSamplesError(
            f"{source} with {extractor.name!r}: {result.n_items} usable item(s) from "
            f"{result.n_sources} file(s); at least 2 are needed. {result.skipped.brief()}"
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
    progress: bool = False,
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
