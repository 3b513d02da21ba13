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
            raise RuntimeError("a node cannot run a map on the engine that is running it "
                               "(its event loop); use another engine for the inner map")
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


def _settle(fut: asyncio.Future, result: Any, ok: bool) -> None:
    """On the loop: the pool's answer to an offloaded call becomes the future's."""
    if fut.cancelled():
        return
    if ok:
        fut.set_result(result)
    else:
        fut.set_exception(result)
