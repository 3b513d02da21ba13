"""Candidates shared by several workloads: gilfree engines cold and warm, and the peers a
user would pick instead (thread and process pools, joblib, dask), each as a factory that
takes the workload's function and items.

Process peers use each library's defaults (on Linux with Python 3.11: ``fork``), as a
user who does not configure them gets.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable

from harness import Candidate, optional

#: Set by ``run.py --tiny``: workloads shrink their item counts (the smoke test).
TINY = False
#: The gilfree engines a workload runs when it runs "every engine that exists".
ENGINE_NAMES = ("SeqEngine", "ThreadEngine", "AsyncEngine", "ProcessEngine", "AutoEngine",
                "DaskEngine")


def size(n: int) -> int:
    """A workload's item count, shrunk under ``--tiny`` (the result is not a benchmark)."""
    return max(4, n // 50) if TINY else n


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def auto_chunksize(n: int, workers: int | None = None) -> int:
    """What a careful user passes as ``chunksize``: ~4 chunks per worker."""
    return max(1, n // (4 * (workers or cores())))


# -- gilfree -----------------------------------------------------------------------------
def engine_pair(name: str, make: Callable[[], Any], call: Callable[[Any], Any],
                check: Callable[[Any], bool] | None = None, cold: bool = True) -> list[Candidate]:
    """A gilfree engine, warm (reused) and cold (fresh engine inside the timed call).
    DaskEngine's cluster keeps a scheduler and client threads busy in the driver, so its
    rows are measured apart from the others (``Candidate.alone``)."""
    alone = name.startswith("DaskEngine")
    return [Candidate(name, "gilfree", call, make=make, close=lambda e: e.shutdown(),
                      mode=m, check=check, alone=alone)
            for m in (("warm", "cold") if cold else ("warm",))]


def engine_makers() -> dict[str, Any]:
    """Engine name -> a no-argument factory (no tuning), or the reason it cannot run."""
    from gilfree import engines

    out: dict[str, Any] = {}
    for name in ENGINE_NAMES:
        cls = getattr(engines, name, None)
        if cls is None:
            out[name] = f"gilfree.engines.{name} does not exist yet (work in progress)"
        elif name == "DaskEngine":
            # Its own loopback cluster without a dashboard, as a user gets by default.
            out[name] = optional("distributed") or cls
        else:
            out[name] = cls
    return out


def every_engine(call: Callable[[Any], Any], check: Callable[[Any], bool] | None = None, *,
                 skip: tuple[str, ...] = (), seq_rounds: int | None = None,
                 seq_warmup: bool = True) -> list[Candidate]:
    """Every gilfree engine that exists, with no configuration: SeqEngine once (it has no
    pool; ``seq_rounds``/``seq_warmup`` limit it where it is a 2-10 s sequential run),
    the others warm and cold.  Engines that do not exist are listed with why."""
    out = []
    for name, make in engine_makers().items():
        if name in skip:
            continue
        if isinstance(make, str):
            out.append(Candidate(f"{name}()", "gilfree", call, unavailable=make))
        elif name == "SeqEngine":
            out.append(Candidate("SeqEngine()", "gilfree", call, make=make,
                                 close=lambda e: e.shutdown(), check=check,
                                 rounds=seq_rounds, warmup=seq_warmup))
        else:
            out += engine_pair(f"{name}()", make, call, check)
    return out


# -- threads -----------------------------------------------------------------------------
def thread_pool_pair(workers: int, call: Callable[[ThreadPoolExecutor], Any],
                     check: Callable[[Any], bool] | None = None, label: str | None = None,
                     rounds: int | None = None) -> list[Candidate]:
    label = label or f"ThreadPoolExecutor({workers})"
    make = lambda: ThreadPoolExecutor(workers)  # noqa: E731
    close = lambda ex: ex.shutdown()  # noqa: E731
    return [Candidate(label, "peer", call, make=make, close=close, mode=m, check=check,
                      rounds=rounds) for m in ("warm", "cold")]


# -- processes ---------------------------------------------------------------------------
def _start_workers(ex: Any) -> None:
    """Start a pool's workers without running the workload (a cheap warm-up)."""
    n = getattr(ex, "_max_workers", None) or getattr(ex, "_processes", None) or cores()
    list(ex.map(abs, range(4 * n)))


def process_pool(fn: Callable, xs: list, check: Callable | None = None, *,
                 chunksize: int | None = None, initializer: Callable | None = None,
                 initargs: tuple = (), modes: tuple[str, ...] = ("warm", "cold"),
                 rounds: int | None = None, light_warmup: bool = False) -> list[Candidate]:
    """``ProcessPoolExecutor(cores).map(fn, xs, chunksize=...)``: per task (chunksize 1)
    or chunked; with or without an initializer."""
    n = cores()
    cs = chunksize or 1
    label = f"ProcessPoolExecutor({n}{', initializer' if initializer else ''})" \
            f".map({'per task' if cs == 1 else f'chunksize={cs}'})"
    make = lambda: ProcessPoolExecutor(n, initializer=initializer, initargs=initargs)  # noqa: E731
    return [Candidate(label, "peer", lambda ex: list(ex.map(fn, xs, chunksize=cs)), make=make,
                      close=lambda ex: ex.shutdown(), mode=m, check=check, rounds=rounds,
                      warmup=_start_workers if light_warmup else True) for m in modes]


def mp_pool(fn: Callable, xs: list, check: Callable | None = None, *,
            chunksize: int | None = None, initializer: Callable | None = None,
            initargs: tuple = (), modes: tuple[str, ...] = ("warm", "cold"),
            rounds: int | None = None) -> list[Candidate]:
    """``multiprocessing.Pool(cores).map``: default chunks unless ``chunksize``."""
    n = cores()
    label = f"multiprocessing.Pool({n}{', initializer' if initializer else ''})" \
            f".map({'default chunks' if chunksize is None else f'chunksize={chunksize}'})"

    def make():
        return multiprocessing.Pool(n, initializer=initializer, initargs=initargs)

    def close(pool):
        pool.terminate()
        pool.join()

    return [Candidate(label, "peer", lambda pool: pool.map(fn, xs, chunksize=chunksize),
                      make=make, close=close, mode=m, check=check, rounds=rounds)
            for m in modes]


def joblib_loky(fn: Callable | None, xs: list, check: Callable | None = None, *,
                modes: tuple[str, ...] = ("warm", "cold"), rounds: int | None = None,
                per_call: Callable[[], Callable] | None = None) -> list[Candidate]:
    """``joblib.Parallel(n_jobs=-1)`` on loky, batch size auto.  loky keeps one global
    reusable pool: the cold row shuts it down after its call, so the warm row restarts
    it (untimed) before each of its calls.  ``per_call`` makes the function inside each
    timed call instead (a model's method: the model is built in the call, as a loop
    builds it, and loky pickles it with every batch)."""
    reason = optional("joblib")

    def call(_):
        from joblib import Parallel, delayed

        f = per_call() if per_call is not None else fn
        return Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)

    def kill(_):
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)

    def rewarm(_):
        from joblib import Parallel, delayed

        Parallel(n_jobs=-1)(delayed(abs)(i) for i in range(4 * cores()))

    out = []
    for m in modes:
        out.append(Candidate("joblib.Parallel(n_jobs=-1) (loky)", "peer", call, mode=m,
                             close=kill if m == "cold" else (lambda _: None),
                             before=rewarm if m == "warm" else None, check=check,
                             rounds=rounds, unavailable=reason))
    return out


