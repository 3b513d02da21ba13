"""``AutoEngine``: every node on the executor that suits it, chosen from measurements.

    engine.map(pipeline, ...)
      a sync node (or a DualNode) this engine has not measured?
        yes: the first PROBE_ITEMS items run here, one after another (they are the map's
             own items: no call runs twice), every call of those nodes timed: wall
             time, the thread's CPU time, and how often a helper thread got the GIL
             meanwhile (Ticker); what the timing itself costs (timing_floor) is
             taken off each call
      per node (choose(), per map: a node's measurements are kept, the choice also
      depends on the map's size):
        an executor= hint (the node's, or engine.configure) -> that, always
        async def                      -> the event loop
        DualNode                       -> batches on threads: at most MAX_BATCH_S of its
                                          measured work per batch; one at a time if
                                          its batch call holds the GIL
        nested pipeline                -> threads (it runs whole; not measured)
        a call under CHEAP_S           -> inline, in the stage of a neighbour (fused)
        mostly waiting (CPU < WAITING) -> threads, as many as Little's law says
                                          (auto_threads.py)
        CPU that releases the GIL      -> threads, one per core at most
        CPU that holds the GIL         -> processes when the map's work pays for them,
                                          else inline
      a node for processes whose function, shared input, first item's input or
      measured output does not pickle stays here (auto_place.py)
      the other items run as one map with those executors: ThreadEngine's paths
      (stages.py), a ProcessEngine of this engine's own for "process" nodes; the map
      times each of its stages (items/s per stage in explain()); an item whose value
      still could not travel to or from a worker process runs again here (auto_rerun.py)

``imap`` measures the same way: its first items run here, timed, and come first; the
rest streams (run/flow.py, numbered on from them). ``explain()`` shows the choices of
the last map and the numbers behind them.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

from ..model.plan import DUAL, PIPE, Plan, Step
from ..run.execute import Runtime, execute_map
from ..run.execute_batch import BatchAdapt
from ..run.runtime import inner_map_engine, maps_on
from ..run.stage_runners import STREAM_BATCH_SIZE
from ..run.stages import (ASYNC, BATCH_ADAPT, INLINE, PROCESS, STAGE_PACE, STAGE_THREADS,
                          THREAD, fans_out, is_fanout)
from .auto_place import fuse, sendable, unsent_outputs
from .auto_rerun import remembering, run_rows
from .auto_stream import probed_stream
from .auto_threads import size_threads
from .auto_timing import (Ticker, forget_changed, less_floor, probing, sampled, timed,
                          timing_floor)
from .explain import Choice, Explanation, Measure, resized, stream_ended, time_stages
from .threads import ThreadEngine, auto_batch_size, limit_concurrency, usable_cores

#: explain()'s executor for a nested map whose inner items run as one map (fanout.py)
FANOUT = "fan-out"
#: Items of a map that run here, timed, when some node has not been measured: the
#: fastest of these calls counts (the first may build a @stateful object).
PROBE_ITEMS = 2
#: A call shorter than this stays inline: a hand-over to a thread or a process costs
#: more (W4's "x + 1" is ~0.1 us; a thread pool hand-over ~1-3 us).
CHEAP_S = 10e-6
#: A call whose thread CPU time is under this share of its wall time mostly waits.
WAITING = 0.5
#: GIL test: a call this long or longer says whether it let the helper thread run.
GIL_TEST_MIN_S = 0.003
#: Helper runs per ms of a call at or above which the call released the GIL. The helper
#: sleeps 0.5 ms between runs: ~1.7 runs/ms beside a call that releases the GIL, ~0.2
#: beside one that holds it (it gets the GIL at each 5 ms switch interval).
RELEASED_RUNS_PER_MS = 0.8
#: A DualNode's batch holds at most this much measured work (seconds): a huge map does
#: not make huge batches (memory, and the first results wait for a whole batch).
MAX_BATCH_S = 0.5
#: A node that maps runs each call whole in a worker process when its map has this many
#: items per worker or more (enough to keep every worker busy to the end); with fewer,
#: its calls run here and their inner items spread over the workers (AutoEngine._mapper).
MAPPER_ITEMS_PER_WORKER = 4
#: CPU work of a map (items x CPU per call) below which worker processes do not pay
#: for the transfers and the hand-over (a warm pool; starting one costs ~50 ms more).
PROCESS_MIN_WORK_S = 0.05


def _key(step: Step) -> tuple[str, str]:
    return step.name, step.code_hash


class AutoEngine(ThreadEngine):
    """Runs each node on the executor that suits it, measured on the first items.

    No configuration needed. ``max_workers`` caps the driver's threads (I/O nodes),
    ``workers`` the worker processes (pure-Python CPU nodes); the other options are
    ThreadEngine's. An ``executor=`` hint on a node, or ``engine.configure(name,
    executor=...)``, always wins. ``explain()`` tells what was chosen and why.
    A node whose function calls ``Pipeline.map`` (no engine given) maps on this engine,
    which picks the level to run in parallel (``_mapper``).
    """

    def __init__(self, max_workers: int | None = None, batch_size: int | None = None, *,
                 workers: int | None = None, **options: Any):
        super().__init__(max_workers, batch_size, **options)
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"AutoEngine: workers={workers!r} must be a positive integer")
        self.workers = workers or usable_cores()
        self._measures: dict[tuple[str, str], Measure] = {}
        # A DualNode's batch size as it followed its calls' time in the last map: the
        # next map's starts from it (execute_batch.BatchAdapt), by node.
        self._batches: dict[tuple[str, str], BatchAdapt] = {}
        self._last: Explanation | None = None
        self._depth = threading.local()  # maps inside a map (nested maps, run/fanout.py)
        self._inner: list[Choice] = []
        #: Nodes seen to map themselves (their function calls Pipeline.map): the most
        #: inner items one call mapped.
        self._mappers: dict[tuple[str, str], int] = {}
        #: ... and whether their inner items mostly wait (every costly inner node waits
        #: or awaits): their calls then stay here, on threads, even when many.
        self._mapper_waits: dict[tuple[str, str], bool] = {}
        #: Nodes whose output did not pickle (in the measured items, or back from a
        #: worker process): what did not; they stay here (auto_place.sendable).
        self._unsendable: dict[tuple[str, str], str] = {}

    def _lend(self, kind: str) -> Any:
        if kind != PROCESS:
            return super()._lend(kind)
        from .processes import ProcessEngine

        with self._lent_lock:
            lent = self._lent.get(kind)
            if lent is None:
                lent = self._lent[kind] = ProcessEngine(self.workers, timeout=self.timeout)
                lent.engine_name = self.name_in_messages
            return lent

    # -- map ----------------------------------------------------------------------------
    def _execute_map(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime, *,
                     first: int = 0, announce: bool = True) -> list:
        t0 = time.perf_counter()
        fanout = fans_out(plan)
        unmeasured = [s for s in plan.steps if self._needs_probe(s)]
        depth = self._depth.value = getattr(self._depth, "value", 0) + 1
        # A map inside a map: a nested pipeline's (fanout.py) or one a node of ours made
        # (in the probe, here, or on a pool thread of ours: maps_on)
        nested = depth > 1 or inner_map_engine() is self
        caller = getattr(probing, "key", None)  # the node being timed, if one made it
        if caller is not None and inner_map_engine() is self:
            self._mappers[caller] = max(len(rows), self._mappers.get(caller, 0))
        if not nested:
            self._inner: list[Choice] = []
        stage_times: list = []
        outer_times, rt.stage_times = rt.stage_times, (plan, stage_times)
        placed: dict[str, Any] = {}  # _map_here's choices, as soon as made; its run
        try:
            with maps_on(self):  # a node of this map run here maps on this engine
                choices, out = self._map_here(plan, base, rows, rt, first, announce,
                                              fanout, unmeasured, t0, placed)
        except BaseException as exc:
            if placed and not nested:  # explain() shows what ran where in a failed map too
                self._last = Explanation(placed["choices"] + self._inner, len(rows),
                                         time.perf_counter() - t0, failed=exc)
            raise
        finally:
            self._depth.value = depth - 1
            rt.stage_times = outer_times
        time_stages(choices, stage_times)
        forget_changed(self._measures, _key, plan, choices, *placed["run"])
        if caller is not None and inner_map_engine() is self:
            costly = [c for c in choices if not c.cheap]
            waits = bool(costly) and all(c.waiting or c.executor == ASYNC for c in costly)
            self._mapper_waits[caller] = waits and self._mapper_waits.get(caller, True)
        if not nested:
            self._last = Explanation(choices + self._inner, len(rows),
                                     time.perf_counter() - t0)
        else:  # a nested map's inner items: shown under its pipeline, once
            label = getattr(plan.pipeline, "label", "nested")
            shown = {c.node for c in self._inner}
            for c in choices:
                c.node = f"{label}/{c.node}"
            self._inner += [c for c in choices if c.node not in shown]
        return out

    def _map_here(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime, first: int,
                  announce: bool, fanout: bool, unmeasured: list[Step],
                  t0: float, placed: dict) -> tuple[list[Choice], list]:
        """_execute_map's map: (the choices made, the results); ``placed`` gets the
        choices as soon as they are made, and the items run on them and their seconds."""
        if not unmeasured or not rows or fanout or self._item_timeout(plan) is not None:
            # (Measured items run here, where no deadline could stop them; and an
            # item here would run its whole nested map here: the inner map measures.)
            choices = placed["choices"] = self._place(plan, len(rows), fanout,
                                                      sent=(base, rows[:1]))
            t1 = time.perf_counter()
            out = self._run_rows(plan, base, rows, rt, first, announce, choices)
            placed["run"] = (len(rows), time.perf_counter() - t1)
            return choices, out
        announce = announce and bool(rt.callbacks)
        if announce:
            rt.emit("on_map_start", len(rows))
        try:
            k = min(len(rows), PROBE_ITEMS)
            samples: dict[str, Any] = {}
            out = self._probe(plan, base, rows[:k], rt, unmeasured, first, samples)
            choices = placed["choices"] = self._place(plan, len(rows) - k, fanout,
                                                      sent=(base, rows[:1]), samples=samples)
            t1 = time.perf_counter()
            out += self._run_rows(plan, base, rows[k:], rt, first + k, False, choices)
            placed["run"] = (len(rows) - k, time.perf_counter() - t1)  # (not the measured)
            return choices, out
        finally:
            if announce:
                rt.emit("on_map_end", time.perf_counter() - t0)

    def _needs_probe(self, step: Step) -> bool:
        if step.kind == DUAL and (step.hints.get("batch_size") or self.batch_size):
            return False  # (its batch size is given: nothing to choose)
        return (step.kind != PIPE and not step.is_async
                and not step.hints.get("executor") and _key(step) not in self._measures)

    def _probe(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime,
               steps: list[Step], first: int, samples: dict[str, Any] | None = None
               ) -> list:
        """The first rows, here, one after another, with ``steps``' calls timed;
        ``samples`` gets each step's first return value (does it pickle?)."""
        calls: dict[str, list] = {s.name: [] for s in steps}
        # What is timed: a node's call; a DualNode's batch call over the measured items.
        attrs = ["batch" if s.kind == DUAL else "func" for s in steps]
        funcs = [getattr(s, a) for s, a in zip(steps, attrs)]
        ticker = Ticker()
        floor = timing_floor(ticker)
        try:
            for s, a, f in zip(steps, attrs, funcs):
                setattr(s, a, sampled(timed(f, calls[s.name], ticker, _key(s)), samples,
                                       s.name))
            # (A node that maps does so on this engine: the caller's maps_on.)
            return execute_map(plan, self._scoped(base), rows, rt, first_index=first,
                               announce=False)
        finally:
            ticker.stop()
            for s, a, f in zip(steps, attrs, funcs):
                setattr(s, a, f)
                if calls[s.name]:  # (none: its items failed earlier, or the cache had it)
                    own = less_floor(calls[s.name], floor)
                    m = self._measures[_key(s)] = Measure.of(own, GIL_TEST_MIN_S)
                    if s.kind == DUAL:
                        m.items = len(rows)  # one batch call over the measured items

    def _run_rows(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime,
                  first: int, announce: bool, choices: list[Choice]) -> list:
        """The rows on the executors chosen; those whose values could not travel to or
        from the worker processes chosen run again here (auto_rerun.py)."""
        return run_rows(self, plan, base, rows, rt, first, announce, choices,
                        self._unsent_output(plan))

    def _unsent_output(self, plan: Plan) -> Any:
        """``remember(node, error)``: the node's output did not come back from a worker
        process (error: the first item's that said so); later maps keep it here."""
        def remember(name: str, exc: Any) -> None:
            step = next(s for s in plan.steps if s.name == name)
            self._unsendable.setdefault(_key(step), f"{exc.what}, in an earlier map")
        return remember

    def _run_on(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime,
                first: int, announce: bool) -> list:
        kinds = {s.hints.get("executor") for s in plan.steps}
        if rows and kinds == {INLINE}:
            return execute_map(plan, self._scoped(base), rows, rt, first_index=first,
                               announce=announce)
        if rows and kinds == {PROCESS}:
            return self._lend(PROCESS)._map_rows(plan, base, rows, rt, first, announce)
        return super()._execute_map(plan, base, rows, rt, first=first, announce=announce)

    # -- imap ---------------------------------------------------------------------------
    def _stream(self, plan: Plan, base: dict, rows: Iterator[dict], rt: Runtime,
                ordered: bool, read_ahead: int | None, total: int | None,
                mapped: set[str]) -> Iterator[Any]:
        unmeasured = [s for s in plan.steps if self._needs_probe(s)]
        if not unmeasured or self._item_timeout(plan) is not None:
            self._place_stream(plan, total, total, rt, sent=(base, []))
            return remembering(super()._stream(plan, base, rows, rt, ordered, read_ahead,
                                               total, mapped),
                               self._last.choices, self._unsent_output(plan))
        return probed_stream(self, plan, base, rows, rt, ordered, read_ahead, total, mapped,
                             unmeasured, PROBE_ITEMS)

    def _place_stream(self, plan: Plan, items: int | None, total: int | None,
                      rt: Runtime, t0: float | None = None,
                      sent: tuple[dict, list[dict]] | None = None,
                      samples: dict[str, Any] | None = None) -> None:
        """_place for a stream of ``items`` more items (that started at ``t0``: its
        measured items ran first); explain() shows it, the re-sizing of its waiting
        stages as they happen (rt.on_resize), and items/s per stage at its end."""
        self._last = Explanation(self._place(plan, items, streaming=True, sent=sent,
                                             samples=samples), total, None, stream=True)
        rt.on_resize = resized(self._last.choices)
        rt.on_stream_end = stream_ended(self._last, time.perf_counter() if t0 is None else t0)

    # -- choosing -----------------------------------------------------------------------
    def _place(self, plan: Plan, items: int | None, fanout: bool = False,
               streaming: bool = False, sent: tuple[dict, list[dict]] | None = None,
               samples: dict[str, Any] | None = None) -> list[Choice]:
        """Choose each top-level node's executor and write it into its hints
        (``streaming``: an imap, whose stages overlap; ``sent``: the map's shared inputs
        and its first item, which a node placed in worker processes must be able to
        take there; ``samples``: the measured items' outputs, which must come back)."""
        choices = [self.choose(s, items, fanout) for s in plan.steps]
        if sent is not None:
            choices = [sendable(s, c, *sent, self._unsendable.get(_key(s)))
                       for s, c in zip(plan.steps, choices)]
        fuse(choices)

        def remember(step: Step, what: str) -> None:
            self._unsendable[_key(step)] = what
        if samples and unsent_outputs(plan, choices, samples, remember):
            return self._place(plan, items, fanout, streaming, sent)  # (they stay here)
        size_threads(choices, items, streaming, self.workers, self.max_workers,
                     usable_cores())
        for step, c in zip(plan.steps, choices):
            if c.executor == FANOUT:  # no executor: a stage of its own (stages.py)
                c.concurrency = "its inner items: one map on this engine"
                continue
            step.hints = {**step.hints, "executor": c.executor}
            if c.batch_size and not step.hints.get("batch_size"):
                step.hints["batch_size"] = c.batch_size
                if c.adapt is not None:
                    step.hints[BATCH_ADAPT] = c.adapt
            # A node's cap (max_concurrency: a lock per call) and its stage's threads:
            # the stage may hold other thread nodes (a waiting one wants more threads).
            if c.threads_cap and not step.hints.get("max_concurrency"):
                step.hints["max_concurrency"] = c.threads_cap
                limit_concurrency(step)
            if c.executor == THREAD and not c.user:
                c.threads = c.threads or c.threads_cap
                if c.threads:
                    step.hints[STAGE_THREADS] = c.threads
                if c.pace:
                    step.hints[STAGE_PACE] = c.pace
            c.concurrency = self._concurrency_of(c, step)
        return choices

    def choose(self, step: Step, items: int | None, fanout: bool = False) -> Choice:
        """Where ``step`` runs in a map of ``items`` items (None: unknown), and why;
        ``fanout``: nested maps run as one map (run/fanout.py)."""
        name, m = step.name, self._measures.get(_key(step))
        hinted = step.hints.get("executor")
        if hinted:
            return Choice(name, hinted, "hinted by the user (executor=)", m, user=True)
        if step.is_async:
            return Choice(name, ASYNC, "async def: awaits on the event loop")
        if step.kind == DUAL:
            last = self._batches.get(_key(step))
            c = _batches(step, m, items, last.per_item if last is not None else None)
            if c.adapt is not None:
                self._batches[_key(step)] = c.adapt
            return c
        if fanout and is_fanout(step):
            return Choice(name, FANOUT, "nested pipeline with map_over: the inner items of "
                                        "all items run as one map", batch=True)
        if step.kind == PIPE:
            return Choice(name, THREAD, "nested pipeline: runs whole on threads "
                                        "(not measured)")
        if m is None:
            why = ("the map had no items" if items == 0 else
                   "a timeout, a map with a nested map, its items failed, or the cache "
                   "had them all")
            return Choice(name, THREAD, f"not measured ({why}): threads")
        inner = self._mappers.get(_key(step))
        if inner is not None:
            return self._mapper(step, m, inner, items)
        if m.wall < CHEAP_S:
            return Choice(name, INLINE, f"cheap ({m.wall * 1e6:.1f} us per call): inline",
                          m, cheap=True)
        if m.cpu_share < WAITING:
            return Choice(name, THREAD, f"waits ({m.cpu_share:.0%} CPU): threads", m,
                          waiting=True)
        if m.releases_gil(GIL_TEST_MIN_S, RELEASED_RUNS_PER_MS):
            return Choice(name, THREAD, "CPU that releases the GIL: threads, one per core",
                          m, threads_cap=usable_cores())
        work = m.cpu * items if items is not None else None
        if self.workers > 1 and (work is None or work >= PROCESS_MIN_WORK_S):
            return Choice(name, PROCESS, f"pure-Python CPU ({m.cpu_share:.0%} CPU, holds "
                                         "the GIL): worker processes", m)
        return Choice(name, INLINE, f"pure-Python CPU, but the map's work "
                                    f"({(work or 0) * 1e3:.1f} ms) does not pay for "
                                    "processes: inline", m)

    def _mapper(self, step: Step, m: Measure, inner: int, items: int | None) -> Choice:
        """A node whose function maps (``inner`` items a call, at most): which level
        runs in parallel. Many items: each whole in a worker process (its map runs
        there, one item after another); few: here on threads, its maps on this engine,
        the inner items of all of them sharing the workers (one pool of work)."""
        many = items is None or items >= MAPPER_ITEMS_PER_WORKER * self.workers
        maps = f"its function maps ({inner} inner items a call), {items or 'no'} calls to place"
        if self._mapper_waits.get(_key(step)):
            # In a worker process its map would run item after item: waits in a row.
            return Choice(step.name, THREAD, f"{maps}: its inner items mostly wait: its "
                          "calls here on threads, their maps on this engine", m,
                          waiting=True)
        if self.workers > 1 and many:
            return Choice(step.name, PROCESS, f"{maps}: each call whole in a worker process", m)
        return Choice(step.name, THREAD, f"{maps}: its maps run on this engine (the inner "
                      "items of all its calls share the workers)", m, waiting=True)

    def _concurrency_of(self, c: Choice, step: Step) -> str:
        if c.joins:
            return f"in the stage of {c.joins!r}"
        if c.executor == PROCESS:
            return f"{self.workers} worker processes"
        if c.executor == INLINE:
            return "1 (the calling thread)"
        if step.kind == DUAL:
            size = step.hints.get("batch_size") or self.batch_size
            return ("batches: " + (f"{size} items" if size else
                                   "a few per core (auto_batch_size)")
                    + (", one at a time" if c.threads_cap == 1 else ""))
        if step.hints.get("max_concurrency"):
            return f"<= {step.hints['max_concurrency']} threads"
        if c.threads:
            return f"<= {c.threads} threads, started on demand"
        what = "coroutines" if c.executor == ASYNC else "threads, started on demand"
        return f"<= {self.max_workers} {what}"

    def explain(self) -> Explanation:
        """What the last map (or imap) ran where, and the measurements behind it."""
        if self._last is None:
            return Explanation([], None, None)
        return self._last

    def __repr__(self) -> str:
        return f"AutoEngine(max_workers={self.max_workers}, workers={self.workers})"


