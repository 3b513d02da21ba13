"""Crash matrix: what cannot be pickled, on the engines that pickle (Process, both start
methods; Dask): an input item, a node's output, a node itself, an exception.  Each fails
with a SerializationError that says what, where (node, item, input/output) and which way;
under on_error="collect" only that item fails; the same results on both engines."""

from __future__ import annotations

import pytest

from crash_helpers import BOTH_STARTS, DASK

ENGINES = [*BOTH_STARTS, DASK]


@pytest.mark.parametrize("engine_name", ENGINES)
def test_exception_that_cannot_be_pickled_comes_back_as_text(run_case, engine_name):
    rc, res, err = run_case("""
        class Locked(Exception):
            def __init__(self, msg):
                super().__init__(msg)
                self.lock = threading.Lock()

        class NeedsTwo(Exception):  # pickles, but cannot be rebuilt from its args
            def __init__(self, a, b):
                super().__init__(f"{a}/{b}")

        @node(output_name="y")
        def bad(x):
            if x == 1:
                raise Locked("holding a lock")
            if x == 2:
                raise NeedsTwo("a", "b")
            return x

        engine = make_engine()
        out = Pipeline([bad]).map({"x": [0, 1, 2, 3]}, map_over="x", engine=engine,
                                  on_error="collect")
        report(kinds=[type(r).__name__ for r in out], msgs=[str(r) for r in out],
               cause=str(out[1].__cause__))
        engine.shutdown()
    """)
    assert rc == 0, err
    assert res["kinds"][0] == "dict" and res["kinds"][3] == "dict", res
    assert res["kinds"][1] == "RemoteError" and "Locked: holding a lock" in res["msgs"][1], res
    assert res["kinds"][2] in ("NeedsTwo", "RemoteError") and "a/b" in res["msgs"][2]
    assert "raise Locked" in res["cause"]


@pytest.mark.parametrize("engine_name", ENGINES)
def test_unpicklable_input_output_and_node(run_case, engine_name):
    rc, res, err = run_case("""
        lock = threading.Lock()

        @node(output_name="y")
        def ident(x):
            return x

        @node(output_name="y")
        def make_lock(x):
            return threading.Lock() if x == 2 else x

        @node(output_name="y")
        def uses_lock(x):
            with lock:
                return x

        def show(out):
            return [f"{type(r).__name__}: {r}" for r in out]

        engine = make_engine()
        out = Pipeline([ident]).map({"x": [1, lock, 3]}, map_over="x", engine=engine,
                                    on_error="collect")
        report(input=show(out))
        out = Pipeline([make_lock]).map({"x": [1, 2, 3]}, map_over="x", engine=engine,
                                        on_error="collect")
        report(output=show(out))
        try:
            Pipeline([uses_lock]).map({"x": [1, 2]}, map_over="x", engine=engine)
        except Exception as exc:
            report(node=f"{type(exc).__name__}: {exc}")
        try:
            Pipeline([ident]).map({"x": [1, lock]}, map_over="x", engine=engine)
        except Exception as exc:
            report(raised=f"{type(exc).__name__}: {exc}")
        report(again=show(Pipeline([ident]).map({"x": [1, 2]}, map_over="x", engine=engine)))
        engine.shutdown()
    """)
    assert rc == 0, err
    assert res["input"][0] == "dict: {'y': 1}" and res["input"][2] == "dict: {'y': 3}", res
    assert res["input"][1].startswith("SerializationError") and "input 'x'" in res["input"][1]
    assert "map item 1" in res["input"][1] and "'ident'" in res["input"][1]
    assert res["output"][0] == "dict: {'y': 1}" and res["output"][2] == "dict: {'y': 3}"
    out = res["output"][1]
    assert out.startswith("SerializationError") and "'y'" in out, out
    assert "'make_lock'" in out and "map item 1" in out, out
    assert res["node"].startswith("SerializationError") and "node 'uses_lock'" in res["node"]
    assert res["raised"].startswith("SerializationError") and "input 'x'" in res["raised"]
    assert "map item 1" in res["raised"], res["raised"]
    assert res["again"] == ["dict: {'y': 1}", "dict: {'y': 2}"]
