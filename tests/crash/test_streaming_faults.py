"""Crash matrix, streaming maps (``imap``): Ctrl-C in the middle of an endless input, a
worker process dying under a streamed item, a node failing in a process stage. Every
case: the caller gets the error quickly and precisely, the engine maps again, nothing is
left running."""

from __future__ import annotations

import signal
import time

import pytest

from crash_helpers import ASYNC, PROCESS, PROCESS_MIXED, SEQ, THREAD, THREAD_MIXED, results

STREAMING = [SEQ, THREAD, ASYNC, PROCESS, THREAD_MIXED, PROCESS_MIXED]


@pytest.mark.parametrize("engine_name", STREAMING)
def test_ctrl_c_stops_an_endless_imap_quickly(start_case, engine_name):
    proc = start_case("""
        import itertools

        @node(output_name="y")
        def busy(x):
            t = time.perf_counter()
            while time.perf_counter() - t < 0.02:  # holds the GIL, as CPU work does
                pass
            return x

        engine = make_engine()
        p = Pipeline([busy])
        read = [0]

        def endless():
            for i in itertools.count():
                read[0] += 1
                yield i

        list(p.imap({"x": [0, 1]}, map_over="x", engine=engine))  # workers up
        report(ready=True)
        try:
            for _ in p.imap({"x": endless()}, map_over="x", engine=engine, read_ahead=16):
                pass
        except KeyboardInterrupt:
            report(caught=time.time(), read=read[0])
        again = list(p.imap({"x": [5, 6]}, map_over="x", engine=engine))
        report(again=[r["y"] for r in again])
        engine.shutdown()
    """)
    assert proc.stdout.readline().startswith("RESULT "), proc.stderr.read()
    time.sleep(0.5)  # into the endless map; nothing to wait on from outside
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=90)
    res = results(stdout)
    assert "caught" in res, stderr
    assert res["caught"] - sent < 1.0
    assert res["again"] == [5, 6], stderr
    assert proc.returncode == 0, stderr


@pytest.mark.parametrize("engine_name", [PROCESS, THREAD_MIXED, PROCESS_MIXED])
def test_a_worker_death_fails_its_streamed_items_and_the_stream_goes_on(run_case,
                                                                      engine_name):
    rc, res, err = run_case("""
        @node(output_name="y")
        def fragile(x):
            if x == 5:
                os._exit(3)
            return x * 10

        engine = make_engine()
        p = Pipeline([fragile])
        out = list(p.imap({"x": iter(range(12))}, map_over="x", engine=engine,
                          on_error="collect"))
        errors = {i: f"{type(r).__name__}: {r}" for i, r in enumerate(out)
                  if isinstance(r, Exception)}
        ok = {i: r["y"] for i, r in enumerate(out) if not isinstance(r, Exception)}
        again = [r["y"] for r in p.imap({"x": [1, 2]}, map_over="x", engine=engine)]
        report(n=len(out), errors=errors, ok=ok, again=again)
        engine.shutdown()
    """, timeout=90)
    assert rc == 0, err
    assert res["n"] == 12
    assert "5" in res["errors"] and "map item 5" in res["errors"]["5"], res
    assert "exited with code 3" in res["errors"]["5"], res
    # Only the item it died on: the other items of its batch ran again
    assert list(res["errors"]) == ["5"], res["errors"]
    for i, y in res["ok"].items():
        assert y == int(i) * 10
    assert len(res["ok"]) + len(res["errors"]) == 12
    assert res["again"] == [10, 20]


@pytest.mark.parametrize("engine_name", [PROCESS, THREAD_MIXED])
def test_under_raise_a_worker_death_raises_at_its_item_after_the_items_before(run_case,
                                                                            engine_name):
    rc, res, err = run_case("""
        @node(output_name="y")
        def fragile(x):
            if x == 7:
                os._exit(3)
            return x * 10

        engine = make_engine(batch_size=4)
        got = []
        try:
            for r in Pipeline([fragile]).imap({"x": iter(range(12))}, map_over="x",
                                              engine=engine):
                got.append(r["y"])
        except Exception as exc:
            report(got=got, error=f"{type(exc).__name__}: {exc}")
        engine.shutdown()
    """, timeout=90)
    assert rc == 0, err
    assert res["got"] == [x * 10 for x in range(7)], res  # items 4..6 shared its batch
    assert res["error"].startswith("WorkerDied") and "map item 7 is lost" in res["error"]


@pytest.mark.parametrize("engine_name", [PROCESS, THREAD_MIXED, PROCESS_MIXED])
def test_a_failing_node_in_a_process_stage_raises_at_its_item(run_case, engine_name):
    rc, res, err = run_case("""
        @node(output_name="y")
        def fragile(x):
            if x == 7:
                raise KeyError("seven")
            return x

        engine = make_engine()
        p = Pipeline([fragile])
        seen = []
        try:
            for r in p.imap({"x": iter(range(20))}, map_over="x", engine=engine):
                seen.append(r["y"])
        except KeyError as exc:
            report(seen=seen, notes=getattr(exc, "__notes__", []))
        engine.shutdown()
    """, timeout=90)
    assert rc == 0, err
    assert res["seen"] == list(range(7)), res
    assert any("'fragile'" in n and "map item 7" in n for n in res["notes"]), res


@pytest.mark.parametrize("engine_name", [THREAD, PROCESS])
def test_an_overdue_item_of_a_later_batch_times_out(run_case, engine_name):
    # A process stage sends the map's items in batches numbered as the map numbers them,
    # over time: the pool must find the overdue item by that number (it did not once, and
    # such an item ran to its end, however long, with timeout= set).
    rc, res, err = run_case("""
        @node(output_name="y", executor="thread")
        def pace(x):
            return x

        @node(output_name="z", executor="process")
        def stuck(y):
            if y == 600:
                time.sleep(60)
            return y

        def slow_input():
            for i in range(800):
                time.sleep(0.0005)  # items come over time: many batches
                yield i

        engine = make_engine(timeout=1.0)
        p = Pipeline([pace, stuck])
        t = time.perf_counter()
        out = list(p.imap({"x": slow_input()}, map_over="x", engine=engine,
                          on_error="collect"))
        errors = {i: f"{type(r).__name__}: {r}" for i, r in enumerate(out)
                  if isinstance(r, Exception)}
        report(n=len(out), errors=errors, took=time.perf_counter() - t,
               ok=all(r["z"] == i for i, r in enumerate(out) if i != 600))
        engine.shutdown()
    """, timeout=90)
    assert rc == 0, err
    assert res["n"] == 800 and list(res["errors"]) == ["600"], res
    assert res["errors"]["600"].startswith("TimeoutError: map item 600 did not finish"), res
    assert res["took"] < 20 and res["ok"], res
