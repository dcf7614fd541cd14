"""The beatmap input stage: finding and reading ``.osu`` files, their audio, analysis windows,
synthetic beatmaps and seeded disturbances."""

from beatmap_fid.beatmap.audio import audio_num_samples, load_audio
from beatmap_fid.beatmap.pcm import load_pcm_audio
from beatmap_fid.beatmap.perturb import Disturbance, perturb_file, perturb_folder, perturb_text
from beatmap_fid.beatmap.reading import (
    BeatmapFile,
    find_beatmaps,
    iter_beatmap_files,
    parse_beatmap_text,
    read_beatmap,
    read_beatmap_file,
)
from beatmap_fid.beatmap.synthetic import (
    STYLES,
    SyntheticStyle,
    synthetic_beatmap,
    write_synthetic_set,
)
from beatmap_fid.beatmap.windows import (
    WindowSpec,
    beatmap_num_samples,
    window_bounds_ms,
    window_starts,
)

__all__ = [
    "STYLES",
    "BeatmapFile",
    "Disturbance",
    "SyntheticStyle",
    "WindowSpec",
    "audio_num_samples",
    "beatmap_num_samples",
    "find_beatmaps",
    "iter_beatmap_files",
    "load_audio",
    "load_pcm_audio",
    "parse_beatmap_text",
    "perturb_file",
    "perturb_folder",
    "perturb_text",
    "read_beatmap",
    "read_beatmap_file",
    "synthetic_beatmap",
    "window_bounds_ms",
    "window_starts",
    "write_synthetic_set",
]
