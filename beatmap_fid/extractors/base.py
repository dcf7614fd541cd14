"""The extractor contract and the registry that finds extractors by name.

An extractor turns a source (a file or a folder) into items with stable string ids, and
batches of item payloads into float32 vectors. Its JSON-able ``config`` is stored with every
vector it produces; its hash keeps stores made with different configurations apart.

Extractors register a factory under a name; heavy imports (torch models, open_clip,
transformers) happen inside the factory, never when ``beatmap_fid`` is imported. The built-in
extractors are described in :mod:`beatmap_fid.extractors.catalog` and their modules imported
only when one is built.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from beatmap_fid.errors import ExtractorError, SkipLog, SourceError


@dataclass(frozen=True)
class Item:
    """One unit to embed: a stable id, the payload ``embed`` takes, an optional label, the
    files its vector is computed from, and for windows of beatmaps how many beatmap events the
    window holds.

    ``sources`` are hashed into the row's fingerprint, so a changed file is embedded again.
    ``n_events`` is counted by the extractor that cut the window (hit objects, or event tokens
    for token-based models) and stored beside the vector: 0 marks an empty window (a break,
    an intro, an outro), whose vector says nothing about mapping; None means not counted
    (images, audio).
    """

    id: str
    payload: Any
    label: str | None = None
    sources: tuple[Path, ...] = ()
    n_events: int | None = None


def map_id(item_id: str) -> str:
    """The source file of an item id. Windows of one beatmap are ``file#0``, ``file#1``, ...;
    they are correlated and must count as one map whenever samples are assumed independent
    (evaluation splits, bootstraps). The window number is what follows the last ``#`` (file
    names may hold ``#`` themselves); ids without a window number are their own map."""
    item_id = str(item_id)
    head, sep, tail = item_id.rpartition("#")
    return head if sep and tail.isdigit() else item_id


@runtime_checkable
class Extractor(Protocol):
    """What every feature extractor provides.

    An extractor that can stand in for a missing input (windows counted from a map's length
    when its audio is unreadable) also has ``fallbacks``, a :class:`SkipLog` to which it adds
    one entry per source embedded that way; see :func:`extractor_fallbacks`.
    """

    name: str
    dim: int
    config: dict[str, Any]

    def items(self, source: str | Path, skipped: SkipLog) -> Iterator[Item]:
        """Items of ``source``; inputs that cannot be used are recorded in ``skipped``."""

    def embed(self, payloads: Sequence[Any]) -> np.ndarray:
        """Vectors for a batch of payloads: float32 array of shape (len(payloads), dim)."""


def extractor_fallbacks(extractor: Extractor) -> SkipLog:
    """The extractor's record of sources embedded with a fallback (empty when it has none)."""
    found = getattr(extractor, "fallbacks", None)
    return found if found is not None else SkipLog()


def config_hash(config: dict[str, Any]) -> str:
    """Short, stable hash of a JSON-able configuration (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """BLAKE2b-128 of a file's bytes, as 32 hexadecimal digits."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Fingerprinter:
    """Fingerprints of items: a hash of the extractor config hash and of every source file's
    bytes. File digests are computed once per run (a set of difficulties shares its audio)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config_hash = config_hash(config)
        self._digests: dict[Path, str] = {}

    def __call__(self, item: Item) -> str | None:
        """The item's fingerprint, or None when it names no source files."""
        if not item.sources:
            return None
        digest = hashlib.blake2b(self._config_hash.encode(), digest_size=16)
        for path in item.sources:
            if path not in self._digests:
                try:
                    self._digests[path] = file_digest(path)
                except OSError as exc:
                    raise SourceError(f"unreadable: {path}: {exc.strerror or exc}") from exc
            digest.update(self._digests[path].encode())
        return digest.hexdigest()


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


def extractor_batches(
    extractor: Extractor, items: Iterable[Item], batch_size: int, skipped: SkipLog
) -> Iterator[list[Item]]:
    """Batches of ``items`` ready for ``extractor.embed``.

    Extractors that prepare payloads in batches (image decoding in worker processes) have a
    ``batches`` method, which records items it cannot prepare in ``skipped``.
    """
    make_batches = getattr(extractor, "batches", None)
    if make_batches is not None:
        return make_batches(items, batch_size, skipped)
    return batched(items, batch_size)


