"""``BeatmapFID``: FID as a torchmetrics ``Metric``, for training loops (Lightning, DDP).

Like torchmetrics' own ``FrechetInceptionDistance``, the states are sums: per side the count of
vectors, their sum and the sum of their outer products, in float64. Sums add up across
processes (``dist_reduce_fx="sum"``), so under DDP each process feeds its share of the maps and
:meth:`BeatmapFID.compute` sees all of them. The value is the Fréchet distance of
:func:`beatmap_fid.frechet.frechet_distance`, the same as :func:`beatmap_fid.compute_fid` on
the same vectors.

``update`` takes maps (paths, ``.osu`` text or ``slider.Beatmap`` objects, embedded with the
extractor, which is built on first use) or features (a tensor or array (n, dim) made by the
extractor elsewhere). ``reset_real_features=False`` keeps the real statistics across
:meth:`reset`, so a fixed real set is embedded once per training run.

The float64 sum of outer products loses digits to cancellation when the features' mean is far
larger than their spread (relative error about 1e-16 · (mean/std)²); for beatmap features
that is far below the sampling noise of FID.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import torch
from torchmetrics import Metric

from beatmap_fid.api import DEFAULT_EXTRACTOR, MapEmbedder, is_features
from beatmap_fid.errors import InputError, InsufficientSamplesError
from beatmap_fid.extractors.base import Extractor, build_extractor, extractor_info
from beatmap_fid.frechet import frechet_distance
from beatmap_fid.stats import GaussianStats

_SIDES = ("real", "fake")


class BeatmapFID(Metric):
    """FID between real and generated beatmaps (or their features) as a torchmetrics Metric.

    ``extractor``: a name or a built extractor (default ``"descriptors"``), built with
    ``extractor_options`` the first time maps are given. ``num_features``: the vector
    dimension (default: the extractor's). ``fd_device``: where the Fréchet distance is
    computed (see :func:`~beatmap_fid.frechet.frechet_distance`). Other keyword arguments go
    to ``torchmetrics.Metric``.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        extractor: Extractor | str = DEFAULT_EXTRACTOR,
        *,
        extractor_options: dict[str, Any] | None = None,
        num_features: int | None = None,
        reset_real_features: bool = True,
        batch_size: int = 64,
        fd_device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(extractor, str):
            dim = num_features or extractor_info(extractor).dim
        else:
            dim = num_features or extractor.dim
        if not dim:
            raise InputError(f"pass num_features: the dimension of {extractor!r} is not known")
        self.num_features = int(dim)
        self.reset_real_features = reset_real_features
        self.fd_device = fd_device
        self._extractor = extractor
        self._extractor_options = dict(extractor_options or {})
        self._batch_size = batch_size
        self._embedder: MapEmbedder | None = None
        for side in _SIDES:
            self.add_state(f"{side}_sum", torch.zeros(dim, dtype=torch.float64), "sum")
            self.add_state(f"{side}_outer", torch.zeros(dim, dim, dtype=torch.float64), "sum")
            self.add_state(f"{side}_n", torch.tensor(0, dtype=torch.long), "sum")

    @property
    def skipped(self):
        """Maps given to :meth:`update` that could not be used, with their reasons."""
        return self._map_embedder().skipped

    def _map_embedder(self) -> MapEmbedder:
        if self._embedder is None:
            extractor = self._extractor
            if isinstance(extractor, str):
                extractor = build_extractor(extractor, **self._extractor_options)
            if extractor.dim != self.num_features:
                raise InputError(
                    f"extractor {extractor.name!r} gives {extractor.dim}-dimensional vectors; "
                    f"this metric was made for {self.num_features}"
                )
            self._embedder = MapEmbedder(extractor, self._batch_size)
        return self._embedder

    def update(self, maps_or_features: Any, real: bool) -> None:
        """Add maps or features (n, dim) to the real (``real=True``) or generated side."""
        side = "real" if real else "fake"
        if isinstance(maps_or_features, torch.Tensor):
            blocks: Any = [maps_or_features]
        elif is_features(maps_or_features):
            blocks = [torch.from_numpy(maps_or_features)]
        else:
            blocks = self._map_embedder().vectors(maps_or_features)
        for block in blocks:
            features = torch.as_tensor(block).detach()
            if features.ndim != 2 or features.shape[1] != self.num_features:
                raise InputError(
                    f"features must have shape (n, {self.num_features}), got "
                    f"{tuple(features.shape)}"
                )
            features = features.to(device=self.real_sum.device, dtype=torch.float64)
            if not torch.isfinite(features).all():
                raise InputError("features contain NaN or infinite values")
            setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + features.sum(dim=0))
            setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + features.T @ features)
            setattr(self, f"{side}_n", getattr(self, f"{side}_n") + features.shape[0])

    def side_statistics(self, real: bool) -> GaussianStats:
        """Mean and covariance of one side from the (synchronised) sums."""
        side = "real" if real else "fake"
        n = int(getattr(self, f"{side}_n"))
        if n < 2:
            name = "real" if real else "generated"
            raise InsufficientSamplesError(
                f"the {name} side has {n} vector(s); FID needs at least 2 per side"
            )
        total = getattr(self, f"{side}_sum").cpu().numpy()
        outer = getattr(self, f"{side}_outer").cpu().numpy()
        mean = total / n
        covariance = (outer - n * mean[:, None] * mean[None, :]) / (n - 1)
        return GaussianStats(mean, (covariance + covariance.T) / 2, n)

    def compute(self) -> torch.Tensor:
        """FID between everything given as real and as generated (all processes)."""
        value = frechet_distance(
            self.side_statistics(True), self.side_statistics(False), device=self.fd_device
        )
        return torch.tensor(value, dtype=torch.float64)

    def reset(self) -> None:
        """Forget the generated side, and the real side too unless ``reset_real_features``
        is False."""
        if self.reset_real_features:
            super().reset()
            return
        kept = {f"real_{k}": deepcopy(getattr(self, f"real_{k}")) for k in ("sum", "outer", "n")}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)
