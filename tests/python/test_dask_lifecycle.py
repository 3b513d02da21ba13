"""DaskEngine and the processes it starts: what listens, Ctrl-C, shutdown during a map.

Each test starts clusters of its own (that is what it tests); those that send signals
or might hang run in a child process under a timeout, so a hang fails the test.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason='pip install "dask[distributed]"')

import gilfree  # noqa: E402
from gilfree import ExecutionError, Pipeline, PipelineCallback, node  # noqa: E402
from gilfree.engines import DaskEngine  # noqa: E402

PYTHON_DIR = str(Path(gilfree.__file__).resolve().parent.parent)


def _child(script: str, timeout: float) -> dict:
    """Run ``script`` in a fresh interpreter; its last stdout line is JSON."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": PYTHON_DIR})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# What listens: every TCP socket in LISTEN state owned by the given processes, read from
# /proc (the inodes of a process's socket fds, matched in /proc/net/tcp and tcp6).
LISTENING = """
    import os

    def listening(pids):
        inodes = set()
        for pid in pids:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        found = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                        host, port = cols[1].split(":")
                        raw = bytes.fromhex(host)
                        # the kernel prints each 32-bit word in host (little-endian) order
                        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                        found.append([raw.hex(), int(port, 16)])
        return found
"""


def _is_loopback(raw_hex: str) -> bool:
    return ipaddress.ip_address(bytes.fromhex(raw_hex)).is_loopback


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads /proc (Linux)")
def test_default_cluster_listens_on_loopback_only_and_dashboard_on_request():
    script = LISTENING + """
    import json, urllib.error, urllib.request
    from gilfree import Pipeline, node
    from gilfree.engines import DaskEngine

    @node(output_name="y")
    def inc(x):
        return x + 1

    def status(url):  # what the dashboard's address answers (200: a dashboard)
        try:
            with urllib.request.urlopen(url, timeout=30) as page:
                return page.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError as exc:
            return str(exc)

    def survey(engine):
        assert Pipeline([inc], engine=engine).map({"x": [1, 2]}, map_over="x") == [
            {"y": 2}, {"y": 3}]  # scheduler and workers are up
        client = engine.client
        info = client.scheduler_info()
        workers = list(client.run(os.getpid).values())
        return {"scheduler": info["address"], "workers": sorted(client.nthreads()),
                "workers_pids": workers,
                # the scheduler and nannies: in a process of DaskEngine's own
                "sockets": listening(sorted({os.getpid(), client.run_on_scheduler(os.getpid),
                                             *workers})),
                "dashboard": client.dashboard_link, "status": status(client.dashboard_link)}

    with DaskEngine() as engine:  # the defaults, as a user gets them
        print(json.dumps({"default": survey(engine)}), flush=True)
    with DaskEngine(n_workers=1, dashboard=True) as engine:
        print(json.dumps({"asked": survey(engine)}))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=110,
                          env={**os.environ, "PYTHONPATH": PYTHON_DIR})
    result = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    assert "default" in result, done.stderr[-3000:]
    for case in ("default", "asked"):
        if case == "asked":
            assert done.returncode == 0 and case in result, done.stderr[-3000:]
        r = result[case]
        assert r["scheduler"].startswith("tcp://127.0.0.1:"), r
        assert r["workers"] and all(w.startswith("tcp://127.0.0.1:") for w in r["workers"])
        assert r["sockets"], r  # the survey sees the scheduler's socket at least
        outside = [s for s in r["sockets"] if not _is_loopback(s[0])]
        assert not outside, f"{case}: listening beyond loopback: {outside}"
    assert result["default"]["status"] != 200, result["default"]  # no dashboard
    assert result["asked"]["dashboard"].startswith("http://127.0.0.1:")
    if importlib.util.find_spec("bokeh") is not None:  # dask serves its dashboard with it
        assert result["asked"]["status"] == 200, result["asked"]


CTRL_C = """
    import json, os, signal, threading, time
    from distributed import Client, LocalCluster
    from gilfree import Pipeline, node
    from gilfree.engines import DaskEngine

    @node(output_name="y")
    def nap(x, seconds):
        time.sleep(seconds)
        return x

    def interrupted_then_next(engine, n, seconds):
        p = Pipeline([nap], engine=engine)
        p.map({"x": [0, 1], "seconds": 0}, map_over="x")  # the workers are up
        threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        try:
            p.map({"x": list(range(n)), "seconds": seconds}, map_over="x")
            raise SystemExit("the map was not interrupted")
        except KeyboardInterrupt:
            interrupted = time.monotonic() - t0
        t0 = time.monotonic()
        out = p.map({"x": list(range(10)), "seconds": 0}, map_over="x")
        assert out == [{"y": i} for i in range(10)], out
        return [interrupted, time.monotonic() - t0]

    # A caller's cluster (never restarted by gilfree): 5,000 items of 0.2 s make 8
    # batches of 625 items (~2 min each); the running ones stop at the next item.
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
    client = Client(cluster, set_as_default=False)
    theirs = interrupted_then_next(DaskEngine(client=client), 5000, 0.2)
    client.close(); cluster.close()
    # The engine's own cluster, the node blocked in C for an hour: the worker stuck in
    # it is replaced.
    with DaskEngine(n_workers=1) as engine:
        own = interrupted_then_next(engine, 2, 3600)
    print(json.dumps({"theirs": theirs, "own": own}))
