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
import itertools
import os
import signal
import sys
import threading
import time
import weakref
from bisect import bisect_left
from typing import Any

from ..errors import EngineShutDown, ExecutionError
from ..run.execute import Runtime, execute_map
from ..remote import transport
from ..model.plan import Plan
from ..remote import driver as remote
from ..remote.messages import RemoteOptions
from ..run.stages import Skipped, Stage, StagePart
from .base import Engine
from .threads import usable_cores

#: Batches a worker holds at once: one running, one queued behind it, so that a worker
#: never waits for the driver between batches.
DEPTH = 2


class WorkerDied(ExecutionError):
    """A worker process died (signal, ``os._exit``, crash, OOM killer) holding map items."""


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


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
                        "initializer": initializer}, shm=False)
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
    def pids(self) -> list[int]:
        """Process ids of the live workers (empty before the first map)."""
        return list(self._pool.pids) if self._pool is not None else []

    def shutdown(self) -> None:
        """Stop the workers. Idle ones run their teardown (@stateful release hooks; up to
        2 s); ones busy for a map running in another thread are killed at once, and that
        map ends with an error saying the engine was shut down (items that finished keep
        their results under ``on_error="collect"``). The engine starts afresh if used again."""
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

        def remote(values: list, sigs: list, failed: list, cached: list, collect: bool) -> None:
            skip = {i for i, err in enumerate(failed) if err is not None}
            rows = [part.row(v, s) for v, s in zip(values, sigs)]
            r = rt if rt.collect == collect else _with_collect(rt, collect)
            out = self._stage_map(part, rows, r, skip=skip, timeout=timeout, first=first)
            for i, result in enumerate(out):
                if i in skip:
                    continue
                if isinstance(result, BaseException):
                    failed[i] = result
                    cached[i] = False
                else:
                    cached[i] = part.take(result, values[i], sigs[i]) and cached[i]
        return remote

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


def _dual_batch_size(plan: Plan, rt: Runtime) -> int:
    """What a worker's batch should be a whole multiple of (the DualNodes' LCM), or 0:
    the remote layer's rule, DaskEngine's too."""
    return remote.dual_batch_size(plan, rt)


_map_ids = itertools.count(1)

_STAGE_ANNOUNCEMENTS = remote.MAP_ANNOUNCEMENTS | {
    "on_map_item_start", "on_map_item_end", "on_map_item_cached", "on_pipeline_start",
    "on_pipeline_end"}


def _with_collect(rt: Runtime, collect: bool) -> Runtime:
    import copy

    r = copy.copy(rt)
    r.collect = collect
    return r

#: Maps of at least this many items give the C heap's free memory back at their end.
TRIM_ITEMS = 100_000
_malloc_trim: Any = None


