"""The executors of a streaming map's stages (run/flow.py): each runner starts the items
the flow scheduler dispatches to its stage and reports them done, from its own threads.

    inline   runs them in the iterating thread, at once
    thread   a claimed stage: ThreadPool.serve starts workers that take the stage's
             items from the flow themselves and report each done to it, in C++
    async    one coroutine per item on the engine's loop (async nodes, or a deadline)
    batch    a DualNode: one pool call per batch the flow sends (full, or lingered)
    process  a feeder thread runs the ProcessEngine's pool as a stream over the ready
             ids (engines/process_stream.py): a worker with room takes a run of them;
             each batch's items are reported as they come back

Runners work with "collect" semantics: a failed item's error is recorded on the stream
(``stream.fail``) and the item leaves the flow failed; the stream applies the policy.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import statistics
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

from ..errors import EngineShutDown
from ..model.plan import FUNC
from .cores import usable_cores
from .execute import run_step
from .execute_async import arun_step
from .execute_batch import _run_batch
from .runtime import Runtime, _store, annotate, invoke
from .stages import (INLINE, PROCESS, STAGE_PACE, STAGE_THREADS, THREAD, Stage, StagePart,
                     largest_hint)

#: A batch stage sends a partial batch after its oldest item waited this long.
LINGER_S = 0.01
#: A batch stage's batch size when neither the node nor the engine says.
STREAM_BATCH_SIZE = 32
#: Items a process stage holds at most (running in workers, or waiting for a worker).
PROCESS_IN_FLIGHT = 4096
#: A re-sized thread stage (STAGE_PACE) looks at its latency this often, over its last
#: LATENCY_CALLS calls (at least MIN_CALLS of them), and changes its threads only by
#: more than RESIZE_BY (either way): a stage does not flap between two sizes.
ADAPT_S, LATENCY_CALLS, MIN_CALLS, RESIZE_BY = 0.05, 64, 8, 0.25
#: How long ready items wait for more before a process stage sends a batch smaller than
#: its measured size (~50 ms of work).
PROCESS_LINGER_S = 0.02
#: A process stage gives the pool back after this long with no item to run (a map on
#: the same engine in another thread may be waiting; a waiting map also asks for it).
PROCESS_IDLE_S = 0.05
#: A process stage's last items go in batches of about what is left / (this x workers),
#: but (a stage ending in batch calls) not fewer items than take as long as those calls,
#: up to MAX_CALL_ITEMS.
TAIL_SPLIT, MAX_CALL_ITEMS = 2, 64
#: Placeholders a process stage's batch may carry beyond its own items' count: a
#: placeholder is a row of Nones that the worker skips, a batch a round trip to it.
STRAGGLER_GAP = 256


def runner(stream: Any, k: int, stage: Stage, base: dict) -> "_Runner":
    """The runner of ``stream``'s stage ``k``."""
    engine = stream.engine
    if stage.executor == PROCESS:
        return _ProcessRunner(stream, k, stage, engine._lend(PROCESS), base)
    if stage.kind == "batch":
        return _BatchRunner(stream, k, stage, engine)
    if stage.executor == INLINE:
        return _InlineRunner(stream, k, stage)
    timeout = engine._item_timeout(stream.plan)
    threads = engine._lend(THREAD)
    if timeout is None and (stage.executor == THREAD or (
            not any(s.is_async for st in stage.steps for s in _all_steps(st))
            and getattr(threads, "max_concurrency", 0) >= threads.max_workers)):
        # Sync steps without a deadline: the loop would only hand each call to the pool
        # (AsyncEngine, as in its map: aio.py's _pool_only).
        return _ThreadRunner(stream, k, stage, threads)
    return _LoopRunner(stream, k, stage, threads, timeout)


def _all_steps(step: Any) -> Iterator[Any]:
    yield step
    if step.inner is not None:
        yield from step.inner.iter_steps()


