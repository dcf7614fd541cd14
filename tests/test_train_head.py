"""``train-head`` on descriptor embeddings of the real maps: OverallDifficulty (regression)
and Creator (classification) beat their baselines on maps held out from training; ``score``
uses the head and refuses one made for another extractor configuration in one line."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from beatmap_fid.api import embed_to_store
from beatmap_fid.cli import main
from beatmap_fid.heads import load_head


@pytest.fixture(scope="module")
def songs_store(shared_data, tmp_path_factory) -> dict[str, Path]:
    """The real Songs folder embedded with ``descriptors``, and per map (id relative to the
    folder) its OverallDifficulty and, for creators with at least 3 maps here, its Creator."""
    songs = shared_data / "beatmaps" / "songs"
    root = tmp_path_factory.mktemp("train_head")
    store = embed_to_store(songs, "descriptors", root / "songs.h5").store_path
    rows = list(
        csv.DictReader(
            (shared_data / "beatmaps" / "MANIFEST.tsv").open(encoding="utf-8"), delimiter="\t"
        )
    )
    rows = [r for r in rows if r["relpath"].startswith("songs/") and r["Mode"] == "0"]
    difficulty, creator = {}, {}
    for row in rows:
        map_name = row["relpath"].removeprefix("songs/")
        text = (songs / map_name).read_text(encoding="utf-8", errors="replace")
        found = re.search(r"^OverallDifficulty\s*:\s*([0-9.]+)", text, re.MULTILINE)
        if found:
            difficulty[map_name] = found.group(1)
        creator[map_name] = row["Creator"]
    counts = Counter(creator.values())
    paths = {"store": store, "songs": songs, "root": root}
    for name, labels in (
        ("difficulty", difficulty),
        ("creator", {k: v for k, v in creator.items() if counts[v] >= 3}),
    ):
        path = root / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "label"])
            writer.writerows(sorted(labels.items()))
        paths[name] = path
    return paths


def train(capsys, store: Path, labels: Path, output: Path, task: str) -> dict:
    args = ["train-head", str(store), "--labels", str(labels), "-o", str(output)]
    assert main([*args, "--task", task, "--quiet", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_difficulty_regression_beats_the_mean_on_held_out_maps(songs_store, capsys):
    head_path = songs_store["root"] / "difficulty.pt"
    result = train(capsys, songs_store["store"], songs_store["difficulty"], head_path, "regression")
    held = result["held_out"]
    assert held["metric"] == "rmse" and held["grouping"] == "map"
    assert held["n_test_groups"] >= 20 and held["n_train_groups"] >= 100
    assert held["groups"]["head"] < 0.5 * held["groups"]["baseline"]
    assert held["rows"]["head"] < 0.5 * held["rows"]["baseline"]
    head = load_head(head_path)
    assert head.extractor == "descriptors" and head.config_hash == result["config_hash"]
    assert head.held_out["beats_baseline"] is True

    # score: a folder embedded with the head's configuration, each map near its difficulty
    maps = sorted(p for p in songs_store["songs"].iterdir() if p.is_dir())[0]
    assert main(["score", str(maps), "--head", str(head_path), "--quiet", "--json",
                 "--store-dir", str(songs_store["root"] / "stores")]) == 0  # fmt: skip
    scored = json.loads(capsys.readouterr().out)
    truth = dict(csv.reader(songs_store["difficulty"].open(encoding="utf-8")))
    errors = [
        abs(entry["score"] - float(truth[f"{maps.name}/{entry['file']}"]))
        for entry in scored["files"]
    ]
    assert errors and sum(errors) / len(errors) < 1.5


def test_creator_classification_beats_the_majority_label(songs_store, capsys):
    head_path = songs_store["root"] / "creator.pt"
    result = train(
        capsys, songs_store["store"], songs_store["creator"], head_path, "classification"
    )
    held = result["held_out"]
    assert held["metric"] == "accuracy" and held["beats_baseline"]
    assert held["groups"]["head"] > held["groups"]["baseline"] + 0.2
    assert len(result["labels"]) >= 10


def test_score_refuses_a_head_of_another_configuration_in_one_line(songs_store, capsys):
    head_path = songs_store["root"] / "difficulty_for_refusal.pt"
    train(capsys, songs_store["store"], songs_store["difficulty"], head_path, "regression")
    maps = sorted(p for p in songs_store["songs"].iterdir() if p.is_dir())[1]
    code = main(["score", str(maps), "--head", str(head_path), "--option", "use_audio=false",
                 "--quiet", "--store-dir", str(songs_store["root"] / "stores")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "config hash" in err and "--option" in err
    other = embed_to_store(
        maps,
        "descriptors",
        songs_store["root"] / "other.h5",
        extractor_options={"use_audio": False},
    )
    code = main(["score", str(other.store_path), "--head", str(head_path)])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "config hash" in err


def test_text_report_of_train_head(songs_store, capsys):
    args = ["train-head", str(songs_store["store"]), "--labels", str(songs_store["difficulty"])]
    out_path = songs_store["root"] / "text.pt"
    assert main([*args, "-o", str(out_path), "--quiet", "--epochs", "30"]) == 0
    text = capsys.readouterr().out
    assert "held out:" in text and "baseline, the training mean" in text
    assert text.strip().endswith(str(out_path))
