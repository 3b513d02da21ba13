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
item uses (a key is the node and its inputs' values). Not used for maps with callbacks
(their events are per outer item): those run each nested map inside its item, as before.
``run()`` spreads its nested maps too: ``Runtime.nested_map`` (Engine.run).
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import renumber_item
from ..model.mapping import expand_rows
from ..model.plan import Plan, Step

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
    results = map_rows(step.inner, shared, flat, flat_rt) if flat else []
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
