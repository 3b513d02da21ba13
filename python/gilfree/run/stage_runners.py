"""The executors of a streaming map's stages (run/flow.py): each runner starts the items
the flow scheduler dispatches to its stage and reports them done, from its own threads.

    inline   runs them in the iterating thread, at once
    thread   a claimed stage: ThreadPool.serve starts workers that take the stage's
             items from the flow themselves and report each done to it, in C++
    async    one coroutine per item on the engine's loop (async nodes, or a deadline)
    batch    a DualNode: one pool call per batch the flow sends (full, or lingered)
    process  a feeder thread runs the ProcessEngine's pool as a stream over the ready
             ids (engines/process_stream.py): a worker with room takes a run of them;
             each batch's items are reported as they come back (run/stage_process.py)

Runners work with "collect" semantics: a failed item's error is recorded on the stream
(``stream.fail``) and the item leaves the flow failed; the stream applies the policy.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque
from typing import Any, Callable, Iterator

from ..errors import EngineShutDown
from ..model.plan import is_plain
from .cores import usable_cores
from .execute import run_step
from .execute_async import arun_step
from .execute_batch import _run_batch
from .runtime import Runtime, _store, annotate, invoke
from .stages import (BATCH_ADAPT, INLINE, PROCESS, STAGE_PACE, STAGE_THREADS, THREAD,
                     Stage, largest_hint)

#: A batch stage sends a partial batch after its oldest item waited this long.
LINGER_S = 0.01
#: A batch stage's batch size when neither the node nor the engine says.
STREAM_BATCH_SIZE = 32
#: A re-sized thread stage (STAGE_PACE) looks at its latency this often, over its last
#: LATENCY_CALLS calls (at least MIN_CALLS of them), and changes its threads only by
#: more than RESIZE_BY (either way): a stage does not flap between two sizes.
ADAPT_S, LATENCY_CALLS, MIN_CALLS, RESIZE_BY = 0.05, 64, 8, 0.25


def runner(stream: Any, k: int, stage: Stage, base: dict) -> "_Runner":
    """The runner of ``stream``'s stage ``k``."""
    engine = stream.engine
    if stage.executor == PROCESS:
        from .stage_process import ProcessRunner  # (it builds on _Runner, here)

        return ProcessRunner(stream, k, stage, engine._lend(PROCESS), base)
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

    def at_once(self) -> int:
        """Items the stage may run at once, as far as it can tell before it runs (the
        stream's default read-ahead is a few times the largest)."""
        return self.spec[0] * max(1, self.spec[2])

    def begin(self) -> None:
        """The stream is being iterated (its close() will come): threads may start."""

    def close(self) -> None:
        # Items still in the stream may be running on the threads of the engine that
        # lends this stage its pool: they finish unseen, and its shutdown() does not wait
        # for them (a hung call may never return).
        threads = getattr(self, "threads_engine", None)
        if threads is not None and self.stream.values:
            threads.calls_abandoned = True

    def run_items(self, i: int, rt: Runtime) -> bool:
        """The stage's steps for item ``i``; False (error recorded) if one failed."""
        s = self.stream
        v = s.values.get(i)
        if v is None:  # the stream was closed meanwhile
            return False
        if self.k == 0 and rt.callbacks:
            s.item_starts(i, rt)
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
        self.threads_engine = threads
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
                is_plain(st) for st in steps):
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
        if self.k == 0 and r.callbacks:
            s.item_starts(i, r)
        try:
            for step in self.stage.steps:
                work = arun_step(step, v, r, s.offset + i, s.sigs.get(i), self.offload)
                hit = await (work if self.timeout is None else
                             asyncio.wait_for(work, self.timeout))
                if not hit:
                    s.cached[i] = False
        except asyncio.TimeoutError:
            n = s.offset + i
            err = TimeoutError(f"map item {n} did not finish within {self.timeout} s "
                               f"(node {step.name!r})")
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
        # AutoEngine's size follows the calls' time (execute_batch.BatchAdapt); a flow's
        # batch stage holds at least 2 and at most its queue bound (read-ahead).
        self.adapt = step.hints.get(BATCH_ADAPT)
        if self.adapt is not None:
            size = max(2, self.adapt.size)  # (the read-ahead is made from it: >= 8x)
        self.size = size
        self.in_thread = stage.executor != INLINE
        self.threads_engine = engine._lend(THREAD) if self.in_thread else None
        self.pool = self.threads_engine.pool if self.in_thread else None
        # Batches in flight: 4, or as many as may call at once (max_concurrency: one
        # waiting for its turn would be cut too early, and its call timed too long).
        at_once = min(4, step.hints.get("max_concurrency") or 4) if self.in_thread else 1
        self.spec = (at_once, 0, size, LINGER_S, False)

    def _run(self, ids: list[int]) -> list[bool]:
        s = self.stream
        live = [i for i in ids if i in s.values]
        values = [s.values[i] for i in live]
        failed: list = [None] * len(live)
        cached = [s.cached.get(i, False) for i in live]
        rt = s.work_rt.worker_view() if self.in_thread else s.work_rt
        if self.k == 0 and rt.callbacks:
            for i in live:
                s.item_starts(i, rt)
        _run_batch(self.stage.steps[0], values, [s.sigs.get(i) for i in live], failed,
                   cached, s.varying, s.base, rt, True, [s.offset + i for i in live], _serial)
        for i, err, hit in zip(live, failed, cached):
            s.cached[i] = hit
            if err is not None:
                s.fail(i, err)
        bad = {i for i, err in zip(live, failed) if err is not None}
        # (_run_batch observed the call; with a read-ahead of 1, batches hold one item)
        if self.adapt is not None and s.read_ahead > 1:
            size = self._bounded(self.adapt.size)
            if size != self.size:
                self.size = size
                s.flow.set_batch_size(self.k, size)
        return [i in bad or i not in s.values for i in ids]

    def _bounded(self, size: int) -> int:
        return max(2, min(self.stream.read_ahead, size))

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
