"""The ``"cm3p"`` extractor: CM3P beatmap embeddings per 16 s window (or metadata embeddings).

``side="beatmap"`` (default): one item per window, id ``"{map id}#{k}"``, label the map's
Creator; the vector is CM3P's ``beatmap_embeds`` (512 values, L2-normalised), what
Mapperatorinator's ``calc_fid.py`` uses for "FID CM3P". The map's audio is decoded as
transformers decodes it for CM3P (:func:`beatmap_fid.beatmap.audio_librosa.load_audio_librosa`);
maps whose audio is missing are skipped, unless ``audio=False``, which embeds every map
without audio (the reference's path when no audio is given: no audio tokens, windows over the
map's own length). ``side="metadata"``: one item per map, the embedding of the map's own
metadata (:func:`metadata_of`). ``precision="bfloat16"`` runs the model in bf16 as
``calc_fid.py`` does (weights and audio features cast to bf16).

Speed options (the default, float32 with transformers' ``sdpa`` attention, is the path that
matches the reference): ``precision="bfloat16"``; ``attention="banded"``, which computes the
local-attention layers only over the keys their window reaches
(:mod:`beatmap_fid.extractors.cm3p.attention`; transformers 5 or newer). ``torch.compile`` is
not offered: window lengths vary, so each token length would compile a graph of its own.
Windows of any maps are run ``window_batch`` at a time, grouped by token length
(``sort_by_length``) so that a batch pads little: padding is masked, so grouping changes only
float rounding. The agreement of each option with float32 on real maps is in
``benchmarks/RESULTS.md``.

All four game modes are read by default, as ``calc_fid.py`` evaluates them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid.errors import ExtractorError, SkipLog, SourceError
from beatmap_fid.extractors.base import Item
from beatmap_fid.extractors.cm3p.checkpoint import DEFAULT_REPO, read_checkpoint

EXTRACTOR_NAME = "cm3p"
PRECISIONS = ("float32", "bfloat16")
ATTENTIONS = ("sdpa", "banded")
SIDES = ("beatmap", "metadata")
ALL_MODES = (0, 1, 2, 3)
WINDOW_BATCH = 8
"""Windows per forward pass (a released-size batch of 8 windows of 2000 tokens needs ~1 GB)."""
_EVENT_ERRORS = (ValueError, IndexError, ZeroDivisionError, TypeError, AttributeError, KeyError)


def metadata_of(beatmap_file, song_length_s: float) -> dict[str, Any]:
    """A map's own metadata: the fields the reference's processor fills in from the map
    (:func:`~beatmap_fid.extractors.cm3p.processor.map_metadata`) plus the mapper (its Creator
    name, known when the checkpoint's mapper table lists it) and the difficulty (rosu-pp star
    rating, when rosu-pp-py is installed). Year, status and tags are not in an ``.osu`` file."""
    from beatmap_fid.beatmap.difficulty import rosu_available, star_rating
    from beatmap_fid.extractors.cm3p.processor import map_metadata

    difficulty = None
    if rosu_available():
        try:
            difficulty = star_rating(beatmap_file.path)
        except SourceError:
            difficulty = None
    extra = {"mapper": beatmap_file.creator or None, "difficulty": difficulty}
    return map_metadata(beatmap_file.beatmap, song_length_s, extra)


def resolve_device(device: str | None) -> str:
    """``device`` as given, else CUDA when available, else CPU."""
    import torch

    if device:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


class CM3PExtractor:
    """Extractor protocol around a loaded CM3P checkpoint (see the module documentation)."""

    name = EXTRACTOR_NAME

    def __init__(
        self,
        checkpoint: str | Path = DEFAULT_REPO,
        *,
        device: str | None = None,
        precision: str = "float32",
        modes: Collection[int] = ALL_MODES,
        audio: bool = True,
        side: str = "beatmap",
        window_batch: int = WINDOW_BATCH,
        attention: str = "sdpa",
        sort_by_length: bool = True,
    ) -> None:
        import torch

        from beatmap_fid.extractors.cm3p.model import load_model, use_attention
        from beatmap_fid.extractors.cm3p.tokens import BeatmapTokenizer, MetadataTokenizer
        from beatmap_fid.extractors.inference import (
            count_option,
            flag_option,
            warn_if_slow_precision,
        )

        if precision not in PRECISIONS:
            raise ExtractorError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}"
            )
        if attention not in ATTENTIONS:
            raise ExtractorError(
                f"attention must be one of {', '.join(ATTENTIONS)}, not {attention!r}"
            )
        if side not in SIDES:
            raise ExtractorError(f"side must be one of {', '.join(SIDES)}, not {side!r}")
        self.checkpoint = read_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.modes = tuple(sorted({int(m) for m in modes}))
        self.audio = bool(audio)
        self.side = side
        self.window_batch = count_option("window_batch", window_batch)
        self.model = load_model(self.checkpoint).to(self.device, self.dtype)
        warn_if_slow_precision(self.device, precision)
        self.attention = attention
        use_attention(self.model, attention)
        self.sort_by_length = flag_option("sort_by_length", sort_by_length)
        self.tokenizer = BeatmapTokenizer(
            self.checkpoint.beatmap_tokenizer, self.checkpoint.beatmap_vocab
        )
        self.metadata_tokenizer = MetadataTokenizer(
            self.checkpoint.metadata_tokenizer,
            self.checkpoint.metadata_vocab,
            self.checkpoint.windows.metadata_max_length,
        )
        self.dim = int(self.checkpoint.config.get("projection_dim", 512))
        self._audio_cache: dict[Path, Any] = {}  # the last song decoded (or why it failed)
        self.config: dict[str, Any] = {
            **self.checkpoint.summary(),
            "feature": "beatmap_embeds" if side == "beatmap" else "metadata_embeds of the map",
            "side": side,
            "audio": self.audio,
            "precision": precision,
            "modes": list(self.modes),
        }
        if attention != "sdpa":
            self.config["attention"] = attention
        if side == "metadata":
            self.config["star_rating"] = _rosu_version()

    # --- items ---------------------------------------------------------------------------

    def _audio(self, beatmap_file) -> np.ndarray:
        """The song of a map, decoded once for all the difficulties of its set."""
        from beatmap_fid.beatmap.audio_librosa import load_audio_librosa

        cache = self._audio_cache
        path = beatmap_file.audio_path
        if path not in cache:
            cache.clear()
            try:
                cache[path] = load_audio_librosa(path, self.checkpoint.windows.sampling_rate)
            except SourceError as error:
                cache[path] = error
        if isinstance(cache[path], SourceError):
            raise cache[path]
        return cache[path]

    def beatmap_items(self, beatmap_file, skipped: SkipLog) -> list[Item]:
        """The items of one parsed map (none, recorded in ``skipped``, when it cannot be used)."""
        from beatmap_fid.beatmap.reading import missing_audio_reason
        from beatmap_fid.extractors.cm3p.events import song_length_from_beatmap
        from beatmap_fid.extractors.cm3p.processor import map_windows

        sources = (beatmap_file.path,)
        audio = None
        if self.audio:
            if beatmap_file.audio_path is None:
                skipped.add(
                    beatmap_file.id, missing_audio_reason(beatmap_file.beatmap.audio_filename)
                )
                return []
            try:
                audio = self._audio(beatmap_file)
                sources += (beatmap_file.audio_path,)
            except SourceError as error:
                skipped.add(beatmap_file.id, str(error))
                return []
        if self.side == "metadata":
            rate = self.checkpoint.windows.sampling_rate
            length = (
                len(audio) / rate
                if audio is not None
                else song_length_from_beatmap(beatmap_file.beatmap)
            )
            ids = self.metadata_tokenizer.ids(metadata_of(beatmap_file, length))
            return [Item(beatmap_file.id, ids, beatmap_file.creator, sources)]
        try:
            windows = map_windows(beatmap_file.beatmap, audio, self.checkpoint, self.tokenizer)
        except _EVENT_ERRORS as error:
            skipped.add(beatmap_file.id, f"unreadable events: {type(error).__name__}: {error}")
            return []
        if not windows:
            skipped.add(beatmap_file.id, "too short: the song is shorter than one window start")
        return [
            Item(f"{beatmap_file.id}#{k}", window, beatmap_file.creator, sources, window.n_events)
            for k, window in enumerate(windows)
        ]

    def items(self, source: str | Path, skipped: SkipLog) -> Iterator[Item]:
        """Items of every readable map of the extractor's modes under ``source``."""
        from beatmap_fid.beatmap.reading import iter_beatmap_files

        for beatmap_file in iter_beatmap_files(source, skipped, modes=self.modes):
            yield from self.beatmap_items(beatmap_file, skipped)

    # --- embedding -----------------------------------------------------------------------

    def embed(self, payloads: Sequence[Any]) -> np.ndarray:
        """float32 (n, 512) embeddings of window payloads (or metadata token ids)."""
        if self.side == "metadata":
            return self.metadata_embeds(list(payloads))
        return self.window_embeds(list(payloads))

    def window_embeds(self, payloads: Sequence[Any]) -> np.ndarray:
        """``beatmap_embeds`` of window payloads, float32 (n, dim), ``window_batch`` windows
        per forward pass (grouped by token length when ``sort_by_length``)."""
        import torch

        from beatmap_fid.extractors.cm3p.processor import batch_tensors

        out = np.zeros((len(payloads), self.dim), dtype=np.float32)
        order = np.arange(len(payloads))
        if self.sort_by_length:
            order = np.argsort([len(p.tokens) for p in payloads], kind="stable")
        for start in range(0, len(payloads), self.window_batch):
            rows = order[start : start + self.window_batch]
            ids, mask, features = batch_tensors(
                [payloads[i] for i in rows], self.checkpoint, self.tokenizer.pad_id, self.device
            )
            if features is not None:
                features = features.to(self.dtype)
            with torch.inference_mode():
                embeds = self.model.beatmap_embeds(ids, mask, features)
            out[rows] = embeds.float().cpu().numpy()
        return out

    def metadata_embeds(self, token_ids: Sequence[np.ndarray]) -> np.ndarray:
        """``metadata_embeds`` of metadata token id arrays, float32 (n, dim)."""
        import torch

        from beatmap_fid.extractors.cm3p.tokens import pad_batch

        if not token_ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = pad_batch(token_ids, self.metadata_tokenizer.pad_id)
        with torch.inference_mode():
            embeds = self.model.metadata_embeds(
                torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
            )
        return embeds.float().cpu().numpy().astype(np.float32, copy=False)

    def logit_scale(self) -> float:
        """``exp(logit_scale)``: the factor on cosine similarities in zero-shot ranking."""
        return float(self.model.logit_scale.detach().float().exp())


def _rosu_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"rosu-pp-py {version('rosu-pp-py')}"
    except PackageNotFoundError:
        return None


def build_cm3p(
    checkpoint: str | Path = DEFAULT_REPO,
    device: str | None = None,
    precision: str = "float32",
    modes: Collection[int] = ALL_MODES,
    audio: bool = True,
    side: str = "beatmap",
    window_batch: int = WINDOW_BATCH,
    attention: str = "sdpa",
    sort_by_length: bool = True,
) -> CM3PExtractor:
    """Factory of the ``"cm3p"`` extractor (options as :class:`CM3PExtractor`)."""
    return CM3PExtractor(
        checkpoint,
        device=device,
        precision=precision,
        modes=modes,
        audio=audio,
        side=side,
        window_batch=window_batch,
        attention=attention,
        sort_by_length=sort_by_length,
    )
