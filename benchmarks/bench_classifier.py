"""Mapper-classifier throughput: windows per second at the full whisper-base shapes.

Compares, in the same run and on the same device:

- ``extractor.embed``: the extractor from window payloads (numpy audio + tokens) to float32
  feature vectors: stacking, mel front end, model, copy back;
- the plain model forward on tensors built beforehand (the peer: no data handling);
- the mel front end alone: ours (FFT) against nnAudio's ``MelSpectrogram`` (1-D convolution
  with the Fourier kernels), which the reference runs.

Weights are random (the shapes, not the values, set the cost). Usage::

    python benchmarks/bench_classifier.py [--batch-sizes 1 8 32] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from beatmap_fid.extractors.mapper_classifier.checkpoint import (
    ClassifierSettings,
    LoadedClassifier,
    TokenizerState,
    build_model,
)
from beatmap_fid.extractors.mapper_classifier.extractor import (
    MapperClassifierExtractor,
    WindowPayload,
)


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


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (best kept)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = reference_vocabulary()
    settings = ClassifierSettings.for_size(
        "base", num_classes=tokenizer.num_classes, vocab_size=tokenizer.vocab_size
    )
    torch.manual_seed(0)
    model = build_model(settings).eval()
    loaded = LoadedClassifier(model, settings, tokenizer, settings.to_config(), Path(), "random")
    extractor = MapperClassifierExtractor(loaded, device=args.device)
    rng = np.random.default_rng(0)
    print(
        f"whisper-base shapes: d_model {settings.d_model}, projector {settings.projector_dim}, "
        f"{settings.window_samples} samples -> {settings.src_seq_len} mel frames x "
        f"{settings.n_mels}, {settings.tgt_seq_len} tokens; device {args.device}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats}"
    )
    print(f"{'batch':>5} {'embed win/s':>12} {'forward win/s':>14} {'embed/forward':>14}")
    for batch_size in args.batch_sizes:
        batch = payloads(settings, batch_size, rng)
        samples = torch.from_numpy(np.stack([p.audio for p in batch])).to(args.device)
        tokens = torch.from_numpy(np.stack([p.tokens for p in batch])).to(args.device)

        def plain_forward(samples=samples, tokens=tokens) -> None:
            with torch.inference_mode():
                extractor.model(samples, tokens)

        extractor.embed(batch[:1])  # warm-up
        embed = best_time(lambda batch=batch: extractor.embed(batch), args.repeats)
        forward = best_time(plain_forward, args.repeats)
        print(
            f"{batch_size:>5} {batch_size / embed:>12.3f} {batch_size / forward:>14.3f} "
            f"{embed / forward:>14.3f}"
        )

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
    with torch.inference_mode():
        ours = best_time(lambda: model.spectrogram(audio), args.repeats)
        theirs = best_time(lambda: reference_mel(audio), args.repeats)
    print(
        f"mel front end, 32 windows: ours (FFT) {32 / ours:.1f} win/s, nnAudio (conv) "
        f"{32 / theirs:.1f} win/s, ours/nnAudio time {ours / theirs:.3f}"
    )


if __name__ == "__main__":
    main()
