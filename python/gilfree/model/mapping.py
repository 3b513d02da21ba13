"""Turning ``map`` inputs into one row of varying values per item."""

from __future__ import annotations

import itertools
from typing import Any, Sequence


def normalize_map_over(map_over: str | Sequence[str] | None, owner: str) -> list[str]:
    if map_over is None:
        raise ValueError(f"{owner}: map() needs map_over= (the input name(s) to map over)")
    names = [map_over] if isinstance(map_over, str) else list(map_over)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{owner}: map_over must be a name or a non-empty list of names")
    return names


def _items(value: Any, name: str, owner: str) -> list | tuple:
    """A mapped input's items: lists and tuples as they are; ranges, numpy arrays,
    generators and other iterables read into a list. A str, bytes or dict is iterable
    but almost always a mistake (one text is not a list of characters)."""
    if isinstance(value, (list, tuple)):
        return value
    if isinstance(value, (str, bytes, bytearray, dict)) or not _iterable(value):
        raise ValueError(
            f"{owner}: the input {name!r} is mapped over, so it must be a list (or another "
            f"iterable of items); got {type(value).__name__}"
        )
    return list(value)


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def expand_rows(
    inputs: dict[str, Any], map_over: list[str], map_mode: str, owner: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Split ``inputs`` into broadcast values and one dict of mapped values per item."""
    if map_mode not in ("zip", "product"):
        raise ValueError(f"{owner}: map_mode must be 'zip' or 'product', not {map_mode!r}")
    columns = []
    for name in map_over:
        if name not in inputs:
            raise ValueError(
                f"{owner}: map_over name {name!r} is not among the inputs "
                f"{sorted(inputs)}"
            )
        columns.append(_items(inputs[name], name, owner))
    base = {k: v for k, v in inputs.items() if k not in map_over}
    if len(map_over) == 1:
        name = map_over[0]
        return base, [{name: v} for v in columns[0]]
    if map_mode == "zip":
        lengths = {n: len(c) for n, c in zip(map_over, columns)}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"{owner}: map_mode='zip' needs lists of equal length; got lengths {lengths}"
            )
        combos = zip(*columns)
    else:
        combos = itertools.product(*columns)
    return base, [dict(zip(map_over, combo)) for combo in combos]
