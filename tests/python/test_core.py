"""Tests of the native core, gilfree._core (ThreadPool and runtime information)."""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

from gilfree._native import core
from peak import Peak
from polling import wait_until

_core = core()


@pytest.fixture
def pool():
    with _core.ThreadPool(16) as p:
        yield p


# --- runtime information ---------------------------------------------------------------

def test_tbb_version_is_a_release_string():
    assert re.match(r"^\d{4}\.\d+", _core.tbb_version())


def test_hardware_concurrency_is_positive():
    n = _core.hardware_concurrency()
    assert isinstance(n, int) and n >= 1
    if hasattr(os, "sched_getaffinity"):
        assert n <= len(os.sched_getaffinity(0))


# --- map: results and errors -------------------------------------------------------------

def test_results_keep_input_order(pool):
    items = list(range(1000))
    assert pool.map(lambda x: x * 2, items) == [x * 2 for x in items]


def test_empty_and_iterable_inputs(pool):
    assert pool.map(lambda x: x, []) == []
    assert pool.map(str, (i for i in range(3))) == ["0", "1", "2"]


def test_blocking_items_overlap(pool):
    started = time.monotonic()
    barrier = threading.Barrier(8, timeout=10)
    # Only passes if 8 items run at the same time.
    assert pool.map(lambda i: barrier.wait() >= 0 and i, list(range(8))) == list(range(8))
    assert time.monotonic() - started < 10


class CustomError(Exception):
    pass


def fail_on_3_and_7(x):
    if x in (3, 7):
        raise CustomError(x)
    return x


def test_stop_on_error_raises_lowest_failure_with_type_and_traceback(pool):
    with pytest.raises(CustomError) as info:
        pool.map(fail_on_3_and_7, list(range(50)))
    assert info.value.args == (3,)
    frames = [entry.name for entry in info.traceback]
    assert "fail_on_3_and_7" in frames


def test_stop_on_error_stops_claiming_new_items():
    ran = []
    with _core.ThreadPool(1) as p:
        with pytest.raises(CustomError):
            p.map(lambda x: ran.append(x) or fail_on_3_and_7(x), list(range(1000)))
    assert max(ran) < 100


def test_collect_mode_puts_exceptions_in_place(pool):
    out = pool.map(fail_on_3_and_7, list(range(10)), stop_on_error=False)
    assert [type(r) for r in out[3:8:4]] == [CustomError, CustomError]
    assert out[3].args == (3,) and out[3].__traceback__ is not None
    assert [r for i, r in enumerate(out) if i not in (3, 7)] == [0, 1, 2, 4, 5, 6, 8, 9]


def test_base_exceptions_from_items_are_captured(pool):
    def leave(x):
        raise SystemExit(x)

    with pytest.raises(SystemExit):
        pool.map(leave, [1])


# --- on_complete -------------------------------------------------------------------------

def test_on_complete_runs_in_driver_once_per_item(pool):
    events = []
    driver = threading.get_ident()
    out = pool.map(
        fail_on_3_and_7,
        list(range(200)),
        stop_on_error=False,
        on_complete=lambda i, r, ok: events.append((i, r, ok, threading.get_ident())),
    )
    assert sorted(e[0] for e in events) == list(range(200))
    assert {e[3] for e in events} == {driver}
    for i, r, ok, _ in events:
        assert ok == (i not in (3, 7))
        assert r is out[i]


def test_on_complete_sees_failure_before_raise(pool):
    events = []
    with pytest.raises(CustomError):
        pool.map(fail_on_3_and_7, [3], on_complete=lambda i, r, ok: events.append((i, ok)))
    assert events == [(0, False)]


def test_on_complete_error_propagates(pool):
    def boom(i, r, ok):
        raise KeyError("callback")

    with pytest.raises(KeyError, match="callback"):
        pool.map(lambda x: x, list(range(20)), on_complete=boom)
    assert pool.map(lambda x: x, [1]) == [1]  # the pool is still usable


# --- submit ------------------------------------------------------------------------------

def test_submit_calls_done_on_the_worker_with_result_or_exception(pool):
    results, cond = [], threading.Condition()

    def done(value, ok):
        with cond:
            results.append((value, ok, threading.get_ident()))
            cond.notify_all()

    pool.submit(lambda: 42, done)
    pool.submit(lambda: fail_on_3_and_7(3), done)
    with cond:
        assert cond.wait_for(lambda: len(results) == 2, timeout=10)
    by_ok = {ok: (value, ident) for value, ok, ident in results}
    assert by_ok[True][0] == 42
    assert isinstance(by_ok[False][0], CustomError)
    assert threading.get_ident() not in {ident for _, ident in by_ok.values()}


def test_submitted_blocking_calls_overlap(pool):
    barrier = threading.Barrier(4, timeout=10)
    finished = threading.Semaphore(0)
    for _ in range(4):
        pool.submit(barrier.wait, lambda value, ok: finished.release())
    for _ in range(4):
        assert finished.acquire(timeout=10)
    assert not barrier.broken


