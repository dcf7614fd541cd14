"""Named reference statistics: add, list, remove and ``fid --reference`` round trip, with
provenance, and a reference made with another extractor configuration refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from beatmap_fid.api import compute_fid, embed_to_store
from beatmap_fid.beatmap.synthetic import write_synthetic_set
from beatmap_fid.cli import main
from beatmap_fid.errors import ConfigMismatchError, InputError
from beatmap_fid.references import (
    add_reference,
    list_references,
    load_reference,
    reference_fid,
    remove_reference,
)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BEATMAP_FID_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reference_sets")
    write_synthetic_set(root / "real", 12, seed=1, style="flow", duration_s=40.0)
    write_synthetic_set(root / "gen", 12, seed=2, style="jumps", duration_s=40.0)
    return {"real": root / "real", "gen": root / "gen"}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_add_list_fid_remove_round_trip(cache, folders, capsys):
    code, out, _ = run(capsys, "reference", "add", "flow", str(folders["real"]), "--quiet")
    assert code == 0 and "added flow: descriptors" in out
    assert (cache / "references" / "flow.npz").is_file()

    code, out, _ = run(capsys, "reference", "list", "--json")
    [row] = json.loads(out)["references"]
    assert row["name"] == "flow" and row["extractor"] == "descriptors"
    assert row["n_maps"] == 12 and row["n_vectors"] > 12 and row["options"] == {}
    assert row["source"] == str(folders["real"].resolve())
    assert row["library_version"] and row["created"] and len(row["config_hash"]) == 16

    code, out, _ = run(capsys, "fid", str(folders["gen"]), "--reference", "flow", "--json")
    assert code == 0
    by_reference = json.loads(out)
    direct = compute_fid(folders["real"], folders["gen"], store_dir=cache / "direct")
    assert by_reference["fid"] == pytest.approx(direct.fid, rel=1e-9)
    assert by_reference["real"]["source"] == "reference flow"
    assert by_reference["real"]["n_vectors"] == direct.real.n_vectors

    code, out, _ = run(capsys, "reference", "remove", "flow")
    assert code == 0 and not (cache / "references" / "flow.npz").exists()
    code, out, err = run(capsys, "fid", str(folders["gen"]), "--reference", "flow")
    assert code == 1 and "no reference named 'flow'" in err and len(err.splitlines()) == 1


def test_a_reference_of_another_configuration_is_refused(cache, folders, capsys):
    add_reference("flow", folders["real"])
    code, _, err = run(
        capsys, "fid", str(folders["gen"]), "--reference", "flow", "--option", "use_audio=false"
    )
    assert code == 1 and len(err.splitlines()) == 1
    assert "config hash" in err and "use_audio=False" in err
    with pytest.raises(ConfigMismatchError):
        reference_fid(folders["gen"], "flow", extractor_options={"window_samples": 65472})
    # A store of another configuration as the generated side is refused too.
    other = embed_to_store(
        folders["gen"], "descriptors", cache / "other.h5", extractor_options={"use_audio": False}
    )
    with pytest.raises(ConfigMismatchError, match="embed with the reference's"):
        reference_fid(other.store_path, "flow")


def test_reference_from_a_store_records_its_configuration(cache, folders):
    store = embed_to_store(folders["real"], "descriptors", cache / "real.h5").store_path
    reference = add_reference("from-store", store)
    assert reference.provenance["options"] is None
    assert reference.config_hash == load_reference("from-store").config_hash
    gen = embed_to_store(folders["gen"], "descriptors", cache / "gen.h5").store_path
    assert reference_fid(gen, "from-store", extractor="descriptors").fid == pytest.approx(
        compute_fid(store, gen).fid, rel=1e-9
    )
    with pytest.raises(InputError, match="records no extractor options"):
        reference_fid(gen, "from-store")


def test_names_and_overwrites_are_checked(cache, folders, tmp_path):
    add_reference("a", folders["real"])
    with pytest.raises(InputError, match="exists"):
        add_reference("a", folders["gen"])
    replaced = add_reference("a", folders["gen"], overwrite=True)
    assert replaced.provenance["source"] == str(folders["gen"].resolve())
    for bad in ("../escape", "", "a/b", ".hidden"):
        with pytest.raises(InputError, match="reference name"):
            add_reference(bad, folders["real"])
    stats = tmp_path / "plain.npz"
    np.savez(stats, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(InputError, match="records no extractor configuration"):
        add_reference("plain", stats)
    assert [r.name for r in list_references()] == ["a"]
    assert remove_reference("a").name == "a.npz"
    assert list_references() == []
