"""Mapper-classifier throughput at whisper-base shapes: float32 against each speed option.

Options (extractor options of ``"mapper-classifier"``): ``float32`` (the default, the path that
matches the reference), ``bfloat16`` and ``float16`` (autocast), ``compile`` (``torch.compile``,
float32) and ``compile+bfloat16``. Each runs ``extractor.embed`` from window payloads (numpy
audio + tokens) to float32 vectors at each batch size (``window_batch``), in the same run,
options interleaved within each repeat; the ratio is against float32 at the same batch size.
The first (untimed) call runs one window, or the whole batch when compiled (compiling happens
there); its seconds are shown.

``--agreement``: the same options on real windows of ``../shared/data`` (maps with audio,
osu!standard), each window's cosine to its float32 vector and the Fréchet distance between two
halves of the maps, from float32 vectors and from each option's.

Weights: a whisper-base-size checkpoint with random weights (the model's own initialisation),
written with ``save_checkpoint`` and loaded through the extractor. Usage::

    python benchmarks/bench_classifier.py [--batch-sizes 1 8 32] [--repeats 1] [--threads 2]
        [--options float32 bfloat16 compile+bfloat16] [--agreement [--maps-per-set 2]
        [--window-step 3] [--sets N] [--cache DIR]] [--no-speed]
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

from beatmap_fid.extractors.mapper_classifier.checkpoint import (
    ClassifierSettings,
    TokenizerState,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from beatmap_fid.extractors.mapper_classifier.extractor import (
    MapperClassifierExtractor,
    WindowPayload,
)

OPTIONS = {
    "float32": {},
    "bfloat16": {"precision": "bfloat16"},
    "float16": {"precision": "float16"},
    "compile": {"compile": True},
    "compile+bfloat16": {"compile": True, "precision": "bfloat16"},
}


def reference_vocabulary() -> TokenizerState:
    from beatmap_fid.beatmap.tokenizer import Tokenizer

    vocabulary = Tokenizer.default()
    return TokenizerState(
        event_ranges=[(r.type.value, r.min_value, r.max_value) for r in vocabulary.event_ranges],
        class_index={i: i for i in range(3731)},
    )


def payloads(settings: ClassifierSettings, n: int, rng: np.random.Generator) -> list[WindowPayload]:
    result = []
    for _ in range(n):
        audio = (rng.standard_normal(settings.window_samples) * 0.1).astype(np.float32)
        tokens = np.zeros(settings.tgt_seq_len, dtype=np.int64)
        tokens[:300] = rng.integers(1, settings.vocab_size, 300)
        result.append(WindowPayload(audio, tokens))
    return result


def write_checkpoint(folder: Path) -> Path:
    """A whisper-base-size classifier with random weights, saved in the reference layout."""
    tokenizer = reference_vocabulary()
    settings = ClassifierSettings.for_size(
        "base", num_classes=tokenizer.num_classes, vocab_size=tokenizer.vocab_size
    )
    torch.manual_seed(0)
    return save_checkpoint(folder / "model.ckpt", build_model(settings).eval(), tokenizer)


def warm_up(batch: list, options: dict) -> list:
    """The first call's windows: the whole batch when compiled (one graph per shape), else one."""
    return batch if options.get("compile") else batch[:1]


def speed(loaded, args) -> None:
    settings = loaded.settings
    rng = np.random.default_rng(0)
    print(f"load before: {load()}")
    print(
        "| batch | option | windows/s | × float32 | first call s |\n|---:|---|---:|---:|---:|",
        flush=True,
    )
    for batch_size in args.batch_sizes:
        batch = payloads(settings, batch_size, rng)
        extractors, first = {}, {}
        for name in args.options:
            extractor = MapperClassifierExtractor(
                loaded, device=args.device, window_batch=batch_size, **OPTIONS[name]
            )
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
            ratio = seconds["float32"] / seconds[name] if "float32" in seconds else float("nan")
            print(
                f"| {batch_size} | {name} | {batch_size / seconds[name]:.3f} | {ratio:.2f} | "
                f"{first[name]:.1f} |",
                flush=True,
            )
    print(f"load after: {load()}")

    from nnAudio.features import MelSpectrogram as NnAudioMel

    reference_mel = NnAudioMel(
        sr=16000,
        n_fft=1024,
        n_mels=388,
        hop_length=128,
        center=True,
        fmin=0,
        fmax=8000,
        pad_mode="constant",
        verbose=False,
    ).to(args.device)
    audio = torch.from_numpy(np.stack([p.audio for p in payloads(settings, 32, rng)])).to(
        args.device
    )
    spectrogram = loaded.model.spectrogram.to(args.device)
    with torch.inference_mode():
        ours = best_time(lambda: spectrogram(audio), args.repeats)
        theirs = best_time(lambda: reference_mel(audio), args.repeats)
    print(
        f"mel front end, 32 windows: ours (FFT) {32 / ours:.1f} win/s, nnAudio (conv) "
        f"{32 / theirs:.1f} win/s, ours/nnAudio time {ours / theirs:.3f}"
    )


def agreement(loaded, args) -> None:
    if not SONGS.is_dir():
        print(f"no real data at {SONGS}: agreement skipped")
        return
    reference = MapperClassifierExtractor(loaded, device=args.device)
    items, halves, ids = real_windows(reference, args.maps_per_set, args.window_step, args.sets)
    payloads_ = [item.payload for item in items]
    print(
        f"\nreal windows: {len(items)} ({int((halves == 0).sum())} / {int((halves == 1).sum())} "
        f"in the halves) of {len({i.split('#')[0] for i in ids})} maps; load {load()}"
    )
    vectors, timings = {}, {}
    for name in args.options:
        extractor = (
            reference
            if name == "float32"
            else MapperClassifierExtractor(loaded, device=args.device, **OPTIONS[name])
        )
        vectors[name], timings[name] = cached_vectors(
            args.cache, f"classifier-{name}", ids, lambda e=extractor: e.embed(payloads_)
        )
        shown = f"{len(ids) / timings[name]:.3f} windows/s" if timings[name] else "from cache"
        print(f"  {name}: {shown}; load {load()}", flush=True)
    print(f"mean cosine between different windows (float32): {spread(vectors['float32']):.4f}")
    others = {k: v for k, v in vectors.items() if k != "float32"}
    print("\n".join(agreement_table(vectors["float32"], others, halves)))


def main() -> None:
    parser = option_parser(
        __doc__.splitlines()[0], list(OPTIONS), "a model.ckpt (default: random, base)", 2
    )
    args = parse_option_arguments(parser)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.checkpoint or write_checkpoint(Path(scratch))
        loaded = load_checkpoint(checkpoint)
        s = loaded.settings
        print(
            f"whisper-base shapes: d_model {s.d_model}, projector {s.projector_dim}, "
            f"{s.window_samples} samples -> {s.src_seq_len} mel frames x {s.n_mels}, "
            f"{s.tgt_seq_len} tokens; device {args.device}, torch {torch.__version__}, "
            f"threads {torch.get_num_threads()}, best of {args.repeats}\n{cpu_facts()}"
        )
        if not args.no_speed:
            speed(loaded, args)
        if args.agreement:
            agreement(loaded, args)


if __name__ == "__main__":
    main()
