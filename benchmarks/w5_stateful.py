"""W5, stateful model: 10,000 items through a ``@stateful`` model whose ``__init__``
takes 50 ms and whose call is ~0.06 ms of pure Python.

Physical limit: one init per worker + items / cores.  Bar: ``ProcessEngine()`` with
``@stateful`` >= 1.85x the single-process loop on 2 cores, exactly one init per worker
(counted).  DaskEngine (a LocalCluster, one single-threaded worker process per core) is
measured beside it; its builds per worker process are counted after each run and printed.
"""

from __future__ import annotations

import multiprocessing
import os
import time

from common import (dask_bag, dask_processes, daft_stateful, engine_pair, joblib_loky,
                    process_pool)
from harness import Candidate, optional
from hypernodes_peer import hypernodes_rows

from gilfree import Pipeline, engines, node, stateful
from gilfree.engines import SeqEngine

ID, TITLE = "W5", "stateful model: 10,000 items, init 50 ms, call ~0.06 ms"
ITEMS, INIT_SECONDS, CALL_ITERATIONS = 10_000, 0.050, 1_300  # ~0.06 ms per call
#: (id, title, candidates function, items for per-item units or None, baseline name)
WORKLOADS = [("W5", TITLE, "candidates", None, "plain loop (one model)")]

BUILDS = {"count": 0}  # per process: how many models this process built


class Model:
    def __init__(self, salt: int):
        time.sleep(INIT_SECONDS)  # loading weights
        BUILDS["count"] += 1
        self.salt = salt

    def predict(self, x: int) -> int:
        s = self.salt
        for i in range(CALL_ITERATIONS):
            s += (i ^ x) & 15
        return s


@stateful
class StatefulModel(Model):
    """The same model, built lazily: once per worker process, never per item."""


@node(output_name="y")
def predict(x: int, model) -> int:
    return model.predict(x)


_POOL_MODEL: Model | None = None


def _init_pool(salt: int) -> None:
    global _POOL_MODEL
    _POOL_MODEL = Model(salt)


def _pool_predict(x: int) -> int:
    return _POOL_MODEL.predict(x)


def _builds() -> tuple[int, int]:
    return os.getpid(), BUILDS["count"]


def _cores() -> int:
    from gilfree.engines.threads import usable_cores

    return usable_cores()


def _dask_engine():
    from gilfree.engines import DaskEngine

    return DaskEngine()


def _close_dask(engine) -> None:
    # Exactly one model per worker process, however many batches and rounds ran.
    counts = sorted(n for _, n in engine.client.run(_builds).values())
    print(f"    DaskEngine: models built per worker process: {counts}", flush=True)
    engine.shutdown()


def candidates(quick: bool) -> list[Candidate]:
    xs = list(range(ITEMS if not quick else ITEMS // 2))
    reference = Model(7)
    expected_plain = [reference.predict(x) for x in xs]
    expected = [{"y": v} for v in expected_plain]
    check = lambda out: out == expected  # noqa: E731
    check_plain = lambda out: list(out) == expected_plain  # noqa: E731
    pipeline = Pipeline([predict])

    def run_pipeline(engine):
        return pipeline.map({"x": xs, "model": StatefulModel(7)}, map_over="x", engine=engine)

    def plain_loop(_):
        model = Model(7)
        return [model.predict(x) for x in xs]

    chunk = max(1, len(xs) // (4 * _cores()))
    out = [
        # The bar divides by this row: every round, as for W3's loop.
        Candidate("plain loop (one model)", "baseline", plain_loop, mode="-",
                  check=check_plain, key=True),
        Candidate("SeqEngine", "gilfree", run_pipeline, make=SeqEngine, rounds=3, check=check),
    ]
    if hasattr(engines, "ProcessEngine"):
        bar_rows = engine_pair("ProcessEngine()", engines.ProcessEngine, run_pipeline, check)
        if hasattr(engines, "AutoEngine"):  # its bar: within 1.15x of ProcessEngine, warm
            bar_rows += engine_pair("AutoEngine()", engines.AutoEngine, run_pipeline, check)
        for c in bar_rows:
            c.key = True
        out += bar_rows
    for c in engine_pair("DaskEngine() LocalCluster", _dask_engine, run_pipeline, check):
        c.close, c.unavailable = _close_dask, optional("distributed")
        out.append(c)
    for mode in ("warm", "cold"):
        out.append(Candidate(
            f"multiprocessing Pool(initializer).map(chunksize={chunk})", "peer",
            lambda pool: pool.map(_pool_predict, xs, chunksize=chunk),
            make=lambda: multiprocessing.get_context("spawn").Pool(
                _cores(), initializer=_init_pool, initargs=(7,)),
            close=lambda pool: pool.terminate(), mode=mode, check=check_plain))
    # ProcessPoolExecutor with the same initializer (one model per worker), chunked and
    # one task per item.
    out += process_pool(_pool_predict, xs, check_plain, chunksize=chunk,
                        initializer=_init_pool, initargs=(7,))
    out += process_pool(_pool_predict, xs, check_plain, initializer=_init_pool,
                        initargs=(7,), modes=("warm",), rounds=3)
    # loky and dask's process scheduler have no initializer: as their users write it, the
    # model is built in the driver (in the call, as the loop builds it) and pickled with
    # every batch (cheap here: its state is one int).
    out += joblib_loky(None, xs, check_plain, per_call=lambda: Model(7).predict)
    out.append(dask_processes(lambda: dask_bag(Model(7).predict, xs, "processes"),
                              rounds=3, check=check_plain))
    out += daft_stateful(Model, (7,), xs, check_plain)
    out += hypernodes_rows("W5", len(xs), slow=("DaskEngine(processes)",))
    return out
