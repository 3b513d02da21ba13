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

_core = core()


def wait_until(predicate, timeout: float = 10.0) -> bool:
    """Wait for a condition (polled) with a deadline; no fixed sleeps as synchronisation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


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


# --- growth, cap, retirement ---------------------------------------------------------------

def test_200_blocking_calls_finish_in_about_one_round():
    with _core.ThreadPool(200) as p:
        started = time.monotonic()
        p.map(time.sleep, [0.01] * 200)
        assert time.monotonic() - started < 1.0


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

def test_map_from_a_worker_runs_inline():
    with _core.ThreadPool(2) as p:
        def outer(x):
            me = threading.get_ident()
            inner = p.map(lambda y: (y, threading.get_ident()), list(range(5)))
            assert {t for _, t in inner} == {me}
            return sum(y for y, _ in inner) + x

        assert p.map(outer, list(range(6))) == [10 + x for x in range(6)]


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

    pool = core().ThreadPool(8)

    def slow(x):
        if x == 0:
            print("started", flush=True)
        time.sleep(60)

    try:
        pool.map(slow, list(range(8)))
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_interrupts_map_promptly_and_exit_does_not_hang(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "started"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().strip()
        latency = time.monotonic() - sent
        assert line == "KeyboardInterrupt", proc.stderr.read()
        assert latency < 1.0
        # Eight workers are still asleep for a minute: exit must not wait for them.
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_idle_pool_left_open_does_not_block_exit():
    code = "from gilfree._native import core; p = core().ThreadPool(4); print(p.map(abs, [-1]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1]"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
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
