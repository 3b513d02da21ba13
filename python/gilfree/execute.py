"""Running items through a plan: the one execution path every engine shares.

``execute_run`` runs one set of inputs; ``execute_map`` runs many items, item by item
for ordinary steps and in batches for ``DualNode`` steps.  Engines decide where these
functions run (which thread or process, how items are chunked); the semantics (order,
caching, callbacks, errors, nesting) live here once.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections import deque
from typing import Any, Callable

from ._async_bridge import run_coroutine
from .errors import annotate
from .hashing import hash_strings, hash_value
from .mapping import expand_rows
from .plan import DUAL, PIPE, Plan, Step

_MISS = object()


class Runtime:
    """What one engine call carries down to every step: cache, callbacks, policy."""

    __slots__ = ("cache", "callbacks", "ctx", "retries", "batch_size", "collect", "tracing",
                 "engine", "queue", "pending")

    def __copy__(self) -> "Runtime":
        new = Runtime.__new__(Runtime)
        for name in Runtime.__slots__:
            setattr(new, name, getattr(self, name))
        return new

    def __init__(self, *, cache: Any = None, callbacks: list | None = None, ctx: Any = None,
                 retries: int = 0, batch_size: int | None = None, collect: bool = False,
                 engine: Any = None):
        self.cache = cache
        self.callbacks = list(callbacks or ())
        self.ctx = ctx
        self.retries = retries
        self.batch_size = batch_size
        self.collect = collect
        self.engine = engine
        # Signatures and timings cost time: compute them only when someone reads them.
        self.tracing = cache is not None or bool(self.callbacks)
        self.queue: deque | None = None  # set on worker views: events wait for the driver
        self.pending: deque = deque()  # the driver's inbox of worker events

    def emit(self, event: str, *args: Any) -> None:
        q = self.queue
        if q is not None:
            # deque.append is atomic under the GIL; the path is copied because the
            # driver replays the event later, when this worker may be elsewhere.
            q.append((event, args, list(self.ctx.hierarchy_path) if self.ctx else None))
            return
        for cb in self.callbacks:
            getattr(cb, event)(*args, self.ctx)

    def worker_view(self) -> "Runtime":
        """A copy for code running on another thread: its events queue for the driver,
        and it has its own pipeline path (nested pipelines push and pop on it)."""
        if not self.callbacks:
            return self
        view = copy.copy(self)
        if self.ctx is not None:
            view.ctx = copy.copy(self.ctx)
            view.ctx.hierarchy_path = list(self.ctx.hierarchy_path)
        view.queue = self.pending
        return view

    def flush(self) -> None:
        """Driver thread only: deliver the events workers queued, in their order."""
        q = self.pending
        if not q:
            return
        ctx = self.ctx
        saved = ctx.hierarchy_path
        try:
            while q:
                event, args, path = q.popleft()
                ctx.hierarchy_path = path
                for cb in self.callbacks:
                    getattr(cb, event)(*args, ctx)
        finally:
            ctx.hierarchy_path = saved


# -- one step ---------------------------------------------------------------------------
def _call(step: Step, func: Callable, values: dict, retries: int) -> Any:
    attempt = 0
    while True:
        try:
            n = step.nargs
            if n == 1:
                r = func(values[step.arg0])
            elif n == 0:
                r = func()
            elif n > 1:
                r = func(*step.getter(values))
            else:
                r = func(**{a: values[a] for a in step.args})
            if step.is_async:
                r = run_coroutine(r)
            return r
        except Exception:
            attempt += 1
            if attempt > retries:
                raise


def _store(step: Step, result: Any, values: dict) -> None:
    if not step.multi:
        values[step.out0] = result
        return
    names = step.out_names
    if not isinstance(result, (tuple, list)) or len(result) != len(names):
        got = f"{len(result)} values" if isinstance(result, (tuple, list)) else type(result).__name__
        raise ValueError(
            f"node {step.name!r} declares {len(names)} outputs {names} but returned {got}"
        )
    for name, v in zip(names, result):
        values[name] = v


def _sig(name: str, values: dict, sigs: dict) -> str:
    s = sigs.get(name)
    if s is None:
        s = sigs[name] = hash_value(values[name])
    return s


def _step_signature(step: Step, values: dict, sigs: dict) -> str:
    owners = [hash_value(o) for o in step.owners]
    return hash_strings(step.code_hash, repr(step.out_names), *owners,
                        *(f"{a}={_sig(a, values, sigs)}" for a in step.args))


def _safe_signature(step: Step, values: dict, sigs: dict) -> str | None:
    """The step's cache key, or None (with a warning) when an input cannot be hashed."""
    try:
        return _step_signature(step, values, sigs)
    except (ValueError, TypeError, RecursionError) as exc:
        warnings.warn(f"node {step.name!r} runs uncached: its inputs cannot be hashed "
                      f"for the cache ({exc})", RuntimeWarning, stacklevel=2)
        return None


