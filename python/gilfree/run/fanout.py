"""Nested maps as one pool of work (the "mega-batch").

A map whose items each run a nested pipeline with ``map_over`` would otherwise run each
item's inner map inside that item: on a ProcessEngine one worker runs all 400 inner
items of a single outer item (the other cores idle), and 400 outer items of 5 inner
items each pay an inner map's start-up 400 times. Instead, the nested step is a stage
of its own (stages.py, kind "fanout"): the inner items of every live outer item are
laid out as the rows of ONE map of the inner pipeline, run by the engine as any map
(its workers, its batches), and the results are cut back per outer item:

    outer items  0: [a, b, c]   1: [d]   2: []   3: [e, f]
    one map      a b c d e f       -> results r_a .. r_f
    outer values 0: {out: [r_a, r_b, r_c]}  1: {out: [r_d]}  2: {out: []}  3: ...

What ``_run_nested`` (execute.py) does per item holds here too: the inner inputs are
the pipeline's bound inputs plus the outer values it reads (renamed), expanded with
``map_over``/``map_mode``; an inner failure fails its outer item, with the inner note
numbering the item within its own inner map and a note naming the nested pipeline and
the outer item. With a cache, the inner items are cached under the keys an inner map per
item uses (a key is the node and its inputs' values). With callbacks, the one map's
events are told as one inner map per outer item (``_InnerMaps``): each outer item's
``on_nested_pipeline_start``/``on_map_start(its items)`` come when its first inner item
starts, its items are numbered within it, and its ``on_map_end``/
``on_nested_pipeline_end`` come when its last one ends (several may be open at once, as
when outer items run on threads). ``run()`` spreads its nested maps too:
``Runtime.nested_map`` (Engine.run).
"""

from __future__ import annotations

import copy
import time
from bisect import bisect_right
from collections import deque
from typing import Any, Callable

from ..errors import renumber_item
from ..model.mapping import expand_rows
from ..model.plan import Plan, Step
from .runtime import _deliver

#: ``map_rows(plan, shared, rows, rt)``: the engine's map of ``plan`` over ``rows`` (each
#: row overlaying ``shared``), under rt's "collect" policy: a list of results/exceptions.
MapRows = Callable[[Plan, dict, list, Any], list]


def run_fanout(step: Step, values: list[dict], failed: list, rt: Any, collect: bool,
               first: int, map_rows: MapRows) -> None:
    """``step`` (a nested pipeline with map_over) for every live item of ``values``:
    outputs into ``values``, failures into ``failed`` (the first raised unless
    ``collect``)."""
    owner = f"nested pipeline {step.name!r}"
    parts: list[tuple[int, dict, list[dict]]] = []  # (outer item, inner base, inner rows)
    for i, v in enumerate(values):
        if failed[i] is not None:
            continue
        inner_values = step.pipeline.bound_inputs
        for outer, inner in step.arg_map:
            inner_values[inner] = v[outer]
        try:
            base, rows = expand_rows(inner_values, step.map_over, step.map_mode, owner)
        except Exception as exc:
            _fail(failed, i, exc, step, first)
            continue
        parts.append((i, base, rows))
    shared, flat = _lay_out(parts)
    flat_rt = rt.inside(step).with_collect()  # each outer item takes its own errors
    events = None
    if rt.callbacks:
        flat_rt, events = _told_per_outer_item(flat_rt, step, [len(r) for _, _, r in parts])
    try:
        results = map_rows(step.inner, shared, flat, flat_rt) if flat else []
    finally:
        if events is not None:
            events.close()
    at = 0
    for i, _, rows in parts:
        mine = results[at:at + len(rows)]
        bad = next((j for j, r in enumerate(mine) if isinstance(r, BaseException)), None)
        if bad is not None:
            renumber_item(mine[bad], at + bad, bad)  # its number within its inner map
            _fail(failed, i, mine[bad], step, first)
        else:
            for inner, outer in step.out_map:
                values[i][outer] = [r[inner] for r in mine]
        at += len(rows)
    if not collect:
        first_failed = next((e for e in failed if e is not None), None)
        if first_failed is not None:
            raise first_failed


def _lay_out(parts: list[tuple[int, dict, list[dict]]]) -> tuple[dict, list[dict]]:
    """The inner items of every part as rows of one map: an input that is the same
    object for every part is shared (a model travels once), the others ride in each
    row."""
    if not parts:
        return {}, []
    first_base = parts[0][1]
    shared = {k: v for k, v in first_base.items()
              if all(k in b and b[k] is v for _, b, _ in parts[1:])}
    flat = []
    for _, base, rows in parts:
        own = {k: v for k, v in base.items() if k not in shared}
        for row in rows:
            flat.append({**own, **row} if own else row)
    return shared, flat


