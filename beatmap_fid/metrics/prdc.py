"""Precision, recall, density and coverage: fidelity and diversity from k-NN balls.

Every sample gets a ball around it whose radius is the distance to its k-th nearest neighbour
in its own set (the sample itself not counted).

- precision (Kynkäänniemi et al. 2019, k = 3): share of generated samples inside at least one
  real ball: how much of the generated set looks real.
- recall (same paper): share of real samples inside at least one generated ball: how much of
  the real set the generated set reaches.
- density (Naeem et al. 2020, k = 5): number of real balls holding a generated sample, summed
  over generated samples and divided by k·m; about 1 when the sets match, above 1 when
  generated samples crowd where real samples are dense.
- coverage (same paper): share of real samples whose ball holds at least one generated sample;
  robust to outliers in the generated set.

Balls are closed (distance ≤ radius), as in Kynkäänniemi et al. and torch-fidelity; the ``prdc``
package uses a strict inequality. The two agree except on exact ties, which continuous features
never produce but copies do: a generated set that copies real samples puts them exactly on the
boundaries of real balls, and a sample with at least k exact copies in its own set has radius 0
(its ball holds exactly its copies). Such ties are decided exactly, whatever the float32
round-off: every radius is recomputed in float64 from the rows themselves, and every pair whose
float32 distance lies within the worst-case round-off of a radius is recomputed the same way.
So ``prdc(x, x)`` gives precision = recall = coverage = 1 even with duplicated rows. A set in
which every radius is 0 (constant features) is refused with an InputError: every ball would be
a single point.

Scaling: the neighbours come from exact FAISS k-NN searches (``IndexFlatL2``, float32, queries
in batches); the four metrics then need, for each generated sample, its distances to every real
sample. Those are computed block by block (a block of generated rows times all real rows, one
float32 matrix product, about 64 MiB), and all four counts are read from each block at once, so
memory stays O((n + m)·d) whatever the sizes and the time is one n × m × d product plus the two
k-NN searches. Both sets are first centred on the real mean (distances do not change, round-off
shrinks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from beatmap_fid.errors import InputError
from beatmap_fid.metrics._inputs import check_samples, feature_pair, load_features

_BLOCK_BYTES = 64 << 20
_QUERY_ROWS = 4096
_EXTRA_NEIGHBOURS = 4  # searched beyond the k-th, so that near-ties are ranked exactly
_PAIR_BYTES = 32 << 20  # float64 differences of the pairs recomputed exactly at once


def precision_recall(
    real: Any,
    generated: Any,
    *,
    k: int = 3,
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): ``{"precision", "recall"}``.

    ``real`` and ``generated`` are feature arrays (n, d), embedding stores or ``.h5`` paths,
    each with at least k + 1 samples. ``batch_size`` is the number of generated rows compared
    with all real rows at once (default: about 64 MiB of distances).
    """
    result = _prdc(real, generated, k, recall=True, batch_size=batch_size, progress=progress)
    return {"precision": result["precision"], "recall": result["recall"]}


def density_coverage(
    real: Any,
    generated: Any,
    *,
    k: int = 5,
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020): ``{"density", "coverage"}``.

    Only real balls are needed, so the k-NN search of the generated set is skipped.
    Arguments as in :func:`precision_recall`.
    """
    result = _prdc(real, generated, k, recall=False, batch_size=batch_size, progress=progress)
    return {"density": result["density"], "coverage": result["coverage"]}


def prdc(
    real: Any,
    generated: Any,
    *,
    k: int = 5,
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Precision, recall, density and coverage with one k, as the ``prdc`` package's
    ``compute_prdc``: ``{"precision", "recall", "density", "coverage"}``, from one pass."""
    return _prdc(real, generated, k, recall=True, batch_size=batch_size, progress=progress)


def knn_radii(features: Any, k: int, *, progress: bool = False) -> np.ndarray:
    """Distance (float64) from each row of ``features`` (n, d) to its k-th nearest other row.

    Exact duplicates count as neighbours at distance 0. Neighbours come from an exact FAISS
    search; the distances are recomputed in float64 from the rows.
    """
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k}")
    x, _ = load_features(features)
    check_samples(x, "features", metric=f"k-NN radii with k={k}", min_samples=k + 1)
    centred = np.subtract(x, x.mean(axis=0, dtype=np.float64), dtype=np.float32)
    return np.sqrt(_sq_radii(centred, k, progress))


