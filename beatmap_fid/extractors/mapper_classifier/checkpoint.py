"""Mapper-classifier checkpoints: safe loading, settings, saving in the same layout.

The reference classifier (Mapperatorinator, ``classifier/``) ships a PyTorch Lightning
``model.ckpt`` (Hugging Face repo ``OliBomby/osu-classifier``). Besides the weights
(``state_dict``, keys prefixed ``model.`` or ``model._orig_mod.``), its ``hyper_parameters`` hold
two pickled objects of the reference's own code: the tokenizer (``libs.tokenizer.tokenizer.Tokenizer``
with ``libs.tokenizer.event.EventRange``/``EventType`` inside) and the training configuration (an
OmegaConf ``DictConfig``). Unpickling those classes for real would import and run that code;
instead the file is read with ``torch.load(weights_only=True)``, which builds only tensors and
plain containers, plus inert stand-ins registered under the reference's class names. The
stand-ins only record the pickled state; it is then converted to plain dicts, lists and numbers.
Any other class or function named in the file is refused with an error.

Our own checkpoints (written by :func:`save_checkpoint`, e.g. by training) use the same layout
with plain data in ``hyper_parameters``, so both go through one loading path.

Before a model is built, its settings are checked against :data:`SETTING_BOUNDS` and the
checkpoint's weights against the shapes of the model the settings describe (see
:mod:`beatmap_fid.extractors.weights`), and weights holding NaN or infinite values are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beatmap_fid.beatmap.audio import MIN_SAMPLE_RATE
from beatmap_fid.errors import ExtractorError, WeightsNotFoundError
from beatmap_fid.extractors.weights import (
    check_bounds,
    check_divides,
    check_finite,
    check_shapes,
    meta_shapes,
    tensor_shapes,
)

if TYPE_CHECKING:
    from beatmap_fid.extractors.mapper_classifier.model import MapperClassifier

DEFAULT_REPO = "OliBomby/osu-classifier"
CHECKPOINT_FILENAME = "model.ckpt"

# Whisper sizes by name: d_model, layers (encoder and decoder), attention heads, feed-forward width.
WHISPER_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (384, 4, 6, 1536),
    "base": (512, 6, 8, 2048),
    "small": (768, 12, 12, 3072),
    "medium": (1024, 24, 16, 4096),
    "large": (1280, 32, 20, 5120),
}
_BACKBONE_FIELDS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
)
# What the beatmap is turned into events with; values of the reference's training config.
DEFAULT_EVENT_OPTIONS: dict[str, Any] = {
    "types_first": True,
    "add_timing": True,
    "add_snapping": True,
    "add_timing_points": False,
    "add_hitsounds": True,
    "add_distances": False,
    "add_positions": True,
    "position_precision": 1,
    "position_split_axes": True,
    "position_range": [-256, 768, -256, 640],
}


SETTING_BOUNDS: dict[str, tuple[int, int]] = {
    "num_classes": (1, 1_000_000),
    "vocab_size": (2, 1_000_000),
    "d_model": (1, 8192),
    "encoder_layers": (1, 64),
    "decoder_layers": (1, 64),
    "encoder_attention_heads": (1, 256),
    "decoder_attention_heads": (1, 256),
    "encoder_ffn_dim": (1, 65536),
    "decoder_ffn_dim": (1, 65536),
    "projector_dim": (1, 65536),
    "sample_rate": (MIN_SAMPLE_RATE, 192_000),
    "n_fft": (16, 4096),
    "n_mels": (1, 1024),
    "hop_length": (1, 4096),
    "src_seq_len": (2, 65536),
    "tgt_seq_len": (1, 65536),
}
"""Accepted range of each size setting of a checkpoint, checked before any model is built
(the released classifier, whisper-base with 1024-frame windows, is well inside)."""


def check_settings(settings: ClassifierSettings, where: str) -> None:
    """Refuse settings outside :data:`SETTING_BOUNDS`, attention heads that do not divide the
    width, and an odd ``src_seq_len`` (Whisper's encoder halves it)."""
    values = dataclasses.asdict(settings)
    check_bounds(values, SETTING_BOUNDS, where)
    pairs = [("d_model", "encoder_attention_heads"), ("d_model", "decoder_attention_heads")]
    check_divides(values, pairs, where)
    if settings.src_seq_len % 2:
        raise ExtractorError(f"{where}: src_seq_len {settings.src_seq_len} is not even")


@dataclass(frozen=True)
class ClassifierSettings:
    """Everything that shapes the classifier and its inputs, read from (or written to) a checkpoint."""

    num_classes: int
    vocab_size: int
    backbone: str = "openai/whisper-base"
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    projector_dim: int = 2048
    sample_rate: int = 16000
    n_fft: int = 1024
    n_mels: int = 388
    hop_length: int = 128
    src_seq_len: int = 1024
    tgt_seq_len: int = 1024
    event_options: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_EVENT_OPTIONS))

    @property
    def window_samples(self) -> int:
        """Audio samples per window: (src_seq_len - 1) hops; the mel has src_seq_len frames."""
        return (self.src_seq_len - 1) * self.hop_length

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    @classmethod
    def for_size(cls, size: str, **values: Any) -> ClassifierSettings:
        """Settings of a named Whisper size (``tiny``, ``base``, ``small``, ...), other values as given."""
        if size not in WHISPER_SIZES:
            raise ExtractorError(
                f"unknown model size {size!r}; choose one of {', '.join(WHISPER_SIZES)}"
            )
        d_model, layers, heads, ffn = WHISPER_SIZES[size]
        backbone = {
            "d_model": d_model,
            "encoder_layers": layers,
            "decoder_layers": layers,
            "encoder_attention_heads": heads,
            "decoder_attention_heads": heads,
            "encoder_ffn_dim": ffn,
            "decoder_ffn_dim": ffn,
        }
        return cls(backbone=f"openai/whisper-{size}", **(backbone | values))

    def to_config(self) -> dict[str, Any]:
        """The reference's configuration layout (``model`` and ``data`` sections), plain data."""
        return {
            "model": {
                "name": self.backbone,
                "input_features": True,
                "classifier_proj_size": self.projector_dim,
                "spectrogram": {
                    "sample_rate": self.sample_rate,
                    "n_fft": self.n_fft,
                    "n_mels": self.n_mels,
                    "hop_length": self.hop_length,
                },
                "overwrite": {name: getattr(self, name) for name in _BACKBONE_FIELDS},
            },
            "data": {
                "src_seq_len": self.src_seq_len,
                "tgt_seq_len": self.tgt_seq_len,
                "sample_rate": self.sample_rate,
                "hop_length": self.hop_length,
                "num_classes": self.num_classes,
                **self.event_options,
            },
        }

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], *, num_classes: int, vocab_size: int
    ) -> ClassifierSettings:
        """Settings from a reference-style configuration (``model`` and ``data`` sections)."""
        try:
            model, data = config["model"], config["data"]
            name = str(model["name"])
            spectrogram = model["spectrogram"]
            size = name.rsplit("whisper-", 1)[-1].split(".")[0].split("-")[0]
            if not name.startswith("openai/whisper") or size not in WHISPER_SIZES:
                raise ExtractorError(
                    f"the checkpoint's backbone {name!r} is not a Whisper model this library "
                    f"can build (known sizes: {', '.join(WHISPER_SIZES)})"
                )
            if not model.get("input_features", True):
                raise ExtractorError("checkpoints with input_features=false are not supported")
            overwrite = dict(model.get("overwrite") or {})
            backbone = {k: int(v) for k, v in overwrite.items() if k in _BACKBONE_FIELDS}
            event_options = {k: data[k] for k in DEFAULT_EVENT_OPTIONS if k in data}
            return cls.for_size(
                size,
                num_classes=num_classes,
                vocab_size=vocab_size,
                projector_dim=int(model["classifier_proj_size"]),
                sample_rate=int(spectrogram["sample_rate"]),
                n_fft=int(spectrogram["n_fft"]),
                n_mels=int(spectrogram["n_mels"]),
                hop_length=int(spectrogram["hop_length"]),
                src_seq_len=int(data["src_seq_len"]),
                tgt_seq_len=int(data["tgt_seq_len"]),
                event_options=DEFAULT_EVENT_OPTIONS | event_options,
                **backbone,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ExtractorError(
                f"the checkpoint's configuration lacks or garbles a setting ({error!r}); "
                "it is not a mapper-classifier checkpoint"
            ) from error


@dataclass
class TokenizerState:
    """The tokenizer as stored in a checkpoint: event ranges and the class labels.

    ``event_ranges`` are ``(event type name, min value, max value)`` in vocabulary order, token ids
    starting at ``offset`` (0 is the pad token). ``class_index`` maps a label (a mapper's user id
    for the reference, any string for our own training) to its class index.
    """

    event_ranges: list[tuple[str, int, int]]
    class_index: dict[Any, int]
    offset: int = 1
    beatmap_mapper: dict[Any, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.offset + sum(high - low + 1 for _, low, high in self.event_ranges)

    @property
    def num_classes(self) -> int:
        return len(self.class_index)

    def labels(self) -> list[Any]:
        """Labels ordered by class index."""
        labels: list[Any] = [None] * self.num_classes
        for label, index in self.class_index.items():
            labels[index] = label
        return labels

    def to_dict(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "event_ranges": [list(er) for er in self.event_ranges],
            "vocab_size": self.vocab_size,
            "num_classes": self.num_classes,
            "mapper_idx": dict(self.class_index),
            "beatmap_mapper": dict(self.beatmap_mapper),
        }

    @classmethod
    def from_stored(cls, stored: Any) -> TokenizerState:
        """From a pickled reference tokenizer (as a stand-in) or from :meth:`to_dict`'s output."""
        state = _object_state(stored) if isinstance(stored, _Pickled) else stored
        if not isinstance(state, Mapping):
            raise ExtractorError("the checkpoint's tokenizer is not readable")
        try:
            ranges = []
            for er in state["event_ranges"]:
                if isinstance(er, _Pickled):
                    er_state = _object_state(er)
                    er = (er_state["type"], er_state["min_value"], er_state["max_value"])
                kind, low, high = er
                ranges.append((str(kind), int(low), int(high)))
            tokenizer = cls(
                event_ranges=ranges,
                class_index={label: int(i) for label, i in dict(state["mapper_idx"]).items()},
                offset=int(state.get("offset", 1)),
                beatmap_mapper=dict(state.get("beatmap_mapper") or {}),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ExtractorError(f"the checkpoint's tokenizer is malformed ({error!r})") from error
        stored_vocab = state.get("vocab_size")
        if stored_vocab is not None and int(stored_vocab) != tokenizer.vocab_size:
            raise ExtractorError(
                f"the checkpoint's tokenizer is inconsistent: vocab_size {stored_vocab} but its "
                f"event ranges give {tokenizer.vocab_size}"
            )
        if sorted(tokenizer.class_index.values()) != list(range(tokenizer.num_classes)):
            raise ExtractorError("the checkpoint's class indices are not 0..n-1")
        return tokenizer


# --- Unpickling stand-ins --------------------------------------------------------------------


class _Pickled:
    """Inert record of a pickled object of a foreign class: keeps its state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.pickled_state = state


class _PickledTokenizer(_Pickled):
    pass


class _PickledEventRange(_Pickled):
    pass


class _PickledEvent(_Pickled):
    pass


class _PickledDictConfig(_Pickled):
    pass


class _PickledListConfig(_Pickled):
    pass


class _PickledValueNode(_Pickled):
    pass


class _PickledMetadata(_Pickled):
    pass


def _event_type(value: Any) -> str:
    """Stand-in for the reference's ``EventType`` enum: members unpickle as their value, e.g. "t"."""
    return str(value)


def _defaultdict(default_factory: Any = None) -> dict:
    """Stand-in for ``collections.defaultdict`` (OmegaConf's resolver cache): a plain dict."""
    return {}


_OMEGACONF_VALUE_NODES = (
    "AnyNode",
    "StringNode",
    "IntegerNode",
    "FloatNode",
    "BooleanNode",
    "BytesNode",
    "PathNode",
    "EnumNode",
    "UnionNode",
    "InterpolationResultNode",
)


def _stand_in_globals() -> list[tuple[Any, str]]:
    """(stand-in, pickled name) pairs that ``torch.load(weights_only=True)`` may build."""
    import typing

    pairs: list[tuple[Any, str]] = []
    for prefix in ("libs", "classifier.libs"):
        pairs += [
            (_PickledTokenizer, f"{prefix}.tokenizer.tokenizer.Tokenizer"),
            (_PickledEventRange, f"{prefix}.tokenizer.event.EventRange"),
            (_PickledEvent, f"{prefix}.tokenizer.event.Event"),
            (_event_type, f"{prefix}.tokenizer.event.EventType"),
        ]
    pairs += [
        (_PickledDictConfig, "omegaconf.dictconfig.DictConfig"),
        (_PickledListConfig, "omegaconf.listconfig.ListConfig"),
        (_PickledMetadata, "omegaconf.base.Metadata"),
        (_PickledMetadata, "omegaconf.base.ContainerMetadata"),
        (_defaultdict, "collections.defaultdict"),
        (typing.Any, "typing.Any"),
        (dict, "lightning.fabric.utilities.data.AttributeDict"),
        (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    ]
    pairs += [(_PickledValueNode, f"omegaconf.nodes.{name}") for name in _OMEGACONF_VALUE_NODES]
    pairs += [
        (kind, f"builtins.{kind.__name__}") for kind in (dict, list, tuple, int, float, str, bool)
    ]
    return pairs


def _object_state(obj: _Pickled) -> dict[str, Any]:
    """A stand-in's attributes, merging pickle's (``__dict__``, slots) state pair."""
    state = getattr(obj, "pickled_state", None)
    merged: dict[str, Any] = {}
    parts = state if isinstance(state, tuple) else (state,)
    for part in parts:
        if isinstance(part, Mapping):
            merged.update(part)
    return merged


def plain_data(value: Any) -> Any:
    """Pickled OmegaConf containers and other stand-ins turned into dicts, lists and scalars."""
    if isinstance(value, _PickledDictConfig | _PickledListConfig):
        content = _object_state(value).get("_content")
        return plain_data(content)
    if isinstance(value, _PickledValueNode):
        return plain_data(_object_state(value).get("_val"))
    if isinstance(value, _PickledEventRange | _PickledEvent | _PickledTokenizer):
        return {k: plain_data(v) for k, v in _object_state(value).items()}
    if isinstance(value, Mapping):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain_data(v) for v in value)
    return value


_INTERPOLATION = re.compile(r"^\$\{([.\w]+)\}$")


def resolve_interpolations(config: dict[str, Any]) -> dict[str, Any]:
    """Resolve OmegaConf node interpolations such as ``${..model.spectrogram.sample_rate}``.

    A leading dot is the node holding the value, each further dot one level up; without leading
    dots the path starts at the root. Other interpolations (resolvers) are left as text.
    """

    def lookup(path: list[str], reference: str, depth: int = 0) -> Any:
        # ``path`` is the key path of the value holding the interpolation.
        dots = len(reference) - len(reference.lstrip("."))
        start = path[: len(path) - dots] if dots else []
        target = start + [k for k in reference.lstrip(".").split(".") if k]
        node: Any = config
        for key in target:
            if not isinstance(node, Mapping) or key not in node:
                return "${" + reference + "}"
            node = node[key]
        match = _INTERPOLATION.match(node) if isinstance(node, str) else None
        if match and depth < 32:
            return lookup(target, match.group(1), depth + 1)
        return node

    def walk(node: Any, path: list[str]) -> Any:
        if isinstance(node, Mapping):
            return {k: walk(v, [*path, str(k)]) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, path) for v in node]
        match = _INTERPOLATION.match(node) if isinstance(node, str) else None
        return plain_data(lookup(path, match.group(1))) if match else node

    return walk(config, [])


# --- Reading and writing ---------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(source: str | Path) -> Path:
    """A local checkpoint file for ``source``: a file, a folder holding ``model.ckpt``, or a
    Hugging Face repo id (``owner/name``) whose ``model.ckpt`` is downloaded (or taken from the
    local Hugging Face cache)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / CHECKPOINT_FILENAME).is_file():
            return path / CHECKPOINT_FILENAME
        raise WeightsNotFoundError(f"no {CHECKPOINT_FILENAME} in folder {path}")
    text = str(source)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.endswith((".ckpt", ".pt", ".pth")):
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as error:
            raise WeightsNotFoundError(
                f"cannot fetch {text!r}: huggingface_hub is not installed; install the "
                "'classifier' extra or pass the local path of a downloaded model.ckpt"
            ) from error
        try:
            return Path(hf_hub_download(text, CHECKPOINT_FILENAME))
        except Exception as error:
            raise WeightsNotFoundError(
                f"could not get {CHECKPOINT_FILENAME} of Hugging Face repo {text!r} "
                f"({type(error).__name__}); without internet access download it elsewhere "
                f"(https://huggingface.co/{text}) and pass its local path instead, "
                "e.g. --checkpoint /path/to/model.ckpt"
            ) from error
    raise WeightsNotFoundError(
        f"checkpoint {text!r} not found: give a model.ckpt file, a folder holding one, "
        f"or a Hugging Face repo id such as {DEFAULT_REPO!r}"
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's top-level dict, unpickled without running code from the file."""
    import pickle

    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_stand_in_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as error:
        refusals = ("Unsupported global", "unrecognized function", "Can only", "blocked")
        lines = [line.strip() for line in str(error).splitlines()]
        refused = [line for line in lines if any(word in line for word in refusals)]
        if not refused:
            raise ExtractorError(
                f"{path}: not a readable PyTorch checkpoint (truncated or another kind of "
                f"file): {next((line for line in lines if 'operand' in line), lines[0])}"
            ) from error
        raise ExtractorError(
            f"{path}: refused to load: the file asks to build something other than tensors, "
            f"plain data and the classifier's known configuration classes ({refused[0]})"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as error:
        raise ExtractorError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another kind of file): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ExtractorError(
            f"{path}: not a mapper-classifier checkpoint (no 'state_dict' entry at the top level)"
        )
    if not isinstance(checkpoint.get("hyper_parameters"), Mapping):
        raise ExtractorError(
            f"{path}: the checkpoint has no 'hyper_parameters' (tokenizer and configuration); "
            "it is not a mapper-classifier checkpoint"
        )
    return checkpoint


def model_state_dict(checkpoint_state: Mapping[str, Any]) -> dict[str, Any]:
    """Weights keyed like :class:`MapperClassifier`'s state dict (``model.`` prefixes removed)."""
    state = {}
    for key, value in checkpoint_state.items():
        for prefix in ("model._orig_mod.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        state[key] = value
    return state


@dataclass
class LoadedClassifier:
    """A classifier ready to use, with what the checkpoint said about it."""

    model: MapperClassifier
    settings: ClassifierSettings
    tokenizer: TokenizerState
    config: dict[str, Any]
    path: Path
    sha256: str
    training_state: dict[str, Any] = field(default_factory=dict)


def build_model(settings: ClassifierSettings) -> MapperClassifier:
    """A freshly initialised classifier for ``settings``."""
    from beatmap_fid.extractors.mapper_classifier.model import MapperClassifier

    return MapperClassifier(settings)


def load_checkpoint(
    source: str | Path = DEFAULT_REPO, *, device: str | None = None
) -> LoadedClassifier:
    """Load a reference or our own checkpoint strictly; model in eval mode on ``device`` (CPU)."""
    from beatmap_fid.extractors.mapper_classifier.mel import check_fourier_kernels

    path = resolve_checkpoint(source)
    checkpoint = read_checkpoint(path)
    hyper = checkpoint["hyper_parameters"]
    if "tokenizer" not in hyper or "args" not in hyper:
        raise ExtractorError(
            f"{path}: hyper_parameters lack 'tokenizer' or 'args'; not a mapper-classifier checkpoint"
        )
    tokenizer = TokenizerState.from_stored(hyper["tokenizer"])
    config = plain_data(hyper["args"])
    if not isinstance(config, Mapping):
        raise ExtractorError(f"{path}: the checkpoint's configuration is not readable")
    config = resolve_interpolations(dict(config))
    settings = ClassifierSettings.from_config(
        config, num_classes=tokenizer.num_classes, vocab_size=tokenizer.vocab_size
    )
    check_settings(settings, str(path))
    state = model_state_dict(checkpoint["state_dict"])
    check_shapes(
        meta_shapes(lambda: build_model(settings)), tensor_shapes(state, str(path)), str(path)
    )
    check_finite(state, str(path))
    model = build_model(settings)
    model.load_state_dict(state, strict=True)
    if not check_fourier_kernels(model.spectrogram):
        raise ExtractorError(
            f"{path}: the checkpoint's STFT kernels are not the fixed Hann-windowed Fourier "
            "kernels (trained STFT kernels are not supported)"
        )
    model.eval().to(device or "cpu")
    training_keys = ("optimizer_states", "lr_schedulers", "global_step", "epoch", "training")
    training_state = {key: checkpoint[key] for key in training_keys if key in checkpoint}
    return LoadedClassifier(
        model=model,
        settings=settings,
        tokenizer=tokenizer,
        config=config,
        path=path,
        sha256=file_sha256(path),
        training_state=training_state,
    )


def save_checkpoint(
    path: str | Path,
    model: MapperClassifier,
    tokenizer: TokenizerState,
    *,
    training_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` in the reference's Lightning layout, atomically; returns the path.

    ``training_state`` may carry ``optimizer_states``, ``lr_schedulers``, ``global_step``,
    ``epoch`` and ``training`` (plain data) to resume training from.
    """
    import torch

    from beatmap_fid._version import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    settings: ClassifierSettings = model.settings
    checkpoint = {
        "state_dict": {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": {"args": settings.to_config(), "tokenizer": tokenizer.to_dict()},
        "hparams_name": "kwargs",
        "beatmap_fid_version": __version__,
        "global_step": 0,
        "epoch": 0,
        **dict(training_state or {}),
    }
    temporary = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)
    return path


def settings_dict(settings: ClassifierSettings) -> dict[str, Any]:
    """The settings as JSON-able data (for extractor configs)."""
    return dataclasses.asdict(settings)
