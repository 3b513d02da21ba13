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


_END = object()


def stream_rows(inputs: dict[str, Any], map_over: list[str], map_mode: str, owner: str
                ) -> tuple[dict[str, Any], Any, int | None]:
    """``expand_rows`` for a streaming map: (broadcast values, an iterator of rows read
    lazily from the mapped inputs, the number of items when it is known). Inputs of
    unknown length are read only as far as the rows are; ``map_mode="product"`` reads
    its inputs whole (it pairs every item with every other)."""
    if map_mode not in ("zip", "product"):
        raise ValueError(f"{owner}: map_mode must be 'zip' or 'product', not {map_mode!r}")
    for name in map_over:
        if name not in inputs:
            raise ValueError(
                f"{owner}: map_over name {name!r} is not among the inputs {sorted(inputs)}")
        value = inputs[name]
        if isinstance(value, (str, bytes, bytearray, dict)) or not _iterable(value):
            _items(value, name, owner)  # raises the error map() gives
    base = {k: v for k, v in inputs.items() if k not in map_over}
    if map_mode == "product" or all(_sized(inputs[n]) for n in map_over):
        base, rows = expand_rows(inputs, map_over, map_mode, owner)
        return base, iter(rows), len(rows)
    return base, _zip_lazily(map_over, [iter(inputs[n]) for n in map_over], owner), None


def _sized(value: Any) -> bool:
    return isinstance(value, (list, tuple, range)) or (
        hasattr(value, "__len__") and hasattr(value, "__getitem__"))


def _zip_lazily(names: list[str], its: list, owner: str) -> Any:
    if len(names) == 1:  # one mapped input (the usual case): nothing to pair or check
        name = names[0]
        for value in its[0]:
            yield {name: value}
        return
    count = 0
    while True:
        vals = [next(it, _END) for it in its]
        ended = [n for n, v in zip(names, vals) if v is _END]
        if ended:
            if len(ended) < len(names):
                raise ValueError(
                    f"{owner}: map_mode='zip' needs inputs of equal length; {ended} ended "
                    f"after {count} items, {[n for n in names if n not in ended]} had more")
            return
        count += 1
        yield dict(zip(names, vals))
