"""The ``"mapper-classifier"`` extractor: one style vector per audio window of a beatmap.

Items are the windows the reference's FID code uses: non-overlapping, from t = 0, the trailing
partial window dropped (``beatmap_fid.beatmap.windows``). An item's id is ``"{map id}#{k}"``,
its label the map's Creator, its payload the window's audio samples and its token ids. Audio is
loaded as the reference loads it (integer PCM, pydub's resampling and down-mix,
:mod:`beatmap_fid.beatmap.pcm`), with the ``decoder`` option choosing ffmpeg or libsndfile. ``embed``
runs the classifier on a batch and returns the mean-pooled projector output (2048 or 256 values
depending on the checkpoint). Maps without readable audio cannot be embedded and are skipped
with the reason.

Speed options (the default, float32 without compilation, is the path that matches the
reference): ``precision="bfloat16"`` (autocast; fast on CPUs with AVX-512 BF16 or AMX) or
``"float16"``, and ``compile=True`` (``torch.compile``, see
:mod:`beatmap_fid.extractors.inference`). Windows of any maps are run ``window_batch`` at a
time; attention is transformers' scaled-dot-product attention (``sdpa``), as the reference
runs it. The agreement of each option with float32 on real maps is in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.errors import ExtractorError, InputError, SkipLog, SourceError
from beatmap_fid.extractors.base import Item
from beatmap_fid.extractors.mapper_classifier.checkpoint import (
    DEFAULT_REPO,
    ClassifierSettings,
    LoadedClassifier,
    TokenizerState,
    load_checkpoint,
    settings_dict,
)

EXTRACTOR_NAME = "mapper-classifier"
PRECISIONS = ("float32", "bfloat16", "float16")
WINDOW_BATCH = 32
"""Windows per forward pass (whisper-base at 32 windows needs about 2 GB)."""


@dataclass(frozen=True)
class WindowPayload:
    """What the classifier reads for one window: float32 audio samples and int64 token ids."""

    audio: np.ndarray
    tokens: np.ndarray


def make_tokenizer(state: TokenizerState):
    """The event vocabulary of a checkpoint, as a :class:`beatmap_fid.beatmap.tokenizer.Tokenizer`."""
    from beatmap_fid.beatmap.tokenizer import Tokenizer

    try:
        return Tokenizer.from_event_ranges(state.event_ranges, offset=state.offset)
    except InputError as error:
        raise ExtractorError(f"the checkpoint's vocabulary is not usable: {error}") from error


def event_stream(beatmap: Any, settings: ClassifierSettings) -> tuple[Any, np.ndarray]:
    """The beatmap's events and event times (ms) as the checkpoint's data settings make them."""
    from beatmap_fid.beatmap.events import EventConfig, beatmap_events

    return beatmap_events(beatmap, EventConfig.from_mapping(settings.event_options))


def window_payload(
    audio: np.ndarray,
    events: Any,
    times: np.ndarray,
    start_ms: float,
    settings: ClassifierSettings,
    tokenizer: Any,
) -> WindowPayload:
    """The window starting at ``start_ms``, cut as the reference does.

    The reference works from the start in seconds, ``time = start_ms / 1000``: its first sample
    is ``int(time * sample_rate)`` (for grid windows this can land one sample early) and its
    token window is ``time <= t / 1000 < time + length``; both are followed here. Audio running
    past the end is padded with zeros.
    """
    from beatmap_fid.beatmap.tokenizer import window_tokens

    first = int(start_ms / 1000 * settings.sample_rate)
    samples = np.zeros(settings.window_samples, dtype=np.float32)
    piece = audio[first : first + settings.window_samples]
    samples[: len(piece)] = piece
    window_ms = settings.window_samples * 1000 / settings.sample_rate
    tokens = window_tokens(
        events, times, start_ms, start_ms + window_ms, tokenizer, seq_len=settings.tgt_seq_len
    )
    return WindowPayload(samples, tokens)


def start_ms_of_sample(sample: int, sample_rate: int) -> float:
    """Window start in ms whose ``/ 1000`` equals the reference's ``sample / sample_rate``
    (exactly so whenever the start is a whole number of milliseconds)."""
    return int(sample) * 1000 / sample_rate


def window_start_samples(n_samples: int, settings: ClassifierSettings) -> np.ndarray:
    """Starts of the reference's non-overlapping windows over ``n_samples`` audio samples."""
    from beatmap_fid.beatmap.windows import WindowSpec, window_starts

    spec = WindowSpec(window_samples=settings.window_samples, sample_rate=settings.sample_rate)
    return window_starts(n_samples, spec)


