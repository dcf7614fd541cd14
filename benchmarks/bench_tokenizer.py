"""Classifier tokens for real maps: our event list and token windows against slider's parse.

    python benchmarks/bench_tokenizer.py                  # every osu!standard map in ../shared/data
    python benchmarks/bench_tokenizer.py --limit 50 --repeat 3

For each map the text is read once; then, timed separately and summed over all maps (best of
``--repeat`` rounds): ``slider.Beatmap.parse`` of the text (the peer), ``beatmap_events`` (the
reference's event list, built once per map) and the token windows of the whole map
(non-overlapping 8.184 s windows from 0). The target is events + windows under slider's parse
alone, i.e. the whole pipeline under twice the parse.
"""

from __future__ import annotations

import argparse
import csv
import time
import warnings
from pathlib import Path

import slider

from beatmap_fid.beatmap.events import beatmap_events
from beatmap_fid.beatmap.tokenizer import DEFAULT_WINDOW_MS, Tokenizer, windows_tokens

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beatmaps"


def standard_map_texts(limit: int | None) -> list[str]:
    with open(SHARED / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["Mode"] == "0"]
    texts = []
    for row in rows:
        text = (SHARED / row["relpath"]).read_text(encoding="utf-8-sig", errors="replace")
        try:
            slider.Beatmap.parse(text)
        except Exception:  # maps slider refuses are not part of the comparison
            continue
        texts.append(text)
    return texts[:limit]


def one_round(texts: list[str], tokenizer: Tokenizer) -> tuple[float, float, float, int]:
    parse = events = tokens = 0.0
    windows = 0
    for text in texts:
        t0 = time.perf_counter()
        beatmap = slider.Beatmap.parse(text)
        t1 = time.perf_counter()
        ev, times = beatmap_events(beatmap)
        t2 = time.perf_counter()
        n = int(times.max()) // DEFAULT_WINDOW_MS + 1 if len(times) else 0
        windows_tokens(ev, times, [k * DEFAULT_WINDOW_MS for k in range(n)], tokenizer)
        t3 = time.perf_counter()
        parse, events, tokens = parse + t1 - t0, events + t2 - t1, tokens + t3 - t2
        windows += n
    return parse, events, tokens, windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N maps only")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is reported")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    texts = standard_map_texts(args.limit)
    tokenizer = Tokenizer.default()
    rounds = [one_round(texts, tokenizer) for _ in range(args.repeat)]
    parse = min(r[0] for r in rounds)
    events = min(r[1] for r in rounds)
    tokens = min(r[2] for r in rounds)
    windows = rounds[0][3]
    print(f"{len(texts)} maps, {windows} windows, best of {args.repeat} rounds")
    print(f"{'stage':<34}{'seconds':>10}{'× parse':>10}")
    for name, seconds in (
        ("slider.Beatmap.parse (peer)", parse),
        ("beatmap_events", events),
        ("windows_tokens (all windows)", tokens),
        ("events + windows", events + tokens),
        ("whole pipeline (parse + ours)", parse + events + tokens),
    ):
        print(f"{name:<34}{seconds:>10.3f}{seconds / parse:>10.2f}")


if __name__ == "__main__":
    main()
