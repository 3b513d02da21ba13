"""ThreadPool.serve (gilfree._core): workers that claim a Flow's items for a claimed
stage and report each in C++ (cpp/bindings/flow_workers.hpp), driven through Flow.next
as imap drives them."""

from __future__ import annotations

import sys
import threading

import pytest

from gilfree._native import core
from polling import wait_until

_core = core()


# --- ThreadPool.serve: workers that claim a Flow's items and report them in C++ ----------

def _drive(flow, n, start, dispatch=None):
    """Runs flow.next() over n input items; returns every (id, failed) that left. A
    watchdog closes the flow after 30 s, so an id never reported fails the test (too few
    exits) instead of hanging it."""
    left = [n]

    def pull(k):
        got = min(k, left[0])
        left[0] -= got
        return got, left[0] == 0

    def refuse(stage, ids):
        raise AssertionError(f"stage {stage} is claimed: nothing is dispatched")

    exits = []
    watchdog = threading.Timer(30.0, flow.close)
    watchdog.start()
    try:
        while True:
            out = flow.next(pull, dispatch or refuse, start)
            if not out:
                return exits
            exits.extend(out)
    finally:
        watchdog.cancel()


def _claimed(capacity, queue_bound):
    return (capacity, queue_bound, 1, 0.0, True)


def test_serve_reports_every_id_once_with_its_failed_flag():
    calls, threads = [], set()

    def fn(i):
        calls.append(i)
        threads.add(threading.get_ident())
        if i % 3 == 1:
            return 1  # anything but True counts as failed
        if i % 3 == 2:
            raise ValueError(f"item {i}")
        return True

    with _core.ThreadPool(4) as pool:
        flow = _core.Flow([_claimed(4, 4)], read_ahead=8, ordered=False)
        base_flow, base_fn = sys.getrefcount(flow), sys.getrefcount(fn)
        exits = _drive(flow, 60, lambda k, n: pool.serve(fn, flow, k, n))
        assert sorted(exits) == [(i, i % 3 != 0) for i in range(60)]
        assert sorted(calls) == list(range(60))
        assert threading.get_ident() not in threads  # ran on the pool, not in the driver
        assert len(threads) <= 4
        # the workers end once the input has ended and drop their references
        assert wait_until(lambda: flow.stats()["stages"][0]["workers"] == 0)
        assert wait_until(lambda: sys.getrefcount(flow) == base_flow
                          and sys.getrefcount(fn) == base_fn)


def test_serve_a_shutdown_ends_the_workers_and_refuses_new_ones():
    started, gate = threading.Event(), threading.Event()
    ran = []

    def fn(i):
        ran.append(i)
        if i == 0:
            started.set()
            gate.wait(10)
        return True

    pool = _core.ThreadPool(1)  # one worker: id 0 blocks it, the rest wait in the flow
    flow = _core.Flow([_claimed(50, 50)], read_ahead=50, ordered=False)

    def stop():
        started.wait(10)
        pool.shutdown(False)
        gate.set()

    t = threading.Thread(target=stop)
    t.start()
    exits = []
    with pytest.raises(_core.PoolShutDown):  # the driver asks for workers again: refused
        exits = _drive(flow, 50, lambda k, n: pool.serve(fn, flow, k, n))
    t.join(10)
    assert ran == [0] and flow.stats()["closed"]
    with pytest.raises(_core.PoolShutDown):
        pool.serve(fn, flow, 0, 1)
    pool.shutdown(True)
    assert exits == []


def test_serve_workers_a_shutdown_dropped_before_they_started_are_counted_out():
    # The only worker is busy elsewhere: the stage's tickets are still queued when the
    # pool shuts down; the flow must learn they will never claim (else: a hang).
    started, gate, answered = threading.Event(), threading.Event(), threading.Event()
    pool = _core.ThreadPool(1)

    def blocker():
        started.set()
        gate.wait(10)

    pool.submit(blocker, lambda r, ok: answered.set())
    assert started.wait(10)
    ran = []
    flow = _core.Flow([_claimed(20, 20)], read_ahead=20, ordered=False)

    calls = []

    def start(k, n):
        pool.serve(lambda i: ran.append(i) or True, flow, k, n)
        calls.append(n)
        if len(calls) > 1:
            return  # the driver asked again before the shutdown landed: one more ticket
        # a pool of 1 thread takes 1 worker; the flow counts the others out at once
        assert flow.stats()["stages"][0]["workers"] == 1
        threading.Thread(target=lambda: (pool.shutdown(False), gate.set())).start()

    with pytest.raises(_core.PoolShutDown):
        _drive(flow, 20, start)
    # (The driver's next start may see the pool shut down before the shutting-down
    # thread has counted the dropped tickets out: they are, soon after.)
    assert wait_until(lambda: flow.stats()["stages"][0]["workers"] == 0)
    assert ran == []
    assert answered.wait(10)
    pool.shutdown(True)


def test_serve_from_a_worker_of_the_same_pool_does_not_deadlock():
    # A flow driven on the pool's only thread (imap inside a node): while the driver
    # waits it stops counting against max_workers, so the stage's worker gets a thread.
    with _core.ThreadPool(1) as pool:
        def drive(_):
            flow = _core.Flow([_claimed(4, 4)], read_ahead=4, ordered=True)
            return _drive(flow, 10, lambda k, n: pool.serve(lambda i: True, flow, k, n))

        assert pool.map(drive, [0]) == [[(i, False) for i in range(10)]]


def test_flow_claim_from_python_and_its_errors():
    flow = _core.Flow([_claimed(2, 4), (2, 2, 1, 0.0)], read_ahead=4)
    with pytest.raises(ValueError, match="not a claimed stage"):
        flow.claim(1)
    assert flow.claim(0, 0.01) is None  # nothing queued: the worker ended
    with pytest.raises(ValueError, match="batch_size, linger_s"):
        _core.Flow([(1, 1, 1)], read_ahead=1)
    with pytest.raises(ValueError, match="cannot be a batch stage"):
        _core.Flow([(1, 1, 4, 0.0, True)], read_ahead=1)
    with pytest.raises(RuntimeError, match="starts no workers"):  # no start given
        _core.Flow([_claimed(2, 4)], read_ahead=4).next(lambda k: (k, False),
                                                         lambda s, ids: None)


def test_serve_stress_10k_ids_two_claimed_stages():
    with _core.ThreadPool(8) as pool:
        flow = _core.Flow([_claimed(6, 64), (4, 16, 1, 0.0), _claimed(5, 32)],
                          read_ahead=256, ordered=True)
        fns = {0: lambda i: i % 7 != 0, 2: lambda i: i % 11 != 0}
        exits = _drive(flow, 10_000, lambda k, n: pool.serve(fns[k], flow, k, n),
                       dispatch=lambda k, ids: flow.done(k, ids, [False] * len(ids)))
    assert exits == [(i, i % 7 == 0 or i % 11 == 0) for i in range(10_000)]
