"""How many threads AutoEngine gives a node that mostly waits: Little's law.

    threads in flight = throughput x latency

The latency is the node's measured call (its wall time). The throughput is what the
node has to keep up with:

    map (stages run one after another)  the stage alone: all its items in one call's
                                        time, so as many threads as items
    imap (stages overlap)               the pace of the slowest measured stage beside it
                                        (worker processes: workers / call; inline:
                                        1 / call; GIL-releasing threads: cores / call),
                                        with HEADROOM for its jitter: more threads would
                                        only pile finished items in front of it
                                        (a fast stage must not flood a slow one); and
                                        while the stream runs, the stage re-sizes itself
                                        with its latency of the moment (a server that
                                        slows down gets more threads: STAGE_PACE,
                                        run/stage_runners.py)

Either way at least one per core and at most the engine's ``max_workers``. (A waiting
call's own CPU time is no guide to how many fit beside each other under the GIL: the
kernel bills a 10 ms ``time.sleep`` 0.06-0.7 ms of thread CPU on the development VM.)
"""

from __future__ import annotations

import math

from ..run.stages import INLINE, PROCESS, THREAD
from .explain import Choice

#: Threads for a waiting stage in a stream: this many times pace x latency.
HEADROOM = 2.0


def capacity(c: Choice, workers: int) -> float | None:
    """Items per second the stage of ``c`` can take, from its measurement; None where
    not known (not measured, a DualNode, the loop, a waiting node: it scales)."""
    m = c.measure
    if m is None or m.wall <= 0 or c.cheap or c.waiting or c.batch:
        return None
    if c.executor == PROCESS:
        return workers / m.wall
    if c.executor == INLINE:
        return 1.0 / m.wall
    if c.executor == THREAD and c.threads_cap:
        return c.threads_cap / m.wall
    return None


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def size_threads(choices: list[Choice], items: int | None, streaming: bool, workers: int,
                 max_workers: int, cores: int) -> None:
    """Set ``threads`` (and say why) on every waiting node of ``choices``."""
    for c in choices:
        if not c.waiting:
            continue
        latency = c.measure.wall
        paces = [(rate, o.node) for o in choices if o is not c
                 and (rate := capacity(o, workers)) is not None]
        if streaming and paces:
            rate, slowest = min(paces)
            c.pace = rate * HEADROOM  # the stream re-sizes it by its latency as it runs
            want = math.ceil(rate * latency * HEADROOM)
            why = (f"Little's law: the pace of {slowest!r} ({rate:,.0f} items/s) x "
                   f"{latency * 1e3:.1f} ms x {HEADROOM:g}")
        elif items:
            want = items
            why = f"Little's law: its {_n(items, 'item')} in one call's time"
        elif items == 0:  # (the measured items were all of them)
            continue
        else:
            want = max_workers
            why = "a stream with no slower stage measured"
        c.threads = max(min(cores, max_workers), min(want, max_workers))
        capped = " (capped at max_workers)" if want > max_workers else ""
        c.reason += f"; {why} = {c.threads} threads{capped}"
