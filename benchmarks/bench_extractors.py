"""Image extractors on the CPU: our full pipeline against the bare model forward.

    python benchmarks/bench_extractors.py                       # 96 JPEGs, batch 16, 2 workers
    python benchmarks/bench_extractors.py --images 64 --only efficientnet-lite0 inception

For each extractor, "model" is the plain forward pass over tensors prepared beforehand (no
decoding, no resizing); "pipeline" is what ``embed_to_store`` runs: folder scan → DataLoader
workers decoding and transforming JPEGs → batches → ``embed``. Overhead is the pipeline's extra
time over the model's, in percent. Both are timed after one warm-up batch, in the same process,
alternately ``--repeats`` times; the best time of each is kept (the fairest figure on a busy
machine).
The JPEGs are crops of scikit-image photographs at 320×240 … 640×480, written to a temporary
folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from beatmap_fid.errors import SkipLog
from beatmap_fid.extractors import build_extractor

EXTRACTORS = {
    "clip-vit-b-32-random": ("clip", {"model": "ViT-B-32", "pretrained": None}),
    "efficientnet-lite0": ("efficientnet", {"variant": "lite0"}),
    "efficientnet-b0-random": ("efficientnet", {"variant": "b0", "pretrained": False}),
    "inception": ("inception", {}),
}
SIZES = [(320, 240), (480, 360), (640, 480), (400, 400)]


def write_jpegs(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs cropped from scikit-image's colour photographs."""
    import skimage.data
    from PIL import Image

    photos = [
        skimage.data.astronaut(),
        skimage.data.chelsea(),
        skimage.data.coffee(),
        skimage.data.rocket(),
        skimage.data.immunohistochemistry(),
        skimage.data.cat(),
    ]
    rng = np.random.default_rng(seed)
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = SIZES[index % len(SIZES)]
        top = int(rng.integers(0, photo.shape[0] // 4))
        left = int(rng.integers(0, photo.shape[1] // 4))
        crop = Image.fromarray(photo[top:, left:]).resize((width, height), Image.BILINEAR)
        crop.save(folder / f"{index:04d}.jpg", quality=90)


def time_model(extractor, tensors, batch_size: int) -> float:
    import torch

    with torch.inference_mode():
        extractor.forward(torch.stack(tensors[:batch_size]))  # warm-up
        start = time.perf_counter()
        for first in range(0, len(tensors), batch_size):
            extractor.forward(torch.stack(tensors[first : first + batch_size]))
    return time.perf_counter() - start


def time_pipeline(extractor, folder: Path, batch_size: int) -> tuple[float, int]:
    skipped = SkipLog()
    start = time.perf_counter()
    count = 0
    for batch in extractor.batches(extractor.items(folder, skipped), batch_size, skipped):
        extractor.embed([item.payload for item in batch])
        count += len(batch)
    assert not skipped, skipped.summary()
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=sorted(EXTRACTORS), default=None)
    args = parser.parse_args()

    import torch

    from beatmap_fid.extractors.images import load_rgb

    print(
        f"{args.images} JPEGs, batch {args.batch_size}, {args.workers} DataLoader workers, "
        f"best of {args.repeats}, "
        f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_jpegs(folder, args.images)
        paths = sorted(folder.glob("*.jpg"))
        for label in args.only or EXTRACTORS:
            name, options = EXTRACTORS[label]
            extractor = build_extractor(name, device="cpu", num_workers=args.workers, **options)
            tensors = [extractor.transform(load_rgb(path)) for path in paths]
            model_times, pipeline_times = [], []
            for _ in range(args.repeats):
                model_times.append(time_model(extractor, tensors, args.batch_size))
                seconds, count = time_pipeline(extractor, folder, args.batch_size)
                assert count == len(paths)
                pipeline_times.append(seconds)
            model_seconds, pipeline_seconds = min(model_times), min(pipeline_times)
            rows.append((label, extractor.dim, model_seconds, pipeline_seconds))
            print(f"  done {label}", flush=True)

    header = (
        f"{'extractor':<24} {'dim':>5} {'model img/s':>12} {'pipeline img/s':>15} {'overhead':>9}"
    )
    print(header)
    print("-" * len(header))
    for label, dim, model_seconds, pipeline_seconds in rows:
        overhead = 100.0 * (pipeline_seconds / model_seconds - 1.0)
        print(
            f"{label:<24} {dim:>5} {args.images / model_seconds:>12.1f} "
            f"{args.images / pipeline_seconds:>15.1f} {overhead:>8.1f}%"
        )


if __name__ == "__main__":
    main()
