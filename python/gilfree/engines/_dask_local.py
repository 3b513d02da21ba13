"""``DaskEngine(scheduler=...)``: HyperNodes' form, on dask's local schedulers.

HyperNodes' ``DaskEngine(scheduler="threads", num_workers=None, workload_type="mixed",
npartitions=None, cache=None, callbacks=None)`` runs a map as a Dask Bag on one of
dask's local schedulers; no cluster, and only ``dask`` (not ``dask.distributed``) is
needed.  ``DaskEngine(...)`` with any of those arguments builds a ``LocalDaskEngine``
(see ``DaskEngine.__new__``); ``client=``/``address=`` or no arguments keep gilfree's
cluster mode.

    threads / synchronous   the items are split into partitions (HyperNodes' rule);
                            each partition is one dask task running its items through
                            gilfree's execute_map, in this process.  Callbacks fire in
                            the calling thread while the map runs.
    processes               each partition is one dask task in dask's process pool
                            running the cluster mode's worker function (_dask_worker.py,
                            over the remote layer's session): the Payload pickled once
                            per map, a Batch per partition, @stateful objects built once
                            per process; each Result's events replay afterwards.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from typing import Any, Callable

from ..run.execute import Runtime, execute_map
from ..run.stages import THREAD, Placement, Stage
from ..model.plan import Plan
from ..remote import driver
from . import _dask_payload as _p
from . import _dask_worker as _w
from .base import Engine
from .dask_engine import DaskEngine
from .threads import usable_cores

#: dask's names for its local schedulers -> the three HyperNodes documents.
SCHEDULERS = {"threads": "threads", "threading": "threads", "processes": "processes",
              "multiprocessing": "processes", "synchronous": "synchronous",
              "sync": "synchronous", "single-threaded": "synchronous"}
#: Oversubscription per workload type (HyperNodes' rule: I/O waits, CPU does not).
WORKLOADS = {"io": 4, "cpu": 2, "mixed": 3}
LOCAL_ARGS = frozenset({"scheduler", "num_workers", "workload_type", "npartitions"})


def _dask() -> Any:
    try:
        import dask
    except ImportError as exc:
        raise ModuleNotFoundError(
            "DaskEngine(scheduler=...) needs dask, which is not installed: pip install dask",
            name="dask") from exc
    return dask


def partitions(n_items: int, num_workers: int, workload_type: str = "mixed") -> int:
    """HyperNodes' partition rule: ``num_workers`` x 4 (io), 2 (cpu) or 3 (mixed),
    kept between ``max(2, num_workers)`` and ``min(n_items, 10 x num_workers)``, then
    between n/1000 and n/10 partitions (10 to 1000 items each), rounded to a power of
    two when one is within 30%; never more partitions than items."""
    if n_items <= 0:
        return 1
    recommended = num_workers * WORKLOADS[workload_type]
    recommended = max(max(2, num_workers), min(recommended, min(n_items, num_workers * 10)))
    recommended = max(max(1, n_items // 1000), min(recommended, max(1, n_items // 10)))
    power = 2 ** round(math.log2(recommended))
    if abs(power - recommended) / recommended < 0.3:
        recommended = power
    return max(1, min(recommended, n_items))


def _spans(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into ``parts`` contiguous spans of (nearly) equal length."""
    size = math.ceil(n / parts)
    return [(a, min(a + size, n)) for a in range(0, n, size)]


