"""Image sources and the image-model extractor shared by CLIP, EfficientNet and Inception.

A folder is scanned recursively for common image formats; each image's id is its path relative
to the folder (POSIX separators), so ids stay stable across machines. Images are decoded with
PIL into 8-bit RGB: greyscale, palette, CMYK and 16-bit images are converted, the alpha channel
is dropped (as pytorch-fid and clean-fid do), animations give their first frame. Files that
cannot be used (empty, corrupt, truncated, too many pixels) are skipped with a reason.

Decoding and resizing run in torch DataLoader worker processes (:meth:`ImageExtractor.batches`)
while the model runs in the main process; a batch's failed images are dropped and recorded.
PIL and torch are imported inside functions, never when ``beatmap_fid`` is imported.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.errors import ExtractorError, SkipLog, SourceError
from beatmap_fid.extractors.base import Item

IMAGE_EXTENSIONS = frozenset(
    {".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
)

# PIL's own limit (Image.MAX_IMAGE_PIXELS): larger images are refused as possible
# decompression bombs instead of being decoded into gigabytes of memory.
DEFAULT_MAX_PIXELS = 89_478_485

AUTOCAST_DTYPES = ("bf16", "fp16")


def default_num_workers() -> int:
    """DataLoader worker processes used when none are asked for: min(2, CPUs)."""
    return min(2, os.cpu_count() or 1)


def default_device() -> str:
    """``"cuda"`` when a GPU is usable, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _relative_id(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _folder_label(item_id: str) -> str | None:
    """The first folder of an id (``cats/a.png`` → ``cats``), as in class-per-folder layouts."""
    head, sep, _ = item_id.partition("/")
    return head if sep else None


def image_items(source: str | Path, skipped: SkipLog) -> Iterator[Item]:
    """Items for the images of ``source`` (a folder, scanned recursively, or one image file).

    The payload is the file path; ids are paths relative to the folder (the file name for a
    single file); the label is the image's first sub-folder, if any. Files whose extension is
    not an image format are ignored; unreadable images are found and skipped when decoded.
    """
    root = Path(source)
    if not root.exists():
        raise SourceError(f"image source {root} does not exist")
    if root.is_file():
        if root.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.add(root, f"not an image file: extension {root.suffix or '(none)'!r}")
            return
        yield Item(root.name, root, sources=(root,))
        return
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    for path in sorted(files, key=lambda p: _relative_id(p, root)):
        item_id = _relative_id(path, root)
        yield Item(item_id, path, _folder_label(item_id), (path,))


def to_rgb(image: Any) -> Any:
    """An 8-bit RGB copy of a PIL image of any mode.

    16-bit and 32-bit integer greyscale is scaled from 0..65535; float greyscale is read as
    0..1 when its maximum is at most 1, else as 0..255; alpha is dropped; other modes
    (palette, CMYK, greyscale, YCbCr, ...) go through PIL's own conversion.
    """
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=255.0, neginf=0.0)
        if pixels.size and pixels.max() <= 1.0:
            pixels = pixels * 255.0
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).convert("RGB")
    with warnings.catch_warnings():
        # "Palette images with Transparency expressed in bytes should be converted to RGBA".
        warnings.simplefilter("ignore", UserWarning)
        return image.convert("RGB")


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """Decode an image file into an 8-bit RGB PIL image (the first frame of an animation).

    Raises SourceError whose message starts with the reason class (``empty file``,
    ``not an image``, ``image too large``, ``unreadable image``) so skips can be counted.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise SourceError(f"empty file: {path.name} has zero bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise SourceError(
                        f"image too large: {image.width}x{image.height} pixels exceed the "
                        f"limit of {max_pixels} (raise max_pixels to accept it)"
                    )
                image.seek(0)
                image.load()
                return to_rgb(image)
    except SourceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise SourceError(f"image too large: {error}") from error
    except UnidentifiedImageError as error:
        raise SourceError(f"not an image: PIL cannot identify {path.name}") from error
    except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, zlib.error...
        raise SourceError(f"unreadable image: {type(error).__name__}: {error}") from error


@dataclass
class ImageDataset:
    """Map-style dataset for torch's DataLoader: decodes and transforms one image per index.

    Returns ``(index, tensor, None)`` or, when the image cannot be used, ``(index, None,
    reason)``, so a bad file never stops a worker.
    """

    paths: Sequence[Path]
    transform: Callable[[Any], Any]
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Any, str | None]:
        try:
            image = load_rgb(self.paths[index], self.max_pixels)
        except SourceError as error:
            return index, None, str(error)
        return index, self.transform(image), None


def collate_images(samples: list[tuple[int, Any, str | None]]) -> tuple[list[int], Any, list]:
    """Stack the decoded images of a batch; keep the failed ones aside with their reasons."""
    import torch

    good = [(index, tensor) for index, tensor, reason in samples if reason is None]
    failed = [(index, reason) for index, _, reason in samples if reason is not None]
    stacked = torch.stack([tensor for _, tensor in good]) if good else None
    return [index for index, _ in good], stacked, failed


def autocast_context(device: str, autocast: str | None):
    """``torch.autocast`` for ``"bf16"``/``"fp16"``, or a no-op context when ``autocast`` is None."""
    import torch

    if autocast is None:
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[autocast]
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def check_autocast(autocast: str | None) -> str | None:
    """Validate the ``autocast`` option."""
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise ExtractorError(f"autocast must be one of {AUTOCAST_DTYPES} or None, not {autocast!r}")
    return autocast


@dataclass
class ImageExtractor:
    """An image model as an :class:`~beatmap_fid.extractors.base.Extractor`.

    ``transform`` maps an RGB PIL image to a (3, H, W) float tensor of one fixed size (it runs
    in DataLoader workers, so it must be picklable); ``forward`` maps a batch on ``device`` to
    (n, dim) features. ``head``, when the backbone has one, maps features to class logits.
    Payloads given to :meth:`embed` are tensors made by ``transform`` (what :meth:`batches`
    yields), image paths, PIL images or HxWxC uint8 arrays.
    """

    name: str
    dim: int
    config: dict[str, Any]
    transform: Callable[[Any], Any]
    forward: Callable[[Any], Any]
    device: str = "cpu"
    batch_size: int = 32
    autocast: str | None = None
    num_workers: int = field(default_factory=default_num_workers)
    max_pixels: int = DEFAULT_MAX_PIXELS
    head: Any = None

    def items(self, source: str | Path, skipped: SkipLog) -> Iterator[Item]:
        """Images of ``source``; images that fail to decode are found by :meth:`batches`."""
        return image_items(source, skipped)

    def batches(
        self,
        items: Iterable[Item],
        batch_size: int | None = None,
        skipped: SkipLog | None = None,
    ) -> Iterator[list[Item]]:
        """Batches of decoded, transformed images, prepared by DataLoader workers.

        Payloads of the yielded items are image tensors. Images that cannot be decoded are
        dropped and recorded in ``skipped``, so one bad file never stops a run.
        """
        from torch.utils.data import DataLoader

        log = skipped if skipped is not None else SkipLog()
        items = list(items)
        if not items:
            return
        dataset = ImageDataset(
            [Path(item.payload) for item in items], self.transform, self.max_pixels
        )
        loader = DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_images,
            pin_memory=self.device.startswith("cuda"),
        )
        for indices, stacked, failed in loader:
            for index, reason in failed:
                log.add(items[index].id, reason)
            if indices:
                yield [
                    Item(items[index].id, stacked[row], items[index].label, items[index].sources)
                    for row, index in enumerate(indices)
                ]

    def pixels(self, payloads: Sequence[Any]) -> Any:
        """The (n, 3, H, W) input batch for ``payloads``, on the CPU."""
        import torch

        return torch.stack([self._as_tensor(payload) for payload in payloads])

    def embed(self, payloads: Sequence[Any]) -> np.ndarray:
        """Float32 features (n, dim) of a batch of payloads."""
        import torch

        if len(payloads) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = self.pixels(payloads).to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast_context(self.device, self.autocast):
            features = self.forward(batch)
        return features.float().cpu().numpy().astype(np.float32, copy=False)

    def _as_tensor(self, payload: Any) -> Any:
        import torch
        from PIL import Image

        if isinstance(payload, torch.Tensor):
            return payload
        if isinstance(payload, (str, Path)):
            return self.transform(load_rgb(payload, self.max_pixels))
        if isinstance(payload, Image.Image):
            return self.transform(to_rgb(payload))
        if isinstance(payload, np.ndarray):
            return self.transform(to_rgb(Image.fromarray(payload)))
        raise ExtractorError(
            f"{self.name} cannot embed a {type(payload).__name__}: give image tensors, "
            "paths, PIL images or uint8 arrays"
        )


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (identifies weights files in extractor configs).

    Remembered per (path, size, modification time), so rebuilding an extractor is cheap.
    """
    path = Path(path).resolve()
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """A context in which randomly initialised weights are the same on every run."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
