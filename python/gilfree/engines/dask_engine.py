"""``DaskEngine``: map items run in batches on a Dask cluster (``dask.distributed``).

    driver (caller's thread)                           Dask workers (processes)
      Payload (plan, broadcast inputs), once: a task ─▶ fetched and unpickled once per
      one client.submit per Batch of rows ────────────▶ worker and map; each @stateful
                                                       object built once per process;
                                                       the remote session runs it
      as_completed: each finished batch ◀───────────── Result (parts, events, error)
        its events replayed (remote.driver.replay): callbacks fire here, in the driver
        its results put in their slots: input order
      Ctrl-C / an error ends the map early ───────────▶ its batches cancelled; running
                                                       ones interrupted (_dask_worker.py)

The LocalCluster that ``DaskEngine()`` starts runs in a process of its own
(``_dask_host.py``): its scheduler and nannies would otherwise grow the driver's memory.
Dask's client runs its event loop on its own thread; the driver thread blocks only in
``as_completed``, which wakes every 100 ms.  What runs on the workers is in
``_dask_worker.py``; what is pickled for them (payload, batch rows) in
``_dask_payload.py``: the remote layer (``remote/``) that ProcessEngine uses too, so the
messages, errors, @stateful rules and callback replay are the same.  ``run`` executes
in the calling process, as in HyperNodes' DaskEngine: one item gains nothing from a
cluster, and breakpoints and tracebacks stay local.
"""

from __future__ import annotations

import atexit
import math
import os
import signal
import sys
import threading
import time
import uuid
import warnings
import weakref
from concurrent.futures import CancelledError
from typing import Any

from ..errors import EngineShutDown, ExecutionError
from ..run.execute import Runtime, execute_map
from ..run.stages import (EXECUTORS, PROCESS, Placement, Stage, StagePart, compile_stages,
                          fans_out)
from ..model.plan import Plan
from ..remote import driver
from . import _dask_host
from . import _dask_payload as _p
from . import _dask_worker as _w
from .base import Engine
from .threads import usable_cores

#: Automatic batch size: a few batches per worker thread, so that a slow batch or worker
#: is balanced by the others while Dask's ~1 ms per task stays negligible.
BATCHES_PER_THREAD = 4
MAX_BATCHES = 1024  # a big cluster still gets at most this many tasks per map


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        # gilfree is not on a package index (yet): say what installs dask, and the
        # extra that works from a checkout of gilfree.
        raise ModuleNotFoundError(
            "DaskEngine needs dask.distributed, which is not installed: "
            'pip install "dask[distributed]" (or, in a gilfree checkout, '
            'pip install ".[dask]")',
            name="distributed") from exc
    return distributed


def _dashboard_address(dashboard: bool | str | None) -> str | None:
    if not dashboard:
        return None  # none by default: nothing gilfree starts listens beyond loopback
    return "127.0.0.1:8787" if dashboard is True else dashboard


#: After a map that ended early (Ctrl-C, an error), how long the next map gives that
#: map's running batches to stop (each is interrupted at its next bytecode) before the
#: workers still busy with one are killed and restarted by their nanny: only on a
#: LocalCluster the engine started, never on a caller's cluster.
INTERRUPT_GRACE = 1.0


# -- the engine (driver side) ---------------------------------------------------------
def _bare(exc: BaseException) -> BaseException:
    """Dask's verdict on a batch (KilledWorker, cancelled, connection lost) without its
    traceback, which is the client's internals: its frames (through f_back) hold the
    map's futures, and under "collect" the error outlives the map in the results, so
    the workers would keep every batch's results in memory meanwhile."""
    exc.__context__ = None
    return exc.with_traceback(None)


