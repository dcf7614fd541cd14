"""CM3P throughput at the released sizes: float32 against each speed option.

Sizes: beatmap tower 768 wide with 22 layers, audio tower 512 wide with 6 layers, metadata
tower 256 wide with 6 layers; random weights written in the reference layout by
``random_checkpoint`` and loaded through the extractor (the shapes, not the values, set the
cost). Options (extractor options of ``"cm3p"``): ``float32`` (the default, the path that
matches the reference), ``banded`` (``attention="banded"``: local-attention layers over the
keys their window reaches), ``bfloat16`` (weights and features in bf16, as ``calc_fid.py``
runs it) and ``bfloat16+banded``.

Throughput: ``extractor.embed`` from window payloads (tokens + audio) to float32 vectors, on
real windows at the 2000-token limit (synthetic ones without ``../shared/data``), at each
batch size (``window_batch``); options interleaved within each repeat; ratio against float32 at
the same batch size; the first (untimed) call runs one window. Then 32 windows of mixed lengths as they come from consecutive maps, run
8 at a time with and without ``sort_by_length``.

``--agreement``: the options on real windows of ``../shared/data`` (maps of all modes with
audio), each window's cosine to its float32 vector and the Fréchet distance between two halves
of the maps, from float32 vectors and from each option's. Usage::

    python benchmarks/bench_cm3p.py [--batch-sizes 1 8 32] [--repeats 1] [--threads 2]
        [--options float32 bfloat16+banded] [--agreement [--maps-per-set 1] [--window-step 3] [--sets N]
        [--cache DIR]] [--no-speed]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from fast_options import (
    SONGS,
    agreement_table,
    best_time,
    cached_vectors,
    cpu_facts,
    load,
    option_parser,
    parse_option_arguments,
    real_windows,
    spread,
)

from beatmap_fid.errors import SkipLog
from beatmap_fid.extractors.base import build_extractor

OPTIONS = {
    "float32": {},
    "banded": {"attention": "banded"},
    "bfloat16": {"precision": "bfloat16"},
    "bfloat16+banded": {"precision": "bfloat16", "attention": "banded"},
}


def cm3p(checkpoint: Path, device: str, name: str, **options):
    return build_extractor(
        "cm3p", checkpoint=str(checkpoint), device=device, **OPTIONS[name], **options
    )


def speed_windows(extractor, folder: Path, n: int) -> tuple[list, list]:
    """The ``n`` longest real windows of the first song sets that give ``4 n`` windows, and
    ``n`` windows of mixed lengths in the order consecutive maps give them (synthetic maps
    when the real data is absent)."""
    if SONGS.is_dir():
        sources = sorted(p for p in SONGS.iterdir() if p.is_dir())
    else:
        from beatmap_fid.beatmap.synthetic import write_synthetic_set

        write_synthetic_set(folder / "synthetic", 4, seed=0, duration_s=200.0, audio=True)
        sources = [folder / "synthetic"]
    mixed, pool = [], []
    for source in sources:
        items = list(extractor.items(source, SkipLog()))
        pool.extend(item.payload for item in items)
        if len(mixed) < n:
            mixed.extend(item.payload for item in items[: n - len(mixed)])
        if len(pool) >= 4 * n:
            break
    longest = sorted(pool, key=lambda p: -len(p.tokens))[:n]
    return longest, mixed


def warm_up(batch: list, options: dict) -> list:
    """The first call's windows: the whole batch when compiled (one graph per shape), else one."""
    return batch if options.get("compile") else batch[:1]


