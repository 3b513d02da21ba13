"""What AutoEngine does to its per-node choices once each is made (engines/auto.py's
``_place``, before it sizes the thread stages: auto_threads.py): a node it would send to
worker processes stays here when it, a shared input it reads, its first item, or its
output in the measured items does not pickle, or an output of it did not in an earlier
map; a cheap node joins the stage of a neighbour instead of adding a hand-over (never a
process stage when a value of it does not pickle). Items whose values still cannot travel
run again here after the map: auto_rerun.py."""

from __future__ import annotations

from typing import Any, Callable

from ..model.plan import Plan, Step
from ..remote import transport
from ..run.stages import INLINE, PROCESS, THREAD
from .explain import Choice


def sendable(step: Step, c: Choice, base: dict, rows: list[dict],
             known: str | None = None) -> Choice:
    """``c``, unless it sends ``step`` to worker processes and the node, a shared input
    it reads or its input in the first item does not pickle (a lock, a connection), or
    ``known`` says what of it did not (an output, in an earlier map): then where it
    would run with no processes, and why."""
    if c.user:
        return c
    if known is not None and c.cheap:  # (inline, and it must not join a process stage)
        c.local = True
        c.reason = c.reason.replace(": inline", f", but {known} does not pickle: inline")
        return c
    if c.executor != PROCESS:
        return c
    culprit = known
    if culprit is None:
        parts = {f"node {step.name!r}": step.node,
                 **{f"input {a!r}": base[a] for a in step.args if a in base}}
        for row in rows:
            parts.update({f"input {a!r} (map item 0)": row[a] for a in step.args
                          if a in row})
        culprit = transport.find_unpicklable(lambda: parts)
    if culprit is None:
        return c
    why = f"but {culprit} does not pickle (worker processes take everything by pickle)"
    if c.reason.startswith("its function maps"):  # (AutoEngine._mapper's choice)
        return Choice(step.name, THREAD, f"its function maps, {why}: here on threads, its "
                      "maps on this engine", c.measure, waiting=True)
    return Choice(step.name, INLINE, f"pure-Python CPU, {why}: inline", c.measure)


def fuse(choices: list[Choice]) -> None:
    """Cheap nodes join the stage of their nearest neighbour that runs on threads or
    processes (the previous one first), so that they add no hand-over of their own; with
    none, they stay inline."""
    for k, c in enumerate(choices):
        if not c.cheap:
            continue
        before = [o for o in reversed(choices[:k]) if not o.cheap][:1]
        after = [o for o in choices[k + 1:] if not o.cheap][:1]
        for other in before + after:
            if (other.executor == THREAD or other.executor == PROCESS and not c.local) \
                    and not other.batch:
                c.executor, c.joins = other.executor, other.node
                c.reason = c.reason.replace(": inline", f": joins the stage of {other.node!r}")
                break


def leaving(plan: Plan, choices: list[Choice], k: int) -> list[str]:
    """The outputs of step ``k`` (placed in worker processes) that leave its process
    stage (consecutive process steps run as one, stages.py): the map's outputs, and those
    a step outside the stage reads. Only they travel back by pickle."""
    lo = hi = k
    while lo > 0 and choices[lo - 1].executor == PROCESS:
        lo -= 1
    while hi + 1 < len(choices) and choices[hi + 1].executor == PROCESS:
        hi += 1
    outside = plan.steps[:lo] + plan.steps[hi + 1:]
    return [o for o in plan.steps[k].out_names
            if o in plan.outputs or any(o in t.args for t in outside)]


def unsent_outputs(plan: Plan, choices: list[Choice], samples: dict[str, Any],
                   remember: Callable[[Step, str], None]) -> bool:
    """After the measured items: a step placed in worker processes (not by the user)
    whose output in them does not pickle and would leave the stage (a generator, a lock)
    is remembered as such (``remember(step, what)``): True if one was (choose again)."""
    found = False
    for k, (step, c) in enumerate(zip(plan.steps, choices)):
        if c.executor != PROCESS or c.user or step.name not in samples:
            continue
        out = leaving(plan, choices, k)
        if not out:
            continue
        value = samples[step.name]
        names = step.out_names
        values = (dict(zip(names, value)) if len(names) > 1 and isinstance(value, tuple)
                  and len(value) == len(names) else {names[0]: value})
        culprit = transport.find_unpicklable(
            lambda: {f"its output {o!r} in a measured item": v for o, v in values.items()
                     if o in out})
        if culprit is not None:
            remember(step, culprit)
            found = True
    return found

