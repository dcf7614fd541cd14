"""Shared parts of the extractor speed benchmarks: machine facts, timing, agreement on real maps.

Agreement of a fast option with float32 is measured on the same real windows: the cosine of
each window's vector to its float32 vector, and the Fréchet distance between two halves of
the real maps (song sets split alternately by folder name), computed from the float32 vectors
and from the option's vectors. Vectors of each option can be kept in a cache folder so that a
rerun only embeds what is missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SONGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "beatmaps" / "songs"


def option_parser(
    description: str, options: Sequence[str], checkpoint_help: str, maps_per_set: int
) -> argparse.ArgumentParser:
    """The arguments both transformer benchmarks take: cases, threads, the checkpoint and the
    real-map agreement run."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case (best kept)")
    parser.add_argument("--options", nargs="+", default=list(options), choices=list(options))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--checkpoint", type=Path, help=checkpoint_help)
    parser.add_argument("--no-speed", action="store_true", help="skip the throughput tables")
    parser.add_argument("--agreement", action="store_true", help="agreement on real maps")
    parser.add_argument("--maps-per-set", type=int, default=maps_per_set)
    parser.add_argument("--window-step", type=int, default=3)
    parser.add_argument("--sets", type=int, help="only the first SETS song sets (default: all)")
    parser.add_argument("--cache", type=Path, help="folder keeping each option's vectors")
    return parser


def parse_option_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parsed arguments, with torch's threads set and float32 (the baseline) always run."""
    import torch

    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "float32" not in args.options:
        args.options.insert(0, "float32")
    return args


def cpu_facts() -> str:
    """CPU model, its bfloat16 instructions (from the kernel's flags) and torch's view of them."""
    from beatmap_fid.extractors.inference import cpu_bf16_support

    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_fp16", "avx512_fp16")
    listed = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in wanted)
    torch_view = ", ".join(f"{k} {v}" for k, v in cpu_bf16_support().items())
    return f"{model}, {os.cpu_count()} cores; lscpu flags: {listed}; torch: {torch_view}"


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def best_time(function: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def real_windows(
    extractor: Any,
    maps_per_set: int,
    window_step: int,
    sets: int | None = None,
    songs: Path = SONGS,
) -> tuple[list[Any], np.ndarray, list[str]]:
    """Window items of real maps with audio: at most ``maps_per_set`` maps of each of the first
    ``sets`` song sets (all when None; maps first by file name), every ``window_step``-th window
    of each map. Returns the items, the half (0 or 1) of each item (song sets alternate by
    sorted folder name) and the item ids."""
    from beatmap_fid.errors import SkipLog
    from beatmap_fid.extractors.base import map_id

    items, halves = [], []
    folders = sorted(p for p in songs.iterdir() if p.is_dir())[:sets]
    for index, folder in enumerate(folders):
        by_map: dict[str, list[Any]] = {}
        for item in extractor.items(folder, SkipLog()):
            by_map.setdefault(map_id(item.id), []).append(item)
        for name in sorted(by_map)[:maps_per_set]:
            chosen = by_map[name][::window_step]
            items.extend(chosen)
            halves.extend([index % 2] * len(chosen))
    return items, np.array(halves), [item.id for item in items]


def cached_vectors(
    cache: Path | None, name: str, ids: Sequence[str], embed: Callable[[], np.ndarray]
) -> tuple[np.ndarray, float | None]:
    """``embed()`` (and its seconds), or the vectors saved under ``cache`` for the same ids."""
    path = cache / f"{name}.npz" if cache else None
    if path is not None and path.is_file():
        saved = np.load(path)
        if list(saved["ids"]) == list(ids):
            return saved["vectors"], None
    start = time.perf_counter()
    vectors = embed()
    seconds = time.perf_counter() - start
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, ids=np.array(ids), vectors=vectors)
    return vectors, seconds


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (float64)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def spread(vectors: np.ndarray) -> float:
    """Mean cosine between different windows: the scale against which agreement is read."""
    unit = vectors.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    gram = unit @ unit.T
    n = len(unit)
    return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def fid_halves(vectors: np.ndarray, halves: np.ndarray) -> float:
    """Fréchet distance between the two halves' vectors."""
    from beatmap_fid.frechet import frechet_distance

    v = vectors.astype(np.float64)
    return frechet_distance(v[halves == 0], v[halves == 1])


def agreement_table(
    reference: np.ndarray, options: dict[str, np.ndarray], halves: np.ndarray
) -> list[str]:
    """Markdown rows: cosine per window (min, 0.1 % quantile, mean) and the FID of the halves
    with the option beside float32's (absolute and relative difference)."""
    base = fid_halves(reference, halves)
    rows = [
        "| option | windows | cosine min | cosine 0.1 % | cosine mean | FID halves | "
        "FID diff | FID rel diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| float32 | {len(reference)} | 1 | 1 | 1 | {base:.6g} | 0 | 0 |",
    ]
    for name, vectors in options.items():
        cos = cosines(reference, vectors)
        fid = fid_halves(vectors, halves)
        rows.append(
            f"| {name} | {len(vectors)} | {cos.min():.8f} | {np.quantile(cos, 0.001):.8f} | "
            f"{cos.mean():.8f} | {fid:.6g} | {fid - base:+.3g} | {(fid - base) / base:+.2e} |"
        )
    return rows