def _set_output_sigs(step: Step, sig: str, sigs: dict) -> None:
    for o in step.out_names:
        sigs[o] = hash_strings(sig, o)


def run_step(step: Step, values: dict, rt: Runtime, item: int | None, sigs: dict | None) -> bool:
    """Run one step for one item, storing its outputs in ``values``. True if cached."""
    if step.kind == PIPE:
        return _run_nested(step, values, rt, item, sigs)
    retries = step.hints.get("retries", rt.retries)
    if not rt.tracing:
        try:
            _store(step, _call(step, step.func, values, retries), values)
        except Exception as exc:
            annotate(exc, step.name, item)
            raise
        return False

    hit, sig = step_lookup(step, values, rt, sigs)
    if hit:
        return True
    t0 = time.perf_counter()
    try:
        _store(step, _call(step, step.func, values, retries), values)
    except Exception as exc:
        step_failed(step, exc, rt, item)
        raise
    step_done(step, values, rt, sigs, sig, t0)
    return False


def step_lookup(step: Step, values: dict, rt: Runtime, sigs: dict) -> tuple[bool, str | None]:
    """Before a traced step runs: serve it from the cache (True) or announce its start.
    Returns the signature to store the result under (None: do not store)."""
    sig = None
    if rt.cache is not None and step.cache:
        sig = _safe_signature(step, values, sigs)
        if sig is not None:
            hit = rt.cache.get(sig, _MISS)
            if hit is not _MISS:
                values.update(hit)
                _set_output_sigs(step, sig, sigs)
                rt.emit("on_node_cached", step.name, sig)
                return True, sig
    if rt.callbacks:
        rt.emit("on_node_start", step.name, {a: values[a] for a in step.args})
    return False, sig


def step_failed(step: Step, exc: BaseException, rt: Runtime, item: int | None) -> None:
    rt.emit("on_error", step.name, exc)
    annotate(exc, step.name, item)


def step_done(step: Step, values: dict, rt: Runtime, sigs: dict, sig: str | None,
              t0: float) -> None:
    """After a traced step stored its outputs: cache them and announce the end."""
    duration = time.perf_counter() - t0
    outputs = {o: values[o] for o in step.out_names}
    if sig is not None:
        rt.cache.put(sig, outputs)
        _set_output_sigs(step, sig, sigs)
    if rt.callbacks:
        rt.emit("on_node_end", step.name, outputs, duration)


def _run_nested(step: Step, values: dict, rt: Runtime, item: int | None,
                sigs: dict | None) -> bool:
    inner_rt = rt
    if rt.cache is not None and not step.cache:
        inner_rt = Runtime(callbacks=rt.callbacks, ctx=rt.ctx, retries=rt.retries,
                           batch_size=rt.batch_size, engine=rt.engine)
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


