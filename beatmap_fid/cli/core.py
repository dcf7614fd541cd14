"""Core verbs: ``stats``, ``fd``, ``fid``, ``embed`` and ``extractors``."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from beatmap_fid.cli.output import add_json_flag, emit
from beatmap_fid.errors import InputError


def extractor_options_from(values: list[str] | None) -> dict[str, Any]:
    """``--option key=value`` pairs; values are read as JSON when they parse, else as text."""
    options: dict[str, Any] = {}
    for pair in values or []:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key.replace("-", "_")] = json.loads(text)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = text
    return options


def add_extractor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--extractor", default="descriptors", help="feature extractor (default: descriptors)"
    )
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="extractor option, repeatable (e.g. --option device=cpu)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="items per batch (default 64)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """``--store-dir`` and ``--no-cache``: where folders are embedded (see ``cache``)."""
    parser.add_argument(
        "--store-dir",
        default=None,
        help="where stores of embedded folders are kept (default: the cache, see 'cache')",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="embed folders into a temporary folder removed afterwards",
    )


@contextmanager
def store_dir_of(args: argparse.Namespace) -> Iterator[str | None]:
    """The folder stores of embedded folders go to: ``--store-dir``, the cache, or with
    ``--no-cache`` a temporary folder removed when the verb ends."""
    if not getattr(args, "no_cache", False):
        yield args.store_dir
        return
    with tempfile.TemporaryDirectory(prefix="beatmap_fid-") as scratch:
        yield scratch


def _run_stats(args: argparse.Namespace) -> int:
    from beatmap_fid.api import store_statistics

    stats = store_statistics(args.store)
    output = Path(args.output)
    stats.save(output)
    result = {"store": args.store, "output": str(output), "n": stats.n, "dim": stats.dim}
    emit(args, result, f"{stats.n} vectors of dimension {stats.dim} -> {output}")
    return 0


def _run_fd(args: argparse.Namespace) -> int:
    from beatmap_fid.frechet import as_stats, frechet_distance

    first, second = as_stats(args.a), as_stats(args.b)
    distance = frechet_distance(first, second, device=args.device)
    result = {"fd": distance, "a": args.a, "b": args.b, "n_a": first.n, "n_b": second.n}
    emit(args, result, f"Fréchet distance: {distance:.6g}  (n = {first.n} vs {second.n})")
    return 0


def _side_text(label: str, side: dict[str, Any]) -> str:
    parts = [f"{label}: {side['source']}"]
    if side["n_sources"] is not None:
        parts.append(f"{side['n_sources']} files")
    if side["n_vectors"] is not None:
        parts.append(f"{side['n_vectors']} vectors")
    if side["skipped"]:
        parts.append(f"{len(side['skipped'])} skipped")
    return ", ".join(parts)


def _run_fid(args: argparse.Namespace) -> int:
    from beatmap_fid.api import compute_fid

    result = compute_fid(
        args.real,
        args.generated,
        extractor=args.extractor,
        store_dir=args.store_dir,
        batch_size=args.batch_size,
        device=args.device,
        strict=args.strict,
        progress=not args.quiet,
        cache=not args.no_cache,
        extractor_options=extractor_options_from(args.option),
    ).to_dict()
    lines = [
        f"FID ({result['extractor']}): {result['fid']:.6g}",
        _side_text("real", result["real"]),
        _side_text("generated", result["generated"]),
    ]
    for name in ("real", "generated"):
        for skip in result[name]["skipped"]:
            lines.append(f"  skipped ({name}) {skip['source']}: {skip['reason']}")
    lines += [f"warning: {text}" for text in result["warnings"]]
    emit(args, result, "\n".join(lines))
    return 0


def _run_embed(args: argparse.Namespace) -> int:
    from beatmap_fid.api import embed_to_store

    result = embed_to_store(
        args.source,
        args.extractor,
        args.output,
        batch_size=args.batch_size,
        progress=not args.quiet,
        extractor_options=extractor_options_from(args.option),
    )
    summary = {
        "store": str(result.store_path),
        "items": result.n_items,
        "written": result.written,
        "reused": result.reused,
        "skipped": [{"source": s.source, "reason": s.reason} for s in result.skipped.entries],
    }
    text = (
        f"{result.n_items} items in {result.store_path} "
        f"({result.written} new, {result.reused} already stored)\n{result.skipped.summary()}"
    )
    emit(args, summary, text)
    if args.strict and result.skipped:
        return 1
    return 0


def _run_extractors(args: argparse.Namespace) -> int:
    from beatmap_fid.extractors.base import extractor_infos

    rows = []
    for info in extractor_infos():
        available = info.weights_available() if info.weights_available else True
        rows.append(
            {
                "name": info.name,
                "dim": info.dim,
                "weights_available": available,
                "description": info.description,
            }
        )
    lines = [f"{'name':<20} {'dim':>6}  {'weights':<8} description"]
    for row in rows:
        dim = "" if row["dim"] is None else str(row["dim"])
        weights = "local" if row["weights_available"] else "missing"
        lines.append(f"{row['name']:<20} {dim:>6}  {weights:<8} {row['description']}")
    emit(args, {"extractors": rows}, "\n".join(lines))
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from beatmap_fid.store import check_store

    result = check_store(args.store, repair=args.repair)
    summary = {
        "store": str(result.path),
        "batches": result.n_batches,
        "rows": result.n_rows,
        "ok": result.ok,
        "problems": result.problems,
        "repaired": result.backup is not None,
        "dropped_batches": result.dropped_batches,
        "dropped_rows": result.dropped_rows,
        "backup": None if result.backup is None else str(result.backup),
        "note": result.note,
    }
    lines = [f"{result.path}: {result.n_batches} batches, {result.n_rows} intact rows"]
    lines += [f"  {problem}" for problem in result.problems]
    if result.note:
        lines.append(f"  {result.note}")
    if result.backup is not None:
        lines.append(
            f"repaired: dropped {result.dropped_batches} batches ({result.dropped_rows} rows); "
            f"the damaged file is kept as {result.backup}"
        )
    elif result.ok:
        lines.append("every committed batch matches its checksums")
    else:
        lines.append(f"damaged: run `beatmap-fid check {result.path} --repair`")
    emit(args, summary, "\n".join(lines))
    return 0 if result.ok or result.backup is not None else 1


def _run_cache(args: argparse.Namespace) -> int:
    from beatmap_fid.api import default_store_dir

    folder = default_store_dir()
    files = sorted(folder.glob("*.h5*")) if folder.is_dir() else []
    stores = [path for path in files if path.suffix == ".h5"]
    size = sum(path.stat().st_size for path in files)
    result: dict[str, Any] = {"location": str(folder), "stores": len(stores), "bytes": size}
    text = f"cache {folder}: {len(stores)} stores, {size / 2**20:.1f} MiB"
    if args.clear:
        for path in files:
            path.unlink(missing_ok=True)
        result["removed"] = len(stores)
        text += "; removed them"
    emit(args, result, text)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the core verbs."""
    parser = subparsers.add_parser("stats", help="Gaussian statistics of a store -> .npz")
    parser.add_argument("store", help="embedding store (.h5)")
    parser.add_argument("-o", "--output", required=True, help="output .npz (mu, sigma, n)")
    add_json_flag(parser)
    parser.set_defaults(run=_run_stats)

    parser = subparsers.add_parser(
        "fd", help="Fréchet distance between two stores (.h5) or statistics (.npz)"
    )
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda if available)")
    add_json_flag(parser)
    parser.set_defaults(run=_run_fd)

    parser = subparsers.add_parser(
        "fid", help="FID between two folders of beatmaps (or stores, or .npz statistics)"
    )
    parser.add_argument("real", help="folder of maps, store (.h5) or statistics (.npz)")
    parser.add_argument("generated", help="folder of maps, store (.h5) or statistics (.npz)")
    add_extractor_arguments(parser)
    add_cache_arguments(parser)
    parser.add_argument("--device", default=None, help="device of the Fréchet distance")
    parser.add_argument("--strict", action="store_true", help="fail when any input is skipped")
    add_json_flag(parser)
    parser.set_defaults(run=_run_fid)

    parser = subparsers.add_parser("embed", help="embed a folder or file into a store (resumable)")
    parser.add_argument("source", help="folder or file")
    parser.add_argument("-o", "--output", required=True, help="output store (.h5)")
    add_extractor_arguments(parser)
    parser.add_argument("--strict", action="store_true", help="exit 1 when any input is skipped")
    add_json_flag(parser)
    parser.set_defaults(run=_run_embed)

    parser = subparsers.add_parser(
        "check", help="check a store against its checksums; --repair keeps the intact batches"
    )
    parser.add_argument("store", help="embedding store (.h5)")
    parser.add_argument(
        "--repair",
        action="store_true",
        help="rebuild a damaged store from its intact batches (the damaged file is kept)",
    )
    add_json_flag(parser)
    parser.set_defaults(run=_run_check)

    parser = subparsers.add_parser(
        "cache",
        help="where stores of embedded folders are cached ($BEATMAP_FID_CACHE), and clearing it",
    )
    parser.add_argument("--clear", action="store_true", help="remove every cached store")
    add_json_flag(parser)
    parser.set_defaults(run=_run_cache)

    parser = subparsers.add_parser("extractors", help="list the feature extractors")
    add_json_flag(parser)
    parser.set_defaults(run=_run_extractors)
