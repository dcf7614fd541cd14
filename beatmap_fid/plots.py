"""Figures of the evaluation report, drawn with matplotlib and returned as PNG bytes.

Each function builds its own ``Figure`` with the Agg canvas (no pyplot, no global state, no
display needed) and returns the encoded PNG, ready to embed as a data URI or write to a file.
matplotlib is imported inside the functions (the ``plot`` extra).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

REAL_COLOUR = "#2b6cb0"
GENERATED_COLOUR = "#dd6b20"
HIGHLIGHT_COLOUR = "#c53030"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def scatter_map_png(
    real_xy: np.ndarray,
    generated_xy: np.ndarray,
    *,
    highlighted_xy: np.ndarray | None = None,
    method: str = "",
    highlight_label: str = "highlighted",
) -> bytes:
    """2-D map of both sets: real and generated points, and optionally highlighted points."""
    figure = _figure(5.2, 4.4)
    axes = figure.add_subplot()
    size = 10 if len(real_xy) + len(generated_xy) > 1000 else 18
    axes.scatter(*real_xy.T, s=size, c=REAL_COLOUR, alpha=0.55, linewidths=0, label="real")
    axes.scatter(
        *generated_xy.T, s=size, c=GENERATED_COLOUR, alpha=0.55, linewidths=0, label="generated"
    )
    if highlighted_xy is not None and len(highlighted_xy):
        axes.scatter(
            *highlighted_xy.T,
            s=size * 2.2,
            facecolors="none",
            edgecolors=HIGHLIGHT_COLOUR,
            linewidths=0.9,
            label=highlight_label,
        )
    axes.set_title(f"Both sets in 2-D ({method})" if method else "Both sets in 2-D")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(loc="best", fontsize=8, markerscale=1.5)
    return _png(figure)


def fid_curve_png(
    curves: Sequence[tuple[np.ndarray, np.ndarray, float, float]],
    *,
    full_size: int,
    full_fid: float,
) -> bytes:
    """FID against the generated subset size N: the measured points of each curve
    ``(sizes, fids, fd_inf, slope)``, the fitted FD∞ + slope/N, and the FD∞ line."""
    figure = _figure(5.2, 4.4)
    axes = figure.add_subplot()
    for index, (sizes, fids, _, _) in enumerate(curves):
        axes.plot(
            sizes,
            fids,
            "o-",
            color=GENERATED_COLOUR,
            alpha=0.9 if index == 0 else 0.35,
            markersize=3.5,
            linewidth=1.0,
            label="FID of random subsets" if index == 0 else None,
        )
    sizes, _, fd_inf, slope = curves[0]
    n = np.linspace(sizes.min(), full_size, 200)
    axes.plot(n, fd_inf + slope / n, color="#4a5568", linewidth=1.2, label="fit FD∞ + c/N")
    axes.axhline(
        fd_inf, color=REAL_COLOUR, linestyle="--", linewidth=1.2, label=f"FD∞ = {fd_inf:.4g}"
    )
    axes.plot(
        [full_size], [full_fid], "D", color=HIGHLIGHT_COLOUR, label=f"FID (all) = {full_fid:.4g}"
    )
    axes.set_xlabel("generated subset size N (real subset in proportion)")
    axes.set_ylabel("FID")
    axes.set_title("FID against N")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    return _png(figure)


def contributions_png(
    names: Sequence[str],
    values: Sequence[float],
    *,
    reference: float | None = None,
    max_label: int = 48,
) -> bytes:
    """Horizontal bars of each listed generated map's distance from the real set, with the
    real windows' own value as a dashed line."""
    count = len(names)
    figure = _figure(6.4, max(2.0, 0.26 * count + 1.0))
    axes = figure.add_subplot()
    labels = [n if len(n) <= max_label else "…" + n[-(max_label - 1) :] for n in names]
    positions = np.arange(count)[::-1]
    axes.barh(positions, values, color=GENERATED_COLOUR, height=0.7)
    if reference is not None:
        axes.axvline(
            reference, color=REAL_COLOUR, linestyle="--", linewidth=1.2, label="real windows"
        )
        axes.legend(loc="lower right", fontsize=8)
    axes.set_yticks(positions, labels, fontsize=7)
    axes.set_xlabel("mean D² of the map's windows (real Gaussian)")
    axes.set_title("Generated maps furthest from the real set")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)
