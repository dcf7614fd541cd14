"""beatmap_fid: embeddings, Fréchet distance, FAISS search and k-NN for beatmaps, images, audio.

The public API is listed in ``__all__``. Names are imported from their modules on first use
(PEP 562), so ``import beatmap_fid`` and the command line start fast: NumPy, SciPy, h5py,
scikit-learn, FAISS and the models load only when something that needs them is used.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from beatmap_fid._version import __version__

# Public name -> module that defines it.
_EXPORTS = {
    "EmbedResult": "beatmap_fid.api",
    "FIDResult": "beatmap_fid.api",
    "StreamingFID": "beatmap_fid.api",
    "compute_fid": "beatmap_fid.api",
    "embed_to_store": "beatmap_fid.api",
    "store_statistics": "beatmap_fid.api",
    "BeatmapFidError": "beatmap_fid.errors",
    "SkipLog": "beatmap_fid.errors",
    "evaluate": "beatmap_fid.evaluate",
    "build_extractor": "beatmap_fid.extractors.base",
    "extractor_infos": "beatmap_fid.extractors.base",
    "register_extractor": "beatmap_fid.extractors.base",
    "as_stats": "beatmap_fid.frechet",
    "frechet_distance": "beatmap_fid.frechet",
    "VectorIndex": "beatmap_fid.index",
    "build_index": "beatmap_fid.index",
    "load_index": "beatmap_fid.index",
    "KNNClassifier": "beatmap_fid.knn",
    "evaluate_knn": "beatmap_fid.knn",
    "map_memorisation_scores": "beatmap_fid.knn",
    "memorisation_scores": "beatmap_fid.knn",
    "METRICS": "beatmap_fid.metrics",
    "fd_infinity": "beatmap_fid.metrics",
    "fid_confidence_interval": "beatmap_fid.metrics",
    "add_reference": "beatmap_fid.references",
    "list_references": "beatmap_fid.references",
    "load_reference": "beatmap_fid.references",
    "reference_fid": "beatmap_fid.references",
    "remove_reference": "beatmap_fid.references",
    "build_report": "beatmap_fid.report",
    "GaussianStats": "beatmap_fid.stats",
    "RunningGaussian": "beatmap_fid.stats",
    "gaussian_stats": "beatmap_fid.stats",
    "ShardedStore": "beatmap_fid.shards",
    "EmbeddingStore": "beatmap_fid.store",
    "StoreWriter": "beatmap_fid.store",
    "check_store": "beatmap_fid.store",
    "merge_stores": "beatmap_fid.store",
    "open_store": "beatmap_fid.store",
}

__all__ = [
    "METRICS",
    "BeatmapFidError",
    "EmbedResult",
    "EmbeddingStore",
    "FIDResult",
    "GaussianStats",
    "KNNClassifier",
    "RunningGaussian",
    "ShardedStore",
    "SkipLog",
    "StoreWriter",
    "StreamingFID",
    "VectorIndex",
    "__version__",
    "add_reference",
    "as_stats",
    "build_extractor",
    "build_index",
    "build_report",
    "check_store",
    "compute_fid",
    "embed_to_store",
    "evaluate",
    "evaluate_knn",
    "extractor_infos",
    "fd_infinity",
    "fid_confidence_interval",
    "frechet_distance",
    "gaussian_stats",
    "list_references",
    "load_index",
    "load_reference",
    "map_memorisation_scores",
    "memorisation_scores",
    "merge_stores",
    "open_store",
    "reference_fid",
    "register_extractor",
    "remove_reference",
    "store_statistics",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'beatmap_fid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """The package module. Importing a submodule sets it as an attribute of its package;
    ``beatmap_fid.evaluate`` is both a submodule and the exported function, and the function
    must win, whichever of the two was imported first."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:  # the names as static type checkers and IDEs should see them
    from beatmap_fid.api import (
        EmbedResult,
        FIDResult,
        StreamingFID,
        compute_fid,
        embed_to_store,
        store_statistics,
    )
    from beatmap_fid.errors import BeatmapFidError, SkipLog
    from beatmap_fid.evaluate import evaluate
    from beatmap_fid.extractors.base import build_extractor, extractor_infos, register_extractor
    from beatmap_fid.frechet import as_stats, frechet_distance
    from beatmap_fid.index import VectorIndex, build_index, load_index
    from beatmap_fid.knn import (
        KNNClassifier,
        evaluate_knn,
        map_memorisation_scores,
        memorisation_scores,
    )
    from beatmap_fid.metrics import METRICS, fd_infinity, fid_confidence_interval
    from beatmap_fid.references import (
        add_reference,
        list_references,
        load_reference,
        reference_fid,
        remove_reference,
    )
    from beatmap_fid.report import build_report
    from beatmap_fid.stats import GaussianStats, RunningGaussian, gaussian_stats
    from beatmap_fid.store import (
        EmbeddingStore,
        StoreWriter,
        check_store,
        merge_stores,
        open_store,
    )
