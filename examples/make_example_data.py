"""Regenerate the bundled example beatmaps in ``examples/data``.

``real/`` stands in for a set of human-made maps (real maps cannot be redistributed) and
``generated/`` for the output of a beatmap generator that imitates them slightly off: a
little wider spacing, sharper turns and fewer sliders. Both are synthetic osu!standard maps
of 60 s without audio (window counts then come from each map's length).

    python examples/make_example_data.py
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from beatmap_fid.beatmap.synthetic import STYLES, write_synthetic_set

DATA = Path(__file__).resolve().parent / "data"
REAL_STYLE = STYLES["flow"]
GENERATED_STYLE = dataclasses.replace(
    STYLES["flow"],
    name="generated",
    spacing_px=(130.0, 40.0),
    turn_deg=(60.0, 35.0),
    slider_share=0.3,
)


def main() -> None:
    for folder, style, seed in (("real", REAL_STYLE, 1), ("generated", GENERATED_STYLE, 2)):
        target = DATA / folder
        shutil.rmtree(target, ignore_errors=True)
        paths = write_synthetic_set(target, n_maps=8, seed=seed, style=style, duration_s=60.0)
        print(f"wrote {len(paths)} maps to {target}")


if __name__ == "__main__":
    main()
