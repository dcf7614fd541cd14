"""CM3P's towers on transformers' ``ModernBertModel``, with the reference's weight names.

- **Audio encoder** (``beatmap_model.audio_encoder``): two Whisper-style convolutions (80 mels →
  width, then stride 2), exact GELU after each, a ModernBERT over the 800 frames, then every 4
  consecutive frames concatenated and projected (Linear, GELU, Linear; no biases) to the beatmap
  tower's width: 200 audio embeddings per 16 s window.
- **Beatmap tower** (``beatmap_model.encoder``): token embeddings in which the ``[AUDIO]``
  positions are replaced, in order, by the audio embeddings; a ModernBERT over the sequence
  (padding masked); the last hidden state at position 0 (``cls_embed``; else the mean over
  unpadded positions); ``beatmap_projection`` (no bias); L2 normalisation.
- **Metadata tower** (``metadata_model.encoder``): the same without audio, then
  ``metadata_projection``. ``logit_scale`` scales cosine similarities in zero-shot use.

ModernBERT alternates global attention (every ``global_attn_every_n_layers``-th layer, from the
first) with local attention over ``|i − j| ≤ local_attention / 2``, with separate rotary bases
(``global_rope_theta``, ``local_rope_theta``). The configuration is built so that transformers
4.57 and 5.x make the same network. Weights of the masked-LM head (``head.*``, ``decoder.*``)
in a checkpoint are not used.
"""

from __future__ import annotations

import math
from typing import Any

from beatmap_fid.errors import ExtractorError
from beatmap_fid.extractors.weights import (
    check_bounds,
    check_divides,
    check_finite,
    check_shapes,
    meta_shapes,
)

_MODERNBERT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_activation",
    "max_position_embeddings",
    "initializer_range",
    "initializer_cutoff_factor",
    "norm_eps",
    "norm_bias",
    "global_rope_theta",
    "attention_bias",
    "attention_dropout",
    "global_attn_every_n_layers",
    "local_attention",
    "local_rope_theta",
    "embedding_dropout",
    "mlp_bias",
    "mlp_dropout",
    "decoder_bias",
    "deterministic_flash_attn",
)
_COMMON_DEFAULTS = {
    "hidden_activation": "gelu",
    "initializer_range": 0.02,
    "initializer_cutoff_factor": 2.0,
    "norm_eps": 1e-5,
    "norm_bias": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "local_attention": 128,
    "local_rope_theta": 10000.0,
    "embedding_dropout": 0.0,
    "mlp_bias": False,
    "mlp_dropout": 0.0,
    "decoder_bias": True,
    "deterministic_flash_attn": False,
}
# Defaults of the reference's configuration classes, for keys a config.json may leave out.
METADATA_DEFAULTS = {
    **_COMMON_DEFAULTS,
    "cls_embed": True,
    "projection_dim": 512,
    "vocab_size": 1000,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "global_rope_theta": 10000.0,
    "global_attn_every_n_layers": 1,
}
AUDIO_DEFAULTS = {
    **_COMMON_DEFAULTS,
    "vocab_size": 1,
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "max_position_embeddings": 4096,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "global_rope_theta": 160000.0,
    "global_attn_every_n_layers": 3,
    "projector_intermediate_size": 2048,
    "projector_dim": 768,
    "projector_hidden_act": "gelu",
    "n_mels": 80,
}
BEATMAP_DEFAULTS = {
    **_COMMON_DEFAULTS,
    "cls_embed": True,
    "projection_dim": 512,
    "audio_token_id": 3166,
    "vocab_size": 3167,
    "hidden_size": 768,
    "intermediate_size": 1152,
    "num_hidden_layers": 22,
    "num_attention_heads": 12,
    "max_position_embeddings": 8192,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "global_rope_theta": 160000.0,
    "global_attn_every_n_layers": 3,
}
UNUSED_PREFIXES = ("head.", "decoder.")
DEFAULT_MODES = {"0": "osu", "1": "taiko", "2": "fruits", "3": "mania"}
"""Mode table of :func:`random_checkpoint` (osu! API names)."""
DEFAULT_STATUSES = {
    "-2": "graveyard",
    "-1": "wip",
    "0": "pending",
    "1": "ranked",
    "2": "approved",
    "3": "qualified",
    "4": "loved",
}
"""Status table of :func:`random_checkpoint` (osu! API names and ids)."""
"""Checkpoint weights of the masked-LM head, which embeddings do not use."""


