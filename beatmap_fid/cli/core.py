"""Core verbs: ``stats``, ``fd``, ``fid``, ``embed``, ``cache``, ``check`` and ``extractors``,
and the arguments the verbs share (extractor, options, device, cache, verbosity)."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from beatmap_fid.cli.output import FALLBACK, add_json_flag, emit
from beatmap_fid.cli.scale import add_engine_arguments
from beatmap_fid.errors import InputError

VERBS = ("stats", "fd", "fid", "embed", "cache", "check", "extractors")


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
    """``--extractor``, ``--option``, ``--device``, ``--batch-size``, ``--quiet`` and
    ``--verbose``; read them back with :func:`extractor_options`."""
    parser.add_argument(
        "--extractor", default="descriptors", help="feature extractor (default: descriptors)"
    )
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="extractor option, repeatable (e.g. --option checkpoint=DIR); "
        "see 'beatmap-fid extractors'",
    )
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=int, default=64, help="items per batch (default 64)")
    add_output_arguments(parser)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1 ...: where the model runs (extractors with a device option, "
        "unless --option device= says otherwise) and the Fréchet distance is computed "
        "(default: cuda if available)",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` (no progress bars) and ``--verbose`` (every skipped input listed)."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="list every skipped input (default: a count per reason and the first few)",
    )


def extractor_options(args: argparse.Namespace, extractor: str | None = None) -> dict[str, Any]:
    """The extractor options of a verb: its ``--option`` pairs, plus ``device`` from
    ``--device`` for each named extractor (``--extractor a,b``) that takes one and was given
    no ``--option device=`` (``--option NAME.device=`` with several extractors)."""
    from beatmap_fid.extractors.base import extractor_info

    options = extractor_options_from(args.option)
    device = getattr(args, "device", None)
    names = [n.strip() for n in (extractor or args.extractor or "").split(",") if n.strip()]
    if device is None or "device" in options:
        return options
    for name in names:
        key = "device" if len(names) == 1 else f"{name}.device"
        if key not in options and extractor_info(name).accepts("device"):
            options[key] = device
    return options


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
    from beatmap_fid.api import resolve_statistics, skip_entries
    from beatmap_fid.extractors.base import build_extractor

    extractor = None
    with store_dir_of(args) as store_dir:
        source = Path(args.source)
        if source.suffix.lower() != ".npz" and not _is_store(source):
            extractor = build_extractor(args.extractor, **extractor_options(args))
        stats, summary = resolve_statistics(
            args.source,
            extractor,
            store_dir=store_dir,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
    output = Path(args.output)
    stats.save(output)
    result = {
        "source": args.source,
        "output": str(output),
        "n": stats.n,
        "dim": stats.dim,
        "maps": summary.n_sources,
        "extractor": extractor.name if extractor else None,
        "skipped": skip_entries(summary.skipped),
    }
    text = f"{stats.n} vectors of dimension {stats.dim} -> {output}"
    if summary.skipped:
        text += "\n" + summary.skipped.summary(verbose=args.verbose)
    emit(args, result, text)
    return 0


def _is_store(path: Path) -> bool:
    from beatmap_fid.api import is_store_path

    return is_store_path(path)


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
    if side["fallbacks"]:
        parts.append(f"{len(side['fallbacks'])} {FALLBACK}")
    return ", ".join(parts)


def fid_text(
    result: dict[str, Any],
    skipped: dict[str, Any],
    verbose: bool,
    fallbacks: dict[str, Any] | None = None,
) -> str:
    """The readable output of ``fid``: the value, both sides, their skips by reason, the inputs
    embedded with a fallback and the warnings."""
    lines = [
        f"FID ({result['extractor']}): {result['fid']:.6g}",
        _side_text("real", result["real"]),
        _side_text("generated", result["generated"]),
    ]
    for name, log in skipped.items():
        if log:
            lines.append(f"{name}: {log.summary(verbose=verbose)}")
    for name, log in (fallbacks or {}).items():
        if log:
            lines.append(f"{name}: {log.summary(verbose=verbose, what=FALLBACK)}")
    lines += [f"warning: {text}" for text in result["warnings"]]
    return "\n".join(lines)


def _run_fid(args: argparse.Namespace) -> int:
    from beatmap_fid.api import compute_fid

    if args.reference is not None:
        return _run_fid_reference(args)
    if args.generated is None:
        raise InputError("fid needs two sets (REAL GEN), or one set and --reference NAME")
    fid = compute_fid(
        args.real,
        args.generated,
        extractor=args.extractor or "descriptors",
        store_dir=args.store_dir,
        batch_size=args.batch_size,
        device=args.device,
        strict=args.strict,
        progress=not args.quiet,
        cache=not args.no_cache,
        extractor_options=extractor_options(args, args.extractor or "descriptors"),
    )
    result = fid.to_dict()
    skipped = {"real": fid.real.skipped, "generated": fid.generated.skipped}
    fallbacks = {"real": fid.real.fallbacks, "generated": fid.generated.fallbacks}
    emit(args, result, fid_text(result, skipped, args.verbose, fallbacks))
    return 0


def _run_fid_reference(args: argparse.Namespace) -> int:
    from beatmap_fid.references import reference_fid

    if args.generated is not None:
        raise InputError(
            "with --reference, fid takes one set (the generated maps), "
            f"got two: {args.real} {args.generated}"
        )
    given = args.extractor is not None or bool(args.option)
    fid = reference_fid(
        args.real,
        args.reference,
        extractor=args.extractor if given else None,
        extractor_options=extractor_options(args, args.extractor or "descriptors")
        if given
        else None,
        device=args.device,
        store_dir=args.store_dir,
        batch_size=args.batch_size,
        strict=args.strict,
        progress=not args.quiet,
        cache=not args.no_cache,
    )
    result = fid.to_dict()
    skipped = {"generated": fid.generated.skipped}
    emit(args, result, fid_text(result, skipped, args.verbose))
    return 0


def _run_embed(args: argparse.Namespace) -> int:
    from beatmap_fid.api import embed_to_store, skip_entries

    result = embed_to_store(
        args.source,
        args.extractor,
        args.output,
        batch_size=args.batch_size,
        progress=not args.quiet,
        extractor_options=extractor_options(args),
        engine=args.engine,
        address=args.address,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
    )
    summary = {
        "store": str(result.store_path),
        "items": result.n_items,
        "written": result.written,
        "reused": result.reused,
        "skipped": skip_entries(result.skipped),
        "fallbacks": skip_entries(result.fallbacks),
    }
    text = (
        f"{result.n_items} items in {result.store_path} "
        f"({result.written} new, {result.reused} already stored)\n"
        f"{result.skipped.summary(verbose=args.verbose)}"
    )
    if result.fallbacks:
        text += "\n" + result.fallbacks.summary(verbose=args.verbose, what=FALLBACK)
    emit(args, summary, text)
    if args.strict and result.skipped:
        return 1
    return 0


def _option_text(value: Any) -> str:
    """An option's default as it is written after ``--option KEY=``: text as it is, other
    values as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def extractors_text(rows: list[dict[str, Any]], width: int = 100) -> str:
    """The ``extractors`` listing: per extractor its name, dimension, weights, description
    and options with their defaults."""
    import textwrap

    blocks = []
    for row in rows:
        dim = f"{row['dim']}-d" if row["dim"] is not None else "dimension of its backbone"
        lines = [f"{row['name']}  ({dim}; weights: {row['weights']})"]
        lines += textwrap.wrap(
            row["description"], width, initial_indent="  ", subsequent_indent="  "
        )
        options = [f"{key}={_option_text(value)}" for key, value in row["options"].items()]
        if row["more_options"]:
            options.append("and the backbone's options")
        lines += textwrap.wrap(
            "options: " + ", ".join(options),
            width,
            initial_indent="  ",
            subsequent_indent="    ",
            break_on_hyphens=False,
        )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _run_extractors(args: argparse.Namespace) -> int:
    from beatmap_fid.extractors.base import extractor_infos

    rows = []
    for info in extractor_infos():
        if not info.needs_weights:
            weights = "none needed"
        else:
            weights = "on disk" if info.weights_available() else "not on disk"
        rows.append(
            {
                "name": info.name,
                "dim": info.dim,
                "weights": weights,
                "description": info.description,
                "options": dict(info.options),
                "more_options": info.more_options,
            }
        )
    emit(args, {"extractors": rows}, extractors_text(rows))
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
    parser = subparsers.add_parser(
        "stats",
        help="Gaussian statistics (mu, sigma, n) of a folder of maps or a store -> .npz, "
        "like pytorch-fid's --save-stats",
    )
    parser.add_argument(
        "source", help="folder or file (embedded first), a store (.h5) or a sharded store (folder)"
    )
    parser.add_argument("-o", "--output", required=True, help="output .npz (mu, sigma, n)")
    add_extractor_arguments(parser)
    add_cache_arguments(parser)
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
        "fid",
        help="FID between two folders of beatmaps (or stores, or .npz statistics), or between "
        "one and a named reference",
    )
    parser.add_argument(
        "real", help="folder of maps, store (.h5) or statistics (.npz); with --reference: GEN"
    )
    parser.add_argument(
        "generated", nargs="?", help="folder of maps, store (.h5) or statistics (.npz)"
    )
    parser.add_argument(
        "--reference",
        metavar="NAME",
        help="compare the one set given with this named reference (see 'reference list')",
    )
    add_extractor_arguments(parser)
    parser.set_defaults(extractor=None)  # with --reference: the reference's own extractor
    add_cache_arguments(parser)
    parser.add_argument("--strict", action="store_true", help="fail when any input is skipped")
    add_json_flag(parser)
    parser.set_defaults(run=_run_fid)

    parser = subparsers.add_parser("embed", help="embed a folder or file into a store (resumable)")
    parser.add_argument("source", help="folder or file")
    parser.add_argument(
        "-o", "--output", required=True, help="output store (.h5); with --engine ray a folder"
    )
    add_extractor_arguments(parser)
    add_engine_arguments(parser, gpus=True)
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

    parser = subparsers.add_parser(
        "extractors",
        help="list the feature extractors: dimension, weights on disk, options and defaults",
    )
    add_json_flag(parser)
    parser.set_defaults(run=_run_extractors)
