"""Mapper classifier: mel front end, reference-compatible checkpoints, extractor and CLI.

Reference checkpoints pickle the reference's own classes; they are emulated here by throwaway
modules named ``libs.tokenizer.*`` and a real OmegaConf ``DictConfig``, saved with small random
weights (plus one test at the full whisper-base shapes).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from beatmap_fid.errors import ExtractorError, SkipLog, WeightsNotFoundError  # noqa: E402
from beatmap_fid.extractors.base import build_extractor, config_hash  # noqa: E402
from beatmap_fid.extractors.mapper_classifier.checkpoint import (  # noqa: E402
    ClassifierSettings,
    LoadedClassifier,
    TokenizerState,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from beatmap_fid.extractors.mapper_classifier.extractor import (  # noqa: E402
    MapperClassifierExtractor,
    WindowPayload,
)
from beatmap_fid.extractors.mapper_classifier.mel import MelSpectrogram  # noqa: E402

TINY = {
    "d_model": 64,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "projector_dim": 32,
    "n_mels": 64,
}
SHORT_WINDOWS = {"src_seq_len": 128, "tgt_seq_len": 128}
ADRIFT = "1171207 Disasterpeace - Adrift"
MARISA = "8393 Silver Forest - Marisa Spark"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run far faster on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- Emulated reference classes ----------------------------------------------------------------

_REFERENCE_EVENT_MODULE = """
import dataclasses
from enum import Enum

class EventType(Enum):
    TIME_SHIFT = "t"
    SNAPPING = "snap"
    DISTANCE = "dist"
    NEW_COMBO = "new_combo"
    HITSOUND = "hitsound"
    VOLUME = "volume"
    CIRCLE = "circle"
    SPINNER = "spinner"
    SPINNER_END = "spinner_end"
    SLIDER_HEAD = "slider_head"
    BEZIER_ANCHOR = "bezier_anchor"
    PERFECT_ANCHOR = "perfect_anchor"
    CATMULL_ANCHOR = "catmull_anchor"
    RED_ANCHOR = "red_anchor"
    LAST_ANCHOR = "last_anchor"
    SLIDER_END = "slider_end"
    BEAT = "beat"
    MEASURE = "measure"
    TIMING_POINT = "timing_point"
    POS_X = "pos_x"
    POS_Y = "pos_y"

@dataclasses.dataclass
class EventRange:
    type: EventType
    min_value: int
    max_value: int

@dataclasses.dataclass
class Event:
    type: EventType
    value: int = 0
"""

_REFERENCE_TOKENIZER_MODULE = """
from libs.tokenizer.event import EventRange, EventType

class Tokenizer:
    __slots__ = ["offset", "event_ranges", "input_event_ranges", "num_classes", "event_range",
                 "event_start", "event_end", "vocab_size", "beatmap_mapper", "mapper_idx"]

    def __init__(self, max_time_shift, mapper_ids):
        T = EventType
        self.offset = 1
        self.event_ranges = [
            EventRange(T.TIME_SHIFT, 0, max_time_shift), EventRange(T.SNAPPING, 0, 16),
            EventRange(T.POS_X, -256, 768), EventRange(T.POS_Y, -256, 640),
            EventRange(T.NEW_COMBO, 0, 0), EventRange(T.HITSOUND, 0, 72),
            EventRange(T.VOLUME, 0, 100),
        ] + [EventRange(t, 0, 0) for t in (
            T.CIRCLE, T.SPINNER, T.SPINNER_END, T.SLIDER_HEAD, T.BEZIER_ANCHOR,
            T.PERFECT_ANCHOR, T.CATMULL_ANCHOR, T.RED_ANCHOR, T.LAST_ANCHOR, T.SLIDER_END,
            T.BEAT, T.MEASURE)]
        self.event_range = {er.type: er for er in self.event_ranges}
        self.event_start, self.event_end = {}, {}
        offset = self.offset
        for er in self.event_ranges:
            self.event_start[er.type] = offset
            offset += er.max_value - er.min_value + 1
            self.event_end[er.type] = offset
        self.vocab_size = offset
        self.beatmap_mapper = {1000 + i: m for i, m in enumerate(mapper_ids)}
        self.mapper_idx = {m: i for i, m in enumerate(mapper_ids)}
        self.num_classes = len(self.mapper_idx)