class _Runner:
    """Starts a stage's items on its executor; reports them done to the flow."""

    #: (capacity, queue bound (set by the stream), batch size, linger seconds, claimed)
    spec: tuple = (1, 0, 0, 0.0, False)

    def __init__(self, stream: Any, k: int, stage: Stage):
        self.stream, self.k, self.stage = stream, k, stage

    def dispatch(self, ids: list[int]) -> None:
        raise NotImplementedError

    def start(self, n: int) -> None:
        """A claimed stage: start ``n`` more workers (they claim the items)."""
        raise NotImplementedError

    def begin(self) -> None:
        """The stream is being iterated (its close() will come): threads may start."""

    def close(self) -> None:
        pass

    def run_items(self, i: int, rt: Runtime) -> bool:
        """The stage's steps for item ``i``; False (error recorded) if one failed."""
        s = self.stream
        v = s.values.get(i)
        if v is None:  # the stream was closed meanwhile
            return False
        try:
            for step in self.stage.steps:
                if not run_step(step, v, rt, s.offset + i, s.sigs.get(i)):
                    s.cached[i] = False
        except Exception as exc:
            s.fail(i, exc)
            return False
        return True


class _InlineRunner(_Runner):
    spec = (64, 0, 0, 0.0, False)

    def dispatch(self, ids: list[int]) -> None:
        rt = self.stream.work_rt
        failed = [not self.run_items(i, rt) for i in ids]
        self.stream.done(self.k, ids, failed)


class _ThreadRunner(_Runner):
    def __init__(self, stream: Any, k: int, stage: Stage, threads: Any):
        super().__init__(stream, k, stage)
        self.pool = threads.pool
        self.most = threads.max_workers
        self.threads = min(self.most, largest_hint(stage.steps, STAGE_THREADS) or self.most)
        self.spec = (self.threads, 0, 0, 0.0, True)
        # Re-sized by Little's law (threads = pace x latency) while it runs, between at
        # least one per core and the engine's max_workers; None: a fixed size.
        self.pace = largest_hint(stage.steps, STAGE_PACE)
        if self.pace is not None:
            self.least = min(usable_cores(), self.most)
            self.latencies: deque = deque(maxlen=LATENCY_CALLS)  # appends are atomic
            self.adapted_at = 0.0

    def start(self, n: int) -> None:
        # The workers claim the stage's items from the flow and report each one in C++ (no
        # Python between two items but the stage's own). Items a shutdown keeps from
        # running are reported failed (EngineShutDown when they leave); a pool already
        # shut down raises here, which Stream._start turns into that error.
        self.pool.serve(self.call, self.stream.flow, self.k, n)

    @property
    def call(self) -> Callable[[int], bool]:
        """What a worker runs per item: ``_call_id``, or for plain steps with no cache,
        callbacks, retries or pace, the same written out: it runs once per item, and a
        GIL-bound frame less per step counts with hundreds of threads taking turns."""
        s = self.stream
        rt, steps = s.work_rt, self.stage.steps
        if self.pace is not None or rt.tracing or rt.retries or not all(
                st.kind == FUNC and not st.is_async and not st.hints.get("retries")
                for st in steps):
            return self._call_id
        values, offset = s.values, s.offset

        def call_id(i: int) -> bool:
            v = values.get(i)
            if v is None:  # the stream was closed meanwhile
                return False
            step = None
            try:
                for step in steps:
                    _store(step, invoke(step, step.func, v), v)
            except Exception as exc:
                annotate(exc, step.name, offset + i)
                s.fail(i, exc)
                return False
            return True
        return call_id

    def _call_id(self, i: int) -> bool:
        """True if item ``i`` ran through the stage; False (error recorded) if not."""
        if self.pace is None:
            return self.run_items(i, self.stream.work_rt.worker_view())
        t0 = time.perf_counter()
        try:
            return self.run_items(i, self.stream.work_rt.worker_view())
        finally:
            self.latencies.append(time.perf_counter() - t0)

    def adapt(self, now: float) -> None:
        """Little's law again, with the stage's latency of the moment: a call that got
        slower (a server under load) gets more threads, one that got faster fewer. Runs
        in the iterating thread, at most every ADAPT_S."""
        if self.pace is None or now - self.adapted_at < ADAPT_S \
                or len(self.latencies) < MIN_CALLS:
            return
        self.adapted_at = now
        latency = statistics.median(list(self.latencies))
        want = max(self.least, min(self.most, math.ceil(self.pace * latency)))
        if abs(want - self.threads) <= RESIZE_BY * self.threads:
            return
        self.threads = want
        self.stream.flow.set_capacity(self.k, want)
        on_resize = self.stream.rt.on_resize
        if on_resize is not None:
            on_resize([s.name for s in self.stage.steps], want, latency)


