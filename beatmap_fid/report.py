"""A readable evaluation report: ``report.json`` and a self-contained ``report.html``.

:func:`build_report` embeds both sides (as :func:`beatmap_fid.evaluate.evaluate` does) and
writes, into one folder:

- the numbers with their uncertainty: FID with its bias-corrected bootstrap interval, FD∞ (the
  FID extrapolated to infinitely many samples), KID ± its standard deviation over subsets,
  precision / recall / density / coverage, and the rhythm metrics when both sides are folders
  of beatmaps that pair up (see :mod:`beatmap_fid.metrics.rhythm`);
- a 2-D map of both sets (UMAP when umap-learn is importable, else t-SNE; PCA on request),
  made from at most ``max_points`` vectors, standardised per feature first. UMAP compiles its
  numba kernels in every new process (10–30 s on a small machine), so for a single report of a
  few hundred vectors ``projection="tsne"`` or ``"pca"`` is quicker;
- per-map contributions: which generated maps sit furthest from the real distribution. Every
  generated window gets its squared Mahalanobis distance D² under the real Gaussian (the model
  FID itself fits: the real mean and covariance, features standardised by the real standard
  deviations, the covariance Ledoit-Wolf-shrunk so that it is invertible even with fewer real
  windows than dimensions), and a map's value is the mean D² of its windows (the windows
  ``file#k`` of one file count as one map), shown beside the real windows' own mean D² on a
  log scale (a few maps far off would flatten the others on a linear one), with full names.
  (The change in FID when a map is left out was tried and rejected: at a few hundred windows
  it is dominated by FID's 1/N bias and by the loss of coverage of the real map that the left-out
  map pairs with, so it ranked heavily disturbed maps near the bottom.)
- FID-against-N curves: FID of nested random subsets of growing size, for a few seeds, with the
  fitted FD∞ + c/N and the FD∞ line (:func:`beatmap_fid.metrics.fd_infinity`);
- how well the FD∞ fit holds: when the line FD∞ + c/N misses the full sets' FID by more than
  :data:`FIT_MISS_TOLERANCE`, or FD∞ differs that much between seeds, a warning says so in
  words (``"fd_inf_fit"`` in ``report.json``);
- for the ``descriptors`` extractor, which named features make up the FID: its exact split
  into one mean term and one covariance term per feature, and per group of features
  (:mod:`beatmap_fid.metrics.attribution`);
- why a section is missing: ``"notes"`` names each section left out (rhythm when the maps
  do not pair up, feature shares without descriptors, ...) with the reason;
- the scale for reading FID: the FID between two random halves of the real maps (split by
  map, several splits, :func:`~beatmap_fid.metrics.fid_uncertainty.split_half_fid`), what FID
  shows when only sampling differs;
- warnings when a set is too small to trust: fewer vectors than dimensions, or very few maps
  (:func:`~beatmap_fid.metrics.fid_uncertainty.sample_warnings`), in ``report.json``
  (``"warnings"``) and at the top of the page.

With several extractors (``extractor="descriptors,cm3p"``) both folders are read once for all
of them, every sample metric is reported per extractor, and per game mode; calc_fid's pair
metrics and the training-set overlap get their own sections (:mod:`beatmap_fid.report_sections`).

The HTML file has its CSS inline and its figures as base64 PNG data URIs: it opens anywhere,
offline, and makes no external request.
"""

from __future__ import annotations

import base64
import html
import json
import math
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from beatmap_fid._version import __version__
from beatmap_fid.api import DEFAULT_EXTRACTOR
from beatmap_fid.embed_many import sides_for_extractors
from beatmap_fid.errors import InputError, InsufficientSamplesError
from beatmap_fid.evaluate import (
    RHYTHM,
    EvalSide,
    check_metric_names,
    compute_metrics,
    rhythm_missing_reason,
)
from beatmap_fid.extractors.base import Extractor, map_id
from beatmap_fid.metrics.fid_uncertainty import sample_warnings, split_half_fid
from beatmap_fid.report_sections import (
    PAIR_METRICS,
    build_extractors,
    extractor_metrics,
    render_sections,
    ssm_index,
)

REPORT_METRICS = ("fid", "fid_ci", "kid", "prdc")
"""Metrics of the report when none are named (plus rhythm when it applies); FD∞ always."""
PROJECTIONS = ("auto", "umap", "tsne", "pca")
FIT_MISS_TOLERANCE = 0.05
"""The report warns when the FD∞ fit misses the full sets' FID by more than this fraction
(about what shows on its figure), or FD∞ differs as much between seeds."""
_HIGHLIGHTED_MAPS = 5
_SHARED_FEATURES = 15  # features drawn and listed in the feature-shares section


