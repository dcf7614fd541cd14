"""Appends a deterministic sequence of batches to a store, printing ``done B`` after each.

Run as a child process by tests/test_store.py, which kills it at chosen moments and checks
that the store survives. With ``--paced`` it reads one byte of stdin before each batch, so
that the test decides how far it may get. ``--die-before-commit B`` makes it kill itself inside batch B, after
the batch's rows are flushed to disk but before ``n_commits`` commits them.

    python tests/store_writer_child.py STORE N_BATCHES BATCH_SIZE DIM [--paced]
        [--die-before-commit B]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import h5py
import numpy as np

from beatmap_fid.store import StoreWriter

EXTRACTOR = "kill-test"
CONFIG = {"purpose": "kill test", "version": 1}


def make_batch(index: int, batch_size: int, dim: int) -> tuple[list[str], np.ndarray, list]:
    """Batch ``index``: unicode ids (the first repeats the previous batch's last), vectors and
    labels (from batch 5 on)."""
    rng = np.random.default_rng(index)
    ids = [f"譜面-{index:04d}-{row:03d}" for row in range(batch_size)]
    if index > 0:
        ids[0] = f"譜面-{index - 1:04d}-{batch_size - 1:03d}"
    vectors = rng.standard_normal((batch_size, dim)).astype(np.float32)
    labels = [  # the first batches have no labels: the labels start in the middle of a run
        None if row % 3 == 0 or index < 5 else f"mapper {row % 5}" for row in range(batch_size)
    ]
    return ids, vectors, labels


def write_batches(
    path: str, n_batches: int, batch_size: int, dim: int, report=None, before_batch=None
) -> None:
    """Append batches 0 .. n_batches-1 to the store at ``path`` (resuming if it exists)."""
    with StoreWriter(path, EXTRACTOR, CONFIG, dim) as writer:
        for index in range(n_batches):
            if before_batch is not None:
                before_batch()
            writer.append(*make_batch(index, batch_size, dim))
            if report is not None:
                report(index)


def _die_inside_batch(batch: int) -> None:
    """Make ``h5py.File.flush`` kill the process once batch ``batch`` has flushed its rows.

    A batch flushes twice: once with its rows and its commit record, once with the commit
    count that makes it visible. The kill lands between the two.
    """
    real_flush = h5py.File.flush
    flushes = [0]

    def flush_then_die(file: h5py.File) -> None:
        real_flush(file)
        flushes[0] += 1
        if flushes[0] == 2 * batch + 1:
            os.kill(os.getpid(), signal.SIGKILL)

    h5py.File.flush = flush_then_die


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("n_batches", type=int)
    parser.add_argument("batch_size", type=int)
    parser.add_argument("dim", type=int)
    parser.add_argument("--die-before-commit", type=int, default=None)
    parser.add_argument(
        "--paced", action="store_true", help="read one byte of stdin before each batch"
    )
    args = parser.parse_args()
    if args.die_before_commit is not None:
        _die_inside_batch(args.die_before_commit)

    def report(index: int) -> None:
        print(f"done {index}", flush=True)

    print("started", flush=True)
    before_batch = (lambda: sys.stdin.buffer.read(1)) if args.paced else None
    write_batches(args.store, args.n_batches, args.batch_size, args.dim, report, before_batch)


if __name__ == "__main__":
    main()
