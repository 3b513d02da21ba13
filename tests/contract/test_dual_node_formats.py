"""DualNode formats on every engine: the batch function gets what its annotation asks
for (pyarrow, numpy, a list) and the results are plain Python values (``json.dumps``
works), whichever engine (and worker process) ran the batch."""

from __future__ import annotations

import json

import pytest

from gilfree import DualNode, Pipeline, node

try:  # module globals: the string annotations below evaluate against them
    import numpy as np
except ImportError:  # pragma: no cover - numpy is in the test extra
    np = None
try:
    import pyarrow as pa
    import pyarrow.compute as pc
except ImportError:
    pa = pc = None

needs_numpy = pytest.mark.skipif(np is None, reason="numpy is not installed")
needs_pyarrow = pytest.mark.skipif(pa is None, reason="pyarrow is not installed")


@node(output_name="x")
def shift(raw):
    return raw + 1


@needs_pyarrow
def test_pyarrow_annotated_batch_gets_arrays_and_gives_ints(engine):
    def scale_one(x: int, factor: int) -> int:
        return x * factor

    def scale_many(x: pa.Array, factor: int) -> pa.Array:
        if not isinstance(x, pa.Array):  # the error travels back from any worker
            raise TypeError(f"expected pa.Array, got {type(x).__name__}")
        return pc.multiply(x, factor)

    d = DualNode("scaled", scale_one, scale_many)
    out = Pipeline([shift, d], engine=engine).map(
        {"raw": list(range(20)), "factor": 3}, map_over="raw")
    assert [r["scaled"] for r in out] == [(v + 1) * 3 for v in range(20)]
    assert all(type(r["scaled"]) is int for r in out)
    json.dumps(out)


@needs_numpy
def test_numpy_annotated_batch_gets_ndarrays_and_gives_floats(engine):
    def half_one(x):
        return x / 2

    def half_many(xs: np.ndarray) -> np.ndarray:  # another name: paired by position
        if not isinstance(xs, np.ndarray):
            raise TypeError(f"expected np.ndarray, got {type(xs).__name__}")
        return xs / 2

    d = DualNode("half", half_one, half_many)
    out = Pipeline([shift, d], engine=engine).map({"raw": list(range(20))}, map_over="raw")
    assert [r["half"] for r in out] == [(v + 1) / 2 for v in range(20)]
    assert all(type(r["half"]) is float for r in out)
    json.dumps(out)


@needs_numpy
def test_unannotated_batch_gets_lists_and_numpy_results_become_plain(engine):
    def sq_one(x):
        return x * x

    def sq_many(x):
        if type(x) is not list:
            raise TypeError(f"expected a list, got {type(x).__name__}")
        return np.asarray(x) ** 2  # np.int64 elements, made plain

    out = Pipeline([shift, DualNode("sq", sq_one, sq_many)], engine=engine).map(
        {"raw": [1, 2, 3]}, map_over="raw")
    assert out == [{"x": 2, "sq": 4}, {"x": 3, "sq": 9}, {"x": 4, "sq": 16}]
    assert all(type(r["sq"]) is int for r in out)
    json.dumps(out)
