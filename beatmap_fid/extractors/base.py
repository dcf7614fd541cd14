"""The extractor contract and the registry that finds extractors by name.

An extractor turns a source (a file or a folder) into items with stable string ids, and
batches of item payloads into float32 vectors. Its JSON-able ``config`` is stored with every
vector it produces; its hash keeps stores made with different configurations apart.

Extractors register a factory under a name; heavy imports (torch models, open_clip,
transformers) happen inside the factory, never when ``beatmap_fid`` is imported.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from beatmap_fid.errors import ExtractorError, SkipLog


@dataclass(frozen=True)
class Item:
    """One unit to embed: a stable id, the payload ``embed`` takes, and an optional label."""

    id: str
    payload: Any
    label: str | None = None


@runtime_checkable
class Extractor(Protocol):
    """What every feature extractor provides."""

    name: str
    dim: int
    config: dict[str, Any]

    def items(self, source: str | Path, skipped: SkipLog) -> Iterator[Item]:
        """Items of ``source``; inputs that cannot be used are recorded in ``skipped``."""

    def embed(self, payloads: Sequence[Any]) -> np.ndarray:
        """Vectors for a batch of payloads: float32 array of shape (len(payloads), dim)."""


def config_hash(config: dict[str, Any]) -> str:
    """Short, stable hash of a JSON-able configuration (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def batched(items: Iterable[Item], batch_size: int) -> Iterator[list[Item]]:
    """Consecutive lists of at most ``batch_size`` items."""
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class ExtractorInfo:
    """A registry entry: how to build an extractor and what to say about it."""

    name: str
    factory: Callable[..., Extractor]
    description: str
    dim: int | None = None
    weights_available: Callable[[], bool] | None = None


_REGISTRY: dict[str, ExtractorInfo] = {}

BUILTIN_EXTRACTOR_MODULES = (
    "beatmap_fid.extractors.descriptors",
    "beatmap_fid.extractors.mapper_classifier",
    "beatmap_fid.extractors.clip",
    "beatmap_fid.extractors.efficientnet",
    "beatmap_fid.extractors.inception",
    "beatmap_fid.extractors.audio",
    "beatmap_fid.extractors.beatmap_image",
    "beatmap_fid.extractors.cm3p",
)


def register_extractor(
    name: str,
    factory: Callable[..., Extractor],
    description: str,
    dim: int | None = None,
    weights_available: Callable[[], bool] | None = None,
) -> None:
    """Make ``factory(**options)`` buildable as ``build_extractor(name, **options)``."""
    _REGISTRY[name] = ExtractorInfo(name, factory, description, dim, weights_available)


def _load_builtin_extractors() -> None:
    """Import the built-in extractor modules, which register themselves."""
    for module in BUILTIN_EXTRACTOR_MODULES:
        importlib.import_module(module)


def extractor_infos() -> list[ExtractorInfo]:
    """Every registered extractor, sorted by name."""
    _load_builtin_extractors()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def build_extractor(name: str, **options: Any) -> Extractor:
    """Build the extractor registered as ``name`` with the given options."""
    _load_builtin_extractors()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ExtractorError(f"unknown extractor {name!r}; known extractors: {known}")
    return _REGISTRY[name].factory(**options)
