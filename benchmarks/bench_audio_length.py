"""What an honest audio length costs: the window count's audio length, four ways.

    python benchmarks/bench_audio_length.py                 # every audio file in ../shared/data
    python benchmarks/bench_audio_length.py --files song.mp3 other.ogg --repeat 3

For each file, best of ``--repeat``: the header's frame count alone (``soundfile.info``, what
the descriptor extractor used before: it trusts the header), ours (``audio_frames``: the
header's count once the decoder produces the last frame it claims, a seek and a short read),
decoding the whole file and counting its frames (blocks of 2^16 frames, int16), and hashing
the file (``file_digest``, which every run does anyway to fingerprint the rows). Totals over
the files, and each method's total relative to hashing, are printed, with the number of files
where the counts disagree with the decoded count.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import soundfile

from beatmap_fid.beatmap.audio import audio_frames
from beatmap_fid.extractors.base import file_digest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AUDIO = (".mp3", ".ogg", ".wav", ".flac")


def decoded_frames(path: Path) -> int:
    frames = 0
    with soundfile.SoundFile(str(path)) as handle:
        while True:
            block = handle.read(1 << 16, dtype="int16", always_2d=True)
            frames += len(block)
            if len(block) < 1 << 16:
                return frames


def best_of(repeat: int, work: Callable[[], object]) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="+", type=Path, help="audio files (default: shared data)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    files = args.files or sorted(p for p in SHARED.rglob("*") if p.suffix.lower() in AUDIO)
    methods = {
        "header only": lambda p: soundfile.info(str(p)).frames,
        "ours (confirmed header)": lambda p: audio_frames(p)[0],
        "decode and count": decoded_frames,
        "hash the file (peer)": file_digest,
    }
    totals = dict.fromkeys(methods, 0.0)
    disagree = dict.fromkeys(methods, 0)
    seconds = 0.0
    for path in files:
        decoded = decoded_frames(path)
        seconds += decoded / soundfile.info(str(path)).samplerate
        for name, method in methods.items():
            elapsed, result = best_of(args.repeat, partial(method, path))
            totals[name] += elapsed
            if name != "hash the file (peer)" and result != decoded:
                disagree[name] += 1
    print(f"{len(files)} files, {seconds / 60:.1f} min of audio")
    print(f"{'method':<26} {'total s':>9} {'ms / file':>10} {'vs hash':>8} {'wrong counts':>13}")
    for name, total in totals.items():
        wrong = "" if name == "hash the file (peer)" else str(disagree[name])
        print(
            f"{name:<26} {total:9.3f} {1000 * total / len(files):10.2f} "
            f"{total / totals['hash the file (peer)']:8.2f} {wrong:>13}"
        )


if __name__ == "__main__":
    main()
