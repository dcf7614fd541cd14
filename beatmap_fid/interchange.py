"""Stores to and from the layout of the retrieval ecosystem (embedding-reader, autofaiss,
clip-retrieval): index-aligned ``.npy`` embeddings and ``.parquet`` metadata.

``export_npy_parquet`` writes::

    DIR/embeddings/embeddings_00000.npy     float32 (n₀, d), rows in store order
    DIR/metadata/metadata_00000.parquet     columns id, label, fingerprint, n_events (n₀ rows)
    ...
    DIR/store.json                          extractor, config and hash, dimension, rows, files

File k of each folder holds the same rows, which is how those tools pair them (by sorted
name). ``import_npy_parquet`` reads such a folder, or one written by those tools (any float
``.npy`` of shape (n, d), any parquet metadata with an id column), into a store. A store
exported and imported again is identical: vectors bit for bit, ids, labels, fingerprints,
event counts and extractor configuration.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from beatmap_fid.errors import InputError, StoreError
from beatmap_fid.store import NOT_COUNTED, StoreWriter, open_store

FORMATS = ("npy-parquet",)
EXPORT_FORMAT = "beatmap_fid.npy_parquet"
EMBEDDINGS_DIR = "embeddings"
METADATA_DIR = "metadata"
DESCRIPTION = "store.json"
ROWS_PER_FILE = 1_000_000
_BLOCK_BYTES = 64 << 20


def _ranges(total: int, step: int) -> Iterator[tuple[int, int]]:
    for low in range(0, total, step):
        yield low, min(total, low + step)


def export_npy_parquet(
    source: Any,
    output: str | os.PathLike,
    *,
    rows_per_file: int = ROWS_PER_FILE,
    progress: bool = True,
) -> Path:
    """Write the store ``source`` (a path of a store or sharded store, or an open one) to the
    folder ``output`` in the npy-parquet layout; returns the folder. ``output`` must not exist
    or be empty; the folder appears complete or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows_per_file < 1:
        raise InputError(f"rows_per_file must be at least 1, got {rows_per_file}")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise StoreError(f"{output} exists and is not an empty folder; export to a new folder")
    store = open_store(source) if isinstance(source, str | os.PathLike) else source
    try:
        n, dim = len(store), int(store.dim)
        ids = np.asarray(store.ids, dtype=object)
        labels = store.labels
        labels = np.full(n, "", dtype=object) if labels is None else labels
        prints = store.fingerprints
        counts = store.n_events
        counts = np.full(n, NOT_COUNTED, dtype=np.int32) if counts is None else counts
        partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        (partial / EMBEDDINGS_DIR).mkdir(parents=True)
        (partial / METADATA_DIR).mkdir()
        files = []
        block = max(1, _BLOCK_BYTES // (4 * dim))
        with tqdm(total=n, desc="exporting", unit="row", disable=not progress) as bar:
            for number, (low, high) in enumerate(_ranges(n, rows_per_file)):
                name = f"{number:05d}"
                vectors = np.lib.format.open_memmap(
                    partial / EMBEDDINGS_DIR / f"embeddings_{name}.npy",
                    mode="w+",
                    dtype=np.float32,
                    shape=(high - low, dim),
                )
                for start, stop in _ranges(high - low, block):
                    vectors[start:stop] = store.vectors(slice(low + start, low + stop))
                    bar.update(stop - start)
                vectors.flush()
                del vectors
                table = pa.table(
                    {
                        "id": pa.array(ids[low:high].tolist(), pa.string()),
                        "label": pa.array(labels[low:high].tolist(), pa.string()),
                        "fingerprint": pa.array(prints[low:high].tolist(), pa.string()),
                        "n_events": pa.array(counts[low:high], pa.int32()),
                    }
                )
                pq.write_table(table, partial / METADATA_DIR / f"metadata_{name}.parquet")
                files.append({"embeddings": f"embeddings_{name}.npy", "rows": high - low})
        description = {
            "format": EXPORT_FORMAT,
            "extractor": store.extractor,
            "config": store.config,
            "config_hash": store.config_hash,
            "dim": dim,
            "rows": n,
            "files": files,
        }
        (partial / DESCRIPTION).write_text(json.dumps(description, indent=1), encoding="utf-8")
    finally:
        if isinstance(source, str | os.PathLike):
            store.close()
    if output.exists():
        output.rmdir()
    os.replace(partial, output)
    return output


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    embeddings = sorted((folder / EMBEDDINGS_DIR).glob("*.npy"))
    metadata = sorted((folder / METADATA_DIR).glob("*.parquet"))
    if not embeddings:
        raise InputError(f"{folder} has no {EMBEDDINGS_DIR}/*.npy files")
    if len(embeddings) != len(metadata):
        raise InputError(
            f"{folder} has {len(embeddings)} .npy files in {EMBEDDINGS_DIR}/ but "
            f"{len(metadata)} .parquet files in {METADATA_DIR}/; they must pair up one to one"
        )
    return list(zip(embeddings, metadata))


def import_npy_parquet(
    folder: str | os.PathLike,
    output: str | os.PathLike,
    *,
    extractor: str | None = None,
    id_column: str = "id",
    label_column: str = "label",
    progress: bool = True,
) -> Path:
    """Read a folder in the npy-parquet layout into the store ``output``; returns its path.

    The extractor and its configuration come from the folder's ``store.json`` when it has
    one; otherwise ``extractor`` names the vectors (default ``"imported"``, empty config).
    Ids come from ``id_column``; labels, fingerprints and event counts are read when their
    columns are present. Rows the store holds already (same id) are skipped.
    """
    import pyarrow.parquet as pq

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(
            f"{folder} is not a folder (expected {EMBEDDINGS_DIR}/ and {METADATA_DIR}/)"
        )
    pairs = _pairs(folder)
    description: dict[str, Any] = {}
    if (folder / DESCRIPTION).is_file():
        description = json.loads((folder / DESCRIPTION).read_text(encoding="utf-8"))
        if description.get("format") != EXPORT_FORMAT:
            raise InputError(f"{folder / DESCRIPTION} is not a beatmap_fid export description")
        if extractor is not None and extractor != description["extractor"]:
            raise InputError(
                f"{folder} holds vectors of extractor {description['extractor']!r}; "
                f"do not name another ({extractor!r})"
            )
    name = description.get("extractor") or extractor or "imported"
    config = description.get("config") or {}
    arrays = [np.load(path, mmap_mode="r") for path, _ in pairs]
    for (path, _), array in zip(pairs, arrays):
        if array.ndim != 2 or array.dtype.kind != "f":
            raise InputError(f"{path} holds {array.dtype} {array.shape}, not floats (n, d)")
    dims = {array.shape[1] for array in arrays}
    if len(dims) != 1:
        raise InputError(f"the .npy files of {folder} have different dimensions: {sorted(dims)}")
    dim = dims.pop()
    if description and description.get("dim") != dim:
        raise InputError(
            f"{folder}: store.json says dimension {description.get('dim')}, files {dim}"
        )
    total = sum(len(array) for array in arrays)
    block = max(1, _BLOCK_BYTES // (4 * dim))
    with (
        StoreWriter(output, name, config, dim) as writer,
        tqdm(total=total, desc="importing", unit="row", disable=not progress) as bar,
    ):
        for (vector_path, metadata_path), array in zip(pairs, arrays):
            table = pq.read_table(metadata_path)
            if table.num_rows != len(array):
                raise InputError(
                    f"{metadata_path.name} has {table.num_rows} rows, {vector_path.name} "
                    f"{len(array)}: the files must be index aligned"
                )
            if id_column not in table.column_names:
                raise InputError(
                    f"{metadata_path} has no column {id_column!r} (columns: "
                    f"{', '.join(table.column_names)}); name the id column"
                )
            ids = [str(value) for value in table.column(id_column).to_pylist()]
            labels = _column(table, label_column)
            prints = _column(table, "fingerprint")
            counts = (
                table.column("n_events").to_pylist() if "n_events" in table.column_names else None
            )
            for low, high in _ranges(len(array), block):
                writer.append(
                    ids[low:high],
                    np.asarray(array[low:high]),
                    None if labels is None else labels[low:high],
                    None if prints is None else [value or None for value in prints[low:high]],
                    None
                    if counts is None
                    else [None if c is None or c < 0 else int(c) for c in counts[low:high]],
                )
                bar.update(high - low)
    return Path(output)


def _column(table: Any, name: str) -> list[str] | None:
    if name not in table.column_names:
        return None
    return ["" if value is None else str(value) for value in table.column(name).to_pylist()]
