"""Measuring candidates side by side: interleaved rounds, cold and warm, resources.

A candidate is one way of doing a workload (a gilfree engine, or the tool a user would
pick instead).  Warm candidates build their state (pool, engine) once and are warmed up
by one untimed call; cold candidates build it inside every timed call, as a first call
in a fresh notebook would.  Rounds are interleaved (A B A B ...) so drift on a noisy
machine hits every candidate alike; each round runs them in a new (seeded) random order,
and every timed call waits until the machine is quiet (``wait_quiet``), so that no
candidate always pays for the teardown of the same neighbour (a peer's subprocess or
process pool still exiting).  Measured: with a fixed order, ``ThreadEngine`` in W1
always ran right after a daft query and a HyperNodes subprocess and took 13-21 ms in
rounds where it took 12 ms after an idle neighbour.

During every timed call a background thread samples the driver's process tree
(``resources.Sampler``): cores busy (average and peak) and peak RSS of the driver and of
its child processes (the workers).
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from resources import Sampler, descendants


@dataclass
class Timed:
    """What ``Candidate.run`` returns when the call was timed elsewhere (a subprocess):
    ``seconds`` replaces the driver's wall time, which would include the round trip."""
    seconds: float
    result: Any = None
    ok: bool = True


@dataclass
class Candidate:
    label: str
    group: str                                   # "baseline" | "gilfree" | "peer"
    run: Callable[[Any], Any]                    # one timed call, given the state
    make: Callable[[], Any] = lambda: None       # builds the state (pool, engine)
    close: Callable[[Any], None] = lambda state: None
    mode: str = "warm"                           # "warm" | "cold" | "-" (no state)
    check: Callable[[Any], bool] | None = None   # validates one result
    rounds: int | None = None                    # fewer rounds for very slow peers
    unavailable: str | None = None               # why it cannot run here
    skip_quick: str | None = None                # why --quick leaves it out (very slow)
    key: bool = False                            # a row the bar compares (or divides
                                                 # by): all its rounds, however slow
    warmup: Any = None                           # one untimed call first: None = auto
                                                 # (warm rows; "-" rows unless quick),
                                                 # or a callable(state) that warms instead
    before: Callable[[Any], None] | None = None  # untimed, before each timed call
    alone: bool = False                          # its state runs threads in the driver
                                                 # that wake on their own (a dask
                                                 # scheduler): measured apart, see measure
    note: str | None = None                      # shown under the table
    pid: Callable[[Any], int | None] | None = None  # whose process tree to sample
    samples: list[float] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)
    first_call: float | None = None              # make + first (untimed) call, warm only
    error: str | None = None
    state: Any = None
    pids: set[int] = field(default_factory=set)  # processes its state started (workers)
    spent: float = 0.0                           # wall seconds it cost the run in all

    @property
    def name(self) -> str:
        return self.label if self.mode == "-" else f"{self.label} [{self.mode}]"


def optional(module: str) -> str | None:
    """None when ``module`` imports, else the reason it cannot."""
    try:
        __import__(module)
    except Exception as exc:  # ImportError, or a broken install
        return f"{module} not importable ({type(exc).__name__}: {exc})"
    return None


def _fail(c: Candidate, exc: BaseException) -> None:
    c.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:240]
    traceback.print_exc()


def _result(c: Candidate, out: Any) -> Any:
    if isinstance(out, Timed):
        if not out.ok:
            c.error = c.error or "wrong result"
        return out.result
    return out


def _cpu(pids: set[int]) -> int:
    """Clock ticks of CPU used so far by ``pids`` (those still alive)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def _machine_busy_idle() -> tuple[int, int] | None:
    """(busy, idle) clock ticks of all CPUs since boot, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks[:8]) - idle, idle


QUIET_WINDOW = 0.05   # seconds per look
QUIET_LOOKS = 2       # consecutive quiet looks needed
QUIET_BUSY = 0.15     # at most this share of all CPUs busy in a quiet look


def wait_quiet(timeout: float = 1.0) -> float:
    """Wait until every CPU of the machine has been nearly idle for ``QUIET_LOOKS``
    consecutive windows of ``QUIET_WINDOW`` s (background work of an earlier candidate
    has ended), or ``timeout`` passes.  Returns the seconds waited.  /proc/stat counts in
    10 ms ticks, hence windows of 50 ms and a loose threshold."""
    t0 = time.perf_counter()
    last = _machine_busy_idle()
    if last is None:
        return 0.0
    quiet = 0
    while quiet < QUIET_LOOKS and time.perf_counter() - t0 < timeout:
        time.sleep(QUIET_WINDOW)
        now = _machine_busy_idle()
        busy, idle = now[0] - last[0], now[1] - last[1]
        quiet = quiet + 1 if busy <= QUIET_BUSY * max(1, busy + idle) else 0
        last = now
    return time.perf_counter() - t0


