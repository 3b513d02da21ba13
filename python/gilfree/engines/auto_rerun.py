"""AutoEngine's map on the executors it chose, keeping ThreadEngine's results where
worker processes cannot take a value: an item whose input could not be sent to a worker
process AutoEngine chose, or whose output could not come back, runs again here, whole
(the user's own ``executor="process"`` keeps ProcessEngine's rule: a SerializationError).

    run_rows(engine, ...)
      no node sent to processes by AutoEngine -> engine._run_on (the map as chosen)
      "raise":   the map as chosen; it stops at its first error, as always; only when
                 that error is such a value's: the map again, under "collect" (below),
                 then the first error left raises
      "collect": the map as chosen; each item whose error is such a value's runs here
                 (run_unsent_here); a node whose output did not pickle is remembered:
                 the next maps keep it here (auto_place.sendable)
    remembering(stream, ...)
      an imap cannot run an item again (it has passed it on): the item keeps its
      SerializationError; a node whose output did not pickle is remembered all the same
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from ..errors import SerializationError
from ..model.plan import Plan
from ..run.execute import Runtime, execute_map
from ..run.stages import PROCESS
from .explain import Choice


def unsent(exc: Any, sent_here: set[str]) -> bool:
    """``exc`` is a map item's error that says one of its values could not travel
    between this process and a worker process running a node of ``sent_here``."""
    return (isinstance(exc, SerializationError) and exc.nodes is not None
            and (not exc.nodes or bool(set(exc.nodes) & sent_here)))


def run_unsent_here(out: list, rows: list[dict], sent_here: set[str],
                    run_here: Callable[[dict, int], Any],
                    remember: Callable[[str, SerializationError], None]) -> None:
    """The items of a map run with "collect" (``out``) that failed because a value of
    theirs could not travel to or from worker processes AutoEngine chose (``sent_here``:
    those nodes) run again here (``run_here(row, k)``: the whole item, one after
    another); a node whose output did not travel is remembered (``remember``): the next
    maps keep it here."""
    for k, result in enumerate(out):
        if unsent(result, sent_here):
            if result.value == "output":
                for name in result.nodes:
                    remember(name, result)
            out[k] = run_here(rows[k], k)


def run_rows(engine: Any, plan: Plan, base: dict, rows: list[dict], rt: Runtime,
             first: int, announce: bool, choices: list[Choice],
             remember: Callable[[str, SerializationError], None]) -> list:
    """``rows`` on the executors chosen (``engine._run_on``), as the module docstring
    says; ``remember(node, error)``: a node's output did not pickle."""
    sent_here = {c.node for c in choices if c.executor == PROCESS and not c.user}
    if not sent_here or not rows:
        return engine._run_on(plan, base, rows, rt, first, announce)
    announce = announce and bool(rt.callbacks)
    t0 = time.perf_counter()
    if announce:  # (once, whether the map runs once or twice)
        rt.emit("on_map_start", len(rows))
    try:
        if not rt.collect:
            try:
                return engine._run_on(plan, base, rows, rt, first, False)
            except SerializationError as exc:
                if not unsent(exc, sent_here):
                    raise
        out = engine._run_on(plan, base, rows, rt.with_collect(), first, False)

        def run_here(row: dict, k: int) -> Any:
            return execute_map(plan, engine._scoped(base), [row], rt.with_collect(),
                               first_index=first + k, announce=False)[0]
        run_unsent_here(out, rows, sent_here, run_here, remember)
        if not rt.collect:
            for result in out:
                if isinstance(result, BaseException):
                    raise result
        return out
    finally:
        if announce:
            rt.emit("on_map_end", time.perf_counter() - t0)


def remembering(results: Iterator, choices: list[Choice],
                remember: Callable[[str, SerializationError], None]) -> Iterator:
    """An imap's ``results`` as they come; an item's error (yielded under "collect",
    raised under "raise") that says a node's output AutoEngine sent to worker processes
    did not come back is remembered (``remember``). Closing this closes ``results``."""
    sent_here = {c.node for c in choices if c.executor == PROCESS and not c.user}

    def note(exc: Any) -> None:
        if unsent(exc, sent_here) and exc.value == "output":
            for name in exc.nodes:
                remember(name, exc)
    try:
        for result in results:
            if isinstance(result, SerializationError):
                note(result)
            yield result
    except SerializationError as exc:
        note(exc)
        raise
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
