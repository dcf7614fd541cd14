"""The mapper classifier's audio against the reference's (pydub + ffmpeg) on loud stereo songs.

    python benchmarks/bench_classifier_audio.py                  # 4 real songs, 2 windows each
    python benchmarks/bench_classifier_audio.py --songs 8 --windows 4

Each song's audio from ``../shared/data`` (16 kHz mono MP3 there) is rebuilt as 44.1 kHz stereo
(right channel 0.9 × left, 5 samples late), scaled so its float peak is a gain of 1.3–2.4, and
encoded by ffmpeg in several ways (MP3 CBR with the LAME header, MP3 VBR, MP3 without the
Xing/LAME header, MP3 at 48 kHz, Ogg Vorbis). For every file:

- decoding: integer samples of our ffmpeg path against pydub's (the reference), and of our
  libsndfile path (``decoder=soundfile``) against ffmpeg's: frames, share of samples that
  differ, largest difference in integer steps;
- the 16 kHz waveform against the reference's: largest difference for both decoders and for
  the soxr path of the other audio extractors (``load_audio``), whose least-squares scale and
  correlation against the reference are printed too;
- features: whisper-base shapes (projector 2048, random weights, the map's own tokens): the
  smallest cosine over the first ``--windows`` windows between each waveform's features and
  the reference waveform's (printed as 1 − cosine for the libsndfile decoder);
- time to decode, resample and down-mix one song: pydub (the peer) against ours.

Needs ffmpeg and pydub (``pip install pydub``).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import soundfile
import soxr

from beatmap_fid.beatmap import pcm
from beatmap_fid.beatmap.audio import load_audio
from beatmap_fid.beatmap.reading import read_beatmap_file

SONGS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "beatmaps" / "songs"
GAINS = (1.3, 2.4, 1.8, 2.1, 1.5, 2.2, 1.6, 1.9)
ENCODINGS = {
    "mp3 cbr 192k": ["-c:a", "libmp3lame", "-b:a", "192k"],
    "mp3 vbr V2": ["-c:a", "libmp3lame", "-q:a", "2"],
    "mp3 no xing": ["-c:a", "libmp3lame", "-b:a", "192k", "-write_xing", "0"],
    "mp3 48 kHz": ["-ar", "48000", "-c:a", "libmp3lame", "-b:a", "192k"],
    "ogg vorbis q5": ["-c:a", "libvorbis", "-q:a", "5"],
}


def songs_with_maps(limit: int) -> list:
    """(beatmap file, audio path) of the first ``limit`` song folders with a standard map."""
    chosen = []
    for folder in sorted(SONGS.iterdir()):
        for osu in sorted(folder.glob("*.osu")):
            try:
                beatmap_file = read_beatmap_file(osu)
            except Exception:
                continue
            if beatmap_file.beatmap.mode == 0 and beatmap_file.audio_path is not None:
                chosen.append(beatmap_file)
                break
        if len(chosen) == limit:
            break
    return chosen


def loud_stereo(source: Path, gain: float) -> np.ndarray:
    data, rate = soundfile.read(str(source), dtype="float32", always_2d=True)
    left = soxr.resample(data.mean(axis=1), rate, 44100)
    right = np.concatenate([np.zeros(5, np.float32), 0.9 * left[:-5]])
    stereo = np.stack([left, right], axis=1)
    return stereo * np.float32(gain / np.abs(stereo).max())


def pydub_waveform(path: Path) -> np.ndarray:
    from pydub import AudioSegment

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        segment = AudioSegment.from_file(path, format=path.suffix[1:])
        segment = segment.set_frame_rate(16000).set_channels(1)
        samples = np.array(segment.get_array_of_samples()).astype(np.float32)
    return samples / np.max(np.abs(samples))


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def make_extractor():
    import torch

    from beatmap_fid.extractors.mapper_classifier.extractor import MapperClassifierExtractor
    from beatmap_fid.extractors.mapper_classifier.train import TrainingOptions, fresh_model

    torch.manual_seed(0)
    loaded = fresh_model(["a", "b", "c"], TrainingOptions(model_size="base"))
    return MapperClassifierExtractor(loaded, device="cpu")


def window_features(extractor, beatmap_file, waveforms: list[np.ndarray], n_windows: int):
    """Features (n_windows, 2048) of the first windows for each waveform, same tokens."""
    from beatmap_fid.extractors.mapper_classifier.extractor import (
        event_stream,
        start_ms_of_sample,
        window_payload,
        window_start_samples,
    )

    settings = extractor.settings
    events, times = event_stream(beatmap_file.beatmap, settings)
    starts = window_start_samples(len(waveforms[0]), settings)[:n_windows]
    starts_ms = [start_ms_of_sample(s, settings.sample_rate) for s in starts]
    return [
        extractor.embed(
            [
                window_payload(waveform, events, times, start, settings, extractor.tokenizer)
                for start in starts_ms
            ]
        )
        for waveform in waveforms
    ]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cosines.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=4)
    parser.add_argument("--windows", type=int, default=2, help="0: no feature comparison")
    args = parser.parse_args()
    if not pcm.ffmpeg_available():
        raise SystemExit("needs the ffmpeg and ffprobe programs")
    extractor = make_extractor() if args.windows > 0 else None
    decode_rows, wave_rows, time_rows = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for number, beatmap_file in enumerate(songs_with_maps(args.songs)):
            gain = GAINS[number % len(GAINS)]
            source = Path(scratch) / "source.wav"
            stereo = loud_stereo(beatmap_file.audio_path, gain)
            soundfile.write(str(source), stereo, 44100, subtype="FLOAT")  # not clipped
            for encoding, options in ENCODINGS.items():
                suffix = ".ogg" if "ogg" in encoding else ".mp3"
                path = Path(scratch) / f"song{number}{suffix}"
                command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source)]
                subprocess.run([*command, *options, str(path)], check=True)
                name = f"{number} {encoding} ×{gain}"
                floats = subprocess.run(
                    ["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-"],
                    capture_output=True,
                    check=True,
                ).stdout
                peak = float(np.abs(np.frombuffer(floats, "<f4")).max())

                by_ffmpeg = pcm.decode_pcm(path, "ffmpeg").samples
                by_soundfile = pcm.decode_pcm(path, "soundfile").samples
                n = min(len(by_ffmpeg), len(by_soundfile))
                steps = np.abs(by_ffmpeg[:n].astype(np.int64) - by_soundfile[:n])
                decode_rows.append(
                    (name, peak, len(by_ffmpeg), len(by_soundfile), np.mean(steps > 0), steps.max())
                )

                reference, t_pydub = timed(pydub_waveform, path)
                ours, t_ours = timed(pcm.load_pcm_audio, path, 16000, "ffmpeg")
                ours_sf, t_sf = timed(pcm.load_pcm_audio, path, 16000, "soundfile")
                high, t_soxr = timed(load_audio, path, 16000)
                time_rows.append((name, t_pydub, t_ours, t_sf, t_soxr))
                m = min(len(reference), len(high))
                scale = float(
                    np.dot(high[:m], reference[:m]) / np.dot(reference[:m], reference[:m])
                )
                correlation = float(np.corrcoef(high[:m], reference[:m])[0, 1])
                identical = len(ours) == len(reference) and np.array_equal(ours, reference)
                sf_gap = (
                    float(np.abs(ours_sf - reference).max())
                    if len(ours_sf) == len(reference)
                    else float("nan")
                )
                cosines = ("", "")
                if extractor is not None:
                    ref_f, sf_f, soxr_f = window_features(
                        extractor, beatmap_file, [reference, ours_sf, high[:m]], args.windows
                    )
                    cosines = (
                        f"{1 - min_cosine(sf_f, ref_f):.1e}",
                        f"{min_cosine(soxr_f, ref_f):.4f}",
                    )
                soxr_gap = float(np.abs(high[:m] - reference[:m]).max())
                wave_rows.append((name, identical, sf_gap, soxr_gap, scale, correlation, *cosines))
                print(".", end="", flush=True)
    print()
    print("| file | float peak | frames ffmpeg | frames soundfile | samples differing | max step |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, peak, a, b, share, step in decode_rows:
        print(f"| {name} | {peak:.3f} | {a} | {b} | {share:.3%} | {step} |")
    print()
    print(
        "| file | ffmpeg path = reference | soundfile max abs diff | soxr max abs diff "
        "| soxr scale | soxr corr | 1 − min cos, soundfile | min cos, soxr |"
    )
    print("|---|:-:|---:|---:|---:|---:|---:|---:|")
    for name, identical, sf_gap, soxr_gap, scale, corr, cos_sf, cos_soxr in wave_rows:
        print(
            f"| {name} | {'yes' if identical else 'NO'} | {sf_gap:.2e} | {soxr_gap:.3f} "
            f"| {scale:.3f} | {corr:.4f} | {cos_sf} | {cos_soxr} |"
        )
    print()
    totals = np.sum([row[1:] for row in time_rows], axis=0)
    print("| loader | total s | × pydub |")
    print("|---|---:|---:|")
    for label, total in zip(
        ["pydub + ffmpeg (peer)", "ours, ffmpeg", "ours, soundfile", "soxr (load_audio)"], totals
    ):
        print(f"| {label} | {total:.2f} | {total / totals[0]:.2f} |")


if __name__ == "__main__":
    main()