"""


def test_ctrl_c_stops_running_batches_and_the_next_map_does_not_wait_for_them():
    """Before: the next map queued behind the interrupted map's running batches (minutes
    here, an hour for the blocked node). The bounds are generous: what fails is waiting
    for those batches, which the child's timeout turns into a failure."""
    result = _child(CTRL_C, timeout=110)
    for case, (interrupted, next_map) in result.items():
        assert interrupted < 1.5 + 5, (case, interrupted)  # KeyboardInterrupt promptly
        assert next_map < 30, (case, next_map)


class FirstItemDone(PipelineCallback):
    def __init__(self):
        self.event = threading.Event()

    def on_node_end(self, *args):
        self.event.set()


def test_shutdown_during_a_map_says_so_and_every_item_ends():
    """Another thread shuts the engine down mid-map: each item is a result or an
    ExecutionError saying the engine was shut down (not "Use batch_size=1 to find the
    item"); nothing hangs; the engine starts a fresh cluster when used again."""
    @node(output_name="y")
    def slow(x):
        time.sleep(0.1)
        return x

    first = FirstItemDone()
    engine = DaskEngine(n_workers=1, batch_size=1, callbacks=[first])
    p = Pipeline([slow], engine=engine)
    try:
        for on_error in ("collect", "raise"):
            first.event.clear()
            box: dict = {}

            def go(on_error=on_error, box=box):
                try:
                    box["out"] = p.map({"x": list(range(40))}, map_over="x",
                                       on_error=on_error)
                except BaseException as exc:
                    box["error"] = exc

            thread = threading.Thread(target=go, daemon=True)
            thread.start()
            assert first.event.wait(60), "no item finished"
            engine.shutdown()
            thread.join(60)
            assert not thread.is_alive(), "the map hangs after shutdown"
            if on_error == "collect":
                out = box["out"]
                assert len(out) == 40
                failed = [r for r in out if not isinstance(r, dict)]
                assert failed, "shut down after the first item, yet all 40 completed"
                for r in failed:
                    assert isinstance(r, ExecutionError), r
                    assert "DaskEngine was shut down during the map" in str(r)
                assert all(r == {"y": i} for i, r in enumerate(out) if isinstance(r, dict))
            else:
                error = box["error"]
                assert isinstance(error, ExecutionError), repr(error)
                assert "DaskEngine was shut down during the map" in str(error)
                assert "batch_size=1" not in str(error)
        assert p.map({"x": [1, 2]}, map_over="x") == [{"y": 1}, {"y": 2}]
    finally:
        engine.shutdown()
