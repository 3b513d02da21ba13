"""Type stubs for gilfree._core, the C++ extension (pybind11 + oneTBB)."""

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")

def tbb_version() -> str:
    """Version of the oneTBB runtime library that is loaded, e.g. "2023.2.0"."""

def hardware_concurrency() -> int:
    """Cores this process may run on (respects the CPU affinity mask)."""

def _shutdown_all_pools() -> None:
    """atexit hook: stop every ThreadPool without waiting for workers in long calls."""

class ThreadPool:
    """Native threads for Python callables; grow on demand up to max_workers, retire
    after idle_timeout seconds without work."""

    def __init__(self, max_workers: int, idle_timeout: float = 10.0) -> None: ...
    def map(
        self,
        fn: Callable[[_T], _R],
        items: Iterable[_T],
        *,
        on_complete: Callable[[int, Any, bool], object] | None = None,
        stop_on_error: bool = True,
    ) -> list[Any]:
        """Return [fn(item) for item in items], computed on the pool's threads.

        on_complete(index, result_or_exception, ok) runs in the calling thread, in
        completion order. With stop_on_error, the failure of the lowest failing index is
        raised once running items finish; otherwise exception objects stand in the list.
        Ctrl-C raises KeyboardInterrupt at once; items already running finish unobserved.
        Called from one of this pool's workers, the items run inline in that thread.
        """
    def submit(self, fn: Callable[[], Any], done: Callable[[Any, bool], object]) -> None:
        """Call fn() on a worker, then done(result_or_exception, ok) on that same worker
        with the GIL held. Returns at once. Errors raised by done go to
        sys.unraisablehook. A call dropped by shutdown() before it ran is answered by
        shutdown() with done(RuntimeError(...), False)."""
    def shutdown(self, wait: bool = True) -> bool:
        """Idempotent. Queued work is dropped (pending submits are answered with a
        RuntimeError); running calls finish. With wait, returns once the worker threads
        have exited."""
    def __enter__(self) -> ThreadPool: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...
    @property
    def max_workers(self) -> int: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def num_threads(self) -> int: ...
