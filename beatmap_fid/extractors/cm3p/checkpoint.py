"""CM3P checkpoints: the reference's folder layout, read and written without running its code.

A CM3P checkpoint (Hugging Face ``OliBomby/CM3P``) is a folder:

- ``config.json``: the model configuration (``model_type`` ``"CM3P"``) with ``metadata_config``
  and ``beatmap_config`` (which holds ``audio_config``);
- ``model.safetensors`` (or shards listed in ``model.safetensors.index.json``): the weights;
- ``processor_config.json``: ``default_kwargs`` of the processor (window length and stride,
  the 2000-token limit, audio padding);
- ``audio_feature_extractor/preprocessor_config.json`` (the Whisper log-mel settings),
  ``beatmap_parser/preprocessor_config.json`` (which events are written),
  ``beatmap_tokenizer/`` and ``metadata_tokenizer/``: ``vocab.json``, ``tokenizer_config.json``
  (settings, special tokens with their ids, and for metadata the mode, status, mapper and tag
  tables) and ``special_tokens_map.json``.

The checkpoint may also hold Python files for transformers' remote code; they are never
imported. Everything is read from the JSON files and the safetensors weights, so loading runs
no code from the checkpoint. :func:`save_checkpoint` writes the same layout (used to build
small checkpoints with random weights for tests and benchmarks).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from beatmap_fid.beatmap.audio import MIN_SAMPLE_RATE
from beatmap_fid.errors import ExtractorError, WeightsNotFoundError
from beatmap_fid.extractors.weights import check_bounds

DEFAULT_REPO = "OliBomby/CM3P"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PROCESSOR_FILE = "processor_config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
AUDIO_FOLDER = "audio_feature_extractor"
PARSER_FOLDER = "beatmap_parser"
BEATMAP_TOKENIZER_FOLDER = "beatmap_tokenizer"
METADATA_TOKENIZER_FOLDER = "metadata_tokenizer"
_HUB_PATTERNS = ["*.json", "*.safetensors"]


@dataclass(frozen=True)
class ParserSettings:
    """Which events the beatmap parser writes (``beatmap_parser/preprocessor_config.json``)."""

    add_timing: bool = True
    add_snapping: bool = False
    add_timing_points: bool = True
    add_hitsounds: bool = True
    add_distances: bool = False
    add_positions: bool = True
    add_kiai: bool = True
    add_sv: bool = True
    add_mania_sv: bool = True
    mania_bpm_normalized_scroll_speed: bool = True
    slider_version: int = 2


@dataclass(frozen=True)
class BeatmapTokenizerSettings:
    """How events become tokens (``beatmap_tokenizer/tokenizer_config.json``)."""

    min_time: int = 0
    max_time: int = 16000
    time_step: int = 10
    max_distance: int = 640
    distance_step: int = 4
    position_range: tuple[int, int, int, int] = (-256, 768, -256, 640)
    position_step: int = 4
    position_split_axes: bool = True
    add_cls_token: bool = True
    separate_new_combo_token: bool = False


@dataclass(frozen=True)
class MetadataTokenizerSettings:
    """How metadata becomes tokens, with the checkpoint's vocabulary tables
    (``metadata_tokenizer/tokenizer_config.json``; table keys are ids as text)."""

    modes: dict[str, str] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    mappers: dict[str, str] = field(default_factory=dict)
    tags: dict[str, dict[str, Any]] = field(default_factory=dict)
    min_difficculty: float = 0.0  # the reference's spelling, kept as the file writes it
    max_difficulty: float = 14.0
    difficulty_step: float = 0.1
    min_year: int = 2007
    max_year: int = 2023
    max_song_length: int = 600
    song_length_step: int = 10
    song_position_step: float = 0.01
    global_sv_step: float = 0.01
    hold_note_ratio_step: float = 0.1
    scroll_speed_ratio_step: float = 0.1
    add_cls_token: bool = True


@dataclass(frozen=True)
class WindowSettings:
    """Windows, token limit and audio features (``processor_config.json`` and
    ``audio_feature_extractor/preprocessor_config.json``)."""

    window_length_sec: float = 16.0
    window_stride_sec: float = 16.0
    min_window_length_sec: float = 1.0
    max_length: int = 2000
    metadata_max_length: int = 128
    sampling_rate: int = 16000
    pad_to_multiple_of: int = 256000
    max_source_positions: int = 1600
    audio_length_per_tok: int = 8
    hop_length: int = 160
    n_fft: int = 400
    feature_size: int = 80

    @property
    def window_samples(self) -> int:
        return round(self.window_length_sec * self.sampling_rate)


WINDOW_BOUNDS: dict[str, tuple[float, float]] = {
    "window_length_sec": (0.1, 600.0),
    "window_stride_sec": (0.1, 600.0),
    "min_window_length_sec": (0.0, 600.0),
    "max_length": (1, 65536),
    "metadata_max_length": (1, 65536),
    "sampling_rate": (MIN_SAMPLE_RATE, 192_000),
    "pad_to_multiple_of": (1, 1 << 24),
    "max_source_positions": (1, 65536),
    "audio_length_per_tok": (1, 65536),
    "hop_length": (1, 4096),
    "n_fft": (16, 4096),
    "feature_size": (1, 1024),
}
"""Accepted range of each window and audio setting of a checkpoint (the released model's
16 s windows of 16 kHz audio are well inside)."""


@dataclass(frozen=True)
class Vocabulary:
    """Token text → id of one tokenizer: ``vocab.json`` plus its added special tokens."""

    ids: dict[str, int]
    special: dict[str, str]  # role (bos_token, pad_token, ...) → token text

    def id_of(self, role: str) -> int:
        """Id of the special token playing ``role`` (``"pad_token"``, ``"bos_token"``, ...)."""
        try:
            return self.ids[self.special[role]]
        except KeyError:
            raise ExtractorError(f"the tokenizer has no {role}") from None

    def __len__(self) -> int:
        return max(self.ids.values()) + 1 if self.ids else 0


@dataclass
class CM3PCheckpoint:
    """Everything read from a checkpoint folder (weights stay on disk until the model is built)."""

    path: Path
    config: dict[str, Any]
    windows: WindowSettings
    parser: ParserSettings
    beatmap_tokenizer: BeatmapTokenizerSettings
    metadata_tokenizer: MetadataTokenizerSettings
    beatmap_vocab: Vocabulary
    metadata_vocab: Vocabulary
    weight_files: list[Path]
    sha256: str

    @property
    def beatmap_config(self) -> dict[str, Any]:
        return self.config["beatmap_config"]

    @property
    def metadata_config(self) -> dict[str, Any]:
        return self.config["metadata_config"]

    def summary(self) -> dict[str, Any]:
        """JSON-able description (for extractor configurations)."""
        return {
            "checkpoint_sha256": self.sha256,
            "windows": asdict(self.windows),
            "parser": asdict(self.parser),
            "beatmap_tokenizer": asdict(self.beatmap_tokenizer),
        }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExtractorError(f"not a CM3P checkpoint: {path} is missing") from None
    except (OSError, ValueError) as error:
        raise ExtractorError(f"{path}: not readable JSON: {error}") from error
    if not isinstance(data, dict):
        raise ExtractorError(f"{path}: expected a JSON object")
    return data


def _settings_from(cls: type, values: Mapping[str, Any]) -> Any:
    """A settings dataclass from a JSON mapping (unknown keys ignored, defaults kept)."""
    known = {f.name for f in fields(cls)}
    chosen = {k: v for k, v in values.items() if k in known}
    if "position_range" in chosen:
        chosen["position_range"] = tuple(int(v) for v in chosen["position_range"])
    return cls(**chosen)


def read_vocabulary(folder: Path) -> Vocabulary:
    """``vocab.json`` and the special tokens of ``tokenizer_config.json`` in ``folder``."""
    ids = {str(k): int(v) for k, v in _read_json(folder / "vocab.json").items()}
    config = _read_json(folder / "tokenizer_config.json")
    for token_id, entry in (config.get("added_tokens_decoder") or {}).items():
        ids[str(entry["content"])] = int(token_id)
    special = {
        key: str(value)
        for key, value in config.items()
        if key.endswith("_token") and isinstance(value, str)
    }
    return Vocabulary(ids, special)


def _window_settings(folder: Path) -> WindowSettings:
    processor = _read_json(folder / PROCESSOR_FILE).get("default_kwargs") or {}
    audio = _read_json(folder / AUDIO_FOLDER / PREPROCESSOR_FILE)
    beatmap_kwargs = processor.get("beatmap_kwargs") or {}
    audio_kwargs = processor.get("audio_kwargs") or {}
    metadata_kwargs = processor.get("metadata_kwargs") or {}
    values = {**beatmap_kwargs, **audio_kwargs}
    values["metadata_max_length"] = metadata_kwargs.get("max_length", 128)
    values["n_fft"] = audio.get("n_fft", 400)
    values["feature_size"] = audio.get("feature_size", 80)
    values["hop_length"] = audio_kwargs.get("hop_length", audio.get("hop_length", 160))
    values["sampling_rate"] = audio_kwargs.get("sampling_rate", audio.get("sampling_rate", 16000))
    check_bounds(values, WINDOW_BOUNDS, str(folder))
    settings = _settings_from(WindowSettings, values)
    if settings.pad_to_multiple_of // settings.hop_length != settings.max_source_positions:
        raise ExtractorError(
            f"{folder}: an audio block of {settings.pad_to_multiple_of} samples makes "
            f"{settings.pad_to_multiple_of // settings.hop_length} mel frames, not "
            f"max_source_positions {settings.max_source_positions}; such settings are not supported"
        )
    if settings.window_samples > settings.pad_to_multiple_of:
        raise ExtractorError(
            f"{folder}: windows of {settings.window_length_sec} s are longer than the audio "
            f"block of {settings.pad_to_multiple_of} samples; such settings are not supported"
        )
    return settings


def _weight_files(folder: Path) -> list[Path]:
    index = folder / WEIGHTS_INDEX_FILE
    if index.is_file():
        names = sorted(set(_read_json(index).get("weight_map", {}).values()))
        files = [folder / name for name in names]
    else:
        files = [folder / WEIGHTS_FILE]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise WeightsNotFoundError(f"not a complete CM3P checkpoint: missing {', '.join(missing)}")
    return files


def _digest(files: list[Path]) -> str:
    """SHA-256 over the checkpoint's JSON files and weights: stores made with other weights or
    other settings get another extractor configuration."""
    digest = hashlib.sha256()
    folder = files[0].parent
    for path in sorted(folder.rglob("*.json")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(source: str | Path) -> Path:
    """The local folder of ``source``: a folder in the layout above, or a Hugging Face repo id
    whose JSON and safetensors files are downloaded (or found in the local cache)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if path.exists():
        raise WeightsNotFoundError(f"{text} is a file: give the CM3P checkpoint folder")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        try:
            from huggingface_hub import snapshot_download
        except ImportError as error:
            raise WeightsNotFoundError(
                f"cannot fetch {text!r}: huggingface_hub is not installed; install the 'cm3p' "
                "extra or pass the local path of a downloaded checkpoint folder"
            ) from error
        try:
            return Path(snapshot_download(text, allow_patterns=_HUB_PATTERNS))
        except Exception as error:
            raise WeightsNotFoundError(
                f"could not get Hugging Face repo {text!r} ({type(error).__name__}); without "
                f"internet access download it elsewhere (https://huggingface.co/{text}) and pass "
                "the local folder instead, e.g. --option checkpoint=/path/to/CM3P"
            ) from error
    raise WeightsNotFoundError(
        f"CM3P checkpoint {text!r} not found: give a checkpoint folder or a Hugging Face repo "
        f"id such as {DEFAULT_REPO!r}"
    )