"""


@pytest.fixture
def reference_classes(monkeypatch):
    """Modules ``libs.tokenizer.event`` / ``libs.tokenizer.tokenizer`` as the reference has them."""
    for name in ("libs", "libs.tokenizer"):
        package = types.ModuleType(name)
        package.__path__ = []
        monkeypatch.setitem(sys.modules, name, package)
    modules = {}
    for name, source in (
        ("libs.tokenizer.event", _REFERENCE_EVENT_MODULE),
        ("libs.tokenizer.tokenizer", _REFERENCE_TOKENIZER_MODULE),
    ):
        module = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, module)
        exec(source, module.__dict__)
        modules[name] = module
    return modules["libs.tokenizer.tokenizer"].Tokenizer


def reference_config(settings: ClassifierSettings, *, overwrite: bool):
    """The reference's training configuration as an OmegaConf DictConfig (with interpolations)."""
    omegaconf = pytest.importorskip("omegaconf")
    model = {
        "name": settings.backbone,
        "input_features": True,
        "classifier_proj_size": settings.projector_dim,
        "spectrogram": {
            "sample_rate": settings.sample_rate,
            "hop_length": settings.hop_length,
            "n_fft": settings.n_fft,
            "n_mels": settings.n_mels,
        },
    }
    if overwrite:
        model["overwrite"] = {
            key: getattr(settings, key)
            for key in (
                "d_model",
                "encoder_layers",
                "decoder_layers",
                "encoder_attention_heads",
                "decoder_attention_heads",
                "encoder_ffn_dim",
                "decoder_ffn_dim",
            )
        }
    config = omegaconf.OmegaConf.create(
        {
            "compile": True,
            "data": {
                "src_seq_len": settings.src_seq_len,
                "tgt_seq_len": settings.tgt_seq_len,
                "sample_rate": "${..model.spectrogram.sample_rate}",
                "hop_length": "${..model.spectrogram.hop_length}",
                "num_classes": settings.num_classes,
                "types_first": True,
                "add_timing": True,
                "add_snapping": True,
                "add_hitsounds": True,
                "add_distances": False,
                "add_positions": True,
                "position_precision": 1,
                "position_split_axes": True,
                "position_range": [-256, 768, -256, 640],
                "mappers_path": "../../../datasets/beatmap_users.json",
            },
            "model": model,
            "optim": {"name": "adamw", "base_lr": 1e-2},
        }
    )
    omegaconf.OmegaConf.set_struct(config, True)
    return config


def write_reference_checkpoint(
    path: Path,
    tokenizer_class,
    *,
    size: str = "tiny",
    mapper_ids=(4452992, 896613, 3723568),
    compiled: bool = True,
    seed: int = 0,
    **values,
):
    """A Lightning ``model.ckpt`` in the reference's layout with random weights; returns
    (the model whose weights were saved, its settings)."""
    probe = ClassifierSettings.for_size(size, num_classes=len(mapper_ids), vocab_size=1, **values)
    max_shift = int((probe.src_seq_len - 1) * probe.hop_length * 1000 / probe.sample_rate / 10)
    tokenizer = tokenizer_class(max_shift, list(mapper_ids))
    settings = ClassifierSettings.for_size(
        size, num_classes=len(mapper_ids), vocab_size=tokenizer.vocab_size, **values
    )
    torch.manual_seed(seed)
    model = build_model(settings).eval()
    prefix = "model._orig_mod." if compiled else "model."
    checkpoint = {
        "epoch": 7,
        "global_step": 65536,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {prefix + key: value for key, value in model.state_dict().items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 7}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss'}": {
                "best_model_score": torch.tensor(1.25),
                "best_model_path": "/workspace/ckpt/epoch=6.ckpt",
            }
        },
        "optimizer_states": [],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "args": reference_config(settings, overwrite=size == "tiny"),
            "tokenizer": tokenizer,
        },
    }
    torch.save(checkpoint, path)
    return model, settings


