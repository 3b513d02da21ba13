"""W7, large results: 1,000 items, each returning a 1 MiB float64 numpy array from a
worker process; every result is kept (a list of 1,000 arrays), as a user's map would.

Bar: ``ProcessEngine()`` >= 2x the best peer's throughput.  The in-process loop (no
worker at all, same arrays kept) is reported beside it as the floor a single process
pays: keeping 1,000 fresh MiB costs page faults wherever the arrays are made.

ProcessEngine sends result buffers out of band (pickle protocol 5) in one memfd per batch;
the driver maps it and the arrays are views of it: no pickle copy, no pipe copy.
"""

from __future__ import annotations

from common import (dask_bag, dask_processes, engine_pair, joblib_loky, mp_pool, process_pool,
                    size)
from harness import Candidate, optional
from hypernodes_peer import hypernodes_rows

from gilfree import Pipeline, engines, node

ID, TITLE = "W7", "large results: 1,000 x 1 MiB numpy arrays from workers"
ITEMS, FLOATS = 1_000, 131_072  # 131,072 float64 = 1 MiB
WORKLOADS = [("W7", TITLE, "candidates", None, "in-process loop (floor)")]


def make_array(x: int):
    import numpy as np

    return np.full(FLOATS, float(x))


@node(output_name="a")
def produce(x: int):
    return make_array(x)


def candidates(quick: bool) -> list[Candidate]:
    if optional("numpy"):
        return [Candidate("numpy", "baseline", lambda _: None, unavailable=optional("numpy"))]
    xs = list(range(size(ITEMS)))
    pipeline = Pipeline([produce])

    def check_plain(out):
        out = list(out)
        return len(out) == len(xs) and all(a[0] == x and a.size == FLOATS
                                           for x, a in zip(xs, out))

    def check(out):
        return check_plain([r["a"] for r in out])

    def run_engine(engine):
        return pipeline.map({"x": xs}, map_over="x", engine=engine)

    out = [Candidate("in-process loop (floor)", "baseline",
                     lambda _: [make_array(x) for x in xs], mode="-", check=check_plain)]
    if hasattr(engines, "ProcessEngine"):
        out += engine_pair("ProcessEngine()", engines.ProcessEngine, run_engine, check)
    out += process_pool(make_array, xs, check_plain)                      # chunksize 1
    out += process_pool(make_array, xs, check_plain, chunksize=max(1, len(xs) // 8))
    out += mp_pool(make_array, xs, check_plain)
    out += joblib_loky(make_array, xs, check_plain)
    out.append(dask_processes(lambda: dask_bag(make_array, xs, "processes"),
                               check=check_plain))
    out[-1].skip_quick = "one call takes 30-50 s on 2 cores: 1,000 MiB through pipes"
    out += hypernodes_rows("W7", len(xs), slow=("DaskEngine(processes)",), skip_quick={
        "DaskEngine(processes)": "one call takes ~30 s on 2 cores"})
    return out