def _prdc(
    real: Any, generated: Any, k: int, *, recall: bool, batch_size: int | None, progress: bool
) -> dict[str, float]:
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be a positive number of rows, got {batch_size}")
    x, y = feature_pair(
        real,
        generated,
        metric=f"precision/recall/density/coverage with k={k}",
        min_samples=k + 1,
        why="each sample needs k neighbours besides itself",
    )
    centre = x.mean(axis=0, dtype=np.float64)
    real_c = np.subtract(x, centre, dtype=np.float32)
    fake_c = np.subtract(y, centre, dtype=np.float32)
    real_radii = _checked(_sq_radii(real_c, k, progress, "real"), "real", k)
    fake_radii = (
        _checked(_sq_radii(fake_c, k, progress, "generated"), "generated", k) if recall else None
    )
    rows = batch_size or max(1, _BLOCK_BYTES // (4 * len(real_c)))
    holding, covered, recalled = _count_pairs(
        real_c, fake_c, real_radii, fake_radii, rows, progress
    )
    result = {"precision": float(np.mean(holding > 0))}
    if recalled is not None:
        result["recall"] = float(np.mean(recalled))
    result["density"] = float(holding.sum() / (k * len(fake_c)))
    result["coverage"] = float(np.mean(covered))
    return result


def _sq_radii(centred: np.ndarray, k: int, progress: bool, name: str = "features") -> np.ndarray:
    """Squared distance (float64) of every row to its k-th nearest other row.

    FAISS finds the k + 1 + a few nearest rows (the row itself included) in float32; their
    distances are then recomputed exactly and sorted, so duplicates give exactly 0 and ties
    are ties.
    """
    import faiss

    n = len(centred)
    wanted = min(n, k + 1 + _EXTRA_NEIGHBOURS)
    index = faiss.IndexFlatL2(centred.shape[1])
    index.add(centred)
    radii = np.empty(n)
    for start in tqdm(
        range(0, n, _QUERY_ROWS), desc=f"k-NN radii ({name})", unit="block", disable=not progress
    ):
        queries = centred[start : start + _QUERY_ROWS]
        _, neighbours = index.search(queries, wanted)
        rows = np.repeat(np.arange(start, start + len(queries)), wanted)
        exact = _exact_sq(centred, rows, centred, neighbours.ravel()).reshape(-1, wanted)
        radii[start : start + len(queries)] = np.sort(exact, axis=1)[:, k]
    return radii


def _checked(radii: np.ndarray, name: str, k: int) -> np.ndarray:
    if not radii.any():
        raise InputError(
            f"every {name} sample has at least {k} exact copies in its set (constant or "
            "duplicated features?), so every k-NN ball is a single point; check the extractor "
            "or remove the duplicates"
        )
    return radii


def _exact_sq(a: np.ndarray, a_rows: np.ndarray, b: np.ndarray, b_rows: np.ndarray) -> np.ndarray:
    """‖a[a_rows[p]] − b[b_rows[p]]‖² for every pair p, from float64 differences."""
    out = np.empty(len(a_rows))
    step = max(1, _PAIR_BYTES // (8 * a.shape[1]))
    for start in range(0, len(a_rows), step):
        pairs = slice(start, start + step)
        diff = np.subtract(a[a_rows[pairs]], b[b_rows[pairs]], dtype=np.float64)
        out[pairs] = np.einsum("ij,ij->i", diff, diff)
    return out


def _count_pairs(
    real: np.ndarray,
    fake: np.ndarray,
    real_radii: np.ndarray,
    fake_radii: np.ndarray | None,
    rows: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One pass over blocks of generated rows × all real rows, reading every count at once.

    Returns, per generated sample, the number of real balls that hold it; per real sample,
    whether its ball holds a generated sample (coverage); and, with ``fake_radii``, whether
    it lies in some generated ball (recall). Pairs whose float32 squared distance is within
    the worst-case round-off of the radius are decided by an exact recomputation.
    """
    real_norms = np.einsum("ij,ij->i", real, real)
    fake_norms = np.einsum("ij,ij->i", fake, fake)
    # Worst-case float32 error of ‖f‖² + ‖r‖² − 2fᵀr over d terms: 2(d + 2)·u·(‖f‖² + ‖r‖²).
    unit = float(np.finfo(np.float32).eps) / 2
    tolerance = 2 * (real.shape[1] + 2) * unit * float(real_norms.max() + fake_norms.max())
    real_bounds = _bounds(real_radii, tolerance)
    fake_bounds = None if fake_radii is None else _bounds(fake_radii, tolerance)

    holding = np.zeros(len(fake), dtype=np.int64)
    covered = np.zeros(len(real), dtype=bool)
    recalled = None if fake_radii is None else np.zeros(len(real), dtype=bool)
    for start in tqdm(
        range(0, len(fake), rows), desc="k-NN balls", unit="block", disable=not progress
    ):
        stop = min(start + rows, len(fake))
        squared = fake[start:stop] @ real.T
        squared *= -2.0
        squared += fake_norms[start:stop, None]
        squared += real_norms[None, :]

        # Real balls (one per column): precision, density, coverage.
        inside, near_rows, near_cols = _inside(squared, *(b[None, :] for b in real_bounds))
        exact = _exact_sq(fake, near_rows + start, real, near_cols) <= real_radii[near_cols]
        holding[start:stop] = np.count_nonzero(inside, axis=1)
        holding[start:stop] += np.bincount(near_rows[exact], minlength=stop - start)
        covered |= inside.any(axis=0)
        covered[near_cols[exact]] = True

        # Generated balls (one per row): recall.
        if fake_bounds is not None:
            inside, near_rows, near_cols = _inside(
                squared, *(b[start:stop, None] for b in fake_bounds)
            )
            exact = (
                _exact_sq(fake, near_rows + start, real, near_cols) <= fake_radii[near_rows + start]
            )
            recalled |= inside.any(axis=0)
            recalled[near_cols[exact]] = True
    return holding, covered, recalled


def _bounds(sq_radii: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """float32 squared radii minus and plus the round-off tolerance."""
    return (sq_radii - tolerance).astype(np.float32), (sq_radii + tolerance).astype(np.float32)


def _inside(
    squared: np.ndarray, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs surely inside (``squared <= low``), and the (row, column) pairs too close to the
    boundary to tell from float32 (``low < squared <= high``)."""
    inside = squared <= low
    near_rows, near_cols = np.nonzero((squared <= high) & ~inside)
    return inside, near_rows, near_cols