def random_batch(settings: ClassifierSettings, n: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    samples = torch.randn(n, settings.window_samples, generator=generator) * 0.1
    tokens = torch.randint(1, settings.vocab_size, (n, settings.tgt_seq_len), generator=generator)
    tokens[:, settings.tgt_seq_len // 3 :] = 0
    tokens[-1] = 0  # a window without events
    return samples, tokens


# --- Mel front end -------------------------------------------------------------------------------


def _nnaudio_mel(n_fft: int, n_mels: int):
    features = pytest.importorskip("nnAudio.features")
    return features.MelSpectrogram(
        sr=16000,
        n_fft=n_fft,
        n_mels=n_mels,
        hop_length=128,
        center=True,
        fmin=0,
        fmax=8000,
        pad_mode="constant",
        verbose=False,
    )


@pytest.mark.parametrize(("n_fft", "n_mels"), [(1024, 388), (512, 64)])
def test_mel_buffers_are_nnaudios(n_fft, n_mels):
    reference = _nnaudio_mel(n_fft, n_mels).state_dict()
    ours = MelSpectrogram(16000, n_fft, n_mels, 128).state_dict()
    assert sorted(ours) == sorted(f"transform.{key}" for key in reference)
    for key, value in reference.items():
        assert torch.equal(ours[f"transform.{key}"], value), key


def test_mel_matches_nnaudio_on_real_audio(shared_data):
    from beatmap_fid.beatmap.audio import load_audio

    audio = load_audio(shared_data / "beatmaps" / "songs" / ADRIFT / "audio.mp3", 16000)
    window = 1023 * 128
    batch = torch.from_numpy(audio[: 3 * window].reshape(3, window).copy())
    with torch.no_grad():
        expected = _nnaudio_mel(1024, 388)(batch)
        ours = MelSpectrogram(16000, 1024, 388, 128)(batch).transpose(1, 2)
    assert ours.shape == expected.shape == (3, 388, 1024)
    assert float((ours - expected).norm() / expected.norm()) < 1e-5
    per_frame = (ours - expected).norm(dim=1) / expected.norm(dim=1).clamp_min(1e-30)
    assert float(per_frame.max()) < 1e-5


# --- Model -------------------------------------------------------------------------------------


def reference_whisper(settings: ClassifierSettings, state_dict):
    """transformers' ``WhisperModel`` built as the reference builds its backbone: a Whisper
    config with the attributes it overrides set afterwards, the default attention."""
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(
        d_model=settings.d_model,
        encoder_layers=settings.encoder_layers,
        decoder_layers=settings.decoder_layers,
        encoder_attention_heads=settings.encoder_attention_heads,
        decoder_attention_heads=settings.decoder_attention_heads,
        encoder_ffn_dim=settings.encoder_ffn_dim,
        decoder_ffn_dim=settings.decoder_ffn_dim,
    )
    config.vocab_size = settings.vocab_size
    config.use_cache = False
    config.num_mel_bins = config.d_model
    config.pad_token_id = 0
    config.max_source_positions = settings.src_seq_len // 2
    config.max_target_positions = settings.tgt_seq_len
    whisper = WhisperModel(config).eval()
    whisper.load_state_dict(state_dict)
    return whisper


def reference_features(model, samples, tokens, decoder_attention_mask=None):
    """Feature vectors the reference computes: nnAudio mel, ``encoder_embedder``, the reference's
    Whisper called with ``decoder_attention_mask = tokens != pad``, projector averaged."""
    settings = model.settings
    mel = _nnaudio_mel(settings.n_fft, settings.n_mels)
    whisper = reference_whisper(settings, model.transformer.state_dict())
    if decoder_attention_mask is None:
        decoder_attention_mask = tokens != 0
    with torch.no_grad():
        frames = mel(samples).permute(0, 2, 1)
        output = whisper(
            input_features=torch.swapaxes(model.encoder_embedder(frames), 1, 2),
            decoder_inputs_embeds=model.decoder_embedder(tokens),
            decoder_attention_mask=decoder_attention_mask,
        )
        return model.projector(output.last_hidden_state).mean(dim=1)


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_model_matches_the_reference_backbone_on_empty_windows():
    """Windows with and without events: features equal the reference's; letting the rows of an
    empty window attend to every position instead would change them."""
    settings = ClassifierSettings.for_size(
        "tiny", num_classes=3, vocab_size=50, **TINY, **SHORT_WINDOWS
    )
    torch.manual_seed(0)
    model = build_model(settings).eval()
    samples, tokens = random_batch(settings)
    assert not tokens[-1].any() and tokens[0].any()
    with torch.no_grad():
        ours = model(samples, tokens).features
    expected = reference_features(model, samples, tokens)
    assert cosines(ours, expected).min() >= 0.99999
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)

    length = settings.tgt_seq_len
    allowed = torch.ones(length, length, dtype=torch.bool).tril() & (tokens != 0)[:, None, :]
    unmasked = allowed | ~allowed.any(dim=-1, keepdim=True)
    opened = reference_features(model, samples, tokens, unmasked[:, None])
    assert cosines(opened[:-1], expected[:-1]).min() >= 0.99999
    assert cosines(opened[-1:], expected[-1:])[0] < 0.9999  # fails the parity bound


# --- Checkpoints -------------------------------------------------------------------------------


def test_reference_checkpoint_loads_strictly(tmp_path, reference_classes):
    path = tmp_path / "model.ckpt"
    source, settings = write_reference_checkpoint(path, reference_classes, **TINY, **SHORT_WINDOWS)
    loaded = load_checkpoint(path)
    assert loaded.settings == settings
    assert loaded.config["data"]["sample_rate"] == 16000  # interpolation resolved
    assert loaded.tokenizer.labels() == [4452992, 896613, 3723568]
    assert loaded.tokenizer.event_ranges[0] == ("t", 0, 101)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    theirs, ours = source.state_dict(), loaded.model.state_dict()
    assert sorted(theirs) == sorted(ours)
    assert all(torch.equal(theirs[key], ours[key]) for key in theirs)
    samples, tokens = random_batch(settings)
    with torch.no_grad():
        first = loaded.model(samples, tokens)
        again = loaded.model(samples, tokens)
        expected = source(samples, tokens)
    assert first.features.shape == (3, settings.projector_dim)
    assert first.logits.shape == (3, 3)
    assert torch.isfinite(first.features).all()
    assert torch.equal(first.features, again.features)
    torch.testing.assert_close(first.features, expected.features)
    # a folder holding model.ckpt works too
    assert load_checkpoint(tmp_path).path == path


@pytest.mark.slow
def test_reference_checkpoint_whisper_base_projector_2048(tmp_path, reference_classes):
    path = tmp_path / "model.ckpt"
    source, settings = write_reference_checkpoint(
        path, reference_classes, size="base", projector_dim=2048, compiled=False
    )
    assert (settings.d_model, settings.n_mels, settings.src_seq_len) == (512, 388, 1024)
    assert settings.vocab_size == 2946  # the reference's default vocabulary
    loaded = load_checkpoint(path)
    assert loaded.settings == settings
    assert loaded.model.transformer.config.max_source_positions == 512
    assert loaded.model.transformer.config.max_target_positions == 1024
    samples, tokens = random_batch(settings, n=1)
    tokens[0, :40] = torch.randint(1, settings.vocab_size, (40,))
    with torch.no_grad():
        features = loaded.model(samples, tokens).features
        expected = source(samples, tokens).features
    assert features.shape == (1, 2048)
    torch.testing.assert_close(features, expected)


def test_save_checkpoint_round_trip(tmp_path):
    settings = ClassifierSettings.for_size(
        "tiny", num_classes=2, vocab_size=1, **TINY, **SHORT_WINDOWS
    )
    tokenizer = TokenizerState(
        event_ranges=[("t", 0, 101), ("snap", 0, 16), ("circle", 0, 0)],
        class_index={"Mapper A": 0, "Mapper B": 1},
    )
    settings = dataclasses.replace(settings, vocab_size=tokenizer.vocab_size)
    torch.manual_seed(3)
    model = build_model(settings).eval()
    path = save_checkpoint(
        tmp_path / "ours.ckpt", model, tokenizer, training_state={"global_step": 12}
    )
    raw = torch.load(path, weights_only=True)
    assert all(key.startswith("model.") for key in raw["state_dict"])
    assert {"args", "tokenizer"} <= set(raw["hyper_parameters"])
    loaded = load_checkpoint(path)
    assert loaded.settings == settings
    assert loaded.tokenizer.labels() == ["Mapper A", "Mapper B"]
    assert loaded.training_state["global_step"] == 12
    samples, tokens = random_batch(settings)
    tokens = tokens.clamp(max=settings.vocab_size - 1)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(samples, tokens).features, model(samples, tokens).features
        )


