"""beatmap_fid: embeddings, Fréchet distance, FAISS search and k-NN for beatmaps, images, audio.

The public API is listed in ``__all__``; heavy dependencies (torch models, open_clip,
transformers, FAISS) are imported only when the functions that need them run.
"""

from beatmap_fid._version import __version__
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
from beatmap_fid.report import build_report
from beatmap_fid.stats import GaussianStats, RunningGaussian, gaussian_stats
from beatmap_fid.store import EmbeddingStore, StoreWriter, check_store, merge_stores, open_store

__all__ = [
    "METRICS",
    "BeatmapFidError",
    "EmbedResult",
    "EmbeddingStore",
    "FIDResult",
    "GaussianStats",
    "KNNClassifier",
    "RunningGaussian",
    "SkipLog",
    "StoreWriter",
    "StreamingFID",
    "VectorIndex",
    "__version__",
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
    "load_index",
    "map_memorisation_scores",
    "memorisation_scores",
    "merge_stores",
    "open_store",
    "register_extractor",
    "store_statistics",
]
