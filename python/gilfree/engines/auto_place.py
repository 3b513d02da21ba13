"""What AutoEngine does to its per-node choices once each is made (engines/auto.py's
``_place``, before it sizes the thread stages: auto_threads.py): a node it would send to
worker processes stays here when it, a shared input it reads or its first item does not
pickle; a cheap node joins the stage of a neighbour instead of adding a hand-over."""

from __future__ import annotations

from ..model.plan import Step
from ..remote import transport
from ..run.stages import INLINE, PROCESS, THREAD
from .explain import Choice


def sendable(step: Step, c: Choice, base: dict, rows: list[dict]) -> Choice:
    """``c``, unless it sends ``step`` to worker processes and the node, a shared input
    it reads or its input in the first item does not pickle (a lock, a connection):
    then where it would run with no processes, and why."""
    if c.executor != PROCESS or c.user:
        return c
    parts = {f"node {step.name!r}": step.node,
             **{f"input {a!r}": base[a] for a in step.args if a in base}}
    for row in rows:
        parts.update({f"input {a!r} (map item 0)": row[a] for a in step.args if a in row})
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
            if other.executor in (THREAD, PROCESS) and not other.batch:
                c.executor, c.joins = other.executor, other.node
                c.reason = c.reason.replace(": inline", f": joins the stage of {other.node!r}")
                break