def _batches(step: Step, m: Measure | None, items: int | None,
             learned: float | None = None) -> Choice:
    """A DualNode: batches on threads. Measured (one batch call over the measured
    items), its batch size keeps a call under MAX_BATCH_S of work (ThreadEngine's "a few
    batches per core" otherwise: a huge map would make huge batches), and a batch
    function that holds the GIL gets one batch at a time (threads would only take turns).
    During the map the size follows the calls' time per item (``BatchAdapt``), and the
    next map starts from the time per item of the last one's calls (``learned``).
    """
    if m is None:
        return Choice(step.name, THREAD, "DualNode: batches on threads", batch=True)
    per_item = learned or m.wall / max(1, m.items)
    cap = size = auto_batch_size(items) if items else STREAM_BATCH_SIZE
    most = max(1, int(MAX_BATCH_S / per_item)) if per_item > 0 else size
    size = min(size, most)
    holds = m.cpu_share >= WAITING and not m.releases_gil(GIL_TEST_MIN_S,
                                                          RELEASED_RUNS_PER_MS)
    why = (f"DualNode: batches of {size} on threads (a batch of {m.items} took "
           f"{m.wall * 1e3:.2f} ms"
           + (f"; {learned * 1e3:.3f} ms per item in the last map's calls" if learned
              else "")
           + (f"; at most {MAX_BATCH_S:g} s of work per batch" if size == most else "")
           + ("; it holds the GIL: one batch at a time)" if holds else
              "; it waits or releases the GIL: several at once)"))
    # During the map, the size follows the calls' time per item (the same two limits).
    return Choice(step.name, THREAD, why, m, batch=True, batch_size=size,
                  threads_cap=1 if holds else None,
                  adapt=BatchAdapt(size, MAX_BATCH_S, cap))