class _RunsCode:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickled_code_is_refused(tmp_path, reference_classes):
    path = tmp_path / "model.ckpt"
    write_reference_checkpoint(path, reference_classes, **TINY, **SHORT_WINDOWS)
    checkpoint = torch.load(path, weights_only=False)
    marker = tmp_path / "pwned"
    checkpoint["hyper_parameters"]["evil"] = _RunsCode(marker)
    torch.save(checkpoint, path)
    with pytest.raises(ExtractorError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_foreign_class_is_refused(tmp_path, reference_classes):
    path = tmp_path / "model.ckpt"
    write_reference_checkpoint(path, reference_classes, **TINY, **SHORT_WINDOWS)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["hyper_parameters"]["where"] = argparse.Namespace(x=1)
    torch.save(checkpoint, path)
    with pytest.raises(ExtractorError, match=r"argparse\.Namespace"):
        load_checkpoint(path)


def test_bad_files_give_clear_errors(tmp_path, reference_classes):
    good = tmp_path / "good.ckpt"
    write_reference_checkpoint(good, reference_classes, **TINY, **SHORT_WINDOWS)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ExtractorError, match="truncated"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ExtractorError, match="not a readable"):
        load_checkpoint(text)
    plain = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(ExtractorError, match="state_dict"):
        load_checkpoint(plain)
    checkpoint = torch.load(good, weights_only=False)
    del checkpoint["state_dict"]["model._orig_mod.projector.bias"]
    torch.save(checkpoint, tmp_path / "missing.ckpt")
    with pytest.raises(ExtractorError, match="do not fit"):
        load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(WeightsNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "absent.ckpt")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(WeightsNotFoundError, match=r"no model\.ckpt"):
        load_checkpoint(tmp_path / "empty_folder")


