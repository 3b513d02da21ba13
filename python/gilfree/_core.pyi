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

class PoolShutDown(RuntimeError):
    """Work given to a ThreadPool that is, or was meanwhile, shut down."""

class PoolCall:
    """A call handed to ThreadPool.submit()."""

    def abandon(self) -> bool:
        """The caller stopped waiting. Not started yet: dropped (never runs, done is never
        called), returns False. Started: runs on, returns True, and its thread stops
        counting against max_workers until it returns (up to max_abandoned threads)."""
    def withdraw(self) -> bool:
        """Drop the call if it has not started (False); else True, nothing changes.
        Giving up on many calls: withdraw all first, then abandon() the started ones."""
    @property
    def started(self) -> bool: ...

def begin_pool_wait() -> bool:
    """On a worker of any ThreadPool, about to block for a while: it stops counting
    against its pool's max_workers until end_pool_wait(). False (no-op) elsewhere."""

def end_pool_wait() -> None: ...

class ThreadPool:
    """Native threads for Python callables; grow on demand up to max_workers, retire
    after idle_timeout seconds without work. Workers in abandoned calls (up to
    max_abandoned of them) or in begin_wait() do not count against max_workers."""

    def __init__(self, max_workers: int, idle_timeout: float = 10.0,
                 max_abandoned: int = 1024) -> None: ...
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
        Called from one of this pool's workers (a nested map), that worker keeps its slot
        and runs items of the map itself; the others go to the pool's idle threads (or
        new ones, up to max_workers). shutdown() meanwhile: no new item starts;
        PoolShutDown is raised (with stop_on_error=False, each item that did not run
        holds one).
        """
    def submit(self, fn: Callable[[], Any], done: Callable[[Any, bool], object]) -> PoolCall:
        """Call fn() on a worker, then done(result_or_exception, ok) on that same worker
        with the GIL held. Returns at once. Errors raised by done go to
        sys.unraisablehook. A call dropped by shutdown() before it ran is answered by
        shutdown() with done(PoolShutDown(...), False)."""
    def submit_each(self, fns: list[Callable[[], Any]],
                    dones: list[Callable[[Any, bool], object]]) -> None:
        """submit(fns[k], dones[k]) for every k, with one GIL release (no PoolCall)."""
    def map_into(self, fn: Callable[[int], object], ids: list[int], flow: Flow,
                 stage: int) -> None:
        """Return at once; fn(id) runs for every id on the pool's threads (as in map())
        and each call is reported from C++ as flow.done(stage, [id], [failed]), failed
        unless fn returned True (fn records its own errors; its exceptions are dropped).
        Ids the pool cannot run (shut down meanwhile) are reported failed. Raises
        PoolShutDown if already shut down. On one of this pool's workers: inline."""
    def begin_wait(self) -> bool:
        """On a worker of this pool about to block on other work of this pool (a nested
        map): it stops counting against max_workers until end_wait(). False elsewhere."""
    def end_wait(self) -> None: ...
    def on_worker_thread(self) -> bool:
        """Whether the calling thread is one of this pool's workers."""
    def stats(self) -> dict[str, Any]:
        """threads, busy, abandoned, waiting, max_workers, max_abandoned, spawn_error."""
    @property
    def is_shut_down(self) -> bool: ...
    def shutdown(self, wait: bool = True) -> bool:
        """Idempotent. Queued work is dropped (pending submits are answered with a
        PoolShutDown error) and running maps claim no new item; running calls finish.
        With wait, returns once the worker threads have exited."""
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

FRAME_KINDS: dict[str, int]
"""Frame kinds of the driver/worker protocol (cpp/include/gilfree/frame.hpp)."""

def set_parent_death_signal(sig: int) -> bool:
    """Linux: deliver `sig` to this process when its parent thread exits."""

