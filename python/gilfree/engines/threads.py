"""``ThreadEngine``: items of a map run on the C++ thread pool (``gilfree._core``).

    driver thread (holds the GIL between C++ calls)
      pool.map(task, indices) ── one call hands every task to C++ ──▶ worker threads
                                                                        take the GIL per
      waits in C++ without the GIL, wakes every <= 50 ms for Ctrl-C      run of tasks, call
      on_complete(...) in the driver ◀── completions ──────────────────  the task, release
      replays queued callback events (Runtime.flush)

    with a per-item timeout (and always on AsyncEngine) items run as coroutines on the
    engine's event loop thread (_loop.py); each sync call is pool.submit(...) -> a PoolCall.
    An item that times out abandons its call: dropped if it never started, else its
    thread stops counting against max_workers (the pool starts others, up to
    max_abandoned of them), so calls that hang forever cannot starve later maps.

    a map inside a node, on the same engine (or with no engine: takes_inner_maps): from a
    pool thread, pool.map hands its items to the pool's idle threads (or new ones, up to
    max_workers) and the waiting thread runs items of it too; a map through the loop
    releases the waiting thread's slot (begin_wait); from the loop thread itself (an
    async node), the inner items get an event loop of their own.

    a map with executor hints (stages.py, Engine._staged_map): stages one after another;
    "thread" stages as above, "async" ones through the loop, "inline" ones in the calling
    thread, "process" ones on a ProcessEngine this engine keeps (Engine._lend: started on
    first use, @stateful objects stay built in its workers across maps, shut down with us).

Right for blocking I/O and for nodes that release the GIL (numpy, torch, C extensions).
Pure-Python CPU work does not get faster on threads: use ProcessEngine for that.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

from ..run.async_bridge import run_coroutine
from ..errors import EngineShutDown, ExecutionError
from ..run.execute import Runtime, execute_map, execute_run, fast_row_function
from ..run.runtime import takes_maps_on_its_threads
from ..run.execute_fast import untraced
from ..run.cores import usable_cores  # noqa: F401 - the engines import it from here
from ..run.stages import STAGE_THREADS, largest_hint
from ..model.plan import DUAL, FUNC, Plan
from ..model.stateful import is_stateful
from .base import Engine

#: Blocking I/O needs threads, not cores: 200 requests of 10 ms finish in one round
#: only with ~200 threads.  Threads start on demand, so a small map starts few.
DEFAULT_MAX_WORKERS = 256
#: Threads stuck in calls a timeout gave up on that the pool starts others in place of.
#: Past that, stuck threads count against max_workers again, and items that cannot get
#: a thread time out saying so.
DEFAULT_MAX_ABANDONED = 1024


def auto_batch_size(n_items: int) -> int:
    """Items per batch-function call when nobody said: a few batches per core, so that
    GIL-releasing batch functions overlap, capped at 16 batches to keep them big."""
    batches = min(16, 4 * usable_cores())
    return max(1, math.ceil(n_items / batches))


class _PerThread:
    """Gives each thread its own copy of a ``@stateful`` object (built lazily there).

    Every copy is also kept in ``_copies``, so that ``teardown`` (engine shutdown, on the
    shutting-down thread) reaches the copies of every thread, not only the caller's
    ``threading.local`` view; pool threads may have retired by then.
    """

    def __init__(self, original: Any):
        self._original = original
        self._local = threading.local()
        self._copies: list[Any] = []
        self._copies_lock = threading.Lock()

    def _mine(self) -> Any:
        obj = getattr(self._local, "obj", None)
        if obj is None:
            o = self._original
            obj = self._local.obj = type(o)(*o._init_args, **o._init_kwargs)
            with self._copies_lock:
                self._copies.append(obj)
        return obj

    def teardown(self) -> list[Exception]:
        """Tear down every copy built; return the errors (one failing does not stop the
        others). A thread that uses this proxy later builds a fresh copy."""
        with self._copies_lock:
            copies, self._copies = self._copies, []
            self._local = threading.local()
        errors = []
        for obj in copies:
            try:
                obj._gilfree_release()
            except Exception as exc:
                errors.append(exc)
        return errors

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mine(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._mine()(*args, **kwargs)

    def __cache_key__(self) -> str:
        return self._original.__cache_key__()


def _limited(func: Callable, sem: threading.BoundedSemaphore, is_async: bool) -> Callable:
    # The semaphore is held for the whole call, the awaited part of a coroutine too.
    def call(*args: Any, **kwargs: Any) -> Any:
        with sem:
            r = func(*args, **kwargs)
            return run_coroutine(r) if is_async else r
    return call


def limit_concurrency(step: Any) -> None:
    """Honour a step's ``max_concurrency`` hint in this process: its calls (a DualNode's
    batch calls) hold a semaphore of that size."""
    limit = step.hints.get("max_concurrency")
    if limit and step.kind in (FUNC, DUAL):
        sem = threading.BoundedSemaphore(limit)
        if step.kind == DUAL:
            step.batch = _limited(step.batch, sem, False)
        else:
            step.func = _limited(step.func, sem, step.is_async)
            step.is_async = False


class ThreadEngine(Engine):
    """Runs map items (and independent nodes of a run) on native threads.

    ``max_workers=None`` caps the pool at 256 threads, started only as items need them
    and retired after ``idle_timeout`` seconds.  ``batch_size=None`` picks the
    ``DualNode`` batch size per map (see ``auto_batch_size``).  ``stateful="shared"``
    builds one instance of each ``@stateful`` object for all threads (under a lock);
    ``stateful="per_thread"`` builds one per thread, for objects that are not
    thread-safe.

    ``timeout=`` (engine) or the ``timeout`` hint bounds each map item: an item that takes
    longer fails with ``TimeoutError`` while the others go on. A thread cannot be
    stopped from outside, so the call itself runs on to its end in the background
    (``shutdown()`` does not wait for it) and its result is dropped; its thread does not
    count against ``max_workers`` meanwhile, for up to ``max_abandoned`` such threads.

    A node may map on the engine that runs it (a nested map): the waiting call's thread
    does not hold a slot that the inner items need. ``shutdown()`` during a map (from
    another thread): items already running finish, the others fail with an
    ``ExecutionError`` saying the engine was shut down during the map.
    """

    #: A node run on this engine that calls ``Pipeline.imap`` (no engine given) streams on
    #: it, as its ``map`` does (model/pipeline.py).
    streams_node_maps = True

    supported_hints = frozenset({"batch_size", "max_concurrency", "retries", "timeout"})
    native_executors = frozenset({"thread"})
    default_executor = "thread"
    #: A node whose function calls Pipeline.map (no engine given, none on its pipeline)
    #: maps on this engine: the inner items of all its calls share the pool's threads
    #: (run/runtime.py: maps_on; the pool lets a waiting worker help, bind_thread_pool).
    takes_inner_maps = True

    def __init__(self, max_workers: int | None = None, batch_size: int | None = None, *,
                 stateful: str = "shared", idle_timeout: float = 10.0,
                 max_abandoned: int = DEFAULT_MAX_ABANDONED, **options: Any):
        super().__init__(batch_size=batch_size, **options)
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError(f"ThreadEngine: max_workers={max_workers!r} must be a positive integer")
        if not isinstance(max_abandoned, int) or max_abandoned < 0:
            raise ValueError(f"ThreadEngine: max_abandoned={max_abandoned!r} must be an "
                             "integer >= 0")
        if stateful not in ("shared", "per_thread"):
            raise ValueError("ThreadEngine: stateful must be 'shared' or 'per_thread'")
        self.max_workers = max_workers or DEFAULT_MAX_WORKERS
        # A closed stream left calls running on the pool: shutdown() does not wait.
        self.calls_abandoned = False
        self.stateful = stateful
        self.idle_timeout = idle_timeout
        self.max_abandoned = max_abandoned
        self._pool = None
        self._pool_lock = threading.Lock()
        self._per_thread: dict[int, tuple[Any, _PerThread]] = {}
        self._loop_thread: Any = None  # an EventLoopThread, for maps with a timeout
        self._loop_lock = threading.Lock()

    # -- the pool ---------------------------------------------------------------------
    @property
    def pool(self) -> Any:
        with self._pool_lock:
            if self._pool is None:
                from .._native import core

                self._pool = core().ThreadPool(self.max_workers, self.idle_timeout,
                                               self.max_abandoned)
                if self.takes_inner_maps:
                    takes_maps_on_its_threads(self)
            return self._pool

    def on_own_thread(self) -> bool:
        """Whether the calling thread is one of this engine's pool threads."""
        pool = self._pool
        return pool is not None and pool.on_worker_thread()

    def _pfor(self, rt: Runtime, threads: int | None = None
              ) -> Callable[[Callable[[int], None], int], None]:
        """Runs a map's per-item tasks on the pool; ``threads``: at most that many at
        once (AutoEngine's choice for a stage; None: up to max_workers)."""
        pool = self.pool

        def pfor(task: Callable[[int], None], n: int) -> None:
            if n == 1:
                task(0)
            elif n:
                on_complete = (lambda *_: rt.flush()) if rt.callbacks else None
                try:
                    pool.map(task, list(range(n)), on_complete=on_complete, stop_on_error=True,
                             parallelism=threads or 0)
                except _pool_shut_down() as exc:
                    if not pool.is_shut_down:
                        raise
                    raise self._shut_down_error() from exc
        return pfor

    def _shut_down_error(self, item: int | None = None) -> ExecutionError:
        what = "items that had not started did not run" if item is None else (
            f"map item {item} did not run to its end")
        return EngineShutDown(f"{self!r} was shut down during the map: {what}")

    def _busy_note(self) -> str:
        """Why a call waited for a thread: for the TimeoutError of an item that never
        started."""
        pool = self._pool
        if pool is None:
            return f"{self!r} was shut down"
        st = pool.stats()
        note = f"all {st['busy'] - st['waiting']} threads of {self!r} were busy"
        if st["abandoned"]:
            note += (f", {st['abandoned']} of them stuck in calls that timed out and have "
                     "not returned")
            if st["abandoned"] >= st["max_abandoned"]:
                note += (f" (max_abandoned={st['max_abandoned']} reached: no more threads "
                         "are started in their place)")
        if st["spawn_error"]:
            note += f"; starting another thread failed: {st['spawn_error']}"
        return note

    @property
    def loop_thread(self) -> Any:
        """The engine's event loop thread (see _loop.py), started on first use."""
        with self._loop_lock:
            if self._loop_thread is None:
                from ._loop import EventLoopThread

                self._loop_thread = EventLoopThread()
            return self._loop_thread

    def _offload(self, pool: Any) -> Callable[[Callable[[], Any]], Any]:
        """``await offload(fn)`` on the loop: fn() runs on the pool, the loop stays free.
        If the awaiting coroutine is cancelled (timeout, Ctrl-C, shutdown), the call is
        abandoned: dropped if it has not started, else its thread stops counting
        against max_workers until it returns."""
        import asyncio

        from ._loop import _settle

        shut_down = _pool_shut_down()
        given_up: list = []  # calls whose awaiting coroutine was cancelled, this tick

        def give_up(call: Any, loop: Any) -> None:
            if not given_up:
                loop.call_soon(abandon_given_up)
            given_up.append(call)

        def abandon_given_up() -> None:
            # One pass per loop tick, after every cancellation of that tick (a Ctrl-C or a
            # shutdown cancels all items at once): first drop every call not started yet
            # (and its queued ticket), then excuse the stuck ones. The other order would
            # let a thread started in place of a stuck call run a call about to be dropped.
            calls = given_up[:]
            given_up.clear()
            started = [c.withdraw() for c in calls]
            for call, _ in sorted(zip(calls, started), key=lambda pair: pair[1]):
                call.abandon()

        def offload(fn: Callable[[], Any]) -> Any:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()

            def done(result: Any, ok: bool) -> None:  # on a pool thread, GIL held
                if not ok and isinstance(result, shut_down):
                    result = self._shut_down_error()
                try:
                    loop.call_soon_threadsafe(_settle, fut, result, ok)
                except RuntimeError:
                    # The loop is closed: the engine shut down while this call, given up
                    # by a timeout or a Ctrl-C, ran on. Nobody waits for its result.
                    pass

            try:
                call = pool.submit(fn, done)
            except shut_down:
                raise self._shut_down_error() from None
            fut.add_done_callback(lambda f: give_up(call, loop) if f.cancelled() else None)
            return fut
        return offload

    def _concurrency(self) -> int:
        """Items in flight at once on the loop path: each may hold a pool thread."""
        return self.max_workers

    def _items(self, rt: Runtime, plan: Plan, timeout: float | None) -> Any:
        from ..run.execute_async import AsyncItems

        limits = [s.hints["max_concurrency"] for s in plan.steps
                  if s.hints.get("max_concurrency") and s.is_async]
        concurrency = min([self._concurrency(), *limits])
        loop_thread = self.loop_thread
        pool = self.pool

        def run_on_loop(main: Callable[[], Any]) -> Any:
            from ._loop import EventLoopThread, LoopStopped

            if loop_thread.on_loop_thread():
                # A node running on this loop (an async node) maps on the same engine: the
                # loop cannot wait for itself, so these items get a loop of their own.
                nested = EventLoopThread(name="gilfree-nested-map")
                try:
                    return nested.run(main, rt.flush)
                finally:
                    nested.stop()
            # On a pool thread (a sync node mapping on its own engine) the wait must not
            # hold a slot that the inner items need: the pool does not count us meanwhile.
            waiting = pool.begin_wait()
            try:
                return loop_thread.run(main, rt.flush)
            except LoopStopped:
                raise self._shut_down_error() from None
            finally:
                if waiting:
                    pool.end_wait()

        return AsyncItems(rt, run_on_loop, concurrency, self._offload(pool), timeout,
                          closing=lambda: loop_thread.closing,
                          shut_down_error=self._shut_down_error, busy_note=self._busy_note)

    def shutdown(self) -> None:
        self._shutdowns += 1  # (first: see Engine._shutdowns; super() counts again)
        with self._loop_lock:
            loop_thread, self._loop_thread = self._loop_thread, None
        if loop_thread is not None:
            loop_thread.stop()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            # Calls a timeout or a closed stream gave up on may still run (a hung socket
            # may never return): after a map with a deadline, or such a stream, do not
            # wait for them; they end in the background and their results are dropped.
            pool.shutdown(loop_thread is None and not self.calls_abandoned)
            self.calls_abandoned = False
        try:
            super().shutdown()
        finally:
            # Every thread's copy (stateful="per_thread"), torn down here, with the GIL,
            # on this thread; one failing __teardown__ does not stop the others.
            proxies = [proxy for _, proxy in self._per_thread.values()]
            self._per_thread.clear()
            errors = [e for proxy in proxies for e in proxy.teardown()]
        if errors:
            if len(errors) > 1:
                errors[0].add_note(f"gilfree: {len(errors) - 1} more per-thread "
                                   "__teardown__ call(s) failed too")
            raise errors[0]

    # -- preparing a call -------------------------------------------------------------
    def _prepare(self, plan: Plan) -> None:
        super()._prepare(plan)
        for step in plan.iter_steps():
            if step.hints.get("executor") != "process":  # (no lock of ours reaches those)
                limit_concurrency(step)

    def _scoped(self, values: dict) -> dict:
        if self.stateful != "per_thread":
            return values
        out = dict(values)
        for k, v in values.items():
            if is_stateful(v):
                entry = self._per_thread.get(id(v))
                if entry is None or entry[0] is not v:
                    entry = self._per_thread[id(v)] = (v, _PerThread(v))
                out[k] = entry[1]
        return out

    # -- where items run --------------------------------------------------------------
    def _execute_run(self, plan: Plan, values: dict, rt: Runtime) -> dict:
        with self._nodes_map_here():
            return execute_run(plan, self._scoped(values), rt, pfor=self._pfor(rt))

    def _execute_map(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime, *,
                     first: int = 0, announce: bool = True) -> list:
        # first/announce: the rows are a part of a larger map (Engine._staged_map)
        stages = self._stages(plan, rows, rt)
        if stages is not None:
            return self._staged_map(plan, self._scoped(base), rows, rt, stages, base,
                                    first=first, announce=announce)
        base = self._scoped(base)
        if rt.batch_size is None and plan.has_batch:
            rt.batch_size = auto_batch_size(len(rows))
        if not rows:
            return execute_map(plan, base, rows, rt, first_index=first, announce=announce)
        timeout = self._item_timeout(plan)
        if timeout is not None:
            # Waiting with a deadline needs something that can stop waiting: items go
            # through the engine's event loop, their calls to the pool (as AsyncEngine).
            return execute_map(plan, base, rows, rt, pfor=self._pfor(rt), first_index=first,
                               announce=announce, async_items=self._items(rt, plan, timeout))
        threads = largest_hint(plan.steps, STAGE_THREADS)  # (AutoEngine's, if any)
        if untraced(plan, rt):
            pool = self.pool
            try:
                out = pool.map(fast_row_function(plan, base, first), list(enumerate(rows)),
                               stop_on_error=not rt.collect, parallelism=threads or 0)
            except _pool_shut_down() as exc:
                if not pool.is_shut_down:
                    raise
                raise self._shut_down_error() from exc
            if rt.collect and pool.is_shut_down:
                # Items that never ran hold the pool's PoolShutDown: say which engine.
                shut_down = _pool_shut_down()
                out = [self._shut_down_error(first + i) if isinstance(r, shut_down) else r
                       for i, r in enumerate(out)]
            return out
        return execute_map(plan, base, rows, rt, pfor=self._pfor(rt, threads),
                           first_index=first, announce=announce)

    def __repr__(self) -> str:
        return f"ThreadEngine(max_workers={self.max_workers})"


def _pool_shut_down() -> type:
    from .._native import core

    return core().PoolShutDown
