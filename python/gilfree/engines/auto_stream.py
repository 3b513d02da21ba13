"""``AutoEngine.imap`` when a node has not been measured yet (engines/auto.py's
``_stream``): the first items run here, timed, as in a map, and come first; the engine
then places the nodes (``_place_stream``) and the rest streams on the executors chosen
(run/flow.py), numbered on from the measured items."""

from __future__ import annotations

import time
from typing import Any, Iterator

from ..model.plan import Plan, Step
from ..model.stateful import end_map, new_map
from ..run.flow import Stream, iterate, take_rows
from ..run.runtime import Runtime, maps_on
from .auto_rerun import remembering


def probed_stream(engine: Any, plan: Plan, base: dict, rows: Iterator[dict], rt: Runtime,
                  ordered: bool, read_ahead: int | None, total: int | None,
                  mapped: set[str], unmeasured: list[Step], probe_items: int
                  ) -> Iterator[Any]:
    """imap with a node not measured yet: the first items run here, timed (as in a
    map), and come first; the rest streams, numbered on from them, on the executors
    chosen. The map is announced here, and ended by the stream (or here, if the
    consumer stops before it starts)."""
    t0 = time.perf_counter()
    generation = engine._shutdowns
    if rt.callbacks:
        rt.emit("on_map_start", total)
    stream = None
    try:
        head, broke = take_rows(rows, probe_items, 0)
        measured_rt = rt.with_collect()  # the policy is applied as each is yielded
        number = new_map()
        samples: dict[str, Any] = {}
        try:
            with maps_on(engine):  # a node that maps: on this engine (noted, _execute_map)
                out = (engine._probe(plan, base, head, measured_rt, unmeasured, 0, samples)
                       if head else [])
        finally:
            end_map(number)
        engine._place_stream(plan, None if total is None else total - len(head), total,
                             rt, t0, sent=(base, head[:1]), samples=samples)
        for result in out:
            if isinstance(result, BaseException) and not rt.collect:
                raise result
            yield result
        if broke is not None:  # the input raised: after the items read before it
            raise broke
        if engine._shutdowns != generation:  # shutdown() meanwhile: no new item starts
            ahead = next(rows, None)
            if ahead is None and rt.collect:
                return  # (the measured items were all of them)
            raise engine._shut_down_error()
        stream = Stream(engine, plan, engine._scoped(base), rows, rt, ordered=ordered,
                        read_ahead=read_ahead, collect=rt.collect, total=total,
                        mapped=mapped, remote_base=base, offset=len(head),
                        announce=False)
        yield from remembering(iterate(stream), engine._last.choices,
                               engine._unsent_output(plan))
    finally:
        if stream is None and rt.callbacks:  # (a stream ends the map itself)
            rt.emit("on_map_end", time.perf_counter() - t0)
