"""Checkpoint settings are checked against sane bounds and against the weights' shapes before any
model is built; weights holding NaN are refused; each refusal is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from cli_child import run_cli_child  # noqa: E402

from beatmap_fid.beatmap.synthetic import write_synthetic_set  # noqa: E402
from beatmap_fid.beatmap.tokenizer import default_event_ranges, max_time_shift  # noqa: E402
from beatmap_fid.errors import ExtractorError  # noqa: E402
from beatmap_fid.extractors.cm3p import random_checkpoint, read_checkpoint  # noqa: E402
from beatmap_fid.extractors.cm3p.model import load_model  # noqa: E402
from beatmap_fid.extractors.mapper_classifier.checkpoint import (  # noqa: E402
    ClassifierSettings,
    TokenizerState,
    build_model,
    load_checkpoint,
    save_checkpoint,
)

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
    "src_seq_len": 128,
    "tgt_seq_len": 128,
}
HUGE = {"d_model": 16384, "encoder_layers": 48, "decoder_layers": 48}
"""The forged checkpoint's claim: about 300 GB of weights (whisper layers of width 16384)."""
LARGE = {
    "d_model": 4096,
    "encoder_layers": 32,
    "decoder_layers": 32,
    "encoder_attention_heads": 32,
    "decoder_attention_heads": 32,
    "encoder_ffn_dim": 16384,
    "decoder_ffn_dim": 16384,
}
"""Within the bounds, yet about 60 GB of float32 weights: only the shape check stops it."""


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier checkpoint in the reference layout."""
    ranges = default_event_ranges(time_shift_max=max_time_shift(TINY["src_seq_len"]))
    tokenizer = TokenizerState(
        event_ranges=[(r.type.value, r.min_value, r.max_value) for r in ranges],
        class_index={"flow_0": 0, "flow_1": 1},
    )
    settings = ClassifierSettings.for_size(
        "tiny", num_classes=2, vocab_size=tokenizer.vocab_size, **TINY
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("classifier")
    return save_checkpoint(folder / "model.ckpt", build_model(settings), tokenizer)


def forge(source: Path, target: Path, *, overwrite=None, data=None, keep=None, edit=None) -> Path:
    """A copy of a checkpoint with settings overwritten and, with ``keep``, only that many
    of its smallest weight tensors (a file of a few tens of KB)."""
    raw = torch.load(source, weights_only=True)
    args = raw["hyper_parameters"]["args"]
    args["model"]["overwrite"].update(overwrite or {})
    args["data"].update(data or {})
    if keep is not None:
        smallest = sorted(raw["state_dict"].items(), key=lambda item: item[1].numel())[:keep]
        raw["state_dict"] = {name: tensor.clone() for name, tensor in smallest}
    if edit is not None:
        edit(raw["state_dict"])
    torch.save(raw, target)
    return target


def test_settings_beyond_the_bounds_are_refused(classifier: Path, tmp_path: Path) -> None:
    forged = forge(classifier, tmp_path / "huge.ckpt", overwrite=HUGE, keep=36)
    assert 30_000 < forged.stat().st_size < 80_000  # about 50 KB
    with pytest.raises(ExtractorError, match=r"d_model is 16384; it must be an integer from 1 "):
        load_checkpoint(forged)
    negative = forge(classifier, tmp_path / "negative.ckpt", data={"src_seq_len": -1024})
    with pytest.raises(ExtractorError, match=r"src_seq_len is -1024; it must be an integer"):
        load_checkpoint(negative)
    odd = forge(classifier, tmp_path / "odd.ckpt", data={"src_seq_len": 127})
    with pytest.raises(ExtractorError, match="src_seq_len 127 is not even"):
        load_checkpoint(odd)
    heads = forge(classifier, tmp_path / "heads.ckpt", overwrite={"encoder_attention_heads": 3})
    with pytest.raises(ExtractorError, match="d_model 64 is not a multiple of encoder_attention"):
        load_checkpoint(heads)


def test_weights_that_do_not_fit_are_refused_before_the_model_is_built(
    classifier: Path, tmp_path: Path
) -> None:
    forged = forge(classifier, tmp_path / "large.ckpt", overwrite=LARGE, keep=36)
    with pytest.raises(ExtractorError) as caught:
        load_checkpoint(forged)
    message = str(caught.value)
    assert "the weights do not fit the model its settings describe" in message
    assert " missing (" in message and " of another shape (" in message and "\n" not in message


def _with_nan(state: dict) -> None:
    state["model.classifier.weight"][0, 0] = float("nan")


def _with_huge_logits(state: dict) -> None:
    state["model.classifier.weight"].fill_(3e38)


def test_nan_weights_are_refused(classifier: Path, tmp_path: Path) -> None:
    forged = forge(classifier, tmp_path / "nan.ckpt", edit=_with_nan)
    with pytest.raises(ExtractorError, match=r"1 weight tensor\(s\) hold NaN or infinite values"):
        load_checkpoint(forged)
    assert load_checkpoint(classifier).settings.d_model == 64


def _assert_one_line(run: dict, verb: str, fragment: str) -> None:
    assert run["code"] == 1 and run["stdout"] == "", run
    assert run["stderr"].count("\n") == 1 and fragment in run["stderr"], run
    assert run["stderr"].startswith(f"beatmap-fid {verb}: error: "), run


def test_the_command_line_refuses_each_in_one_line_under_1_gb(
    classifier: Path, tmp_path: Path
) -> None:
    """``classify`` on the forged 50 KB checkpoint (d_model 16384, 48 + 48 layers), then on a
    negative src_seq_len, in a fresh process: refused before transformers is even imported,
    the process never above 1 GB. In a second process, after importing every extractor and
    transformers' models (about 1 GB by themselves here), ``embed`` and ``classify`` refuse the
    forged checkpoint, an in-bounds checkpoint whose weights do not fit (building its model
    would take some 60 GB) and NaN weights, the peak growing by less than 300 MB; ``classify``
    on weights whose logits overflow refuses too. Exit code 1, one line, no traceback."""
    maps = tmp_path / "maps"
    beatmap = write_synthetic_set(maps, 1, seed=3, duration_s=12.0, audio=True)[0]
    checkpoints = {
        "huge": forge(classifier, tmp_path / "huge.ckpt", overwrite=HUGE, keep=36),
        "negative": forge(classifier, tmp_path / "neg.ckpt", data={"src_seq_len": -1024}),
        "large": forge(classifier, tmp_path / "large.ckpt", overwrite=LARGE, keep=36),
        "nan": forge(classifier, tmp_path / "nan.ckpt", edit=_with_nan),
        "overflow": forge(classifier, tmp_path / "inf.ckpt", edit=_with_huge_logits),
    }

    def classify(name: str) -> list[str]:
        return ["classify", str(beatmap), "--checkpoint", str(checkpoints[name]), "--device", "cpu"]

    def embed(name: str) -> list[str]:
        store = str(tmp_path / "s.h5")
        option = f"checkpoint={checkpoints[name]}"
        return [
            "embed",
            str(maps),
            "-o",
            store,
            "--extractor",
            "mapper-classifier",
            "--quiet",
            "--option",
            option,
        ]

    first = run_cli_child({"huge": classify("huge"), "negative": classify("negative")})
    _assert_one_line(first["huge"], "classify", "d_model is 16384; it must be an integer")
    _assert_one_line(first["negative"], "classify", "src_seq_len is -1024; it must be")
    assert first["negative"]["peak_kib"] < 1024 * 1024

    expected = {
        "huge embed": "d_model is 16384",
        "large classify": "the weights do not fit the model its settings describe",
        "large embed": "the weights do not fit the model its settings describe",
        "nan classify": "hold NaN or infinite values",
        "nan embed": "hold NaN or infinite values",
        "overflow classify": "the classifier gave NaN or infinite logits",
    }
    runs: dict[str, list[str]] = {"baseline": []}
    for name in expected:
        checkpoint, verb = name.split()
        runs[name] = classify(checkpoint) if verb == "classify" else embed(checkpoint)
    second = run_cli_child(runs)
    for name, fragment in expected.items():
        _assert_one_line(second[name], name.split()[1], fragment)
    grown = second["nan embed"]["peak_kib"] - second["baseline"]["peak_kib"]
    assert grown < 300 * 1024


@pytest.fixture(scope="module")
def cm3p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("cm3p") / "tiny", "tiny", seed=0)


def _copy_with(source: Path, target: Path, change) -> Path:
    import shutil

    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    change(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_cm3p_sizes_beyond_the_bounds_are_refused(cm3p: Path, tmp_path: Path) -> None:
    def huge(config: dict) -> None:
        config["beatmap_config"].update(hidden_size=16384, num_hidden_layers=48)

    forged = read_checkpoint(_copy_with(cm3p, tmp_path / "huge", huge))
    with pytest.raises(ExtractorError, match=r"beatmap_config: hidden_size is 16384; it must"):
        load_model(forged)

    def negative(config: dict) -> None:
        config["metadata_config"]["num_attention_heads"] = -2

    forged = read_checkpoint(_copy_with(cm3p, tmp_path / "negative", negative))
    with pytest.raises(ExtractorError, match="metadata_config: num_attention_heads is -2"):
        load_model(forged)


def test_cm3p_weights_that_do_not_fit_or_hold_nan_are_refused(cm3p: Path, tmp_path: Path) -> None:
    def large(config: dict) -> None:
        config["beatmap_config"].update(
            hidden_size=4096, intermediate_size=16384, num_hidden_layers=64, num_attention_heads=32
        )

    forged = read_checkpoint(_copy_with(cm3p, tmp_path / "large", large))
    with pytest.raises(ExtractorError, match="the weights do not fit the model its settings"):
        load_model(forged)

    from safetensors.torch import load_file, save_file

    nan = _copy_with(cm3p, tmp_path / "nan", lambda config: None)
    state = load_file(str(nan / "model.safetensors"))
    name = next(key for key in sorted(state) if key.startswith("beatmap_projection"))
    state[name][0, 0] = float("nan")
    save_file(state, str(nan / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExtractorError, match=rf"hold NaN or infinite values \({name}\)"):
        load_model(read_checkpoint(nan))
    assert np.isfinite(load_model(read_checkpoint(cm3p)).logit_scale.item())


def test_cm3p_window_settings_beyond_the_bounds_are_refused(cm3p: Path, tmp_path: Path) -> None:
    import shutil

    forged = tmp_path / "windows"
    shutil.copytree(cm3p, forged)
    processor = json.loads((forged / "processor_config.json").read_text())
    processor["default_kwargs"]["audio_kwargs"]["pad_to_multiple_of"] = 2**40
    (forged / "processor_config.json").write_text(json.dumps(processor))
    with pytest.raises(ExtractorError, match=r"pad_to_multiple_of is 1099511627776; it must"):
        read_checkpoint(forged)