TOWER_BOUNDS: dict[str, tuple[int, int]] = {
    "vocab_size": (1, 1_000_000),
    "hidden_size": (1, 8192),
    "intermediate_size": (1, 65536),
    "num_hidden_layers": (1, 128),
    "num_attention_heads": (1, 256),
    "max_position_embeddings": (1, 1 << 20),
    "local_attention": (2, 65536),
    "global_attn_every_n_layers": (1, 128),
    "projector_intermediate_size": (1, 1 << 20),
    "projector_dim": (1, 65536),
    "n_mels": (1, 1024),
}
"""Accepted range of each size setting of a tower in ``config.json``, checked before any model
is built (the released model is well inside)."""
PROJECTION_BOUNDS = {"projection_dim": (1, 65536)}


def check_config(config: dict[str, Any], where: str) -> None:
    """Refuse a ``config.json`` whose towers have sizes outside :data:`TOWER_BOUNDS` or
    attention heads that do not divide their width."""
    check_bounds(config, PROJECTION_BOUNDS, where)
    if not isinstance(config["beatmap_config"].get("audio_config") or {}, dict):
        raise ExtractorError(f"{where}: beatmap_config.audio_config is not an object")
    towers = {
        "beatmap_config": tower_settings(config["beatmap_config"], BEATMAP_DEFAULTS),
        "audio_config": tower_settings(
            config["beatmap_config"].get("audio_config") or {}, AUDIO_DEFAULTS
        ),
        "metadata_config": tower_settings(config["metadata_config"], METADATA_DEFAULTS),
    }
    for name, settings in towers.items():
        check_bounds(settings, TOWER_BOUNDS, f"{where} {name}")
        check_divides(settings, [("hidden_size", "num_attention_heads")], f"{where} {name}")


