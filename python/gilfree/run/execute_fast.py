"""The no-cache, no-callback paths: where per-item overhead is measured (W4).

These are specialisations of the item runner (execute.py), chosen in one place each:
``untraced(plan, rt)`` says whether they apply (no cache, no callbacks, no retries, plain
synchronous steps); then SeqEngine's loop (``_fast_map``), a thread pool's row function
(``fast_row_function``) and a worker's column path (``column_step``/``map_columns``)
run the same steps without the per-step bookkeeping of ``StepCall``.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any, Callable

from ..errors import annotate
from ..model.plan import Plan
from .runtime import _store, invoke


def _fast_map(plan: Plan, base: dict, rows: list[dict], collect: bool, first: int) -> list:
    """SeqEngine's loop: the row function of ``fast_row_function``, item after item."""
    run = fast_row_function(plan, base, first)
    results = []
    append = results.append
    for pair in enumerate(rows):
        try:
            append(run(pair))
        except Exception as exc:
            if not collect:
                raise
            append(exc)
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
                r = invoke(step, step.func, values)
                if step.multi:
                    _store(step, r, values)
                else:
                    values[step.out0] = r
        except Exception as exc:
            annotate(exc, step.name, first + i)
            raise
        return {o: values[o] for o in outputs}

    return run_row




def untraced(plan: Plan, rt: Any) -> bool:
    """True when the fast paths run ``plan`` as the item runner would: nothing to look
    up, announce or retry. ``rt``: a Runtime, or a worker's RemoteOptions."""
    return (plan.simple and not getattr(rt, "retries", 0)
            and not (rt.tracing if hasattr(rt, "tracing")
                     else rt.cache is not None or rt.events))


# -- a worker's column path -------------------------------------------------------------
def column_step(plan: Plan, rt: Any) -> Any:
    """The step of a plan that the column path can run: one plain function called with
    positional arguments, one output, untraced (W4's and W5's shape). A sub-batch is
    then ``map(f, column, ..., repeat(constant))``: no dict per item, no per-item
    interpreter loop."""
    if not untraced(plan, rt) or len(plan.steps) != 1:
        return None
    step = plan.steps[0]
    if step.nargs < 1 or step.multi or plan.outputs != [step.out0]:
        return None
    return step


def column_sources(step: Any, base: dict, names: list, cols: list) -> list | None:
    """Per argument: its column (mapped input) or its constant (broadcast input)."""
    out = []
    for arg in step.args:
        if arg in names:
            out.append((True, cols[names.index(arg)]))
        elif arg in base:
            out.append((False, base[arg]))
        else:
            return None
    return out


def map_columns(step: Any, sources: list, a: int, b: int, first: int,
                collect: bool) -> tuple[list, bool]:
    """Items [a, b) through ``step``: (their results or, under ``collect``, exceptions
    annotated with node and item; whether any failed). Raises the first error otherwise."""
    func = step.func
    out: list = []
    k = a
    failed = False
    while k < b:
        its = [value[k:b] if is_col else repeat(value, b - k) for is_col, value in sources]
        before = len(out)
        try:
            out.extend(map(func, *its))  # items done before a failure stay in `out`
            break
        except Exception as exc:
            k += len(out) - before
            annotate(exc, step.name, first + k)
            if not collect:
                raise
            out.append(exc)
            failed = True
            k += 1
    return out, failed
