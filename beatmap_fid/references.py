"""Named reference statistics, like clean-fid's ``make_custom_stats``.

``add_reference("ranked-2024", "maps/ranked")`` embeds a folder once and keeps its Gaussian
statistics under a name, with their provenance: the extractor, the options it was built with,
its configuration and config hash, the number of vectors and maps, where they came from, the
library version and the date. ``reference_fid(generated, "ranked-2024")`` then compares a set
with them, and refuses when the extractor configuration asked for differs from the one the
reference was made with: statistics of different extractors, or of one extractor configured
differently, are never compared.

Each reference is one ``NAME.npz`` file in :func:`default_reference_dir` (``references/``
under the cache, ``$BEATMAP_FID_CACHE``): ``mu``, ``sigma`` and ``n`` as pytorch-fid and
clean-fid read them, plus ``provenance``, a JSON text.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from beatmap_fid._version import __version__
from beatmap_fid.api import (
    DEFAULT_EXTRACTOR,
    FIDResult,
    SideStatistics,
    SideSummary,
    compute_fid,
    default_store_dir,
    is_store_path,
    resolve_statistics,
)
from beatmap_fid.errors import ConfigMismatchError, InputError, StoreError
from beatmap_fid.extractors.base import Extractor, build_extractor, config_hash
from beatmap_fid.stats import GaussianStats
from beatmap_fid.store import open_store

PROVENANCE_FORMAT = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def default_reference_dir() -> Path:
    """``references/`` in the cache folder (:func:`beatmap_fid.api.default_store_dir`)."""
    return default_store_dir() / "references"


@dataclass(frozen=True)
class Reference:
    """A named reference: where its file is and its provenance; :attr:`stats` reads the
    statistics from the file."""

    name: str
    path: Path
    provenance: dict[str, Any]

    @property
    def extractor(self) -> str:
        return self.provenance["extractor"]

    @property
    def config_hash(self) -> str:
        return self.provenance["config_hash"]

    @property
    def stats(self) -> GaussianStats:
        return GaussianStats.load(self.path)

    def side(self) -> SideStatistics:
        """The statistics with their summary: a side of :func:`~beatmap_fid.api.compute_fid`."""
        summary = SideSummary(
            f"reference {self.name}",
            "reference",
            self.provenance.get("n_maps"),
            self.provenance["n_vectors"],
        )
        return SideStatistics(self.stats, summary)


def _checked_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(
            f"reference name {name!r} must start with a letter or digit and hold only letters, "
            "digits, '.', '_' and '-' (at most 100 characters)"
        )
    return name


def _folder(reference_dir: str | Path | None) -> Path:
    return Path(reference_dir) if reference_dir is not None else default_reference_dir()


def add_reference(
    name: str,
    source: str | Path,
    *,
    extractor: str = DEFAULT_EXTRACTOR,
    extractor_options: dict[str, Any] | None = None,
    store_dir: str | Path | None = None,
    reference_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = False,
    overwrite: bool = False,
) -> Reference:
    """Compute the statistics of ``source`` (a folder or file of maps, embedded with
    ``extractor`` built with ``extractor_options``, or an embedding store) and keep them as
    the reference ``name``. An existing name is replaced only with ``overwrite``."""
    folder = _folder(reference_dir)
    path = folder / f"{_checked_name(name)}.npz"
    if path.exists() and not overwrite:
        raise InputError(
            f"a reference named {name!r} exists ({path}); remove it first, or overwrite it"
        )
    source_path = Path(source)
    if source_path.suffix.lower() == ".npz":
        raise InputError(
            f"{source}: a .npz records no extractor configuration, so it cannot be checked "
            "against later runs; add a reference from a folder of maps or a store"
        )
    if is_store_path(source_path):
        with open_store(source_path) as store:
            name_used, config, options = store.extractor, store.config, None
        built: Extractor | None = None
    else:
        options = dict(extractor_options or {})
        built = build_extractor(extractor, **options)
        name_used, config = built.name, built.config
    stats, summary = resolve_statistics(
        source_path, built, store_dir=store_dir, batch_size=batch_size, progress=progress
    )
    provenance = {
        "format": PROVENANCE_FORMAT,
        "name": name,
        "extractor": name_used,
        "options": options,
        "config": config,
        "config_hash": config_hash(config),
        "n_vectors": stats.n,
        "n_maps": summary.n_sources,
        "dim": stats.dim,
        "skipped": len(summary.skipped),
        "source": str(source_path.resolve()),
        "library_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        np.savez(
            handle,
            mu=stats.mu,
            sigma=stats.sigma,
            n=np.int64(stats.n),
            provenance=np.array(json.dumps(provenance, default=str)),
        )
    os.replace(partial, path)
    return Reference(name, path, provenance)


def _read_provenance(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "provenance" not in data.files:
                raise StoreError(f"{path} is not a beatmap_fid reference: it has no provenance")
            return json.loads(str(data["provenance"]))
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise StoreError(f"cannot read reference file {path}: {err}") from err


def load_reference(name: str, *, reference_dir: str | Path | None = None) -> Reference:
    """The reference ``name``; InputError naming the known references when there is none."""
    path = _folder(reference_dir) / f"{_checked_name(name)}.npz"
    if not path.is_file():
        known = ", ".join(r.name for r in list_references(reference_dir=reference_dir))
        raise InputError(
            f"no reference named {name!r} in {path.parent}"
            + (f"; known references: {known}" if known else "; add one with 'reference add'")
        )
    return Reference(name, path, _read_provenance(path))


def list_references(*, reference_dir: str | Path | None = None) -> list[Reference]:
    """Every reference, sorted by name."""
    folder = _folder(reference_dir)
    if not folder.is_dir():
        return []
    return [
        Reference(path.stem, path, _read_provenance(path))
        for path in sorted(folder.glob("*.npz"))
        if _NAME.fullmatch(path.stem)
    ]


def remove_reference(name: str, *, reference_dir: str | Path | None = None) -> Path:
    """Delete the reference ``name``; returns the path of the removed file."""
    reference = load_reference(name, reference_dir=reference_dir)
    reference.path.unlink()
    return reference.path


def _describe(extractor: str, options: dict[str, Any] | None) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in (options or {}).items())
    return f"{extractor!r}" + (f" with {shown}" if shown else "")


def reference_fid(
    generated: Any,
    name: str,
    *,
    extractor: str | None = None,
    extractor_options: dict[str, Any] | None = None,
    reference_dir: str | Path | None = None,
    store_dir: str | Path | None = None,
    batch_size: int = 64,
    device: str | None = None,
    strict: bool = False,
    progress: bool = False,
    cache: bool = True,
) -> FIDResult:
    """FID between ``generated`` (a folder, store or feature array) and the reference
    ``name``.

    ``extractor`` and ``extractor_options`` default to those the reference was made with
    (options given alone go to the reference's extractor).
    Whatever is asked for must give the reference's config hash, and a store given as
    ``generated`` must hold vectors of that configuration: anything else raises
    ConfigMismatchError.
    """
    reference = load_reference(name, reference_dir=reference_dir)
    if extractor is None and extractor_options is None:
        if reference.provenance.get("options") is None:
            raise InputError(
                f"reference {name!r} was made from a store, which records no extractor options: "
                f"pass the extractor and options its {reference.extractor!r} vectors were made "
                "with"
            )
        extractor, extractor_options = reference.extractor, reference.provenance["options"]
    built = build_extractor(extractor or reference.extractor, **(extractor_options or {}))
    asked = config_hash(built.config)
    if asked != reference.config_hash:
        raise ConfigMismatchError(
            f"reference {name!r} holds {_describe(reference.extractor, reference.provenance.get('options'))} "
            f"statistics (config hash {reference.config_hash}); the extractor asked for, "
            f"{_describe(built.name, extractor_options)}, has config hash {asked}: use the "
            "reference's extractor and options, or add a reference made with these"
        )
    if is_store_path(generated):
        with open_store(generated) as store:
            if store.config_hash != reference.config_hash:
                raise ConfigMismatchError(
                    f"{generated} holds {store.extractor!r} vectors with config hash "
                    f"{store.config_hash}; reference {name!r} has config hash "
                    f"{reference.config_hash}: embed with the reference's extractor and options"
                )
    return compute_fid(
        reference.side(),
        generated,
        extractor=built,
        store_dir=store_dir,
        batch_size=batch_size,
        device=device,
        strict=strict,
        progress=progress,
        cache=cache,
    )
