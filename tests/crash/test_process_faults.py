"""Crash cases of ProcessEngine alone (both start methods): a worker that dies at an
awkward moment, killed from outside, a failing initializer, the parent killed.  The
faults every engine shares are in the other modules of this folder.

Each case runs in a fresh interpreter (see conftest.py) with a timeout; a hang fails.
"""

from __future__ import annotations

import json
import time

import pytest

from crash_helpers import BOTH_STARTS, alive, children

pytestmark = pytest.mark.parametrize("engine_name", BOTH_STARTS)


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

        def make_batch(self, a, b, origin):
            if not killed:
                for pid in engine.pids:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                deadline = time.monotonic() + 10
                while set(engine.pids) & set(killed) and time.monotonic() < deadline:
                    time.sleep(0.01)
            return original(self, a, b, origin)

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
