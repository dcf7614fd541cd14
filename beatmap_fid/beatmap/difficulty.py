"""Star rating of a beatmap file by rosu-pp (``rosu-pp-py``), as Mapperatorinator's
``calc_fid.py`` computes it: ``rosu.Difficulty().calculate(rosu.Beatmap(path=...)).stars``,
no mods, the map's own mode."""

from __future__ import annotations

from pathlib import Path

from beatmap_fid.errors import ExtractorError, SourceError


def rosu_available() -> bool:
    """Whether rosu-pp-py can be imported."""
    import importlib.util

    return importlib.util.find_spec("rosu_pp_py") is not None


def star_rating(path: str | Path) -> float:
    """Star rating of the ``.osu`` file at ``path``.

    ExtractorError when rosu-pp-py is not installed; SourceError when rosu-pp cannot read the
    file.
    """
    try:
        import rosu_pp_py as rosu
    except ImportError as error:
        raise ExtractorError(
            "star ratings need rosu-pp-py: pip install 'beatmap_fid[cm3p]' (or rosu-pp-py)"
        ) from error
    try:
        return float(rosu.Difficulty().calculate(rosu.Beatmap(path=str(path))).stars)
    except Exception as error:  # rosu-pp raises its own ParseError, ValueError, OSError
        raise SourceError(f"unreadable by rosu-pp: {type(error).__name__}: {error}") from error
