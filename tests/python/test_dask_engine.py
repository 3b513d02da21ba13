"""DaskEngine specifics that the contract suite (run on DaskEngine too) cannot show.

Engine-specific because they are about Dask itself: one instance of a @stateful object
per worker *process*, worker deaths and Dask's retry rule, a real cluster reached by
address, the caller's client left open, notebook code on workers, interpreter exit.
Most tests share the session's LocalCluster (``dask_client`` in conftest.py: 2 worker
processes x 1 thread); the others start their own processes because that is what they
test (an engine's own cluster, Ctrl-C, interpreter exit, a real cluster).
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason='pip install "dask[distributed]"')

import gilfree  # noqa: E402
from gilfree import (DualNode, ExecutionError, Pipeline, PipelineCallback,  # noqa: E402
                     SerializationError, node, stateful)
from gilfree.engines import DaskEngine  # noqa: E402
from gilfree.transport import RemoteError  # noqa: E402

PYTHON_DIR = str(Path(gilfree.__file__).resolve().parent.parent)

#: Per worker process (this module is imported there by reference): builds and
#: teardowns per tag, so tests sharing the session cluster do not see each other.
BUILDS: collections.Counter = collections.Counter()
TEARDOWNS: collections.Counter = collections.Counter()


@stateful
class CountingModel:
    def __init__(self, tag: str):
        BUILDS[tag] += 1
        self.tag = tag

    def predict(self, x):
        return {"pid": os.getpid(), "builds": BUILDS[self.tag], "instance": id(self),
                "y": x + 1}

    def __teardown__(self):
        TEARDOWNS[self.tag] += 1


def _counts(tag):
    return BUILDS[tag], TEARDOWNS[tag]


def _worker_counts(client, tag):
    # _counts goes by reference: it reads the worker's module globals, not copies.
    return client.run(_counts, tag)


@node(output_name="out")
def predict(x, model):
    return model.predict(x)


# -- stateful objects: once per worker process --------------------------------------------
def test_stateful_built_once_per_worker_process_across_batches_and_calls(dask_client):
    tag = uuid.uuid4().hex
    model = CountingModel(tag)
    engine = DaskEngine(client=dask_client, batch_size=3)  # 40 items: 14 batches per map
    p = Pipeline([predict], engine=engine)
    seen = {}
    for _ in range(2):
        out = p.map({"x": list(range(40)), "model": model}, map_over="x")
        assert [r["out"]["y"] for r in out] == list(range(1, 41))
        for r in out:
            seen.setdefault(r["out"]["pid"], set()).add(r["out"]["instance"])
            assert r["out"]["builds"] == 1
    # An equal model (same class and arguments) is the same worker instance, too.
    p.map({"x": [1, 2, 3, 4], "model": CountingModel(tag)}, map_over="x")
    counts = _worker_counts(dask_client, tag)
    assert all(len(ids) == 1 for ids in seen.values())  # one instance per process
    assert {b for b, _ in counts.values()} <= {0, 1}
    assert sum(b for b, _ in counts.values()) == len(seen)
    assert BUILDS[tag] == 0  # never built in the driver
    engine.shutdown()  # tears the worker instances down, leaves the client open
    assert dask_client.status == "running"
    after = _worker_counts(dask_client, tag)
    assert {w: t for w, (_, t) in after.items()} == {w: b for w, (b, _) in counts.items()}


@stateful
class BrokenModel:
    """A model whose load fails: each attempt is a line in ``log`` (worker pid)."""

    def __init__(self, log):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        raise OSError("weights file is corrupt")

    def predict(self, x):
        return {"y": x}


def test_failing_stateful_constructor_runs_once_per_worker_per_map(dask_client, tmp_path):
    """Many batches per worker: each worker process tries the build once per map (not
    once per batch or item), every item fails with its error, the next map tries again."""
    log = tmp_path / "attempts"
    log.touch()
    p = Pipeline([predict], engine=DaskEngine(client=dask_client, batch_size=1))
    model = BrokenModel(str(log))
    seen = 0
    for on_error in ("collect", "raise", "collect"):
        if on_error == "collect":
            out = p.map({"x": list(range(12)), "model": model}, map_over="x",
                        on_error=on_error)
            assert all(isinstance(r, OSError) and "weights file is corrupt" in str(r)
                       for r in out), out
        else:
            with pytest.raises(OSError, match="weights file is corrupt"):
                p.map({"x": list(range(12)), "model": model}, map_over="x",
                      on_error=on_error)
        attempts = log.read_text().split()[seen:]
        seen += len(attempts)
        per_worker = collections.Counter(attempts)
        assert per_worker and max(per_worker.values()) == 1, (on_error, per_worker)
        assert str(os.getpid()) not in per_worker  # never built in the driver


def test_items_travel_in_batches(dask_client):
    """Auto: a few batches per worker thread; batch_size= sets the items per task (seen
    here through a DualNode, whose batch function gets a task's items in one call)."""
    def size_one(x):
        return 1

    def size_batch(x):
        return [len(x)] * len(x)

    p = Pipeline([DualNode("size", size_one, size_batch)])
    out = p.map({"x": list(range(100))}, map_over="x", engine=DaskEngine(client=dask_client))
    auto = [r["size"] for r in out]
    assert 1 < max(auto) < 100 and sum(1 / s for s in auto) == pytest.approx(8)  # 2 x 4
    out = p.map({"x": list(range(100))}, map_over="x",
                engine=DaskEngine(client=dask_client, batch_size=10))
    assert [r["size"] for r in out] == [10] * 100


# -- errors ---------------------------------------------------------------------------
def test_first_failure_in_input_order_wins_and_keeps_remote_traceback(dask_client):
    @node(output_name="y")
    def fragile(x):
        if x in (5, 25):
            raise KeyError(f"bad {x}")
        return x

    p = Pipeline([fragile], engine=DaskEngine(client=dask_client, batch_size=2))
    for _ in range(3):
        with pytest.raises(KeyError, match="bad 5") as info:
            p.map({"x": list(range(40))}, map_over="x")
        assert "map item 5" in "\n".join(info.value.__notes__)
        frames = [f.co_name for f in _frames(info.value.__traceback__)]
        assert "fragile" in frames  # the worker's frames came back with it

    out = p.map({"x": list(range(40))}, map_over="x", on_error="collect")
    assert isinstance(out[25], KeyError) and out[24] == {"y": 24}
    assert "fragile" in [f.co_name for f in _frames(out[25].__traceback__)]


def _frames(tb):
    while tb is not None:
        yield tb.tb_frame.f_code
        tb = tb.tb_next


def test_unpicklable_input_names_the_input(dask_client):
    p = Pipeline([node(output_name="y")(lambda x, lock: x)])
    with pytest.raises(SerializationError, match="input 'lock'"):
        p.map({"x": [1, 2], "lock": threading.Lock()}, map_over="x",
              engine=DaskEngine(client=dask_client))


def _generator():
    yield 1


def test_unpicklable_input_item_fails_that_item_only(dask_client):
    """As on ProcessEngine (same error, same words): the item whose input cannot be
    pickled fails, naming item, input and node; the others run, in its batch too."""
    @node(output_name="y")
    def double(x):
        return 2 * x

    p = Pipeline([double], engine=DaskEngine(client=dask_client, batch_size=2))
    expected = ("cannot send input 'x' (generator: TypeError: cannot pickle 'generator' "
                "object) of map item 1 (used by node(s) ['double']) to a worker process "
                "(driver -> worker)")
    out = p.map({"x": [1, _generator(), 3, 4]}, map_over="x", on_error="collect")
    assert out[0] == {"y": 2} and out[2:] == [{"y": 6}, {"y": 8}]
    assert isinstance(out[1], SerializationError) and str(out[1]) == expected
    with pytest.raises(SerializationError) as info:
        p.map({"x": [1, _generator(), 3, 4]}, map_over="x")
    assert str(info.value) == expected


def test_module_missing_on_workers_is_explained(dask_client, tmp_path, monkeypatch):
    (tmp_path / "only_on_driver.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_driver

    p = Pipeline([node(output_name="y")(lambda x, f: f(x))])
    assert p.run({"x": 2, "f": only_on_driver.triple}) == {"y": 6}
    with pytest.raises(SerializationError, match="importable on every worker"):
        p.map({"x": [1, 2], "f": only_on_driver.triple}, map_over="x",
              engine=DaskEngine(client=dask_client))


# -- callbacks ----------------------------------------------------------------------------
class Events(PipelineCallback):
    def __init__(self):
        self.seen = []

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name.startswith("on_"):
            def record(*args):
                object.__getattribute__(self, "seen").append(
                    (name, threading.get_ident(), args[-1].depth))
                return attr(*args)
            return record
        return attr


def test_callbacks_in_driver_with_nested_maps(dask_client):
    inner = Pipeline([node(output_name="y")(lambda x: x * 2)], name="inner")
    nested = inner.as_node(input_mapping={"xs": "x"}, map_over="xs",
                           output_mapping={"y": "ys"})
    rec = Events()
    out = Pipeline([nested]).map({"xs": [[1, 2], [3]]}, map_over="xs",
                                 engine=DaskEngine(client=dask_client, callbacks=[rec]))
    assert out == [{"ys": [2, 4]}, {"ys": [6]}]
    names = collections.Counter((n, d) for n, _, d in rec.seen)
    assert names[("on_map_start", 0)] == 1 and names[("on_map_end", 0)] == 1
    assert names[("on_map_start", 1)] == 2  # one nested map per item, at depth 1
    assert names[("on_node_end", 1)] == 3
    assert {t for _, t, _ in rec.seen} == {threading.get_ident()}
    assert rec.seen[0][0] == "on_map_start" and rec.seen[-1][0] == "on_map_end"


# -- lifecycle --------------------------------------------------------------------------
def test_importing_engines_does_not_import_dask():
    code = ("import sys, gilfree, gilfree.engines\n"
            "from gilfree.engines import DaskEngine\n"
            "assert 'dask' not in sys.modules and 'distributed' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": PYTHON_DIR})


def test_missing_dask_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    # gilfree is not on a package index: the hint must be one that works.
    with pytest.raises(ModuleNotFoundError) as info:
        DaskEngine()
    assert 'pip install "dask[distributed]"' in str(info.value)
    assert 'pip install ".[dask]"' in str(info.value)
    assert "gilfree[dask]" not in str(info.value)


def test_notebook_code_and_exit_with_engine_left_open(tmp_path):
    """Functions and a @stateful class defined in __main__ (here: ``python -c``, which,
    like a notebook, has no file a worker could import) run on a LocalCluster that the
    engine starts lazily; the interpreter then exits, without shutdown(), promptly."""
    script = textwrap.dedent("""
        import json, os
        from gilfree import Pipeline, node, stateful
        from gilfree.engines import DaskEngine

        @stateful
        class Offset:
            def __init__(self, k):
                self.k = k
                self.pid = os.getpid()

        @node(output_name="y")
        def add(x, offset):
            return (x + offset.k, offset.pid)

        engine = DaskEngine(n_workers=1)
        p = Pipeline([add], engine=engine)
        first = p.map({"x": [1, 2, 3], "offset": Offset(10)}, map_over="x")
        client = engine.client
        second = p.map({"x": [4], "offset": Offset(10)}, map_over="x")
        assert engine.client is client  # the cluster is reused
        print(json.dumps({"out": [r["y"] for r in first + second], "driver": os.getpid()}))
        # no shutdown(): the interpreter must still exit promptly
    """)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": PYTHON_DIR})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [v for v, _ in result["out"]] == [11, 12, 13, 14]
    assert len({pid for _, pid in result["out"]}) == 1 != result["driver"]
    assert time.monotonic() - t0 < 60


def test_dead_worker_follows_dask_retries_then_names_node_and_item(tmp_path):
    """A worker process that dies is Dask's business: with allowed-failures=1 a batch is
    re-run once elsewhere; a second death gives up, naming the node and the item."""
    import dask

    marker = tmp_path / "died-once"

    @node(output_name="y")
    def crash(x):
        if x == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)  # a first death: Dask re-runs the batch
        if x == 7:
            os._exit(4)  # every time: Dask gives up
        return x

    # Dask counts a death against every task the worker held at that moment; with one
    # task per worker thread (worker-saturation 1.0) that is only the one that died.

    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.scheduler.worker-saturation": 1.0}):
        engine = DaskEngine(n_workers=1, batch_size=1)
        client = engine.client  # the scheduler reads the config as it starts
    try:
        p = Pipeline([crash], engine=engine)
        assert p.map({"x": [0, 1, 2, 3]}, map_over="x") == [{"y": i} for i in range(4)]
        assert marker.exists()
        with pytest.raises(ExecutionError, match=r"map item 2 .*node 'crash'.*died") as info:
            p.map({"x": [6, 8, 7]}, map_over="x")
        assert type(info.value.__cause__).__name__ == "KilledWorker"
        out = p.map({"x": [6, 8, 7]}, map_over="x", on_error="collect")
        assert out[:2] == [{"y": 6}, {"y": 8}] and isinstance(out[2], ExecutionError)
        # The error kept in the results does not keep the map's futures (and so their
        # results, in the workers' memory) alive.
        # The client drops released futures on its own event loop: poll, with a deadline.
        gc.collect()
        deadline = time.monotonic() + 10
        while client.futures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not client.futures, sorted(client.futures)
    finally:
        engine.shutdown()
    assert client.status == "closed"  # the engine started it, the engine closed it


