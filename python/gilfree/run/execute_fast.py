"""The no-cache, no-callback paths: where per-item overhead is measured (W4)."""

from __future__ import annotations

from typing import Callable

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