def test_hub_repo_without_network_names_the_local_alternative(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsNotFoundError, match="local path"):
        load_checkpoint("OliBomby/osu-classifier")


# --- Extractor ---------------------------------------------------------------------------------


@pytest.fixture
def tiny_checkpoint(tmp_path, reference_classes):
    """A reference-layout checkpoint with the real window length and a tiny backbone."""
    path = tmp_path / "model.ckpt"
    write_reference_checkpoint(path, reference_classes, **TINY)
    return path


def _reference_tokens(beatmap, start_sample, settings, tokenizer):
    """Tokens of one window computed the way the reference's classify.py does, event by event."""
    from beatmap_fid.beatmap.events import Event, EventConfig, EventType, beatmap_events

    events, times = beatmap_events(beatmap, EventConfig())
    time = start_sample / settings.sample_rate
    duration = settings.window_samples / settings.sample_rate
    chosen = [
        event
        for event, t in zip(events.to_list(), times.tolist())
        if time <= t / 1000 < time + duration
    ]
    tokens = np.zeros(settings.tgt_seq_len, dtype=np.int64)
    for i, event in enumerate(chosen[: settings.tgt_seq_len]):
        if event.type == EventType.TIME_SHIFT:
            event = Event(EventType.TIME_SHIFT, int((event.value - time * 1000) * 0.1))
        tokens[i] = tokenizer.encode(event)
    return tokens


def test_extractor_windows_labels_and_embeddings(shared_data, tiny_checkpoint):
    from beatmap_fid.beatmap.pcm import load_pcm_audio
    from beatmap_fid.beatmap.reading import read_beatmap

    folder = shared_data / "beatmaps" / "songs" / ADRIFT
    extractor = build_extractor("mapper-classifier", checkpoint=str(tiny_checkpoint), device="cpu")
    assert isinstance(extractor, MapperClassifierExtractor)
    assert extractor.dim == TINY["projector_dim"]
    assert (
        extractor.config["checkpoint_sha256"]
        == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    )
    skipped = SkipLog()
    items = list(extractor.items(folder, skipped))
    settings = extractor.settings
    audio = load_pcm_audio(folder / "audio.mp3", 16000)
    per_map = len(range(0, len(audio) - settings.window_samples, settings.window_samples))
    maps = sorted({item.id.split("#")[0] for item in items})
    assert len(maps) >= 2 and len(items) == per_map * len(maps)
    assert all(entry.reason.startswith("unsupported mode") for entry in skipped.entries)
    first_map = [item for item in items if item.id.startswith(maps[0] + "#")]
    assert [item.id for item in first_map] == [f"{maps[0]}#{k}" for k in range(per_map)]
    assert {item.label for item in items} == {"Vulkin"}

    beatmap = read_beatmap(folder / maps[0])
    for k in (0, 1, per_map - 1):
        start = k * settings.window_samples
        payload = first_map[k].payload
        first = int(start / settings.sample_rate * settings.sample_rate)
        np.testing.assert_array_equal(payload.audio, audio[first : first + settings.window_samples])
        np.testing.assert_array_equal(
            payload.tokens, _reference_tokens(beatmap, start, settings, extractor.tokenizer)
        )
    assert any((item.payload.tokens > 0).sum() > 10 for item in first_map)
    assert all(item.n_events == int((item.payload.tokens != 0).sum()) for item in items)

    payloads = [item.payload for item in first_map]
    vectors = extractor.embed(payloads)
    assert vectors.shape == (per_map, extractor.dim) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_array_equal(vectors, extractor.embed(payloads))
    single = np.concatenate([extractor.embed([p]) for p in payloads[:2]])
    np.testing.assert_allclose(single, vectors[:2], rtol=1e-4, atol=1e-6)
    assert extractor.embed([]).shape == (0, extractor.dim)

    bf16 = MapperClassifierExtractor(extractor.loaded, device="cpu", precision="bfloat16")
    assert config_hash(bf16.config) != config_hash(extractor.config)
    np.testing.assert_allclose(bf16.embed(payloads[:1]), vectors[:1], rtol=0.1, atol=0.05)


