"""Crash matrix: a worker process dies under an item (Process, both start methods; Dask).
The item it ran fails (Dask: the items of its task) with an ExecutionError naming the node
and the item, the others complete, the pool replaces the worker and the engine goes on
working."""

from __future__ import annotations

import pytest

from crash_helpers import BOTH_STARTS, DASK

# A map of 12 items in batches of 2 over 2 workers in which item 5 dies as DIE says.
DEATH = """
@node(output_name="y")
def fragile(x):
    if x == 5:
        DIE
    return x * 10

if ENGINE == "dask":
    # Dask counts a death against every task the worker held at that moment; with one
    # task per worker thread (worker-saturation 1.0) that is only the batch that died,
    # not a neighbour that happened to be queued behind it.
    import dask
    dask.config.set({"distributed.scheduler.worker-saturation": 1.0})
engine = make_engine(batch_size=2)
p = Pipeline([fragile])
before = engine.start().pids if hasattr(engine, "pids") else []
out = p.map({"x": list(range(12))}, map_over="x", engine=engine, on_error="collect")
errors = {i: f"{type(r).__name__}: {r}" for i, r in enumerate(out) if isinstance(r, Exception)}
wrapped = all(isinstance(r, ExecutionError) for r in out if isinstance(r, Exception))
ok = {i: r["y"] for i, r in enumerate(out) if not isinstance(r, Exception)}
again = p.map({"x": [1, 2, 3]}, map_over="x", engine=engine)  # replaced, usable
report(errors=errors, wrapped=wrapped, ok=ok, again=[r["y"] for r in again],
       before=before, after=getattr(engine, "pids", []))
try:
    p.map({"x": list(range(12))}, map_over="x", engine=engine)
except Exception as exc:
    report(raised=isinstance(exc, ExecutionError), message=f"{type(exc).__name__}: {exc}")
engine.shutdown()
"""

DIE = {"signal": "os.kill(os.getpid(), signal.SIGKILL)", "os._exit": "os._exit(3)",
       "segfault": "import ctypes; ctypes.string_at(0)"}
#: What ProcessEngine's error says of each death (Dask's client is not told).
EXIT = {"signal": "was killed by SIGKILL", "os._exit": "exited with code 3",
        "segfault": "was killed by SIGSEGV"}


@pytest.mark.parametrize("engine_name, death", [
    *[(e, d) for e in BOTH_STARTS for d in DIE],
    pytest.param(DASK.values[0], "os._exit", marks=DASK.marks)])
def test_worker_death_fails_its_items_and_the_pool_recovers(run_case, engine_name, death):
    rc, res, err = run_case(DEATH.replace("DIE", DIE[death]), timeout=90)
    assert rc == 0, err
    # Batches of 2: items 4 and 5 were held by the dead worker. A process pool knows it
    # died running item 5 (its status page): item 4 runs again. Dask's task is the batch.
    lost = ["5"] if engine_name.startswith("process") else ["4", "5"]
    assert sorted(res["errors"]) == lost, res
    assert res["wrapped"], res["errors"]
    for msg in res["errors"].values():
        assert "node 'fragile'" in msg, msg
        assert "map item 5" in msg or "map items 4 to 5" in msg, msg
    assert {int(k) for k in res["ok"]} == set(range(12)) - {int(k) for k in lost}
    assert res["again"] == [10, 20, 30]
    assert res["raised"], res["message"]
    if engine_name.startswith("process"):
        for msg in res["errors"].values():
            assert msg.startswith("WorkerDied") and EXIT[death] in msg, msg
            assert "map item 5" in msg, msg
        assert EXIT[death] in res["message"]
        assert set(res["after"]) != set(res["before"]) and len(res["after"]) == 2
    else:
        assert all("died" in msg for msg in res["errors"].values()), res["errors"]
