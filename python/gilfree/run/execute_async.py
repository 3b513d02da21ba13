"""Running map items as coroutines: the per-item path of ``AsyncEngine``.

``async def`` steps are awaited on the engine's event loop, so thousands of items wait
on I/O at once under one concurrency cap.  Synchronous steps are handed to a thread
pool (``offload``) so they never block the loop; the cache and callback logic is the
same as the synchronous path's (``step_lookup`` / ``step_done`` in execute.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from ..errors import annotate
from .execute import run_step
from .runtime import Runtime, StepCall, _store, invoke
from ..model.plan import PIPE, Step

#: ``offload(fn)`` runs the no-argument function ``fn`` on a thread, returns an awaitable.
Offload = Callable[[Callable[[], Any]], Awaitable[Any]]


async def _acall(step: Step, values: dict, retries: int) -> Any:
    attempt = 0
    while True:
        try:
            return await invoke(step, step.func, values)
        except Exception:
            attempt += 1
            if attempt > retries:
                raise


async def arun_step(step: Step, values: dict, rt: Runtime, item: int | None,
                    sigs: dict | None, offload: Offload | None) -> bool:
    """``run_step`` for the event loop. True if served from the cache."""
    if step.kind == PIPE or not step.is_async:
        if offload is None:
            return run_step(step, values, rt, item, sigs)
        return await offload(lambda: run_step(step, values, rt, item, sigs))
    with StepCall(step, values, rt, item, sigs) as call:
        if call.hit:
            return True
        call.store(await _acall(step, values, step.hints.get("retries", rt.retries)))
    call.finish()
    return False


class AsyncItems:
    """Runs a segment of per-item steps for every live item on an event loop.

    ``run_on_loop(coro_factory)`` is supplied by the engine: it runs the coroutine on
    the engine's loop and returns when it is done (flushing callback events meanwhile).
    ``closing()`` says the engine is shutting down: its items' cancellation then fails
    each unfinished item with ``shut_down_error(item)`` instead of propagating.
    ``busy_note()`` explains an item that timed out before its offloaded call started
    (every thread was busy).
    """

    def __init__(self, rt: Runtime, run_on_loop: Callable[[Callable[[], Awaitable[None]]], None],
                 concurrency: int, offload: Offload | None, timeout: float | None, *,
                 closing: Callable[[], bool] | None = None,
                 shut_down_error: Callable[[int], BaseException] | None = None,
                 busy_note: Callable[[], str] | None = None):
        self.rt = rt
        self.run_on_loop = run_on_loop
        self.concurrency = max(1, concurrency)
        self.offload = offload
        self.timeout = timeout
        self.closing = closing
        self.shut_down_error = shut_down_error
        self.busy_note = busy_note

    def run(self, steps: list[Step], n: int, values: list, sigs: list, failed: list,
            cached: list, first: int, start: Callable | None, finish: Callable | None,
            collect: bool) -> None:
        rt, offload, timeout = self.rt, self.offload, self.timeout
        errors: dict[int, BaseException] = {}
        halted = False  # the engine shut down during the map: start no more items
        # With a deadline: per item, whether its latest offloaded call has started, so
        # that an item that never got a thread says so (not "did not finish").
        calls: dict[int, list[bool]] = {}
        running: dict[int, str] = {}  # item -> the node it runs (a timeout names it)

        def tracked(i: int) -> Offload:
            def item_offload(fn: Callable[[], Any]) -> Awaitable[Any]:
                started = calls[i] = [False]

                def call() -> Any:
                    started[0] = True
                    return fn()
                return offload(call)
            return item_offload

        async def one(i: int) -> None:
            r = rt.worker_view()
            if start is not None:
                start(i, r)
            off = tracked(i) if timeout is not None and offload is not None else offload
            for step in steps:
                if timeout is not None:
                    running[i] = step.name  # (a timeout names it)
                if not await arun_step(step, values[i], r, first + i, sigs[i], off):
                    cached[i] = False

        def shut_down(i: int) -> bool:
            nonlocal halted
            if self.closing is None or not self.closing():
                return False
            halted = True
            self._fail(i, self.shut_down_error(first + i), failed, errors, collect)
            return True

        async def guarded(i: int) -> None:
            try:
                if timeout is None:
                    await one(i)
                else:
                    await asyncio.wait_for(one(i), timeout)
            except asyncio.CancelledError:
                if not shut_down(i):
                    raise
            except asyncio.TimeoutError:
                self._fail(i, self._timeout_error(first + i, calls.pop(i, None),
                                                  running.get(i)), failed, errors, collect)
            except Exception as exc:
                self._fail(i, exc, failed, errors, collect)
            calls.pop(i, None)
            running.pop(i, None)
            if finish is not None and (collect or not errors):
                finish(i, rt.worker_view())

        # A fixed set of worker coroutines pulling indices: no Task per item, which is
        # what makes 20,000 trivial items cheap (a Task costs more than the item).
        live = [i for i in range(n) if failed[i] is None]
        position = 0
        lean = (not rt.tracing and timeout is None and start is not None
                and all(s.is_async and s.kind != PIPE and not s.hints.get("retries")
                        and not rt.retries for s in steps))

        async def worker() -> None:
            nonlocal position
            while position < len(live) and (collect or not errors) and not halted:
                i = live[position]
                position += 1
                await guarded(i)

        async def lean_worker() -> None:
            # The same as worker() for plain async nodes without cache, callbacks,
            # retries or timeout, minus four coroutine layers per item.
            nonlocal position
            while position < len(live) and (collect or not errors) and not halted:
                i = live[position]
                position += 1
                v = values[i]
                step = None
                try:
                    for step in steps:
                        _store(step, await _acall(step, v, 0), v)
                except asyncio.CancelledError:
                    if not shut_down(i):
                        raise
                except Exception as exc:
                    annotate(exc, step.name, first + i)
                    self._fail(i, exc, failed, errors, collect)
                if collect or not errors:
                    finish(i, rt)

        async def main() -> None:
            work = lean_worker if lean else worker
            try:
                await asyncio.gather(*(work() for _ in range(min(self.concurrency, len(live)))))
            except asyncio.CancelledError:
                # Shutdown cancels every task: the workers have failed their items (the
                # gather returns once they all did), the map itself ends normally.
                if not halted:
                    raise

        self.run_on_loop(main)
        if halted:
            for i in live[position:]:  # never started
                self._fail(i, self.shut_down_error(first + i), failed, errors, collect)
        if errors and not collect:
            raise errors[min(errors)]

    def _timeout_error(self, item: int, call: list[bool] | None,
                       node: str | None) -> TimeoutError:
        timeout = self.timeout
        of = f" (node {node!r})" if node else ""
        if call is not None and not call[0] and self.busy_note is not None:
            # Its call waited in the pool's queue the whole time: say why, not "slow".
            exc = TimeoutError(f"map item {item} timed out after {timeout} s waiting for a "
                               f"thread, without starting its call{of}: {self.busy_note()}")
        else:
            exc = TimeoutError(f"map item {item} did not finish within {timeout} s{of}")
        exc.add_note(f"gilfree: timeout={timeout} s (map item {item})")
        return exc

    @staticmethod
    def _fail(i: int, exc: BaseException, failed: list, errors: dict, collect: bool) -> None:
        if collect:
            failed[i] = exc
        else:
            errors[i] = exc
