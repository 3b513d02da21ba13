"""Running items through a plan: the one execution path every engine shares.

``execute_run`` runs one set of inputs; ``execute_map`` runs many items, item by item
for ordinary steps and in batches for ``DualNode`` steps.  Engines decide where these
functions run (which thread or process, how items are chunked); the semantics (order,
caching, callbacks, errors, nesting) live here once.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..errors import EngineShutDown
from .execute_batch import _run_batch
from .execute_fast import _fast_map, fast_row_function, untraced
from ..model.hashing import hash_strings
from ..model.mapping import expand_rows
from ..model.plan import PIPE, Plan, Step
from .stages import SIGS, Placement, Stage, is_fanout
from .runtime import (Runtime, StepCall, _call, _sig, _store, annotate, step_done,
                      step_failed, step_lookup)

__all__ = ["Runtime", "execute_map", "execute_run", "fast_row_function", "run_step",
           "step_done", "step_failed", "step_lookup"]



def run_step(step: Step, values: dict, rt: Runtime, item: int | None, sigs: dict | None) -> bool:
    """Run one step for one item, storing its outputs in ``values``. True if cached."""
    if step.kind == PIPE:
        return _run_nested(step, values, rt, item, sigs)
    retries = step.hints.get("retries", rt.retries)
    if not rt.tracing:
        # No cache, no callbacks: StepCall's bookkeeping is an error note only, written
        # out here because this runs once per item and step (~1 us less per call).
        try:
            _store(step, _call(step, step.func, values, retries), values)
        except Exception as exc:
            annotate(exc, step.name, item)
            raise
        return False
    with StepCall(step, values, rt, item, sigs) as call:
        if call.hit:
            return True
        call.store(_call(step, step.func, values, retries))
    call.finish()
    return False


def _run_nested(step: Step, values: dict, rt: Runtime, item: int | None,
                sigs: dict | None) -> bool:
    inner_rt = rt.inside(step)
    inner_values = step.pipeline.bound_inputs
    inner_sigs: dict | None = {} if inner_rt.tracing else None
    for outer, inner in step.arg_map:
        inner_values[inner] = values[outer]
        if inner_sigs is not None:
            inner_sigs[inner] = _sig(outer, values, sigs)
    parent_id = rt.ctx.current_pipeline_id if rt.ctx is not None else None
    child_id = step.inner.pipeline_id
    if rt.callbacks:
        rt.emit("on_nested_pipeline_start", parent_id, child_id)
        rt.ctx.push_pipeline(child_id)
    t0 = time.perf_counter()
    all_hits = False
    try:
        if step.map_over:
            base, rows = expand_rows(inner_values, step.map_over, step.map_mode,
                                     f"nested pipeline {step.name!r}")
            if inner_rt.nested_map is not None and rows and is_fanout(step):
                # run() on an engine that spreads nested maps: the inner items as one map
                # there (its workers), not one after another here
                results = inner_rt.nested_map(step.inner, base, rows,
                                              inner_rt.with_collect(False))
            else:
                results = execute_map(step.inner, base, rows, inner_rt, collect=False)
            outs = {i: [r[i] for r in results] for i, _ in step.out_map}
            inner_sigs = None  # lists are hashed by value if anyone needs them
        else:
            report: list[bool] = []
            outs = execute_run(step.inner, inner_values, inner_rt, item, inner_sigs,
                               cached=report)
            all_hits = bool(report and report[0] and step.inner.steps)
    except Exception as exc:
        where = f" (map item {item})" if item is not None else ""
        exc.add_note(f"gilfree: inside nested pipeline {step.name!r}{where}")
        raise
    finally:
        if rt.callbacks:
            rt.ctx.pop_pipeline()
    for i, o in step.out_map:
        values[o] = outs[i]
        if sigs is not None and inner_sigs is not None and i in inner_sigs:
            sigs[o] = inner_sigs[i]
    if rt.callbacks:
        rt.emit("on_nested_pipeline_end", parent_id, child_id, time.perf_counter() - t0)
    return all_hits


# -- one item ---------------------------------------------------------------------------
#: ``pfor(task, n)`` runs ``task(0) .. task(n-1)`` and returns when all are done; if a
#: task raises, it stops handing out tasks and raises the exception of the failed task
#: with the lowest index.  Engines pass a parallel one; ``None`` means a plain loop.
PFor = Callable[[Callable[[int], None], int], None]


def _serial_pfor(task: Callable[[int], None], n: int) -> None:
    for i in range(n):
        task(i)


def execute_run(plan: Plan, values: dict, rt: Runtime, item: int | None = None,
                sigs: dict | None = None, pfor: PFor | None = None,
                cached: list | None = None) -> dict:
    """Run every step of ``plan`` on one set of inputs; return the requested outputs.

    With ``pfor``, independent steps (same wave of the graph) run concurrently.  When
    ``cached`` is a list, whether every step was a cache hit is appended to it.
    """
    if sigs is None and rt.tracing:
        sigs = {}
    if rt.callbacks:
        rt.emit("on_pipeline_start", plan.pipeline_id, dict(values))
    t0 = time.perf_counter()
    if pfor is None or len(plan.steps) < 2:
        hits = [run_step(step, values, rt, item, sigs) for step in plan.steps]
        if cached is not None:
            cached.append(all(hits))
    else:
        if cached is not None:
            cached.append(False)
        for wave in plan.waves:
            if len(wave) == 1:
                run_step(wave[0], values, rt, item, sigs)
                continue
            views = [rt.worker_view() for _ in wave]
            # Each step writes only its own output names: dict stores are atomic under
            # the GIL, so the shared ``values`` needs no lock.
            pfor(lambda k: run_step(wave[k], values, views[k], item, sigs), len(wave))
            rt.flush()
    out = {o: values[o] for o in plan.outputs}
    if rt.callbacks:
        rt.emit("on_pipeline_end", plan.pipeline_id, out, time.perf_counter() - t0)
    return out


def _fail_unfinished(exc: EngineShutDown, failed: list, passed: list[int], segments: int,
                     first_index: int) -> None:
    """Under "collect", the engine shut down mid-map: every item that had not run to its
    end holds the error (one of its own, naming the item); finished items keep theirs."""
    for i, done in enumerate(passed):
        if failed[i] is None and done < segments:
            err = EngineShutDown(str(exc))
            err.__cause__ = exc.__cause__
            err.add_note(f"gilfree: map item {first_index + i} did not run to its end")
            failed[i] = err


# -- many items -------------------------------------------------------------------------
def execute_map(plan: Plan, base: dict, rows: list[dict], rt: Runtime, *,
                collect: bool | None = None, first_index: int = 0,
                pfor: PFor | None = None, async_items: Any = None,
                stages: list[Stage] | None = None,
                place: Callable[[Stage], Placement] | None = None,
                announce: bool = True) -> list:
    """Run ``plan`` once per row (row values overlay ``base``); results in row order.

    With ``collect`` a failed item's slot holds its exception and the others complete;
    otherwise the first failure is raised (with a note naming node and item index).
    ``pfor`` runs the per-item (and per-batch) tasks; every callback still fires in the
    calling thread.  ``async_items`` (an ``AsyncItems``, see execute_async.py) runs
    per-item work as coroutines on an event loop instead; batch steps still use ``pfor``.
    With ``stages`` (stages.py) each stage runs where ``place(stage)`` says, one stage
    after another over the items still alive.
    """
    if collect is None:
        collect = rt.collect
    if pfor is None and stages is None and untraced(plan, rt):
        return _fast_map(plan, base, rows, collect, first_index)
    if stages is None:
        shared = Placement(pfor, async_items)
        segments = [(kind, payload, shared) for kind, payload in plan.segments]
    else:
        segments = [(st.kind, st.payload, place(st)) for st in stages]
    timed = rt.stage_times[1] if rt.stage_times and rt.stage_times[0] is plan else None
    if timed is not None:  # (AutoEngine's explain(): items/s per stage)
        names = ([[s.name for s in st.steps] for st in stages] if stages is not None else
                 [[s.name for s in (p if isinstance(p, list) else [p])]
                  for _, p in plan.segments])
    n = len(rows)
    announce = announce and bool(rt.callbacks)  # False: a window of a streaming map
    if announce:
        rt.emit("on_map_start", n)
    t_map = time.perf_counter()
    values = []
    for row in rows:
        v = base.copy()
        v.update(row)
        values.append(v)
    stage_sigs = False
    if not rt.tracing:
        sigs = [None] * n
    elif getattr(plan, "ships_sigs", False):
        stage_sigs = True
        # A stage in a worker process (stages.py): the cache signatures of its inputs
        # came with them, so its cache keys are the ones a one-executor map computes.
        sigs = [dict(row.get(SIGS) or ()) for row in rows]
    else:
        sigs = [{} for _ in rows]
    failed: list[BaseException | None] = [None] * n
    cached = [True] * n
    started = [0.0] * n
    varying = set(rows[0]) if rows else set()
    varying |= plan.produced
    # Without batch steps each item runs start to end in one task, so progress moves
    # item by item; batch steps make every item wait for its batch.
    interleave = (len(segments) == 1 and segments[0][0] == "items"
                  and segments[0][2].remote is None)

    def start(i: int, r: Runtime) -> None:
        started[i] = time.perf_counter()
        if r.callbacks:
            r.emit("on_map_item_start", first_index + i)
            r.emit("on_pipeline_start", plan.pipeline_id, dict(values[i]))

    def finish(i: int, r: Runtime) -> None:
        if failed[i] is not None:
            if r.callbacks:
                r.emit("on_map_item_end", first_index + i, time.perf_counter() - started[i])
            return
        if stage_sigs:
            values[i][SIGS] = (sigs[i], cached[i])  # a stage's output: they go back
        out = {o: values[i][o] for o in plan.outputs}
        values[i] = out  # drop intermediates early; the slot now holds the result
        if r.callbacks:
            now = time.perf_counter()
            r.emit("on_pipeline_end", plan.pipeline_id, out, now - started[i])
            if cached[i] and plan.steps:
                r.emit("on_map_item_cached", first_index + i,
                       hash_strings(*(sigs[i].get(o, "") for o in plan.outputs)))
            r.emit("on_map_item_end", first_index + i, now - started[i])

    # Segments each item got through: when the engine shuts down mid-map, the items
    # that did not get through all of them fail with that error under "collect".
    passed = [0] * n

    def items_task(payload: list[Step], threaded: bool) -> Callable[[int], None]:
        def task(i: int) -> None:
            if failed[i] is not None:
                return
            r = rt.worker_view() if threaded else rt
            if interleave:
                start(i, r)
            try:
                for step in payload:
                    if not run_step(step, values[i], r, first_index + i, sigs[i]):
                        cached[i] = False
            except Exception as exc:
                if not collect:
                    raise
                failed[i] = exc
            passed[i] += 1
            if interleave:
                finish(i, r)
        return task

    try:
        if not interleave:
            for i in range(n):
                start(i, rt)
        for k, (kind, payload, (run_on, async_on, remote, fanout)) in enumerate(segments):
            counted = False
            if timed is not None:
                t_stage, alive = time.perf_counter(), failed.count(None)
            try:
                if fanout is not None:
                    fanout(payload, values, failed, collect)
                elif remote is not None:
                    remote(values, sigs, failed, cached, collect)
                elif kind == "batch":
                    _run_batch(payload, values, sigs, failed, cached, varying, base, rt,
                               collect, first_index, run_on or _serial_pfor)
                elif async_on is not None:
                    async_on.run(payload, n, values, sigs, failed, cached, first_index,
                                 start if interleave else None,
                                 finish if interleave else None, collect)
                else:
                    (run_on or _serial_pfor)(items_task(payload, run_on is not None), n)
                    counted = True  # items_task counted the items that got through
            except EngineShutDown as exc:
                if not collect:
                    raise
                _fail_unfinished(exc, failed, passed, len(segments), first_index)
                break
            finally:
                rt.flush()
            if timed is not None:
                timed.append((names[k], alive, time.perf_counter() - t_stage))
            if counted:
                continue
            for i in range(n):
                passed[i] += 1
        if not interleave:
            for i in range(n):
                finish(i, rt)
    finally:
        rt.flush()
        # Every on_map_start gets its on_map_end, also when the map stops on an error
        # (progress bars close, per-map state in callbacks is released).
        if announce:
            rt.emit("on_map_end", time.perf_counter() - t_map)
    return [failed[i] if failed[i] is not None else values[i] for i in range(n)]


def execute_map_around(plan: Plan, base: dict, rows: list, rt: Runtime, first: int,
                       failed: dict, collect: bool,
                       before_run: Callable[[int], None] | None = None) -> list:
    """``execute_map`` in a worker, except that the rows the driver could not pickle
    (``failed``: offset in ``rows`` -> SerializationError) fail in their own slots and the
    rest run around them (each run of good rows one ``execute_map``). ``before_run(k)``
    is told where each run starts. Raises the first such error unless ``collect``."""
    if not failed:
        return execute_map(plan, base, rows, rt, first_index=first)
    out: list = []
    k = 0
    while k < len(rows):
        if k in failed:
            if not collect:
                raise failed[k]
            out.append(failed[k])
            k += 1
            continue
        stop = k
        while stop < len(rows) and stop not in failed:
            stop += 1
        if before_run is not None:
            before_run(k)
        out.extend(execute_map(plan, base, rows[k:stop], rt, first_index=first + k))
        k = stop
    return out