def speed(checkpoint: Path, folder: Path, args) -> None:
    reference = cm3p(checkpoint, args.device, "float32")
    longest, mixed = speed_windows(reference, folder, max(args.batch_sizes))
    print(
        f"longest windows: {min(len(p.tokens) for p in longest)}-"
        f"{max(len(p.tokens) for p in longest)} tokens; load before: {load()}"
    )
    print(
        "| batch | option | windows/s | × float32 | first call s |\n|---:|---|---:|---:|---:|",
        flush=True,
    )
    for batch_size in args.batch_sizes:
        batch = longest[:batch_size]
        extractors, first = {}, {}
        for name in args.options:
            extractor = cm3p(checkpoint, args.device, name, window_batch=batch_size)
            start = time.perf_counter()
            extractor.embed(warm_up(batch, OPTIONS[name]))
            first[name] = time.perf_counter() - start
            extractors[name] = extractor
        seconds = {name: float("inf") for name in args.options}
        for _ in range(args.repeats):
            for name, extractor in extractors.items():
                seconds[name] = min(
                    seconds[name], best_time(lambda e=extractor, b=batch: e.embed(b), 1)
                )
        for name in args.options:
            print(
                f"| {batch_size} | {name} | {batch_size / seconds[name]:.4f} | "
                f"{seconds['float32'] / seconds[name]:.2f} | {first[name]:.1f} |",
                flush=True,
            )
        del extractors
    print(f"load after: {load()}")
    if not args.sort_options:
        return
    lengths = [len(p.tokens) for p in mixed]
    print(
        f"\nmixed windows: {len(mixed)} of {min(lengths)}-{max(lengths)} tokens (mean "
        f"{np.mean(lengths):.0f}), 8 per forward pass"
    )
    print(
        "| option | sorted windows/s | unsorted windows/s | sorted × unsorted |\n|---|---:|---:|---:|"
    )
    for name in args.sort_options:
        runs = {}
        for sort in (True, False):
            extractor = cm3p(checkpoint, args.device, name, window_batch=8, sort_by_length=sort)
            extractor.embed(mixed[:1])
            runs[sort] = best_time(lambda e=extractor: e.embed(mixed), args.repeats)
        print(
            f"| {name} | {len(mixed) / runs[True]:.4f} | {len(mixed) / runs[False]:.4f} | "
            f"{runs[False] / runs[True]:.2f} |",
            flush=True,
        )
    print(f"load after: {load()}")


def agreement(checkpoint: Path, args) -> None:
    if not SONGS.is_dir():
        print(f"no real data at {SONGS}: agreement skipped")
        return
    reference = cm3p(checkpoint, args.device, "float32")
    items, halves, ids = real_windows(reference, args.maps_per_set, args.window_step, args.sets)
    payloads = [item.payload for item in items]
    lengths = [len(p.tokens) for p in payloads]
    print(
        f"\nreal windows: {len(items)} ({int((halves == 0).sum())} / {int((halves == 1).sum())} "
        f"in the halves) of {len({i.split('#')[0] for i in ids})} maps, {np.mean(lengths):.0f} "
        f"tokens on average; load {load()}"
    )
    vectors = {}
    for name in args.options:
        extractor = reference if name == "float32" else cm3p(checkpoint, args.device, name)
        vectors[name], seconds = cached_vectors(
            args.cache, f"cm3p-{name}", ids, lambda e=extractor: e.embed(payloads)
        )
        shown = f"{len(ids) / seconds:.4f} windows/s" if seconds else "from cache"
        print(f"  {name}: {shown}; load {load()}", flush=True)
    print(f"mean cosine between different windows (float32): {spread(vectors['float32']):.4f}")
    others = {k: v for k, v in vectors.items() if k != "float32"}
    print("\n".join(agreement_table(vectors["float32"], others, halves)))


def main() -> None:
    parser = option_parser(
        __doc__.splitlines()[0], list(OPTIONS), "a released-size checkpoint folder", 1
    )
    parser.add_argument(
        "--sort-options", nargs="*", default=["bfloat16+banded"], choices=list(OPTIONS)
    )
    args = parse_option_arguments(parser)

    from beatmap_fid.extractors.cm3p import random_checkpoint

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        checkpoint = args.checkpoint
        if checkpoint is None:
            start = time.perf_counter()
            checkpoint = random_checkpoint(folder / "cm3p-released", "released", seed=0)
            print(f"wrote a released-size checkpoint in {time.perf_counter() - start:.1f} s")
        print(
            f"device {args.device}, torch {torch.__version__}, threads "
            f"{torch.get_num_threads()}, best of {args.repeats}\n{cpu_facts()}"
        )
        if not args.no_speed:
            speed(checkpoint, folder, args)
        if args.agreement:
            agreement(checkpoint, args)


if __name__ == "__main__":
    main()
