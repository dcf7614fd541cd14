"""Mapperatorinator's mapper classifier: checkpoint-compatible model, loading and training.

Importing this package registers the ``"mapper-classifier"`` extractor; torch and transformers
are imported only when a model is built or a checkpoint loaded.
"""

from beatmap_fid.extractors.mapper_classifier.checkpoint import (
    DEFAULT_REPO,
    ClassifierSettings,
    LoadedClassifier,
    TokenizerState,
    load_checkpoint,
    save_checkpoint,
)
from beatmap_fid.extractors.mapper_classifier.extractor import (
    MapperClassifierExtractor,
    WindowPayload,
    build_mapper_classifier,
)

__all__ = [
    "DEFAULT_REPO",
    "ClassifierSettings",
    "LoadedClassifier",
    "MapperClassifierExtractor",
    "TokenizerState",
    "WindowPayload",
    "build_mapper_classifier",
    "load_checkpoint",
    "save_checkpoint",
]