def _trim_heap() -> None:
    """Give free C-heap memory back to the system (glibc's ``malloc_trim``).

    Why: a large map's transient buffers (result frames, lists of a batch's columns;
    megabytes each) are freed in the middle of glibc's heap, below blocks that live on,
    so the heap does not shrink and its free pages stay resident: a driver repeating a
    1M-item map ten times (benchmarks/soak.py) grew 30 and 56 MiB in steps from the 2nd
    map to the last; with this, 0.1-7 MiB (five runs; issue 14, defect 9). A trim took
    0.2-9 ms after such a map (~600 ms): noise at >= TRIM_ITEMS items. Without glibc,
    nothing happens."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


class _MapCall:
    """One ``map`` on the pool: payload, batches, results, events, failures."""

    def __init__(self, engine: ProcessEngine, pool: Any, plan: Plan, base: dict,
                 rows: list[dict], rt: Runtime, *, stage: bool = False,
                 skip: set[int] = frozenset(), timeout: Any = "engine",
                 deferred: bool = False, first: int = 0, announce: bool = True):
        self.engine, self.pool, self.plan, self.rows, self.rt = engine, pool, plan, rows, rt
        self.n = len(rows)
        # The map's number of rows[0]: the rows may be a part of a larger map (AutoEngine
        # ran the first items itself, and announces the map). The pool numbers them from 0.
        self.first, self.announce = first, announce and not stage
        self.out: list[Any] = [None] * self.n
        self.errors: dict[int, BaseException] = {}  # batch start -> error (raise policy)
        self.path = list(rt.ctx.hierarchy_path) if rt.ctx is not None else []
        # A stage of a map with several executors (stages.py): the driver's execute_map
        # announces the map, its items and their pipeline; the workers' node events only
        # are replayed. Items in ``skip`` failed earlier: they travel as placeholders.
        self.stage = stage
        self.skip = sorted(skip)
        # A streaming map's stage (process_stream.py): the workers' events wait in
        # rt.pending for the iterating thread.
        self.deferred = deferred
        self.timeout = engine._item_timeout(plan) if timeout == "engine" else timeout
        self.payload, self.payload_fds = remote.encode_payload(
            plan, base, RemoteOptions.of(rt, self.timeout, first))
        self.key = transport.content_key(self.payload, self.payload_fds)
        # Which map a batch belongs to (the payload's key may be an earlier map's: equal
        # payloads are shipped once): a worker starts a new map for @stateful objects
        # when it changes, so a failing constructor runs once per worker per map.
        self.map_id = next(_map_ids)
        self.names = list(rows[0])
        self.consumers = remote.consumers(plan, self.names)

    def run(self) -> list:
        rt = self.rt
        if rt.callbacks and self.announce:
            rt.emit("on_map_start", self.n)
        t0 = time.perf_counter()
        chunk = self.engine.batch_size or 0
        align = _dual_batch_size(self.plan, rt)
        if align:
            # Each worker batches the items it holds: chunks that are whole multiples of
            # a DualNode's batch size give its batch function full batches.
            chunk = (remote.whole_batches(chunk, align) if chunk else
                     align * max(1, round(self.n / (4 * self.pool.workers * align))))
        try:
            self.pool.map(self.n, self.key, self.payload, self.payload_fds, self.make_batch,
                          self.on_result, self.on_lost, chunk=chunk, depth=DEPTH,
                          item_timeout=self.timeout or 0.0)
        finally:
            transport.close_fds(self.payload_fds)
            self.payload_fds = []
            if self.n >= TRIM_ITEMS:
                _trim_heap()
            if not self.deferred:
                rt.flush()
            if rt.callbacks and self.announce:
                rt.emit("on_map_end", time.perf_counter() - t0)
        broken = self.pool.broken
        if broken:
            raise ExecutionError(f"ProcessEngine is broken: {broken}")
        if self.errors:
            raise self.errors[min(self.errors)]
        if self.pool.is_shut_down:
            self._shut_down()
        return self.out

    def _shut_down(self) -> None:
        """The engine was shut down (another thread, a callback) while this map ran: its
        workers are gone. Items that finished keep their results; the others fail."""
        left = [i for i, r in enumerate(self.out) if r is None]  # a result is never None
        if not left:
            return
        what = ("ProcessEngine was shut down (engine.shutdown() from another thread or a "
                "callback) during this map")
        if not self.rt.collect:
            raise EngineShutDown(f"{what}: {len(left)} of {self.n} map items did not finish "
                                 f"(the first is map item {self.first + left[0]})")
        for i in left:
            self.out[i] = EngineShutDown(f"{what}, before map item {self.first + i} "
                                         "finished")

    # -- callbacks from C++ (driver thread, GIL held) -----------------------------------
    # origin: a map's batches never overlap, so it is only a stream's (process_stream.py)
    def make_batch(self, a: int, b: int, origin: int) -> tuple[bytes, list[int]]:
        # One placeholder object for the batch: pickled once, then by reference.
        skipped = (dict.fromkeys((k - a for k in self.skip[bisect_left(self.skip, a):
                                                           bisect_left(self.skip, b)]),
                                 Skipped()) if self.skip else {})
        # Rows that do not pickle fail their items only (remote.encode_batch).
        return remote.encode_batch(self.map_id, self.rows[a:b], a, self.names,
                                   self.consumers, failed=skipped)

    def on_result(self, a: int, b: int, origin: int, body: bytes, fds: list[int]) -> bool:
        result = remote.decode_result(body, fds, a, b)
        self._replay(result.events)
        if result.error is not None:
            self.errors[a] = result.error
            return False
        bad = remote.place(self.out, a, result.parts, self.plan.outputs)
        if bad is not None and not self.rt.collect:
            self.errors[bad] = self.out[bad]
            return False
        return True

    def on_lost(self, a: int, b: int, origin: int, info: dict) -> bool:
        if info.get("timeout"):
            return self._timed_out(a, info)
        how = (f"was killed by {_signal_name(info['signal'])}" if info["signal"] is not None
               else f"exited with code {info['exitcode']}" if info["exitcode"] is not None
               else "exited (status unknown)")
        if info["signal"] == signal.SIGKILL:
            how += " (the OOM killer, or someone, sent it)"
        node = self._node_of(info)
        item = self.first + info["item"] if a <= info["item"] < b else None
        where = ""
        if node is not None:
            where += f" while running node {node!r}"
        if item is not None:
            where += f" on map item {item}"
        for i in range(a, b):
            err = WorkerDied(
                f"worker process {info['pid']} {how}{where}; map item {self.first + i} was "
                f"in its batch (items {self.first + a}..{self.first + b - 1}) and is lost. "
                "The pool starts a replacement. If it ran out of memory, use fewer workers "
                "or smaller batches (batch_size=)")
            if node is not None:
                err.add_note(f"gilfree: raised in node {node!r} (map item {self.first + i})")
            if not self._fail_item(i, err):
                return False
        return True

    def _node_of(self, info: dict) -> str | None:
        """The node a dead worker's status page says it was running, if any."""
        steps, step = self.plan.steps, info["step"]
        return steps[step].name if 0 <= step < len(steps) else None

    def _timed_out(self, i: int, info: dict) -> bool:
        """Item ``i`` ran past the deadline; its worker was killed (the pool starts a
        replacement and runs the rest of that batch again)."""
        node = self._node_of(info)
        item = self.first + i
        err = TimeoutError(f"map item {item} did not finish within {info['timeout']} s"
                           + (f" (node {node!r})" if node else "") + f"; its worker process "
                           f"{info['pid']} was stopped and is replaced")
        err.add_note(f"gilfree: timeout={info['timeout']} s (map item {item})")
        return self._fail_item(i, err)

    def _fail_item(self, i: int, err: BaseException) -> bool:
        """Item ``i`` ends as ``err``; False (stop dispatching) under the raise policy."""
        self.out[i] = err
        if self.rt.collect:
            return True
        self.errors[i] = err
        return False

    def _replay(self, events: list) -> None:
        # The driver announces the map once (on_map_start/end); each batch's own
        # announcements at the top level are dropped. Nested maps' are kept. A stage's
        # items and their pipeline are announced by the driver's map too.
        dropped = _STAGE_ANNOUNCEMENTS if self.stage else remote.MAP_ANNOUNCEMENTS
        remote.replay(self.rt, events, len(self.path), dropped, flush=not self.deferred)
