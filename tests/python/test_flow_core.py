"""Tests of the binding _core.Flow (the flow scheduler; its policy is tested in C++ in
tests/cpp/test_flow.cpp): Python pull/dispatch with a Python thread calling done,
Ctrl-C while next() waits, exceptions from pull and dispatch."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from gilfree._native import core

_core = core()


def source(items):
    """A pull(k) over an iterator: returns (n_read, exhausted), keeping what it read."""
    it = iter(items)
    read = []

    def pull(k):
        assert k >= 1
        for n in range(k):
            try:
                read.append(next(it))
            except StopIteration:
                return n, True
        return k, False

    return pull, read


class Executor:
    """A Python thread that finishes dispatched ids (failing those `fails` says) via done."""

    def __init__(self, flow, fails=lambda stage, i: False):
        self.flow = flow
        self.fails = fails
        self.work = queue.Queue()
        self.seen = []  # (stage, ids) in dispatch order
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def dispatch(self, stage, ids):
        self.seen.append((stage, list(ids)))
        self.work.put((stage, ids))

    def _run(self):
        while (w := self.work.get()) is not None:
            stage, ids = w
            self.flow.done(stage, ids, [self.fails(stage, i) for i in ids])

    def stop(self):
        self.work.put(None)
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def bounded(fn, timeout=60.0):
    """fn() in a daemon thread: a flow that hangs fails the test instead of blocking it."""
    result, error = [], []

    def run():
        try:
            result.append(fn())
        except BaseException as e:  # handed to the test
            error.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the flow hung"
    if error:
        raise error[0]
    return result[0]


def drain(flow, pull, dispatch):
    def run():
        out = []
        while got := flow.next(pull, dispatch):
            out += got
        return out

    return bounded(run)


@pytest.mark.parametrize("ordered", [True, False])
def test_items_flow_through_stages_with_a_python_thread_calling_done(ordered):
    stages = [(3, 4, 1, 0.0), (2, 16, 8, 0.001), (2, 2, 1, 0.0)]
    flow = _core.Flow(stages, read_ahead=16, ordered=ordered)
    pull, read = source(range(500))
    ex = Executor(flow, fails=lambda stage, i: stage == 0 and i % 7 == 0)
    try:
        out = drain(flow, pull, ex.dispatch)
    finally:
        ex.stop()
    assert read == list(range(500))
    ids = [i for i, _ in out]
    assert sorted(ids) == list(range(500))  # every item left exactly once
    if ordered:
        assert ids == list(range(500))
    assert all(failed == (i % 7 == 0) for i, failed in out)
    later = {i for stage, batch in ex.seen if stage > 0 for i in batch}
    assert not any(i % 7 == 0 for i in later)  # failed items skipped stages 1 and 2
    assert all(len(batch) <= 8 for stage, batch in ex.seen if stage == 1)
    st = flow.stats()
    assert st["pulled"] == st["left"] == 500 and st["exhausted"] and not st["closed"]
    assert [s["done_total"] for s in st["stages"]] == [500, 500 - 72, 500 - 72]
    assert flow.next(pull, ex.dispatch) == []  # the end stays the end


def test_backpressure_stops_pulling_and_close_ends_next():
    # Nothing ever completes: the flow pulls what the first stage and its queue hold,
    # then waits; close() from another thread ends next() with [].
    flow = _core.Flow([(2, 3, 1, 0.0)], read_ahead=100, ordered=True)
    pull, read = source(range(10**9))
    dispatched = []
    closer = threading.Thread(target=lambda: (wait_for(lambda: len(read) == 5), flow.close()))
    closer.start()
    assert bounded(lambda: flow.next(pull, lambda stage, ids: dispatched.extend(ids))) == []
    closer.join(timeout=30)
    assert len(read) == 5 and dispatched == [0, 1]
    flow.done(0, [0, 1], [False, False])  # after close: ignored
    assert flow.stats()["closed"]


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_exception_from_pull_propagates_and_closes():
    flow = _core.Flow([(2, 2, 1, 0.0)], read_ahead=4)

    def pull(k):
        raise ValueError("source broke")

    with pytest.raises(ValueError, match="source broke"):
        flow.next(pull, lambda stage, ids: None)
    assert flow.stats()["closed"]
    assert flow.next(pull, lambda stage, ids: None) == []


def test_exception_from_dispatch_propagates_and_closes():
    flow = _core.Flow([(2, 2, 1, 0.0)], read_ahead=4)
    pull, _ = source(range(10))

    def dispatch(stage, ids):
        raise RuntimeError(f"cannot start {ids} on stage {stage}")

    with pytest.raises(RuntimeError, match=r"cannot start \[0, 1\] on stage 0"):
        flow.next(pull, dispatch)
    assert flow.stats()["closed"]


def test_bad_pull_result_and_bad_done_are_clear_errors():
    flow = _core.Flow([(2, 2, 1, 0.0)], read_ahead=4)
    with pytest.raises(TypeError, match=r"pull\(2\) must return \(n_read, exhausted\)"):
        flow.next(lambda k: "nope", lambda stage, ids: None)
    flow = _core.Flow([(2, 2, 1, 0.0)], read_ahead=4)
    with pytest.raises(ValueError, match="item 7 is not in flight on stage 0"):
        flow.done(0, [7], [False])
    with pytest.raises(ValueError, match="stage 0: capacity must be >= 1"):
        _core.Flow([(0, 2, 1, 0.0)], read_ahead=4)


def test_inline_executor_calls_done_inside_dispatch():
    flow = _core.Flow([(1, 1, 1, 0.0), (1, 1, 4, 0.0)], read_ahead=3, ordered=False)
    pull, _ = source(range(20))
    out = drain(flow, pull, lambda stage, ids: flow.done(stage, ids, [False] * len(ids)))
    assert sorted(i for i, _ in out) == list(range(20))


CTRL_C = textwrap.dedent(
    """
    import os, signal, threading, time
    from gilfree._native import core

    flow = core().Flow([(1, 1, 1, 0.0)], read_ahead=4)
    sent = []

    def interrupt():
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    def pull(k):
        return k, False

    def dispatch(stage, ids):  # never completes: next() waits without the GIL
        threading.Timer(0.2, interrupt).start()

    try:
        flow.next(pull, dispatch)
        print("returned", flush=True)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", time.monotonic() - sent[0], flush=True)
    print("closed" if flow.stats()["closed"] else "open", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_interrupts_next_within_a_second(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CTRL_C)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    lines = proc.stdout.split("\n")
    assert lines[0].startswith("KeyboardInterrupt "), (proc.stdout, proc.stderr)
    assert float(lines[0].split()[1]) < 1.0  # latency from the signal to the exception
    assert lines[1] == "closed" and proc.returncode == 0, proc.stderr


def test_next_from_inside_pull_is_refused():
    flow = _core.Flow([(1, 1, 1, 0.0)], read_ahead=2)
    inner = []

    def pull(k):
        try:
            flow.next(lambda k: (0, True), lambda stage, ids: None)
        except RuntimeError as e:
            inner.append(str(e))
        return 0, True

    assert flow.next(pull, lambda stage, ids: None) == []
    assert inner == ["Flow.next: already running (from another thread, or from inside pull/dispatch)"]