@dataclass(frozen=True)
class MapContribution:
    """How far one generated map (all of its windows) sits from the real distribution."""

    map: str
    windows: int
    distance: float  # mean squared Mahalanobis distance of its windows under the real Gaussian
    max_distance: float  # largest of them


@dataclass(frozen=True)
class Projection:
    """2-D coordinates of a subsample of both sets, and the rows they came from."""

    method: str
    real_rows: np.ndarray
    generated_rows: np.ndarray
    real_xy: np.ndarray
    generated_xy: np.ndarray


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and everything in it (the content of ``report.json``)."""

    json_path: Path
    html_path: Path
    data: dict[str, Any]


def real_gaussian_distances(
    real: np.ndarray, generated: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Squared Mahalanobis distances of the generated rows and of the real rows themselves
    under the real Gaussian: features standardised by the real mean and standard deviation,
    covariance shrunk with Ledoit-Wolf (invertible however few rows there are)."""
    from scipy.linalg import cho_factor, cho_solve
    from sklearn.covariance import ledoit_wolf

    x = np.asarray(real, dtype=np.float64)
    y = np.asarray(generated, dtype=np.float64)
    if len(x) < 2:
        raise InsufficientSamplesError("distances under the real Gaussian need 2 real rows")
    centre = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0  # constant real features: distances in their raw units
    xs, ys = (x - centre) / scale, (y - centre) / scale
    covariance, _ = ledoit_wolf(xs, assume_centered=True)
    ridge = 1e-9 * max(float(np.trace(covariance)) / len(covariance), 1e-12)
    factor = cho_factor(covariance + ridge * np.eye(len(covariance)))

    def squared(rows: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ji->i", rows, cho_solve(factor, rows.T))

    return squared(ys), squared(xs)


def map_contributions(
    real: np.ndarray, generated: np.ndarray, ids: Any
) -> tuple[list[MapContribution], float]:
    """Every generated map's mean D² under the real Gaussian (see the module documentation),
    furthest first, and the real windows' own mean D² for scale; ``ids`` are the generated
    rows' item ids (``file#k``)."""
    maps, groups = np.unique([map_id(str(i)) for i in ids], return_inverse=True)
    generated_d2, real_d2 = real_gaussian_distances(real, generated)
    windows = np.bincount(groups, minlength=len(maps))
    means = np.bincount(groups, generated_d2, minlength=len(maps)) / windows
    largest = np.full(len(maps), -np.inf)
    np.maximum.at(largest, groups, generated_d2)
    contributions = [
        MapContribution(str(name), int(count), float(mean), float(peak))
        for name, count, mean, peak in zip(maps, windows, means, largest)
    ]
    contributions.sort(key=lambda c: c.distance, reverse=True)
    return contributions, float(real_d2.mean())


def _standardised(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    both = np.vstack([x, y]).astype(np.float64)
    scale = both.std(axis=0)
    scale[scale < 1e-12] = 1.0
    centre = both.mean(axis=0)
    return (x - centre) / scale, (y - centre) / scale


def _umap_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def project_2d(
    real: np.ndarray,
    generated: np.ndarray,
    *,
    method: str = "auto",
    max_points: int = 1000,
    seed: int = 0,
) -> Projection:
    """2-D coordinates of at most ``max_points`` vectors of both sets (each side subsampled
    in proportion to its size), standardised per feature. ``method``: ``"umap"``, ``"tsne"``,
    ``"pca"`` or ``"auto"`` (UMAP when umap-learn is importable, else t-SNE)."""
    if method not in PROJECTIONS:
        raise InputError(f"projection must be one of {PROJECTIONS}, got {method!r}")
    if max_points < 4:
        raise InputError(f"max_points must be at least 4, got {max_points}")
    rng = np.random.default_rng(seed)
    total = len(real) + len(generated)
    keep = min(1.0, max_points / total)
    rows = [
        np.sort(rng.choice(len(side), max(2, round(len(side) * keep)), replace=False))
        if len(side) > 2
        else np.arange(len(side))
        for side in (real, generated)
    ]
    x, y = _standardised(real[rows[0]], generated[rows[1]])
    points = np.vstack([x, y])
    if method == "auto":
        method = "umap" if _umap_importable() else "tsne"
    if len(points) < 20:  # too few points for a neighbour graph
        method = "pca"
    xy = _embed_2d(points, method, seed)
    return Projection(method, rows[0], rows[1], xy[: len(x)], xy[len(x) :])


def _embed_2d(points: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "umap":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import umap

            reducer = umap.UMAP(
                n_components=2, n_neighbors=min(15, len(points) - 1), random_state=seed
            )
            return np.asarray(reducer.fit_transform(points), dtype=np.float64)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, (len(points) - 1) / 3.0))
        tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
        return np.asarray(tsne.fit_transform(points), dtype=np.float64)
    centred = points - points.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T


def fid_curves(
    real: np.ndarray,
    generated: np.ndarray,
    *,
    seeds: int = 3,
    progress: bool = False,
    **fd_options: Any,
) -> list[Any]:
    """``seeds`` :func:`~beatmap_fid.metrics.fd_infinity` fits with seeds s, s + 1, ... where
    s = ``fd_options["seed"]`` (default 0), so the first is the FD∞ that
    ``evaluate(..., ["fd_inf"], fd_inf=fd_options)`` reports; ``fd_options`` go to each fit."""
    from beatmap_fid.metrics import fd_infinity

    first = int(fd_options.pop("seed", 0))
    return [
        fd_infinity(real, generated, seed=first + index, **fd_options)
        for index in tqdm(range(seeds), desc="FID against N", unit="seed", disable=not progress)
    ]


def fd_inf_fit(curves: list[Any], dim: int) -> dict[str, Any]:
    """How well FD∞ + c/N fits the FID of the subsets: the fitted line at the full size against
    the FID measured there, the FD∞ of every seed, and a note (in words) when the fit misses
    the full sets' FID by more than :data:`FIT_MISS_TOLERANCE`, the seeds disagree as much,
    or the smallest subsets hold no more vectors than dimensions (where the 1/N law does not
    hold)."""
    first = curves[0]
    full_size, measured = int(first.sizes[-1]), float(first.fids[-1])
    fitted = first.value + first.slope / full_size
    miss = abs(fitted - measured) / measured if measured > 0 else 0.0
    seeds = [float(c.value) for c in curves]
    spread = (max(seeds) - min(seeds)) / measured if measured > 0 else 0.0
    note = short = None
    too_small = int(first.sizes[0]) <= dim
    if miss > FIT_MISS_TOLERANCE or spread > FIT_MISS_TOLERANCE or too_small:
        short = (
            f"fit misses FID(all) by {miss:.0%}; FD∞ over {len(seeds)} seeds: "
            f"{min(seeds):.3g} … {max(seeds):.3g}"
        )
        note = (
            f"FD∞ is unreliable here: the straight line FID = FD∞ + c/N fitted to random subsets "
            f"gives {fitted:.4g} at the full size N = {full_size}, where FID is {measured:.4g} "
            f"({miss:.0%} off), and FD∞ ranges from {min(seeds):.4g} to {max(seeds):.4g} over "
            f"{len(seeds)} seeds. The 1/N law holds when the subsets are much larger than the "
            f"dimension (the smallest held {int(first.sizes[0])} vectors for {dim} dimensions) "
            "and their vectors independent (windows of one map are not): compare FIDs at equal "
            "N instead"
        )
    return {
        "full_size": full_size,
        "measured_fid": measured,
        "fit_at_full_size": float(fitted),
        "relative_miss": float(miss),
        "seed_values": seeds,
        "note": note,
        "short_note": short,
    }


def descriptor_shares(real: EvalSide, generated: EvalSide) -> dict[str, Any]:
    """The descriptors' FID split per named feature and per feature group
    (:func:`beatmap_fid.metrics.attribution.feature_shares`)."""
    from beatmap_fid.extractors.descriptors import DESCRIPTOR_GROUPS, DESCRIPTOR_NAMES
    from beatmap_fid.metrics.attribution import feature_shares

    shares = feature_shares(real.vectors, generated.vectors)
    return {
        "extractor": "descriptors",
        "fid": shares.fid,
        "mean_term": float(shares.mean_terms.sum()),
        "covariance_term": float(shares.covariance_terms.sum()),
        "features": shares.table(DESCRIPTOR_NAMES),
        "groups": shares.groups(DESCRIPTOR_GROUPS, DESCRIPTOR_NAMES),
    }


def _side_dict(side: EvalSide) -> dict[str, Any]:
    data = side.summary.to_dict()
    data["extractor"] = side.extractor
    data["config_hash"] = side.config_hash
    return data


def build_report(
    real: Any,
    generated: Any,
    output_dir: str | Path,
    *,
    extractor: Extractor | str = DEFAULT_EXTRACTOR,
    metrics: list[str] | None = None,
    store_dir: str | Path | None = None,
    batch_size: int = 64,
    projection: str = "auto",
    max_points: int = 1000,
    top: int = 20,
    curve_seeds: int = 3,
    seed: int = 0,
    title: str | None = None,
    progress: bool = False,
    extractor_options: dict[str, Any] | None = None,
    **options: dict[str, Any],
) -> ReportResult:
    """Write ``report.json`` and ``report.html`` comparing ``real`` and ``generated`` into
    ``output_dir``; see the module documentation for the contents.

    Sides are what :func:`beatmap_fid.evaluate.evaluate` takes, except statistics (the report
    needs vectors). ``metrics`` (default :data:`REPORT_METRICS`, plus rhythm when it applies)
    and the per-metric ``options`` are as in ``evaluate``. ``top``: contributors listed;
    ``curve_seeds``: FID-against-N curves drawn. A metric the sets are too small for is
    left out with a note rather than failing the report.
    """
    if top < 1 or curve_seeds < 1:
        raise InputError("top and curve_seeds must be at least 1")
    if projection not in PROJECTIONS:
        raise InputError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    names = check_metric_names(
        metrics if metrics is not None else list(REPORT_METRICS),
        options,
        False,
    )
    rhythm_options = options.get(RHYTHM) or {}
    notes: dict[str, str] = {}
    if metrics is None:
        missing = rhythm_missing_reason(real, generated, rhythm_options.get("mapping"))
        if missing is None:
            names += [RHYTHM, "paired"]
        else:
            notes[RHYTHM] = notes["paired"] = missing
    if "overlap" in options and "overlap" not in names:
        names.append("overlap")
    if "overlap" not in names:
        notes["overlap"] = (
            "not asked for: give the training set (--training-ids FILE or --training-store "
            "STORE.h5) to count generated maps that copy it"
        )
    names = [n for n in names if n != "fd_inf"]  # FD∞ comes from the curves below
    output_dir = Path(output_dir)
    stages = tqdm(total=6, desc="report", unit="step", disable=not progress)

    extractors = build_extractors(extractor, extractor_options)
    all_sides = sides_for_extractors(
        real, generated, extractors, store_dir=store_dir, batch_size=batch_size, progress=progress
    )
    real_side, gen_side = all_sides[0]
    stages.update()

    per_extractor = []
    for built, (real_e, gen_e) in zip(extractors, all_sides):
        found, found_notes = extractor_metrics(real_e, gen_e, names, options)
        per_extractor.append(
            {
                "name": built.name,
                "config_hash": real_e.config_hash,
                "metrics": found,
                "notes": found_notes,
            }
        )
    values: dict[str, float] = dict(per_extractor[0]["metrics"])
    notes.update(per_extractor[0]["notes"])
    rhythm = None
    details: dict[str, Any] = {}
    for name in [n for n in names if n in PAIR_METRICS]:
        sides = all_sides[ssm_index(extractors)] if name == "paired" else (real_side, gen_side)
        try:
            found, found_rhythm = compute_metrics(
                *sides, [name], options, progress=False, details=details
            )
        except InputError as err:  # e.g. maps that do not pair up: noted, not fatal
            notes[name] = str(err)
            continue
        values.update(found)
        rhythm = found_rhythm or rhythm
    if rhythm is not None:
        from beatmap_fid.by_mode import per_mode_values

        values.update(per_mode_values(real_side, gen_side, ["rhythm"], options)[0])
    stages.update()

    x, y = real_side.vectors, gen_side.vectors
    contributions, real_distance = map_contributions(x, y, gen_side.ids)
    warnings_found = sample_warnings(
        x.shape[1],
        real=(len(x), real_side.summary.n_sources),
        generated=(len(y), gen_side.summary.n_sources),
    )
    split_half = None
    try:
        split_half = split_half_fid(x, real_side.ids, seed=seed).to_dict()
    except InputError as err:
        notes["split_half"] = str(err)
    stages.update()

    curves = []
    try:
        curves = fid_curves(x, y, seeds=curve_seeds, progress=progress, **options.get("fd_inf", {}))
    except InputError as err:
        notes["fd_inf"] = str(err)
    fit = fd_inf_fit(curves, x.shape[1]) if curves else None
    if curves:
        values["fd_inf"] = curves[0].value
        values["fd_inf_slope"] = curves[0].slope
        if fit["note"]:
            warnings_found.append(fit["note"])
    shares = None
    shares_index = next((i for i, e in enumerate(extractors) if e.name == "descriptors"), None)
    if shares_index is None:
        notes["feature_shares"] = (
            "only the descriptors extractor has named features; add it (e.g. --extractor "
            f"descriptors,{extractors[0].name}) to see which features make up the FID"
        )
    else:
        shares = descriptor_shares(*all_sides[shares_index])
    stages.update()

    projected = project_2d(x, y, method=projection, max_points=max_points, seed=seed)
    stages.update()

    highlighted = {c.map for c in contributions[:_HIGHLIGHTED_MAPS]}
    gen_maps = np.array([map_id(str(i)) for i in gen_side.ids], dtype=object)
    marked = np.array([m in highlighted for m in gen_maps[projected.generated_rows]], dtype=bool)
    from beatmap_fid import plots

    shown = contributions[:top]
    images = {
        "map": plots.scatter_map_png(
            projected.real_xy,
            projected.generated_xy,
            highlighted_xy=projected.generated_xy[marked],
            method=projected.method,
            highlight_label=f"windows of the {len(highlighted)} furthest generated maps",
        ),
        "contributions": plots.contributions_png(
            [c.map for c in shown], [c.distance for c in shown], reference=real_distance
        )
        if shown
        else None,
        "curve": plots.fid_curve_png(
            [(c.sizes, c.fids, c.value, c.slope) for c in curves],
            full_size=len(y),
            full_fid=float(curves[0].fids[-1]),  # the last subsets are the whole sets
            miss_note=fit["short_note"] if fit else None,
        )
        if curves
        else None,
        "feature_shares": plots.feature_shares_png(
            [row["feature"] for row in shares["features"][:_SHARED_FEATURES]],
            [row["mean_term"] for row in shares["features"][:_SHARED_FEATURES]],
            [row["covariance_term"] for row in shares["features"][:_SHARED_FEATURES]],
        )
        if shares
        else None,
    }

    data = {
        "title": title or f"{real_side.summary.source} vs {gen_side.summary.source}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "library_version": __version__,
        "real": _side_dict(real_side),
        "generated": _side_dict(gen_side),
        "metrics": values,
        "notes": notes,
        "warnings": warnings_found,
        "split_half": split_half,
        "fd_inf_curves": [
            {
                "seed": int(options.get("fd_inf", {}).get("seed", 0)) + index,
                "sizes": c.sizes.tolist(),
                "real_sizes": c.real_sizes.tolist(),
                "fids": c.fids.tolist(),
                "fd_inf": c.value,
                "slope": c.slope,
            }
            for index, c in enumerate(curves)
        ],
        "fd_inf_fit": fit,
        "feature_shares": shares,
        "contributions": {
            "measure": "mean squared Mahalanobis distance of the map's windows under the real "
            "Gaussian (standardised features, Ledoit-Wolf covariance)",
            "real_mean_distance": real_distance,
            "maps": [
                {
                    "map": c.map,
                    "windows": c.windows,
                    "distance": c.distance,
                    "max_distance": c.max_distance,
                }
                for c in contributions
            ],
        },
        "projection": {
            "method": projected.method,
            "real": {
                "ids": [str(i) for i in real_side.ids[projected.real_rows]],
                "xy": projected.real_xy.round(4).tolist(),
            },
            "generated": {
                "ids": [str(i) for i in gen_side.ids[projected.generated_rows]],
                "xy": projected.generated_xy.round(4).tolist(),
            },
        },
        "rhythm": rhythm.to_dict() if rhythm is not None else None,
        "extractors": per_extractor,
        "paired": details["paired"].to_dict() if "paired" in details else None,
        "ssm_extractor": extractors[ssm_index(extractors)].name,
        "overlap": details.get("overlap"),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "report.json"
    html_path = output_dir / "report.html"
    json_path.write_text(
        json.dumps(_jsonable(data), indent=1, ensure_ascii=False), encoding="utf-8"
    )
    html_path.write_text(render_html(data, images, top=top), encoding="utf-8")
    stages.update()
    stages.close()
    return ReportResult(json_path, html_path, data)


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
  background: #f7fafc; color: #1a202c; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 32px 0 8px; border-bottom: 2px solid #e2e8f0; padding-bottom: 4px; }
.meta { color: #4a5568; font-size: 0.9em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { background: #fff; border: 1px solid #e2e8f0; border-radius: 8px; padding: 12px 16px;
  min-width: 150px; }
.card .label { color: #4a5568; font-size: 0.8em; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 1.6em; font-weight: 600; }
.card .range { color: #4a5568; font-size: 0.85em; }
table { border-collapse: collapse; background: #fff; font-size: 0.9em; }
th, td { border: 1px solid #e2e8f0; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #edf2f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; background: #fff; border: 1px solid #e2e8f0; border-radius: 8px; padding: 8px; }
figcaption { color: #4a5568; font-size: 0.85em; margin-top: 4px; width: 0; min-width: 100%; }
img { display: block; max-width: 100%; }
.note { color: #975a16; font-size: 0.9em; }
.warning { color: #9b2c2c; background: #fff5f5; border: 1px solid #feb2b2; border-radius: 6px;
  padding: 6px 10px; margin: 8px 0; }
code { background: #edf2f7; padding: 0 3px; border-radius: 3px; }
"""


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}g}"


def _image(png: bytes | None, alt: str, caption: str) -> str:
    if png is None:
        return ""
    encoded = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _card(label: str, value: str, detail: str = "") -> str:
    detail_html = f'<div class="range">{html.escape(detail)}</div>' if detail else ""
    return (
        f'<div class="card"><div class="label">{html.escape(label)}</div>'
        f'<div class="value">{html.escape(value)}</div>{detail_html}</div>'
    )


def _metric_rows(
    metrics: dict[str, float], curves: list[dict[str, Any]]
) -> list[tuple[str, str, str, str]]:
    """(name, value, uncertainty, meaning) rows for the metrics present."""
    m = metrics.get
    rows = []
    if "fid" in metrics:
        interval = (
            f"95% CI [{_number(m('fid_low'))}, {_number(m('fid_high'))}], bias-corrected "
            f"{_number(m('fid_bias_corrected'))}, bootstrap sd {_number(m('fid_std'))}"
            if "fid_low" in metrics
            else ""
        )
        rows.append(
            (
                "FID",
                _number(m("fid")),
                interval,
                "Fréchet distance of Gaussians fitted to both sets; 0 = same mean and covariance",
            )
        )
    if "fd_inf" in metrics:
        spread = ""
        if len(curves) > 1:
            fits = [c["fd_inf"] for c in curves]
            spread = f"{len(fits)} seeds: {_number(min(fits))} … {_number(max(fits))}; "
        meaning = "FID extrapolated to infinitely many samples (fit FID = FD∞ + c/N)"
        if m("fd_inf") < 0:
            meaning += "; below 0: the true distance is within the noise of the fit"
        rows.append(
            (
                "FD∞",
                _number(m("fd_inf")),
                f"{spread}slope c = {_number(m('fd_inf_slope'))}",
                meaning,
            )
        )
    if "kid" in metrics:
        rows.append(
            (
                "KID",
                _number(m("kid")),
                f"± {_number(m('kid_std'))} (sd over subsets)",
                "kernel inception distance (unbiased MMD², cubic kernel); about 0 when the sets match",
            )
        )
    for key, meaning in (
        ("precision", "share of generated samples inside the real manifold (fidelity)"),
        ("recall", "share of real samples inside the generated manifold (diversity)"),
        (
            "density",
            "how densely generated samples crowd real neighbourhoods; about 1 when the sets match",
        ),
        ("coverage", "share of real samples with a generated sample nearby"),
        ("cmmd", "MMD² with a Gaussian kernel (× 1000)"),
    ):
        if key in metrics:
            rows.append(
                (key.capitalize() if key != "cmmd" else "CMMD", _number(m(key)), "", meaning)
            )
    return rows


def _side_row(label: str, side: dict[str, Any]) -> str:
    cells = [
        label,
        html.escape(str(side["source"])),
        _number(side.get("n_sources")),
        _number(side.get("n_vectors")),
        str(len(side.get("skipped") or [])),
        str(len(side.get("fallbacks") or [])),
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _rhythm_section(rhythm: dict[str, Any] | None) -> str:
    if not rhythm:
        return ""
    rows = []
    for kind in ("active", "passive"):
        counts = rhythm[kind]
        rows.append(
            f"<tr><td>{kind}</td>"
            + "".join(
                f'<td class="num">{_number(counts[key])}</td>'
                for key in (
                    "precision",
                    "recall",
                    "f1",
                    "true_positives",
                    "false_positives",
                    "false_negatives",
                )
            )
            + "</tr>"
        )
    unmatched = len(rhythm["unmatched_real"]) + len(rhythm["unmatched_generated"])
    extra = ""
    if unmatched:
        listed = ", ".join(
            html.escape(n) for n in (rhythm["unmatched_real"] + rhythm["unmatched_generated"])[:20]
        )
        extra = f'<p class="note">{unmatched} map(s) without a partner were left out: {listed}</p>'
    return f"""
<h2>Rhythm (pairs of maps on the same audio)</h2>
<p>{len(rhythm["pairs"])} pairs; onsets match within ±{rhythm["tolerance_ms"]} ms.
BPM RMSE <b>{_number(rhythm["bpm_rmse"])}</b>, drain-time RMSE <b>{_number(rhythm["drain_time_rmse"])} s</b>.</p>
<table><tr><th>rhythm</th><th>precision</th><th>recall</th><th>F1</th><th>TP</th><th>FP</th><th>FN</th></tr>
{"".join(rows)}</table>{extra}"""


_SECTION_NAMES = {
    "rhythm": "Rhythm",
    "paired": "calc_fid pair metrics",
    "overlap": "Training-set overlap",
    "feature_shares": "Features that make up the FID",
    "fd_inf": "FD∞ and FID-against-N curves",
    "split_half": "FID real vs real",
}


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def _shares_section(shares: dict[str, Any] | None, png: bytes | None) -> str:
    """Which named descriptor features make up the FID (see
    :mod:`beatmap_fid.metrics.attribution`)."""
    if not shares:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(r['feature'])}</td><td class='num'>{_percent(r['share'])}</td>"
        f"<td class='num'>{_number(r['mean_term'])}</td>"
        f"<td class='num'>{_number(r['covariance_term'])}</td>"
        f"<td class='num'>{_number(r['real_mean'])} ± {_number(r['real_std'])}</td>"
        f"<td class='num'>{_number(r['generated_mean'])} ± {_number(r['generated_std'])}</td></tr>"
        for r in shares["features"][:_SHARED_FEATURES]
    )
    groups = "".join(
        f"<tr><td>{html.escape(g['group'])}</td><td class='num'>{g['features']}</td>"
        f"<td class='num'>{_percent(g['share'])}</td><td class='num'>{_number(g['mean_term'])}"
        f"</td><td class='num'>{_number(g['covariance_term'])}</td></tr>"
        for g in shares["groups"]
    )
    total = shares["fid"] or 1.0
    figure = _image(
        png,
        "Features that make up the FID",
        "Each feature's part of the FID: its mean term (difference of the means, squared) and "
        "its covariance term (how far it moves when the real Gaussian is carried onto the "
        "generated one).",
    )
    return f"""
<h2>Which descriptor features make up the FID</h2>
<p>FID splits exactly into one term per named feature of the <code>descriptors</code> extractor:
the squared difference of the feature's means, plus its part of the covariance terms (its mean
squared displacement under the optimal transport between the two Gaussians). Here the mean terms
make up {_percent(shares["mean_term"] / total)} and the covariance terms
{_percent(shares["covariance_term"] / total)} of FID {_number(shares["fid"])}. Features with
large values weigh more, as they do in FID itself.</p>
<div class="figures">{figure}
<table><tr><th>feature</th><th>share</th><th>mean term</th><th>covariance term</th>
<th>real mean ± sd</th><th>generated mean ± sd</th></tr>{rows}</table></div>
<p>By group of features:</p>
<table><tr><th>group</th><th>features</th><th>share</th><th>mean term</th>
<th>covariance term</th></tr>{groups}</table>"""


def render_html(data: dict[str, Any], images: dict[str, bytes | None], *, top: int = 20) -> str:
    """The self-contained HTML page of a report (``data`` as in ``report.json``)."""
    metrics = data["metrics"]
    cards = []
    if "fid" in metrics:
        detail = (
            f"95% CI {_number(metrics['fid_low'])} – {_number(metrics['fid_high'])}"
            if "fid_low" in metrics
            else ""
        )
        cards.append(_card("FID", _number(metrics["fid"]), detail))
    split = data.get("split_half")
    if split:
        cards.append(
            _card(
                "FID real vs real",
                _number(split["fid_mean"]),
                f"two halves of the real maps, ± {_number(split['fid_std'])}",
            )
        )
    if "fd_inf" in metrics:
        cards.append(_card("FD∞", _number(metrics["fd_inf"]), "FID at N → ∞"))
    if "kid" in metrics:
        cards.append(_card("KID", _number(metrics["kid"]), f"± {_number(metrics.get('kid_std'))}"))
    if "precision" in metrics:
        cards.append(
            _card(
                "precision / recall",
                f"{_number(metrics['precision'], 3)} / {_number(metrics.get('recall'), 3)}",
            )
        )
    if "active_f1" in metrics:
        cards.append(_card("rhythm F1 (active)", _number(metrics["active_f1"], 3)))

    metric_rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td class='num'><b>{html.escape(v)}</b></td>"
        f"<td>{html.escape(u)}</td><td>{html.escape(meaning)}</td></tr>"
        for n, v, u, meaning in _metric_rows(metrics, data["fd_inf_curves"])
    )
    notes = ""
    if data["notes"]:
        grouped: dict[str, list[str]] = {}
        for name, text in data["notes"].items():
            grouped.setdefault(text, []).append(_SECTION_NAMES.get(name, name))
        notes = (
            "<h2>Not shown, and why</h2><ul>"
            + "".join(
                f'<li class="note"><b>{html.escape(", ".join(names))}</b>: {html.escape(text)}</li>'
                for text, names in grouped.items()
            )
            + "</ul>"
        )
    warnings_html = "".join(
        f'<p class="warning">Warning: {html.escape(text)}</p>' for text in data.get("warnings", [])
    )
    scale_html = ""
    if split:
        scale_html = (
            f"<p>Scale for reading FID: two random halves of the real set, split by map "
            f"({split['n_maps']} maps, {len(split['fids'])} splits), are FID "
            f"<b>{_number(split['fid_mean'])}</b> ± {_number(split['fid_std'])} apart. Only "
            "sampling differs between them, so a generated set near this value is as close "
            "to the real maps as they are to themselves (each half has half the vectors, so "
            "this value carries about twice the small-sample bias of the full set).</p>"
        )
    contributions = data["contributions"]["maps"]
    contribution_rows = "".join(
        f"<tr><td class='num'>{rank}</td><td>{html.escape(c['map'])}</td>"
        f"<td class='num'>{c['windows']}</td><td class='num'>{_number(c['distance'])}</td>"
        f"<td class='num'>{_number(c['max_distance'])}</td></tr>"
        for rank, c in enumerate(contributions[:top], start=1)
    )
    skipped = [
        (label, s) for label in ("real", "generated") for s in data[label].get("skipped") or []
    ]
    skipped_html = ""
    if skipped:
        items = "".join(
            f"<li>{label}: {html.escape(s['source'])}: {html.escape(s['reason'])}</li>"
            for label, s in skipped[:50]
        )
        more = f"<li>… and {len(skipped) - 50} more</li>" if len(skipped) > 50 else ""
        skipped_html = f"<h2>Skipped inputs</h2><ul>{items}{more}</ul>"
    fallbacks = [
        (label, s) for label in ("real", "generated") for s in data[label].get("fallbacks") or []
    ]
    if fallbacks:
        items = "".join(
            f"<li>{label}: {html.escape(s['source'])}: {html.escape(s['reason'])}</li>"
            for label, s in fallbacks[:50]
        )
        more = f"<li>… and {len(fallbacks) - 50} more</li>" if len(fallbacks) > 50 else ""
        skipped_html += f"<h2>Inputs embedded with a fallback</h2><ul>{items}{more}</ul>"
    real, gen = data["real"], data["generated"]
    figures = "".join(
        [
            _image(
                images.get("map"),
                "2-D map of both sets",
                f"Every dot is one vector (a window of a map), {data['projection']['method']} of "
                "the standardised vectors; circles mark windows of the generated maps furthest from "
                "the real set (see below).",
            ),
            _image(
                images.get("curve"),
                "FID against the number of samples",
                "FID of nested random subsets (one line per seed, the real set shrunk in "
                "proportion), the fit FD∞ + c/N and FD∞. FID falls as N grows: compare FIDs only "
                "at equal N, or compare FD∞."
                + (
                    f" {data['fd_inf_fit']['note']}."
                    if (data.get("fd_inf_fit") or {}).get("note")
                    else ""
                ),
            ),
        ]
    )
    contribution_figure = _image(
        images.get("contributions"),
        "Per-map distances from the real set",
        "Mean squared Mahalanobis distance D² of each generated map's windows under the real "
        "Gaussian; the dashed line is the real windows' own mean.",
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(data["title"])}</title>
<style>{_CSS}</style></head>
<body><main>
<h1>{html.escape(data["title"])}</h1>
<div class="meta">beatmap_fid {html.escape(data["library_version"])} · extractor
<code>{html.escape(str(real.get("extractor")))}</code> (config {html.escape(str(real.get("config_hash")))})
· {html.escape(data["created"])}</div>
{warnings_html}
<div class="cards">{"".join(cards)}</div>
<h2>Sets</h2>
<table><tr><th></th><th>source</th><th>files</th><th>vectors</th><th>skipped</th><th>fallbacks</th></tr>
{_side_row("real", real)}{_side_row("generated", gen)}</table>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th><th>uncertainty</th><th>meaning</th></tr>{metric_rows}</table>
{scale_html}
{notes}
{_rhythm_section(data.get("rhythm"))}
{render_sections(data)}
{_shares_section(data.get("feature_shares"), images.get("feature_shares"))}
<h2>Figures</h2>
<div class="figures">{figures}</div>
<h2>Generated maps furthest from the real set</h2>
<p>Each generated window's squared Mahalanobis distance D² under the Gaussian fitted to the real
windows (the model behind FID; features standardised, covariance Ledoit-Wolf-shrunk), averaged
per map. Real windows average D² = {_number(data["contributions"]["real_mean_distance"])}
(in-sample). Top {min(top, len(contributions))} of {len(contributions)} maps.</p>
<div class="figures">{contribution_figure}
<table><tr><th>#</th><th>map</th><th>windows</th><th>mean D²</th><th>max D²</th></tr>
{contribution_rows}</table></div>
{skipped_html}
</main></body></html>
"""
