"""Speed options shared by the transformer extractors (mapper classifier, CM3P).

- **bfloat16 on the CPU** is fast only where the processor computes it natively (AVX-512 BF16
  or AMX); elsewhere torch emulates it and it is slower than float32. :func:`cpu_bf16_support`
  says which of the two the CPU has, and :func:`warn_if_slow_precision` warns when bf16 was
  asked for on a CPU without either.
- **torch.compile** (:func:`compile_model`): TorchInductor with weight freezing (weights
  folded in as constants, so oneDNN can pre-pack them). One compiled graph per input shape;
  compiling takes minutes on a small CPU (cached on disk for later runs), so it pays off on long
  runs only. On the CPU it needs a C++ compiler.
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any

from beatmap_fid.errors import ExtractorError

CXX_COMPILERS = ("g++", "clang++", "c++")


def flag_option(name: str, value: Any) -> bool:
    """An on/off extractor option: ``True`` or ``False`` (``--option NAME=true|false``)."""
    if isinstance(value, bool):
        return value
    raise ExtractorError(f"{name} must be true or false, not {value!r}")


def count_option(name: str, value: Any) -> int:
    """A whole-number extractor option of at least 1 (such as ``window_batch``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExtractorError(f"{name} must be a whole number of at least 1, not {value!r}")
    return value


def cpu_bf16_support() -> dict[str, bool]:
    """Native bfloat16 instructions of this CPU: ``avx512_bf16`` and ``amx_bf16`` (AMX tiles)."""
    import torch

    cpu = torch.cpu
    return {
        "avx512_bf16": bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()),
        "amx_bf16": bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()),
    }


def warn_if_slow_precision(device: str, precision: str) -> None:
    """Warn when bfloat16 runs on a CPU that has to emulate it."""
    import torch

    if precision != "bfloat16" or torch.device(device).type != "cpu":
        return
    if not any(cpu_bf16_support().values()):
        warnings.warn(
            "this CPU has no native bfloat16 (AVX-512 BF16 or AMX): precision=bfloat16 will be "
            "slower than float32 here",
            stacklevel=3,
        )


def cxx_compiler() -> str | None:
    """The C++ compiler TorchInductor would use on the CPU (``$CXX`` first), if any."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else list(CXX_COMPILERS)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def compile_model(model: Any, device: str) -> Any:
    """``torch.compile`` of ``model`` for inference (static shapes, frozen weights).

    Refused with one line when torch has no ``compile`` or, on the CPU, no C++ compiler is found.
    """
    import torch

    if not hasattr(torch, "compile"):
        raise ExtractorError(f"compile=true needs torch 2.0 or newer (found {torch.__version__})")
    if torch.device(device).type == "cpu" and cxx_compiler() is None:
        raise ExtractorError(
            "compile=true on the CPU needs a C++ compiler (g++ or clang++ on PATH, or $CXX); "
            "install one or leave compile off"
        )
    return torch.compile(model, dynamic=False, options={"freezing": True})
