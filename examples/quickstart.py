"""A tour of the Python API on the bundled example maps (no model weights needed).

    python examples/quickstart.py

Writes its stores and a report under examples/output/ (untracked).
"""

from __future__ import annotations

from pathlib import Path

import beatmap_fid as bf

HERE = Path(__file__).resolve().parent
REAL, GENERATED, OUTPUT = HERE / "data" / "real", HERE / "data" / "generated", HERE / "output"


def main() -> None:
    # 1. FID between two folders of maps: each folder is embedded once into a resumable store.
    result = bf.compute_fid(REAL, GENERATED, store_dir=OUTPUT, progress=False)
    print(
        f"FID = {result.fid:.4f} ({result.real.n_vectors} vs {result.generated.n_vectors} windows)"
    )

    # 2. The same number from a generation loop, without writing generated maps to disk.
    metric = bf.StreamingFID(REAL, store_dir=OUTPUT)
    for path in sorted(GENERATED.glob("*.osu")):
        metric.update(path.read_text(encoding="utf-8"))
    print(f"streaming FID = {metric.compute():.4f}")

    # 3. More than one number: KID, precision/recall/density/coverage, rhythm metrics.
    scores = bf.evaluate(
        REAL,
        GENERATED,
        metrics=["fid", "kid", "prdc"],
        store_dir=OUTPUT,
        progress=False,
        kid={"subset_size": 20},
    )
    print({name: round(value, 4) for name, value in scores.items()})

    # 4. Nearest neighbours of generated windows among the real ones.
    real_store = bf.embed_to_store(REAL, "descriptors", OUTPUT / "real.h5", progress=False)
    index = bf.build_index(real_store.store_path, progress=False)
    generated = bf.embed_to_store(GENERATED, "descriptors", OUTPUT / "gen.h5", progress=False)
    with bf.EmbeddingStore(generated.store_path) as store:
        hits = index.search(store.vectors()[:3], k=3)
    print("nearest real windows of the first generated window:", [str(i) for i in hits.ids[0]])


if __name__ == "__main__":
    main()
