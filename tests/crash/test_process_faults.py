"""ProcessEngine's failure matrix: (where it fails, expected error, message).

Each case runs in a fresh interpreter (see conftest.py) with a timeout; a hang fails.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from crash_helpers import alive, children, results

# A map of 12 items over 2 workers in which item 5 dies in the way given by DIE.
DEATH = """
@node(output_name="y")
def fragile(x):
    if x == 5:
        DIE
    return x * 10

engine = ProcessEngine(workers=2, batch_size=2)
p = Pipeline([fragile])
before = engine.start().pids
out = p.map({"x": list(range(12))}, map_over="x", engine=engine, on_error="collect")
errors = {i: f"{type(r).__name__}: {r}" for i, r in enumerate(out) if isinstance(r, Exception)}
ok = {i: r["y"] for i, r in enumerate(out) if not isinstance(r, Exception)}
again = p.map({"x": [1, 2, 3]}, map_over="x", engine=engine)  # replaced, usable
report(errors=errors, ok=ok, again=[r["y"] for r in again], before=before,
       after=engine.pids)
try:
    p.map({"x": list(range(12))}, map_over="x", engine=engine)
except Exception as exc:
    report(raised=type(exc).__name__, message=str(exc))
engine.shutdown()
"""


@pytest.mark.parametrize("die, expect", [
    ("os.kill(os.getpid(), signal.SIGKILL)", "was killed by SIGKILL"),
    ("os._exit(3)", "exited with code 3"),
    ("import ctypes; ctypes.string_at(0)", "was killed by SIGSEGV"),
], ids=["signal", "os._exit", "segfault"])
def test_worker_death_fails_its_items_and_the_pool_recovers(run_case, die, expect):
    rc, res, err = run_case(DEATH.replace("DIE", die))
    assert rc == 0, err
    # Batches of 2: items 4 and 5 were held by the dead worker.
    assert sorted(res["errors"]) == ["4", "5"], res
    for msg in res["errors"].values():
        assert msg.startswith("WorkerDied") and expect in msg, msg
        assert "node 'fragile'" in msg and "map item 5" in msg, msg
    assert {int(k) for k in res["ok"]} == set(range(12)) - {4, 5}
    assert res["again"] == [10, 20, 30]
    assert set(res["after"]) != set(res["before"]) and len(res["after"]) == 2
    assert res["raised"] == "WorkerDied" and expect in res["message"]


def test_worker_that_dies_while_its_next_batch_is_being_made_loses_nothing(run_case):
    # The driver picks a live worker, then builds the batch for it (Python code): a
    # worker that dies in between used to fail the whole map ("no such worker"). Here
    # every worker is killed inside the first batch-building call: that batch never ran,
    # so it goes to a replacement and every item completes.
    rc, res, err = run_case("""
        from gilfree.engines import processes

        @node(output_name="y")
        def double(x):
            return 2 * x

        engine = ProcessEngine(workers=2, batch_size=3)
        p = Pipeline([double])
        p.map({"x": [0]}, map_over="x", engine=engine)  # workers up and ready
        before = engine.pids
        original = processes._MapCall.make_batch
        killed = []

        def make_batch(self, a, b):
            if not killed:
                for pid in engine.pids:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                deadline = time.monotonic() + 10
                while set(engine.pids) & set(killed) and time.monotonic() < deadline:
                    time.sleep(0.01)
            return original(self, a, b)

        processes._MapCall.make_batch = make_batch
        out = p.map({"x": list(range(20))}, map_over="x", engine=engine)
        report(out=[r["y"] for r in out], killed=killed, before=before, after=engine.pids)
        engine.shutdown()
    """)
    assert rc == 0, err
    assert res["out"] == [2 * x for x in range(20)]
    assert sorted(res["killed"]) == sorted(res["before"]) and len(res["before"]) == 2
    assert not set(res["after"]) & set(res["before"])


def test_worker_killed_from_outside_like_the_oom_killer(run_case, tmp_path):
    # The OOM killer sends SIGKILL from outside; so does this case, to a busy worker.
    rc, res, err = run_case(f"""
        import threading
        STARTED = {str(tmp_path / "started")!r}

        @node(output_name="y")
        def slow(x):
            with open(STARTED, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(0.05)
            return os.getpid()

        def kill_when_busy(victim):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if os.path.exists(STARTED) and str(victim) in open(STARTED).read().split():
                    os.kill(victim, signal.SIGKILL)
                    return
                time.sleep(0.005)

        engine = ProcessEngine(workers=2, batch_size=1)
        victim = engine.start().pids[0]
        threading.Thread(target=kill_when_busy, args=(victim,)).start()
        out = Pipeline([slow]).map({{"x": list(range(40))}}, map_over="x", engine=engine,
                                   return_exceptions=True)
        died = [str(r) for r in out if isinstance(r, Exception)]
        report(died=died, done=sum(not isinstance(r, Exception) for r in out))
        engine.shutdown()
    """)
    assert rc == 0, err
    assert len(res["died"]) == 1 and res["done"] == 39
    assert "SIGKILL" in res["died"][0] and "node 'slow'" in res["died"][0], res["died"]


def test_exception_keeps_type_remote_traceback_and_item(run_case):
    rc, res, err = run_case("""
        import traceback
        class Custom(Exception):
            pass

        @node(output_name="y")
        def picky(x):
            if x == 7:
                raise Custom(f"no {x}")
            return x

        engine = ProcessEngine(workers=2)
        try:
            Pipeline([picky]).map({"x": list(range(20))}, map_over="x", engine=engine)
        except Custom as exc:
            report(type=type(exc).__name__, notes=exc.__notes__,
                   text="".join(traceback.format_exception(exc)))
        engine.shutdown()
    """)
    assert rc == 0, err
    assert res["type"] == "Custom"
    assert any("'picky'" in n and "map item 7" in n for n in res["notes"])
    # The worker's frames are shown: the raising line and the node's name.
    assert 'raise Custom(f"no {x}")' in res["text"] and "in picky" in res["text"]


def test_exception_that_cannot_be_pickled_comes_back_as_text(run_case):
    rc, res, err = run_case("""
        import threading
        class Locked(Exception):
            def __init__(self, msg):
                super().__init__(msg)
                self.lock = threading.Lock()

        class NeedsTwo(Exception):  # pickles, but cannot be rebuilt from its args
            def __init__(self, a, b):
                super().__init__(f"{a}/{b}")

        @node(output_name="y")
        def bad(x):
            if x == 1:
                raise Locked("holding a lock")
            if x == 2:
                raise NeedsTwo("a", "b")
            return x

        engine = ProcessEngine(workers=2)
        out = Pipeline([bad]).map({"x": [0, 1, 2, 3]}, map_over="x", engine=engine,
                                  on_error="collect")
        report(kinds=[type(r).__name__ for r in out], msgs=[str(r) for r in out],
               cause=str(out[1].__cause__))
        engine.shutdown()
    """)
    assert rc == 0, err
    assert res["kinds"][0] == "dict" and res["kinds"][3] == "dict"
    assert res["kinds"][1] == "RemoteError" and "Locked: holding a lock" in res["msgs"][1]
    assert res["kinds"][2] in ("NeedsTwo", "RemoteError") and "a/b" in res["msgs"][2]
    assert "raise Locked" in res["cause"]


def test_unpicklable_input_output_and_node(run_case):
    rc, res, err = run_case("""
        import threading
        lock = threading.Lock()

        @node(output_name="y")
        def ident(x):
            return x

        @node(output_name="y")
        def make_lock(x):
            return threading.Lock() if x == 2 else x

        @node(output_name="y")
        def uses_lock(x):
            with lock:
                return x

        engine = ProcessEngine(workers=2)
        out = Pipeline([ident]).map({"x": [1, lock, 3]}, map_over="x", engine=engine,
                                    on_error="collect")
        report(input=[f"{type(r).__name__}: {r}" for r in out])
        out = Pipeline([make_lock]).map({"x": [1, 2, 3]}, map_over="x", engine=engine,
                                        on_error="collect")
        report(output=[f"{type(r).__name__}: {r}" for r in out])
        try:
            Pipeline([uses_lock]).map({"x": [1, 2]}, map_over="x", engine=engine)
        except Exception as exc:
            report(node=f"{type(exc).__name__}: {exc}")
        try:
            Pipeline([ident]).map({"x": [1, lock]}, map_over="x", engine=engine)
        except Exception as exc:
            report(raised=f"{type(exc).__name__}: {exc}")
        engine.shutdown()
    """)
    assert rc == 0, err
    assert res["input"][0] == "dict: {'y': 1}" and res["input"][2] == "dict: {'y': 3}"
    assert res["input"][1].startswith("SerializationError") and "input 'x'" in res["input"][1]
    assert "map item 1" in res["input"][1] and "'ident'" in res["input"][1]
    assert res["output"][1].startswith("SerializationError") and "['y']" in res["output"][1]
    assert res["node"].startswith("SerializationError") and "node 'uses_lock'" in res["node"]
    assert res["raised"].startswith("SerializationError") and "input 'x'" in res["raised"]


def test_failing_stateful_constructor_fails_the_run_with_its_traceback(run_case):
    rc, res, err = run_case("""
        import traceback
        @stateful
        class Broken:
            def __init__(self):
                raise RuntimeError("no weights file")
            def __call__(self, x):
                return x

        @node(output_name="y")
        def predict(x, model):
            return model(x)

        engine = ProcessEngine(workers=2)
        try:
            Pipeline([predict]).map({"x": list(range(10)), "model": Broken()}, map_over="x",
                                    engine=engine)
        except RuntimeError as exc:
            report(msg=str(exc), text="".join(traceback.format_exception(exc)))
        report(pids=engine.pids)
        engine.shutdown()
    """)
    assert rc == 0, err
    assert res["msg"] == "no weights file"
    assert 'raise RuntimeError("no weights file")' in res["text"]
    assert len(res["pids"]) == 2  # the workers live on: no respawn loop


def test_failing_initializer_breaks_the_engine_without_a_respawn_loop(run_case):
    rc, res, err = run_case("""
        def init():
            raise ValueError("bad config")

        @node(output_name="y")
        def ident(x):
            return x

        engine = ProcessEngine(workers=2, initializer=init)
        for attempt in range(2):
            t0 = time.perf_counter()
            try:
                Pipeline([ident]).map({"x": [1, 2]}, map_over="x", engine=engine)
            except Exception as exc:
                report(**{f"try{attempt}": f"{type(exc).__name__}: {exc}",
                          f"took{attempt}": time.perf_counter() - t0})
        report(pids=engine.pids)
        engine.shutdown()
    """)
    assert rc == 0, err
    assert res["try0"].startswith("ExecutionError") and "initializer failed" in res["try0"]
    assert 'raise ValueError("bad config")' in res["try0"]
    assert "broken" in res["try1"] and res["took1"] < 0.5
    assert res["pids"] == []


def test_parent_killed_leaves_no_worker_behind(start_case):
    proc = start_case("""
        @node(output_name="y")
        def slow(x):
            time.sleep(0.2)
            return x

        engine = ProcessEngine(workers=2)
        report(pids=engine.start().pids)
        Pipeline([slow]).map({"x": list(range(1000))}, map_over="x", engine=engine)
    """)
    line = proc.stdout.readline()
    assert line.startswith("RESULT "), proc.stderr.read()
    import json
    pids = json.loads(line[7:])["pids"]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    time.sleep(0.5)  # let the map start; nothing to wait on from outside
    pids = set(pids) | children(proc.pid)  # and the forkserver, if any
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(alive(p) for p in pids)


def test_ctrl_c_interrupts_a_map_quickly_and_the_engine_recovers(start_case):
    proc = start_case("""
        @node(output_name="y")
        def busy(x):
            t = time.perf_counter()
            while time.perf_counter() - t < 0.5:
                pass
            return x

        engine = ProcessEngine(workers=2)
        pids = engine.start().pids
        p = Pipeline([busy])
        report(ready=True)
        try:
            p.map({"x": list(range(100))}, map_over="x", engine=engine)
        except KeyboardInterrupt:
            report(caught=time.time(), old=pids)
        out = p.map({"x": [1, 2]}, map_over="x", engine=engine)
        report(again=[r["y"] for r in out], new=engine.pids)
        engine.shutdown()
    """)
    assert proc.stdout.readline().startswith("RESULT "), proc.stderr.read()
    time.sleep(0.3)  # into the map
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    res = results(stdout)
    assert "caught" in res, stderr
    assert res["caught"] - sent < 1.0
    assert res["again"] == [1, 2]
    assert not any(alive(p) for p in res["old"])  # the busy workers were stopped
    assert len(res["new"]) == 2


def test_interpreter_exit_with_an_open_engine(start_case):
    before = set(os.listdir("/dev/shm"))
    proc = start_case("""
        import numpy as np
        @node(output_name="a")
        def big(x):
            return np.full(200_000, x, dtype=np.float64)

        engine = ProcessEngine(workers=2)
        out = Pipeline([big]).map({"x": list(range(20))}, map_over="x", engine=engine)
        assert all(r["a"][0] == i for i, r in enumerate(out))
        report(pids=engine.pids)
        # no shutdown: the interpreter exits with the engine open
    """)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    pids = results(stdout)["pids"]
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(alive(p) for p in pids)
    # Large results travel in anonymous memfd segments, which cannot outlive the
    # processes; nothing of ours may appear in /dev/shm (other programs' may come and go).
    assert [n for n in set(os.listdir("/dev/shm")) - before if "gilfree" in n] == []
