"""``AsyncEngine``: ``async def`` nodes of all items run concurrently on one event loop.

    driver thread                         engine's loop thread (started once, reused)
      execute_map ─ per-item segment ──▶  worker coroutines pull item indices, await
      waits on a concurrent future,        async nodes; sync nodes go to the C++ thread
      wakes every 50 ms: Ctrl-C, and       pool (offload) so they never block the loop
      replays queued callback events   ◀─ results land in the executor's arrays
      batch (DualNode) steps ──────────▶  C++ thread pool, several batches at once

A map with no async node (and no timeout) skips the loop: ThreadEngine's path runs its
items on the pool directly (the loop would only hand each call over, ~25 us an item).

With executor hints, nodes hinted "process" run in worker processes of the engine's own
and "inline" ones in the calling thread, between the loop's stages (see threads.py).

The loop runs on its own thread, so this works when the caller is itself inside a
running loop (Jupyter): nothing calls ``asyncio.run`` on the caller's thread and no
``nest_asyncio`` is needed.  uvloop is used when installed (``gilfree[async]``).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from ..run.execute import Runtime, execute_map
from ..model.plan import Plan
from .threads import ThreadEngine, auto_batch_size

#: Concurrent items when nobody said: enough for thousands of in-flight requests,
#: few enough that a map of 100,000 URLs does not open 100,000 sockets at once.
DEFAULT_MAX_CONCURRENCY = 1024


class AsyncEngine(ThreadEngine):
    """Async nodes await concurrently (up to ``max_concurrency`` items at once); sync
    nodes and batch functions run on the C++ thread pool (ThreadEngine's).

    ``timeout=`` (engine) or the ``timeout`` hint bounds each item: an item that takes
    longer fails with ``TimeoutError`` (and is cancelled) while the others go on; a sync
    call it waited on is given up as on ThreadEngine. Nested maps on the same engine and
    ``shutdown()`` during a map behave as on ThreadEngine (a sync ``map`` called inside
    an ``async def`` node gets an event loop of its own; prefer ``await amap(...)``).

    A sync node whose function calls ``Pipeline.map`` (no engine given, none on its
    pipeline) maps on this engine, as on ThreadEngine (``takes_inner_maps``): its sync
    inner items share the pool's threads, its async ones await on the engine's loop with
    everyone else's. In a map, an ``async def`` node's own sync map still runs where it is
    called, item after item (SeqEngine, blocking its loop meanwhile), as on ThreadEngine:
    there, ``await engine.amap(...)``.
    """

    supported_hints = frozenset({"batch_size", "max_concurrency", "retries", "timeout"})
    native_executors = frozenset({"async", "thread"})
    default_executor = "async"
    executor_aliases = {"thread": "async"}  # sync nodes: offloaded from the loop to the pool

    def __init__(self, max_concurrency: int | None = None, *, max_workers: int | None = None,
                 batch_size: int | None = None, **options: Any):
        super().__init__(max_workers=max_workers, batch_size=batch_size, **options)
        if max_concurrency is not None and (not isinstance(max_concurrency, int) or max_concurrency < 1):
            raise ValueError(f"AsyncEngine: max_concurrency={max_concurrency!r} must be a positive integer")
        self.max_concurrency = max_concurrency or DEFAULT_MAX_CONCURRENCY

    def _concurrency(self) -> int:
        return self.max_concurrency

    # run() of one item is ThreadEngine's: independent nodes run at once on the pool,
    # and an async node awaits on its worker thread's own loop.

    def _execute_map(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime) -> list:
        stages = self._stages(plan, rows, rt)
        if stages is not None:
            return self._staged_map(plan, self._scoped(base), rows, rt, stages, base)
        if self._pool_only(plan):
            # Only sync nodes: the loop would only hand each call to the pool (~25 us an
            # item); the pool runs them directly (ThreadEngine's path, < 1 us an item).
            return super()._execute_map(plan, base, rows, rt)
        if rt.batch_size is None and plan.has_batch:
            rt.batch_size = auto_batch_size(len(rows))
        return self._map_rows(plan, self._scoped(base), rows, rt, collect=None)

    def _pool_only(self, plan: Plan) -> bool:
        """No async node anywhere, no per-item deadline (the loop is what bounds an item's
        wait), and a concurrency cap the pool's threads already respect."""
        return (self.max_concurrency >= self.max_workers and self._item_timeout(plan) is None
                and not any(s.is_async for s in plan.iter_steps()))

    def _map_rows(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime,
                  collect: bool | None) -> list:
        if not rows:
            return execute_map(plan, base, rows, rt)
        return execute_map(plan, base, rows, rt, collect=collect, pfor=self._pfor(rt),
                           async_items=self._items(rt, plan, self._item_timeout(plan)))

    async def arun(self, pipeline: Any, inputs: dict | None = None, output_name: Any = None,
                   **options: Any) -> dict:
        call = functools.partial(self.run, pipeline, inputs, output_name=output_name, **options)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def amap(self, pipeline: Any, inputs: dict | None = None, map_over: Any = None,
                   map_mode: str = "zip", output_name: Any = None, **options: Any) -> list:
        call = functools.partial(self.map, pipeline, inputs, map_over=map_over,
                                 map_mode=map_mode, output_name=output_name, **options)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def __repr__(self) -> str:
        return f"AsyncEngine(max_concurrency={self.max_concurrency})"