# -- dask --------------------------------------------------------------------------------
def dask_bag(fn: Callable, xs: list, scheduler: Any) -> list:
    """``fn`` over ``xs`` as a dask bag of 8 partitions, computed by ``scheduler``
    ("threads", "processes", or a cluster client's ``get``)."""
    import dask.bag as db

    return db.from_sequence(xs, npartitions=8).map(fn).compute(scheduler=scheduler)


def dask_threads(call: Callable[[], Any], rounds: int | None = None,
                 check: Callable[[Any], bool] | None = None,
                 label: str = "dask (threaded scheduler)") -> Candidate:
    return Candidate(label, "peer", lambda _: call(), mode="-",
                     rounds=rounds, check=check, unavailable=optional("dask"))


def dask_processes(call: Callable[[], Any], rounds: int | None = None,
                   check: Callable[[Any], bool] | None = None,
                   label: str = "dask (processes scheduler)", warmup: bool = False) -> Candidate:
    """dask's multiprocessing scheduler: a new pool in every compute, so a warm-up call
    warms nothing (no warm-up unless asked)."""
    return Candidate(label, "peer", lambda _: call(), mode="-", rounds=rounds, check=check,
                     warmup=warmup, unavailable=optional("dask"),
                     note="dask's multiprocessing scheduler starts a process pool in every "
                          "compute: each call includes start-up")


