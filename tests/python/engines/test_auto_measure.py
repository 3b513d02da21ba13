"""AutoEngine's measurements of a call, unit by unit: what a busy machine, the GIL test's
helper thread and the timing itself do to them (numbers measured on the 2-core VM)."""

from __future__ import annotations

from gilfree.engines import auto, auto_timing
from gilfree.engines.explain import Measure


def test_a_computing_call_slowed_by_a_busy_machine_still_counts_as_computing():
    # 4 ms of wall, 1.3 ms on a core, 2.6 ms runnable but waiting for one: it computes.
    busy = Measure.of([(0.004, 0.0013, 0, 0.0026, 0), (0.005, 0.0012, 0, 0.0037, 0)])
    assert busy.cpu_share > 0.9
    # A call that sleeps: 10 ms of wall, 0.1 ms of CPU, not waiting for a core.
    assert Measure.of([(0.010, 0.0001, 0, 0.0, 0)]).cpu_share < 0.05


def test_a_helper_kept_from_a_core_does_not_decide_the_gil_test():
    """Seen on a busy machine: hashing (GIL released) measured as holding the GIL
    because the helper thread had no core during the fastest call."""
    def releases(calls):
        return Measure.of(calls, auto.GIL_TEST_MIN_S).releases_gil(
            auto.GIL_TEST_MIN_S, auto.RELEASED_RUNS_PER_MS)

    # (wall, cpu, helper runs, caller's wait for a core, helper's wait for a core):
    # numbers measured with two busy processes on the 2 cores. Hashing, the fastest
    # call: the helper waited 4.7 of its 5.4 ms and ran once; in the other one, with a
    # core, it ran 20 times in 11.2 ms (while the caller also waited 5.7 ms).
    assert releases([(0.00544, 0.0054, 1, 0.0, 0.00473), (0.0112, 0.00546, 20, 0.0057, 0.0)])
    # A Python loop (holds the GIL): the helper ran 6 times in the slower call (other
    # threads waiting for the GIL make it change hands more often), once in the fastest.
    assert not releases([(0.00414, 0.0041, 6, 0.0, 0.0), (0.00315, 0.0031, 1, 0.0, 0.0)])
    # No call can tell (the helper starved in both): the fastest call's rate decides.
    assert not releases([(0.00555, 0.0055, 0, 0.0, 0.0052), (0.0097, 0.0056, 11, 0.004, 0.004)])
    assert releases([(0.0055, 0.0055, 10, 0.0, 0.0048)])


def test_the_helper_runs_are_counted_over_the_call_only(monkeypatch):
    """The schedstat reads after a call release the GIL (file I/O): on a busy machine the
    helper ran several times during them, and a pure-Python call looked like one that
    releases the GIL."""
    class Ticker:
        runs = 0

        def starved(self):
            return 0.0

    ticker = Ticker()

    def read_lets_the_helper_run(*_):
        ticker.runs += 5
        return 0.0

    monkeypatch.setattr(auto_timing, "queued_s", read_lets_the_helper_run)
    calls = []
    assert auto_timing.timed(lambda x: x + 1, calls, ticker)(1) == 2
    assert calls[0][2] == 0  # the 5 runs of the read before the call, and after, left out


def test_what_the_timing_adds_is_taken_off_each_call():
    """A call to os.getpid() measured 5-8 us, 2.5-3 us of them the timing's own (reading
    the thread's CPU clock is a system call on the VM): close to CHEAP_S (10 us)."""
    ticker = auto_timing.Ticker()
    try:
        wall, cpu = auto_timing.timing_floor(ticker)
    finally:
        ticker.stop()
    assert 0.0 < wall < 1e-3 and 0.0 <= cpu < 1e-3
    calls = [(0.5, 0.2, 3, 0.01, 0.0), (2e-6, 0.5e-6, 0, 0.0, 0.0)]
    assert auto_timing.less_floor(calls, (3e-6, 1e-6)) == [
        (0.5 - 3e-6, 0.2 - 1e-6, 3, 0.01, 0.0), (0.0, 0.0, 0, 0.0, 0.0)]


def test_a_trivial_node_is_measured_as_cheap():
    ticker, calls = auto_timing.Ticker(), []
    try:
        floor = auto_timing.timing_floor(ticker)
        timed = auto_timing.timed(lambda x: x + 1, calls, ticker)
        for i in range(3):
            timed(i)
    finally:
        ticker.stop()
    assert Measure.of(auto_timing.less_floor(calls, floor)).wall < auto.CHEAP_S


def test_a_wait_for_a_core_at_the_yield_before_a_call_is_not_the_calls(monkeypatch):
    """On a busy machine the yield before the clock starts (``time.sleep(0)``) waited
    for a core; counted as the call's, a 1 ms sleep looked computing (a stream then gave
    its waiting stage no pace)."""
    import time

    waited = [0.0]  # this thread's and the helper's time waiting for a core
    real_sleep = time.sleep

    class Ticker:
        runs = 0

        def starved(self):
            return waited[0]

    def busy_yield(seconds):
        if seconds == 0:  # 4 ms without a core
            waited[0] += 0.004
            real_sleep(0.004)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(auto_timing, "queued_s", lambda *_: waited[0])
    monkeypatch.setattr(time, "sleep", busy_yield)
    calls = []
    auto_timing.timed(lambda: real_sleep(0.001), calls, Ticker())()
    wall, cpu, runs, queued, starved = calls[0]
    assert queued == 0.0 and starved == 0.0
    assert Measure.of(calls).cpu_share < auto.WAITING
