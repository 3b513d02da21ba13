"""What a ``DualNode``'s batch function receives and what its results become.

    DualNode(...)            batch_spec(): batch parameter per singular one (by name, or by
                             position where the names differ) and the format each
                             annotation asks for: pyarrow Array / ChunkedArray, numpy
                             ndarray, else a list
    execute_batch._call_batch
      batch_kwargs(...)      varying arguments (lists) converted to those formats
      plain_results(...)     whatever came back (list, tuple, numpy or pyarrow array) as a
                             list of plain Python values: no np.int64, no pa.Int64Scalar

Every engine's batch calls go through ``execute_batch._call_batch`` (ProcessEngine's and
Dask's workers run ``execute_map`` too), so this is the one place formats are decided.
numpy and pyarrow are imported only when an annotation asks for them: a function that
never mentions them never loads them.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from typing import Any, Callable

LIST, ARROW, CHUNKED, NUMPY = "list", "pyarrow.Array", "pyarrow.ChunkedArray", "numpy.ndarray"

# String annotations that cannot be evaluated (imports under TYPE_CHECKING): read the text.
_TEXT = [(re.compile(r"\b(?:pa|pyarrow)\.ChunkedArray\b"), CHUNKED),
         (re.compile(r"\b(?:pa|pyarrow)\.\w*Array\b"), ARROW),
         (re.compile(r"\b(?:np|numpy)\.ndarray\b|\bNDArray\b"), NUMPY)]
_PLAIN = frozenset((int, float, str, bool, bytes, type(None), list, dict))


class BatchSpec:
    """How to call one batch function: ``names`` maps a singular parameter to the batch
    parameter that receives it (only where they differ), ``formats`` a singular parameter
    to the format its batch parameter asks for (only where that is not a list)."""

    __slots__ = ("names", "formats")

    def __init__(self, names: dict[str, str], formats: dict[str, str]):
        self.names = names
        self.formats = formats

    def __getstate__(self) -> tuple:
        return self.names, self.formats

    def __setstate__(self, state: tuple) -> None:
        self.names, self.formats = state


def batch_spec(owner: str, singular_args: tuple[str, ...], batch: Callable,
               batch_args: tuple[str, ...], batch_defaults: dict[str, Any]) -> BatchSpec:
    """Pair the batch function's parameters with the singular's, and read their formats.

    Same names: by name (any order). Different names (``xs`` for ``x``, as HyperNodes'
    Daft engine allows): by position, provided no name appears in both at different
    places (that would be ambiguous) and both take the same number of inputs (batch
    parameters beyond the singular's need defaults).
    """
    if set(batch_args) == set(singular_args):
        pairs = {a: a for a in singular_args}
    else:
        required = [b for b in batch_args if b not in batch_defaults]
        if len(batch_args) < len(singular_args) or len(required) > len(singular_args):
            raise TypeError(
                f"DualNode {owner!r}: batch parameters {list(batch_args)} do not match "
                f"singular parameters {list(singular_args)}: the batch function takes one "
                "parameter per singular parameter (same names, or the same order)")
        for i, b in enumerate(batch_args[:len(singular_args)]):
            if b in singular_args and singular_args[i] != b:
                raise TypeError(
                    f"DualNode {owner!r}: batch parameters {list(batch_args)} and singular "
                    f"parameters {list(singular_args)} are ambiguous: {b!r} is in both but "
                    "at different places. Use the same names, or the same order")
        pairs = dict(zip(singular_args, batch_args))
    hints = _annotations(batch)
    names = {s: b for s, b in pairs.items() if s != b}
    formats = {}
    for s, b in pairs.items():
        fmt = format_of(hints.get(b, inspect.Parameter.empty), batch)
        if fmt != LIST:
            formats[s] = fmt
    return BatchSpec(names, formats)


def _annotations(func: Callable) -> dict[str, Any]:
    try:
        return {n: p.annotation for n, p in inspect.signature(func).parameters.items()}
    except (TypeError, ValueError):
        return {}


def format_of(annotation: Any, func: Callable | None = None) -> str:
    """The format an annotation asks for: pyarrow, numpy, or (anything else) a list."""
    if annotation is inspect.Parameter.empty or annotation is None:
        return LIST
    if isinstance(annotation, str):  # ``from __future__ import annotations``
        value = _evaluate(annotation, func)
        if value is None:
            return next((fmt for rx, fmt in _TEXT if rx.search(annotation)), LIST)
        if isinstance(value, str):  # quoted as well: "'pa.Array'"
            return format_of(value)
        annotation = value
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:  # Optional[pa.Array]
        found = {format_of(a) for a in typing.get_args(annotation) if a is not type(None)}
        return found.pop() if len(found) == 1 else LIST
    if origin is not None:  # npt.NDArray[np.float64] -> numpy.ndarray[...]
        annotation = origin
    if not isinstance(annotation, type):
        return LIST
    root = annotation.__module__.split(".")[0]
    # The class exists, so its package is imported already: sys.modules has it.
    if root == "pyarrow":
        pa = sys.modules["pyarrow"]
        if issubclass(annotation, pa.ChunkedArray):
            return CHUNKED
        if issubclass(annotation, pa.Array):
            return ARROW
    elif root == "numpy" and issubclass(annotation, sys.modules["numpy"].ndarray):
        return NUMPY
    return LIST


def _evaluate(text: str, func: Callable | None) -> Any:
    target = getattr(func, "__func__", func)
    target = getattr(target, "func", target)  # functools.partial
    try:
        target = inspect.unwrap(target)
    except ValueError:
        pass
    scope = getattr(target, "__globals__", None)
    if scope is None:
        return None
    try:
        return eval(text, dict(scope))  # what typing.get_type_hints does, one name at a time
    except Exception:
        return None


def batch_kwargs(spec: BatchSpec | None, kwargs: dict[str, Any], varying: set,
                 owner: str) -> dict[str, Any]:
    """The batch function's keyword arguments: singular names -> batch names, varying
    lists converted to the format asked for (constants pass as they are)."""
    if spec is None:
        return kwargs
    if spec.formats:
        for a, fmt in spec.formats.items():
            if a in kwargs and a in varying:
                kwargs[a] = to_format(kwargs[a], fmt, owner, a)
    if spec.names:
        kwargs = {spec.names.get(a, a): v for a, v in kwargs.items()}
    return kwargs


def to_format(values: list, fmt: str, owner: str = "?", arg: str = "?") -> Any:
    if fmt == LIST:
        return values
    package = "numpy" if fmt == NUMPY else "pyarrow"
    try:
        module = __import__(package)
    except ImportError:
        raise ImportError(
            f"DualNode {owner!r}: its batch function asks for {fmt} ({arg!r}), and "
            f"{package} is not installed (pip install {package})") from None
    if fmt == NUMPY:
        try:
            return module.asarray(values)
        except ValueError:  # ragged items: one object per item, as given
            out = module.empty(len(values), dtype=object)
            out[:] = values
            return out
    try:
        array = module.array(values)
    except Exception as exc:
        raise TypeError(
            f"DualNode {owner!r}: the values of {arg!r} do not convert to {fmt} ({exc}); "
            "annotate the batch parameter as a list to receive them as they are") from None
    return module.chunked_array([array], type=array.type) if fmt == CHUNKED else array


def plain_results(out: Any, n: int, owner: str) -> list:
    """A batch function's return value as a list of ``n`` plain Python values."""
    if isinstance(out, (list, tuple)):
        items = out
    elif hasattr(out, "to_pylist"):  # pyarrow Array / ChunkedArray
        items = out.to_pylist()
    elif hasattr(out, "tolist") and not isinstance(out, (str, bytes, dict)):
        items = out.tolist()  # numpy (nested for 2-D: one list per item), pandas
    elif (hasattr(out, "__iter__") and not isinstance(out, (str, bytes, dict))
          and not hasattr(out, "keys")):
        items = list(out)  # a generator, a range
    else:
        raise TypeError(
            f"DualNode {owner!r}: batch function returned {type(out).__name__}, "
            f"expected a sequence of {n} results (list, tuple, numpy or pyarrow array)")
    if len(items) != n:
        raise ValueError(f"DualNode {owner!r}: batch function returned {len(items)} "
                         f"results for {n} items")
    if all(type(v) in _PLAIN for v in items):
        return items if isinstance(items, list) else list(items)
    return [plain(v) for v in items]


def plain(value: Any) -> Any:
    """A numpy or pyarrow scalar as its Python value (tuples of them for several
    outputs); anything else as it is."""
    t = type(value)
    if t in _PLAIN:
        return value
    if t is tuple:
        return tuple(plain(v) for v in value)
    root = t.__module__.split(".")[0]
    if root == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if root == "pyarrow" and hasattr(value, "as_py"):
        return value.as_py()
    return value
