"""Beatmaps as pictures: each window rendered to an image and embedded by an image backbone.

A window is drawn on the osu! playfield (512 × 384 osu! pixels, with a margin so off-field
objects stay visible): hit circles as discs, slider bodies along their real paths (Bezier,
linear, perfect-circle and Catmull curves cut to the slider's length), spinners as rings.
Colour encodes time within the window (blue at its start, through green, to red at its end);
earlier objects are drawn on top, as the game shows them. The rasteriser is numba code.

The picture is then embedded by an image extractor (EfficientNet-Lite0 by default, or CLIP), so
beatmaps share the image path: store → statistics → FID, index, k-NN.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slider
from numba import njit

from beatmap_fid.beatmap.reading import BeatmapFile, iter_beatmap_files
from beatmap_fid.errors import ExtractorError, SkipLog
from beatmap_fid.extractors.base import Item, build_extractor
from beatmap_fid.extractors.descriptors import (
    BEZIER_CURVE,
    CATMULL_CURVE,
    CURVE_KINDS,
    LINEAR_CURVE,
    PERFECT_CURVE,
    DescriptorExtractor,
    _arc_polyline,
    _bezier_polyline,
    _catmull_polyline,
)

RENDER_VERSION = 1
FIELD_LEFT, FIELD_TOP, FIELD_SPAN = -64.0, -128.0, 640.0
"""The square of osu! pixels drawn: the 512 × 384 playfield centred with a margin."""

CIRCLE_KIND, SLIDER_KIND, SPINNER_KIND = 0, 1, 2


@njit(cache=True)
def _stamp_disc(image, cx, cy, radius, colour):
    size = image.shape[0]
    x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 1, size - 1)
    y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 1, size - 1)
    r2 = radius * radius
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            if (x - cx) ** 2 + (y - cy) ** 2 <= r2:
                image[y, x, 0], image[y, x, 1], image[y, x, 2] = colour[0], colour[1], colour[2]


@njit(cache=True)
def _stamp_ring(image, cx, cy, inner, outer, colour):
    size = image.shape[0]
    x0, x1 = max(int(cx - outer), 0), min(int(cx + outer) + 1, size - 1)
    y0, y1 = max(int(cy - outer), 0), min(int(cy + outer) + 1, size - 1)
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            d2 = (x - cx) ** 2 + (y - cy) ** 2
            if inner * inner <= d2 <= outer * outer:
                image[y, x, 0], image[y, x, 1], image[y, x, 2] = colour[0], colour[1], colour[2]


@njit(cache=True)
def _draw_path(image, polyline, radius, colour):
    """A thick line along ``polyline`` (image pixels): discs stamped every half radius."""
    step = max(radius * 0.5, 0.5)
    _stamp_disc(image, polyline[0, 0], polyline[0, 1], radius, colour)
    for i in range(polyline.shape[0] - 1):
        dx, dy = polyline[i + 1, 0] - polyline[i, 0], polyline[i + 1, 1] - polyline[i, 1]
        n = int(np.sqrt(dx * dx + dy * dy) / step) + 1
        for k in range(1, n + 1):
            t = k / n
            _stamp_disc(image, polyline[i, 0] + t * dx, polyline[i, 1] + t * dy, radius, colour)


@njit(cache=True)
def _slider_polyline(curve: float, control: np.ndarray) -> np.ndarray:
    if curve == LINEAR_CURVE:
        return control
    if curve == CATMULL_CURVE and control.shape[0] > 1:
        return _catmull_polyline(control)
    if curve == PERFECT_CURVE and control.shape[0] == 3:
        polyline = _arc_polyline(control)
        if polyline.shape[0] > 0:
            return polyline
    return _bezier_polyline(control)


def cut_polyline(polyline: np.ndarray, length: float) -> np.ndarray:
    """The first ``length`` pixels of a polyline (extended along its last segment if short)."""
    if len(polyline) < 2 or length <= 0:
        return polyline[:1]
    steps = np.hypot(*np.diff(polyline, axis=0).T)
    travelled = np.concatenate([[0.0], np.cumsum(steps)])
    last = int(np.searchsorted(travelled, length, side="left"))
    if last >= len(polyline):
        last = len(polyline) - 1
    start, end = polyline[last - 1], polyline[last]
    segment = max(steps[last - 1], 1e-9)
    tip = start + (end - start) * (length - travelled[last - 1]) / segment
    return np.vstack([polyline[:last], tip[None, :]])


def time_colour(fraction: float) -> np.ndarray:
    """uint8 RGB of a time fraction in [0, 1]: blue → green → red."""
    f = min(max(fraction, 0.0), 1.0)
    return np.array([255 * f, 255 * (1.0 - abs(2.0 * f - 1.0)), 255 * (1.0 - f)], dtype=np.uint8)


def render_window(
    beatmap: slider.Beatmap, start_ms: float, end_ms: float, size: int = 224
) -> np.ndarray:
    """uint8 ``(size, size, 3)`` picture of the objects starting in ``[start_ms, end_ms)``."""
    window = [
        obj
        for obj in beatmap.hit_objects(stacking=False)
        if start_ms <= obj.time.total_seconds() * 1000.0 < end_ms
    ]
    return render_objects(window, float(beatmap.circle_size), start_ms, end_ms, size)


def render_objects(
    window: Sequence[slider.beatmap.HitObject],
    circle_size: float,
    start_ms: float,
    end_ms: float,
    size: int = 224,
) -> np.ndarray:
    """:func:`render_window` of a window's hit objects, given in time order."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    scale = size / FIELD_SPAN
    radius = max((54.4 - 4.48 * circle_size) * scale, 1.0)
    for obj in reversed(window):  # earlier objects end up on top
        fraction = (obj.time.total_seconds() * 1000.0 - start_ms) / (end_ms - start_ms)
        colour = time_colour(fraction)
        x = (obj.position.x - FIELD_LEFT) * scale
        y = (obj.position.y - FIELD_TOP) * scale
        if isinstance(obj, slider.beatmap.Slider):
            control = np.array([(p.x, p.y) for p in obj.curve.points], dtype=np.float64)
            curve = CURVE_KINDS.get(type(obj.curve).__name__, BEZIER_CURVE)
            path = cut_polyline(_slider_polyline(curve, control), float(obj.length))
            pixels = (path - np.array([FIELD_LEFT, FIELD_TOP])) * scale
            _draw_path(image, np.ascontiguousarray(pixels), radius * 0.6, colour)
            _stamp_disc(image, x, y, radius, colour)
        elif isinstance(obj, slider.beatmap.Spinner):
            centre = (256.0 - FIELD_LEFT) * scale, (192.0 - FIELD_TOP) * scale
            _stamp_ring(image, centre[0], centre[1], 150 * scale, 165 * scale, colour)
        else:
            _stamp_disc(image, x, y, radius, colour)
    return image