class LocalDaskEngine(DaskEngine):
    """``DaskEngine`` on dask's local schedulers (HyperNodes' arguments); ``run`` runs in
    the calling process.  Built by ``DaskEngine(scheduler=..., num_workers=...,
    workload_type=..., npartitions=...)``; see the module docstring."""

    supported_hints = frozenset({"batch_size", "retries"})
    takes_inner_maps = False  # a node's own map: on its pipeline's engine, or SeqEngine

    def __init__(self, scheduler: str = "threads", num_workers: int | None = None,
                 workload_type: str = "mixed", npartitions: int | None = None,
                 cache: Any = None, callbacks: list | None = None, *, client: Any = None,
                 address: str | None = None, **options: Any):
        if client is not None or address is not None:
            raise ValueError("DaskEngine: scheduler=/num_workers=/workload_type=/npartitions= "
                             "run on dask's local schedulers, client=/address= on a cluster: "
                             "give one or the other")
        Engine.__init__(self, cache=cache, callbacks=callbacks, **options)
        if scheduler not in SCHEDULERS:
            raise ValueError(f"DaskEngine: scheduler={scheduler!r}; use 'threads', "
                             "'processes' or 'synchronous'")
        if workload_type not in WORKLOADS:
            raise ValueError(f"DaskEngine: workload_type={workload_type!r}; use 'io', 'cpu' "
                             "or 'mixed'")
        for name, value in (("num_workers", num_workers), ("npartitions", npartitions)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"DaskEngine: {name}={value!r} must be a positive integer")
        _dask()  # fail now, with the install hint, when dask is missing
        self.scheduler = SCHEDULERS[scheduler]
        self.num_workers = num_workers or usable_cores()
        self.workload_type = workload_type
        self.npartitions = npartitions

    @property
    def client(self) -> None:
        """No ``distributed.Client``: dask's local schedulers need none."""
        return None

    def shutdown(self) -> None:
        # Nothing outlives a map: dask's local pools are per compute call.
        Engine.shutdown(self)

    def _partitions(self, n: int) -> int:
        return min(n, self.npartitions or partitions(n, self.num_workers, self.workload_type))

    def _compute(self, tasks: list) -> tuple:
        return _dask().compute(*tasks, scheduler=self.scheduler, num_workers=self.num_workers)

    # -- threads / synchronous: partitions of gilfree's items, in this process ---------
    def _map_whole(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime, *,
                   first: int = 0, announce: bool = True, skip: set[int] = frozenset(),
                   stage: bool = False) -> list:
        # (skip, stage: for a cluster's stage maps; here a fan-out's other stages run
        # through _placement's pfor, and "processes" does not fan out)
        if self.scheduler == "processes" and rows:
            return self._map_processes(plan, base, rows, rt, first, announce)
        return execute_map(plan, base, rows, rt, pfor=self._pfor(rt), first_index=first,
                           announce=announce)

    @property
    def _fan_out_executor(self) -> str | None:  # type: ignore[override]
        # A nested map's inner items as one map (dask_engine.py), the stages around it
        # in this process (dask's threads). Not on "processes": each map there starts a
        # process pool (~0.7 s), and the stages would be three maps instead of one.
        return None if self.scheduler == "processes" else THREAD

    def _threads(self) -> int:
        return self.num_workers

    def _placement(self, stage: Stage, plan: Plan, rt: Runtime, base: dict,
                   first: int = 0) -> Placement:
        if stage.kind != "fanout":
            return Placement(pfor=self._pfor(rt))
        return super()._placement(stage, plan, rt, base, first)

    def _pfor(self, rt: Runtime) -> Callable[[Callable[[int], None], int], None]:
        dask = _dask()
        driver = threading.get_ident()

        def pfor(task: Callable[[int], None], n: int) -> None:
            if n == 0:
                return
            errors: dict[int, BaseException] = {}
            stop = [n]  # items after the lowest failed one are not started

            def part(a: int, b: int) -> None:
                for i in range(a, b):
                    if i > stop[0]:
                        return
                    try:
                        task(i)
                    except Exception as exc:
                        errors[i] = exc
                        stop[0] = min(stop[0], i)
                        return
                    if threading.get_ident() == driver:  # synchronous: events at once
                        rt.flush()

            tasks = [dask.delayed(part, pure=False)(a, b)
                     for a, b in _spans(n, self._partitions(n))]
            if self.scheduler == "synchronous":
                self._compute(tasks)
            else:
                self._wait(tasks, rt, stop)
            rt.flush()
            if errors:
                raise errors[min(errors)]
        return pfor

    def _wait(self, tasks: list, rt: Runtime, stop: list) -> None:
        """Compute on dask's thread pool; meanwhile this (the calling) thread fires the
        callbacks of the events the items queue, so progress moves as they finish."""
        done = threading.Event()
        failure: list[BaseException] = []

        def compute() -> None:
            try:
                self._compute(tasks)
            except BaseException as exc:  # handed to the calling thread
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=compute, name="gilfree-dask-local", daemon=True).start()
        try:
            while not done.wait(0.05):
                rt.flush()
        except BaseException:  # Ctrl-C: items not started yet do not start
            stop[0] = -1
            raise
        if failure:
            raise failure[0]

    # -- processes: partitions as tasks in dask's process pool --------------------------
    def _map_processes(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime,
                       first: int, announce: bool) -> list:
        dask, n = _dask(), len(rows)
        spans = _spans(n, self._partitions(n))
        payload = _p.MapPayload(uuid.uuid4().hex, plan, base, rows, rt)
        tasks = [dask.delayed(_w.run_batch, pure=False)(
            payload.token, payload.blob, payload.batch(rows[a:b], first + a))
            for a, b in spans]
        announce = announce and bool(rt.callbacks)
        if announce:
            rt.emit("on_map_start", n)
        t0 = time.perf_counter()
        try:
            answers = self._compute(tasks)
            out: list[Any] = [None] * n
            for (a, b), answer in zip(spans, answers):
                result = _p.answer(answer, a, b)
                # Each task's execute_map opened and closed a map of its own; ours (with
                # the total) stands for them.  Nested maps' are kept.
                driver.replay(rt, result.events, payload.depth)
                if result.error is not None:  # the first failure in input order
                    raise result.error
                bad = driver.place(out, a, result.parts, plan.outputs)
                if bad is not None and not rt.collect:
                    raise out[bad]
            return out
        finally:
            if announce:
                rt.emit("on_map_end", time.perf_counter() - t0)

    def __repr__(self) -> str:
        return (f"DaskEngine(scheduler={self.scheduler!r}, num_workers={self.num_workers}, "
                f"workload_type={self.workload_type!r}, npartitions={self.npartitions})")
