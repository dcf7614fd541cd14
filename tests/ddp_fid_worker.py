"""One process of the two-process ``BeatmapFID`` test: joins a gloo process group, feeds its
share of the features (rows rank, rank + world, ...) and writes what ``compute`` returned.

Run by tests/test_torchmetrics.py:

    python tests/ddp_fid_worker.py FEATURES.npz RENDEZVOUS_FILE RANK WORLD OUT.json
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.distributed as dist

from beatmap_fid.integrations.torchmetrics import BeatmapFID


def main(features: str, rendezvous: str, rank: int, world: int, output: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    data = np.load(features)
    real, fake, fake2 = (data[k][rank::world] for k in ("real", "fake", "fake2"))
    dim = real.shape[1]

    metric = BeatmapFID(num_features=dim, reset_real_features=False, fd_device="numpy")
    metric.update(torch.from_numpy(real), real=True)
    metric.update(fake, real=False)  # arrays and tensors alike
    first = float(metric.compute())
    counts = [int(metric.real_n), int(metric.fake_n)]
    metric.reset()  # keeps the real sums
    metric.update(torch.from_numpy(fake2), real=False)
    second = float(metric.compute())
    with open(output, "w", encoding="utf-8") as handle:
        json.dump({"first": first, "second": second, "local_counts": counts}, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    features_path, rendezvous_file, rank_text, world_text, output_path = sys.argv[1:]
    main(features_path, rendezvous_file, int(rank_text), int(world_text), output_path)
