"""Crash matrix: Ctrl-C in the middle of a map.  Every engine: KeyboardInterrupt reaches
the caller within a second, the interrupted map's work is cancelled (no item of it starts
after the caller got the KeyboardInterrupt), the engine is usable afterwards, and no
process is left behind once the script ends."""

from __future__ import annotations

import signal
import time

import pytest

from crash_helpers import ALL, SPAWN, results, wait_gone


@pytest.mark.parametrize("engine_name", [*ALL, SPAWN])
def test_ctrl_c_interrupts_a_map_quickly_and_the_engine_recovers(start_case, engine_name,
                                                                  tmp_path):
    proc = start_case(f"""
        STARTED = {str(tmp_path / "started")!r}

        @node(output_name="y")
        def busy(x):  # pure Python: holds the GIL, as CPU-bound work does
            with open(STARTED, "a") as f:  # O_APPEND: one line per item, any process
                f.write(f"{{x}}\\n")
            t = time.perf_counter()
            while time.perf_counter() - t < 0.5:
                pass
            return x

        def started():
            with open(STARTED) as f:
                return [int(x) for x in f.read().split() if int(x) < 1000]

        # At most 4 items at a time: the other ~190 are queued when Ctrl-C comes.
        engine = make_engine(**({{"max_workers": 4}} if ENGINE in ("thread", "async") else {{}}))
        getattr(engine, "start", lambda: None)()
        p = Pipeline([busy])
        p.map({{"x": [0]}}, map_over="x", engine=engine)  # workers up, code shipped
        report(ready=True)
        try:
            p.map({{"x": list(range(200))}}, map_over="x", engine=engine)
        except KeyboardInterrupt:
            report(caught=time.time())
            at_catch = len(started())
        out = p.map({{"x": [1000, 1001]}}, map_over="x", engine=engine)
        report(again=[r["y"] for r in out], procs=descendants())
        engine.shutdown()
        report(started_after_catch=len(started()) - at_catch)
    """)
    assert proc.stdout.readline().startswith("RESULT "), proc.stderr.read()
    time.sleep(0.3)  # into the map; nothing to wait on from outside
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=90)
    res = results(stdout)
    assert "caught" in res, stderr
    assert res["caught"] - sent < 1.0
    assert res["again"] == [1000, 1001], stderr
    # Of the 200 items, those running when Ctrl-C came (at most 4) may finish; no other
    # may start.  A map that let the queued rest run would also keep the next map
    # waiting for them.
    assert res["started_after_catch"] <= 4, res
    assert proc.returncode == 0, stderr
    assert wait_gone(res["procs"]) == []  # no orphans once the script has ended
