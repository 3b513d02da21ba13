"""What ``AutoEngine.explain()`` returns: per node, where it ran and why.

    >>> print(engine.explain())
    node   executor  concurrency             measured                 items/s  why
    fetch  thread    <= 198 threads, ...     10.12 ms, 2% CPU (...)   6,843    waits ...

A plain-text table for ``print``, an HTML table for notebooks (``_repr_html_``), and
``rows`` (a list of dicts) for code.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Measure:
    """A node's calls on the first items of a map: the fastest one counts (the first
    call may build a @stateful object or warm a cache)."""
    wall: float  # seconds
    cpu: float  # the calling thread's CPU seconds during that call
    #: Times per ms a helper thread got the GIL during a call (the one _gil_rate picks)
    helper_rate: float
    calls: int
    queued: float = 0.0  # seconds that call spent waiting for a core (preempted)
    #: The highest share of CPU time in the time a call did not wait for a core, over
    #: the calls timed: a computing call that other processes (or threads holding the
    #: GIL) slowed down still counts as computing if one call ran undisturbed.
    cpu_share: float = 0.0
    items: int = 1  # items per timed call (a DualNode's batch call: the measured items)

    @classmethod
    def of(cls, calls: list[tuple[float, float, int, float, float]],
           gil_test_min_s: float = 0.0) -> "Measure":
        """``calls``: per call (wall, cpu, helper runs, queued, the helper's time
        waiting for a core), all in seconds but the runs."""
        wall, cpu, _, queued, _ = min(calls)
        share = max(_share(w, c, q) for w, c, _, q, _ in calls)
        return cls(wall, cpu, _gil_rate(calls, gil_test_min_s), len(calls), queued, share)

    def releases_gil(self, min_s: float, runs_per_ms: float) -> bool:
        """Whether the call let other threads run Python (numpy, C extensions): only a
        call of ``min_s`` or longer can tell; a shorter one counts as holding it."""
        return self.wall >= min_s and self.helper_rate >= runs_per_ms

    def describe(self) -> str:
        wall = (f"{self.wall * 1e3:.2f} ms" if self.wall >= 1e-3 else
                f"{self.wall * 1e6:.1f} us")
        queued = (f", {self.queued / self.wall:.0%} waiting for a core"
                  if self.wall > 0 and self.queued > 0.1 * self.wall else "")
        calls = f"{self.calls} call{'s' if self.calls != 1 else ''}"
        if self.items > 1:
            calls += f" of {self.items} items"
        return f"{wall}, {self.cpu_share:.0%} CPU{queued} ({calls} timed)"


@dataclass
class Choice:
    """Where one node runs in a map, and why."""
    node: str
    executor: str
    reason: str
    measure: Measure | None = None
    user: bool = False  # the user's executor= hint
    cheap: bool = False  # inline by its cost (it may join a neighbour's stage)
    batch: bool = False  # a DualNode: a stage of its own
    threads_cap: int | None = None  # CPU that releases the GIL: one call per core
    waiting: bool = False  # mostly waits: threads sized by Little's law (auto_threads.py)
    threads: int | None = None  # the threads its stage uses (None: the engine's)
    joins: str | None = None  # a cheap node: the neighbour whose stage it runs in
    local: bool = False  # a value of it does not pickle: it never joins a process stage
    pace: float | None = None  # a waiting node in a stream: items/s it has to sustain
    batch_size: int | None = None  # a measured DualNode: the batch size chosen
    adapt: Any = None  # ... and how it followed the calls' time (execute_batch.BatchAdapt)
    concurrency: str = ""
    #: (items, seconds) of its stage in the last map: the stages of a map run one after
    #: another, so each has a time of its own; in a stream (imap) they overlap: the
    #: seconds some item of the stage was running (None: not timed)
    stage: tuple[int, float] | None = None

    @property
    def items_per_s(self) -> float | None:
        if self.stage is None or self.stage[1] <= 0:
            return None
        return self.stage[0] / self.stage[1]

    def row(self) -> dict[str, Any]:
        m, rate = self.measure, self.items_per_s
        resized = self.adapt.describe() if self.adapt is not None else ""
        return {"node": self.node, "executor": self.executor,
                "concurrency": self.concurrency + (f" ({resized})" if resized else ""),
                "measured": m.describe() if m is not None else "-",
                "items/s": f"{rate:,.0f}" if rate is not None else "-",
                "why": self.reason,
                "wall_s": m.wall if m else None, "cpu_s": m.cpu if m else None,
                "items_per_s": rate}


def resized(choices: list[Choice]) -> Any:
    """The ``Runtime.on_resize`` of a stream: a waiting node's stage re-sized itself
    (Little's law with its latency of the moment); its row says so."""
    def on_resize(names: list[str], threads: int, latency: float) -> None:
        for c in choices:
            if c.node in names and c.waiting:
                c.threads = threads
                c.concurrency = (f"<= {threads} threads (re-sized while running: "
                                 f"{latency * 1e3:.1f} ms per call)")
    return on_resize


def stream_ended(explanation: "Explanation", t0: float) -> Any:
    """The ``Runtime.on_stream_end`` of a stream that started at ``t0``: items/s per
    stage (over the time each had items running) and the stream's items and time."""
    def on_stream_end(timed: list, items: int) -> None:
        time_stages(explanation.choices, timed)
        explanation.items, explanation.seconds = items, time.perf_counter() - t0
    return on_stream_end


def time_stages(choices: list[Choice], timed: list[tuple[list[str], int, float]]) -> None:
    """Give each choice the (items, seconds) of the stage its node ran in (the map's
    stage times: run/execute.py's ``Runtime.stage_times``)."""
    by_node = {c.node: c for c in choices}
    for names, items, seconds in timed:
        for name in names:
            if name in by_node:
                by_node[name].stage = (items, seconds)


#: A call tells whether it releases the GIL only if the helper thread waited for a core
#: (other processes on every core) for less than this share of it: a helper without a
#: core runs as rarely beside a call that releases the GIL as beside one that holds it.
#: (The caller's own waits for a core do not matter: preempted while holding the GIL,
#: it keeps it.) Measured with two busy processes on the 2-core VM: the helper's wait
#: was either under 1% of a call or over 30%.
HELPER_STARVED = 0.1


def _gil_rate(calls: list[tuple[float, float, int, float, float]], min_s: float) -> float:
    """The helper's runs per ms in the fastest call that can tell (at least ``min_s``
    long, the helper not starved); with none, in the fastest call. (Not the highest
    rate of all: beside a call that holds the GIL, other threads waiting for it make it
    change hands more often, and one call in a few can give the helper several runs.)"""
    told = [c for c in calls if c[0] >= min_s and c[4] < HELPER_STARVED * c[0]]
    w, _, runs, _, _ = min(told or calls)
    return runs / (w * 1e3) if w > 0 else 0.0


def _share(wall: float, cpu: float, queued: float) -> float:
    ran = wall - min(queued, wall)
    return min(1.0, cpu / ran) if ran > 0 else 1.0


_COLUMNS = ("node", "executor", "concurrency", "measured", "items/s", "why")


def _items(n: int) -> str:
    return f"{n} item" + ("" if n == 1 else "s")


@dataclass
class Explanation:
    """The choices of one map (``items`` items in ``seconds``; None: not known, e.g. a
    stream still running; ``stream``: an imap)."""
    choices: list[Choice] = field(default_factory=list)
    items: int | None = None
    seconds: float | None = None
    stream: bool = False
    #: the error that ended the map (under on_error="raise"), if one did
    failed: BaseException | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [c.row() for c in self.choices]

    def summary(self) -> str:
        if not self.choices:
            return "no map has run on this engine yet"
        if self.failed is not None:
            return (f"last map: {_items(self.items)}, stopped after {self.seconds * 1e3:.1f} ms "
                    f"by an error: {type(self.failed).__name__}: {self.failed}")
        if self.items is None or self.seconds is None:
            return "last map: a stream (imap), still running"
        rate = f", {self.items / self.seconds:,.0f} items/s" if self.seconds > 0 else ""
        what = "a stream (imap) of " if self.stream else ""
        return f"last map: {what}{_items(self.items)} in {self.seconds * 1e3:.1f} ms{rate}"

    def __str__(self) -> str:
        rows = [[str(r[c]) for c in _COLUMNS] for r in self.rows]
        widths = [max([len(c)] + [len(r[k]) for r in rows]) for k, c in enumerate(_COLUMNS)]

        def line(cells: Any) -> str:
            return "  ".join(v.ljust(w) for v, w in zip(cells, widths)).rstrip()
        return "\n".join([line(_COLUMNS), *(line(r) for r in rows), self.summary()])

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{c}</th>" for c in _COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>"
                                        for c in _COLUMNS) + "</tr>" for r in self.rows)
        return (f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"<p>{html.escape(self.summary())}</p>")