# -- a real cluster: scheduler and workers as separate processes ---------------------
def _spawn(args, log):
    return subprocess.Popen([sys.executable, "-m", *args], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": PYTHON_DIR})


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_real_cluster_by_address(tmp_path):
    """`dask scheduler` and two `dask worker` processes on loopback; the pipeline's code
    is defined here (by value: the workers cannot import this test module)."""
    sched_file = tmp_path / "scheduler.json"
    log = open(tmp_path / "cluster.log", "w")
    procs = []
    try:
        procs.append(_spawn(["distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                             "--port", "0", "--no-dashboard", "--scheduler-file",
                             str(sched_file)], log))
        _wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 60,
                  "the scheduler")
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(_spawn(["distributed.cli.dask_worker", address, "--nthreads", "1",
                                 "--no-dashboard", "--host", "127.0.0.1",
                                 "--death-timeout", "60"], log))

        namespace = {"__name__": "__main__"}  # notebook code: shipped by value
        exec(textwrap.dedent("""
            import os
            from gilfree import stateful

            @stateful
            class Scale:
                def __init__(self, k):
                    self.k = k
                    self.pid = os.getpid()
        """), namespace)
        Scale = namespace["Scale"]

        @node(output_name="y")
        def scale(x, s):
            return (x * s.k, s.pid, id(s._gilfree_instance()))

        with DaskEngine(address=address, connect_timeout=30) as engine:
            engine.client.wait_for_workers(2, timeout=60)
            p = Pipeline([scale], engine=engine)
            s = Scale(3)
            outs = [p.map({"x": list(range(30)), "s": s}, map_over="x") for _ in range(2)]
            assert [r["y"][0] for r in outs[0]] == [3 * x for x in range(30)]
            per_pid = {}
            for r in outs[0] + outs[1]:
                per_pid.setdefault(r["y"][1], set()).add(r["y"][2])
            assert os.getpid() not in per_pid and len(per_pid) <= 2
            assert all(len(ids) == 1 for ids in per_pid.values())
            assert engine.client.status == "running"
        assert engine._client is None
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        log.close()