@dataclass(frozen=True)
class ExtractorInfo:
    """A registry entry: how to build an extractor and what to say about it.

    ``target`` is the factory, or ``"module:attribute"`` for built-in extractors, imported
    only when :attr:`factory` is first used. ``options`` maps each option to its default;
    ``more_options`` says the factory takes further options it passes on (e.g. to a
    backbone). ``weights_check`` tells whether the default weights are on disk (None: the
    extractor needs none).
    """

    name: str
    target: Callable[..., Extractor] | str
    description: str
    dim: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    more_options: bool = False
    weights_check: Callable[[], bool] | None = None

    @property
    def factory(self) -> Callable[..., Extractor]:
        """The factory, imported on first use for built-in extractors."""
        if not isinstance(self.target, str):
            return self.target
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    @property
    def needs_weights(self) -> bool:
        return self.weights_check is not None

    def weights_available(self) -> bool:
        """Whether the default weights are on disk (True when none are needed)."""
        return self.weights_check() if self.weights_check is not None else True

    def accepts(self, option: str) -> bool:
        """Whether ``option`` may be given to this extractor's factory."""
        return self.more_options or option in self.options


def _signature_options(factory: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """Options of a factory with their defaults (None when required), and whether it takes
    arbitrary keyword options as well."""
    options: dict[str, Any] = {}
    more = False
    for parameter in inspect.signature(factory).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            more = True
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            empty = parameter.default is inspect.Parameter.empty
            options[parameter.name] = None if empty else parameter.default
    return options, more


def _builtin_registry() -> dict[str, ExtractorInfo]:
    from beatmap_fid.extractors.catalog import BUILTIN

    return {
        name: ExtractorInfo(
            name,
            entry["factory"],
            entry["description"],
            entry["dim"],
            dict(entry["options"]),
            entry.get("more_options", False),
            entry["weights"],
        )
        for name, entry in BUILTIN.items()
    }


_REGISTRY: dict[str, ExtractorInfo] = _builtin_registry()


def register_extractor(
    name: str,
    factory: Callable[..., Extractor],
    description: str,
    dim: int | None = None,
    weights_available: Callable[[], bool] | None = None,
) -> None:
    """Make ``factory(**options)`` buildable as ``build_extractor(name, **options)``; its
    options and their defaults are read from the factory's signature."""
    options, more = _signature_options(factory)
    _REGISTRY[name] = ExtractorInfo(
        name, factory, description, dim, options, more, weights_available
    )


def extractor_info(name: str) -> ExtractorInfo:
    """The registry entry of ``name``; ExtractorError when no extractor has that name."""
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ExtractorError(f"unknown extractor {name!r}; known extractors: {known}")
    return _REGISTRY[name]


def extractor_infos() -> list[ExtractorInfo]:
    """Every registered extractor, sorted by name (nothing is imported or loaded)."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def recordable_options(options: dict[str, Any]) -> dict[str, Any] | None:
    """``options`` as plain JSON values (paths as text), or None when one has no JSON form."""

    def as_text(value: Any) -> str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(f"{type(value).__name__} has no JSON form")

    try:
        return json.loads(json.dumps(options, default=as_text, allow_nan=False))
    except (TypeError, ValueError):
        return None


def build_extractor(name: str, **options: Any) -> Extractor:
    """Build the extractor registered as ``name`` with the given options.

    The extractor keeps them as ``build_options`` (JSON values, or None when one has no JSON
    form), which stores record so that the same extractor can be rebuilt from a store.
    """
    factory = extractor_info(name).factory
    parameters = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(options) - set(parameters))
        if unknown:
            accepted = ", ".join(parameters) or "none"
            raise ExtractorError(
                f"extractor {name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options: {accepted}"
            )
    extractor = factory(**options)
    try:
        extractor.build_options = recordable_options(options)
    except AttributeError:  # an object that takes no new attributes: nothing recorded
        pass
    return extractor