def local_client() -> Any:
    """A ``distributed.LocalCluster`` with its defaults, less the dashboard (which would
    listen on every interface)."""
    from distributed import Client, LocalCluster

    return Client(LocalCluster(dashboard_address=None), set_as_default=False)


def close_client(client: Any) -> None:
    cluster = client.cluster
    client.close()
    cluster.close()


def dask_cluster(call: Callable[[Any], Any], check: Callable | None = None, *,
                 modes: tuple[str, ...] = ("warm", "cold"), rounds: int | None = None,
                 label: str = "dask.distributed LocalCluster()") -> list[Candidate]:
    """``call(client)`` on a default LocalCluster, reused (warm) or started in the call."""
    reason = optional("distributed")
    return [Candidate(label, "peer", call, make=local_client, close=close_client, mode=m,
                      check=check, rounds=rounds, unavailable=reason, alone=True)
            for m in modes]


# -- daft --------------------------------------------------------------------------------
def daft_stateful(model_cls: type, args: tuple, xs: list, check: Callable | None = None,
                  *, method: str = "predict") -> list[Candidate]:
    """Daft's class UDFs as the seed reports used them for a model built once:
    ``@daft.cls`` row-wise (in-process), the same in ``use_process`` actors (one per
    core), and ``@daft.method.batch``.  The instance (an actor pool's template) is built
    by ``make``; Daft builds the model inside its workers on first use."""
    reason = optional("daft")

    def make_cls(**options):
        import daft

        @daft.cls(**options)
        class DaftModel:
            def __init__(self, *a):
                self.model = model_cls(*a)

            @daft.method(return_dtype=daft.DataType.int64())
            def one(self, x: int) -> int:
                return getattr(self.model, method)(x)

            @daft.method.batch(return_dtype=daft.DataType.int64())
            def many(self, x):
                f = getattr(self.model, method)
                return [f(v) for v in x.to_pylist()]

        return DaftModel(*args)

    def run(attr):
        def call(udf):
            import daft

            df = daft.from_pydict({"x": xs})
            return df.select(getattr(udf, attr)(df["x"]).alias("y")).to_pydict()["y"]
        return call

    n = cores()
    return [
        Candidate("daft @daft.cls (row-wise)", "peer", run("one"), make=make_cls, check=check,
                  unavailable=reason),
        Candidate(f"daft @daft.cls(use_process=True, max_concurrency={n})", "peer",
                  run("one"), make=lambda: make_cls(use_process=True, max_concurrency=n),
                  check=check, unavailable=reason),
        Candidate("daft @daft.cls + @daft.method.batch", "peer", run("many"), make=make_cls,
                  check=check, unavailable=reason),
    ]
