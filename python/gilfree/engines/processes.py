"""``ProcessEngine``: map items run in long-lived worker processes (``_core.ProcessPool``).

    driver thread (holds the GIL between C++ calls)              worker processes
      plan + broadcast inputs: remote.encode_payload ────────────▶ Payload, once per worker
        key = content hash: a re-run cell re-ships nothing           per distinct payload
      pool.map(n, ...) ── C++ MapScheduler plans chunks, asks us ▶ Batch rows [a, b)
        make_batch(a, b): remote.encode_batch (rows as columns)      remote.Session runs
      waits in C++ without the GIL, wakes <= 50 ms for Ctrl-C        execute_map(...) with
                                                                     first_index = a; a new
                                                                     map id: new_map() for
                                                                     @stateful failures
      on_result(a, b, ...) ◀──────────── Result: parts + Events ──── (large arrays in a
        remote.place: results into their slots (input order),       memfd: mapped, not
        remote.replay: callbacks and progress fire here             copied)
      on_lost(a, b, info) ◀── a worker died: the items of the batch it was running fail
                              with WorkerDied (node, item, exit code or signal); batches
                              queued behind it run again; C++ starts a replacement

    a map with executor hints (stages.py): each "process" stage is such a map of its own
    (_remote_stage): its rows carry only what the stage reads (plus, with a cache, their
    signatures), items failed in earlier stages travel as Skipped placeholders, and only
    node events are replayed (the driver's execute_map announces map, items, pipeline);
    "thread"/"async" stages run on a ThreadEngine this engine keeps (Engine._lend).

Workers come from a forkserver (default: one clean, single-threaded helper process per
interpreter, see cpp/include/gilfree/launcher.hpp) or are spawned fresh; never forked
from this process, which runs threads.

``run`` executes in the calling process (as on DaskEngine and in HyperNodes): one item
gains nothing from a pool, and breakpoints and tracebacks stay local. Right for
pure-Python CPU-bound nodes; for I/O or GIL-releasing nodes use ThreadEngine.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from typing import Any

from ..errors import ExecutionError
from ..run.execute import Runtime, execute_map
from ..remote import transport
from ..model.plan import Plan
from ..run.stages import Stage, StagePart
from .base import Engine
from .process_map import DEPTH, WorkerDied, _MapCall  # noqa: F401 (WorkerDied: its old home)
from .threads import usable_cores

def _command(module: str, entry: str) -> list[str]:
    # -c rather than -m: the package is found where the driver found it, whatever sys.path
    # the new interpreter starts with. The pool appends the descriptors and parent pid.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        transport.__file__))))  # python/gilfree/remote/transport.py -> python/
    code = (f"import sys; sys.path.insert(0, {root!r}); "
            f"from gilfree.{module} import {entry}; {entry}(sys.argv[1:])")
    return [sys.executable, "-c", code]


_open_engines: "weakref.WeakSet[ProcessEngine]" = weakref.WeakSet()


@atexit.register
def _shutdown_open_engines() -> None:
    # Interpreter exit with an engine left open: stop its workers (they would exit on
    # their own when our sockets close, but this also runs their teardown hooks).
    for engine in list(_open_engines):
        engine.shutdown()


class ProcessEngine(Engine):
    """Runs map items in worker processes: true parallelism for pure-Python CPU work.

    ``workers=None`` means the usable cores. ``batch_size=None`` sizes batches
    automatically (big first, small at the end, so that the workers finish together);
    an integer fixes the number of items per batch. ``initializer(*initargs)`` runs once
    in each worker. ``max_tasks_per_worker`` replaces a worker after that many items.
    ``timeout=`` (or the ``timeout`` hint) bounds each map item: a worker whose item
    runs longer is killed (Python code in another process cannot be stopped otherwise),
    that item fails with ``TimeoutError``, the rest of its batch runs again and a new
    worker takes its place. Calls of a ``DualNode``'s batch function are not bounded.
    ``start_method="forkserver"`` (default) forks workers from one clean helper process
    per interpreter (started with posix_spawn, single-threaded, gilfree already
    imported): the first engine pays ~50 ms for it, later engines and replacements of
    dead workers start in milliseconds. ``"spawn"`` starts every worker as a fresh
    interpreter. Both are safe in a process that runs threads; ``"fork"`` is not.
    """

    supported_hints = frozenset({"batch_size", "retries", "timeout"})
    unbounded_run_note = " (run() executes in this process)"
    native_executors = frozenset({"process"})
    default_executor = "process"
    #: run() executes here: a node that maps spreads its inner items over the workers.
    #: In a map of few items, the node runs in a worker and its map spreads from there
    #: (remote/worker_maps.py); in a map of many, its map runs there, item after item.
    takes_inner_maps = True
    pickles_items = True

    def __init__(self, workers: int | None = None, batch_size: int | None = None, *,
                 start_method: str | None = None, initializer: Any = None,
                 initargs: tuple = (), max_tasks_per_worker: int | None = None,
                 **options: Any):
        super().__init__(batch_size=batch_size, **options)
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"ProcessEngine: workers={workers!r} must be a positive integer")
        if start_method not in (None, "forkserver", "spawn"):
            raise ValueError(
                f"ProcessEngine: start_method={start_method!r} is not supported: use "
                "'forkserver' (the default) or 'spawn'. 'fork' is refused: forking a "
                "process that runs threads (ours, TBB's, yours) can deadlock the child")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ValueError("ProcessEngine: max_tasks_per_worker must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("ProcessEngine: initializer must be callable")
        self.workers = workers or usable_cores()
        self.start_method = start_method or "forkserver"
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.max_tasks_per_worker = max_tasks_per_worker
        self._pool: Any = None
        self._lock = threading.Lock()  # one map at a time per pool
        self._mapping_thread: int | None = None
        self._pool_lock = threading.Lock()
        self._waiting = 0  # maps waiting for _lock (a streaming stage gives it back)

    # -- the pool ---------------------------------------------------------------------
    @property
    def pool(self) -> Any:
        """The native pool, started on first use (workers spawn in the background)."""
        with self._pool_lock:
            if self._pool is None:
                from .._native import core

                zygote = (_command("remote.zygote", "zygote_main")
                          if self.start_method == "forkserver" else [])
                pool = core().ProcessPool(_command("remote.process_worker", "main"), self.workers, 8,
                                          self.max_tasks_per_worker or 0, zygote)
                try:
                    # The initializer travels as bytes of its own: the worker unpickles it
                    # after it has taken sys.path, cwd and env from the driver.
                    initializer = None
                    if self.initializer is not None:
                        initializer, _ = transport.dumps((self.initializer, self.initargs),
                                                         shm=False)
                    init, _ = transport.dumps({
                        "path": list(sys.path), "cwd": os.getcwd(), "env": dict(os.environ),
                        "initializer": initializer, "workers": self.workers}, shm=False)
                except Exception as exc:
                    raise transport.serialization_error(
                        "the initializer or its initargs", "to the worker processes",
                        exc) from exc
                pool.set_init(init)
                pool.start()
                self._pool = pool
                _open_engines.add(self)
            return self._pool

    def start(self) -> "ProcessEngine":
        """Start the workers now instead of at the first map (they start in the background)."""
        self.pool  # noqa: B018
        return self

    @property
    def batches_at_once(self) -> int:
        """Batches a map has with the workers at once: DEPTH each (one running, the next
        sent), and one being made."""
        return self.workers * (DEPTH + 1)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (empty before the first map)."""
        return list(self._pool.pids) if self._pool is not None else []

    def shutdown(self) -> None:
        """Stop the workers. Idle ones run their teardown (@stateful release hooks; up to
        2 s); ones busy for a map running in another thread are killed at once, and that
        map ends with an error saying the engine was shut down (items that finished keep
        their results under ``on_error="collect"``). The engine starts afresh if used again."""
        self._shutdowns += 1  # (first: see Engine._shutdowns; super() counts again)
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(2.0)
        _open_engines.discard(self)
        super().shutdown()

    # -- where items run --------------------------------------------------------------
    def _prepare(self, plan: Plan) -> None:
        super()._prepare(plan)
        from .threads import limit_concurrency

        for step in plan.steps:  # nodes hinted to run here, on threads or the loop
            if step.hints.get("executor") in ("thread", "async", "inline"):
                limit_concurrency(step)

    def _execute_map(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime) -> list:
        if not rows:
            return execute_map(plan, base, rows, rt)
        stages = self._stages(plan, rows, rt)
        if stages is not None:
            return self._staged_map(plan, base, rows, rt, stages)
        return self._map_rows(plan, base, rows, rt)

    def _map_rows(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime,
                  first: int = 0, announce: bool = True) -> list:
        """One map on the pool; ``first``/``announce`` as in ``Engine._staged_map``."""
        return self._on_pool(lambda pool: _MapCall(self, pool, plan, base, rows, rt,
                                                   first=first, announce=announce).run())

    def _remote_stage(self, stage: Stage, plan: Plan, rt: Runtime, base: dict,
                      timeout: float | None, first: int = 0) -> Any:
        """Runs ``stage`` of a map with several executors in the workers (stages.py's
        ``Placement.remote``): only the values it reads go, only what later stages or
        the caller need comes back; items failed in earlier stages are skipped."""
        part = StagePart(stage, plan, rt, base)
        return part.remote(rt, lambda rows, r, skip: self._stage_map(
            part, rows, r, skip=skip, timeout=timeout, first=first))

    def _stage_map(self, part: "StagePart", rows: list[dict], rt: Runtime, **call: Any) -> list:
        """One map of a stage's plan over ``rows`` (``call``: _MapCall's stage options)."""
        return self._on_pool(lambda pool: _MapCall(self, pool, part.plan, part.shared, rows,
                                                   rt, stage=True, **call).run())

    def _stage_stream(self, part: "StagePart", rt: Runtime, source: Any,
                      timeout: float | None) -> None:
        """A streaming map's process stage, for one busy spell: the items ``source``
        has ready, until it is no longer open (engines/process_stream.py)."""
        from .process_stream import StreamCall

        self._on_pool(lambda pool: StreamCall(self, pool, part, rt, source, timeout).run())

    @property
    def waited_for(self) -> bool:
        """Another map waits for the pool: a streaming stage gives it back."""
        return self._waiting > 0

    def _on_pool(self, work: Any) -> Any:
        """``work(pool)`` for one map, with the pool to itself."""
        if self._mapping_thread == threading.get_ident():
            # A callback of a running map mapping again on the same engine: waiting for
            # the pool would deadlock, sharing it would mix the two maps' batches.
            raise RuntimeError("ProcessEngine.map was called from a callback of a map running "
                               "on the same engine; use another engine for the inner map")
        if not self._lock.acquire(blocking=False):
            # A streaming stage holding the pool gives it back when asked (waited_for):
            # wake it, it may be waiting for items.
            with self._pool_lock:
                self._waiting += 1
                pool = self._pool
            try:
                if pool is not None:
                    pool.wake()
                self._lock.acquire()
            finally:
                with self._pool_lock:
                    self._waiting -= 1
        try:  # maps from other threads take turns
            pool = self.pool
            broken = pool.broken
            if broken:
                raise ExecutionError(f"ProcessEngine is broken: {broken}; create a new engine "
                                     "(or call shutdown() and map again) once it is fixed")
            self._mapping_thread = threading.get_ident()
            try:
                return work(pool)
            finally:
                self._mapping_thread = None
        finally:
            self._lock.release()

    def __repr__(self) -> str:
        return f"ProcessEngine(workers={self.workers})"
