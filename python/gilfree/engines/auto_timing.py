"""AutoEngine's timing of a node's calls on the measured items (auto.py's probe): wall
and CPU time, time spent waiting for a core, and a helper thread that tells whether a
call let other threads run Python (released the GIL); the first return value of each
(``sampled``: must it stay here?); after a map, measurements that no longer hold
(``forget_changed``)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..run.stages import INLINE


class Ticker:
    """A helper thread that wakes every 0.5 ms and counts the times it got the GIL;
    ``starved()``: the seconds it has spent runnable but waiting for a core."""

    def __init__(self) -> None:
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="gilfree-auto-gil-probe")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.0005):
            self.runs += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def starved(self) -> float:
        return queued_s(f"/proc/self/task/{self._thread.native_id}/schedstat")


def queued_s(schedstat: str = "/proc/thread-self/schedstat") -> float:
    """Seconds a thread (this one) has spent runnable but waiting for a core (Linux
    schedstat: preemption by other processes, not waiting for I/O or a lock); 0.0 where
    it is not told."""
    try:
        with open(schedstat, "rb") as f:
            return int(f.read().split()[1]) * 1e-9
    except (OSError, IndexError, ValueError):
        return 0.0


#: The node whose call this thread is timing now (a map it makes is noted against it).
probing = threading.local()


def timed(func: Any, calls: list, ticker: Ticker, key: Any = None) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        outer, probing.key = getattr(probing, "key", None), key
        q0, s0 = queued_s(), ticker.starved()
        # The reads released the GIL (file I/O) and may have woken the helper: it takes
        # its turn now, not inside the call (where it added ~10 us to a trivial call
        # after a long pure-Python one, in 15 of 60 runs: too dear to stay inline).
        t = time.perf_counter()
        time.sleep(0)
        runs, w0, c0 = ticker.runs, time.perf_counter(), time.thread_time()
        # On a busy machine that yield can wait for a core for milliseconds: that wait
        # is not the call's (counted as the call's, a 1 ms sleep looked computing).
        yielded = w0 - t
        try:
            return func(*args, **kwargs)
        finally:
            wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
            runs = ticker.runs - runs  # now: a file read below lets the helper run
            # The schedstat reads are outside the timed call, and a read can wait for
            # the GIL and then for a core: the call waited at most its time off a core.
            queued = min(max(0.0, queued_s() - q0 - yielded), max(0.0, wall - cpu))
            calls.append((wall, cpu, runs, queued, max(0.0, ticker.starved() - s0 - yielded)))
            probing.key = outer
    return call


def timing_floor(ticker: Ticker, tries: int = 5) -> tuple[float, float]:
    """What ``timed`` itself adds to a call's (wall, CPU) seconds: the fastest of a few
    timed calls that do nothing. Reading the thread's CPU clock is a system call (1-2 us
    on a VM), so a trivial node measures several us; the floor is taken off each call,
    or a node as cheap as ``os.getpid`` could look too dear to stay inline."""
    calls: list = []
    noop = timed(lambda: None, calls, ticker)
    for _ in range(tries):
        noop()
    return min(c[0] for c in calls), min(c[1] for c in calls)


def less_floor(calls: list, floor: tuple[float, float]) -> list:
    wall, cpu = floor
    return [(max(0.0, w - wall), max(0.0, c - cpu), *rest) for w, c, *rest in calls]


def sampled(func: Any, samples: dict[str, Any] | None, name: str) -> Any:
    """``func``, keeping its first return value in ``samples[name]``."""
    if samples is None:
        return func

    def call(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        samples.setdefault(name, result)
        return result
    return call


#: A node run inline whose items take this many times its measured call, and at least
#: CHANGED_MIN_S each, in a map is measured again at the next map (its calls changed).
CHANGED_BY, CHANGED_MIN_S = 10, 0.001


def forget_changed(measures: dict, key: Callable[[Any], Any], plan: Any, choices: list,
                   items: int, seconds: float) -> None:
    """Nodes run inline whose items took far longer than their measured calls (a
    cache that now misses and goes to the network) are measured again at the next
    map: a measurement is kept across maps only while it holds."""
    inline = [(s, c) for s, c in zip(plan.steps, choices)
              if c.executor == INLINE and not c.user and c.measure is not None]
    if not inline or not items:
        return
    if all(c.executor == INLINE for c in choices):  # one stage: the map's own time
        groups = [(inline, seconds / items, sum(c.measure.wall for _, c in inline))]
    else:  # a stage of its own (a fused one's time is its neighbour's)
        groups = [([(s, c)], c.stage[1] / c.stage[0], c.measure.wall)
                  for s, c in inline if c.stage and c.stage[0] and not c.joins]
    for group, took, measured in groups:
        if took > max(CHANGED_BY * measured, CHANGED_MIN_S):
            for s, c in group:
                measures.pop(key(s), None)
                c.reason += (f"; its items took {took * 1e3:.1f} ms each in this map: "
                             "measured again at the next")
