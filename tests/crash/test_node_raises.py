"""Crash matrix: a node raises.  Every engine: the node's own exception type comes back
with a note naming the node and the map item, the raising line in its traceback; under
on_error="collect" only that item fails; the engine goes on working."""

from __future__ import annotations

import pytest

from crash_helpers import ALL, SPAWN


@pytest.mark.parametrize("engine_name", [*ALL, SPAWN])
def test_node_raises(run_case, engine_name):
    rc, res, err = run_case("""
        import traceback
        class Custom(Exception):
            pass

        @node(output_name="y")
        def picky(x):
            if x == 3:
                raise Custom(f"no {x}")
            return x * 10

        engine = make_engine()
        p = Pipeline([picky])
        try:
            p.map({"x": list(range(8))}, map_over="x", engine=engine)
        except Custom as exc:
            report(type=type(exc).__name__, notes=getattr(exc, "__notes__", []),
                   text="".join(traceback.format_exception(exc)))
        out = p.map({"x": list(range(8))}, map_over="x", engine=engine, on_error="collect")
        report(collect=[f"{type(r).__name__}: {r}" if isinstance(r, Exception) else r["y"]
                        for r in out])
        report(again=[r["y"] for r in p.map({"x": [1, 2]}, map_over="x", engine=engine)])
        engine.shutdown()
    """)
    assert rc == 0, err
    assert res["type"] == "Custom", res
    assert any("'picky'" in n and "map item 3" in n for n in res["notes"]), res["notes"]
    assert 'raise Custom(f"no {x}")' in res["text"] and "in picky" in res["text"]
    assert res["collect"] == [0, 10, 20, "Custom: no 3", 40, 50, 60, 70]
    assert res["again"] == [10, 20]
