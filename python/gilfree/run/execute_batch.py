"""DualNode steps in a map: items grouped into batches, one batch-function call each."""

from __future__ import annotations

import time
from typing import Any, Callable

from ..model.batch_formats import batch_kwargs, plain_results
from ..errors import annotate
from ..model.plan import Step
from .runtime import _MISS, Runtime, _safe_signature, _set_output_sigs, _store

PFor = Callable[[Callable[[int], None], int], None]


def _run_batch(step: Step, values: list[dict], sigs: list, failed: list, cached: list,
               varying: set, base: dict, rt: Runtime, collect: bool, first: int | list[int],
               run_tasks: PFor) -> None:
    """One DualNode step for every live item, through its batch function.

    Cache look-ups and callbacks happen here, in the driver; only the batch calls are
    tasks (several batches may run at once on a parallel engine).
    """
    # ``first``: the map item number of values[0], or (a streaming map's batch of items
    # that need not be consecutive) each value's item number.
    number = first.__getitem__ if isinstance(first, list) else (lambda i: first + i)
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
            outs[k] = _call_batch(step, kwargs, varying, retries, len(chunk))
        except Exception as exc:
            annotate(exc, step.name)
            exc.add_note(f"gilfree: batch of map items {[number(i) for i in chunk]}")
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
                annotate(exc, step.name, number(i))
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


def _call_batch(step: Step, kwargs: dict, varying: set, retries: int, n: int) -> list:
    """The one place every engine calls a batch function (workers run ``execute_map``
    too): arguments in the formats it asks for, its results as plain Python values."""
    # getattr: a duck-typed dual node (is_dual_node = True) may come without a spec.
    kwargs = batch_kwargs(getattr(step.node, "batch_spec", None), kwargs, varying, step.name)
    attempt = 0
    while True:
        try:
            out = step.batch(**kwargs)
            break
        except Exception:
            attempt += 1
            if attempt > retries:
                raise
    return plain_results(out, n, step.name)