class _LoopRunner(_Runner):
    """Items as coroutines on the engine's event loop (async nodes; or a deadline)."""

    def __init__(self, stream: Any, k: int, stage: Stage, threads: Any,
                 timeout: float | None):
        super().__init__(stream, k, stage)
        self.loop = threads.loop_thread.loop
        self.offload = threads._offload(threads.pool)
        self.timeout = timeout
        self.spec = (threads._concurrency(), 0, 0, 0.0, False)

    async def _one(self, i: int) -> bool:
        s = self.stream
        v = s.values.get(i)
        if v is None:
            return False
        r = s.work_rt.worker_view()
        try:
            for step in self.stage.steps:
                work = arun_step(step, v, r, s.offset + i, s.sigs.get(i), self.offload)
                hit = await (work if self.timeout is None else
                             asyncio.wait_for(work, self.timeout))
                if not hit:
                    s.cached[i] = False
        except asyncio.TimeoutError:
            n = s.offset + i
            err = TimeoutError(f"map item {n} did not finish within {self.timeout} s")
            err.add_note(f"gilfree: timeout={self.timeout} s (map item {n})")
            s.fail(i, err)
            return False
        except Exception as exc:
            s.fail(i, exc)
            return False
        return True

    def dispatch(self, ids: list[int]) -> None:
        s, k = self.stream, self.k
        for i in ids:
            fut = asyncio.run_coroutine_threadsafe(self._one(i), self.loop)

            def finished(f: Any, i: int = i) -> None:
                ok = not f.cancelled() and f.exception() is None and f.result()
                if not f.cancelled() and f.exception() is not None:
                    s.fail(i, f.exception())
                s.done(k, [i], [not ok])
            fut.add_done_callback(finished)


class _BatchRunner(_Runner):
    """A DualNode: one batch-function call per batch the flow sends (full, or lingered)."""

    def __init__(self, stream: Any, k: int, stage: Stage, engine: Any):
        super().__init__(stream, k, stage)
        step = stage.steps[0]
        size = step.hints.get("batch_size") or stream.rt.batch_size or STREAM_BATCH_SIZE
        self.in_thread = stage.executor != INLINE
        self.pool = engine._lend(THREAD).pool if self.in_thread else None
        self.spec = (4 if self.in_thread else 1, 0, size, LINGER_S, False)

    def _run(self, ids: list[int]) -> list[bool]:
        s = self.stream
        live = [i for i in ids if i in s.values]
        values = [s.values[i] for i in live]
        failed: list = [None] * len(live)
        cached = [s.cached.get(i, False) for i in live]
        rt = s.work_rt.worker_view() if self.in_thread else s.work_rt
        _run_batch(self.stage.steps[0], values, [s.sigs.get(i) for i in live], failed,
                   cached, s.varying, s.base, rt, True, [s.offset + i for i in live], _serial)
        for i, err, hit in zip(live, failed, cached):
            s.cached[i] = hit
            if err is not None:
                s.fail(i, err)
        bad = {i for i, err in zip(live, failed) if err is not None}
        return [i in bad or i not in s.values for i in ids]

    def dispatch(self, ids: list[int]) -> None:
        s, k = self.stream, self.k
        if not self.in_thread:
            s.done(k, ids, self._run(ids))
            return

        def done(flags: Any, ok: bool) -> None:
            if not ok:
                for i in ids:
                    s.fail(i, flags if isinstance(flags, BaseException) else
                           EngineShutDown(f"map item {s.offset + i} did not run to its end"))
                flags = [True] * len(ids)
            s.done(k, ids, flags)
        self.pool.submit(lambda: self._run(ids), done)


def _serial(task: Callable[[int], None], n: int) -> None:
    for j in range(n):
        task(j)


