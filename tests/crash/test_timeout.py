"""Crash matrix: a node hangs past ``timeout`` (the engines that support timeout:
Thread, Async, Process; Seq and Dask warn that they cannot).  The map ends, each hung
item fails with a TimeoutError naming the item, and the engine is healthy afterwards: a
following map on it succeeds, its calls are not counted against the hung ones."""

from __future__ import annotations

import pytest

from crash_helpers import ASYNC, PROCESS, THREAD


@pytest.mark.parametrize("engine_name", [THREAD, ASYNC, PROCESS])
def test_hung_items_time_out_and_the_engine_stays_healthy(run_case, engine_name):
    rc, res, err = run_case("""
        @node(output_name="y")
        def hang(x):
            threading.Event().wait()  # forever: a socket that never answers
            return x

        @node(output_name="y")
        def inc(x):
            return x + 1

        # max_workers=4: as many hung calls as threads (ProcessEngine: as many as workers).
        engine = make_engine(timeout=0.5,
                             **({"max_workers": 4} if ENGINE in ("thread", "async") else {}))
        t0 = time.monotonic()
        out = Pipeline([hang]).map({"x": list(range(4))}, map_over="x", engine=engine,
                                   on_error="collect")
        report(hung=[f"{type(r).__name__}: {r}" for r in out], took=time.monotonic() - t0)
        out = Pipeline([inc]).map({"x": list(range(10))}, map_over="x", engine=engine,
                                  on_error="collect")
        report(after=[r["y"] if isinstance(r, dict) else f"{type(r).__name__}: {r}"
                      for r in out])
        try:
            Pipeline([hang]).map({"x": [7]}, map_over="x", engine=engine)
        except Exception as exc:
            report(raised=f"{type(exc).__name__}: {exc}")
        engine.shutdown()
        report(done=True)
    """, timeout=90)
    assert rc == 0, err
    assert len(res["hung"]) == 4, res
    for i, msg in enumerate(res["hung"]):
        assert msg.startswith("TimeoutError") and f"map item {i}" in msg, res["hung"]
    assert res["after"] == list(range(1, 11)), res["after"]
    assert res["raised"].startswith("TimeoutError") and "map item 0" in res["raised"], res
    assert res["done"]  # shutdown returned with calls still hung
