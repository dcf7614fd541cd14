"""Training the mapper classifier on real maps with audio: learning, resuming, fine-tuning."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from beatmap_fid.errors import InputError, SkipLog  # noqa: E402
from beatmap_fid.extractors.mapper_classifier.checkpoint import (  # noqa: E402
    ClassifierSettings,
    TokenizerState,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from beatmap_fid.extractors.mapper_classifier.extractor import (  # noqa: E402
    MapperClassifierExtractor,
)
from beatmap_fid.extractors.mapper_classifier.train import (  # noqa: E402
    TrainingOptions,
    collect_maps,
    load_labels,
    split_maps,
    train_classifier,
)

TINY = {
    "d_model": 64,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
    "projector_dim": 64,
    "n_mels": 64,
    "src_seq_len": 128,
    "tgt_seq_len": 128,
}
# Song folders whose Creator has two or more osu!standard maps with audio (eight creators).
SETS = (
    "12046 Hatsune Miku - haL1",
    "143939 Painty the Pirate & Kids - SpongeBob SquarePants Theme",
    "1171207 Disasterpeace - Adrift",
    "791900 LeaF - Aleph-0",
    "1770622 Schtiffles - Merp Merp",
    "682290 Hige Driver - Miracle Sugite Yabai (feat shully)",
    "791845 cYsmix - Little Knight",
    "8393 Silver Forest - Marisa Spark",
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run far faster on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def copy_sets(shared_data: Path, target: Path, names) -> Path:
    for name in names:
        shutil.copytree(shared_data / "beatmaps" / "songs" / name, target / name)
    return target


def tiny_options(**values) -> TrainingOptions:
    defaults = {
        "model_size": "tiny",
        "settings_overrides": TINY,
        "batch_size": 16,
        "learning_rate": 3e-3,
        "final_learning_rate": 1e-4,
        "device": "cpu",
        "seed": 0,
    }
    return TrainingOptions(**(defaults | values))


@pytest.mark.slow
def test_training_learns_and_its_checkpoint_classifies(shared_data, tmp_path):
    maps = copy_sets(shared_data, tmp_path / "maps", SETS)
    options = tiny_options(
        max_steps=80, eval_every=40, validation_fraction=0.3, max_validation_windows=160
    )
    result = train_classifier(maps, tmp_path / "run", options=options, progress=False)

    chance = 1 / result.num_classes
    assert result.num_classes == 8 and result.steps == 80
    assert result.validation_maps >= 8
    losses = np.array(result.train_losses)
    assert losses[-10:].mean() < 0.7 * losses[:10].mean()
    final = result.validation[-1]
    assert final["step"] == 80 and final["windows"] == 160
    assert final["top1"] > 2 * chance
    assert final["top10"] == 1.0  # eight classes: the top ten hold them all
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [h["step"] for h in history] == [40, 80]
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()

    loaded = load_checkpoint(result.checkpoint)
    assert loaded.tokenizer.labels() == result.labels
    assert loaded.training_state["global_step"] == 80
    classifier = MapperClassifierExtractor(loaded, device="cpu")
    held_out = loaded.training_state["training"]["validation_maps"]
    skipped = SkipLog()
    items = [item for item in classifier.items(maps, skipped) if item.id.split("#")[0] in held_out]
    features, logits = classifier.forward([item.payload for item in items])
    assert features.shape == (len(items), 64)
    predicted = [result.labels[i] for i in logits.argmax(axis=1)]
    accuracy = np.mean([p == item.label for p, item in zip(predicted, items)])
    assert accuracy > 2 * chance


def test_resumed_run_equals_uninterrupted_run(shared_data, tmp_path):
    maps = copy_sets(shared_data, tmp_path / "maps", SETS[3:5])
    options = tiny_options(max_steps=6, batch_size=4, validation_fraction=0.0, eval_every=100)
    whole = train_classifier(maps, tmp_path / "whole", options=options, progress=False)
    paused = train_classifier(
        maps, tmp_path / "parts", options=options, stop_at_step=3, progress=False
    )
    assert paused.steps == 3
    assert load_checkpoint(paused.checkpoint).training_state["global_step"] == 3
    resumed = train_classifier(
        maps, tmp_path / "parts", options=options, resume=True, progress=False
    )
    assert resumed.steps == 6
    np.testing.assert_allclose(resumed.train_losses, whole.train_losses, rtol=1e-5)
    first = load_checkpoint(whole.checkpoint).model.state_dict()
    second = load_checkpoint(resumed.checkpoint).model.state_dict()
    for key in first:
        torch.testing.assert_close(first[key], second[key], msg=key)

    with pytest.raises(InputError, match="already holds"):
        train_classifier(maps, tmp_path / "whole", options=options, progress=False)
    with pytest.raises(InputError, match="nothing to resume"):
        train_classifier(maps, tmp_path / "fresh", options=options, resume=True, progress=False)


def test_fine_tuning_replaces_the_classifier_head(shared_data, tmp_path):
    settings = ClassifierSettings.for_size("tiny", num_classes=5, vocab_size=1, **TINY)
    vocabulary = TokenizerState(
        event_ranges=[
            ("t", 0, 101),
            ("snap", 0, 16),
            ("pos_x", -256, 768),
            ("pos_y", -256, 640),
            ("new_combo", 0, 0),
            ("hitsound", 0, 72),
            ("volume", 0, 100),
            *[
                (name, 0, 0)
                for name in (
                    "circle",
                    "spinner",
                    "spinner_end",
                    "slider_head",
                    "bezier_anchor",
                    "perfect_anchor",
                    "catmull_anchor",
                    "red_anchor",
                    "last_anchor",
                    "slider_end",
                    "beat",
                    "measure",
                )
            ],
        ],
        class_index={user_id: i for i, user_id in enumerate((11, 22, 33, 44, 55))},
    )
    settings = dataclasses.replace(settings, vocab_size=vocabulary.vocab_size)
    torch.manual_seed(5)
    pretrained = build_model(settings)
    init = save_checkpoint(tmp_path / "pretrained.ckpt", pretrained, vocabulary)

    maps = copy_sets(shared_data, tmp_path / "maps", SETS[3:5])
    options = tiny_options(
        max_steps=1,
        batch_size=2,
        validation_fraction=0.0,
        learning_rate=1e-9,
        final_learning_rate=1e-9,
    )
    result = train_classifier(
        maps, tmp_path / "tuned", options=options, init_checkpoint=init, progress=False
    )
    tuned = load_checkpoint(result.checkpoint)
    assert tuned.tokenizer.labels() == ["Pikaquim", "R3formed"]
    assert tuned.tokenizer.event_ranges == vocabulary.event_ranges
    assert tuned.model.classifier.weight.shape == (2, settings.projector_dim)
    before, after = pretrained.state_dict(), tuned.model.state_dict()
    torch.testing.assert_close(
        after["projector.weight"], before["projector.weight"], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        after["transformer.encoder.conv1.weight"],
        before["transformer.encoder.conv1.weight"],
        atol=1e-6,
        rtol=0,
    )


def test_labels_files_and_map_selection(shared_data, tmp_path):
    maps = copy_sets(shared_data, tmp_path / "maps", SETS[3:5])
    names = sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*.osu"))
    (tmp_path / "labels.json").write_text(
        json.dumps({names[0]: "style A", Path(names[2]).name: "style B"})
    )
    (tmp_path / "labels.csv").write_text(f"beatmap,label\n{names[1]},style C\n")
    assert load_labels(tmp_path / "labels.csv") == {names[1]: "style C"}
    settings = ClassifierSettings.for_size("tiny", num_classes=1, vocab_size=1, **TINY)
    skipped = SkipLog()
    found, audio = collect_maps(
        maps, settings, skipped, labels=load_labels(tmp_path / "labels.json")
    )
    assert {(m.id, m.label) for m in found} == {(names[0], "style A"), (names[2], "style B")}
    assert len(audio) == 2
    assert sum(entry.reason.startswith("no label") for entry in skipped.entries) == len(names) - 2

    creators, _ = collect_maps(maps, settings, SkipLog())
    train, validation = split_maps(creators, 0.3, np.random.default_rng(0))
    assert {m.label for m in train} == {m.label for m in validation} == {"Pikaquim", "R3formed"}
    assert len(train) + len(validation) == len(creators)
