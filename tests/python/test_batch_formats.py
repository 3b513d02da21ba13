"""DualNode formats: annotations -> what the batch function gets; results -> plain
values; batch parameter names paired with the singular's (by name or by position)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import typing
from typing import List, Optional

import pytest

from gilfree import DualNode, Pipeline
from gilfree.model.batch_formats import ARROW, CHUNKED, LIST, NUMPY, format_of, plain_results


def _map(singular, batch, **inputs):
    d = DualNode("out", singular, batch)
    return [r["out"] for r in Pipeline([d]).map(inputs, map_over=list(inputs))]


def _one(x):
    return x


# -- which format an annotation asks for ------------------------------------------------
def test_plain_annotations_ask_for_lists():
    for ann in (int, list, List[int], list[int], typing.Sequence[int], "list[int]",
                "Whatever", Optional[int]):
        assert format_of(ann) == LIST, ann


def test_numpy_annotations():
    np = pytest.importorskip("numpy")
    npt = pytest.importorskip("numpy.typing")
    assert format_of(np.ndarray) == NUMPY
    assert format_of(npt.NDArray[np.float64]) == NUMPY
    assert format_of(Optional[np.ndarray]) == NUMPY
    assert format_of("np.ndarray") == NUMPY  # unresolvable text: read as written
    assert format_of("numpy.typing.NDArray[numpy.int64]") == NUMPY


def test_pyarrow_annotations():
    pa = pytest.importorskip("pyarrow")
    assert format_of(pa.Array) == ARROW
    assert format_of(pa.Int64Array) == ARROW
    assert format_of(pa.ChunkedArray) == CHUNKED
    assert format_of(pa.Array | None) == ARROW
    assert format_of("pa.Array") == ARROW
    assert format_of("pyarrow.ChunkedArray") == CHUNKED
    assert format_of(pa.Table) == LIST  # not a column: passed as a list


# -- what the batch function receives ---------------------------------------------------
def test_unannotated_batch_gets_lists_and_loads_neither_numpy_nor_pyarrow():
    code = textwrap.dedent("""
        import sys
        from gilfree import DualNode, Pipeline
        seen = []
        def f_one(x): return x
        def f_many(xs):
            seen.append(type(xs))
            return [v + 1 for v in xs]
        out = Pipeline([DualNode("y", f_one, f_many)]).map({"x": [1, 2]}, map_over="x")
        assert out == [{"y": 2}, {"y": 3}] and seen == [list], (out, seen)
        loaded = [m for m in ("numpy", "pyarrow") if m in sys.modules]
        assert not loaded, loaded
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_numpy_ndarray_received():
    np = pytest.importorskip("numpy")
    seen = []

    def many(x: np.ndarray, k: int):
        seen.append((type(x), x.dtype.kind, k))
        return x * k

    def one(x, k):
        return x * k

    d = DualNode("out", one, many)
    out = Pipeline([d]).map({"x": [1, 2, 3], "k": 2}, map_over="x")
    assert out == [{"out": 2}, {"out": 4}, {"out": 6}]
    assert seen == [(np.ndarray, "i", 2)]  # the constant stays a single value
    assert all(type(r["out"]) is int for r in out)


def test_numpy_ragged_items_become_an_object_array():
    np = pytest.importorskip("numpy")

    def many(x: np.ndarray):
        assert x.dtype == object and x.shape == (2,)
        return [len(v) for v in x]

    assert _map(_one, many, x=[[1], [1, 2]]) == [1, 2]


def test_pyarrow_array_and_chunked_array_received():
    pa = pytest.importorskip("pyarrow")
    pc = pytest.importorskip("pyarrow.compute")

    def arr(x: pa.Array):
        assert isinstance(x, pa.Array)
        return pc.add(x, 1)

    def chunked(x: pa.ChunkedArray):
        assert isinstance(x, pa.ChunkedArray)
        return pc.add(x, 1)

    assert _map(_one, arr, x=[1, 2]) == [2, 3]
    out = _map(_one, chunked, x=[1, 2])
    assert out == [2, 3] and all(type(v) is int for v in out)


def test_values_pyarrow_cannot_hold_are_a_clear_error():
    pa = pytest.importorskip("pyarrow")

    class Opaque:
        pass

    def many(x: pa.Array):
        return x

    with pytest.raises(TypeError, match=r"'x' do not convert to pyarrow.Array"):
        _map(_one, many, x=[Opaque(), Opaque()])