class BeatmapImageExtractor:
    """Rendered beatmap windows embedded by an image backbone (``efficientnet`` or ``clip``).

    Windows are counted as by the ``descriptors`` extractor (from the audio length when the
    audio is present and readable, else from the map's length, listed in :attr:`fallbacks`).
    """

    name = "beatmap-image"

    def __init__(
        self,
        *,
        backbone: str = "efficientnet",
        image_size: int = 224,
        use_audio: bool = True,
        **backbone_options: Any,
    ) -> None:
        if backbone not in {"efficientnet", "clip"}:
            raise ExtractorError(f"backbone must be 'efficientnet' or 'clip', got {backbone!r}")
        self.backbone = build_extractor(backbone, **backbone_options)
        self.windows = DescriptorExtractor(use_audio=use_audio)
        self.image_size = int(image_size)
        self.dim = self.backbone.dim
        self.config = {
            "render_version": RENDER_VERSION,
            "image_size": self.image_size,
            **self.windows.spec.as_config(),
            "use_audio": bool(use_audio),
            "backbone": self.backbone.name,
            "backbone_config": self.backbone.config,
        }

    @property
    def fallbacks(self) -> SkipLog:
        """Maps whose windows were counted from the map's length (see the class docs)."""
        return self.windows.fallbacks

    def beatmap_items(self, beatmap_file: BeatmapFile, skipped: SkipLog) -> list[Item]:
        """One rendered picture per window of a parsed map."""
        objects = sorted(
            beatmap_file.beatmap.hit_objects(stacking=False), key=lambda obj: obj.time
        )  # read maps are in time order already; a Beatmap given directly may not be
        times = np.array([obj.time.total_seconds() * 1000.0 for obj in objects])
        circle_size = float(beatmap_file.beatmap.circle_size)
        items = []
        for item in self.windows.beatmap_items(beatmap_file, skipped):
            start_ms, end_ms = item.payload.start_ms, item.payload.end_ms
            first, stop = np.searchsorted(times, [start_ms, end_ms], side="left")
            picture = render_objects(
                objects[first:stop], circle_size, start_ms, end_ms, self.image_size
            )
            items.append(Item(item.id, picture, item.label, item.sources, item.n_events))
        return items

    def items(self, source: str | Path, skipped: SkipLog) -> Iterator[Item]:
        """One item per window of every osu!standard map under ``source``."""
        for beatmap_file in iter_beatmap_files(source, skipped):
            yield from self.beatmap_items(beatmap_file, skipped)

    def embed(self, payloads: Sequence[np.ndarray]) -> np.ndarray:
        """Backbone features of rendered windows: float32 ``(n, dim)``."""
        return self.backbone.embed(list(payloads))