# -- many items -------------------------------------------------------------------------
def execute_map(plan: Plan, base: dict, rows: list[dict], rt: Runtime, *,
                collect: bool | None = None, first_index: int = 0,
                pfor: PFor | None = None, async_items: Any = None) -> list:
    """Run ``plan`` once per row (row values overlay ``base``); results in row order.

    With ``collect`` a failed item's slot holds its exception and the others complete;
    otherwise the first failure is raised (with a note naming node and item index).
    ``pfor`` runs the per-item (and per-batch) tasks; every callback still fires in the
    calling thread.  ``async_items`` (an ``AsyncItems``, see execute_async.py) runs
    per-item work as coroutines on an event loop instead; batch steps still use ``pfor``.
    """
    if collect is None:
        collect = rt.collect
    if pfor is None and not rt.tracing and plan.simple and not rt.retries:
        return _fast_map(plan, base, rows, collect, first_index)
    run_tasks = pfor or _serial_pfor
    n = len(rows)
    if rt.callbacks:
        rt.emit("on_map_start", n)
    t_map = time.perf_counter()
    values = []
    for row in rows:
        v = base.copy()
        v.update(row)
        values.append(v)
    sigs = [{} for _ in rows] if rt.tracing else [None] * n
    failed: list[BaseException | None] = [None] * n
    cached = [True] * n
    started = [0.0] * n
    varying = set(rows[0]) if rows else set()
    varying |= plan.produced
    segments = plan.segments
    # Without batch steps each item runs start to end in one task, so progress moves
    # item by item; batch steps make every item wait for its batch.
    interleave = len(segments) == 1 and segments[0][0] == "items"

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
        out = {o: values[i][o] for o in plan.outputs}
        values[i] = out  # drop intermediates early; the slot now holds the result
        if r.callbacks:
            now = time.perf_counter()
            r.emit("on_pipeline_end", plan.pipeline_id, out, now - started[i])
            if cached[i] and plan.steps:
                r.emit("on_map_item_cached", first_index + i,
                       hash_strings(*(sigs[i].get(o, "") for o in plan.outputs)))
            r.emit("on_map_item_end", first_index + i, now - started[i])

    def items_task(payload: list[Step]) -> Callable[[int], None]:
        def task(i: int) -> None:
            if failed[i] is not None:
                return
            r = rt if pfor is None else rt.worker_view()
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
            if interleave:
                finish(i, r)
        return task

    try:
        if not interleave:
            for i in range(n):
                start(i, rt)
        for kind, payload in segments:
            if kind == "batch":
                _run_batch(payload, values, sigs, failed, cached, varying, base, rt,
                           collect, first_index, run_tasks)
            elif async_items is not None:
                async_items.run(payload, n, values, sigs, failed, cached, first_index,
                                start if interleave else None,
                                finish if interleave else None, collect)
                rt.flush()
            else:
                run_tasks(items_task(payload), n)
                rt.flush()
        if not interleave:
            for i in range(n):
                finish(i, rt)
    finally:
        rt.flush()
        # Every on_map_start gets its on_map_end, also when the map stops on an error
        # (progress bars close, per-map state in callbacks is released).
        if rt.callbacks:
            rt.emit("on_map_end", time.perf_counter() - t_map)
    return [failed[i] if failed[i] is not None else values[i] for i in range(n)]


def _fast_map(plan: Plan, base: dict, rows: list[dict], collect: bool, first: int) -> list:
    # No cache, no callbacks, plain functions: the loop the per-item overhead bar is
    # measured on.  Keep it free of attribute lookups that can be hoisted.
    steps = plan.steps
    outputs = plan.outputs
    results = []
    append = results.append
    copy = base.copy
    for i, row in enumerate(rows):
        values = copy()
        values.update(row)
        step = None
        try:
            for step in steps:
                n = step.nargs
                if n == 1:
                    r = step.func(values[step.arg0])
                elif n == 0:
                    r = step.func()
                elif n > 1:
                    r = step.func(*step.getter(values))
                else:
                    r = step.func(**{a: values[a] for a in step.args})
                if step.multi:
                    _store(step, r, values)
                else:
                    values[step.out0] = r
        except Exception as exc:
            annotate(exc, step.name, first + i)
            if not collect:
                raise
            append(exc)
            continue
        append({o: values[o] for o in outputs})
    return results


def fast_row_function(plan: Plan, base: dict, first: int = 0) -> Callable[[tuple], dict]:
    """``f((index, row)) -> outputs`` for the no-cache, no-callback case: what a thread
    pool calls once per item (errors raise, annotated with node and item index).

    With 200 blocking items the GIL hands this function from thread to thread, so its
    cost is paid serially before each item can block: the one-step shape gets a
    specialised body without the per-item dict copy.
    """
    steps = plan.steps
    outputs = plan.outputs
    if len(steps) == 1 and not steps[0].multi and steps[0].nargs == 1 \
            and steps[0].arg0 not in base and outputs == [steps[0].out0]:
        step = steps[0]
        func, arg, out, name = step.func, step.arg0, step.out0, step.name

        def run_one(pair: tuple) -> dict:
            try:
                return {out: func(pair[1][arg])}
            except Exception as exc:
                annotate(exc, name, first + pair[0])
                raise

        return run_one

    def run_row(pair: tuple) -> dict:
        i, row = pair
        values = base.copy()
        values.update(row)
        step = None
        try:
            for step in steps:
                n = step.nargs
                if n == 1:
                    r = step.func(values[step.arg0])
                elif n == 0:
                    r = step.func()
                elif n > 1:
                    r = step.func(*step.getter(values))
                else:
                    r = step.func(**{a: values[a] for a in step.args})
                if step.multi:
                    _store(step, r, values)
                else:
                    values[step.out0] = r
        except Exception as exc:
            annotate(exc, step.name, first + i)
            raise
        return {o: values[o] for o in outputs}

    return run_row


