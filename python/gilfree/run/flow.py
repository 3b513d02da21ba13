"""Streaming maps (``imap``): items flow through a plan's stages as soon as they are ready.

    consumer thread (iterates; holds the GIL      the C++ flow scheduler (_core.Flow)
    between C++ calls)
      next(stream) ──────────────────────────────▶ flow.next(pull, dispatch): waits
                                                    without the GIL (Ctrl-C <= 50 ms)
        pull(k): read k rows of the input ◀──────── room for k more items (read_ahead,
                 (lazily: a generator is read        stage 0's queue): backpressure
                 only as far as the flow has room)
        dispatch(stage, ids) ◀───────────────────── ids may start on a stage:
          inline   runs them here, now
          thread   pool.map_into(ids) ─────────────▶ C++ thread pool (its workers
                                                     report flow.done in C++)
          async    one coroutine per item ─────────▶ the engine's event loop
          batch    one pool.submit per batch ──────▶ (a DualNode: full, or lingered)
          process  the stage's feeder thread ──────▶ _MapCall micro-batches on the
                                                     ProcessEngine's pool
        executors report flow.done(stage, ids, failed) from their threads
      ◀── [(id, failed)]: the result (or error) is built here, events queued by the
          executors are delivered here, then yielded (in input order, or as they finish)

Executors run with "collect" semantics: a failed item leaves the flow holding its
exception, and the consumer applies the caller's policy at that item's position.
Closing the stream closes the flow: nothing more is read or started; running items
finish in the background and their results are dropped.
"""

from __future__ import annotations

import asyncio
import copy
import queue
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

from ..errors import EngineShutDown
from ..model.hashing import hash_strings
from ..model.stateful import end_map, new_map
from .execute import run_step
from .execute_async import arun_step
from .execute_batch import _run_batch
from .runtime import Runtime
from .stages import INLINE, PROCESS, THREAD, Stage, compile_stages

#: A batch stage sends a partial batch after its oldest item waited this long.
LINGER_S = 0.01
_ALL_INLINE = {"thread": INLINE, "async": INLINE, "process": INLINE}
#: How long a process stage waits for more items before it starts a micro-batch.
PROCESS_LINGER_S = 0.01
#: Items a process stage hands the pool at once at most (one ``_MapCall`` each).
PROCESS_MICRO_BATCH = 2048