def test_shutdown_answers_calls_that_never_ran():
    p = _core.ThreadPool(1)
    gate, answers = threading.Event(), []
    p.submit(lambda: gate.wait(10), lambda value, ok: None)
    assert wait_until(lambda: p.num_threads == 1)
    p.submit(lambda: "never", lambda value, ok: answers.append((value, ok)))
    threading.Timer(0.05, gate.set).start()
    p.shutdown()
    assert len(answers) == 1 and answers[0][1] is False
    assert isinstance(answers[0][0], RuntimeError)
    with pytest.raises(RuntimeError, match="shut down"):
        p.submit(lambda: 1, lambda value, ok: None)


# --- growth, cap, retirement ---------------------------------------------------------------

def test_200_blocking_calls_finish_in_about_one_round():
    with _core.ThreadPool(200) as p:
        started = time.monotonic()
        p.map(time.sleep, [0.01] * 200)
        assert time.monotonic() - started < 1.0

def test_waiting_for_blocked_items_burns_no_cpu():
    # The driver and finished workers spin only while completions come in a burst
    # (< 100 us apart); a spin that never stopped would cost the whole 0.3 s here.
    with _core.ThreadPool(8) as p:
        p.map(time.sleep, [0.0] * 8)  # threads started outside the measurement
        cpu = time.process_time()
        p.map(time.sleep, [0.15, 0.3] * 4)
        assert time.process_time() - cpu < 0.1


def test_a_burst_of_completions_is_delivered_whole():
    # Items ending together wake the parked driver, which then spins through the burst:
    # every completion reaches on_complete exactly once and the map returns.
    seen = []
    with _core.ThreadPool(64) as p:
        for _ in range(20):
            seen.clear()
            out = p.map(lambda x: (time.sleep(0.002), x)[1], range(64),
                        on_complete=lambda i, value, ok: seen.append(i))
            assert out == list(range(64)) and sorted(seen) == list(range(64))



def test_workers_grow_to_cap_and_retire_when_idle():
    with _core.ThreadPool(4, idle_timeout=0.2) as p:
        assert p.max_workers == 4 and p.num_threads == 0
        running, peak, lock = 0, 0, threading.Lock()
        barrier = threading.Barrier(4, timeout=10)

        def item(i):
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            barrier.wait()  # all four in flight together, so four threads exist
            with lock:
                running -= 1
            return i

        assert p.map(item, list(range(12))) == list(range(12))
        assert peak == 4
        assert 1 <= p.num_threads <= 4
        assert wait_until(lambda: p.num_threads == 0, timeout=10)
        assert p.map(lambda x: -x, [1, 2]) == [-1, -2]  # grows again after retiring


def test_invalid_arguments():
    with pytest.raises((ValueError, TypeError)):
        _core.ThreadPool(0)
    with pytest.raises(ValueError):
        _core.ThreadPool(2, idle_timeout=0)


# --- re-entrancy, shutdown, references --------------------------------------------------------

def test_map_from_a_worker_shares_the_pool():
    """A worker that maps again hands the items to the pool (they run at once), and
    helps with them while it waits."""
    with _core.ThreadPool(4) as p:
        def outer(x):
            def io(y):
                time.sleep(0.02)  # releases the GIL: other threads claim items meanwhile
                return y, threading.get_ident()

            inner = p.map(io, list(range(6)))
            return sum(y for y, _ in inner) + x, {t for _, t in inner}

        out = p.map(outer, [0, 1])
    assert [total for total, _ in out] == [15, 16]
    assert all(len(threads) > 1 for _, threads in out), out