def _fail(failed: list, i: int, exc: BaseException, step: Step, first: int) -> None:
    exc.add_note(f"gilfree: inside nested pipeline {step.name!r} (map item {first + i})")
    failed[i] = exc


def _told_per_outer_item(rt: Any, step: Step, sizes: list[int]) -> tuple[Any, "_InnerMaps"]:
    """The one map's runtime, its events told as an inner map per outer item."""
    ctx = rt.ctx
    parent = ctx.current_pipeline_id
    events = _InnerMaps(rt.callbacks, ctx, sizes, parent, step.inner.pipeline_id)
    flat_rt = copy.copy(rt)
    flat_rt.callbacks = [events]
    flat_rt.pending = deque()  # its events flush through `events`, not the outer map's
    events.open_empty()
    ctx.push_pipeline(step.inner.pipeline_id)  # as _run_nested does for an inner map
    events.depth = len(ctx.hierarchy_path)
    return flat_rt, events


class _InnerMaps:
    """The only callback of a fan-out's one map: passes its events on to the real ones,
    except its own map's (at its depth): ``on_map_start``/``on_map_end`` are dropped, and
    item ``k``'s events become item ``j`` of outer item ``i``'s inner map, that map's
    brackets (nested pipeline start, map start; map end, nested pipeline end) around
    them. Events of maps nested deeper pass unchanged."""

    def __init__(self, callbacks: list, ctx: Any, sizes: list[int], parent: Any,
                 child: Any):
        self.callbacks, self.ctx = callbacks, ctx
        self.parent, self.child = parent, child
        self.sizes = sizes
        self.starts = [0]
        for n in sizes:
            self.starts.append(self.starts[-1] + n)
        self.left = list(sizes)  # items of each outer item's map not ended yet
        self.opened: dict[int, float] = {}  # outer item -> when its inner map started
        self.depth = 0

    def __getattr__(self, event: str) -> Callable:
        if not event.startswith("on_"):
            raise AttributeError(event)
        return lambda *args: self._on(event, args[:-1], args[-1])

    def _on(self, event: str, args: tuple, ctx: Any) -> None:
        if len(ctx.hierarchy_path) != self.depth:  # a map nested deeper: as it is
            _deliver(self.callbacks, event, args, ctx)
        elif event in ("on_map_start", "on_map_end"):
            pass  # the one map's: each outer item's inner map is told instead
        elif event in ("on_map_item_start", "on_map_item_end", "on_map_item_cached"):
            k = args[0]
            part = self._part_of(k)
            if part not in self.opened:
                self._open(part, ctx)
            _deliver(self.callbacks, event, (k - self.starts[part], *args[1:]), ctx)
            if event == "on_map_item_end":
                self.left[part] -= 1
                if self.left[part] == 0:
                    self._close(part, ctx)
        else:
            _deliver(self.callbacks, event, args, ctx)

    def _part_of(self, k: int) -> int:
        # the last outer item whose inner items start at or before k (an empty one
        # shares its start with the next, which is after it)
        return bisect_right(self.starts, k) - 1

    def _open(self, part: int, ctx: Any) -> None:
        self.opened[part] = time.perf_counter()
        self._at_parent(ctx, "on_nested_pipeline_start", (self.parent, self.child))
        _deliver(self.callbacks, "on_map_start", (self.sizes[part],), ctx)

    def _close(self, part: int, ctx: Any) -> None:
        took = time.perf_counter() - self.opened[part]
        _deliver(self.callbacks, "on_map_end", (took,), ctx)
        self._at_parent(ctx, "on_nested_pipeline_end", (self.parent, self.child, took))
        self.left[part] = -1  # closed

    def _at_parent(self, ctx: Any, event: str, args: tuple) -> None:
        path = ctx.hierarchy_path
        ctx.hierarchy_path = path[:-1]
        try:
            _deliver(self.callbacks, event, args, ctx)
        finally:
            ctx.hierarchy_path = path

    def open_empty(self) -> None:
        """Outer items with no inner items: an empty inner map each, as _run_nested
        tells it (called before the one map's path is pushed: at the outer level)."""
        ctx = self.ctx
        for part, n in enumerate(self.sizes):
            if n == 0:
                ctx.push_pipeline(self.child)
                try:
                    self._open(part, ctx)
                    self._close(part, ctx)
                finally:
                    ctx.pop_pipeline()

    def close(self) -> None:
        """The one map is over: its path is popped, and inner maps still open (an error
        stopped it before their last item) end now."""
        ctx = self.ctx
        try:
            for part in sorted(self.opened):
                if self.left[part] > 0:
                    self._close(part, ctx)
        finally:
            ctx.pop_pipeline()
