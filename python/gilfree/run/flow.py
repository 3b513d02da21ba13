"""Streaming maps (``imap``): items flow through a plan's stages as soon as they are ready.

    consumer thread (iterates; holds the GIL      the C++ flow scheduler (_core.Flow)
    between C++ calls)
      next(stream) ──────────────────────────────▶ flow.next(pull, dispatch): waits
                                                    without the GIL (Ctrl-C <= 50 ms)
        pull(k): read k rows of the input ◀──────── room for k more items (read_ahead,
                 (lazily: a generator is read        stage 0's queue): backpressure; a
                 only as far as the flow has room;   pull that read fewer (a slow source)
                 fewer after 5 ms or a slow read)    returns finished items first
        dispatch(stage, ids) ◀───────────────────── ids may start on a stage:
          inline   runs them here, now
        start(stage, n) ◀────────────────────────── a claimed (thread) stage needs workers:
          thread   pool.serve(n) ──────────────────▶ C++ thread pool; its workers claim
                                                     the stage's items from the flow and
                                                     report flow.done, in C++
        (before each flow.next: a thread stage with a pace to keep (AutoEngine) re-sizes
         itself by its latency of the moment: runner.adapt -> flow.set_capacity)
          async    one coroutine per item ─────────▶ the engine's event loop
          batch    one pool.submit per batch ──────▶ (a DualNode: full, or lingered)
          process  the stage's feeder thread ──────▶ pool.stream(): a worker with room
                                                     takes the lowest ready ids
        (the runners: run/stage_runners.py) report flow.done(stage, ids, failed)
      ◀── [(id, failed)]: the result (or error) is built here, events queued by the
          executors are delivered here, then yielded (in input order, or as they finish)

Executors run with "collect" semantics: a failed item leaves the flow holding its
exception, and the consumer applies the caller's policy at that item's position.
Closing the stream closes the flow: nothing more is read or started; running items
finish in the background and their results are dropped.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from typing import Any, Iterator

from ..errors import EngineShutDown
from ..model.hashing import hash_strings
from ..model.stateful import end_map, new_map
from .runtime import Runtime
from .stage_runners import runner
from .stages import INLINE, compile_stages

_ALL_INLINE = {"thread": INLINE, "async": INLINE, "process": INLINE}
#: One read of the input stops after this long even with room for more items (their
#: work starts, and a slow source's finished items are returned before it is read again).
PULL_BUDGET_S = 0.005
#: A read of one input item that took this long ends the read (see Stream._pull).
SLOW_READ_S = 0.001
#: The default read-ahead's bounds (a few times what the stages run at once).
MIN_READ_AHEAD, MAX_READ_AHEAD = 64, 8192


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
    #: The map's number of this stream's first item, and whether it says on_map_start:
    #: the stream may be the rest of a map whose first items ran before it (AutoEngine
    #: measured them), which announced the map.
    offset = 0
    announce = True

    def _begin(self) -> None:
        self.announced = True
        self.generation = self.engine._shutdowns
        self.t_map = time.perf_counter()
        self.map_number = new_map()
        if self.rt.callbacks and self.announce:
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
                f"map item {self.offset + i} did not run to its end")
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
                 total: int | None, mapped: set[str], remote_base: dict | None = None,
                 offset: int = 0, announce: bool = True):
        from .._native import core

        self.engine, self.plan, self.base, self.rt = engine, plan, base, rt
        self.offset, self.announce = offset, announce
        self.collect = collect
        self.rows = iter(rows)
        self.work_rt = rt.with_collect()  # executors keep going; the policy is applied here
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
        self.runners = [runner(self, k, st, remote_base if remote_base is not None else base)
                        for k, st in enumerate(self.stages)]
        # Thread stages that re-size themselves as their latency changes (AutoEngine).
        self.adaptive = [r for r in self.runners if getattr(r, "pace", None)]
        # A few times what the stages run at once, as far as they tell now; a stage that
        # finds it runs more (a process stage of cheap items: thousands a batch) raises
        # it (more_at_once), unless the caller gave it.
        self.grows = read_ahead is None
        self.growing = threading.Lock()
        self.read_ahead = read_ahead or self._read_ahead_for(
            max(r.at_once() for r in self.runners))
        specs = [(r.spec[0], self.read_ahead, r.spec[2], r.spec[3], r.spec[4])
                 for r in self.runners]
        self.flow = core().Flow(specs, self.read_ahead, ordered)
        self.total = total
        self.input_ended = False
        # The input's own error (a generator that raised, zip inputs of unequal lengths):
        # raised where the input ended, after the items read before it.
        self.input_error: BaseException | None = None

    @staticmethod
    def _read_ahead_for(at_once: int) -> int:
        return min(MAX_READ_AHEAD, max(MIN_READ_AHEAD, 2 * at_once))

    def more_at_once(self, n: int) -> None:
        """A stage measured that it runs ``n`` items at once (any thread): the default
        read-ahead grows to match (it never shrinks: items read stay read)."""
        read_ahead = self._read_ahead_for(n)
        if not self.grows or read_ahead <= self.read_ahead:
            return
        with self.growing:  # (two process stages' feeder threads)
            if read_ahead > self.read_ahead:
                self.flow.set_read_ahead(read_ahead)  # (first: a batch stage sizes by it)
                self.read_ahead = read_ahead

    # -- the iterator ------------------------------------------------------------------
    def __next__(self) -> Any:
        if not self.announced and not self.closed:
            self._begin()
            for r in self.runners:
                r.begin()
        while not self.ready:
            if self.closed:
                raise StopIteration
            if self._shut_down():
                return self._after_shutdown()
            if self.adaptive:
                now = time.perf_counter()
                for r in self.adaptive:
                    r.adapt(now)
            try:
                with self.engine._nodes_map_here():  # (inline nodes run in this thread)
                    got = self.flow.next(self._pull, self._dispatch, self._start)
            except BaseException:
                self.close()
                raise
            finally:
                self.rt.flush()
            if not got:
                if self._shut_down():  # a stage could not start for it
                    return self._after_shutdown()
                self.close()
                if self.input_error is not None:
                    raise self.input_error
                raise StopIteration
            self.ready.extend(got)
        i, failed = self.ready.popleft()
        return self._leave(i, failed)

    def close(self) -> None:
        """Stop: nothing more is read or started (running items finish unseen)."""
        if self.closed:
            return
        self.closed = True
        if self.rt.on_stream_end is not None and self.announced:
            # Each stage's items over the time some item of it ran: the stages overlap,
            # so a stage's own pace is what it did while it had work.
            stats = self.flow.stats()
            self.rt.on_stream_end(
                [([s.name for s in st.steps], x["done_total"], x["active_s"])
                 for st, x in zip(self.stages, stats["stages"])],
                self.offset + stats["left"])
        self.flow.close()
        for r in self.runners:
            r.close()
        self.values.clear()
        self.ready.clear()
        self.rt.flush()
        if self.rt.callbacks and self.started:
            # Items that started and will not be yielded end here (their results, if
            # they come, are dropped): every on_map_item_start has its end.
            now = time.perf_counter()
            for i, t in sorted(self.started.items()):
                self.rt.emit("on_map_item_end", self.offset + i, now - t)
            self.started.clear()
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
        """Up to ``k`` more items from the input; fewer once PULL_BUDGET_S has passed, or
        right after a read that took SLOW_READ_S (a slow source, e.g. a generator over a
        queue: its next read would likely wait too): the items read start now, and those
        finished reach the consumer before the input is read again. An item of a source
        that blocks may still wait for the read of the next one. (A read that only
        waited for the GIL looks slow too: that pull ends early, nothing else changes.)"""
        rt, base, values = self.rt, self.base, self.values
        # (What only callbacks and tracing read is kept only for them: this runs per item.)
        tracing, callbacks = rt.tracing, bool(rt.callbacks)
        n = 0
        before = time.perf_counter()
        until = before + PULL_BUDGET_S
        rows = self.rows
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except Exception as exc:  # the items read before it still run and come first
                self.input_error = input_broke(exc, self.offset + self.next_id)
                break
            got = time.perf_counter()
            i = self.next_id
            self.next_id = i + 1
            v = base.copy()
            v.update(row)
            values[i] = v
            if tracing:
                self.sigs[i] = {}
            if callbacks:  # (it starts when its first stage runs it: item_starts)
                self.cached[i] = True
            n += 1
            if n == k or got > until or got - before > SLOW_READ_S:
                return n, False
            # (The next read is timed from here; callbacks may have taken a while.)
            before = time.perf_counter() if callbacks else got
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

    def _start(self, stage: int, n: int) -> None:
        try:
            self.runners[stage].start(n)
        except Exception:
            if self.engine._shutdowns == self.generation:
                raise
            # Shut down meanwhile (its pool refused the workers): the stream ends with
            # that error (Stream.__next__ -> _after_shutdown).
            self.flow.close()

    def item_starts(self, i: int, rt: Runtime) -> None:
        """Callbacks on: item ``i`` starts, in its first stage's runner, on that
        executor's thread (``rt`` queues the events there for the iterating thread). Not
        when it is read: an item read ahead may never start (a close)."""
        v = self.values.get(i)
        if v is None or self.closed:
            return
        self.started[i] = time.perf_counter()
        rt.emit("on_map_item_start", self.offset + i)
        rt.emit("on_pipeline_start", self.plan.pipeline_id, dict(v))

    def done(self, stage: int, ids: list[int], failed: list[bool]) -> None:
        """From any executor thread."""
        self.flow.done(stage, ids, failed)

    def fail(self, i: int, exc: BaseException) -> None:
        self.errors.setdefault(i, exc)

    # -- an item leaves ------------------------------------------------------------------
    def _leave(self, i: int, failed: bool) -> Any:
        rt = self.rt
        values = self.values.pop(i, None)
        cached = self.cached.pop(i, False)  # (the runners mark the items they computed)
        if not failed and values is not None and not rt.callbacks:  # (the usual case)
            if rt.tracing:  # (a cache: the item's signatures were kept for it)
                self.sigs.pop(i, None)
            return {o: values[o] for o in self.plan.outputs}
        started = self.started.pop(i, None)
        sigs = self.sigs.pop(i, None)
        n = self.offset + i  # the item's number in the map
        if started is None:  # it never started (a shutdown, a pool that refused it)
            started = time.perf_counter()
            if rt.callbacks:
                rt.emit("on_map_item_start", n)
        if failed or values is None:
            exc = self.errors.pop(i, None) or (
                self._shut_down_error(i) if self._shut_down() else
                EngineShutDown(f"map item {n} did not run to its end"))
            if rt.callbacks:
                rt.emit("on_map_item_end", n, time.perf_counter() - started)
            if self.collect:
                return exc
            self.close()
            raise exc
        out = {o: values[o] for o in self.plan.outputs}
        if rt.callbacks:
            now = time.perf_counter()
            rt.emit("on_pipeline_end", self.plan.pipeline_id, out, now - started)
            if cached and self.plan.steps and sigs is not None:
                rt.emit("on_map_item_cached", n,
                        hash_strings(*(sigs.get(o, "") for o in self.plan.outputs)))
            rt.emit("on_map_item_end", n, now - started)
        return out


def input_broke(exc: BaseException, read: int) -> BaseException:
    """``exc``, raised by a map's input after ``read`` items, noted as such: a stream
    raises it where the input ended, after those items' results."""
    exc.add_note(f"gilfree: the map's input raised after its item {read - 1}" if read else
                 "gilfree: the map's input raised before its first item")
    return exc