class _Lifecycle:
    """What both kinds of stream do alike: the map starts at the first ``next()`` (its
    callbacks fire in the iterating thread; a failing @stateful constructor is tried
    once per map), ends once, and notices an ``engine.shutdown()`` made meanwhile."""

    engine: Any
    rt: Runtime
    total: int | None
    collect: bool
    announced = closed = False
    map_number = 0

    def _begin(self) -> None:
        self.announced = True
        self.generation = self.engine._shutdowns
        self.t_map = time.perf_counter()
        self.map_number = new_map()
        if self.rt.callbacks:
            self.rt.emit("on_map_start", self.total)

    def _end(self) -> None:
        if self.announced:
            if self.rt.callbacks:
                self.rt.emit("on_map_end", time.perf_counter() - self.t_map)
            end_map(self.map_number)

    def _shut_down(self) -> bool:
        return self.announced and self.engine._shutdowns != self.generation

    def _shut_down_error(self, i: int | None = None) -> EngineShutDown:
        what = ("items that had not run to their end did not run" if i is None else
                f"map item {i} did not run to its end")
        return EngineShutDown(f"{self.engine!r} was shut down during the map: {what}")

    def __iter__(self) -> Any:
        return self

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Stream(_Lifecycle):
    """The iterator ``imap`` returns. See the module docstring."""

    def __init__(self, engine: Any, plan: Any, base: dict, rows: Iterator[dict], rt: Runtime,
                 *, ordered: bool, read_ahead: int | None, collect: bool,
                 total: int | None, mapped: set[str], remote_base: dict | None = None):
        from .._native import core

        self.engine, self.plan, self.base, self.rt = engine, plan, base, rt
        self.collect = collect
        self.rows = rows
        self.work_rt = copy.copy(rt)
        self.work_rt.collect = True  # executors keep going; the policy is applied here
        self.values: dict[int, dict] = {}
        self.sigs: dict[int, dict | None] = {}
        self.cached: dict[int, bool] = {}
        self.started: dict[int, float] = {}
        self.errors: dict[int, BaseException] = {}
        self.next_id = 0
        self.ready: deque = deque()
        self.closed = False
        self.varying = set(plan.produced) | mapped
        if engine.default_executor is None:  # SeqEngine: everything inline, one by one
            self.stages = compile_stages(plan, INLINE, _ALL_INLINE, mapped)
        else:
            self.stages = compile_stages(plan, engine.default_executor,
                                         engine.executor_aliases, mapped)
        self.runners = [_runner(self, k, st, remote_base if remote_base is not None else base)
                        for k, st in enumerate(self.stages)]
        capacity = max(r.spec[0] * max(1, r.spec[2]) for r in self.runners)
        self.read_ahead = read_ahead or min(8192, max(64, 2 * capacity))
        specs = [(r.spec[0], self.read_ahead, r.spec[2], r.spec[3]) for r in self.runners]
        self.flow = core().Flow(specs, self.read_ahead, ordered)
        self.total = total
        self.input_ended = False

    # -- the iterator ------------------------------------------------------------------
    def __next__(self) -> Any:
        if not self.announced and not self.closed:
            self._begin()
        while not self.ready:
            if self.closed:
                raise StopIteration
            if self._shut_down():
                return self._after_shutdown()
            try:
                got = self.flow.next(self._pull, self._dispatch)
            except BaseException:
                self.close()
                raise
            finally:
                self.rt.flush()
            if not got:
                self.close()
                raise StopIteration
            self.ready.extend(got)
        i, failed = self.ready.popleft()
        return self._leave(i, failed)

    def close(self) -> None:
        """Stop: nothing more is read or started (running items finish unseen)."""
        if self.closed:
            return
        self.closed = True
        self.flow.close()
        for r in self.runners:
            r.close()
        self.values.clear()
        self.ready.clear()
        self.rt.flush()
        self._end()

    def _after_shutdown(self) -> Any:
        """The engine was shut down: under "raise" that is the map's error; under
        "collect" every item in the map holds one, and nothing more is read."""
        left = sorted(self.values)
        self.flow.close()
        if not self.collect or not left:
            self.close()
            if self.collect and self.input_ended:
                raise StopIteration
            # Under "collect" too: the input had not ended, the map was cut short.
            raise self._shut_down_error()
        for i in left:
            self.errors[i] = self._shut_down_error(i)
        self.ready.extend((i, True) for i in left)
        i, failed = self.ready.popleft()
        return self._leave(i, failed)

    # -- what the flow asks for (consumer thread, GIL held) -----------------------------
    def _pull(self, k: int) -> tuple[int, bool]:
        rt, plan = self.rt, self.plan
        n = 0
        for row in self.rows:
            i = self.next_id
            self.next_id += 1
            v = self.base.copy()
            v.update(row)
            self.values[i] = v
            self.sigs[i] = {} if rt.tracing else None
            self.cached[i] = True
            self.started[i] = time.perf_counter()
            if rt.callbacks:
                rt.emit("on_map_item_start", i)
                rt.emit("on_pipeline_start", plan.pipeline_id, dict(v))
            n += 1
            if n == k:
                return n, False
        self.input_ended = True
        return n, True

    def _dispatch(self, stage: int, ids: list[int]) -> None:
        try:
            self.runners[stage].dispatch(ids)
        except Exception:
            if self.engine._shutdowns == self.generation:
                raise
            # Shut down meanwhile (its pool refused the items): they fail with that.
            for i in ids:
                self.fail(i, self._shut_down_error(i))
            self.flow.done(stage, ids, [True] * len(ids))

    def done(self, stage: int, ids: list[int], failed: list[bool]) -> None:
        """From any executor thread."""
        self.flow.done(stage, ids, failed)

    def fail(self, i: int, exc: BaseException) -> None:
        self.errors.setdefault(i, exc)

    # -- an item leaves ------------------------------------------------------------------
    def _leave(self, i: int, failed: bool) -> Any:
        rt = self.rt
        started = self.started.pop(i, time.perf_counter())
        values = self.values.pop(i, None)
        sigs = self.sigs.pop(i, None)
        cached = self.cached.pop(i, False)
        if failed or values is None:
            exc = self.errors.pop(i, None) or (
                self._shut_down_error(i) if self._shut_down() else
                EngineShutDown(f"map item {i} did not run to its end"))
            if rt.callbacks:
                rt.emit("on_map_item_end", i, time.perf_counter() - started)
            if self.collect:
                return exc
            self.close()
            raise exc
        out = {o: values[o] for o in self.plan.outputs}
        if rt.callbacks:
            now = time.perf_counter()
            rt.emit("on_pipeline_end", self.plan.pipeline_id, out, now - started)
            if cached and self.plan.steps and sigs is not None:
                rt.emit("on_map_item_cached", i,
                        hash_strings(*(sigs.get(o, "") for o in self.plan.outputs)))
            rt.emit("on_map_item_end", i, now - started)
        return out


def iterate(stream: Any) -> Iterator[Any]:
    """What ``imap`` returns: a generator over ``stream``, so that a ``for`` loop that
    breaks, ``close()``, ``del`` or a ``with closing(...)`` closes the map at once (the
    stream itself stays referenced by its running items until they end)."""
    try:
        yield from stream
    finally:
        stream.close()