def settle(known: set[int], timeout: float = 5.0) -> set[int]:
    """Wait until the processes a call started (beyond ``known``) have exited or gone
    idle, so that a pool's teardown does not slow the next candidate down.  Returns the
    ones still alive: helpers that outlive a pool by design (multiprocessing's resource
    tracker, a fork server) and belong to no candidate."""
    deadline = time.perf_counter() + timeout
    quiet, last = 0, None
    while time.perf_counter() < deadline:
        left = set(descendants()) - known
        if not left:
            return left
        used = _cpu(left)
        quiet = quiet + 1 if used == last else 0
        if quiet >= 3:  # no CPU tick in ~150 ms: idle helpers, not a pool tearing down
            return left
        last = used
        time.sleep(0.05)
    return set(descendants()) - known


def _timed_call(c: Candidate, sampler: Sampler, quiet: bool = True) -> None:
    """One timed call (cold: state built inside it), with resources sampled.

    The call's workers are the processes its state started (``c.pids``) and those born
    during the call; every other process alive at the start (other candidates' idle
    pools, helpers such as resource trackers) is left out of its CPU and memory."""
    state = None if c.mode == "cold" else c.state
    if c.before is not None and c.mode != "cold":
        known = set(descendants())
        c.before(state)
        c.pids |= set(descendants()) - known
    gc.collect()
    if quiet:
        wait_quiet()
    known = set(descendants())
    root = c.pid(state) if c.pid is not None and c.mode != "cold" else None
    sampler.start(root, exclude=known - c.pids)
    try:
        t0 = time.perf_counter()
        if c.mode == "cold":
            state = c.make()
        out = c.run(state)
        elapsed = time.perf_counter() - t0
    finally:
        stats = sampler.stop()
    if isinstance(out, Timed):
        elapsed = out.seconds
    out = _result(c, out)
    checked = c.mode != "cold" and c.first_call is not None  # by the warm-up call
    if not c.samples and not checked and c.check is not None and not c.check(out):
        c.error = "wrong result"
    c.samples.append(elapsed)
    c.stats.append(stats)
    if c.mode == "cold":
        c.close(state)
        settle(known)
    else:  # a pool started lazily by this call is this candidate's from now on
        c.pids |= set(descendants()) - known


def _warm(c: Candidate, quick: bool) -> None:
    """Build a warm (or stateless) candidate's state and make its untimed first call."""
    before = set(descendants())
    try:
        t0 = time.perf_counter()
        c.state = c.make()
        warm = c.warmup if c.warmup is not None else not (quick and c.mode == "-")
        if callable(warm):
            warm(c.state)  # e.g. start a pool's workers without a full call
        elif warm:
            result = _result(c, c.run(c.state))
            c.first_call = time.perf_counter() - t0
            if c.check is not None and not c.check(result):
                c.error = "wrong result"
            _note_choices(c)
    except Exception as exc:
        _fail(c, exc)
    c.pids |= set(descendants()) - before


def _note_choices(c: Candidate) -> None:
    """An AutoEngine says in its row's note where its first call put each node (its
    warm calls keep those choices): a surprising time can be read against them."""
    explain = getattr(c.state, "explain", None)
    if explain is None:
        return
    chose = ", ".join(f"{r['node']}: {r['executor']}" for r in explain().rows)
    if chose:
        c.note = ((c.note + " ") if c.note else "") + f"(chose {chose})"


