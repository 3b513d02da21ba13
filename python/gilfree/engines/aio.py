"""``AsyncEngine``: ``async def`` nodes of all items run concurrently on one event loop.

    driver thread                         engine's loop thread (started once, reused)
      execute_map ─ per-item segment ──▶  worker coroutines pull item indices, await
      waits on a concurrent future,        async nodes; sync nodes go to the C++ thread
      wakes every 50 ms: Ctrl-C, and       pool (offload) so they never block the loop
      replays queued callback events   ◀─ results land in the executor's arrays
      batch (DualNode) steps ──────────▶  C++ thread pool, several batches at once

The loop runs on its own thread, so this works when the caller is itself inside a
running loop (Jupyter): nothing calls ``asyncio.run`` on the caller's thread and no
``nest_asyncio`` is needed.  uvloop is used when installed (``gilfree[async]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from typing import Any, Awaitable, Callable

from ..execute import Runtime, execute_map
from ..execute_async import AsyncItems
from ..plan import Plan
from .threads import ThreadEngine, auto_batch_size

#: Concurrent items when nobody said: enough for thousands of in-flight requests,
#: few enough that a map of 100,000 URLs does not open 100,000 sockets at once.
DEFAULT_MAX_CONCURRENCY = 1024
_POLL_SECONDS = 0.05  # Ctrl-C and callback delivery latency while the driver waits


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class EventLoopThread:
    """One event loop running forever on a daemon thread; ``run`` waits for a coroutine."""

    def __init__(self, name: str = "gilfree-async-engine"):
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, factory: Callable[[], Awaitable[Any]], on_tick: Callable[[], None]) -> Any:
        if threading.current_thread() is self._thread:
            raise RuntimeError("AsyncEngine: a node cannot run a map on the engine that is "
                               "running it; use another engine for the inner map")
        fut = asyncio.run_coroutine_threadsafe(factory(), self.loop)
        try:
            while True:
                try:
                    # A timed wait releases the GIL and returns for Ctrl-C and callbacks.
                    return fut.result(timeout=_POLL_SECONDS)
                except concurrent.futures.TimeoutError:
                    on_tick()
        except BaseException:
            fut.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


class AsyncEngine(ThreadEngine):
    """Async nodes await concurrently (up to ``max_concurrency`` items at once); sync
    nodes and batch functions run on the C++ thread pool (ThreadEngine's).

    ``timeout=`` (engine) or the ``timeout`` hint bounds each item: an item that takes
    longer fails with ``TimeoutError`` (and is cancelled) while the others go on.
    """

    supported_hints = frozenset({"batch_size", "max_concurrency", "retries", "timeout"})
    native_executors = frozenset({"async", "thread"})

    def __init__(self, max_concurrency: int | None = None, *, max_workers: int | None = None,
                 batch_size: int | None = None, **options: Any):
        super().__init__(max_workers=max_workers, batch_size=batch_size, **options)
        if max_concurrency is not None and (not isinstance(max_concurrency, int) or max_concurrency < 1):
            raise ValueError(f"AsyncEngine: max_concurrency={max_concurrency!r} must be a positive integer")
        self.max_concurrency = max_concurrency or DEFAULT_MAX_CONCURRENCY
        self._loop_thread: EventLoopThread | None = None
        self._loop_lock = threading.Lock()

    @property
    def loop_thread(self) -> EventLoopThread:
        with self._loop_lock:
            if self._loop_thread is None:
                self._loop_thread = EventLoopThread()
            return self._loop_thread

    def _offload(self) -> Callable[[Callable[[], Any]], Awaitable[Any]]:
        pool = self.pool

        def offload(fn: Callable[[], Any]) -> Awaitable[Any]:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()

            def done(result: Any, ok: bool) -> None:  # on a pool thread, GIL held
                loop.call_soon_threadsafe(_settle, fut, result, ok)

            pool.submit(fn, done)
            return fut
        return offload

    def _items(self, rt: Runtime, plan: Plan) -> AsyncItems:
        timeout = self.timeout
        hinted = [s.hints["timeout"] for s in plan.steps if s.hints.get("timeout")]
        if hinted:
            timeout = min([timeout, *hinted]) if timeout else min(hinted)
        limits = [s.hints["max_concurrency"] for s in plan.steps
                  if s.hints.get("max_concurrency") and s.is_async]
        concurrency = min([self.max_concurrency, *limits])
        loop_thread = self.loop_thread
        return AsyncItems(rt, lambda main: loop_thread.run(main, rt.flush), concurrency,
                          self._offload(), timeout)

    # run() of one item is ThreadEngine's: independent nodes run at once on the pool,
    # and an async node awaits on its worker thread's own loop.

    def _execute_map(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime) -> list:
        if rt.batch_size is None and plan.has_batch:
            rt.batch_size = auto_batch_size(len(rows))
        return self._map_rows(plan, self._scoped(base), rows, rt, collect=None)

    def _map_rows(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime,
                  collect: bool | None) -> list:
        if not rows:
            return execute_map(plan, base, rows, rt)
        return execute_map(plan, base, rows, rt, collect=collect, pfor=self._pfor(rt),
                           async_items=self._items(rt, plan))

    async def arun(self, pipeline: Any, inputs: dict | None = None, output_name: Any = None,
                   **options: Any) -> dict:
        call = functools.partial(self.run, pipeline, inputs, output_name=output_name, **options)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def amap(self, pipeline: Any, inputs: dict | None = None, map_over: Any = None,
                   map_mode: str = "zip", output_name: Any = None, **options: Any) -> list:
        call = functools.partial(self.map, pipeline, inputs, map_over=map_over,
                                 map_mode=map_mode, output_name=output_name, **options)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def shutdown(self) -> None:
        with self._loop_lock:
            loop_thread, self._loop_thread = self._loop_thread, None
        if loop_thread is not None:
            loop_thread.stop()
        super().shutdown()

    def __repr__(self) -> str:
        return f"AsyncEngine(max_concurrency={self.max_concurrency})"


def _settle(fut: asyncio.Future, result: Any, ok: bool) -> None:
    if fut.cancelled():
        return
    if ok:
        fut.set_result(result)
    else:
        fut.set_exception(result)
