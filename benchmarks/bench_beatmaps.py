"""The whole beatmap pipeline on real maps against slider's parse alone.

    python benchmarks/bench_beatmaps.py                 # every osu!standard map in ../shared/data
    python benchmarks/bench_beatmaps.py --limit 50 --repeat 3

Per map, timed separately and summed over all maps (best of ``--repeat`` rounds):
``slider.Beatmap.parse`` of the raw text (the peer), and our pipeline: tolerant parse
(``parse_beatmap_text``: repairs, then slider), windows (from the map's length), classifier
events and token windows, descriptor object table and descriptor vectors of every window.
Target: the whole pipeline under 2× slider's parse alone. Maps and windows per second are
printed for both.
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

import slider

from beatmap_fid.beatmap.events import beatmap_events
from beatmap_fid.beatmap.reading import parse_beatmap_text
from beatmap_fid.beatmap.tokenizer import Tokenizer, windows_tokens
from beatmap_fid.beatmap.windows import (
    WindowSpec,
    beatmap_num_samples,
    window_bounds_ms,
    window_starts,
)
from beatmap_fid.errors import SourceError
from beatmap_fid.extractors.descriptors import (
    DEFAULT_LENGTH_MARGIN_MS,
    descriptors,
    map_settings,
    map_windows,
    object_table,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beatmaps"


def standard_map_texts(limit: int | None) -> list[str]:
    with open(SHARED / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["Mode"] == "0"]
    texts = []
    for row in rows:
        text = (SHARED / row["relpath"]).read_text(encoding="utf-8-sig", errors="replace")
        try:
            slider.Beatmap.parse(text)
            parse_beatmap_text(text)
        except Exception:  # maps either side refuses are not part of the comparison
            continue
        texts.append(text)
    return texts[:limit]


def one_round(texts: list[str], tokenizer: Tokenizer, spec: WindowSpec) -> dict[str, float]:
    timings = {"slider parse": 0.0, "our parse": 0.0, "windows + tokens": 0.0, "descriptors": 0.0}
    windows = 0
    for text in texts:
        t0 = time.perf_counter()
        slider.Beatmap.parse(text)
        t1 = time.perf_counter()
        beatmap, _ = parse_beatmap_text(text)
        t2 = time.perf_counter()
        n_samples = beatmap_num_samples(beatmap, spec, DEFAULT_LENGTH_MARGIN_MS)
        bounds = window_bounds_ms(window_starts(n_samples, spec), spec)
        events, times = beatmap_events(beatmap)
        windows_tokens(events, times, [start for start, _ in bounds], tokenizer)
        t3 = time.perf_counter()
        payloads = map_windows(object_table(beatmap), map_settings(beatmap), n_samples, spec)
        if payloads:
            descriptors(payloads)
        t4 = time.perf_counter()
        windows += len(bounds)
        timings["slider parse"] += t1 - t0
        timings["our parse"] += t2 - t1
        timings["windows + tokens"] += t3 - t2
        timings["descriptors"] += t4 - t3
    timings["windows"] = windows
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N maps only")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is reported")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    texts = standard_map_texts(args.limit)
    tokenizer, spec = Tokenizer.default(), WindowSpec()
    one_round(texts[:3], tokenizer, spec)  # compile numba kernels before timing
    rounds = [one_round(texts, tokenizer, spec) for _ in range(args.repeat)]
    best = {key: min(r[key] for r in rounds) for key in rounds[0]}
    windows = int(best.pop("windows"))
    peer = best["slider parse"]
    ours = best["our parse"] + best["windows + tokens"] + best["descriptors"]
    print(f"{len(texts)} maps, {windows} windows, best of {args.repeat} rounds")
    print(f"{'stage':<36}{'seconds':>9}{'× slider':>10}{'maps/s':>9}{'windows/s':>11}")
    rows = [*best.items(), ("whole pipeline (ours)", ours)]
    for name, seconds in rows:
        print(
            f"{name:<36}{seconds:>9.3f}{seconds / peer:>10.2f}"
            f"{len(texts) / seconds:>9.1f}{windows / seconds:>11.0f}"
        )


if __name__ == "__main__":
    try:
        main()
    except SourceError as error:
        raise SystemExit(f"bench_beatmaps: {error}") from None
