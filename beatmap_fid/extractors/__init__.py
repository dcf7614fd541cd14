"""Feature extractors, found by name through the registry in :mod:`beatmap_fid.extractors.base`.

The built-in extractor modules are imported (and so registered) the first time the registry is
asked for an extractor; each keeps its heavy imports (torch models, open_clip, transformers)
inside its factory.
"""

from beatmap_fid.extractors.base import (
    Extractor,
    Item,
    build_extractor,
    config_hash,
    extractor_infos,
    register_extractor,
)

__all__ = [
    "Extractor",
    "Item",
    "build_extractor",
    "config_hash",
    "extractor_infos",
    "register_extractor",
]