def take_rows(rows: Iterator[dict], n: int, read: int) -> tuple[list[dict],
                                                                BaseException | None]:
    """Up to ``n`` more rows of a map's input (``read`` read before), and the error it
    raised reading them (None: none; the rows read before the error are kept)."""
    taken: list[dict] = []
    try:
        taken.extend(itertools.islice(rows, n))
    except Exception as exc:
        return taken, input_broke(exc, read + len(taken))
    return taken, None


def iterate(stream: Any) -> Iterator[Any]:
    """What ``imap`` returns: a generator over ``stream``, so that a ``for`` loop that
    breaks, ``close()``, ``del`` or a ``with closing(...)`` closes the map at once (the
    stream itself stays referenced by its running items until they end)."""
    try:
        yield from stream
    finally:
        stream.close()


class WindowStream(_Lifecycle):
    """``imap`` on an engine that runs whole maps elsewhere (DaskEngine): the input is
    read ``window`` items at a time and each window is one map (``first`` numbers its
    items as the stream does; the stream announces the map once). Memory stays bounded;
    a window's results come together, in input order."""

    def __init__(self, engine: Any, plan: Any, base: dict, rows: Iterator[dict],
                 rt: Runtime, *, window: int, collect: bool, total: int | None):
        self.engine, self.plan, self.base, self.rows, self.rt = engine, plan, base, rows, rt
        self.window, self.collect, self.total = window, collect, total
        self.work_rt = rt.with_collect()
        self.buffer: deque = deque()
        self.first = 0
        self.exhausted = False
        self.input_error: BaseException | None = None  # raised after the items before it

    def __next__(self) -> Any:
        if not self.announced and not self.closed:
            self._begin()
        while not self.buffer:
            if self.closed or self.exhausted:
                broke = None if self.closed else self.input_error
                self.close()
                if broke is not None:  # the input raised: after the items before it
                    raise broke
                raise StopIteration
            if self._shut_down():  # no window starts after engine.shutdown(): the input
                self.close()       # had not ended (either policy, as Stream does)
                raise self._shut_down_error()
            try:
                rows, self.input_error = take_rows(self.rows, self.window, self.first)
                self.exhausted = len(rows) < self.window or self.input_error is not None
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