def read_checkpoint(source: str | Path) -> CM3PCheckpoint:
    """Read a checkpoint folder (or hub repo id); the weights are located, not loaded."""
    folder = resolve_checkpoint(source)
    config = _read_json(folder / CONFIG_FILE)
    if config.get("model_type") != "CM3P":
        raise ExtractorError(
            f"{folder / CONFIG_FILE}: model_type is {config.get('model_type')!r}, not 'CM3P'"
        )
    for key in ("beatmap_config", "metadata_config"):
        if not isinstance(config.get(key), dict):
            raise ExtractorError(f"{folder / CONFIG_FILE}: no {key}")
    weight_files = _weight_files(folder)
    metadata_settings = _read_json(folder / METADATA_TOKENIZER_FOLDER / "tokenizer_config.json")
    return CM3PCheckpoint(
        path=folder,
        config=config,
        windows=_window_settings(folder),
        parser=_settings_from(
            ParserSettings, _read_json(folder / PARSER_FOLDER / PREPROCESSOR_FILE)
        ),
        beatmap_tokenizer=_settings_from(
            BeatmapTokenizerSettings,
            _read_json(folder / BEATMAP_TOKENIZER_FOLDER / "tokenizer_config.json"),
        ),
        metadata_tokenizer=_settings_from(MetadataTokenizerSettings, metadata_settings),
        beatmap_vocab=read_vocabulary(folder / BEATMAP_TOKENIZER_FOLDER),
        metadata_vocab=read_vocabulary(folder / METADATA_TOKENIZER_FOLDER),
        weight_files=weight_files,
        sha256=_digest(weight_files),
    )