@pytest.fixture(scope="module")
def loud_song(tmp_path_factory):
    """A song folder: 26 s of loud 44.1 kHz stereo MP3 (decoded float peaks near 2.2) and a
    map whose objects end after 12 s, so its third window has no events."""
    from loud_audio import music_like, write_loud

    from beatmap_fid.beatmap.pcm import ffmpeg_available
    from beatmap_fid.beatmap.synthetic import synthetic_beatmap

    if not ffmpeg_available():
        pytest.skip("needs the ffmpeg and ffprobe programs to make and read the MP3")
    folder = tmp_path_factory.mktemp("loud_song")
    write_loud(folder / "song.mp3", music_like(26.0, seed=5), 2.2)
    text = synthetic_beatmap(7, "flow", duration_s=12.0, creator="Loud", audio_filename="song.mp3")
    (folder / "loud.osu").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    "size",
    ["tiny", pytest.param("base", marks=pytest.mark.slow)],
)
def test_features_match_the_reference_pipeline_on_loud_stereo_mp3(
    tmp_path, reference_classes, loud_song, size
):
    """Audio through pydub + ffmpeg, tokens event by event, transformers' WhisperModel with
    ``decoder_attention_mask``: our windows' audio and tokens are identical and the features
    agree to cosine 0.99999 in every window, including one without events."""
    from loud_audio import pydub_waveform

    from beatmap_fid.beatmap.reading import read_beatmap

    torch.set_num_threads(2)  # restored by one_torch_thread
    values = TINY if size == "tiny" else {"projector_dim": 2048}
    path = tmp_path / "model.ckpt"
    write_reference_checkpoint(path, reference_classes, size=size, compiled=False, **values)
    extractor = build_extractor(
        "mapper-classifier", checkpoint=str(path), device="cpu", decoder="ffmpeg"
    )
    items = list(extractor.items(loud_song, SkipLog()))
    assert [item.id.split("#")[1] for item in items] == ["0", "1", "2"]

    settings = extractor.settings
    waveform = pydub_waveform(loud_song / "song.mp3")
    beatmap = read_beatmap(loud_song / "loud.osu")
    starts = [k * settings.window_samples for k in range(len(items))]
    rate, length = settings.sample_rate, settings.window_samples
    firsts = [int(s / rate * rate) for s in starts]  # the reference's int(time * sample_rate)
    samples = np.stack([waveform[first : first + length] for first in firsts])
    tokens = np.stack(
        [_reference_tokens(beatmap, s, settings, extractor.tokenizer) for s in starts]
    )
    for item, audio, window_tokens in zip(items, samples, tokens):
        np.testing.assert_array_equal(item.payload.audio, audio)
        np.testing.assert_array_equal(item.payload.tokens, window_tokens)
    assert tokens[0].any() and not tokens[2].any()

    ours = extractor.embed([item.payload for item in items])
    expected = reference_features(
        extractor.model, torch.from_numpy(samples), torch.from_numpy(tokens)
    ).numpy()
    assert ours.shape == (3, settings.projector_dim)
    assert cosines(ours, expected).min() >= 0.99999


