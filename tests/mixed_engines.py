"""Engines whose maps spread every pipeline's top-level nodes over executors in turn: the
contract suite and the crash matrix run their cases on them too, as maps of several
stages (node k gets ``executor=cycle[k % len(cycle)]`` unless it has a hint)."""

from __future__ import annotations

#: engine class name -> the executors its nodes cycle through (the first is never the
#: engine's own kind, so a one-node pipeline runs elsewhere too)
CYCLES = {
    "ThreadEngine": ("process", "inline", "thread", "async"),
    "AsyncEngine": ("process", "inline", "async"),
    "ProcessEngine": ("thread", "process", "async", "inline"),
    # AutoEngine: the user's hints win over its choices (the other nodes it places)
    "AutoEngine": ("process", "inline", "thread", "async"),
}


def mixed(cls: type, cycle: tuple[str, ...] | None = None) -> type:
    """``cls`` whose maps put node k of a pipeline on ``cycle[k % len(cycle)]``."""
    cycle = cycle or CYCLES[cls.__name__]

    class Mixed(cls):
        def _prepare(self, plan):
            super()._prepare(plan)
            for k, step in enumerate(plan.steps):
                if not step.hints.get("executor"):
                    step.hints = {**step.hints, "executor": cycle[k % len(cycle)]}

        def __repr__(self):
            return f"{super().__repr__()}+mixed{cycle}"
    Mixed.__name__ = cls.__name__
    return Mixed