def test_map_from_a_worker_reports_and_raises_as_any_map():
    with _core.ThreadPool(4) as p:
        def outer(x):
            me, seen = threading.get_ident(), []

            def done(i, value, ok):
                seen.append((i, ok, threading.get_ident() == me))

            out = p.map(lambda y: 10 // y, [1, 2, 0, 5], on_complete=done,
                        stop_on_error=False)
            assert isinstance(out[2], ZeroDivisionError) and out[:2] == [10, 5]
            assert sorted(seen) == [(0, True, True), (1, True, True), (2, False, True),
                                    (3, True, True)]  # all, in the calling thread
            with pytest.raises(ZeroDivisionError):
                p.map(lambda y: 10 // y, [1, 0, 2, 0])
            return x

        assert p.map(outer, [0, 1, 2]) == [0, 1, 2]


@pytest.mark.parametrize("max_workers", [1, 2])
def test_maps_nested_three_deep_finish_on_a_small_pool(max_workers):
    """Every worker may wait for a map of its own: the waiting ones do not count against
    max_workers, and each runs items of its map itself, so all of them finish."""
    with _core.ThreadPool(max_workers) as p:
        def leaf(z):
            time.sleep(0.001)
            return z

        def middle(y):
            return sum(p.map(leaf, list(range(y, y + 3))))

        def top(x):
            return sum(p.map(middle, list(range(x, x + 3))))

        assert p.map(top, list(range(4))) == [
            sum(sum(range(y, y + 3)) for y in range(x, x + 3)) for x in range(4)]


def test_map_parallelism_bounds_the_items_running_at_once(pool):
    peak = Peak()

    def slow(x):
        with peak:
            time.sleep(0.005)
        return x * 2

    assert pool.map(slow, list(range(20)), parallelism=3) == [2 * x for x in range(20)]
    assert peak.most == 3
    peak.most = 0
    assert pool.map(slow, list(range(20))) == [2 * x for x in range(20)]
    assert peak.most > 3  # 0: up to max_workers (16)


def test_shutdown_is_idempotent_and_final():
    p = _core.ThreadPool(4)
    assert p.map(lambda x: x, [1, 2, 3]) == [1, 2, 3]
    p.shutdown()
    p.shutdown()
    p.shutdown(wait=False)
    assert p.num_threads == 0
    with pytest.raises(RuntimeError, match="shut down"):
        p.map(lambda x: x, [1])


def test_context_manager_shuts_down():
    with _core.ThreadPool(2) as p:
        p.map(lambda x: x, [1, 2])
    assert p.num_threads == 0


class Token:
    pass


def test_references_are_released(pool):
    items = [Token() for _ in range(50)]
    refs = [weakref.ref(t) for t in items]
    results = pool.map(lambda t: [t], items)
    del items, results
    gc.collect()
    assert all(r() is None for r in refs)


def test_items_are_snapshotted(pool):
    items = list(range(10))
    assert pool.map(lambda x: items.append(x) or x, items) == list(range(10))


# --- Ctrl-C and interpreter exit ---------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from gilfree._native import core

    pool = core().ThreadPool(64)

    def slow(x):  # blocks without the GIL
        if x == 0:
            print("started", flush=True)
        time.sleep(60)

    def busy(x):  # short items that want the GIL all the time
        if x == 0:
            print("started", flush=True)
        for _ in range(2000):
            pass

    fn, n = (slow, 64) if sys.argv[1] == "blocking" else (busy, 200_000)
    try:
        pool.map(fn, list(range(n)))
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("items", ["blocking", "gil_hungry"])
def test_ctrl_c_interrupts_map_promptly_and_exit_does_not_hang(tmp_path, items):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), items],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "started"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().strip()
        latency = time.monotonic() - sent
        assert line == "KeyboardInterrupt", proc.stderr.read()
        assert latency < 1.0
        # Items are still running (blocked for a minute, or busy): exit must not wait.
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


EXIT_WHILE_BUSY = textwrap.dedent(
    """
    import threading, time
    from gilfree._native import core

    pool = core().ThreadPool(32)

    def quick_maps():
        while True:
            pool.map(lambda x: x + 1, list(range(100_000)))

    def sleepy_maps_with_callbacks():
        while True:
            pool.map(time.sleep, [0.001] * 64, on_complete=lambda i, r, ok: None)

    def submits():
        while True:
            done = threading.Event()
            pool.submit(lambda: time.sleep(0.001), lambda r, ok: done.set())
            done.wait()

    for target in (quick_maps, sleepy_maps_with_callbacks, submits):
        threading.Thread(target=target, daemon=True).start()
    time.sleep(0.3)
    """
)


def test_exit_while_daemon_threads_use_the_pool_is_clean():
    # Regression: finalization kills daemon threads that take the GIL; unwinding through
    # map() used to drop references without the GIL (segfault / abort at exit).
    for _ in range(5):  # the race is probabilistic; 5 runs caught it reliably
        out = subprocess.run(
            [sys.executable, "-c", EXIT_WHILE_BUSY], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr[-2000:]


def test_idle_pool_left_open_does_not_block_exit():
    code = "from gilfree._native import core; p = core().ThreadPool(4); print(p.map(abs, [-1]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1]"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_pool_works_in_forked_child():
    with _core.ThreadPool(4) as p:
        assert p.map(abs, [-1, -2]) == [1, 2]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: the parent's workers do not exist here
            try:
                ok = p.map(abs, [-3, -4]) == [3, 4]
                os.write(w, b"ok" if ok else b"bad")
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            assert f.read() == b"ok"
        os.waitpid(pid, 0)


def test_submit_each_runs_every_call_and_answers_each_done():
    import threading

    from gilfree._native import core

    pool = core().ThreadPool(4, 10.0, 16)
    answers, all_done = [], threading.Event()

    def done(k):
        def answer(result, ok):
            answers.append((k, result, ok))
            if len(answers) == 6:
                all_done.set()
        return answer

    def call(k):
        def run():
            if k == 3:
                raise ValueError("three")
            return k * 10
        return run

    pool.submit_each([call(k) for k in range(6)], [done(k) for k in range(6)])
    assert all_done.wait(10)
    by_k = {k: (r, ok) for k, r, ok in answers}
    assert {k: by_k[k] for k in (0, 1, 2, 4, 5)} == {k: (k * 10, True) for k in (0, 1, 2, 4, 5)}
    assert isinstance(by_k[3][0], ValueError) and by_k[3][1] is False
    pool.shutdown(True)
    with pytest.raises(core().PoolShutDown):
        pool.submit_each([call(0)], [done(0)])
