"""W4, dispatch overhead: per-item cost of a map of ``x + 1`` (20,000 items).

Bars: SeqEngine <= 2 us/item, ThreadEngine <= 3 us/item, ProcessEngine <= 2 us/item
(one-node pipeline).
"""

from __future__ import annotations

from common import (auto_chunksize, dask_bag, dask_cluster, dask_processes, dask_threads,
                    engine_pair, every_engine, joblib_loky, mp_pool, process_pool, size)
from concurrent.futures import ThreadPoolExecutor
from harness import Candidate
from hypernodes_peer import hypernodes_rows

from gilfree import Pipeline, node
from gilfree.engines import AsyncEngine, ProcessEngine, SeqEngine, ThreadEngine

ID, TITLE = "W4", "dispatch overhead: 20,000 x (x + 1)"
ITEMS = 20_000
#: (id, title, candidates function, items for per-item units or None, baseline name)
WORKLOADS = [("W4", TITLE, "candidates", ITEMS, "plain loop (dicts)")]


def inc_one(x):
    return x + 1


@node(output_name="y")
def inc(x):
    return x + 1


@node(output_name="z")
def inc2(y):
    return y + 1


@node(output_name="w")
def inc3(z):
    return z + 1


def _raw_pool():
    from gilfree._native import core

    return core().ThreadPool(256, 10.0)


def candidates(quick: bool, items: int = ITEMS) -> list[Candidate]:
    xs = list(range(size(items)))
    one, chain = Pipeline([inc]), Pipeline([inc, inc2, inc3])
    expected = [{"y": x + 1} for x in xs]
    check = lambda out: out == expected  # noqa: E731

    def chain_loop(_):
        out = []
        for x in xs:
            y = x + 1
            z = y + 1
            out.append({"y": y, "z": z, "w": z + 1})
        return out

    plain = [x + 1 for x in xs]
    check_plain = lambda out: list(out) == plain  # noqa: E731

    return [
        Candidate("plain loop (dicts)", "baseline", lambda _: [{"y": x + 1} for x in xs],
                  mode="-", check=check),
        Candidate("plain loop, 3-node chain", "baseline", chain_loop, mode="-"),
        Candidate("SeqEngine", "gilfree", lambda e: one.map({"x": xs}, map_over="x", engine=e),
                  make=SeqEngine, check=check),
        Candidate("SeqEngine, 3-node chain", "gilfree",
                  lambda e: chain.map({"x": xs}, map_over="x", engine=e), make=SeqEngine),
        *engine_pair("ThreadEngine()", ThreadEngine,
                     lambda e: one.map({"x": xs}, map_over="x", engine=e), check),
        *engine_pair("AsyncEngine()", AsyncEngine,
                     lambda e: one.map({"x": xs}, map_over="x", engine=e), check),
        *every_engine(lambda e: one.map({"x": xs}, map_over="x", engine=e), check,
                      skip=("SeqEngine", "ThreadEngine", "AsyncEngine", "ProcessEngine")),
        Candidate("ThreadEngine(), 3-node chain", "gilfree",
                  lambda e: chain.map({"x": xs}, map_over="x", engine=e), make=ThreadEngine,
                  close=lambda e: e.shutdown()),
        # Worker processes: rows pickled as columns in big batches (bar: <= 2 us/item).
        *engine_pair("ProcessEngine()", ProcessEngine,
                     lambda e: one.map({"x": xs}, map_over="x", engine=e), check),
        Candidate("ProcessEngine(), 3-node chain", "gilfree",
                  lambda e: chain.map({"x": xs}, map_over="x", engine=e), make=ProcessEngine,
                  close=lambda e: e.shutdown()),
        # The C++ pool alone (no pipeline): the floor ThreadEngine's dispatch sits on.
        Candidate("gilfree._core.ThreadPool.map (raw C++ dispatch)", "gilfree",
                  lambda pool: pool.map(inc_one, xs), make=_raw_pool,
                  close=lambda pool: pool.shutdown(True), check=lambda r: r == [x + 1 for x in xs]),
        Candidate("ThreadPoolExecutor(32).map", "peer",
                  lambda ex: list(ex.map(inc_one, xs)), make=lambda: ThreadPoolExecutor(32),
                  close=lambda ex: ex.shutdown(), rounds=3),
        dask_threads(lambda: dask_bag(inc_one, xs, "threads"), rounds=3),
        # Process peers: the workloads.md figures (best first: Pool.map default chunks,
        # ProcessPoolExecutor chunked, loky) plus per-task submission for contrast.
        *mp_pool(inc_one, xs, check_plain),
        *process_pool(inc_one, xs, check_plain, chunksize=auto_chunksize(len(xs))),
        *process_pool(inc_one, xs, check_plain, modes=("warm",), rounds=1,
                      light_warmup=True),
        *joblib_loky(inc_one, xs, check_plain),
        dask_processes(lambda: dask_bag(inc_one, xs, "processes"), rounds=3,
                       check=check_plain),
        *dask_cluster(lambda c: dask_bag(inc_one, xs, c.get), check_plain, rounds=3),
        *hypernodes_rows("W4", len(xs)),
        *hypernodes_rows("W4-chain", len(xs)),
    ]


if __name__ == "__main__":  # this workload alone: the same as run.py --only <id>
    import sys

    import run

    sys.exit(run.main(["--only", ID, *sys.argv[1:]]))
