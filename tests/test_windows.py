"""Analysis windows: the reference's window-count rule and window times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from beatmap_fid.beatmap.reading import read_beatmap
from beatmap_fid.beatmap.synthetic import write_synthetic_set
from beatmap_fid.beatmap.windows import (
    WindowSpec,
    beatmap_end_ms,
    beatmap_num_samples,
    window_bounds_ms,
    window_starts,
)
from beatmap_fid.errors import InputError

S = 1023 * 128


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_exact_multiple_of_the_window_yields_one_window_fewer(k: int) -> None:
    assert len(window_starts(k * S)) == k - 1
    assert len(window_starts(k * S + 1)) == k
    assert len(window_starts(k * S - 1)) == k - 1


def test_starts_follow_range_of_the_reference() -> None:
    for n in (0, 5, S - 1, S, S + 1, 5 * S + 1234):
        assert window_starts(n).tolist() == list(range(0, n - S, S))
    spec = WindowSpec(window_samples=1000, sample_rate=1000, hop_samples=250)
    assert window_starts(3000, spec).tolist() == list(range(0, 2000, 250))


def test_bounds_are_contiguous_and_match_the_window_length() -> None:
    spec = WindowSpec()
    bounds = window_bounds_ms(window_starts(4 * S + 10, spec), spec)
    assert bounds.shape == (4, 2)
    assert bounds[0, 0] == 0.0
    np.testing.assert_allclose(bounds[:, 1] - bounds[:, 0], spec.window_ms)
    np.testing.assert_allclose(bounds[1:, 0], bounds[:-1, 1])
    assert spec.window_ms == pytest.approx(8184.0)


def test_invalid_specs_are_refused() -> None:
    with pytest.raises(InputError):
        WindowSpec(window_samples=0)
    with pytest.raises(InputError):
        WindowSpec(hop_samples=-1)


def test_length_without_audio_is_last_end_plus_margin(tmp_path: Path) -> None:
    path = write_synthetic_set(tmp_path, 1, seed=3, duration_s=40.0)[0]
    beatmap = read_beatmap(path)
    last_end = max(
        getattr(o, "end_time", o.time).total_seconds() * 1000 for o in beatmap.hit_objects()
    )
    assert beatmap_end_ms(beatmap) == pytest.approx(last_end)
    spec = WindowSpec()
    n = beatmap_num_samples(beatmap, spec, margin_ms=2500.0)
    assert n == int((last_end + 2500.0) * spec.sample_rate / 1000)
    assert beatmap_num_samples(beatmap, spec, margin_ms=0.0) < n
