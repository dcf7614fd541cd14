"""Exceptions and skip records shared by every stage of the pipeline.

Every error the library raises on purpose derives from :class:`BeatmapFidError`, so callers
can catch the library's own failures without catching programming errors. Inputs that cannot
be used (a malformed beatmap, a corrupt image) are not errors of the run: they are recorded in
a :class:`SkipLog` with their reason, counted and listed at the end.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class BeatmapFidError(Exception):
    """Base class of every error raised on purpose by beatmap_fid."""


class InputError(BeatmapFidError, ValueError):
    """An argument or input value is unusable (wrong shape, type or content)."""


class DimensionMismatchError(InputError):
    """Two sets of features or statistics have different dimensions."""


class NonFiniteError(InputError):
    """Features or statistics contain NaN or infinite values."""


class InsufficientSamplesError(InputError):
    """Too few samples for the statistic asked for."""


class StoreError(BeatmapFidError):
    """An embedding store is missing, malformed or used in a way its format forbids."""


class StoreLockedError(StoreError):
    """Another writer holds the store's lock."""


class StoreDamagedError(StoreError):
    """A store's bytes no longer match its checksums (``beatmap-fid check --repair`` mends it)."""


class StoreFullError(StoreError):
    """The disk holding a store has no room for the next batch (committed rows are kept)."""


class ConfigMismatchError(StoreError):
    """Vectors made with one extractor configuration met vectors made with another."""


class SourceError(BeatmapFidError):
    """A source (beatmap, image, audio file) cannot be read."""


class ExtractorError(BeatmapFidError):
    """An extractor is unknown, misconfigured or lacks its weights."""


class WeightsNotFoundError(ExtractorError):
    """Model weights are neither on disk nor downloadable."""


class IndexFileError(BeatmapFidError):
    """A FAISS index file is missing, truncated or does not match its store."""


@dataclass(frozen=True)
class Skipped:
    """One input left out of a run, and why."""

    source: str
    reason: str


@dataclass
class SkipLog:
    """Collects inputs skipped during a run so they can be counted and listed at the end."""

    entries: list[Skipped] = field(default_factory=list)

    def add(self, source: object, reason: str) -> None:
        self.entries.append(Skipped(str(source), reason))

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def reasons(self) -> Counter[str]:
        """Number of skips per reason (the part of the reason before the first colon)."""
        return Counter(entry.reason.split(":", 1)[0] for entry in self.entries)

    def summary(self, limit: int = 20) -> str:
        """A readable list of what was skipped, at most ``limit`` lines of detail."""
        if not self.entries:
            return "nothing skipped"
        lines = [f"{len(self.entries)} skipped:"]
        lines += [f"  {entry.source}: {entry.reason}" for entry in self.entries[:limit]]
        if len(self.entries) > limit:
            lines.append(f"  ... and {len(self.entries) - limit} more")
        return "\n".join(lines)