def measure(candidates: list[Candidate], rounds: int, *, quick: bool = False,
            slow_s: float = 1.0, sample: bool = True, quiet: bool = True) -> list[Candidate]:
    """Time every available candidate ``rounds`` times, interleaved.

    Each round runs the candidates in its own random order (seeded: the same order on
    every run), so no candidate always runs right after the same neighbour.  Candidates
    marked ``alone`` (state with threads of its own in the driver) are measured after
    the others, warm and cold twins together, with nothing else alive.  Slow candidates
    get fewer rounds: one whose first timed call took more than ``2 * slow_s`` stops
    after three, over ``10 * slow_s`` after one.  In ``quick`` mode one over ``slow_s``
    stops after one; a cold row whose warm twin's first call (start-up + first run,
    made while warming up) took over ``slow_s`` takes that call as its one sample
    instead of starting the pool again; rows marked ``skip_quick`` are listed with the
    reason.  ``key`` rows (those a workload's bar compares, and the loops it divides
    by) are exempt from all these cuts: one slow first call (a noisy moment) must not
    leave a bar's figure with three samples.  ``Candidate.rounds`` caps a candidate
    further.  ``quiet=False`` skips the wait for an idle machine (smoke runs, where time
    means nothing).
    """
    sampler = Sampler(enabled=sample)
    if quick:
        for c in candidates:
            if c.skip_quick and c.unavailable is None:
                c.unavailable = f"skipped by --quick ({c.skip_quick}); a full run measures it"
    live = [c for c in candidates if c.unavailable is None]
    groups = [[c for c in live if not c.alone]]
    for label in dict.fromkeys(c.label for c in live if c.alone):
        groups.append([c for c in live if c.alone and c.label == label])
    rng = random.Random(20261121)
    for group in groups:
        _measure_group(group, rounds, quick, slow_s, sampler, rng, quiet)
    return candidates


def _measure_group(live: list[Candidate], rounds: int, quick: bool, slow_s: float,
                   sampler: Sampler, rng: random.Random, quiet: bool) -> None:
    """``measure`` for candidates whose states may be alive together."""
    for c in live:
        if c.mode != "cold":
            t0 = time.perf_counter()
            _warm(c, quick)
            c.spent += time.perf_counter() - t0
    if quick:
        firsts = {c.label: c.first_call for c in live if c.mode == "warm" and c.first_call}
        for c in live:
            if c.mode == "cold" and not c.key and firsts.get(c.label, 0) > slow_s:
                c.samples.append(firsts[c.label])
                c.stats.append({})
                c.note = ((c.note + " ") if c.note else "") + \
                    "(--quick: one sample, the warm row's first call: start-up + first run)"
    for r in range(rounds):
        order = list(live)
        rng.shuffle(order)
        for c in order:
            if c.error or (c.rounds is not None and r >= c.rounds):
                continue
            if c.samples and not c.key and ((quick and c.samples[0] > slow_s)
                                            or c.samples[0] > 10 * slow_s
                                            or (len(c.samples) >= 3
                                                and c.samples[0] > 2 * slow_s)):
                continue
            t0 = time.perf_counter()
            try:
                _timed_call(c, sampler, quiet)
            except Exception as exc:
                _fail(c, exc)
            c.spent += time.perf_counter() - t0
    for c in live:
        if c.mode != "cold" and c.state is not None:
            t0 = time.perf_counter()
            known = set(descendants()) - c.pids
            try:
                c.close(c.state)
            except Exception as exc:
                _fail(c, exc)
            c.state = None
            settle(known)
            c.spent += time.perf_counter() - t0


def _resources(stats: list[dict]) -> dict[str, Any]:
    """Per-round samples to one summary: median of the averages, max of the peaks."""
    stats = [s for s in stats if s]
    if not stats:
        return {}
    out: dict[str, Any] = {"cpu_avg": statistics.median(s["cpu_avg"] for s in stats),
                           "cpu_peak": max(s["cpu_peak"] for s in stats),
                           "rss_driver_mib": max(s["rss_driver_mib"] for s in stats),
                           "workers": max(s["workers"] for s in stats)}
    if out["workers"]:
        out["rss_worker_mib"] = max(s["rss_worker_mib"] for s in stats)
        out["rss_workers_total_mib"] = max(s["rss_workers_total_mib"] for s in stats)
    return out


def summarize(c: Candidate) -> dict[str, Any]:
    base = {"name": c.name, "label": c.label, "mode": c.mode, "group": c.group,
            "note": c.note, "spent_s": round(c.spent, 2)}
    s = sorted(c.samples)
    if not s:
        return {**base, "error": c.error or c.unavailable or "not run",
                "unavailable": c.unavailable is not None}
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return {**base, "rounds": len(s), "median": statistics.median(s), "min": s[0],
            "p95": p95, "samples": c.samples, "first_call": c.first_call,
            "error": c.error, **_resources(c.stats), "per_round": c.stats}


def table(rows: list[dict[str, Any]], *, per_item: int | None = None,
          baseline: str | None = None) -> str:
    """The Markdown table of one workload (kept for callers; see ``report.table``)."""
    from report import workload_table

    return workload_table(rows, per_item=per_item, baseline=baseline)
