"""Parts of the evaluation report for several extractors, game modes and calc_fid's pair metrics.

- **Several extractors** (``--extractor descriptors,mapper-classifier,cm3p``): each is built
  with its own options (``NAME.key=value``; an option without a prefix goes to every extractor
  whose factory takes it), both folders are read once for all of them
  (:mod:`beatmap_fid.embed_many`), and every sample metric is computed for each. The first
  extractor gets the full report (map, contributions, curves).
- **Per game mode**: ``key@mode`` values (:mod:`beatmap_fid.by_mode`).
- **calc_fid's pair metrics** (``"paired"``): their SSM RMSE uses CM3P's windows when ``cm3p``
  is among the extractors, else the first extractor's.
"""

from __future__ import annotations

import html
import math
from typing import Any

from beatmap_fid.errors import InputError
from beatmap_fid.extractors.base import Extractor

PAIR_METRICS = ("rhythm", "paired", "overlap")


def _key(name: str) -> str:
    return name.replace("-", "_")


def build_extractors(extractor: Any, options: dict[str, Any] | None = None) -> list[Extractor]:
    """The extractors named by ``extractor`` (a name, comma-separated names, a list of names
    or extractors, or an extractor), each built with its options (see the module docs)."""
    from beatmap_fid.extractors.base import build_extractor, extractor_info

    if isinstance(extractor, str):
        wanted: list[Any] = [n.strip() for n in extractor.split(",") if n.strip()]
    elif isinstance(extractor, (list, tuple)):
        wanted = list(extractor)
    else:
        wanted = [extractor]
    if not wanted:
        raise InputError("no extractor named")
    options = dict(options or {})
    names = {_key(w) for w in wanted if isinstance(w, str)}
    prefixed = {k for k in options if "." in k and _key(k.split(".", 1)[0]) in names}
    stray = [k for k in options if "." in k and k not in prefixed]
    if stray:
        raise InputError(
            f"option(s) {', '.join(stray)} name no extractor of this run ({', '.join(sorted(names))})"
        )
    shared = {k: v for k, v in options.items() if k not in prefixed}
    built = []
    for item in wanted:
        if not isinstance(item, str):
            built.append(item)
            continue
        own = {
            k.split(".", 1)[1]: v
            for k, v in options.items()
            if k in prefixed and _key(k.split(".", 1)[0]) == _key(item)
        }
        chosen = dict(shared)
        if len(wanted) > 1:
            info = extractor_info(item)
            chosen = {k: v for k, v in shared.items() if info.accepts(k)}
        built.append(build_extractor(item, **{**chosen, **own}))
    return built


def ssm_index(extractors: list[Extractor]) -> int:
    """Which extractor's windows the SSM RMSE uses: CM3P's when present, else the first."""
    return next((i for i, e in enumerate(extractors) if e.name == "cm3p"), 0)


def extractor_metrics(
    real: Any, generated: Any, names: list[str], options: dict[str, Any]
) -> tuple[dict[str, float], dict[str, str]]:
    """Sample metrics (not the pair metrics) of one extractor's sides, with per-mode values."""
    from beatmap_fid.by_mode import per_mode_values
    from beatmap_fid.evaluate import compute_metrics

    values: dict[str, float] = {}
    notes: dict[str, str] = {}
    chosen = [n for n in names if n not in PAIR_METRICS]
    for name in chosen:
        try:
            found, _ = compute_metrics(real, generated, [name], options, progress=False)
        except InputError as error:
            notes[name] = str(error)
            continue
        values.update(found)
    found, mode_notes = per_mode_values(real, generated, chosen, options)
    values.update(found)
    notes.update(mode_notes)
    return values, notes


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{float(value):.4g}"


def render_sections(data: dict[str, Any]) -> str:
    """HTML of the extractor table, the per-mode table and the calc_fid pair metrics."""
    parts = []
    extractors = data.get("extractors") or []
    if len(extractors) > 1:
        rows = "".join(
            f"<tr><td><code>{html.escape(e['name'])}</code></td>"
            + "".join(
                f"<td class='num'>{_number(e['metrics'].get(k))}</td>"
                for k in ("fid", "fid_low", "fid_high", "kid", "precision", "recall")
            )
            + f"<td class='num'>{_number(e['metrics'].get('n_real'))} / "
            f"{_number(e['metrics'].get('n_generated'))}</td></tr>"
            for e in extractors
        )
        parts.append(
            "<h2>Extractors</h2><table><tr><th>extractor</th><th>FID</th><th>CI low</th>"
            "<th>CI high</th><th>KID</th><th>precision</th><th>recall</th>"
            f"<th>vectors real / generated</th></tr>{rows}</table>"
        )
    by_mode: dict[str, dict[str, float]] = {}
    for e in extractors or [{"name": "", "metrics": data.get("metrics", {})}]:
        for key, value in e["metrics"].items():
            if "@" in key:
                metric, mode = key.split("@", 1)
                label = f"{metric} ({e['name']})" if len(extractors) > 1 else metric
                by_mode.setdefault(label, {})[mode] = value
    for key, value in data.get("metrics", {}).items():
        metric, _, mode = key.partition("@")
        if mode and not metric.startswith(
            ("fid", "kid", "precision", "recall", "density", "coverage", "cmmd", "n_")
        ):
            by_mode.setdefault(metric, {})[mode] = value
    if by_mode:
        modes = sorted({m for row in by_mode.values() for m in row})
        head = "".join(f"<th>{html.escape(m)}</th>" for m in modes)
        rows = "".join(
            f"<tr><td>{html.escape(metric)}</td>"
            + "".join(f"<td class='num'>{_number(row.get(m))}</td>" for m in modes)
            + "</tr>"
            for metric, row in sorted(by_mode.items())
        )
        parts.append(f"<h2>Per game mode</h2><table><tr><th>metric</th>{head}</tr>{rows}</table>")
    paired = data.get("paired")
    if paired:
        values = paired["values"]
        shown = [
            ("star-rating RMSE (rosu-pp)", "star_rating_rmse"),
            ("BPM RMSE, time-integrated", "bpm_integrated_rmse"),
            ("drain-time RMSE, 8 s gaps as breaks (s)", "drain_time_gap_rmse"),
            (f"SSM RMSE ({html.escape(str(data.get('ssm_extractor')))} windows)", "ssm_rmse"),
        ]
        rows = "".join(
            f"<tr><td>{label}</td><td class='num'>{_number(values.get(key))}</td></tr>"
            for label, key in shown
        )
        parts.append(
            f"<h2>calc_fid pair metrics</h2><p>{int(values.get('paired_maps', 0))} pairs of maps "
            f"on the same audio, as Mapperatorinator's calc_fid.py computes them.</p>"
            f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"
        )
    overlap = data.get("overlap")
    if overlap:
        items = "".join(
            f"<li>{html.escape(k)}: {_number(v)}</li>"
            for k, v in data["metrics"].items()
            if k.endswith(("_in_training", "_in_training_count", "_near_duplicates"))
        )
        parts.append(f"<h2>Training-set overlap</h2><ul>{items}</ul>")
    return "".join(parts)
