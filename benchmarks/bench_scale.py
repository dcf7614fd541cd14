"""Embedding on Ray against one process: items/s, scaling efficiency, Ray's fixed and per-item
costs.

    python benchmarks/bench_scale.py                         # descriptors on the real maps + images
    python benchmarks/bench_scale.py --only descriptors --workers 1 2

Runs, in this order, for each extractor:

- ``single``: ``embed_to_store`` into one ``.h5`` store in this process (the default engine);
- ``local``: ``embed_sharded(engine="local")``, the sharded pipeline with one worker in this
  process (shard writing, partial statistics, finalizing, no Ray);
- ``ray N``: ``embed_sharded(engine="ray", workers=N)`` on a local Ray cluster of N CPUs
  started once beforehand (its start-up is timed separately), end to end: work list, actor
  start-up, embedding, finalizing and manifest.

Each run writes a fresh store (nothing reused) after one warm-up run of each engine on a few
inputs (numba compilation, model loading, Ray worker processes). The fixed cost of a Ray run
is measured on a one-file input; the per-item overhead is the Ray run's extra time over the
``local`` run, less that fixed cost, per item. Scaling efficiency of N workers is their items/s
over N times the items/s of one Ray worker.

Descriptors read ``../shared/data/beatmaps`` (osu!standard maps; the others are skipped as
the single-process run skips them). Images: JPEG crops of scikit-image photographs embedded
by EfficientNet-Lite0 on the CPU; in Ray workers the extractor decodes in the worker itself
(``num_workers=0``), the single-process run uses its default DataLoader workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MAPS = REPO_ROOT.parent / "shared" / "data" / "beatmaps"


def image_folder(root: Path, count: int) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_extractors import write_jpegs

    folder = root / "images"
    folder.mkdir()
    write_jpegs(folder, count)
    return folder


def few_inputs(source: Path, root: Path, pattern: str, count: int) -> Path:
    """A folder with the first ``count`` files of ``source`` (and the files beside them)."""
    folder = root / f"few-{pattern.strip('*.')}-{count}"
    for path in sorted(source.rglob(pattern))[:count]:
        target = folder / path.parent.relative_to(source)
        if not target.exists():
            shutil.copytree(path.parent, target)
    return folder


def timed(run: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def bench(label: str, source: Path, extractor: str, options: dict, ray_options: dict,
          workers: list[int], root: Path, one: Path, warm: Path) -> list[tuple]:  # fmt: skip
    from beatmap_fid.api import embed_to_store
    from beatmap_fid.distributed import embed_sharded

    counter = iter(range(1000))

    def out(kind: str) -> Path:
        return root / f"{label}-{kind}-{next(counter)}"

    def single(src: Path) -> Any:
        return embed_to_store(src, extractor, out("single.h5"), progress=False, extractor_options=options)  # fmt: skip

    def local(src: Path) -> Any:
        return embed_sharded(src, extractor, out("local"), engine="local", progress=False, extractor_options=ray_options)  # fmt: skip

    def on_ray(src: Path, n: int) -> Any:
        return embed_sharded(src, extractor, out(f"ray{n}"), engine="ray", workers=n, progress=False, extractor_options=ray_options)  # fmt: skip

    single(warm), local(warm), on_ray(warm, max(workers))  # warm-up
    rows = []
    seconds, result = timed(lambda: single(source))
    n_items = result.n_items
    rows.append((label, "single", n_items, seconds, None))
    local_fixed, _ = timed(lambda: local(one))
    local_seconds, result = timed(lambda: local(source))
    assert result.n_items == n_items
    rows.append((label, "local", n_items, local_seconds, (local_fixed, None)))
    for n in workers:
        fixed, _ = timed(lambda n=n: on_ray(one, n))
        seconds, result = timed(lambda n=n: on_ray(source, n))
        assert result.n_items == n_items, (result.n_items, n_items)
        per_item = None
        if n == 1:
            per_item = ((seconds - fixed) - (local_seconds - local_fixed)) / n_items
        rows.append((label, f"ray {n}", n_items, seconds, (fixed, per_item)))
        print(f"  {label}: ray {n} done", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--only", nargs="*", choices=("descriptors", "images"), default=None)
    args = parser.parse_args()
    import ray

    chosen = args.only or ["descriptors", "images"]
    print(f"CPUs {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, ray {ray.__version__}")
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    startup, _ = timed(
        lambda: ray.init(
            num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False,
            runtime_env={"env_vars": env},
        )
    )  # fmt: skip
    print(f"ray.init (local cluster of {max(args.workers)} CPUs): {startup:.1f} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_scale-") as tmp:
        root = Path(tmp)
        if "descriptors" in chosen:
            if not SHARED_MAPS.is_dir():
                sys.exit(f"{SHARED_MAPS} is absent: run with --only images")
            one = few_inputs(SHARED_MAPS / "songs", root, "*.osu", 1)
            warm = few_inputs(SHARED_MAPS / "songs", root, "*.osu", 4)
            rows += bench("descriptors", SHARED_MAPS, "descriptors", {}, {}, args.workers, root, one, warm)  # fmt: skip
        if "images" in chosen:
            images = image_folder(root, args.images)
            one = few_inputs(images, root, "0000.jpg", 1)
            warm = few_inputs(images, root, "000[0-7].jpg", 8)
            options = {"variant": "lite0", "device": "cpu"}
            rows += bench("efficientnet-lite0", images, "efficientnet", options, {**options, "num_workers": 0}, args.workers, root, one, warm)  # fmt: skip
    ray.shutdown()

    header = (
        f"{'extractor':<20} {'run':<7} {'items':>6} {'seconds':>8} {'items/s':>8} "
        f"{'vs single':>9} {'efficiency':>10} {'fixed s':>8} {'per item ms':>11}"
    )
    print(header)
    print("-" * len(header))
    by_label: dict[str, dict[str, float]] = {}
    for label, run, n_items, seconds, extra in rows:
        rate = n_items / seconds
        by_label.setdefault(label, {})[run] = rate
        single_rate = by_label[label]["single"]
        efficiency = ""
        if run.startswith("ray") and "ray 1" in by_label[label]:
            n = int(run.split()[1])
            efficiency = f"{rate / (n * by_label[label]['ray 1']):.2f}"
        fixed = f"{extra[0]:.1f}" if extra else ""
        per_item = f"{1000 * extra[1]:.2f}" if extra and extra[1] is not None else ""
        print(
            f"{label:<20} {run:<7} {n_items:>6} {seconds:>8.1f} {rate:>8.1f} "
            f"{rate / single_rate:>9.2f} {efficiency:>10} {fixed:>8} {per_item:>11}"
        )


if __name__ == "__main__":
    main()