class ProcessPool:
    """Long-lived worker processes (posix_spawn of `argv` + "3 4 <parent pid>"), fed with
    framed batches; reader/writer threads per worker do the I/O without the GIL."""

    def __init__(self, argv: list[str], workers: int, payload_slots: int = 8,
                 max_items_per_worker: int = 0, zygote_argv: list[str] = []) -> None:
        """zygote_argv non-empty: workers are forked by the process-wide forkserver
        started with that command (+ "3 <driver pid>"); else each is a posix_spawn."""
    def set_init(self, body: bytes) -> None:
        """The INIT frame body every new worker receives first."""
    def start(self) -> None:
        """Spawn workers until `workers` are alive (returns without waiting for them)."""
    def map(
        self,
        n: int,
        key: bytes,
        payload: bytes,
        payload_fds: list[int],
        make_batch: Callable[[int, int, int], tuple[bytes, list[int]]],
        on_result: Callable[[int, int, int, bytes, list[int]], bool],
        on_lost: Callable[[int, int, int, dict[str, Any]], bool],
        *,
        chunk: int = 0,
        depth: int = 2,
        item_timeout: float = 0.0,
    ) -> None:
        """Run items [0, n) in chunks (guided sizes unless `chunk`), at most `depth`
        batches per worker. With `item_timeout` > 0, a worker whose current item (as its
        status page says) runs longer is killed: on_lost gets that one item with
        info["timeout"], and the rest of its batch runs again. The payload goes to a
        worker once per key. Callbacks run in the calling thread; returning False stops
        dispatching (running batches finish).
        make_batch's descriptors are closed after sending; on_result owns the ones it
        gets. A dead worker's running batch goes to on_lost (pid, exitcode, signal, item,
        step); batches queued behind it run again. Ctrl-C kills the busy workers and
        raises KeyboardInterrupt. Returns early if the pool breaks (see `broken`) or is
        shut down, before or during the map (see `is_shut_down`; the items without a
        result are the caller's to report). The callbacks get the batch's range and its
        origin (see stream(); a map's batches never overlap, so it can be ignored)."""
    def stream(
        self,
        key: bytes,
        payload: bytes,
        payload_fds: list[int],
        make_batch: Callable[[int, int, int], tuple[bytes, list[int]]],
        on_result: Callable[[int, int, int, bytes, list[int]], bool],
        on_lost: Callable[[int, int, int, dict[str, Any]], bool],
        next_range: Callable[[int, int], tuple[int, int] | float | None],
        open: Callable[[], bool],
        *,
        chunk: int = 0,
        depth: int = 2,
        item_timeout: float = 0.0,
    ) -> None:
        """A map whose items come while it runs: a worker with room gets
        next_range(most, share) -> [start, stop) (None: none ready; a float: held back for
        a fuller batch, ask again within that many seconds), `start` an item never sent
        before, about `most` items (`chunk`, else ~50 ms of measured work) and a
        `share`-th (the idle workers) of what is ready; ids of the range the caller leaves
        out travel as its placeholders. The callbacks get the batch's `origin` (its start
        when first sent; a batch sent again, whole or split around an overdue item, keeps
        it) after start and stop, as in map(). Returns once open() said False and every
        batch sent is back; call wake() after making items ready so that a waiting stream
        looks at once. Faults and timeouts as in map(); item numbers are the caller's."""
    def wake(self) -> None:
        """Any thread: a stream() waiting for items asks next_range again now."""
    def shutdown(self, grace: float = 2.0) -> None:
        """Kill the workers holding batches (a map in another thread ends) at once, ask
        the idle ones to quit, kill those still alive after `grace` seconds, reap all."""
    def kill_all(self) -> None: ...
    @property
    def pids(self) -> list[int]: ...
    @property
    def workers(self) -> int: ...
    @property
    def broken(self) -> str | None:
        """Why the pool cannot run anything (an initializer failed), or None."""
    @property
    def is_shut_down(self) -> bool: ...

class ChunkPlanner:
    """How ProcessPool.map cuts `items` into batches: each chunk half of a fair share of
    what is left (`fixed` > 0: that size; `cap` > 0: at most that many), down to a tail
    chunk of about 1/64 of a worker's share, or, once an item's time is known, of about
    1 ms of work (never coarser than at the start)."""

    def __init__(self, items: int, workers: int, fixed: int = 0, cap: int = 0) -> None: ...
    def next(self) -> tuple[int, int] | None:
        """The next chunk [start, stop), or None when every item has been handed out."""
    def observe_item_seconds(self, seconds: float) -> None:
        """What an item took, measured on a finished batch (ignored if not > 0); the
        slowest time seen sizes the tail."""
    @property
    def min_chunk(self) -> int: ...

class Channel:
    """A worker's end of its driver connection."""

    def __init__(self, fd: int) -> None: ...
    def recv(self) -> tuple[int, int, bytes, bytes, list[int]] | None:
        """(kind, id, key, body, fds) or None at end of stream. Releases the GIL."""
    def send(self, kind: int, id: int, key: bytes, body: bytes, fds: list[int]) -> None:
        """Send one frame; closes `fds` afterwards. Releases the GIL."""

class Flow:
    """The streaming map's flow scheduler (cpp/src/flow.cpp): moves integer item ids
    between stages; it never runs nodes. `stages`: one (capacity, queue_bound,
    batch_size, linger_s) per stage in order; capacity counts items in flight, or
    batches for batch_size > 1 (a batch goes when full, when its oldest item waited
    linger_s, or when no more items can reach the stage). `read_ahead` (>= 1): the most
    items pulled and not yet returned by next(). `ordered`: items leave in input order.
    Ids are given by the flow, consecutive from 0 in the order pull reads them."""

    def __init__(self, stages: list[tuple[int, int, int, float]], read_ahead: int,
                 ordered: bool = True) -> None: ...
    def next(
        self,
        pull: Callable[[int], tuple[int, bool]],
        dispatch: Callable[[int, list[int]], object],
    ) -> list[tuple[int, bool]]:
        """Run the flow in this thread until at least one item can leave; return every
        item that can leave now as (id, failed). [] at the end (input exhausted, every
        pulled item returned) or once closed. pull(k) reads up to k items, returns
        (n_read, exhausted); dispatch(stage, ids) starts ids on a stage and must return
        quickly (it may call done). Waits without the GIL; Ctrl-C raises
        KeyboardInterrupt within one 50 ms tick. An exception from pull, dispatch or
        Ctrl-C closes the flow. One caller at a time (RuntimeError otherwise)."""
    def done(self, stage: int, ids: list[int], failed: list[bool] = []) -> None:
        """Thread-safe. ids finished on `stage` (failed[i]: ids[i] failed and skips the
        remaining stages). A finished item waits at its stage, holding its capacity,
        while the next stage's queue is full. Ignored once closed; ValueError for an id
        not in flight on `stage`."""
    def close(self) -> None:
        """Thread-safe, idempotent: next() returns [] from then on, pull/dispatch are not
        called again, later done() calls are ignored."""
    def stats(self) -> dict[str, Any]:
        """pulled, left, exhausted, closed, and stages: per stage a dict of queued,
        in_flight, parked, busy (capacity used) and done_total."""
