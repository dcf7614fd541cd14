"""CLIP image (and text) embeddings with open_clip.

Any open_clip architecture works, with a pretrained tag (downloaded when online; e.g.
``model="ViT-B-32", pretrained="laion2b_s34b_b79k"``) or a local checkpoint file
(``pretrained="/path/to/open_clip_model.safetensors"``); ``pretrained=None`` builds seeded random
weights (tests, benchmarks). Images go through the model's own preprocessing
(``open_clip.create_model_and_transforms``). Embeddings are L2-normalised unless
``normalize=False``. :meth:`ClipExtractor.embed_text` embeds texts into the same space
(zero-shot labels, CMMD).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.errors import ExtractorError, WeightsNotFoundError
from beatmap_fid.extractors.images import (
    DEFAULT_MAX_PIXELS,
    ImageExtractor,
    autocast_context,
    check_autocast,
    default_device,
    default_num_workers,
    file_sha256,
    seeded_init,
)

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_DIM = 512


@dataclass
class ClipExtractor(ImageExtractor):
    """An open_clip model: image embeddings through the extractor API, and text embeddings."""

    model: Any = None
    model_name: str = DEFAULT_MODEL
    normalize: bool = True
    _tokenizer: Any = field(default=None, init=False, repr=False)

    def embed_text(self, texts: list[str] | str) -> np.ndarray:
        """Float32 text embeddings (n, dim), normalised like the image embeddings."""
        import open_clip
        import torch

        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.model_name)
        tokens = self._tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), autocast_context(self.device, self.autocast):
            features = self.model.encode_text(tokens, normalize=self.normalize)
        return features.float().cpu().numpy().astype(np.float32, copy=False)


def _is_local_file(pretrained: str) -> bool:
    return Path(pretrained).expanduser().is_file()


def _create_model(model: str, pretrained: str | None, image_size: int | None, seed: int):
    import open_clip

    if model not in open_clip.list_models() and not model.startswith(("hf-hub:", "local-dir:")):
        raise ExtractorError(
            f"unknown open_clip model {model!r}; see open_clip.list_models() (e.g. {DEFAULT_MODEL})"
        )
    if pretrained is not None and not _is_local_file(pretrained):
        if Path(pretrained).suffix or "/" in pretrained:
            raise WeightsNotFoundError(f"CLIP checkpoint file {pretrained} does not exist")
        if not open_clip.get_pretrained_cfg(model, pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
            raise ExtractorError(
                f"open_clip has no pretrained tag {pretrained!r} for {model} (known: {tags}); "
                "or pass pretrained='/path/to/checkpoint' (a local open_clip checkpoint file)"
            )
    path = (
        str(Path(pretrained).expanduser())
        if pretrained and _is_local_file(pretrained)
        else pretrained
    )
    try:
        with seeded_init(seed):
            net, _, preprocess = open_clip.create_model_and_transforms(
                model, pretrained=path, force_image_size=image_size
            )
    except RuntimeError as error:
        if pretrained is not None and not _is_local_file(pretrained):
            raise WeightsNotFoundError(
                f"cannot download open_clip weights {model}/{pretrained} ({error}); when offline, "
                "pass pretrained='/path/to/open_clip_model.safetensors' (a local checkpoint file)"
            ) from error
        raise ExtractorError(
            f"cannot build open_clip model {model} from {pretrained}: {error}"
        ) from error
    return net, preprocess


def _weights_description(pretrained: str | None, seed: int) -> Any:
    if pretrained is None:
        return {"random_init_seed": seed}
    if _is_local_file(pretrained):
        return {"file_sha256": file_sha256(Path(pretrained).expanduser())}
    return {"open_clip_tag": pretrained}


def build_clip_extractor(
    model: str = DEFAULT_MODEL,
    pretrained: str | Path | None = DEFAULT_PRETRAINED,
    normalize: bool = True,
    image_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
    batch_size: int = 32,
    autocast: str | None = None,
    num_workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ClipExtractor:
    """open_clip image embeddings (``model`` architecture, ``pretrained`` tag or file or None).

    ``image_size`` overrides the model's input size (random-weight models only, in practice).
    """
    import open_clip

    device = device or default_device()
    pretrained = None if pretrained is None else str(pretrained)
    net, preprocess = _create_model(model, pretrained, image_size, seed)
    net.eval().to(device)
    preprocess_cfg = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in open_clip.get_model_preprocess_cfg(net).items()
    }
    config = {
        "model": f"open_clip {model}",
        "weights": _weights_description(pretrained, seed),
        "embedding": "image",
        "normalize": bool(normalize),
        "preprocessing": {"loader": "PIL RGB", **preprocess_cfg},
        "autocast": check_autocast(autocast),
    }

    def forward(batch: Any) -> Any:
        return net.encode_image(batch, normalize=normalize)

    return ClipExtractor(
        name="clip",
        dim=int(net.visual.output_dim),
        config=config,
        transform=preprocess,
        forward=forward,
        device=device,
        batch_size=batch_size,
        autocast=autocast,
        num_workers=default_num_workers() if num_workers is None else num_workers,
        max_pixels=max_pixels,
        model=net,
        model_name=model,
        normalize=normalize,
    )