def test_decoder_option_is_recorded_and_soundfile_stays_close(tiny_checkpoint, loud_song):
    """libsndfile's decoding differs from ffmpeg's by single integer steps: the stores keep the
    two apart, and the features stay within the parity bound anyway."""
    extractors = {
        decoder: build_extractor(
            "mapper-classifier", checkpoint=str(tiny_checkpoint), device="cpu", decoder=decoder
        )
        for decoder in ("ffmpeg", "soundfile")
    }
    assert all(decoder in e.config["audio"] for decoder, e in extractors.items())
    assert config_hash(extractors["ffmpeg"].config) != config_hash(extractors["soundfile"].config)
    ffmpeg_items, soundfile_items = (
        list(e.items(loud_song, SkipLog())) for e in extractors.values()
    )
    assert [i.id for i in ffmpeg_items] == [i.id for i in soundfile_items]
    for a, b in zip(ffmpeg_items, soundfile_items):
        np.testing.assert_array_equal(a.payload.tokens, b.payload.tokens)
        assert 0 < np.abs(a.payload.audio - b.payload.audio).max() < 1e-3
    ours = extractors["soundfile"].embed([i.payload for i in soundfile_items])
    reference = extractors["ffmpeg"].embed([i.payload for i in ffmpeg_items])
    assert cosines(ours, reference).min() >= 0.99999


def test_ffmpeg_decoder_without_ffmpeg_is_one_clear_line(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ExtractorError, match=r"ffmpeg and ffprobe .* install ffmpeg"):
        build_extractor("mapper-classifier", checkpoint=str(tiny_checkpoint), decoder="ffmpeg")
    fallback = build_extractor("mapper-classifier", checkpoint=str(tiny_checkpoint), device="cpu")
    assert fallback.decoder == "soundfile" and "soundfile" in fallback.config["audio"]


def test_maps_without_audio_are_skipped(shared_data, tiny_checkpoint):
    extractor = build_extractor("mapper-classifier", checkpoint=str(tiny_checkpoint), device="cpu")
    skipped = SkipLog()
    items = list(extractor.items(shared_data / "beatmaps" / "maps" / "llllllllll__slider", skipped))
    assert items == []
    assert len(skipped) > 0
    assert all(entry.reason.startswith("no audio") for entry in skipped.entries)


# --- CLI ---------------------------------------------------------------------------------------


def _run_cli(argv, capsys):
    from beatmap_fid.cli import classifier

    parser = argparse.ArgumentParser()
    classifier.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(argv)
    assert args.run(args) == 0
    return capsys.readouterr().out


def test_classify_cli(shared_data, tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "song"
    shutil.copytree(shared_data / "beatmaps" / "songs" / MARISA, folder)
    beatmap = sorted(folder.glob("*.osu"))[0]
    users = tmp_path / "beatmap_users.json"
    users.write_text(
        json.dumps(
            [
                {"id": 1, "user_id": 4452992, "username": ["First Mapper"]},
                {"id": 2, "user_id": 896613, "username": []},
            ]
        )
    )
    common = [str(beatmap), "--checkpoint", str(tiny_checkpoint), "--device", "cpu", "--json"]
    average = json.loads(
        _run_cli(["classify", *common, "--top", "3", "--mappers", str(users)], capsys)
    )
    ranking = average["average"]
    assert [row["rank"] for row in ranking] == [1, 2, 3]
    assert sorted(row["mapper"] for row in ranking) == [896613, 3723568, 4452992]
    probabilities = [row["probability"] for row in ranking]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-6)
    names = {row["mapper"]: row["name"] for row in ranking}
    assert names[4452992] == "First Mapper" and names[896613] == "Unknown"
    assert names[3723568] is None

    windows = json.loads(_run_cli(["classify", *common, "--all-windows", "--top", "1"], capsys))
    assert len(windows["windows"]) >= 2
    assert [w["start_seconds"] for w in windows["windows"]][:2] == [0.0, 8.184]
    one = json.loads(_run_cli(["classify", *common, "--time", "8.184", "--top", "2"], capsys))
    assert len(one["windows"]) == 1
    assert one["windows"][0]["top"][0]["logit"] == pytest.approx(
        windows["windows"][1]["top"][0]["logit"], rel=1e-4
    )
    text = _run_cli(["classify", *common[:-1], "--top", "3", "--mappers", str(users)], capsys)
    assert "First Mapper (4452992)" in text and "averaged over" in text


# --- Speed options -------------------------------------------------------------------------------