def test_asking_for_a_missing_package_names_it(monkeypatch):
    def many(x: "pa.Array"):  # noqa: F821 - unresolvable: read as text
        return x

    d = DualNode("out", _one, many)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # gone after construction
    with pytest.raises(ImportError, match=r"asks for pyarrow.Array .*pip install pyarrow"):
        Pipeline([d]).map({"x": [1]}, map_over="x")


def test_blocked_pyarrow_is_refused_at_construction_as_hypernodes_does(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match="DualNode batch execution requires 'pyarrow'"):
        DualNode("out", _one, lambda xs: xs)


# -- what the results become -----------------------------------------------------------
def test_results_become_plain_python_values():
    np = pytest.importorskip("numpy")
    assert plain_results(np.array([1, 2]), 2, "n") == [1, 2]
    assert plain_results([np.int64(1), np.float32(0.5), np.bool_(True)], 3, "n") == [1, 0.5, True]
    got = plain_results([np.int64(1)], 1, "n")
    assert type(got[0]) is int
    assert plain_results(np.array([[1, 2], [3, 4]]), 2, "n") == [[1, 2], [3, 4]]
    assert plain_results((v for v in range(2)), 2, "n") == [0, 1]
    assert plain_results([(np.int64(1), "a")], 1, "n") == [(1, "a")]
    json.dumps(plain_results(np.arange(3) * 1.5, 3, "n"))


def test_pyarrow_results_become_plain_python_values():
    pa = pytest.importorskip("pyarrow")
    assert plain_results(pa.array([1, 2]), 2, "n") == [1, 2]
    assert plain_results(pa.chunked_array([[1], [2]]), 2, "n") == [1, 2]
    got = plain_results(list(pa.array([1, 2])), 2, "n")  # a list of pa.Int64Scalar
    assert got == [1, 2] and all(type(v) is int for v in got)


def test_multi_output_numpy_results_are_plain():
    np = pytest.importorskip("numpy")

    def split_one(x):
        return x // 10, x % 10

    def split_many(x: np.ndarray):
        return list(zip(x // 10, x % 10))  # tuples of np.int64

    d = DualNode(("tens", "units"), split_one, split_many)
    out = Pipeline([d]).map({"x": [12, 34]}, map_over="x")
    assert out == [{"tens": 1, "units": 2}, {"tens": 3, "units": 4}]
    json.dumps(out)


def test_wrong_result_shapes_are_clear_errors():
    with pytest.raises(TypeError, match="returned int, expected a sequence of 2"):
        plain_results(42, 2, "n")
    with pytest.raises(TypeError, match="returned dict"):
        plain_results({"a": 1, "b": 2}, 2, "n")
    with pytest.raises(ValueError, match="returned 1 results for 2 items"):
        plain_results([1], 2, "n")


# -- batch parameter names -------------------------------------------------------------
def test_batch_names_that_differ_pair_by_position():
    def add_one(x, y):
        return x + y

    def add_many(xs, ys):
        return [a + b for a, b in zip(xs, ys)]

    assert _map(add_one, add_many, x=[1, 2], y=[10, 20]) == [11, 22]


def test_same_names_pair_by_name_in_any_order():
    def sub_one(x, y):
        return x - y

    def sub_many(y, x):
        return [a - b for a, b in zip(x, y)]

    assert _map(sub_one, sub_many, x=[5, 6], y=[1, 1]) == [4, 5]


def test_partly_renamed_with_a_constant():
    def mul_one(x, factor):
        return x * factor

    def mul_many(xs, factor):
        return [v * factor for v in xs]

    d = DualNode("out", mul_one, mul_many)
    assert d.root_args == ("x", "factor")
    out = Pipeline([d]).map({"x": [1, 2], "factor": 3}, map_over="x")
    assert out == [{"out": 3}, {"out": 6}]


def test_ambiguous_names_are_refused():
    def f_one(x, factor):
        return x

    def f_many(factor, xs):  # factor in both, at different places
        return xs

    with pytest.raises(TypeError, match="ambiguous: 'factor'"):
        DualNode("out", f_one, f_many)


def test_different_counts_are_refused_unless_extras_have_defaults():
    def f_one(x, y):
        return x

    def too_few(xs):
        return xs

    with pytest.raises(TypeError, match="do not match singular parameters"):
        DualNode("out", f_one, too_few)

    def g_one(x):
        return x

    def extra(xs, chunk=8):
        return xs

    assert _map(g_one, extra, x=[1, 2]) == [1, 2]
