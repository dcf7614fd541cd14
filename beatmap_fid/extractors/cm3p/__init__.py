"""CM3P (OliBomby's Contrastive Metadata-Map Masked Pre-training), checkpoint-compatible.

Importing this package registers the ``"cm3p"`` extractor; torch and transformers are imported
only when a model is built. Checkpoints are read from their JSON and safetensors files; their
Python files are never run.
"""

from beatmap_fid.extractors.cm3p.checkpoint import (
    DEFAULT_REPO,
    CM3PCheckpoint,
    read_checkpoint,
    save_checkpoint,
)
from beatmap_fid.extractors.cm3p.extractor import CM3PExtractor, build_cm3p, metadata_of
from beatmap_fid.extractors.cm3p.model import random_checkpoint

__all__ = [
    "DEFAULT_REPO",
    "CM3PCheckpoint",
    "CM3PExtractor",
    "build_cm3p",
    "metadata_of",
    "random_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