class NeedsTwoArguments(Exception):
    def __init__(self, code, detail):  # unpickling calls cls(*args): one argument fails
        super().__init__(f"{code}: {detail}")


def test_exception_that_cannot_travel_comes_back_as_text(dask_client):
    @node(output_name="y")
    def picky(x):
        if x == 1:
            raise NeedsTwoArguments(7, "bad input")
        return x

    p = Pipeline([picky], engine=DaskEngine(client=dask_client))
    with pytest.raises(RemoteError, match="NeedsTwoArguments: 7: bad input") as info:
        p.map({"x": [0, 1, 2]}, map_over="x")  # ProcessEngine's type, and the traceback:
    assert "raise NeedsTwoArguments" in str(info.value.__cause__)
    assert "map item 1" in "\n".join(info.value.__notes__)
    out = p.map({"x": [0, 1, 2]}, map_over="x", on_error="collect")
    assert out[0] == {"y": 0} and out[2] == {"y": 2} and isinstance(out[1], ExecutionError)


def test_outputs_and_events_that_cannot_travel(dask_client):
    """An output that does not pickle fails its item (worker -> driver); an unpicklable
    intermediate value reaches callbacks as its repr and does not break the map."""
    @node(output_name="handle")
    def open_handle(x):
        return threading.Lock() if x == 1 else x

    @node(output_name="y")
    def use(handle):
        return str(type(handle).__name__)

    engine = DaskEngine(client=dask_client, batch_size=2)
    # ProcessEngine's words: the output, the node that made it, the item, which way.
    with pytest.raises(SerializationError, match=r"output 'handle' of node 'open_handle' "
                       r"\(map item 1\) back to the driver \(worker -> driver\)"):
        Pipeline([open_handle], engine=engine).map({"x": [0, 1, 2]}, map_over="x")
    out = Pipeline([open_handle], engine=engine).map({"x": [0, 1, 2]}, map_over="x",
                                                      on_error="collect")
    assert out[0] == {"handle": 0} and isinstance(out[1], SerializationError)

    rec = Events()
    p = Pipeline([open_handle, use], engine=DaskEngine(client=dask_client, callbacks=[rec]))
    assert p.map({"x": [0, 1]}, map_over="x", output_name="y") == [{"y": "int"},
                                                                   {"y": "lock"}]
    assert sum(n == "on_node_end" for n, _, _ in rec.seen) == 4


