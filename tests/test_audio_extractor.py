"""The audio extractor: segments, log-mel pictures, embeddings of real music, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
soundfile = pytest.importorskip("soundfile")

from beatmap_fid.beatmap.audio import load_audio  # noqa: E402
from beatmap_fid.errors import ExtractorError, SkipLog  # noqa: E402
from beatmap_fid.extractors import build_extractor, config_hash  # noqa: E402
from beatmap_fid.extractors.audio import (  # noqa: E402
    MelSettings,
    htk_mel_filterbank,
    mel_pictures,
    segment_starts,
)

RATE = 16000
# Six tracks of different moods and styles from the immich-memories-music package.
TRACKS = [
    "calm_acoustic_1",
    "energetic_electronic_2",
    "happy_acoustic_2",
    "nostalgic_electronic_s411",
    "tender_electronic_1",
    "happy_electronic_s411",
]


def _write(path, samples, rate=RATE):
    soundfile.write(str(path), np.asarray(samples, dtype=np.float32), rate)
    return path


def _sine(seconds, frequency=440.0, rate=RATE, level=0.5):
    t = np.arange(round(seconds * rate)) / rate
    return level * np.sin(2 * np.pi * frequency * t)


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    """The first 20 s of six real music tracks, as 16 kHz WAV files (quick to decode)."""
    package = pytest.importorskip("immich_memories_music")
    root = tmp_path_factory.mktemp("music")
    for name in TRACKS:
        source = next(package.tracks_dir().rglob(f"{name}.opus"))
        _write(root / f"{name}.wav", load_audio(source, RATE)[: 20 * RATE])
    return root


def _leave_one_out_accuracy(vectors: np.ndarray, labels: np.ndarray) -> float:
    """1-NN (cosine on standardised features) track accuracy, each segment left out in turn."""
    z = (vectors - vectors.mean(0)) / (vectors.std(0) + 1e-8)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    similarity = z @ z.T
    np.fill_diagonal(similarity, -np.inf)
    return float(np.mean(labels[similarity.argmax(1)] == labels))


def test_segments_of_a_track_are_nearer_each_other_than_other_tracks(music, tmp_path):
    from beatmap_fid.api import embed_to_store
    from beatmap_fid.store import EmbeddingStore

    extractor = build_extractor("audio", segment_seconds=4.0, device="cpu", batch_size=8)
    result = embed_to_store(music, extractor, tmp_path / "music.h5", batch_size=8, progress=False)
    assert result.written == 6 * 5 and not result.skipped
    with EmbeddingStore(tmp_path / "music.h5") as store:
        assert store.dim == 1280 and store.config["backbone"]["name"] == "efficientnet-lite0"
        ids, labels, vectors = list(store.ids), np.asarray(store.labels), store.vectors()
    assert ids[:2] == ["calm_acoustic_1.wav#0", "calm_acoustic_1.wav#1"]
    assert set(labels) == {f"{name}.wav" for name in TRACKS}
    assert np.isfinite(vectors).all()
    accuracy = _leave_one_out_accuracy(vectors, labels)
    assert accuracy >= 0.7, f"1-NN track accuracy {accuracy:.2f} (chance 1/6)"


def test_band_statistics_backbone_needs_no_weights_and_separates_tracks(music):
    extractor = build_extractor("audio", backbone="stats", segment_seconds=4.0, device="cpu")
    assert extractor.dim == 5 * 128
    skipped = SkipLog()
    items = list(extractor.items(music, skipped))
    vectors = extractor.embed([item.payload for item in items])
    assert vectors.shape == (30, 640) and vectors.dtype == np.float32 and not skipped
    labels = np.array([item.label for item in items])
    assert _leave_one_out_accuracy(vectors, labels) >= 0.7


def test_bad_audio_is_skipped_with_reasons(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "good.wav", _sine(5.0))
    _write(tmp_path / "silent.wav", np.zeros(5 * RATE))
    _write(tmp_path / "short.wav", _sine(0.9))  # less than half of a 2 s segment
    _write(tmp_path / "padded.wav", _sine(1.2))  # more than half: one zero-padded segment
    tail = np.concatenate([_sine(2.0), np.zeros(2 * RATE)])
    _write(tmp_path / "silent_tail.flac", tail)
    (tmp_path / "text.mp3").write_text("this is not audio")
    (tmp_path / "empty.ogg").write_bytes(b"")
    (tmp_path / "beatmap.osu").write_text("osu file format v14")  # not audio: ignored

    extractor = build_extractor("audio", backbone="stats", segment_seconds=2.0, device="cpu")
    skipped = SkipLog()
    items = list(extractor.items(tmp_path, skipped))
    assert [item.id for item in items] == [
        "padded.wav#0",
        "silent_tail.flac#0",
        "sub/good.wav#0",
        "sub/good.wav#1",
        "sub/good.wav#2",
    ]
    assert items[2].label == "sub/good.wav"
    reasons = {entry.source: entry.reason.split(":")[0] for entry in skipped.entries}
    assert reasons == {
        "empty.ogg": "undecodable audio",
        "text.mp3": "undecodable audio",
        "short.wav": "too short",
        "silent.wav": "silent audio",
        "silent_tail.flac#1": "silent segment",
    }
    padded = items[0].payload
    assert len(padded) == 2 * RATE and not padded[round(1.2 * RATE) + 10 :].any()
    vectors = extractor.embed([item.payload for item in items])
    assert vectors.shape == (5, extractor.dim) and np.isfinite(vectors).all()
    lone = SkipLog()
    assert list(extractor.items(tmp_path / "beatmap.osu", lone)) == []
    assert lone.reasons() == {"not an audio file": 1}


def test_segment_starts_keep_windows_with_at_least_half_a_segment():
    assert segment_starts(25, 10, 10) == [0, 10, 20]
    assert segment_starts(24, 10, 10) == [0, 10]
    assert segment_starts(20, 10, 5) == [0, 5, 10]
    assert segment_starts(4, 10, 10) == []
    assert segment_starts(5, 10, 10) == [0]


def test_mel_picture_of_a_sine_lights_the_band_of_its_frequency():
    settings = MelSettings(sample_rate=RATE, n_fft=1024, hop_length=512, n_mels=64)
    samples = _sine(1.0, frequency=1000.0, level=1.0)
    pictures = mel_pictures(torch.from_numpy(samples[None].astype(np.float32)), settings)
    assert pictures.shape == (1, 64, 1 + len(samples) // 512)
    assert 0.0 <= float(pictures.min()) and float(pictures.max()) <= 1.0
    profile = pictures[0, :, 5:-5].mean(dim=1).numpy()[::-1]  # back to low → high bands
    band = int(profile.argmax())
    filters = htk_mel_filterbank(RATE, 1024, 64, 0.0, RATE / 2)
    centre = np.fft.rfftfreq(1024, 1 / RATE)[filters[band].argmax()]
    assert abs(centre - 1000.0) < 100.0
    low, high = settings.db_range
    level_db = low + float(profile[band]) * (high - low)
    assert -6.0 < level_db <= 0.5  # a full-scale sine is 0 dB, spread over neighbouring bands


def test_config_follows_the_options_and_bad_options_are_refused():
    base = build_extractor("audio", backbone="stats", device="cpu")
    assert base.config["segment_seconds"] == 15.0 and base.segment_samples == 15 * RATE
    longer = build_extractor("audio", backbone="stats", segment_seconds=10.0, device="cpu")
    overlapping = build_extractor("audio", backbone="stats", overlap_seconds=5.0, device="cpu")
    assert overlapping.hop_samples == 10 * RATE
    hashes = {config_hash(e.config) for e in (base, longer, overlapping)}
    assert len(hashes) == 3
    with pytest.raises(ExtractorError, match="overlap_seconds"):
        build_extractor("audio", backbone="stats", segment_seconds=2.0, overlap_seconds=2.0)
    with pytest.raises(ExtractorError, match="unknown audio backbone"):
        build_extractor("audio", backbone="resnet")
    with pytest.raises(ExtractorError, match="fmax"):
        build_extractor("audio", backbone="stats", fmax=9000.0)
    with pytest.raises(ExtractorError, match="one segment"):
        base.embed([np.zeros(RATE, dtype=np.float32)])
