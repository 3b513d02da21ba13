"""Running an ``async def`` node's coroutine from synchronous engine code.

Never ``asyncio.run`` on a thread whose loop is already running (Jupyter): that raises.
Instead the coroutine goes to one background loop thread and we wait for its result.
The main thread, when no loop runs there, reuses one private loop (creating a loop per
call costs ~50 us).  Other threads (engine pool workers come and go) also use the
background loop: a loop owned by a thread that retires is collected unclosed.

A pool worker whose coroutine has not finished after a short while stops counting
against its pool's max_workers until it does (``begin_pool_wait``): the coroutine may be
waiting for work of that very pool (an async node that maps on the engine running it,
from the shared loop), and the waiting worker must not hold the slot that work needs.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Coroutine

if TYPE_CHECKING:
    import asyncio

# asyncio is imported on first use: it costs ~20 ms at import, and every worker process
# and plain synchronous user would pay it for nothing.

_local = threading.local()
_QUICK_SECONDS = 0.05  # a wait longer than this on a pool thread gives its slot up
_background_lock = threading.Lock()
_background_loop: asyncio.AbstractEventLoop | None = None


def _thread_loop() -> asyncio.AbstractEventLoop:
    import asyncio

    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        import atexit

        loop = _local.loop = asyncio.new_event_loop()
        atexit.register(loop.close)  # closed at exit, not collected unclosed (a warning)
    return loop


def _background() -> asyncio.AbstractEventLoop:
    global _background_loop
    import asyncio

    with _background_lock:
        if _background_loop is None:
            loop = asyncio.new_event_loop()
            t = threading.Thread(target=loop.run_forever, name="gilfree-async-bridge",
                                 daemon=True)
            t.start()
            _background_loop = loop
        return _background_loop


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        if threading.current_thread() is threading.main_thread():
            return _thread_loop().run_until_complete(coro)
    fut = asyncio.run_coroutine_threadsafe(coro, _background())
    try:
        return fut.result(timeout=_QUICK_SECONDS)
    except TimeoutError:  # concurrent.futures' is the builtin since 3.11
        if fut.done():  # the coroutine's own TimeoutError
            raise
    from .._native import core

    waiting = core().begin_pool_wait()
    try:
        return fut.result()
    finally:
        if waiting:
            core().end_pool_wait()