def test_cache_per_item_on_the_workers(dask_client, tmp_path):
    """The contract's cache test, counted with files (a worker's Counter is its own)."""
    from gilfree import DiskCache

    calls = tmp_path / "calls"
    calls.mkdir()

    @node(output_name="y")
    def slow(x):
        (calls / f"{x}-{uuid.uuid4().hex}").touch()
        return None if x == 0 else x * 2

    p = Pipeline([slow], engine=DaskEngine(client=dask_client,
                                           cache=DiskCache(tmp_path / "cache")))
    assert p.map({"x": [0, 1, 2]}, map_over="x") == [{"y": None}, {"y": 2}, {"y": 4}]
    assert p.map({"x": [0, 1, 2, 3]}, map_over="x")[-1] == {"y": 6}
    counted = collections.Counter(f.name.split("-")[0] for f in calls.iterdir())
    assert counted == {"0": 1, "1": 1, "2": 1, "3": 1}  # None was cached too


@node(output_name="n")
def text_length(text):
    return len(text)


def _payloads_held_in_driver(marker: bytes, timeout: float = 10.0) -> list[str]:
    """The objects in this process that still hold bytes containing marker (a batch's
    pickled rows) once the map's tasks are released (asynchronously), as type names."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        held = [type(obj).__name__ for obj in gc.get_objects()
                for r in gc.get_referents(obj)
                if isinstance(r, bytes) and len(r) > 10_000 and marker in r]
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.05)


def test_own_cluster_keeps_no_batch_payload_after_maps():
    # Issue 14 (memory): Dask's BatchedSend logs kept the last 1000 messages under 1 MB,
    # each batch's rows blob among them, in the driver (the client's log; the
    # scheduler's too while it ran in the driver): memory grew with every map.
    marker = uuid.uuid4().hex  # other tests' clusters keep their own logs
    texts = [f"{marker}{k:06d}" + "x" * 19_968 for k in range(32)]  # ~160 KB a batch
    pipeline = Pipeline([text_length])
    with DaskEngine(n_workers=1, batch_size=8) as engine:
        for _ in range(3):
            out = pipeline.map({"text": texts}, map_over="text", engine=engine)
            assert [r["n"] for r in out] == [20_006] * 32
        del out
        assert _payloads_held_in_driver(marker.encode()) == []
        client = engine.client
        (old,) = client.nthreads()
        (pid,) = client.run(os.getpid).values()
        os.kill(pid, signal.SIGKILL)  # the nanny starts a fresh worker
        deadline = time.monotonic() + 60
        while set(client.nthreads()) in (set(), {old}) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(client.nthreads()) not in (set(), {old}), "no replacement worker"
        out = pipeline.map({"text": texts}, map_over="text", engine=engine)
        assert [r["n"] for r in out] == [20_006] * 32
        del out
        assert _payloads_held_in_driver(marker.encode()) == []


def _scheduler_pid(dask_scheduler=None):
    return os.getpid()


def test_own_cluster_runs_its_scheduler_outside_the_driver_and_workers_import_as_it_can(
        tmp_path, monkeypatch):
    # Issue 14 (memory): the LocalCluster's scheduler and nannies shared the driver's
    # process, and what they keep pinned CPython's memory arenas that each map's rows and
    # results filled: +190 MiB over 10 maps of 1,000,000 items.  Their own process now;
    # the workers still import what the driver can (its sys.path travels).
    (tmp_path / "beside_the_script.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import beside_the_script

    pipeline = Pipeline([node(output_name="y")(beside_the_script.triple)])
    with DaskEngine(n_workers=1) as engine:
        assert engine.client.run_on_scheduler(_scheduler_pid) != os.getpid()
        out = pipeline.map({"x": [1, 2]}, map_over="x", engine=engine)
    assert [r["y"] for r in out] == [3, 6]
