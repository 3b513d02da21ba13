"""The event loop an engine owns: one loop, on its own daemon thread, started once.

AsyncEngine runs every item's coroutine there; ThreadEngine uses it only for maps with a
per-item ``timeout`` (an item's calls still run on the C++ thread pool, and the loop's
``wait_for`` is what gives up on them). uvloop is used when installed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable

_POLL_SECONDS = 0.05  # Ctrl-C and callback delivery latency while the driver waits


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopStopped(RuntimeError):
    """The loop was stopped (the engine shut down) before the coroutine could finish."""


class EventLoopThread:
    """One event loop running forever on a daemon thread; ``run`` waits for a coroutine.

    ``stop()`` (engine shutdown) first cancels every task on the loop and gives them a
    moment to finish, so that a map waiting in ``run`` on another thread ends (its items
    see the cancellation, with ``closing`` set) instead of waiting forever.
    """

    def __init__(self, name: str = "gilfree-async-engine"):
        self.loop = _new_loop()
        self.closing = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def on_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, factory: Callable[[], Awaitable[Any]], on_tick: Callable[[], None]) -> Any:
        if self.on_loop_thread():
            raise RuntimeError("a node cannot run a map on the engine that is running it "
                               "(its event loop); use another engine for the inner map")
        if self.closing:
            raise LoopStopped("the event loop is stopped")
        coro = factory()
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # closed between the check and now
            coro.close()
            raise LoopStopped("the event loop is stopped") from None
        try:
            while True:
                try:
                    # A timed wait releases the GIL and returns for Ctrl-C and callbacks.
                    return fut.result(timeout=_POLL_SECONDS)
                except concurrent.futures.TimeoutError:
                    if self.closing and not self._thread.is_alive():
                        raise LoopStopped("the event loop stopped before the map ended") from None
                    on_tick()
                except concurrent.futures.CancelledError:
                    if self.closing:
                        raise LoopStopped("the event loop stopped before the map ended") from None
                    raise
        except BaseException:
            fut.cancel()
            raise

    def stop(self, grace: float = 5.0) -> None:
        self.closing = True
        if self.on_loop_thread():  # a node shutting its own engine down: cannot wait here
            self.loop.stop()
            return
        if self.loop.is_running():
            async def cancel_all() -> None:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                if tasks:
                    await asyncio.wait(tasks, timeout=grace)

            try:
                asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(grace + 1)
            except Exception:  # a task that will not end: stop the loop regardless
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self.loop.is_running():
            self.loop.close()


def _settle(fut: asyncio.Future, result: Any, ok: bool) -> None:
    """On the loop: the pool's answer to an offloaded call becomes the future's."""
    if fut.cancelled():
        return
    if ok:
        fut.set_result(result)
    else:
        fut.set_exception(result)
