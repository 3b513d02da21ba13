"""The executors of a streaming map's stages (run/flow.py): each runner starts the items
the flow scheduler dispatches to its stage and reports them done, from its own threads.

    inline   runs them in the iterating thread, at once
    thread   a claimed stage: ThreadPool.serve starts workers that take the stage's
             items from the flow themselves and report each done to it, in C++
    async    one coroutine per item on the engine's loop (async nodes, or a deadline)
    batch    a DualNode: one pool call per batch the flow sends (full, or lingered)
    process  a feeder thread hands the ProcessEngine's pool micro-batches (_MapCall):
             the id range of the ready items, the other ids of the range as skipped
             placeholders; each worker batch's items are reported as they come back

Runners work with "collect" semantics: a failed item's error is recorded on the stream
(``stream.fail``) and the item leaves the flow failed; the stream applies the policy.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, Callable, Iterator

from ..errors import EngineShutDown
from .execute import run_step
from .execute_async import arun_step
from .execute_batch import _run_batch
from .runtime import Runtime
from .stages import INLINE, PROCESS, THREAD, Stage, StagePart

#: A batch stage sends a partial batch after its oldest item waited this long.
LINGER_S = 0.01
#: How long a process stage waits for more items before it starts a micro-batch, at
#: most, and after the last item came (a burst is over).
PROCESS_LINGER_S = 0.01
PROCESS_QUIET_S = 0.002
#: Items a process stage hands the pool at once at most (one ``_MapCall`` each).
PROCESS_MICRO_BATCH = 2048
#: Worker time a process stage's worker batch aims at, once an item's time is known.
PROCESS_BATCH_S = 0.02


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
                if not run_step(step, v, rt, i, s.sigs.get(i)):
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
        self.spec = (threads.max_workers, 0, 0, 0.0, True)

    def start(self, n: int) -> None:
        # The workers claim the stage's items from the flow and report each one in C++ (no
        # Python between two items but the stage's own). Items a shutdown keeps from
        # running are reported failed (EngineShutDown when they leave); a pool already
        # shut down raises here, which Stream._start turns into that error.
        self.pool.serve(self._call_id, self.stream.flow, self.k, n)

    def _call_id(self, i: int) -> bool:
        """True if item ``i`` ran through the stage; False (error recorded) if not."""
        return self.run_items(i, self.stream.work_rt.worker_view())


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
                work = arun_step(step, v, r, i, s.sigs.get(i), self.offload)
                hit = await (work if self.timeout is None else
                             asyncio.wait_for(work, self.timeout))
                if not hit:
                    s.cached[i] = False
        except asyncio.TimeoutError:
            err = TimeoutError(f"map item {i} did not finish within {self.timeout} s")
            err.add_note(f"gilfree: timeout={self.timeout} s (map item {i})")
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
        size = step.hints.get("batch_size") or stream.rt.batch_size or 32
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
                   cached, s.varying, s.base, rt, True, live, _serial)
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
                           EngineShutDown(f"map item {i} did not run to its end"))
                flags = [True] * len(ids)
            s.done(k, ids, flags)
        self.pool.submit(lambda: self._run(ids), done)


def _serial(task: Callable[[int], None], n: int) -> None:
    for j in range(n):
        task(j)


class _ProcessRunner(_Runner):
    """A process stage: its feeder thread hands the items ready for it to the
    ProcessEngine's pool in micro-batches (one ``_MapCall`` each: the pool runs one map
    at a time). A micro-batch is the id range of its items, the other ids of the range
    travelling as skipped placeholders, so workers number items as the map does."""

    def __init__(self, stream: Any, k: int, stage: Stage, processes: Any, base: dict):
        super().__init__(stream, k, stage)
        self.processes = processes
        self.timeout = stream.engine._item_timeout(stream.plan)
        self.part = StagePart(stage, stream.plan, stream.work_rt, base)
        self.spec = (PROCESS_MICRO_BATCH * 2, 0, 0, 0.0, False)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.reported: set[int] = set()  # ids of the running micro-batch already done
        self.item_s = 0.0  # worker seconds an item took (the last micro-batch), 0: unknown
        self.thread: threading.Thread | None = None
        self.stopped = False

    def dispatch(self, ids: list[int]) -> None:
        self.inbox.put(ids)
        if self.thread is None:
            self.thread = threading.Thread(target=self._feed, daemon=True,
                                           name="gilfree-stream-process-stage")
            self.thread.start()

    def close(self) -> None:
        self.stopped = True
        self.inbox.put(None)

    def _feed(self) -> None:
        s, k = self.stream, self.k
        while True:
            ids = self.inbox.get()
            if ids is None or self.stopped:
                return
            ids = list(ids)
            # Items reach this stage one by one as earlier stages finish them: wait a
            # moment for more, so that a micro-batch keeps every worker busy (a map per
            # item would cost a pool round trip each): until none came for
            # PROCESS_QUIET_S (a burst is over), PROCESS_LINGER_S at most.
            deadline = time.monotonic() + PROCESS_LINGER_S
            while len(ids) < PROCESS_MICRO_BATCH:
                now = time.monotonic()
                try:
                    more = self.inbox.get(timeout=max(0.0, min(deadline - now,
                                                               PROCESS_QUIET_S)))
                except queue.Empty:
                    break
                if more is None:
                    self.stopped = True
                    break
                ids += more
            if self.stopped:
                return
            if s._shut_down():  # not a new pool for a map whose engine was shut down
                for i in ids:
                    s.fail(i, s._shut_down_error(i))
                s.done(k, ids, [True] * len(ids))
                continue
            try:
                self._run(sorted(ids))
            except BaseException as exc:  # the pool broke, the engine shut down
                left = [i for i in ids if i not in self.reported]
                for i in left:
                    s.fail(i, exc)
                s.done(k, left, [True] * len(left))

    def _chunk(self, n: int) -> int:
        """Items per worker batch of an ``n``-row micro-batch: about PROCESS_BATCH_S of
        work each, at most two batches per worker. The planner's guided sizes (0, also
        while the item time is unknown) end a micro-batch with batches of a few items,
        each a round trip: ~5 us an item more of worker time in W9 (11 us items); items
        of milliseconds (W8's parse) need them to keep both workers busy to the end."""
        if not self.item_s:
            return 0
        most = -(-n // (2 * self.processes.workers))
        return max(1, min(most, int(PROCESS_BATCH_S / self.item_s)))

    def _run(self, ids: list[int]) -> None:
        """One micro-batch; each item is reported to the flow as soon as its worker
        batch is back (a later stage starts on it while the rest still run)."""
        s, part, k = self.stream, self.part, self.k
        lo = ids[0]
        wanted = set(ids)
        rows, skip = [], set()
        for j in range(lo, ids[-1] + 1):
            v = s.values.get(j) if j in wanted else None
            if v is None:
                rows.append(dict.fromkeys(part.names))
                skip.add(j - lo)
            else:
                rows.append(part.row(v, s.sigs.get(j)))
        reported = self.reported = set()

        def placed(out: list, a: int, b: int) -> None:
            done = [lo + j for j in range(a, b) if lo + j in wanted]
            reported.update(done)
            if done:
                s.done(k, done, [self._take(i, out[i - lo]) for i in done])

        t0 = time.perf_counter()
        out = self.processes._stage_map(part, rows, s.work_rt, skip=skip, timeout=self.timeout,
                                        offset=lo, deferred=True, stop=lambda: self.stopped,
                                        on_placed=placed, chunk=self._chunk(len(rows)))
        # An upper bound (the workers may have waited), fine for sizing batches.
        self.item_s = (time.perf_counter() - t0) * self.processes.workers / len(ids)
        rest = [i for i in ids if i not in reported]  # lost, timed out, or never ran
        if rest:
            s.done(k, rest, [self._take(i, out[i - lo]) for i in rest])

    def _take(self, i: int, result: Any) -> bool:
        """Item ``i``'s stage result into its values; True if it failed."""
        s = self.stream
        v = s.values.get(i)
        if v is None or result is None:  # closed meanwhile, or never ran
            return True
        if isinstance(result, BaseException):
            s.fail(i, result)
            return True
        if not self.part.take(result, v, s.sigs.get(i)):
            s.cached[i] = False
        return False
