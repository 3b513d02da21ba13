"""W1, blocking I/O: 200 items, each node call does ``time.sleep(0.010)``.

Physical limit ~10 ms (all at once).  Bar: ``ThreadEngine()`` warm <= 13 ms, cold <= 25 ms.
"""

from __future__ import annotations

import time

from common import dask_threads, engine_pair, thread_pool_pair
from harness import Candidate

from gilfree import Pipeline, node
from gilfree.engines import SeqEngine, ThreadEngine

ID, TITLE = "W1", "blocking I/O: 200 x time.sleep(10 ms)"
ITEMS, SLEEP = 200, 0.010
#: (id, title, candidates function, items for per-item units or None, baseline name)
WORKLOADS = [("W1", TITLE, "candidates", None, "plain loop")]


def fetch_one(url: int) -> int:
    time.sleep(SLEEP)
    return url


@node(output_name="page")
def fetch(url: int) -> int:
    time.sleep(SLEEP)
    return url


def candidates(quick: bool) -> list[Candidate]:
    urls = list(range(ITEMS))
    expected = [{"page": u} for u in urls]
    pipeline = Pipeline([fetch])
    check = lambda out: out == expected  # noqa: E731
    check_plain = lambda out: list(out) == urls  # noqa: E731

    def run_pipeline(engine):
        return pipeline.map({"url": urls}, map_over="url", engine=engine)

    def dask_call():
        import dask

        return dask.compute(*[dask.delayed(fetch_one)(u) for u in urls], scheduler="threads")

    return [
        Candidate("plain loop", "baseline", lambda _: [fetch_one(u) for u in urls],
                  mode="-", rounds=1, check=check_plain),
        Candidate("SeqEngine", "gilfree", run_pipeline, make=SeqEngine, mode="warm", rounds=1,
                  check=check),
        *engine_pair("ThreadEngine()", ThreadEngine, run_pipeline, check),
        *thread_pool_pair(32, lambda ex: list(ex.map(fetch_one, urls)), check_plain),
        *thread_pool_pair(200, lambda ex: list(ex.map(fetch_one, urls)), check_plain),
        dask_threads(dask_call, rounds=3, check=lambda out: list(out) == urls),
    ]
