"""Checking a checkpoint against the model it describes before that model is built.

A checkpoint's settings decide how large a model is; a small file can declare a network of
hundreds of gigabytes. So loaders check, in this order: every size setting against sane
bounds (:func:`check_bounds`), then the name and shape of every weight in the file against the
model the settings describe, built on PyTorch's ``meta`` device, where parameters have shapes
but no storage (:func:`check_shapes`), and only then build the real model, whose size is then
that of the weights in the file. :func:`check_finite` refuses weights holding NaN or infinite
values, which would only give NaN vectors later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from beatmap_fid.errors import ExtractorError


def check_bounds(
    values: Mapping[str, Any], bounds: Mapping[str, tuple[float, float]], where: str
) -> None:
    """Refuse (:class:`ExtractorError`) a value of ``values`` named in ``bounds`` that is not a
    number within its ``(low, high)``; integer bounds need integers."""
    for name, (low, high) in bounds.items():
        if name not in values:
            continue
        value = values[name]
        wants_int = isinstance(low, int) and isinstance(high, int)
        kinds = (int,) if wants_int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
            kind = "an integer" if wants_int else "a number"
            raise ExtractorError(
                f"{where}: {name} is {value!r}; it must be {kind} from {low} to {high}"
            )


def check_divides(values: Mapping[str, Any], pairs: list[tuple[str, str]], where: str) -> None:
    """Refuse settings where ``values[heads]`` does not divide ``values[width]`` (attention)."""
    for width, heads in pairs:
        if width in values and heads in values and values[width] % values[heads]:
            raise ExtractorError(
                f"{where}: {width} {values[width]} is not a multiple of {heads} {values[heads]}"
            )


def meta_shapes(build: Callable[[], Any]) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in the state dict of the model ``build()`` makes, built on
    the ``meta`` device (no storage is allocated and no weight initialised)."""
    import torch

    try:
        with torch.device("meta"):
            model = build()
    except (RuntimeError, ValueError, TypeError) as error:
        raise ExtractorError(
            f"the checkpoint's settings describe no buildable model: {str(error).splitlines()[0]}"
        ) from error
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _examples(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return f"{shown}, ..." if len(names) > 3 else shown


def check_shapes(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], where: str
) -> None:
    """Refuse weights whose names or shapes differ from the model's, in one line naming the
    first differences."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    different = sorted(
        f"{name} {list(found[name])} (expected {list(expected[name])})"
        for name in set(expected) & set(found)
        if tuple(found[name]) != tuple(expected[name])
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_examples(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
    if different:
        problems.append(f"{len(different)} of another shape ({_examples(different)})")
    if problems:
        raise ExtractorError(
            f"{where}: the weights do not fit the model its settings describe: "
            + "; ".join(problems)
        )


def tensor_shapes(state: Mapping[str, Any], where: str) -> dict[str, tuple[int, ...]]:
    """Name → shape of a loaded state dict; refuses entries that are not tensors."""
    import torch

    odd = sorted(name for name, value in state.items() if not isinstance(value, torch.Tensor))
    if odd:
        raise ExtractorError(f"{where}: weights that are not tensors: {_examples(odd)}")
    return {name: tuple(value.shape) for name, value in state.items()}


def check_finite(state: Mapping[str, Any], where: str) -> None:
    """Refuse floating-point weights holding NaN or infinite values."""
    import torch

    bad = sorted(
        name
        for name, value in state.items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    )
    if bad:
        raise ExtractorError(
            f"{where}: {len(bad)} weight tensor(s) hold NaN or infinite values "
            f"({_examples(bad)}); the model would only give NaN"
        )
