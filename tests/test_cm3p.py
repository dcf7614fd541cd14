"""The ``cm3p`` extractor: checkpoint layout, tokens, log-mel, towers, embeddings, describe.

Checkpoints are tiny ones written by our own code in the reference's folder layout (no real
CM3P checkpoint can be downloaded here); the facts checked against were measured by running
the reference (OliBomby/CM3P, transformers 4.57.3) on such checkpoints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from beatmap_fid.beatmap.audio_librosa import load_audio_librosa  # noqa: E402
from beatmap_fid.beatmap.reading import parse_beatmap_text, read_beatmap_file  # noqa: E402
from beatmap_fid.errors import ExtractorError, SkipLog, WeightsNotFoundError  # noqa: E402
from beatmap_fid.extractors.base import build_extractor, config_hash  # noqa: E402
from beatmap_fid.extractors.cm3p import random_checkpoint, read_checkpoint  # noqa: E402
from beatmap_fid.extractors.cm3p.mel import log_mel, pad_window_audio  # noqa: E402
from beatmap_fid.extractors.cm3p.processor import map_windows  # noqa: E402
from beatmap_fid.extractors.cm3p.tokens import BeatmapTokenizer, pad_batch  # noqa: E402

TABLES = {
    "modes": {"0": "osu", "1": "taiko", "2": "fruits", "3": "mania"},
    "statuses": {"-2": "graveyard", "1": "ranked", "4": "loved"},
    "mappers": {"2": "peppy", "5000": "OliBomby", "124493": "Cookiezi"},
    "tags": {
        "1": {"name": "style/messy", "ruleset_id": 0},
        "2": {"name": "rhythm/simple", "ruleset_id": None},
    },
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(
        tmp_path_factory.mktemp("cm3p") / "tiny", "tiny", seed=0, metadata_tables=TABLES
    )


@pytest.fixture(scope="module")
def extractor(checkpoint):
    return build_extractor("cm3p", checkpoint=str(checkpoint), device="cpu")


def _write_wav(path: Path, seconds: float, seed: int = 0, rate: int = 16000) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    samples = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))
    soundfile.write(str(path), samples.astype(np.float32), rate)
    return path


def _osu(objects: list[str], *, timing: str = "0,500,4,2,0,60,1,0", creator: str = "tester") -> str:
    return "\n".join(
        [
            "osu file format v14",
            "",
            "[General]",
            "AudioFilename: audio.wav",
            "Mode: 0",
            "",
            "[Metadata]",
            "Title:t",
            "Artist:a",
            f"Creator:{creator}",
            "Version:v",
            "BeatmapID:1234",
            "",
            "[Difficulty]",
            "HPDrainRate:5",
            "CircleSize:4",
            "OverallDifficulty:5",
            "ApproachRate:5",
            "SliderMultiplier:1",
            "SliderTickRate:1",
            "",
            "[TimingPoints]",
            timing,
            "",
            "[HitObjects]",
            *objects,
            "",
        ]
    )


# --- checkpoint layout ------------------------------------------------------------------------


def test_checkpoint_folder_has_the_reference_layout(checkpoint):
    files = sorted(
        p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()
    )
    assert files == [
        "audio_feature_extractor/preprocessor_config.json",
        "beatmap_parser/preprocessor_config.json",
        "beatmap_tokenizer/special_tokens_map.json",
        "beatmap_tokenizer/tokenizer_config.json",
        "beatmap_tokenizer/vocab.json",
        "config.json",
        "metadata_tokenizer/special_tokens_map.json",
        "metadata_tokenizer/tokenizer_config.json",
        "metadata_tokenizer/vocab.json",
        "model.safetensors",
        "processor_config.json",
    ]
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "CM3P" and config["architectures"] == ["CM3PModel"]
    beatmap = config["beatmap_config"]
    # token ids the reference's training script writes (measured): [BOS] 3958 ... [AUDIO] 3967
    assert (beatmap["vocab_size"], beatmap["pad_token_id"], beatmap["bos_token_id"]) == (
        3968,
        3962,
        3958,
    )
    assert (beatmap["eos_token_id"], beatmap["audio_token_id"], beatmap["audio_eos_token_id"]) == (
        3959,
        3967,
        3966,
    )
    assert beatmap["audio_sos_token_id"] is None and beatmap["cls_embed"] is True
    assert (
        beatmap["model_type"] == "CM3PBeatmap"
        and beatmap["audio_config"]["model_type"] == "CM3PAudio"
    )
    for key in (
        "global_attn_every_n_layers",
        "local_attention",
        "global_rope_theta",
        "local_rope_theta",
    ):
        assert (
            key in beatmap and key in beatmap["audio_config"] and key in config["metadata_config"]
        )
    assert config["metadata_config"]["global_attn_every_n_layers"] == 1

    vocab = json.loads((checkpoint / "beatmap_tokenizer/vocab.json").read_text())
    assert len(vocab) == 3958 and vocab["[CIRCLE]"] == 0 and vocab["[VOLUME_100]"] == 3957
    assert (
        vocab["[CIRCLE_NEW_COMBO]"] == 23
        and vocab["[TIME_SHIFT_0]"] == 25
        and "[NEW_COMBO]" not in vocab
    )
    tokenizer = json.loads((checkpoint / "beatmap_tokenizer/tokenizer_config.json").read_text())
    added = {int(k): v["content"] for k, v in tokenizer["added_tokens_decoder"].items()}
    assert added == dict(
        enumerate(
            [
                "[BOS]",
                "[EOS]",
                "[UNK]",
                "[SEP]",
                "[PAD]",
                "[CLS]",
                "[MASK]",
                "[AUDIO_BOS]",
                "[AUDIO_EOS]",
                "[AUDIO]",
            ],
            start=3958,
        )
    )
    assert tokenizer["tokenizer_class"] == "CM3PBeatmapTokenizer" and tokenizer["max_time"] == 16000
    assert tokenizer["add_cls_token"] is True and tokenizer["separate_new_combo_token"] is False
    meta = json.loads((checkpoint / "metadata_tokenizer/tokenizer_config.json").read_text())
    assert (
        meta["mappers"] == TABLES["mappers"] and meta["tokenizer_class"] == "CM3PMetadataTokenizer"
    )
    meta_added = [
        v["content"]
        for _, v in sorted(meta["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))
    ]
    assert meta_added[:4] == ["[BOS]", "[EOS]", "[PAD]", "[CLS]"] and meta_added[-1] == "[TAG_UNK]"
    processor = json.loads((checkpoint / "processor_config.json").read_text())["default_kwargs"]
    assert processor["beatmap_kwargs"]["window_length_sec"] == 16.0
    assert processor["beatmap_kwargs"]["max_length"] == 2000
    assert processor["audio_kwargs"]["pad_to_multiple_of"] == 256000


def test_safetensors_keys_and_shapes_match_the_reference(checkpoint):
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), "pt") as handle:
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        assert handle.metadata() == {"format": "pt"}
    # tiny sizes: beatmap 32 wide / 4 layers, audio 16 / 2, metadata 16 / 2
    expected = {
        "beatmap_model.audio_encoder.conv1.weight": (16, 80, 3),
        "beatmap_model.audio_encoder.conv2.weight": (16, 16, 3),
        "beatmap_model.audio_encoder.encoder.embeddings.tok_embeddings.weight": (1, 16),
        "beatmap_model.audio_encoder.encoder.layers.1.attn_norm.weight": (16,),
        "beatmap_model.audio_encoder.encoder.layers.0.mlp.Wi.weight": (64, 16),
        "beatmap_model.audio_encoder.multi_modal_projector.linear_1.weight": (32, 64),
        "beatmap_model.audio_encoder.multi_modal_projector.linear_2.weight": (32, 32),
        "beatmap_model.encoder.embeddings.tok_embeddings.weight": (3968, 32),
        "beatmap_model.encoder.layers.3.attn.Wqkv.weight": (96, 32),
        "beatmap_model.encoder.final_norm.weight": (32,),
        "beatmap_projection.weight": (512, 32),
        "metadata_model.encoder.embeddings.tok_embeddings.weight": (
            len(_metadata_ids(checkpoint)),
            16,
        ),
        "metadata_projection.weight": (512, 16),
        "logit_scale": (),
        "head.dense.weight": (32, 32),
        "decoder.weight": (3968, 32),
        "decoder.bias": (3968,),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert "beatmap_model.encoder.layers.0.attn_norm.weight" not in shapes  # identity in layer 0
    assert not any(
        "inv_freq" in k or ("bias" in k and "decoder" not in k and "conv" not in k) for k in shapes
    )


def _metadata_ids(checkpoint: Path) -> dict:
    return read_checkpoint(checkpoint).metadata_vocab.ids


def test_checkpoint_python_files_are_never_run(checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "with_code"
    shutil.copytree(checkpoint, folder)
    marker = tmp_path / "ran"
    (folder / "modeling_cm3p.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_cm3p.CM3PModel"}
    (folder / "config.json").write_text(json.dumps(config))
    built = build_extractor("cm3p", checkpoint=str(folder), device="cpu")
    assert built.dim == 512 and not marker.exists()


def test_other_weights_give_another_configuration(checkpoint, tmp_path):
    other = random_checkpoint(tmp_path / "other", "tiny", seed=1, metadata_tables=TABLES)
    first, second = read_checkpoint(checkpoint), read_checkpoint(other)
    assert first.config == second.config  # same shapes and settings
    assert first.sha256 != second.sha256
    assert read_checkpoint(checkpoint).sha256 == first.sha256


def test_missing_checkpoint_and_offline_hub_give_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError, match="checkpoint folder or a Hugging Face repo id"):
        read_checkpoint(tmp_path / "nowhere" / "x.y")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError, match="pass the local folder instead"):
        read_checkpoint("someone/not-a-cm3p-repo")


# --- tokens -------------------------------------------------------------------------------


def _timing_tokens(times_ms: range, window_start: int) -> dict[int, list[str]]:
    """Hand rule: a timing point at its offset, then beats every 500 ms, every 4th a measure."""
    out = {}
    for k, time in enumerate(times_ms):
        kind = "[TIMING_POINT]" if k == 0 else "[MEASURE]" if k % 4 == 0 else "[BEAT]"
        out[time] = [kind, f"[TIME_SHIFT_{time - window_start}]"]
    return out


def _window_tokens(tokenizer: BeatmapTokenizer, ids: np.ndarray) -> list[str]:
    names = {v: k for k, v in tokenizer.vocab.ids.items()}
    return [names[int(i)] for i in ids]


def test_tokens_of_a_small_map_follow_the_reference_rules(extractor, tmp_path):
    text = _osu(
        [
            "101,200,1000,5,0,0:0:0:0:",  # new combo circle: x 101 -> 100
            "102,300,1500,1,2,0:0:0:0:",  # whistle circle: x 102 -> 104 (25.5 rounds to even)
            "106,300,17015,1,0,0:0:0:0:",  # window 1: 1015 ms -> 1020 (101.5 to even), x -> 104
        ]
    )
    beatmap, _ = parse_beatmap_text(text, modes=(0,))
    audio = np.zeros(40 * 16000, dtype=np.float32)  # 40 s: windows at 0, 16 and 32 s
    windows = map_windows(beatmap, audio, extractor.checkpoint, extractor.tokenizer)
    assert [w.start_ms for w in windows] == [0.0, 16000.0, 32000.0]
    timing = _timing_tokens(range(0, 40001, 500), 0)
    head = ["[AUDIO_BOS]", *["[AUDIO]"] * 200, "[AUDIO_EOS]", "[CLS]", "[BOS]"]
    sound = ["[HITSOUND_0_2_2]", "[VOLUME_60]"]  # soft sample set and volume 60 of the timing point
    circles = {
        1000: ["[CIRCLE_NEW_COMBO]", "[TIME_SHIFT_1000]", "[POS_X_100]", "[POS_Y_200]", *sound],
        1500: [
            "[CIRCLE]",
            "[TIME_SHIFT_1500]",
            "[POS_X_104]",
            "[POS_Y_300]",
            "[HITSOUND_2_2_2]",
            "[VOLUME_60]",
        ],
    }
    expected0 = list(head)
    for time in range(0, 16000, 500):
        expected0 += timing[time] + circles.get(time, [])
    expected0.append("[EOS]")
    assert _window_tokens(extractor.tokenizer, windows[0].tokens) == expected0

    expected1 = list(head)
    for time in range(16000, 32000, 500):
        kind = timing[time][0]
        expected1 += [kind, f"[TIME_SHIFT_{time - 16000}]"]
        if time == 17000:
            expected1 += ["[CIRCLE]", "[TIME_SHIFT_1020]", "[POS_X_104]", "[POS_Y_300]", *sound]
    expected1.append("[EOS]")
    assert _window_tokens(extractor.tokenizer, windows[1].tokens) == expected1

    # a window without objects: only the measures and beats up to the song's end (40 s)
    expected2 = list(head)
    for time in range(32000, 40001, 500):
        expected2 += [timing[time][0], f"[TIME_SHIFT_{time - 32000}]"]
    assert _window_tokens(extractor.tokenizer, windows[2].tokens) == [*expected2, "[EOS]"]

    ids, mask = pad_batch([w.tokens for w in windows], extractor.tokenizer.pad_id)
    assert ids.shape == (3, max(len(w.tokens) for w in windows))
    assert extractor.tokenizer.pad_id == 3962
    for row, window in zip(range(3), windows):
        assert (ids[row, len(window.tokens) :] == 3962).all() and mask[row].sum() == len(
            window.tokens
        )


def test_slider_tokens(extractor):
    text = _osu(["100,100,3000,2,0,L|200:100,2,100,2|0|8,1:0|0:0|2:3,0:0:0:0:"])
    beatmap, _ = parse_beatmap_text(text, modes=(0,))
    windows = map_windows(
        beatmap, np.zeros(8 * 16000, np.float32), extractor.checkpoint, extractor.tokenizer
    )
    tokens = _window_tokens(extractor.tokenizer, windows[0].tokens)
    start = tokens.index("[SLIDER_HEAD]")
    # 2 slides of 100 px at 100 px per beat: 1000 ms, each slide 500 ms
    assert tokens[start - 2 : start + 31] == [
        "[BEAT]", "[TIME_SHIFT_3000]",
        "[SLIDER_HEAD]", "[TIME_SHIFT_3000]", "[POS_X_100]", "[POS_Y_100]", "[SCROLL_SPEED_1.00]",
        "[HITSOUND_2_1_1]", "[VOLUME_60]",  # first edge: whistle, normal set (edge set 1:0)
        "[LAST_ANCHOR]", "[POS_X_200]", "[POS_Y_100]",
        "[BEAT]", "[TIME_SHIFT_3500]",
        "[SLIDER_END]", "[TIME_SHIFT_3500]",
        "[HITSOUND_0_2_2]", "[VOLUME_60]",  # body
        "[HITSOUND_0_2_2]", "[VOLUME_60]",  # repeat edge
        "[MEASURE]", "[TIME_SHIFT_4000]",
        "[REPEAT_END]", "[TIME_SHIFT_4000]", "[POS_X_200]", "[POS_Y_100]",
        "[HITSOUND_8_2_3]", "[VOLUME_60]",  # last edge: clap, soft set, drum additions
        "[BEAT]", "[TIME_SHIFT_4500]",
        "[BEAT]", "[TIME_SHIFT_5000]",
        "[BEAT]",
    ]  # fmt: skip


def test_long_windows_are_cut_at_2000_tokens(extractor):
    circles = [f"{(i * 7) % 500},{(i * 13) % 380},{20 + i * 10},1,0,0:0:0:0:" for i in range(1500)]
    beatmap, _ = parse_beatmap_text(_osu(circles), modes=(0,))
    windows = map_windows(
        beatmap, np.zeros(18 * 16000, np.float32), extractor.checkpoint, extractor.tokenizer
    )
    tokens = _window_tokens(extractor.tokenizer, windows[0].tokens)
    assert len(tokens) == 2000 and tokens[-1] != "[EOS]" and tokens[203] == "[BOS]"
    without_audio = map_windows(beatmap, None, extractor.checkpoint, extractor.tokenizer)
    assert _window_tokens(extractor.tokenizer, without_audio[0].tokens)[:2] == ["[CLS]", "[BOS]"]


def test_metadata_tokens(extractor):
    metadata = {
        "difficulty": 5.25,  # 52.5 rounds to even: 5.2
        "year": 2003,  # clipped to the first year, 2007
        "mode": 3,
        "status": "loved",
        "mapper": "OliBomby",  # a name is looked up in the mapper table
        "mania_keycount": 7,
        "song_length": 187.4,
        "hold_note_ratio": 0.33,
        "tags": ["rhythm/simple", 1, "not a tag"],
    }
    assert extractor.metadata_tokenizer.tokens(metadata) == [
        "[CLS]", "[BOS]", "[DIFFICULTY_5.2]", "[YEAR_2007]", "[MODE_mania]", "[STATUS_loved]",
        "[MAPPER_5000]", "[CS_UNK]", "[HITSOUNDED_UNK]", "[SONG_LENGTH_190]", "[SONG_POSITION_UNK]",
        "[GLOBAL_SV_UNK]", "[MANIA_KEYCOUNT_7]", "[HOLD_NOTE_RATIO_0.3]", "[SCROLL_SPEED_RATIO_UNK]",
        "[TAG_rhythm/simple]", "[TAG_style/messy]", "[EOS]",
    ]  # fmt: skip
    assert extractor.metadata_tokenizer.tokens({})[-2:] == ["[TAG_UNK]", "[EOS]"]


# --- audio --------------------------------------------------------------------------------


def _loud_stereo_mp3(path: Path, seconds: float = 20.5) -> Path:
    rng = np.random.default_rng(1)
    t = np.arange(int(seconds * 44100)) / 44100
    left = np.sin(2 * np.pi * 200 * t) + 0.05 * rng.standard_normal(len(t))
    right = np.sin(2 * np.pi * 200 * t + 0.2) + 0.1 * np.sin(2 * np.pi * 3300 * t)
    stereo = np.stack([left, right], 1)
    soundfile.write(
        str(path), (stereo / np.abs(stereo).max() * 1.3).astype(np.float32), 44100, format="MP3"
    )
    return path


def test_audio_is_decoded_as_librosa_decodes_it(tmp_path):
    librosa = pytest.importorskip("librosa")
    path = _loud_stereo_mp3(tmp_path / "loud.mp3")
    ours = load_audio_librosa(path, 16000)
    theirs = librosa.load(str(path), sr=16000)[0]
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)
    assert np.abs(ours).max() > 1.0  # above full scale: no peak normalisation


def test_log_mel_equals_whisper_feature_extractor(tmp_path):
    from transformers import WhisperFeatureExtractor

    from beatmap_fid.extractors.cm3p.checkpoint import WindowSettings

    audio = load_audio_librosa(_loud_stereo_mp3(tmp_path / "loud.mp3"), 16000)
    settings = WindowSettings()
    whisper = WhisperFeatureExtractor(
        feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400,
        padding_value=0.0, dither=0.0, return_attention_mask=False,
    )  # fmt: skip
    windows = [audio[:256000], audio[256000:]]  # a full window and a short last one
    padded = np.stack([pad_window_audio(w, settings) for w in windows])
    ours = log_mel(torch.from_numpy(padded), settings).numpy()
    assert ours.shape == (2, 80, 1600)
    for row, window in enumerate(padded):
        reference = whisper(
            window,
            sampling_rate=16000,
            padding=False,
            pad_to_multiple_of=256000,
            return_tensors="np",
        )["input_features"][0]
        assert np.abs(ours[row] - reference).max() <= 1e-5
    # the floor is per window: the quiet padding of the short window sits at its own max - 8
    assert np.isclose(ours[1].min(), ours[1].max() - 2.0, atol=1e-6)


# --- towers -------------------------------------------------------------------------------


def _layer_norm(x, weight, eps=1e-5):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, None, eps)


def _rotate(x, theta, positions):
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = positions[:, None].float() * inv[None]
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + half * sin


def _eager_modernbert(encoder, settings, embeds, mask):
    """ModernBERT as the reference's transformers 4.57 computes it, written out: pre-norm
    layers (identity before the first), global attention every n-th layer from the first,
    else |i - j| <= local_attention // 2, separate rotary bases, GeGLU MLP, final norm."""
    h = _layer_norm(embeds, encoder.embeddings.norm.weight)
    batch, length, width = h.shape
    heads = settings["num_attention_heads"]
    d = width // heads
    positions = torch.arange(length)
    distance = (positions[:, None] - positions[None, :]).abs()
    for index, layer in enumerate(encoder.layers):
        is_global = index % settings["global_attn_every_n_layers"] == 0
        theta = settings["global_rope_theta"] if is_global else settings["local_rope_theta"]
        x = h if index == 0 else _layer_norm(h, layer.attn_norm.weight)
        qkv = (x @ layer.attn.Wqkv.weight.T).view(batch, length, 3, heads, d)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        q, k = _rotate(q, theta, positions), _rotate(k, theta, positions)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        allowed = mask.bool()[:, None, None, :]
        if not is_global:
            allowed = allowed & (distance <= settings["local_attention"] // 2)
        # additive masks with the dtype's minimum, as transformers builds them
        attention = (scores + (~allowed) * torch.finfo(scores.dtype).min).softmax(-1)
        h = (
            h
            + (attention @ v).transpose(1, 2).reshape(batch, length, width) @ layer.attn.Wo.weight.T
        )
        m = _layer_norm(h, layer.mlp_norm.weight)
        a, gate = (m @ layer.mlp.Wi.weight.T).chunk(2, -1)
        h = h + (torch.nn.functional.gelu(a) * gate) @ layer.mlp.Wo.weight.T
    return _layer_norm(h, encoder.final_norm.weight)


def test_towers_equal_modernbert_written_out_with_padding_and_audio(extractor):
    model = extractor.model
    beatmap, audio = model.beatmap_settings, model.config["beatmap_config"]["audio_config"]
    rng = np.random.default_rng(0)
    lengths = [260, 230]  # 202 audio tokens, then events; the second row padded by 30
    ids = np.full((2, 260), 3962, dtype=np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = [
            3965,
            *[3967] * 200,
            3966,
            3963,
            3958,
            *rng.integers(0, 3958, length - 205),
            3959,
        ]
    mask = (ids != 3962).astype(np.int64)
    features = torch.from_numpy(rng.standard_normal((2, 80, 1600)).astype(np.float32))
    input_ids, attention = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.inference_mode():
        ours = model.beatmap_embeds(input_ids, attention, features)
        encoder = model.beatmap_model.audio_encoder
        x = torch.nn.functional.gelu(encoder.conv1(features))
        x = torch.nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
        frames = _eager_modernbert(encoder.encoder, audio, x, torch.ones(x.shape[:2]))
        projector = encoder.multi_modal_projector
        tokens = frames.reshape(-1, 4 * audio["hidden_size"])
        audio_embeds = projector.linear_2(torch.nn.functional.gelu(projector.linear_1(tokens)))
        embeds = model.beatmap_model.encoder.embeddings.tok_embeddings(input_ids).clone()
        embeds[input_ids == 3967] = audio_embeds
        hidden = _eager_modernbert(model.beatmap_model.encoder, beatmap, embeds, attention)
        projected = model.beatmap_projection(hidden[:, 0])
        expected = projected / projected.norm(dim=-1, keepdim=True)
        # our tower's hidden states at every unpadded position, not only the pooled one
        tower = model.beatmap_model(input_ids, attention, features).last_hidden_state
    assert beatmap["num_hidden_layers"] == 4 and beatmap["local_attention"] == 16
    assert torch.allclose(ours, expected, atol=2e-5)
    for row, length in enumerate(lengths):
        assert torch.allclose(tower[row, :length], hidden[row, :length], atol=2e-4)
    # padding does not reach the unpadded positions: the short row alone gives the same
    with torch.inference_mode():
        alone = model.beatmap_embeds(input_ids[1:, :230], attention[1:, :230], features[1:])
    assert torch.allclose(alone[0], ours[1], atol=1e-5)


# --- embeddings ---------------------------------------------------------------------------


def _song_folder(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write_wav(root / "audio.wav", 35.0)
    for i in range(n):
        objects = [
            f"{100 + 40 * i},{150 + 10 * j},{1000 + 700 * j},1,0,0:0:0:0:" for j in range(40)
        ]
        (root / f"map{i}.osu").write_text(_osu(objects, creator=f"mapper{i}"))
    return root


def test_embeddings_are_deterministic_unit_vectors_and_bf16_agrees(checkpoint, extractor, tmp_path):
    folder = _song_folder(tmp_path / "song")
    skipped = SkipLog()
    items = list(extractor.items(folder, skipped))
    assert not skipped and [i.id for i in items] == [
        f"map{m}.osu#{k}" for m in range(2) for k in range(3)
    ]
    assert items[0].label == "mapper0"
    first = extractor.embed([i.payload for i in items])
    again = extractor.embed([i.payload for i in items[::-1]])[::-1]
    assert first.dtype == np.float32 and first.shape == (6, 512)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    assert np.allclose(first, again, atol=1e-6)
    assert np.abs(first[0] - first[3]).max() > 1e-3  # other maps, other vectors
    bf16 = build_extractor("cm3p", checkpoint=str(checkpoint), device="cpu", precision="bfloat16")
    low = bf16.embed([i.payload for i in items])
    cosine = (first * low).sum(1) / np.linalg.norm(low, axis=1)
    assert cosine.min() > 0.999
    assert config_hash(bf16.config) != config_hash(extractor.config)


def test_metadata_side_embeds_each_maps_own_metadata(checkpoint, tmp_path):
    folder = _song_folder(tmp_path / "song")
    side = build_extractor("cm3p", checkpoint=str(checkpoint), device="cpu", side="metadata")
    items = list(side.items(folder, SkipLog()))
    assert [i.id for i in items] == ["map0.osu", "map1.osu"]
    vectors = side.embed([i.payload for i in items])
    assert vectors.shape == (2, 512) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    id_to_token = {v: k for k, v in side.checkpoint.metadata_vocab.ids.items()}
    text = [id_to_token[int(t)] for t in items[0].payload]
    assert "[MODE_osu]" in text and "[CS_4.0]" in text and "[SONG_LENGTH_40]" in text
    assert "[GLOBAL_SV_1.00]" in text and "[MAPPER_UNK]" in text  # mapper0 is not in the table


def test_describe_ranks_vocabulary_values_by_mean_window_probability(
    checkpoint, extractor, tmp_path
):
    from beatmap_fid.extractors.cm3p.describe import describe

    folder = _song_folder(tmp_path / "song", n=1)
    result = describe(extractor, folder / "map0.osu", ["mode", "mapper", "year"])
    by_field = {r.field: r for r in result.rankings}
    assert [label for label, _ in sorted(by_field["mode"].candidates)] == [
        "fruits",
        "mania",
        "osu",
        "taiko",
    ]
    assert len(by_field["year"].candidates) == 2023 - 2007 + 1
    for ranking in result.rankings:
        probabilities = [p for _, p in ranking.candidates]
        assert math.isclose(sum(probabilities), 1.0, rel_tol=1e-9)
        assert probabilities == sorted(probabilities, reverse=True)
    # by hand: softmax(exp(logit_scale) * cos) over the mappers, per window, averaged
    items = extractor.beatmap_items(read_beatmap_file(folder / "map0.osu", modes=(0,)), SkipLog())
    windows = extractor.embed([i.payload for i in items]).astype(np.float64)
    base = dict(result.metadata, difficulty=None, year=None, status=None, tags=None)
    texts = extractor.metadata_embeds(
        [extractor.metadata_tokenizer.ids({**base, "mapper": m}) for m in (2, 5000, 124493)]
    ).astype(np.float64)
    logits = extractor.logit_scale() * windows @ texts.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).mean(0)
    assert dict(by_field["mapper"].candidates) == pytest.approx(
        {"peppy (2)": p[0], "OliBomby (5000)": p[1], "Cookiezi (124493)": p[2]}, rel=1e-6
    )


def test_describe_verb_prints_rankings(checkpoint, tmp_path, capsys):
    from beatmap_fid.cli import main

    folder = _song_folder(tmp_path / "song", n=1)
    code = main(
        [
            "describe",
            str(folder / "map0.osu"),
            "--option",
            f"checkpoint={checkpoint}",
            "--option",
            "device=cpu",
            "--field",
            "mode",
            "--top",
            "2",
            "--json",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["rankings"]["mode"]) == 2 and data["windows"] == 3


@pytest.mark.realdata
def test_real_maps_of_every_mode_are_read(shared_data, extractor):
    songs = shared_data / "beatmaps" / "songs"
    maps = [
        "8393 Silver Forest - Marisa Spark/Silver Forest - Marisa Spark (Alice Margatroid) [Easy].osu",
        "1171207 Disasterpeace - Adrift/Disasterpeace - Adrift (Vulkin) [Futsuu].osu",
        "765778 Icon For Hire - Make a Move (Speed Up Ver)/Icon For Hire - Make a Move (Speed Up Ver.) (Sotarks) [Ascendance's Platter].osu",
        "1009907 James Landino & Kabuki - Birdsong/James Landino & Kabuki - Birdsong (_Kobii) [Leni's Easy].osu",
    ]
    for name, mode in zip(maps, (0, 1, 2, 3)):
        # the reference crashes on the first (circles without hitSample) and the last (mania
        # hold notes); both are read here
        beatmap_file = read_beatmap_file(songs / name, modes=(0, 1, 2, 3))
        assert int(beatmap_file.beatmap.mode) == mode
        skipped = SkipLog()
        items = extractor.beatmap_items(beatmap_file, skipped)
        seconds = len(load_audio_librosa(beatmap_file.audio_path)) / 16000
        assert not skipped and len(items) == len(np.arange(0, seconds - 1.0, 16.0))
        assert all(len(i.payload.tokens) <= 2000 for i in items)


# --- speed options ------------------------------------------------------------------------


def _local_mask(batch_lengths: list[int], length: int, half_window: int):
    """transformers' sliding-window mask for padded rows: |i − j| ≤ half_window, keys unpadded."""
    i = torch.arange(length)
    near = (i[:, None] - i[None, :]).abs() <= half_window
    keys = torch.stack([i < n for n in batch_lengths])
    return (near[None] & keys[:, None, :])[:, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_banded_attention_equals_sdpa_over_the_whole_sequence(dtype):
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from beatmap_fid.extractors.cm3p.attention import BLOCK, banded_attention

    generator = torch.Generator().manual_seed(0)
    length, half = 2 * BLOCK + 77, 20  # blocks do not divide the length
    query, key, value = (
        torch.randn(3, 2, length, 8, generator=generator).to(dtype) for _ in range(3)
    )
    mask = _local_mask([length, length - 90, 40], length, half)  # padding, and a short row
    module = SimpleNamespace(is_causal=False, training=False)
    full, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    banded, _ = banded_attention(
        module, query, key, value, mask, scaling=0.3, sliding_window=half + 1
    )
    assert banded.shape == full.shape == (3, length, 2, 8)
    tolerance = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(banded, full, atol=tolerance, rtol=0)
    assert (banded[1, length - 90 + half + 1 :] == 0).all()  # keys all masked: 0, as sdpa gives


def test_banded_attention_option_agrees_with_sdpa_and_is_recorded(
    checkpoint, extractor, tmp_path, monkeypatch
):
    from beatmap_fid.extractors.cm3p import attention

    folder = _song_folder(tmp_path / "song")
    payloads = [item.payload for item in extractor.items(folder, SkipLog())]
    banded = build_extractor("cm3p", checkpoint=str(checkpoint), device="cpu", attention="banded")
    encoders = [
        banded.model.beatmap_model.encoder,
        banded.model.beatmap_model.audio_encoder.encoder,
    ]
    assert {e.config._attn_implementation for e in encoders} == {attention.BANDED_ATTENTION}
    calls = []
    band_mask = attention._band_mask
    monkeypatch.setattr(attention, "_band_mask", lambda *a: calls.append(1) or band_mask(*a))
    vectors = banded.embed(payloads)
    assert calls  # the local layers did run banded
    np.testing.assert_allclose(vectors, extractor.embed(payloads), atol=1e-6)
    assert banded.config["attention"] == "banded" and "attention" not in extractor.config
    assert config_hash(banded.config) != config_hash(extractor.config)
    with pytest.raises(ExtractorError, match="attention must be one of"):
        build_extractor("cm3p", checkpoint=str(checkpoint), device="cpu", attention="flash")


def test_sorting_windows_by_length_keeps_each_windows_vector(checkpoint, extractor, tmp_path):
    folder = _song_folder(tmp_path / "song")
    (folder / "short.osu").write_text(
        _osu([f"100,100,{1000 + 2000 * j},1,0,0:0:0:0:" for j in range(6)])
    )
    payloads = [item.payload for item in extractor.items(folder, SkipLog())]
    assert len({len(p.tokens) for p in payloads}) > 2
    unsorted = build_extractor(
        "cm3p", checkpoint=str(checkpoint), device="cpu", sort_by_length=False, window_batch=3
    )
    grouped = build_extractor("cm3p", checkpoint=str(checkpoint), device="cpu", window_batch=3)
    assert grouped.sort_by_length and config_hash(grouped.config) == config_hash(unsorted.config)
    np.testing.assert_allclose(grouped.embed(payloads), unsorted.embed(payloads), atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "options", [{}, {"attention": "banded"}, {"precision": "bfloat16", "attention": "banded"}]
)
def test_cm3p_on_cuda_agrees_with_the_cpu(checkpoint, extractor, tmp_path, options):
    folder = _song_folder(tmp_path / "song")
    payloads = [item.payload for item in extractor.items(folder, SkipLog())]
    on_gpu = build_extractor("cm3p", checkpoint=str(checkpoint), device="cuda", **options)
    cosine = (on_gpu.embed(payloads) * extractor.embed(payloads)).sum(1)
    assert cosine.min() > 0.999


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attention": "flash"}, "attention must be one of"),
        ({"sort_by_length": "no"}, "sort_by_length must be true or false"),
        ({"window_batch": 2.5}, "window_batch must be a whole number"),
        ({"compile": True}, "has no option 'compile'"),
    ],
)
def test_invalid_speed_option_values_are_one_clear_line(checkpoint, options, message):
    with pytest.raises(ExtractorError, match=message) as refused:
        build_extractor("cm3p", checkpoint=str(checkpoint), device="cpu", **options)
    assert "\n" not in str(refused.value)