class DaskEngine(Engine):
    """Runs map items in batches on a Dask cluster; ``run`` runs in the calling process.

    With neither ``client`` nor ``address`` a ``LocalCluster`` of processes starts on first
    use (``n_workers`` defaults to the usable cores, ``threads_per_worker`` to 1: pure
    Python needs processes) and is reused until ``shutdown()``.  It listens on 127.0.0.1
    only and serves no dashboard unless asked: ``dashboard=True`` serves it on
    127.0.0.1:8787 (``engine.client.dashboard_link``), a string is the address to serve
    it on.  ``address="tcp://...:8786"`` connects to a running scheduler; ``client=`` uses
    the caller's ``distributed.Client`` and never closes it.  ``batch_size=None`` sends
    ~4 batches per worker thread; an int sets the items per task.  A ``@stateful``
    object is built at most once per worker process and reused across batches, maps and
    engines.
    """

    supported_hints = frozenset({"batch_size", "retries"})

    def __new__(cls, *args: Any, **kwargs: Any) -> "DaskEngine":
        # HyperNodes' form (scheduler=, num_workers=, workload_type=, npartitions=, or a
        # scheduler name first) runs on dask's local schedulers: _dask_local.py.
        from . import _dask_local as local

        if cls is DaskEngine and (local.LOCAL_ARGS & set(kwargs) or (
                args and isinstance(args[0], str) and args[0] in local.SCHEDULERS)):
            cls = local.LocalDaskEngine
        return super().__new__(cls)

    def __init__(self, client: Any = None, address: str | None = None,
                 batch_size: int | None = None, *, n_workers: int | None = None,
                 threads_per_worker: int = 1, dashboard: bool | str = False,
                 cluster_options: dict[str, Any] | None = None,
                 connect_timeout: float = 30.0, **options: Any):
        super().__init__(batch_size=batch_size, **options)
        if client is not None and address is not None:
            raise ValueError("DaskEngine: give client= or address=, not both")
        _distributed()  # fail now, with the install hint, when dask is missing
        self.address = address
        self.n_workers, self.threads_per_worker = n_workers, threads_per_worker
        self.dashboard = dashboard
        self.cluster_options = dict(cluster_options or {})
        self.connect_timeout = connect_timeout
        self._client, self._cluster, self._owns_client = client, None, False
        self._lock = threading.Lock()
        self._shipped: set[str] = set()  # stateful keys this engine sent to workers
        self._at_exit: Any = None
        self._generation = 0  # bumped by shutdown(): a map sees it was shut down
        self._inflight: dict[str, list] = {}  # map token -> its futures, while it runs
        self._ended_early: set[str] = set()  # maps whose batches may still be running

    @property
    def client(self) -> Any:
        """The ``distributed.Client``, connecting or starting the LocalCluster on first use."""
        with self._lock:
            if self._client is None:
                d = _distributed()
                if self.address is None:
                    options = {"n_workers": self.n_workers or usable_cores(),
                               "processes": True,
                               "threads_per_worker": self.threads_per_worker,
                               "dashboard_address": _dashboard_address(self.dashboard)}
                    if not {"host", "ip", "interface"} & set(self.cluster_options):
                        options["host"] = "127.0.0.1"  # scheduler, nannies and workers
                    extra = dict(self.cluster_options)
                    if not self.dashboard and "dashboard_address" not in extra:
                        # Without a dashboard the scheduler still serves /health and
                        # /metrics, by default on 8787 (a warning when taken): any port.
                        extra["scheduler_kwargs"] = {"dashboard_address": "127.0.0.1:0",
                                                     **extra.get("scheduler_kwargs", {})}
                    # In a process of its own, not in the driver: memory (_dask_host.py).
                    self._cluster = _dask_host.HostedCluster({**options, **extra},
                                                             timeout=self.connect_timeout)
                target = (self._cluster.scheduler_address if self._cluster is not None
                          else self.address)
                with _dask_host.no_message_log():
                    self._client = d.Client(target, timeout=self.connect_timeout,
                                            set_as_default=False)
                self._owns_client = True
                # An engine left open must not keep the interpreter from exiting.
                ref = weakref.ref(self)
                self._at_exit = lambda: ref() is not None and ref().shutdown()
                atexit.register(self._at_exit)
            return self._client

    def shutdown(self) -> None:
        """Tear down the @stateful objects built for us on the workers; close the client
        and cluster if this engine started them (a caller's client stays open).  A map
        running meanwhile in another thread fails its unfinished items with an
        ExecutionError that says so."""
        with self._lock:
            client, cluster, owns = self._client, self._cluster, self._owns_client
            if owns:
                self._client = self._cluster = None
                self._owns_client = False
                self._generation += 1
                self._ended_early = set()
            keys, self._shipped = sorted(self._shipped), set()
            inflight = list(self._inflight) if owns else []
            if self._at_exit is not None:
                atexit.unregister(self._at_exit)
                self._at_exit = None
        try:
            for token in inflight:  # so that the workers can close at once
                client.run(_w.interrupt, token, wait=False)
            if client is not None and keys and client.status == "running":
                client.run(_w.release_stateful, keys)
        except Exception:
            pass  # workers gone or unreachable: nothing left to tear down there
        finally:
            if owns:
                client.close(timeout=10)
            if cluster is not None:
                cluster.close(timeout=10)
            super().shutdown()

    # -- where items run --------------------------------------------------------------
    def _stream(self, plan: Plan, base: dict, rows: Any, rt: Runtime, ordered: bool,
                read_ahead: int | None, total: int | None, mapped: set[str]) -> Any:
        """imap: windows of ``read_ahead`` items (default 1024), each one map on the
        cluster (run/flow.py's WindowStream): the stages of one item do not overlap
        with the next window's."""
        from ..run.flow import WindowStream, iterate

        return iterate(WindowStream(self, plan, base, rows, rt, window=read_ahead or 1024,
                                    collect=rt.collect, total=total))

    #: A node whose function calls ``Pipeline.map`` (no engine given, none on its
    #: pipeline) maps on the cluster: from run(), here; in a map with too few items to
    #: keep the cluster busy, from the task running the node (_dask_worker.py).
    takes_inner_maps = True
    pickles_items = True

    def _execute_map(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime, *,
                     first: int = 0, announce: bool = True) -> list:
        kind = self._fan_out_executor
        if rows and kind is not None and fans_out(plan) and \
                len(rows) < BATCHES_PER_THREAD * self._threads():
            # A nested pipeline maps, and the items are too few to keep the workers
            # busy: the inner items of every item run as one map (run/fanout.py), the
            # steps before and after it as maps of their own. (With more items, each
            # running its inner map where it runs balances as well, and the two extra
            # maps would cost ~30-50 ms each: a map's tasks on a cluster.)
            stages = compile_stages(plan, kind, dict.fromkeys(EXECUTORS, kind),
                                    set(rows[0]), fanout=True)
            return execute_map(plan, base, rows, rt, stages=stages, first_index=first,
                               announce=announce,
                               place=lambda st: self._placement(st, plan, rt, base, first))
        return self._map_whole(plan, base, rows, rt, first=first, announce=announce)

    #: The executor of the stages around a fan-out: maps of their own on the cluster
    #: (None: nested maps run inside their items).
    _fan_out_executor: str | None = PROCESS

    def _placement(self, stage: Stage, plan: Plan, rt: Runtime, base: dict,
                   first: int = 0) -> Placement:
        if stage.kind == "fanout":
            return super()._placement(stage, plan, rt, base, first)
        part = StagePart(stage, plan, rt, base)
        return Placement(remote=part.remote(rt, lambda rows, r, skip: self._map_whole(
            part.plan, part.shared, rows, r, first=first, announce=False, skip=skip,
            stage=True)))

    def _threads(self) -> int:
        """The cluster's worker threads (at least 1)."""
        return max(1, sum(self.client.nthreads().values()))

    def _map_whole(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime, *,
                   first: int = 0, announce: bool = True, skip: set[int] = frozenset(),
                   stage: bool = False) -> list:
        """The map as batches of the whole plan on the cluster; ``skip``: items that
        failed in an earlier stage (placeholders, run around); ``stage``: a stage of a
        map whose driver tells the items' events (their workers' are dropped)."""
        if not rows:
            return execute_map(plan, base, rows, rt, announce=announce)
        generation = self._generation  # before self.client: a shutdown after it shows
        client, n = self.client, len(rows)
        if self._ended_early:
            try:
                self._settle_ended_early(client)
            except Exception:
                pass  # a worker died or restarted meanwhile: it is not busy any more
        size, threads = self.batch_size, self._threads()
        if size is None:
            size = math.ceil(n / min(MAX_BATCHES, BATCHES_PER_THREAD * threads))
        # DualNodes: whole batches of their sizes per task, so that each batch function
        # gets the items it asked for (a task is the most it can get); as on ProcessEngine.
        size = driver.whole_batches(size, driver.dual_batch_size(plan, rt))
        spans = [(a, min(a + size, n)) for a in range(0, n, size)]
        # Too few items to keep the cluster busy: a node that maps spreads its inner
        # items over the cluster (its map a map of its own there, _dask_worker.py);
        # with more, each call maps where it runs, as fan-outs do (_execute_map).
        node_maps = self.takes_inner_maps and n < BATCHES_PER_THREAD * threads
        token = uuid.uuid4().hex
        payload = _p.MapPayload(token, plan, base, rows, rt)
        batches = [payload.batch(rows[a:b], first + a, skip, a) for a, b in spans]
        blob, depth = payload.blob, payload.depth
        with self._lock:
            self._shipped |= payload.keys
        del payload
        # Filled as they are submitted, so that Ctrl-C or a shutdown while submitting
        # still cancels those sent; sent = [payload, *futures].
        sent: list = []
        futures: list = []
        with self._lock:
            self._inflight[token] = sent
        t0 = None
        try:
            # Once per map, as a task (not scatter): a worker that dies takes its copy
            # with it, and Dask can recompute a task's result for the re-run batches,
            # never scattered data.  Workers fetch it from each other, once each.
            with warnings.catch_warnings():  # big inputs are the point; Dask's hint misleads
                warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
                sent.append(client.submit(_p.identity, blob, pure=False,
                                          key=f"gilfree-payload-{token}"))
            for k, rows_blob in enumerate(batches):
                futures.append(client.submit(_w.run_batch, token, sent[0], rows_blob,
                                             node_maps, pure=False,
                                             key=f"gilfree-batch-{k}-{token}"))
                sent.append(futures[-1])
            del blob, batches
            if rt.callbacks and announce:
                rt.emit("on_map_start", n)
            t0 = time.perf_counter()
            dropped = driver.STAGE_ANNOUNCEMENTS if stage else driver.MAP_ANNOUNCEMENTS
            return self._gather(client, futures, spans, plan, rt, depth, generation, first,
                                dropped)
        except Exception:
            if t0 is None and self._generation != generation:  # closed while submitting
                raise self._shut_down_error(plan, first, first + n) from None
            raise
        finally:
            with self._lock:
                del self._inflight[token]
            self._end(client, token, sent)
            # Emptied, not only dropped: a raised error's traceback keeps this frame and
            # _gather's alive, and a future kept alive keeps its batch's results in the
            # workers' memory.
            sent.clear()
            futures.clear()
            # The client unpickled Dask's messages meanwhile: each fresh name string that
            # CPython's method cache now keeps pins a 1 MiB arena the map's results
            # filled (CPython 3.11); an empty cache refills in microseconds.
            sys._clear_type_cache()
            if rt.callbacks and announce and t0 is not None:
                rt.emit("on_map_end", time.perf_counter() - t0)

    def _end(self, client: Any, token: str, futures: list) -> None:
        """The map is over (done, failed or Ctrl-C): free the workers of its batches."""
        with self._lock:
            if client is not self._client:
                return  # our cluster shut down meanwhile: a closed client's calls never return
        left = [f for f in futures if not f.done()]
        early = bool(left) or any(f.cancelled() for f in futures)
        try:
            if left:
                client.cancel(left, force=True)
            if early:
                # Cancelling stops queued batches only; the running ones are told to
                # stop too, and the next map makes sure none is left (_settle_ended_early).
                client.run(_w.interrupt, token, wait=False)
                with self._lock:
                    self._ended_early.add(token)
            client.run(_w.forget_payload, token, wait=False)
        except Exception:
            pass  # the cluster is gone (shutdown): so are its batches and the payload

    def _settle_ended_early(self, client: Any) -> None:
        """Before a map: batches of maps that ended early must not hold the worker
        threads it needs.  Interrupted batches stop at their next bytecode; a worker of
        our own LocalCluster still busy after INTERRUPT_GRACE (a node blocked in C, or
        one that swallowed the interrupt) is killed, and its nanny starts a fresh one.
        A caller's cluster is theirs: its busy threads finish their batches first."""
        with self._lock:
            tokens, self._ended_early = sorted(self._ended_early), set()
            cluster = self._cluster if client is self._client else None
            local = cluster is not None
        if not local or not tokens:
            return
        deadline = time.monotonic() + INTERRUPT_GRACE
        while True:
            busy = [w for w, k in client.run(_w.running, tokens).items() if k]
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(0.02)  # polled: the interrupts land within a bytecode or a C call
        if not busy:
            return
        # processes=False (cluster_options) puts the workers in the host: not those.
        pids = [p for p in client.run(os.getpid, workers=busy).values() if p != cluster.pid]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        # Until the scheduler has seen them go, it could send new batches to them (and
        # count their deaths against those batches: distributed.scheduler.allowed-failures).
        deadline = time.monotonic() + 30
        while pids and set(busy) & set(client.nthreads()) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _gather(self, client: Any, futures: list, spans: list, plan: Plan, rt: Runtime,
                depth: int, generation: int, first: int = 0,
                dropped: frozenset[str] = driver.MAP_ANNOUNCEMENTS) -> list:
        index = {f.key: k for k, f in enumerate(futures)}
        out: list[Any] = [None] * spans[-1][1]
        failures: dict[int, BaseException] = {}
        pending = set(range(len(futures)))
        stop = len(futures)  # on_error="raise": batches from here on are not needed
        try:
            for fut in _distributed().as_completed(futures, loop=client.loop):
                k = index[fut.key]
                pending.discard(k)
                if k >= stop:
                    continue
                a, b = spans[k]
                try:
                    if self._generation != generation:
                        # Shut down: our closed client's calls would never return.
                        raise CancelledError("the DaskEngine was shut down")
                    answer = fut.result()
                except Exception as exc:  # the batch itself failed or was lost
                    if self._generation != generation:
                        error = self._shut_down_error(plan, first + a, first + b)
                        error.__cause__ = _bare(exc)
                    else:
                        error = self._batch_error(exc, plan, first + a, first + b)
                    if rt.collect and isinstance(error, ExecutionError):
                        out[a:b] = [error] * (b - a)
                        continue
                else:
                    result = _p.answer(answer, a, b)  # unpickled pinning no arena
                    error = result.error
                    if error is None:
                        bad = driver.place(out, a, result.parts, plan.outputs)
                        if bad is not None and not rt.collect:
                            error = out[bad]
                    # Each worker's execute_map opened and closed a map of its own; the
                    # driver's (with the total) stands for them.  Nested maps' are kept.
                    driver.replay(rt, result.events, depth, dropped)
                    if error is None:
                        continue
                # The first failure in input order wins, as on the other engines: later
                # batches are cancelled, earlier ones still finish (they may fail first).
                failures[k], stop = error, k
                later = [f for f in futures[k + 1:] if not f.done()]
                if later and self._generation == generation:
                    try:
                        client.cancel(later, force=True)
                    except Exception:
                        pass  # closed meanwhile (shutdown): they are cancelled anyway
                if not any(j < stop for j in pending):
                    break
        finally:  # an error's traceback keeps this frame: no future may stay in it
            fut = later = None
        if failures:
            raise failures[min(failures)]
        return out

    @staticmethod
    def _items(plan: Plan, a: int, b: int) -> str:
        names = [s.name for s in plan.steps]
        nodes = f"node {names[0]!r}" if len(names) == 1 else f"one of the nodes {names}"
        items = f"map item {a}" if b - a == 1 else f"map items {a} to {b - 1}"
        return f"{items} of pipeline {plan.pipeline.label!r} ({nodes})"

    def _shut_down_error(self, plan: Plan, a: int, b: int) -> ExecutionError:
        return EngineShutDown(f"{self._items(plan, a, b)} did not complete: the DaskEngine "
                              "was shut down during the map (engine.shutdown(), e.g. from "
                              "another thread, or the interpreter exiting)")

    def _batch_error(self, exc: BaseException, plan: Plan, a: int, b: int) -> BaseException:
        """A lost batch as an ExecutionError naming its items; other errors as they are."""
        from distributed.comm import CommClosedError
        from distributed.scheduler import KilledWorker

        if not isinstance(exc, (KilledWorker, CancelledError, CommClosedError)):
            return exc
        what = (f"Dask lost it ({type(exc).__name__}: {exc})"
                if not isinstance(exc, KilledWorker) else
                "a Dask worker process died while running it (crash, out of memory, "
                "os._exit, killed) and Dask gave up after its retries "
                "(distributed.scheduler.allowed-failures); the worker logs say why")
        err = ExecutionError(f"{self._items(plan, a, b)} did not complete: {what}."
                             + (" Use batch_size=1 to find the item." if b - a > 1 else ""))
        err.__cause__ = _bare(exc)
        return err

    def __repr__(self) -> str:
        where = self.address or ("client" if self._client is not None and not self._owns_client
                                 else "LocalCluster")
        return f"DaskEngine({where})"