class _ProcessRunner(_Runner):
    """A process stage: the ids the flow dispatches wait in a heap; a feeder thread runs
    the ProcessEngine's pool as a stream over them while there are any
    (engines/process_stream.py): a worker with room takes the lowest ready ids, as many as
    its measured share, and each batch's items go on to the next stage as soon as it is
    back. No barrier: a worker never waits for another's batch. The pool serves one map
    at a time: a spell ends when nothing came for PROCESS_IDLE_S, or at once when another
    map waits for the pool."""

    def __init__(self, stream: Any, k: int, stage: Stage, processes: Any, base: dict):
        super().__init__(stream, k, stage)
        self.processes = processes
        self.timeout = stream.engine._item_timeout(stream.plan)
        self.part = StagePart(stage, stream.plan, stream.work_rt, base)
        # The flow hands over what it has (bounded by the read-ahead): the heap holds the
        # items while the workers are busy, so that each batch is as large as is ready.
        self.spec = (PROCESS_IN_FLIGHT, 0, 0, 0.0, False)
        self.lock = threading.Lock()  # ready, busy: the flow's thread and the feeder's
        self.ready: list[int] = []  # heap of ids dispatched, not yet in a batch
        self.arrived: dict[int, float] = {}  # the same ids: when they came (monotonic)
        # > 0: the spell waits for items, and wants this many ready to look again
        self.wanted = 0
        self.sent: set[int] = set()  # ids in batches, not yet reported
        self.members: dict[int, set[int]] = {}  # batch origin -> its ids not yet back
        self.busy = False  # the feeder runs a spell (or is about to)
        self.go = threading.Event()
        self.idle_since: float | None = None
        self.thread: threading.Thread | None = None
        self.stopped = False
        # A stage that ends in batch calls (a DualNode): the items whose steps take as
        # long as a batch's calls (the workers say, Result.timing). A last batch smaller
        # than that waits for the previous batch's calls (one batch's at a time, beside
        # the next batch's items, process_worker.py) instead of running its items.
        self.call_items = 1

    def begin(self) -> None:
        # Started before the first items come: Thread.start() waits for the new thread
        # to run, which, among a burst of I/O threads returning, costs milliseconds.
        if self.thread is None:
            self.thread = threading.Thread(target=self._feed, daemon=True,
                                           name="gilfree-stream-process-stage")
            self.thread.start()

    def dispatch(self, ids: list[int]) -> None:
        now = time.monotonic()
        with self.lock:
            for i in ids:
                heapq.heappush(self.ready, i)
                self.arrived[i] = now
            start, self.busy = not self.busy, True
            # A spell waiting for items (not for a worker) looks again once there are as
            # many as it wants; not at every dispatch: each wake costs it the GIL.
            wake = not start and 0 < self.wanted <= len(self.ready)
            if wake:
                self.wanted = 0
        if wake:
            pool = self.processes._pool
            if pool is not None:
                pool.wake()
        if not start:
            return
        self.begin()
        self.go.set()

    def close(self) -> None:
        self.stopped = True
        self.go.set()
        pool = self.processes._pool
        if pool is not None:
            pool.wake()

    # -- the feeder thread ---------------------------------------------------------------
    def _feed(self) -> None:
        s, k = self.stream, self.k
        while True:
            self.go.wait()
            self.go.clear()
            if self.stopped:
                return
            while self.processes.waited_for and not self.stopped:
                time.sleep(0.001)  # another map asked for the pool: it goes first
            self.idle_since = None
            try:
                if s._shut_down():  # not a new pool for a map whose engine was shut down
                    raise s._shut_down_error()
                self.processes._stage_stream(self.part, s.work_rt, self, self.timeout)
            except BaseException as exc:  # the pool broke, the engine shut down
                with self.lock:
                    left = sorted(self.sent) + self.ready
                    self.sent.clear()
                    self.members.clear()
                    self.ready = []
                    self.arrived.clear()
                for i in left:
                    s.fail(i, exc if not s._shut_down() else s._shut_down_error(i))
                if left:
                    s.done(k, left, [True] * len(left))
            with self.lock:
                if not self.ready or self.stopped:
                    self.busy = False
                    continue
            self.go.set()  # items came while the spell ended: another one

    # -- what StreamCall asks (the feeder thread, GIL held) -------------------------------
    def open(self) -> bool:
        if self.stopped or self.processes.waited_for:
            return False
        if self.ready:
            self.idle_since = None
            return True
        now = time.monotonic()
        if self.idle_since is None:
            self.idle_since = now
        return now - self.idle_since < PROCESS_IDLE_S

    def next_range(self, most: int, share: int) -> tuple[int, int] | float | None:
        """The lowest ready ids, ``most`` of them at most and about a ``share``-th of
        those ready, as the range from the first to the last; None if none is ready.
        Fewer than that wait until the first has been ready for PROCESS_LINGER_S (the
        seconds left are returned), unless no more can come: a batch costs the driver a
        round trip whatever its size, and items that trickle in would go one per batch.
        Ids of the range that are not the batch's travel as placeholders; they are
        bounded by the batch's size plus STRAGGLER_GAP."""
        if self.stopped or self.processes.waited_for:
            return None
        with self.lock:
            ready, arrived = self.ready, self.arrived
            if not ready:
                self.wanted = 1
                return None
            a = ready[0]
            take = min(most, max(1, -(-len(ready) // share)))
            # The stage's last items (no more can come: asked only when it would change
            # the batch) go in batches that shrink with what is left, to about a fair
            # share / TAIL_SPLIT (guided self-scheduling), so that the workers end
            # together, not one idle while another runs a full batch it queued (W8: one
            # worker ended up to 35 ms after the other); with batch calls, to no fewer
            # items than take as long as those calls (call_items).
            fair = max(-(-len(ready) // (TAIL_SPLIT * self.processes.workers)),
                       self.call_items)
            if fair < take and self.stream.flow.drained(self.k):
                take = fair
            # A stage with a DualNode takes consecutive ids only: a worker calls the batch
            # function once per run of items between placeholders, each call with its
            # fixed cost. Its ids come out of order from an earlier stage: the run from
            # the lowest lingers like a small batch, for the ids missing in it.
            consecutive = self.part.plan.has_batch
            if consecutive:
                run = 1
                while run < take and a + run in arrived:
                    run += 1
            if (run < take) if consecutive else (len(ready) < most):
                left = arrived[a] + PROCESS_LINGER_S - time.monotonic()
                # (flow.drained: no more items can come, the input ended and earlier
                # stages are empty; the tail goes now, it would only linger)
                if left > 0 and not self.stream.flow.drained(self.k):
                    self.wanted = most
                    return left
            self.wanted = 0
            ids = []
            # Otherwise the range grows while it stays at most twice its ids plus
            # STRAGGLER_GAP: placeholders (each a None per input) stay about as few as
            # the batch's own items, and a straggler (a lowest id that came late from a
            # thread stage, the ids after it long sent) rides with the run after it
            # instead of going alone (W9, 200,000 items: 925-937 batches, 27-30 % of them
            # with 1 item, before; 397-452, 7 %, with this).
            while ready and len(ids) < take and ready[0] - a < (
                    len(ids) + 1 if consecutive else 2 * len(ids) + STRAGGLER_GAP):
                i = heapq.heappop(ready)
                del arrived[i]
                ids.append(i)
            self.sent.update(ids)
            self.members[a] = set(ids)
        return a, ids[-1] + 1

    def timed(self, item_s: float, calls_s: float) -> None:
        """A batch's timing from its worker (the feeder thread): its items' steps took
        ``item_s`` each, its batch calls ``calls_s`` in all."""
        if item_s > 0:
            self.call_items = max(1, min(MAX_CALL_ITEMS, math.ceil(calls_s / item_s)))

    def rows(self, a: int, b: int, origin: int) -> tuple[list, list[int]]:
        """The rows of ids [a, b) for the batch ``origin``, and the offsets (from ``a``)
        of those that are not its own (placeholders: None; or the stream was closed)."""
        s, part = self.stream, self.part
        own = self.members.get(origin, ())
        values, sigs = s.values, s.sigs
        rows: list = []
        skipped: list[int] = []
        for i in range(a, b):
            v = values.get(i) if i in own else None
            if v is None:
                skipped.append(i - a)
                rows.append(None)
            else:
                rows.append(part.row(v, sigs.get(i)))
        return rows, skipped

    def placed(self, results: list, a: int, origin: int) -> None:
        """Items [a, a + len(results)) of batch ``origin`` are back (``results``: a
        result dict, an exception, or None for an item that never ran): its own go on to
        the flow, placeholders' results are dropped."""
        own = self.members.get(origin, set())
        s, take = self.stream, self.part.take
        values, sigs = s.values, s.sigs
        done, failed = [], []
        for i, result in enumerate(results, a):
            if i not in own:
                continue
            done.append(i)
            v = values.get(i)
            if v is None or result is None:  # closed meanwhile, or never ran
                failed.append(True)
            elif isinstance(result, BaseException):
                s.fail(i, result)
                failed.append(True)
            else:
                if not take(result, v, sigs.get(i)):
                    s.cached[i] = False
                failed.append(False)
        if not done:
            return
        with self.lock:
            self.sent.difference_update(done)
            own.difference_update(done)
            if not own:
                self.members.pop(origin, None)
        s.done(self.k, done, failed)