def _run_batch(step: Step, values: list[dict], sigs: list, failed: list, cached: list,
               varying: set, base: dict, rt: Runtime, collect: bool, first: int,
               run_tasks: PFor) -> None:
    """One DualNode step for every live item, through its batch function.

    Cache look-ups and callbacks happen here, in the driver; only the batch calls are
    tasks (several batches may run at once on a parallel engine).
    """
    cache = rt.cache if step.cache else None
    todo = []
    step_sigs: dict[int, str] = {}
    for i, v in enumerate(values):
        if failed[i] is not None:
            continue
        sig = _safe_signature(step, v, sigs[i]) if cache is not None else None
        if sig is not None:
            step_sigs[i] = sig
            hit = cache.get(sig, _MISS)
            if hit is not _MISS:
                v.update(hit)
                _set_output_sigs(step, sig, sigs[i])
                rt.emit("on_node_cached", step.name, sig)
                continue
        cached[i] = False
        todo.append(i)
    size = step.hints.get("batch_size") or rt.batch_size or max(len(todo), 1)
    retries = step.hints.get("retries", rt.retries)
    chunks = [todo[k:k + size] for k in range(0, len(todo), size)]
    outs: list[Any] = [None] * len(chunks)
    errors: list[BaseException | None] = [None] * len(chunks)
    took = [0.0] * len(chunks)

    def task(k: int) -> None:
        chunk = chunks[k]
        kwargs = {a: ([values[i][a] for i in chunk] if a in varying else base[a])
                  for a in step.args}
        t0 = time.perf_counter()
        try:
            outs[k] = _call_batch(step, kwargs, retries, len(chunk))
        except Exception as exc:
            annotate(exc, step.name)
            exc.add_note(f"gilfree: batch of map items {[first + i for i in chunk]}")
            if not collect:
                raise
            errors[k] = exc
        took[k] = time.perf_counter() - t0

    if rt.callbacks:
        for i in todo:
            rt.emit("on_node_start", step.name, {a: values[i][a] for a in step.args})
    try:
        run_tasks(task, len(chunks))
    except Exception as exc:
        rt.emit("on_error", step.name, exc)
        raise
    for k, chunk in enumerate(chunks):
        if errors[k] is not None:
            rt.emit("on_error", step.name, errors[k])
            for i in chunk:
                failed[i] = errors[k]
            continue
        share = took[k] / len(chunk)
        for j, i in enumerate(chunk):
            try:
                _store(step, outs[k][j], values[i])
            except Exception as exc:
                annotate(exc, step.name, first + i)
                if not collect:
                    raise
                failed[i] = exc
                continue
            outputs = {o: values[i][o] for o in step.out_names}
            if i in step_sigs:
                cache.put(step_sigs[i], outputs)
                _set_output_sigs(step, step_sigs[i], sigs[i])
            if rt.callbacks:
                rt.emit("on_node_end", step.name, outputs, share)


def _call_batch(step: Step, kwargs: dict, retries: int, n: int) -> Any:
    attempt = 0
    while True:
        try:
            out = step.batch(**kwargs)
            break
        except Exception:
            attempt += 1
            if attempt > retries:
                raise
    try:
        got = len(out)
    except TypeError:
        raise TypeError(
            f"DualNode {step.name!r}: batch function returned {type(out).__name__}, "
            f"expected a sequence of {n} results"
        ) from None
    if got != n:
        raise ValueError(
            f"DualNode {step.name!r}: batch function returned {got} results for {n} items"
        )
    return out
