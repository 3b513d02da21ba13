"""W3, CPU-bound pure Python: 400 items x ~4 ms of arithmetic.

Physical limit: loop time / cores.  Bar: ``ProcessEngine()`` >= 0.97 x cores warm,
>= 0.92 x cores cold.  DaskEngine (a LocalCluster of one single-threaded worker process
per core) is measured beside it: the path for when one machine is not enough.
Process pools are started cold (inside the timed call) and warm (reused).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gilfree import Pipeline, engines, node
from gilfree.engines import SeqEngine

if TYPE_CHECKING:
    from harness import Candidate

# The benchmark's own machinery (harness, peers) is imported inside candidates(): worker
# processes import this module to find ``crunch`` and should load the workload only, as
# they would load a user's module, not the harness's multiprocessing, psutil and asyncio.

ID, TITLE = "W3", "CPU-bound pure Python: 400 x ~4 ms"
ITEMS, ITERATIONS = 400, 80_000  # ~4 ms per item on the 2-core development VM
#: (id, title, candidates function, items for per-item units or None, baseline name)
WORKLOADS = [("W3", TITLE, "candidates", None, "plain loop")]


def burn(x: int) -> int:
    s = 0
    for i in range(ITERATIONS):
        s += (i * x) % 7
    return s


@node(output_name="y")
def crunch(x: int) -> int:
    return burn(x)


def _cores() -> int:
    from gilfree.engines.threads import usable_cores

    return usable_cores()


def _local_dask_engine():
    from gilfree.engines import DaskEngine

    return DaskEngine()


def _local_dask_client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=_cores(), threads_per_worker=1, processes=True,
                           dashboard_address=None)
    return Client(cluster, set_as_default=False)


def _close_client(client) -> None:
    cluster = client.cluster
    client.close()
    cluster.close()


_FRESH = """
import sys, time
sys.path.insert(0, {here!r})
from w3_cpu_bound import ITEMS, burn, crunch
from gilfree import Pipeline
from gilfree.engines import ProcessEngine
xs, pipeline = list(range(ITEMS)), Pipeline([crunch])
t0 = time.perf_counter()
with ProcessEngine() as engine:
    out = pipeline.map({{"x": xs}}, map_over="x", engine=engine)
    seconds = time.perf_counter() - t0
print(seconds, out[7] == {{"y": burn(7)}})
"""


def _fresh_interpreter_map(_):
    """Engine construction + map, timed inside a new interpreter (imports excluded)."""
    import os
    import subprocess
    import sys

    from harness import Timed

    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", _FRESH.format(here=here)],
                          capture_output=True, text=True, timeout=600)
    seconds, ok = proc.stdout.split()[-2:]
    return Timed(float(seconds), None, ok == "True")


def candidates(quick: bool) -> list[Candidate]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from common import dask_bag, dask_processes, engine_pair, joblib_loky, process_pool
    from harness import Candidate, optional
    from hypernodes_peer import hypernodes_rows

    xs = list(range(ITEMS))
    plain = [burn(x) for x in xs[:8]]  # a spot check; the full list is checked below
    expected = None
    pipeline = Pipeline([crunch])

    def check(out):
        nonlocal expected
        if expected is None:
            expected = [{"y": burn(x)} for x in xs]
        return out == expected

    def check_plain(out):
        return list(out)[:8] == plain and len(list(out)) == ITEMS

    def run_pipeline(engine):
        return pipeline.map({"x": xs}, map_over="x", engine=engine)

    chunk = max(1, ITEMS // (4 * _cores()))
    no_dask = optional("distributed")
    out = [
        # The bars divide by this row: it gets every round (and keeps them under --quick),
        # as the rows it divides do, not the three the other slow in-process rows get.
        Candidate("plain loop", "baseline", lambda _: [burn(x) for x in xs], mode="-",
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
        # The rows above share one forkserver (started by the first engine of this
        # process); this one pays for starting it, as the first map of a notebook does.
        out.append(Candidate("ProcessEngine(), first engine in a fresh interpreter",
                             "gilfree", _fresh_interpreter_map, mode="-", rounds=3))
    dask = engine_pair("DaskEngine() LocalCluster", _local_dask_engine, run_pipeline, check)
    for c in dask:
        c.unavailable = no_dask
    out += dask
    for mode in ("warm", "cold"):
        out.append(Candidate(f"ProcessPoolExecutor.map(chunksize={chunk})", "peer",
                             lambda ex: list(ex.map(burn, xs, chunksize=chunk)),
                             make=lambda: ProcessPoolExecutor(_cores()),
                             close=lambda ex: ex.shutdown(), mode=mode, check=check_plain))
    for mode in ("warm", "cold"):
        out.append(Candidate("multiprocessing Pool.map", "peer", lambda pool: pool.map(burn, xs),
                             make=lambda: multiprocessing.get_context("spawn").Pool(_cores()),
                             close=lambda pool: pool.terminate(), mode=mode,
                             check=check_plain))
    # The other peers the issue and workloads.md name: one task per item, loky (joblib's
    # default), and dask's process scheduler (a new pool in every compute).
    out += process_pool(burn, xs, check_plain)
    out += joblib_loky(burn, xs, check_plain)
    out.append(dask_processes(lambda: dask_bag(burn, xs, "processes"), check=check_plain))
    out.append(Candidate("dask.distributed client.map, LocalCluster", "peer",
                         lambda c: c.gather(c.map(burn, xs, pure=False)),
                         make=_local_dask_client, close=_close_client, check=check_plain,
                         unavailable=no_dask, alone=True))
    out += hypernodes_rows("W3", len(xs), slow=("SeqEngine", "DaskEngine"))
    return out