def resolve_device(device: str | None) -> str:
    """``device`` as given, else CUDA when available, else CPU."""
    import torch

    if device:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


class MapperClassifierExtractor:
    """Extractor protocol around a loaded classifier; also gives logits for classification."""

    name = EXTRACTOR_NAME

    def __init__(
        self,
        loaded: LoadedClassifier,
        *,
        device: str | None = None,
        precision: str = "float32",
        modes: Collection[int] = (0,),
        decoder: str = "auto",
        compile: bool = False,
        window_batch: int = WINDOW_BATCH,
    ) -> None:
        from beatmap_fid.beatmap.pcm import resolve_decoder
        from beatmap_fid.extractors.inference import (
            compile_model,
            count_option,
            flag_option,
            warn_if_slow_precision,
        )

        if precision not in PRECISIONS:
            raise ExtractorError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}"
            )
        compile = flag_option("compile", compile)
        window_batch = count_option("window_batch", window_batch)
        self.loaded = loaded
        self.settings = loaded.settings
        self.device = resolve_device(device)
        self.precision = precision
        self.modes = tuple(modes)
        self._audio_cache: dict[Path, np.ndarray] = {}  # the last song decoded
        self.decoder = resolve_decoder(decoder)
        self.model = loaded.model.to(self.device).eval()
        warn_if_slow_precision(self.device, precision)
        self.compiled = compile
        self.window_batch = window_batch
        self._run = compile_model(self.model, self.device) if self.compiled else self.model
        self.tokenizer = make_tokenizer(loaded.tokenizer)
        self.dim = self.settings.projector_dim
        self.config: dict[str, Any] = {
            "checkpoint_sha256": loaded.sha256,
            "settings": settings_dict(self.settings),
            "feature": "projector output averaged over all decoder positions",
            "windows": "non-overlapping from t=0, trailing partial window dropped",
            "precision": precision,
            "modes": list(self.modes),
            "audio": f"integer PCM decoded by {self.decoder}, pydub resampling and down-mix, "
            "divided by the peak",
        }
        if self.compiled:
            self.config["compile"] = "torch.compile, inductor, frozen weights"

    def load_audio(self, path: str | Path) -> np.ndarray:
        """The classifier's waveform of an audio file: float32 mono at the model's rate."""
        from beatmap_fid.beatmap.pcm import load_pcm_audio

        return load_pcm_audio(path, self.settings.sample_rate, self.decoder)

    def beatmap_items(self, beatmap_file: Any, skipped: SkipLog) -> list[Item]:
        """The window items of one parsed map (none, recorded in ``skipped``, when it cannot be
        used). The last decoded song is kept for the next difficulty of the same set."""
        from beatmap_fid.beatmap.reading import missing_audio_reason
        from beatmap_fid.beatmap.tokenizer import PAD_ID

        cache = self._audio_cache
        if beatmap_file.audio_path is None:
            skipped.add(beatmap_file.id, missing_audio_reason(beatmap_file.beatmap.audio_filename))
            return []
        try:
            if beatmap_file.audio_path not in cache:
                cache.clear()
                cache[beatmap_file.audio_path] = self.load_audio(beatmap_file.audio_path)
            audio = cache[beatmap_file.audio_path]
            events, times = event_stream(beatmap_file.beatmap, self.settings)
        except (SourceError, InputError) as error:
            skipped.add(beatmap_file.id, str(error))
            return []
        starts = window_start_samples(len(audio), self.settings)
        if len(starts) == 0:
            skipped.add(beatmap_file.id, "too short: the audio is shorter than one window")
            return []
        items = []
        for k, start in enumerate(starts.tolist()):
            try:
                payload = window_payload(
                    audio,
                    events,
                    times,
                    start_ms_of_sample(start, self.settings.sample_rate),
                    self.settings,
                    self.tokenizer,
                )
            except InputError as error:
                skipped.add(f"{beatmap_file.id}#{k}", f"untokenizable: {error}")
                continue
            items.append(
                Item(
                    f"{beatmap_file.id}#{k}",
                    payload,
                    beatmap_file.creator,
                    sources=(beatmap_file.path, beatmap_file.audio_path),
                    n_events=int(np.count_nonzero(payload.tokens != PAD_ID)),
                )
            )
        return items

    def items(self, source: str | Path, skipped: SkipLog) -> Iterator[Item]:
        """One item per window of every readable map with audio under ``source``."""
        from beatmap_fid.beatmap.reading import iter_beatmap_files

        for beatmap_file in iter_beatmap_files(source, skipped, modes=self.modes):
            yield from self.beatmap_items(beatmap_file, skipped)

    def forward(self, payloads: Sequence[WindowPayload]) -> tuple[np.ndarray, np.ndarray]:
        """Feature vectors (n, dim) and logits (n, num_classes), float32, for a batch.

        Runs ``window_batch`` windows at a time; when compiled, a shorter last chunk is filled
        up with silent, empty windows (dropped from the result) so that one compiled graph
        serves every chunk.
        """
        import torch

        features = np.zeros((len(payloads), self.dim), np.float32)
        logits = np.zeros((len(payloads), self.settings.num_classes), np.float32)
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.precision)
        device_type = torch.device(self.device).type
        for start in range(0, len(payloads), self.window_batch):
            chunk = payloads[start : start + self.window_batch]
            samples = np.stack([p.audio for p in chunk])
            tokens = np.stack([p.tokens for p in chunk])
            if self.compiled and len(chunk) < self.window_batch:
                fill = self.window_batch - len(chunk)
                samples = np.concatenate([samples, np.zeros((fill, samples.shape[1]), np.float32)])
                tokens = np.concatenate([tokens, np.zeros((fill, tokens.shape[1]), np.int64)])
            with (
                torch.inference_mode(),
                torch.autocast(device_type, dtype=dtype, enabled=dtype is not None),
            ):
                output = self._run(
                    torch.from_numpy(samples).to(self.device),
                    torch.from_numpy(tokens).to(self.device),
                )
            end = start + len(chunk)
            features[start:end] = output.features[: len(chunk)].float().cpu().numpy()
            logits[start:end] = output.logits[: len(chunk)].float().cpu().numpy()
        return features, logits

    def embed(self, payloads: Sequence[WindowPayload]) -> np.ndarray:
        """Feature vectors (n, dim) float32 of a batch of window payloads."""
        return self.forward(payloads)[0]


def build_mapper_classifier(
    checkpoint: str | Path = DEFAULT_REPO,
    device: str | None = None,
    precision: str = "float32",
    modes: Collection[int] = (0,),
    decoder: str = "auto",
    compile: bool = False,
    window_batch: int = WINDOW_BATCH,
) -> MapperClassifierExtractor:
    """Factory of the ``"mapper-classifier"`` extractor.

    ``checkpoint``: a ``model.ckpt`` path, a folder holding one, or a Hugging Face repo id
    (default ``OliBomby/osu-classifier``; needs internet access or the local HF cache).
    ``precision``: ``float32`` (default, as the reference), or ``bfloat16``/``float16``
    autocast. ``compile``: run the model through ``torch.compile``. ``window_batch``: windows
    per forward pass.
    ``decoder``: ``auto`` (ffmpeg when on ``PATH``, else libsndfile), ``ffmpeg`` (samples
    identical to the reference's) or ``soundfile``.
    """
    loaded = load_checkpoint(checkpoint, device="cpu")
    return MapperClassifierExtractor(
        loaded,
        device=device,
        precision=precision,
        modes=modes,
        decoder=decoder,
        compile=compile,
        window_batch=window_batch,
    )
