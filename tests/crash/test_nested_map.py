"""Crash matrix: a node maps an inner pipeline on the same engine.  The outer map's
waiting items must not hold the slots the inner items need: it completes, also with a
per-item timeout (Thread, Async), with as many outer items as the engine has workers.
On Process and Dask the node runs in a worker, where the engine it names does not
travel (it arrives as None: the inner map runs on the default engine there); the map
must still complete with the right results."""

from __future__ import annotations

import pytest

from crash_helpers import ASYNC, DASK, IN_PROCESS, PROCESS, THREAD


@pytest.mark.parametrize("engine_name, options", [
    *[(e, {}) for e in IN_PROCESS],
    (PROCESS, {}),
    pytest.param(DASK.values[0], {}, marks=DASK.marks),
    (THREAD, {"max_workers": 8, "timeout": 30}),
    (ASYNC, {"max_workers": 8, "timeout": 30}),
], ids=[*IN_PROCESS, "process", "dask", "thread-timeout", "async-timeout"])
def test_map_inside_a_node_on_the_same_engine(run_case, engine_name, options):
    rc, res, err = run_case(f"""
        @node(output_name="z")
        def square(y):
            return y * y

        inner = Pipeline([square])
        options = {options!r}
        engine = make_engine(**options)

        @node(output_name="total")
        def fan_out(x):
            out = inner.map({{"y": [x, x + 1, x + 2, x + 3]}}, map_over="y", engine=engine)
            return sum(r["z"] for r in out)

        # As many outer items as threads: each waits for 4 inner items on the same pool.
        n = options.get("max_workers", 8)
        out = Pipeline([fan_out]).map({{"x": list(range(n))}}, map_over="x", engine=engine)
        report(totals=[r["total"] for r in out], n=n)
        engine.shutdown()
    """, timeout=60)
    assert rc == 0, err
    assert res["totals"] == [sum((x + k) ** 2 for k in range(4)) for x in range(res["n"])]
