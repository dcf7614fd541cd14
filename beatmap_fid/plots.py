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
    miss_note: str | None = None,
) -> bytes:
    """FID against the generated subset size N: the measured points of each curve
    ``(sizes, fids, fd_inf, slope)``, the fitted FD∞ + slope/N, and the FD∞ line;
    ``miss_note`` is written on the plot when the fit misses the measured points."""
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
    axes.set_title("FID against N", pad=16 if miss_note else 6)
    if miss_note:
        axes.text(
            0.5,
            1.01,
            miss_note,
            transform=axes.transAxes,
            fontsize=7.5,
            color=HIGHLIGHT_COLOUR,
            ha="center",
            va="bottom",
        )
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    return _png(figure)


def _wrapped(name: str, width: int) -> str:
    """``name`` in lines of at most ``width`` characters, broken after a path separator or a
    space where possible, never shortened."""
    lines, rest = [], name
    while len(rest) > width:
        cut = max(rest.rfind("/", 0, width), rest.rfind(" ", 0, width))
        cut = cut + 1 if cut > width // 3 else width
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return "\n".join([*lines, rest])


def contributions_png(
    names: Sequence[str],
    values: Sequence[float],
    *,
    reference: float | None = None,
    line_width: int = 100,
) -> bytes:
    """Horizontal bars of each listed generated map's distance from the real set on a log
    scale (distances span orders of magnitude), with the real windows' own value as a dashed
    line. Each map's full name is written above its bar (wrapped, never cut)."""
    labels = [_wrapped(name, line_width) for name in names]
    heights = [0.42 + 0.13 * label.count("\n") for label in labels]  # inches per row
    figure = _figure(9.0, max(2.2, sum(heights) + 1.1))
    axes = figure.add_subplot()
    data = np.asarray(values, dtype=np.float64)
    positive = data[data > 0]
    low = min([*positive.tolist(), *([reference] if reference and reference > 0 else [])] or [1.0])
    high = max([*positive.tolist(), *([reference] if reference and reference > 0 else [])] or [1.0])
    left = low / 3.0
    axes.set_xscale("log")
    axes.set_xlim(left, high * 4.0)
    tops = np.cumsum(heights)
    for label, value, top in zip(labels, data, tops):
        centre = -(top - 0.14)  # the bar sits at the bottom of its row, the name above it
        axes.barh(centre, max(value, left) - left, left=left, height=0.2, color=GENERATED_COLOUR)
        axes.text(
            value if value > left else left,
            centre,
            f" {value:.3g}",
            va="center",
            ha="left",
            fontsize=7,
            color="#2d3748",
        )
        axes.text(
            left,
            centre + 0.13,
            label,
            va="bottom",
            ha="left",
            fontsize=7,
            linespacing=1.1,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.3, "alpha": 0.8},
        )
    if reference is not None and reference > 0:
        axes.axvline(
            reference,
            color=REAL_COLOUR,
            linestyle="--",
            linewidth=1.2,
            label=f"real windows (mean D² {reference:.3g})",
        )
        axes.legend(loc="lower right", fontsize=8)
    axes.set_ylim(-(tops[-1] if len(tops) else 1.0), 0.0)
    axes.set_yticks([])
    axes.set_xlabel("mean D² of the map's windows under the real Gaussian (log scale)")
    axes.set_title("Generated maps furthest from the real set")
    axes.grid(axis="x", alpha=0.3, which="both")
    return _png(figure)


def feature_shares_png(
    names: Sequence[str], mean_terms: Sequence[float], covariance_terms: Sequence[float]
) -> bytes:
    """Stacked horizontal bars: each listed feature's part of the FID, its mean term and its
    covariance term (largest first, top to bottom)."""
    count = len(names)
    figure = _figure(7.0, max(2.2, 0.27 * count + 1.2))
    axes = figure.add_subplot()
    positions = np.arange(count)[::-1]
    mean = np.asarray(mean_terms, dtype=np.float64)
    covariance = np.asarray(covariance_terms, dtype=np.float64)
    axes.barh(positions, mean, color=GENERATED_COLOUR, height=0.7, label="mean term")
    axes.barh(
        positions, covariance, left=mean, color=REAL_COLOUR, height=0.7, label="covariance term"
    )
    axes.set_yticks(positions, list(names), fontsize=7)
    axes.set_xlabel("part of FID")
    axes.set_title("Features that make up the FID")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return _png(figure)