def _short_classifier(seed: int = 4) -> LoadedClassifier:
    """A tiny classifier over short windows (128 mel frames and tokens), loaded as from a file."""
    tokenizer = TokenizerState(
        event_ranges=[("t", 0, 101), ("snap", 0, 16), ("circle", 0, 0)],
        class_index={"Mapper A": 0, "Mapper B": 1},
    )
    settings = ClassifierSettings.for_size(
        "tiny", num_classes=2, vocab_size=tokenizer.vocab_size, **TINY, **SHORT_WINDOWS
    )
    torch.manual_seed(seed)
    model = build_model(settings).eval()
    return LoadedClassifier(model, settings, tokenizer, settings.to_config(), Path(), "random")


def _payloads(settings: ClassifierSettings, n: int) -> list[WindowPayload]:
    samples, tokens = random_batch(settings, n)
    tokens = tokens.clamp(max=settings.vocab_size - 1)
    return [WindowPayload(s.numpy(), t.numpy()) for s, t in zip(samples, tokens)]


def test_window_batch_runs_windows_in_chunks_with_the_same_vectors():
    loaded = _short_classifier()
    payloads = _payloads(loaded.settings, 5)
    whole = MapperClassifierExtractor(loaded, device="cpu")
    assert whole.window_batch == 32 and "compile" not in whole.config
    features, logits = whole.forward(payloads)
    chunked = MapperClassifierExtractor(loaded, device="cpu", window_batch=2)
    chunk_features, chunk_logits = chunked.forward(payloads)
    np.testing.assert_allclose(chunk_features, features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunk_logits, logits, rtol=1e-5, atol=1e-6)
    assert config_hash(chunked.config) == config_hash(whole.config)  # batching is not recorded
    assert np.abs(features[0] - features[1]).max() > 1e-3  # other windows, other vectors
    with pytest.raises(ExtractorError, match="window_batch must be"):
        MapperClassifierExtractor(loaded, device="cpu", window_batch=0)


def test_bfloat16_autocast_stays_close_to_float32():
    loaded = _short_classifier()
    payloads = _payloads(loaded.settings, 4)
    exact = MapperClassifierExtractor(loaded, device="cpu").embed(payloads)
    fast = MapperClassifierExtractor(loaded, device="cpu", precision="bfloat16").embed(payloads)
    assert cosines(fast, exact).min() > 0.999
    assert np.abs(fast - exact).max() > 0  # it did run in bfloat16


@pytest.mark.slow
def test_compiled_classifier_agrees_with_float32_and_pads_the_last_chunk():
    loaded = _short_classifier()
    payloads = _payloads(loaded.settings, 5)
    exact = MapperClassifierExtractor(loaded, device="cpu").embed(payloads)
    compiled = MapperClassifierExtractor(loaded, device="cpu", compile=True, window_batch=4)
    assert compiled.config["compile"].startswith("torch.compile")
    vectors = compiled.embed(payloads)  # a chunk of 4, then 1 window filled up to 4
    assert vectors.shape == exact.shape
    np.testing.assert_allclose(vectors, exact, rtol=1e-4, atol=1e-5)
    assert compiled.embed([]).shape == (0, compiled.dim)


def test_compile_without_a_cxx_compiler_is_one_clear_line(monkeypatch):
    from beatmap_fid.extractors import inference

    monkeypatch.setattr(inference, "cxx_compiler", lambda: None)
    with pytest.raises(ExtractorError, match=r"needs a C\+\+ compiler"):
        MapperClassifierExtractor(_short_classifier(), device="cpu", compile=True)


@pytest.mark.gpu
@pytest.mark.parametrize("options", [{}, {"precision": "bfloat16"}, {"compile": True}])
def test_classifier_on_cuda_agrees_with_the_cpu(options):
    loaded = _short_classifier()
    payloads = _payloads(loaded.settings, 3)
    exact = MapperClassifierExtractor(loaded, device="cpu").embed(payloads)
    on_gpu = MapperClassifierExtractor(_short_classifier(), device="cuda", **options)
    assert cosines(on_gpu.embed(payloads), exact).min() > 0.999


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compile": "yes"}, "compile must be true or false"),
        ({"window_batch": "8"}, "window_batch must be a whole number"),
        ({"window_batch": 0}, "window_batch must be a whole number"),
        ({"precision": "float8"}, "precision must be one of"),
    ],
)
def test_invalid_speed_option_values_are_one_clear_line(options, message):
    with pytest.raises(ExtractorError, match=message) as refused:
        MapperClassifierExtractor(_short_classifier(), device="cpu", **options)
    assert "\n" not in str(refused.value)
