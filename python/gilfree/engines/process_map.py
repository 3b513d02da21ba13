"""One map on a ProcessEngine's pool, seen from the driver (``_MapCall``): payload,
batches, results, events and failures. ``ProcessEngine`` (processes.py) owns the pool and
the engine's policy; a streaming stage's spell (process_stream.py) is a ``_MapCall`` too.

    pool.map(n, ...) ── C++ MapScheduler plans chunks ──▶ make_batch(a, b, origin)
    on_result(a, b, origin, body, fds) ◀── a worker's Result: results into their slots,
                                           its events replayed here
    on_lost(a, b, origin, info) ◀───────── a worker died, or an item ran past its
                                           deadline: those items fail (WorkerDied,
                                           TimeoutError), naming node and map item
"""

from __future__ import annotations

import itertools
import signal
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from ..errors import EngineShutDown, ExecutionError
from ..model.plan import DUAL, Plan
from ..remote import driver as remote
from ..remote import transport
from ..remote.messages import RemoteOptions
from ..run.execute import Runtime
from ..run.stages import Skipped

if TYPE_CHECKING:
    from .processes import ProcessEngine

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


def _dual_batch_size(plan: Plan, rt: Runtime) -> int:
    """What a worker's batch should be a whole multiple of (the DualNodes' LCM), or 0:
    the remote layer's rule, DaskEngine's too."""
    return remote.dual_batch_size(plan, rt)


_map_ids = itertools.count(1)

#: Outer maps with fewer items than this many per worker spread their nodes' own maps
#: over the pool (more items keep the workers busy by themselves: a node's map then
#: runs where the node runs, with no round trips). DaskEngine's rule, too.
NODE_MAPS_BELOW_PER_WORKER = 4


def spreads_node_maps(items: int, workers: int) -> bool:
    """Whether a map of ``items`` on ``workers`` workers asks them to spread their nodes'
    own maps over the pool."""
    return workers > 1 and items < NODE_MAPS_BELOW_PER_WORKER * workers


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
                 deferred: bool = False, first: int = 0, announce: bool = True,
                 node_maps: bool | None = None):
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
        # Too few items to keep the workers busy: a node's own map spreads over them
        # (``node_maps``: None decides by the map's items).
        if node_maps is None:
            node_maps = spreads_node_maps(self.n, pool.workers)
        self.payload, self.payload_fds = remote.encode_payload(
            plan, base, RemoteOptions.of(rt, self.timeout, first, node_maps))
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
        what = (f"{self.engine.name_in_messages} was shut down (engine.shutdown() from "
                "another thread or a callback) during this map")
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
                                   self.consumers, failed=skipped, first=self.first)

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
        if node is not None and self._is_batch_call(info):
            where += f" while running the batch call of node {node!r}"
            item = None  # the batch call is all of its items'
        elif node is not None:
            where += f" while running node {node!r}"
        if item is not None:
            where += f" on map item {item}"
        beside = self._node_of({"step": info.get("beside_step", -1)})
        if beside is not None:  # either may have killed it: both batches are lost
            where += (f" (node {beside!r} of another batch ran beside it in that "
                      "process: a DualNode's waiting batch call overlaps the next batch)")
        for i in range(a, b):
            fate = (f"map item {self.first + i} is lost (the other items of its batch run "
                    "again)" if item == self.first + i and b - a == 1 else
                    f"map item {self.first + i} was in its batch (items {self.first + a}.."
                    f"{self.first + b - 1}) and is lost")
            err = WorkerDied(
                f"worker process {info['pid']} {how}{where}; {fate}. The pool starts a "
                "replacement. If it ran out of memory, use fewer workers or smaller "
                "batches (batch_size=)")
            if node is not None:
                err.add_note(f"gilfree: raised in node {node!r} (map item {self.first + i})")
            if not self._fail_item(i, err):
                return False
        return True

    def _node_of(self, info: dict) -> str | None:
        """The node a dead worker's status page says it was running, if any."""
        steps, step = self.plan.steps, info["step"]
        return steps[step].name if 0 <= step < len(steps) else None

    def _is_batch_call(self, info: dict) -> bool:
        steps, step = self.plan.steps, info["step"]
        return 0 <= step < len(steps) and steps[step].kind == DUAL

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
        dropped = remote.STAGE_ANNOUNCEMENTS if self.stage else remote.MAP_ANNOUNCEMENTS
        remote.replay(self.rt, events, len(self.path), dropped, flush=not self.deferred)
