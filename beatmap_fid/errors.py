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


class WorkerError(BeatmapFidError):
    """A worker of a distributed run failed; what it committed is kept for the next run."""


@dataclass(frozen=True)
class Skipped:
    """One input left out of a run, and why."""

    source: str
    reason: str


@dataclass
class SkipLog:
    """Collects inputs skipped during a run so they can be counted and listed at the end.

    The same record lists inputs used with a fallback (an extractor's ``fallbacks``: for
    example windows counted from a map's length because its audio is unreadable).
    """

    entries: list[Skipped] = field(default_factory=list)

    def add(self, source: object, reason: str) -> None:
        self.entries.append(Skipped(str(source), reason))

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def reasons(self) -> Counter[str]:
        """Number of skips per reason (the part of the reason before the first colon)."""
        return Counter(_kind(entry.reason) for entry in self.entries)

    def by_reason(self) -> dict[str, list[Skipped]]:
        """The skips grouped by reason (the part before the first colon), the most frequent
        reason first (ties in order of first appearance)."""
        groups: dict[str, list[Skipped]] = {}
        for entry in self.entries:
            groups.setdefault(_kind(entry.reason), []).append(entry)
        return dict(sorted(groups.items(), key=lambda group: -len(group[1])))

    def brief(self) -> str:
        """One line: how many were skipped, per reason with its first input (for error
        messages)."""
        if not self.entries:
            return "nothing skipped"
        counts = "; ".join(
            f"{len(group)} {kind} (first: {group[0].source})"
            for kind, group in self.by_reason().items()
        )
        return f"{len(self.entries)} skipped: {counts}"

    def summary(self, examples: int = 3, *, verbose: bool = False, what: str = "skipped") -> str:
        """What was skipped (or ``what`` happened to the entries), by reason: each reason with
        its count and its first ``examples`` inputs (every input when ``verbose``)."""
        if not self.entries:
            return f"nothing {what}"
        lines = [f"{len(self.entries)} {what}, by reason:"]
        for kind, group in self.by_reason().items():
            lines.append(f"  {len(group)} × {kind}")
            shown = group if verbose else group[:examples]
            for entry in shown:
                detail = entry.reason[len(kind) :].removeprefix(":").strip()
                lines.append(f"      {entry.source}" + (f": {detail}" if detail else ""))
            if len(group) > len(shown):
                lines.append(f"      ... and {len(group) - len(shown)} more (--verbose lists all)")
        return "\n".join(lines)


def _kind(reason: str) -> str:
    """The kind of a skip reason: the part before its first colon."""
    return reason.split(":", 1)[0].strip()