def weight_shapes(checkpoint: CM3PCheckpoint) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor, read from the safetensors headers (no tensor is loaded)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in checkpoint.weight_files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as error:  # safetensors raises SafetensorError, OSError, ...
            raise ExtractorError(f"{path}: not readable safetensors weights: {error}") from error
    return shapes


def load_state_dict(checkpoint: CM3PCheckpoint) -> dict[str, Any]:
    """The checkpoint's tensors (safetensors: no pickled code), keyed as in the file."""
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    for path in checkpoint.weight_files:
        try:
            state.update(load_file(str(path)))
        except Exception as error:  # safetensors raises SafetensorError, OSError, ...
            raise ExtractorError(f"{path}: not readable safetensors weights: {error}") from error
    return state


# --- writing ---------------------------------------------------------------------------------

_SPECIAL_ENTRY = {
    "lstrip": False,
    "normalized": False,
    "rstrip": False,
    "single_word": False,
    "special": True,
}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", "utf-8")


def _write_vocab(path: Path, vocab: dict[str, int]) -> None:
    """``vocab.json`` as the reference tokenizers write it: one line, in id order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")


def _write_tokenizer(
    folder: Path,
    vocab: dict[str, int],
    special: dict[str, str],
    additional: list[str],
    settings: dict[str, Any],
    tokenizer_class: str,
) -> None:
    """``vocab.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` as
    transformers' ``PreTrainedTokenizer.save_pretrained`` writes them."""
    added = {}
    next_id = max(vocab.values()) + 1
    for token in [*special.values(), *additional]:
        if token not in vocab and token not in {e["content"] for e in added.values()}:
            added[str(next_id)] = {"content": token, **_SPECIAL_ENTRY}
            next_id += 1
    _write_vocab(folder / "vocab.json", vocab)
    _write_json(
        folder / "tokenizer_config.json",
        {
            **settings,
            **special,
            "added_tokens_decoder": added,
            "additional_special_tokens": additional,
            "clean_up_tokenization_spaces": False,
            "extra_special_tokens": {},
            "model_max_length": 1000000000000000019884624838656,
            "processor_class": "CM3PProcessor",
            "tokenizer_class": tokenizer_class,
        },
    )
    _write_json(
        folder / "special_tokens_map.json", {**special, "additional_special_tokens": additional}
    )


def save_checkpoint(
    folder: str | Path,
    config: dict[str, Any],
    state_dict: Mapping[str, Any],
    *,
    windows: WindowSettings,
    parser: ParserSettings,
    beatmap_tokenizer: BeatmapTokenizerSettings,
    metadata_tokenizer: MetadataTokenizerSettings,
) -> Path:
    """Write a checkpoint folder in the reference layout; returns the folder.

    The vocabularies are built from the tokenizer settings by the reference's rules
    (:mod:`beatmap_fid.extractors.cm3p.tokens`); ``config`` is the ``config.json`` content
    (see :func:`beatmap_fid.extractors.cm3p.model.cm3p_config`).
    """
    from safetensors.torch import save_file

    from beatmap_fid.extractors.cm3p.tokens import (
        BEATMAP_ADDITIONAL_TOKENS,
        BEATMAP_SPECIAL_TOKENS,
        METADATA_SPECIAL_TOKENS,
        METADATA_UNK_TOKENS,
        beatmap_vocab,
        metadata_vocab,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / CONFIG_FILE, config)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    _write_json(
        folder / PROCESSOR_FILE,
        {
            "default_kwargs": {
                "audio_kwargs": {
                    "audio_length_per_tok": windows.audio_length_per_tok,
                    "device": "cpu",
                    "hop_length": windows.hop_length,
                    "max_source_positions": windows.max_source_positions,
                    "pad_to_multiple_of": windows.pad_to_multiple_of,
                    "padding": False,
                    "sampling_rate": windows.sampling_rate,
                    "truncation": False,
                    "window_size": windows.n_fft,
                },
                "beatmap_kwargs": {
                    "max_length": windows.max_length,
                    "min_window_length_sec": windows.min_window_length_sec,
                    "padding": "longest",
                    "truncation": "longest_first",
                    "window_length_sec": windows.window_length_sec,
                    "window_stride_sec": windows.window_stride_sec,
                },
                "common_kwargs": {"return_tensors": "pt"},
                "metadata_kwargs": {
                    "max_length": windows.metadata_max_length,
                    "padding": "longest",
                    "truncation": "longest_first",
                },
            },
            "processor_class": "CM3PProcessor",
        },
    )
    _write_json(
        folder / AUDIO_FOLDER / PREPROCESSOR_FILE,
        {
            "chunk_length": 30,
            "dither": 0.0,
            "feature_extractor_type": "WhisperFeatureExtractor",
            "feature_size": windows.feature_size,
            "hop_length": windows.hop_length,
            "n_fft": windows.n_fft,
            "n_samples": 30 * windows.sampling_rate,
            "nb_max_frames": 30 * windows.sampling_rate // windows.hop_length,
            "padding_side": "right",
            "padding_value": 0.0,
            "processor_class": "CM3PProcessor",
            "return_attention_mask": False,
            "sampling_rate": windows.sampling_rate,
        },
    )
    _write_json(
        folder / PARSER_FOLDER / PREPROCESSOR_FILE,
        {
            **asdict(parser),
            "feature_extractor_type": "CM3PBeatmapParser",
            "processor_class": "CM3PProcessor",
        },
    )
    beatmap_settings = asdict(beatmap_tokenizer)
    beatmap_settings["position_range"] = list(beatmap_tokenizer.position_range)
    _write_tokenizer(
        folder / BEATMAP_TOKENIZER_FOLDER,
        beatmap_vocab(beatmap_tokenizer),
        BEATMAP_SPECIAL_TOKENS,
        BEATMAP_ADDITIONAL_TOKENS,
        beatmap_settings,
        "CM3PBeatmapTokenizer",
    )
    _write_tokenizer(
        folder / METADATA_TOKENIZER_FOLDER,
        metadata_vocab(metadata_tokenizer),
        METADATA_SPECIAL_TOKENS,
        METADATA_UNK_TOKENS,
        asdict(metadata_tokenizer),
        "CM3PMetadataTokenizer",
    )
    return folder
