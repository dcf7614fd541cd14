"""CM3P throughput at the released sizes, beside the mapper classifier, in float32 and bf16.

Sizes: beatmap tower 768 wide with 22 layers, audio tower 512 wide with 6 layers, metadata
tower 256 wide with 6 layers (random weights written in the reference layout and loaded through
the extractor; the shapes, not the values, set the cost). Windows are a real map's when the
shared data is present (16 s windows of tokens and audio), else a synthetic map's. The peer is
the mapper classifier at whisper-base shapes on windows of the same map, in the same run and on
the same device. ``extractor.embed`` is timed from window payloads to float32 vectors (log-mel,
model, copy back). On a machine with CUDA the GPU rows are added.

Usage::

    python benchmarks/bench_cm3p.py [--windows 4] [--repeats 1] [--devices cpu cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from beatmap_fid.errors import SkipLog

SHARED_MAP = (
    Path(__file__).resolve().parents[2]
    / "shared/data/beatmaps/songs/867737 The Quick Brown Fox - The Big Black"
    / "The Quick Brown Fox - The Big Black (Mismagius) [Extreme].osu"
)


def source_map(folder: Path) -> Path:
    """A real map with audio when the shared data is here, else a synthetic one."""
    if SHARED_MAP.is_file():
        return SHARED_MAP
    from beatmap_fid.beatmap.synthetic import write_synthetic_set

    return write_synthetic_set(folder / "synthetic", 1, seed=0, duration_s=80.0, audio=True)[0]


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def classifier(device: str, precision: str):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_classifier import reference_vocabulary

    from beatmap_fid.extractors.mapper_classifier.checkpoint import (
        ClassifierSettings,
        LoadedClassifier,
        build_model,
    )
    from beatmap_fid.extractors.mapper_classifier.extractor import MapperClassifierExtractor

    tokenizer = reference_vocabulary()
    settings = ClassifierSettings.for_size(
        "base", num_classes=tokenizer.num_classes, vocab_size=tokenizer.vocab_size
    )
    torch.manual_seed(0)
    loaded = LoadedClassifier(
        build_model(settings).eval(), settings, tokenizer, {}, Path(), "random"
    )
    return MapperClassifierExtractor(loaded, device=device, precision=precision)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=4, help="windows per timed run (4)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case (best kept)")
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, and cuda if present"
    )
    parser.add_argument("--checkpoint", help="an existing released-size checkpoint folder")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]

    from beatmap_fid.beatmap.reading import read_beatmap_file
    from beatmap_fid.extractors.base import build_extractor
    from beatmap_fid.extractors.cm3p import random_checkpoint

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        checkpoint = args.checkpoint
        if checkpoint is None:
            start = time.perf_counter()
            checkpoint = random_checkpoint(folder / "cm3p-released", "released", seed=0)
            print(f"wrote a released-size checkpoint in {time.perf_counter() - start:.1f} s")
        beatmap_file = read_beatmap_file(source_map(folder), modes=(0, 1, 2, 3))
        print(
            f"map: {beatmap_file.path.name}; {args.windows} windows per run, best of "
            f"{args.repeats}; torch threads {torch.get_num_threads()}"
        )
        rows = []
        for device in devices:
            peer_speed = None
            for model_name in ("mapper-classifier", "cm3p"):
                for precision in ("float32", "bfloat16"):
                    if model_name == "cm3p":
                        extractor = build_extractor(
                            "cm3p", checkpoint=str(checkpoint), device=device, precision=precision
                        )
                    else:
                        extractor = classifier(device, precision)
                    items = extractor.beatmap_items(beatmap_file, SkipLog())[: args.windows]
                    payloads = [item.payload for item in items]
                    if model_name == "cm3p":
                        tokens = int(np.mean([len(p.tokens) for p in payloads]))
                        detail = f"{tokens} tokens/window on average"
                    else:
                        detail = "1024 tokens/window"
                    extractor.embed(payloads[:1])  # warm-up
                    seconds = best_time(lambda e=extractor, p=payloads: e.embed(p), args.repeats)
                    speed = len(payloads) / seconds
                    if model_name == "mapper-classifier" and precision == "float32":
                        peer_speed = speed
                    rows.append((device, model_name, precision, speed, peer_speed / speed, detail))
                    print(f"  {device} {model_name} {precision}: {speed:.3f} windows/s", flush=True)
                    del extractor
        print()
        print(
            "| device | model | precision | windows/s | time vs mapper-classifier float32 | windows |"
        )
        print("|---|---|---|---:|---:|---|")
        for device, model_name, precision, speed, ratio, detail in rows:
            print(
                f"| {device} | {model_name} | {precision} | {speed:.3f} | {ratio:.2f} | {detail} |"
            )


if __name__ == "__main__":
    main()
