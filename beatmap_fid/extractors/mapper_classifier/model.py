"""The mapper classifier network: mel frames and beatmap tokens in, a style vector and logits out.

Module names follow the reference classifier (Mapperatorinator, ``classifier/``) so that its
checkpoints load strictly: ``transformer`` (a transformers ``WhisperModel``), ``decoder_embedder``,
``spectrogram``, ``encoder_embedder``, ``projector`` and ``classifier``.

Forward pass: waveform → power mel frames (B, src_seq_len, n_mels) → ``encoder_embedder`` →
transposed into Whisper's ``input_features``; tokens → ``decoder_embedder`` →
``decoder_inputs_embeds`` with ``decoder_attention_mask = tokens != pad``, which transformers
combines with the causal mask as for the reference (a window without any event masks every
key); ``projector`` on every decoder position, averaged over all
``tgt_seq_len`` positions (pads included) = the feature vector; ``classifier`` → logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from beatmap_fid.extractors.mapper_classifier.checkpoint import ClassifierSettings
from beatmap_fid.extractors.mapper_classifier.mel import MelSpectrogram

PAD_TOKEN = 0


def whisper_config(settings: ClassifierSettings):
    """The transformers ``WhisperConfig`` of the backbone, built offline from the settings.

    The attention implementation is left to transformers' default, as the reference leaves it
    (``sdpa`` with current torch): it decides what a window without any event computes.
    """
    from transformers import WhisperConfig

    config = WhisperConfig(
        vocab_size=settings.vocab_size,
        num_mel_bins=settings.d_model,
        d_model=settings.d_model,
        encoder_layers=settings.encoder_layers,
        decoder_layers=settings.decoder_layers,
        encoder_attention_heads=settings.encoder_attention_heads,
        decoder_attention_heads=settings.decoder_attention_heads,
        encoder_ffn_dim=settings.encoder_ffn_dim,
        decoder_ffn_dim=settings.decoder_ffn_dim,
        max_source_positions=settings.src_seq_len // 2,
        max_target_positions=settings.tgt_seq_len,
        pad_token_id=PAD_TOKEN,
        bos_token_id=None,
        eos_token_id=None,
        decoder_start_token_id=PAD_TOKEN,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        activation_function="gelu",
        scale_embedding=False,
        use_cache=False,
    )
    return config


@dataclass
class ClassifierOutput:
    """Feature vectors (B, projector_dim) and class logits (B, num_classes), float32."""

    features: torch.Tensor
    logits: torch.Tensor


class MapperClassifier(nn.Module):
    """Whisper encoder-decoder over (audio window, beatmap tokens) with a projection head."""

    def __init__(self, settings: ClassifierSettings):
        super().__init__()
        from transformers import WhisperModel

        self.settings = settings
        self.transformer = WhisperModel(whisper_config(settings))
        self.decoder_embedder = nn.Embedding(settings.vocab_size, settings.d_model)
        nn.init.normal_(self.decoder_embedder.weight, mean=0.0, std=1.0)
        self.spectrogram = MelSpectrogram(
            settings.sample_rate, settings.n_fft, settings.n_mels, settings.hop_length
        )
        self.encoder_embedder = nn.Linear(settings.n_mels, settings.d_model)
        self.projector = nn.Linear(settings.d_model, settings.projector_dim)
        self.classifier = nn.Linear(settings.projector_dim, settings.num_classes)

    def forward(self, samples: torch.Tensor, tokens: torch.Tensor) -> ClassifierOutput:
        """``samples`` (B, window_samples) float waveform, ``tokens`` (B, tgt_seq_len) int64."""
        frames = self.spectrogram(samples)
        return self.forward_frames(frames, tokens)

    def forward_frames(self, frames: torch.Tensor, tokens: torch.Tensor) -> ClassifierOutput:
        """Same as ``forward`` from mel frames (B, src_seq_len, n_mels)."""
        input_features = self.encoder_embedder(frames).transpose(1, 2)
        output = self.transformer(
            input_features=input_features,
            decoder_inputs_embeds=self.decoder_embedder(tokens),
            decoder_attention_mask=tokens != PAD_TOKEN,
            use_cache=False,
        )
        features = self.projector(output.last_hidden_state).float().mean(dim=1)
        return ClassifierOutput(features=features, logits=self.classifier(features).float())
