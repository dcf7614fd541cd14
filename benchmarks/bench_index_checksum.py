"""What checking an index file against its sidecar's checksum costs when it is loaded.

    python benchmarks/bench_index_checksum.py                  # IVF-Flat, 1M x 128 (0.5 GiB)
    python benchmarks/bench_index_checksum.py --family flat --rows 2000000  # a 1 GiB flat one

An index of random float32 vectors is built with ``build_index`` and saved once with
``VectorIndex.save`` (index file plus sidecar). FAISS maps only IVF lists with ``mmap``; a
flat index is read into memory either way. Each method then runs in its own fresh Python
process, after one untimed read of the file, so every method reads from a warm page cache and
its peak resident memory (``VmHWM``) is its own:

* read only: the file read in 1 MiB blocks, nothing hashed (the floor of any checksum);
* sha256 / blake2b, sequential: ``hashlib.file_digest`` (1 thread), the plain way to hash;
* ours, 1 thread / all threads: ``beatmap_fid.index.file_checksum``, a tree of SHA-256
  digests of 64 MiB leaves hashed in parallel;
* the sidecar alone: plain ``json.loads``, and ``read_sidecar`` without the index file's hash;
* ``load_index`` with ``mmap=True`` with and without ``verify_file``, and without mmap (each
  reads one vector back; a search of a flat index would touch every page of the mapping).

The table gives seconds (best of ``--repeats``), GB/s of the index file, the time relative to
sequential SHA-256, and the process's peak RSS above its RSS after imports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = {
    "read": "read only (1 MiB blocks)",
    "sha256": "sha256, sequential (hashlib.file_digest)",
    "blake2b": "blake2b, sequential (hashlib.file_digest)",
    "tree-1": "ours, SHA-256 tree, 1 thread",
    "tree-all": "ours, SHA-256 tree, all threads",
    "json": "sidecar: json.loads only (what reading it cost before checks)",
    "sidecar": "sidecar: read_sidecar(verify_file=False) (schema, ids and own checksums)",
    "load-mmap-noverify": "load_index(mmap=True, verify_file=False)",
    "load-mmap": "load_index(mmap=True)",
    "load": "load_index()",
}


def peak_rss_bytes() -> int:
    """This process's peak RSS: ``VmHWM`` on Linux (``ru_maxrss`` keeps the peak of the
    process that started it), ``ru_maxrss`` elsewhere."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_method(method: str, path: Path) -> dict[str, float]:
    """Run one method in this process; seconds and peak RSS above the RSS after imports."""
    import hashlib

    from beatmap_fid.index import file_checksum, load_index, read_sidecar, sidecar_path_of

    base = peak_rss_bytes()
    start = time.perf_counter()
    if method == "read":
        buffer = bytearray(1 << 20)
        with open(path, "rb") as file:
            while file.readinto(buffer):
                pass
    elif method in ("sha256", "blake2b"):
        with open(path, "rb") as file:
            hashlib.file_digest(file, method).hexdigest()
    elif method.startswith("tree"):
        file_checksum(path, workers=1 if method == "tree-1" else None)
    elif method == "json":
        json.loads(sidecar_path_of(path).read_text(encoding="utf-8"))
    elif method == "sidecar":
        read_sidecar(path, verify_file=False)
    else:
        vindex = load_index(path, mmap="mmap" in method, verify_file="noverify" not in method)
        vindex.reconstruct([0])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss": peak_rss_bytes() - base, "peak": peak_rss_bytes()}


def warm(path: Path) -> None:
    with open(path, "rb") as file:
        while file.read(1 << 24):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--family", default="ivf-flat", help="index family (ivf-flat)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_method(args.method, Path(args.path))))
        return

    import numpy as np

    from beatmap_fid.index import build_index

    with tempfile.TemporaryDirectory(prefix="bench_checksum-") as folder:
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
        built = build_index(vectors, family=args.family, recall=0.9, progress=False)
        path = built.save(Path(folder) / "x.faiss")
        del built
        del vectors
        size = path.stat().st_size
        print(
            f"index file: {size / 2**30:.2f} GiB ({args.rows} x {args.dim} {args.family}), sidecar "
            f"{(path.with_name(path.name + '.json')).stat().st_size / 2**20:.0f} MiB; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
        )
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):
            for method in METHODS:
                warm(path)
                done = subprocess.run(
                    [sys.executable, __file__, "--method", method, "--path", str(path)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(done.stdout.strip().splitlines()[-1])
                if method not in best or result["seconds"] < best[method]["seconds"]:
                    best[method] = result
        reference = best["sha256"]["seconds"]
        print(
            "| method | seconds | index file GB/s | time / sequential sha256 | peak RSS above imports |"
        )
        print("|---|---:|---:|---:|---:|")
        for method, label in METHODS.items():
            result = best[method]
            rate = "" if method in ("json", "sidecar") else f"{size / result['seconds'] / 1e9:.2f}"
            print(
                f"| {label} | {result['seconds']:.2f} | {rate} | "
                f"{result['seconds'] / reference:.2f} | {result['rss'] / 2**20:.0f} MiB |"
            )


if __name__ == "__main__":
    main()
