"""W1, blocking I/O: 200 items, each node call does ``time.sleep(0.010)``.

Physical limit ~10 ms (all at once).  Bar: ``ThreadEngine()`` warm <= 13 ms, cold <= 25 ms.
"""

from __future__ import annotations

import time

from common import (dask_cluster, dask_processes, dask_threads, every_engine, size,
                    thread_pool_pair)
from harness import Candidate, optional
from hypernodes_peer import hypernodes_rows

from gilfree import Pipeline, node

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


def daft_rows(urls: list[int], check) -> list[Candidate]:
    """Daft as the seed reports used it: a row-wise ``@daft.func`` (sync: one row at a
    time), and a batch UDF that fans its rows out to a thread pool inside (the seeds'
    fastest "sync batch" shape)."""
    reason = optional("daft")

    def row_wise(_):
        import daft

        f = daft.func(fetch_one)
        df = daft.from_pydict({"url": urls})
        return df.select(f(df["url"]).alias("page")).to_pydict()["page"]

    def batch_threads(_):
        import daft
        from concurrent.futures import ThreadPoolExecutor

        @daft.func.batch(return_dtype=daft.DataType.int64())
        def fetch_batch(url):
            with ThreadPoolExecutor(64) as ex:
                return list(ex.map(fetch_one, url.to_pylist()))

        df = daft.from_pydict({"url": urls})
        return df.select(fetch_batch(df["url"]).alias("page")).to_pydict()["page"]

    return [
        Candidate("daft @daft.func (row-wise)", "peer", row_wise, mode="-", rounds=1,
                  warmup=False, check=check, unavailable=reason),
        Candidate("daft @daft.func.batch + ThreadPoolExecutor(64) inside", "peer",
                  batch_threads, mode="-", check=check, unavailable=reason),
    ]


def candidates(quick: bool) -> list[Candidate]:
    urls = list(range(size(ITEMS)))
    expected = [{"page": u} for u in urls]
    pipeline = Pipeline([fetch])
    check = lambda out: out == expected  # noqa: E731
    check_plain = lambda out: list(out) == urls  # noqa: E731

    def run_pipeline(engine):
        return pipeline.map({"url": urls}, map_over="url", engine=engine)

    def dask_call(scheduler):
        import dask

        return dask.compute(*[dask.delayed(fetch_one)(u) for u in urls], scheduler=scheduler)

    return [
        Candidate("plain loop", "baseline", lambda _: [fetch_one(u) for u in urls],
                  mode="-", rounds=1, warmup=False, check=check_plain),
        *every_engine(run_pipeline, check, seq_rounds=1, seq_warmup=False),
        *thread_pool_pair(32, lambda ex: list(ex.map(fetch_one, urls)), check_plain),
        *thread_pool_pair(200, lambda ex: list(ex.map(fetch_one, urls)), check_plain),
        dask_threads(lambda: dask_call("threads"), rounds=3,
                     check=lambda out: list(out) == urls),
        dask_processes(lambda: dask_call("processes"), rounds=3,
                       check=lambda out: list(out) == urls),
        *dask_cluster(lambda c: c.gather(c.map(fetch_one, urls, pure=False)), check_plain),
        *daft_rows(urls, check_plain),
        *hypernodes_rows("W1", len(urls), slow=("SeqEngine",)),
    ]


if __name__ == "__main__":  # this workload alone: the same as run.py --only <id>
    import sys

    import run

    sys.exit(run.main(["--only", ID, *sys.argv[1:]]))