def tower_settings(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A tower's configuration with the reference's defaults filled in."""
    return {
        **defaults,
        **{k: v for k, v in config.items() if k in defaults or k in _MODERNBERT_KEYS},
    }


def modernbert_config(settings: dict[str, Any]):
    """A ``ModernBertConfig`` for one tower (same network on transformers 4.57 and 5.x)."""
    from transformers import ModernBertConfig

    values = {key: settings[key] for key in _MODERNBERT_KEYS if key in settings}
    special = {
        name: settings.get(name) for name in ("pad_token_id", "bos_token_id", "eos_token_id")
    }
    return ModernBertConfig(
        **values,
        **special,
        cls_token_id=None,
        sep_token_id=None,
        attn_implementation="sdpa",
        reference_compile=False,
    )


def build_model(config: dict[str, Any]):
    """A CM3P model (random weights) for a ``config.json`` content."""
    import torch
    from torch import nn
    from transformers import ModernBertModel
    from transformers.activations import ACT2FN

    beatmap = tower_settings(config["beatmap_config"], BEATMAP_DEFAULTS)
    audio = tower_settings(config["beatmap_config"].get("audio_config") or {}, AUDIO_DEFAULTS)
    metadata = tower_settings(config["metadata_config"], METADATA_DEFAULTS)
    projection_dim = int(config.get("projection_dim", 512))

    class Projector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear_1 = nn.Linear(
                audio["projector_intermediate_size"], audio["projector_dim"], bias=False
            )
            self.act = ACT2FN[audio["projector_hidden_act"]]
            self.linear_2 = nn.Linear(audio["projector_dim"], audio["projector_dim"], bias=False)

        def forward(self, x):
            return self.linear_2(self.act(self.linear_1(x)))

    class AudioEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            width = audio["hidden_size"]
            self.conv1 = nn.Conv1d(audio["n_mels"], width, kernel_size=3, padding=1)
            self.conv2 = nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1)
            self.encoder = ModernBertModel(modernbert_config(audio))
            self.multi_modal_projector = Projector()

        def forward(self, features):
            x = nn.functional.gelu(self.conv1(features))
            x = nn.functional.gelu(self.conv2(x)).permute(0, 2, 1).contiguous()
            positions = torch.arange(x.size(1), device=x.device).unsqueeze(0).repeat(x.size(0), 1)
            hidden = self.encoder(inputs_embeds=x, position_ids=positions).last_hidden_state
            return self.multi_modal_projector(
                hidden.reshape(-1, audio["projector_intermediate_size"])
            )

    class BeatmapTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.audio_encoder = AudioEncoder()
            self.encoder = ModernBertModel(modernbert_config(beatmap))

        def forward(self, input_ids, attention_mask, input_features=None):
            embeds = self.encoder.get_input_embeddings()(input_ids)
            if input_features is not None:
                audio_embeds = self.audio_encoder(input_features).to(embeds.dtype)
                embeds[input_ids == beatmap["audio_token_id"]] = audio_embeds
            return self.encoder(inputs_embeds=embeds, attention_mask=attention_mask)

    class MetadataTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = ModernBertModel(modernbert_config(metadata))

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask)

    def pooled(hidden, attention_mask, cls_embed: bool):
        if cls_embed:
            return hidden[:, 0]
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def normalised(x):
        return x / torch.pow(torch.sum(torch.pow(x, 2), dim=-1, keepdim=True), 0.5)

    class CM3P(nn.Module):
        """Both towers and their projections; ``beatmap_embeds``/``metadata_embeds`` give the
        L2-normalised embeddings."""

        def __init__(self) -> None:
            super().__init__()
            self.config = config
            self.beatmap_settings = beatmap
            self.metadata_settings = metadata
            self.metadata_model = MetadataTower()
            self.beatmap_model = BeatmapTower()
            self.beatmap_projection = nn.Linear(beatmap["hidden_size"], projection_dim, bias=False)
            self.metadata_projection = nn.Linear(
                metadata["hidden_size"], projection_dim, bias=False
            )
            self.logit_scale = nn.Parameter(
                torch.tensor(float(config.get("logit_scale_init_value", 2.6592)))
            )

        def beatmap_embeds(self, input_ids, attention_mask, input_features=None):
            hidden = self.beatmap_model(input_ids, attention_mask, input_features).last_hidden_state
            return normalised(
                self.beatmap_projection(pooled(hidden, attention_mask, beatmap["cls_embed"]))
            )

        def metadata_embeds(self, input_ids, attention_mask):
            hidden = self.metadata_model(input_ids, attention_mask).last_hidden_state
            return normalised(
                self.metadata_projection(pooled(hidden, attention_mask, metadata["cls_embed"]))
            )

    return CM3P()


def load_model(checkpoint):
    """The model of a :class:`~beatmap_fid.extractors.cm3p.checkpoint.CM3PCheckpoint`, its
    weights loaded strictly (only the masked-LM head's are left out), in eval mode on CPU.

    Before it is built, ``config.json`` is checked against :data:`TOWER_BOUNDS` and the shapes
    in the safetensors headers against the model it describes; weights holding NaN or
    infinite values are refused.
    """
    from beatmap_fid.extractors.cm3p.checkpoint import load_state_dict, weight_shapes

    where = str(checkpoint.path)
    check_config(checkpoint.config, f"{where}/config.json")
    found = {
        key: shape
        for key, shape in weight_shapes(checkpoint).items()
        if not key.startswith(UNUSED_PREFIXES)
    }
    check_shapes(meta_shapes(lambda: build_model(checkpoint.config)), found, where)
    state = {
        key: value.float()
        for key, value in load_state_dict(checkpoint).items()
        if not key.startswith(UNUSED_PREFIXES)
    }
    check_finite(state, where)
    model = build_model(checkpoint.config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def use_attention(model, attention: str) -> None:
    """Run every tower of ``model`` with ``attention``: ``"sdpa"`` (transformers' own, as the
    reference) or ``"banded"`` (:mod:`beatmap_fid.extractors.cm3p.attention`)."""
    from beatmap_fid.extractors.cm3p.attention import register_banded_attention

    name = register_banded_attention() if attention == "banded" else "sdpa"
    for encoder in (
        model.beatmap_model.encoder,
        model.beatmap_model.audio_encoder.encoder,
        model.metadata_model.encoder,
    ):
        if encoder.config._attn_implementation != name:
            encoder.set_attn_implementation(name)
        if encoder.config._attn_implementation != name:
            raise ExtractorError(f"this transformers version cannot run attention={attention!r}")


SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "released": {
        "beatmap": {
            "hidden_size": 768,
            "intermediate_size": 1152,
            "num_hidden_layers": 22,
            "num_attention_heads": 12,
            "local_attention": 128,
        },
        "audio": {
            "hidden_size": 512,
            "intermediate_size": 1024,
            "num_hidden_layers": 6,
            "num_attention_heads": 8,
            "local_attention": 128,
        },
        "metadata": {
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
        },
    },
    "tiny": {
        "beatmap": {
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "local_attention": 16,
        },
        "audio": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "local_attention": 16,
        },
        "metadata": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
    },
}
"""Tower sizes: the released model's, and a tiny one for tests."""


def cm3p_config(
    size: str,
    beatmap_vocab,
    metadata_vocab,
    *,
    has_decoder_head: bool = True,
) -> dict[str, Any]:
    """``config.json`` content of a CM3P model of ``size`` (see :data:`SIZES`) for the given
    vocabularies (:class:`~beatmap_fid.extractors.cm3p.checkpoint.Vocabulary`), with the keys
    the reference writes."""
    if size not in SIZES:
        raise ExtractorError(f"unknown CM3P size {size!r}; choose from {', '.join(SIZES)}")
    sizes = SIZES[size]
    audio = {
        **AUDIO_DEFAULTS,
        **sizes["audio"],
        "projector_intermediate_size": 4 * sizes["audio"]["hidden_size"],
        "projector_dim": sizes["beatmap"]["hidden_size"],
        "sample_rate": 16000,
        "n_ftt": 2048,
        "hop_length": 128,
        "f_min": 0,
        "f_max": 8000,
        "pad_mode": "constant",
        "model_type": "CM3PAudio",
    }
    beatmap = {
        **BEATMAP_DEFAULTS,
        **sizes["beatmap"],
        "audio_config": audio,
        "vocab_size": len(beatmap_vocab),
        "pad_token_id": beatmap_vocab.id_of("pad_token"),
        "bos_token_id": beatmap_vocab.id_of("bos_token"),
        "eos_token_id": beatmap_vocab.id_of("eos_token"),
        "audio_sos_token_id": None,
        "audio_eos_token_id": beatmap_vocab.ids["[AUDIO_EOS]"],
        "audio_token_id": beatmap_vocab.ids["[AUDIO]"],
        "initializer_factor": 1.0,
        "classifier_activation": "gelu",
        "classifier_bias": False,
        "sparse_prediction": False,
        "sparse_pred_ignore_index": -100,
        "repad_logits_with_grad": False,
        "model_type": "CM3PBeatmap",
    }
    metadata = {
        **METADATA_DEFAULTS,
        **sizes["metadata"],
        "vocab_size": len(metadata_vocab),
        "pad_token_id": metadata_vocab.id_of("pad_token"),
        "bos_token_id": metadata_vocab.id_of("bos_token"),
        "eos_token_id": metadata_vocab.id_of("eos_token"),
        "initializer_factor": 1.0,
        "model_type": "CM3PMetadata",
    }
    return {
        "architectures": ["CM3PModel"],
        "model_type": "CM3P",
        "beatmap_config": beatmap,
        "metadata_config": metadata,
        "projection_dim": 512,
        "logit_scale_init_value": 2.6592,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "loss_type": "ForMaskedLM" if has_decoder_head else None,
        "has_decoder_head": has_decoder_head,
        "dtype": "float32",
    }


def _unit_gain(name: str, tensor, generator):
    """A random tensor of ``tensor``'s shape: weights N(0, 1/fan_in), token embeddings N(0, 1),
    norm scales 1 + N(0, 0.1²), biases N(0, 0.1²). Unlike the training initialisation (std
    0.02), this makes different inputs give clearly different embeddings, as trained weights
    do, so that comparisons of two implementations mean something."""
    import torch

    if tensor.ndim == 0:
        return tensor.clone()
    noise = torch.randn(tensor.shape, generator=generator)
    if tensor.ndim == 1:
        return 1.0 + 0.1 * noise if "norm" in name else 0.1 * noise
    if "tok_embeddings" in name:
        return noise
    return noise / math.sqrt(tensor[0].numel())


def random_checkpoint(
    folder,
    size: str = "tiny",
    *,
    seed: int = 0,
    metadata_tables: dict[str, Any] | None = None,
    window_settings: Any = None,
):
    """Write a CM3P checkpoint of ``size`` with random weights (seeded) into ``folder`` in the
    reference layout: released processor settings, the masked-LM head included as the released
    checkpoint has it. ``metadata_tables`` sets the metadata tokenizer's ``modes``,
    ``statuses``, ``mappers`` and ``tags`` (default: the osu! modes and statuses, no mappers
    and no tags). Returns the folder."""
    import torch

    from beatmap_fid.extractors.cm3p.checkpoint import (
        BeatmapTokenizerSettings,
        MetadataTokenizerSettings,
        ParserSettings,
        Vocabulary,
        WindowSettings,
        save_checkpoint,
    )
    from beatmap_fid.extractors.cm3p.tokens import (
        BEATMAP_ADDITIONAL_TOKENS,
        BEATMAP_SPECIAL_TOKENS,
        METADATA_SPECIAL_TOKENS,
        METADATA_UNK_TOKENS,
        beatmap_vocab,
        metadata_vocab,
    )

    beatmap_settings = BeatmapTokenizerSettings()
    tables = {"modes": DEFAULT_MODES, "statuses": DEFAULT_STATUSES, **(metadata_tables or {})}
    metadata_settings = MetadataTokenizerSettings(**tables)

    def with_specials(vocab: dict[str, int], special: dict[str, str], extra: list[str]):
        ids = dict(vocab)
        for token in [*special.values(), *extra]:
            ids.setdefault(token, max(ids.values()) + 1)
        return Vocabulary(ids, dict(special))

    config = cm3p_config(
        size,
        with_specials(
            beatmap_vocab(beatmap_settings), BEATMAP_SPECIAL_TOKENS, BEATMAP_ADDITIONAL_TOKENS
        ),
        with_specials(
            metadata_vocab(metadata_settings), METADATA_SPECIAL_TOKENS, METADATA_UNK_TOKENS
        ),
    )
    torch.manual_seed(seed)
    model = build_model(config)
    generator = torch.Generator().manual_seed(seed)
    state = {name: _unit_gain(name, value, generator) for name, value in model.state_dict().items()}
    hidden = config["beatmap_config"]["hidden_size"]
    vocab_size = config["beatmap_config"]["vocab_size"]
    state["head.dense.weight"] = torch.randn(hidden, hidden) * 0.02
    state["head.norm.weight"] = torch.ones(hidden)
    state["decoder.weight"] = torch.randn(vocab_size, hidden) * 0.02
    state["decoder.bias"] = torch.zeros(vocab_size)
    return save_checkpoint(
        folder,
        config,
        state,
        windows=window_settings or WindowSettings(),
        parser=ParserSettings(),
        beatmap_tokenizer=beatmap_settings,
        metadata_tokenizer=metadata_settings,
    )