# -- stage runners ---------------------------------------------------------------------
def _runner(stream: Stream, k: int, stage: Stage, base: dict) -> "_Runner":
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

    #: (capacity, queue bound (set by the stream), batch size, linger seconds)
    spec: tuple = (1, 0, 0, 0.0)

    def __init__(self, stream: Stream, k: int, stage: Stage):
        self.stream, self.k, self.stage = stream, k, stage

    def dispatch(self, ids: list[int]) -> None:
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
    spec = (64, 0, 0, 0.0)

    def dispatch(self, ids: list[int]) -> None:
        rt = self.stream.work_rt
        failed = [not self.run_items(i, rt) for i in ids]
        self.stream.done(self.k, ids, failed)


class _ThreadRunner(_Runner):
    def __init__(self, stream: Stream, k: int, stage: Stage, threads: Any):
        super().__init__(stream, k, stage)
        self.pool = threads.pool
        self.spec = (threads.max_workers, 0, 0, 0.0)

    def dispatch(self, ids: list[int]) -> None:
        # One hand-over for all of them; the pool's workers report each item to the flow
        # in C++ (no Python callback per item). Ids a shutdown keeps from running are
        # reported failed (EngineShutDown when they leave); a pool already shut down
        # raises here, which Stream._dispatch turns into that error.
        self.pool.map_into(self._call_id, ids, self.stream.flow, self.k)

    def _call_id(self, i: int) -> bool:
        """True if item ``i`` ran through the stage; False (error recorded) if not."""
        return self.run_items(i, self.stream.work_rt.worker_view())


class _LoopRunner(_Runner):
    """Items as coroutines on the engine's event loop (async nodes; or a deadline)."""

    def __init__(self, stream: Stream, k: int, stage: Stage, threads: Any,
                 timeout: float | None):
        super().__init__(stream, k, stage)
        self.loop = threads.loop_thread.loop
        self.offload = threads._offload(threads.pool)
        self.timeout = timeout
        self.spec = (threads._concurrency(), 0, 0, 0.0)

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

    def __init__(self, stream: Stream, k: int, stage: Stage, engine: Any):
        super().__init__(stream, k, stage)
        step = stage.steps[0]
        size = step.hints.get("batch_size") or stream.rt.batch_size or 32
        self.in_thread = stage.executor != INLINE
        self.pool = engine._lend(THREAD).pool if self.in_thread else None
        self.spec = (4 if self.in_thread else 1, 0, size, LINGER_S)

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

    def __init__(self, stream: Stream, k: int, stage: Stage, processes: Any, base: dict):
        from ..engines.processes import _StagePart

        super().__init__(stream, k, stage)
        self.processes = processes
        self.timeout = stream.engine._item_timeout(stream.plan)
        self.part = _StagePart(stage, stream.plan, stream.work_rt, base)
        self.spec = (PROCESS_MICRO_BATCH * 2, 0, 0, 0.0)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.reported: set[int] = set()  # ids of the running micro-batch already done
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
            # item would cost a pool round trip each).
            deadline = time.monotonic() + PROCESS_LINGER_S
            while len(ids) < PROCESS_MICRO_BATCH:
                try:
                    more = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
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

        out = self.processes._stage_map(part, rows, s.work_rt, skip=skip, timeout=self.timeout,
                                        offset=lo, deferred=True, stop=lambda: self.stopped,
                                        on_placed=placed)
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


class WindowStream(_Lifecycle):
    """``imap`` on an engine that runs whole maps elsewhere (DaskEngine): the input is
    read ``window`` items at a time and each window is one map (``first`` numbers its
    items as the stream does; the stream announces the map once). Memory stays bounded;
    a window's results come together, in input order."""

    def __init__(self, engine: Any, plan: Any, base: dict, rows: Iterator[dict],
                 rt: Runtime, *, window: int, collect: bool, total: int | None):
        self.engine, self.plan, self.base, self.rows, self.rt = engine, plan, base, rows, rt
        self.window, self.collect, self.total = window, collect, total
        self.work_rt = copy.copy(rt)
        self.work_rt.collect = True
        self.buffer: deque = deque()
        self.first = 0
        self.exhausted = False

    def __next__(self) -> Any:
        if not self.announced and not self.closed:
            self._begin()
        while not self.buffer:
            if self.closed or self.exhausted:
                self.close()
                raise StopIteration
            if self._shut_down():  # no window starts after engine.shutdown()
                self.close()
                if self.collect:
                    raise StopIteration
                raise self._shut_down_error()
            try:
                rows = []
                for row in self.rows:
                    rows.append(row)
                    if len(rows) == self.window:
                        break
                else:
                    self.exhausted = True
                if rows:
                    self.buffer.extend(self.engine._execute_map(
                        self.plan, self.base, rows, self.work_rt, first=self.first,
                        announce=False))
                    self.first += len(rows)
            except BaseException:
                self.close()
                raise
        result = self.buffer.popleft()
        if isinstance(result, BaseException) and not self.collect:
            self.close()
            raise result
        return result

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.buffer.clear()
        self._end()
