"""ProcessEngine specifics: what the contract suite cannot express (work really runs in
other processes, @stateful objects are built once per worker, code from __main__ travels
by value, large arrays come back through shared memory, worker lifecycle).

Counts that nodes or constructors make are written to files: a worker process mutates
its own copy of any Python object, never the test's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from gilfree import Pipeline, PipelineCallback, node, stateful
from gilfree.engines import ProcessEngine


@pytest.fixture(scope="module")
def engine():
    """One two-worker engine for the tests that need no options: starting workers costs
    ~0.1 s, and reusing a warm engine is what users do."""
    with ProcessEngine(workers=2) as e:
        yield e


def lines(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@node(output_name="pid")
def whoami(x):
    time.sleep(0.01)
    return os.getpid()


def test_items_run_in_other_processes_in_parallel(engine):
    out = Pipeline([whoami]).map({"x": list(range(40))}, map_over="x", engine=engine)
    pids = {r["pid"] for r in out}
    assert os.getpid() not in pids and pids == set(engine.pids) and len(pids) == 2


def test_workers_default_to_usable_cores_and_options_are_checked():
    assert ProcessEngine().workers == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="start_method"):
        ProcessEngine(start_method="fork")
    with pytest.raises(ValueError, match="workers"):
        ProcessEngine(workers=0)


@stateful
class CountedModel:
    """Appends its process id to a file each time it is built."""

    def __init__(self, log: str, offset: int = 0):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.05)  # an expensive load
        self.offset = offset

    def predict(self, x):
        return x + self.offset


@node(output_name="y")
def predict(x, model):
    return model.predict(x)


def test_stateful_is_built_exactly_once_per_worker_across_batches_and_calls(tmp_path):
    log = str(tmp_path / "builds")
    model = CountedModel(log, offset=100)
    p = Pipeline([predict])
    with ProcessEngine(workers=2, batch_size=5) as engine:
        for _ in range(3):  # many batches per call, several calls
            out = p.map({"x": list(range(60)), "model": model}, map_over="x", engine=engine)
            assert [r["y"] for r in out] == [x + 100 for x in range(60)]
        # A new wrapper with the same class and arguments (a re-run notebook cell) is the
        # same model for the workers.
        p.map({"x": [1, 2, 3, 4], "model": CountedModel(log, offset=100)}, map_over="x",
              engine=engine)
        workers = set(engine.pids)
    builds = lines(tmp_path / "builds")
    assert sorted(builds) == sorted(set(builds)), "a worker built the model twice"
    assert set(map(int, builds)) <= workers and len(builds) == 2
    assert "not initialized" in repr(model)  # never built in the driver


def test_initializer_runs_once_per_worker(tmp_path):
    log = tmp_path / "init"

    def init(path, tag):
        with open(path, "a") as f:
            f.write(f"{tag}-{os.getpid()}\n")

    with ProcessEngine(workers=2, initializer=init, initargs=(str(log), "ok")) as engine:
        for _ in range(2):
            Pipeline([whoami]).map({"x": list(range(20))}, map_over="x", engine=engine)
        pids = engine.pids
    assert sorted(lines(log)) == sorted(f"ok-{p}" for p in pids)


@node(output_name="tag")
def read_init_tag(x):
    return os.environ.get("GILFREE_TEST_INIT_TAG")


def test_initializer_from_a_module_on_a_sys_path_entry_added_at_run_time(tmp_path, monkeypatch):
    # As in a notebook: sys.path.insert(0, "src"); from mymodule import setup. The
    # worker must take the driver's sys.path before it unpickles the initializer.
    (tmp_path / "gilfree_runtime_init_mod.py").write_text(
        "import os\n\ndef setup(tag):\n    os.environ['GILFREE_TEST_INIT_TAG'] = tag\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gilfree_runtime_init_mod

    with ProcessEngine(workers=1, initializer=gilfree_runtime_init_mod.setup,
                       initargs=("ok",)) as engine:
        out = Pipeline([read_init_tag]).map({"x": [1, 2]}, map_over="x", engine=engine)
    assert out == [{"tag": "ok"}, {"tag": "ok"}]


@node(output_name="y")
def sleepy(x):
    time.sleep(30 if x == 5 else 0.01)
    return x


def test_timeout_fails_only_the_overdue_item_and_replaces_its_worker():
    with ProcessEngine(workers=2, timeout=0.5, on_error="collect") as engine:
        Pipeline([whoami]).map({"x": [0, 1]}, map_over="x", engine=engine)
        before = set(engine.pids)
        t0 = time.perf_counter()
        out = Pipeline([sleepy]).map({"x": list(range(20))}, map_over="x", engine=engine)
        assert time.perf_counter() - t0 < 10  # not the 30 s call
        assert isinstance(out[5], TimeoutError)
        assert "map item 5" in str(out[5]) and "'sleepy'" in str(out[5])
        # The items that shared item 5's batch ran again elsewhere: every other one is here.
        assert [out[i] for i in range(20) if i != 5] == [{"y": i} for i in range(20) if i != 5]
        assert set(engine.pids) != before  # the killed worker was replaced
        again = Pipeline([sleepy]).map({"x": [1, 2, 3]}, map_over="x", engine=engine)
    assert again == [{"y": 1}, {"y": 2}, {"y": 3}]


def test_timeout_hint_raises_with_the_item_and_quick_items_are_not_touched():
    @node(output_name="y", timeout=0.5)
    def quick(x):
        time.sleep(0.005)
        return x

    with ProcessEngine(workers=2) as engine:
        out = Pipeline([quick]).map({"x": list(range(100))}, map_over="x", engine=engine)
        assert out == [{"y": i} for i in range(100)]  # 100 x 5 ms: no item is overdue
        engine.configure("sleepy", timeout=0.5)  # the hint, given per engine
        with pytest.raises(TimeoutError, match="map item 5"):
            Pipeline([sleepy]).map({"x": list(range(8))}, map_over="x", engine=engine)
        assert Pipeline([quick]).map({"x": [7]}, map_over="x", engine=engine) == [{"y": 7}]


def test_timeout_says_once_that_run_is_not_bounded():
    with ProcessEngine(workers=1, timeout=5) as engine:
        with pytest.warns(RuntimeWarning, match="run\\(\\) executes in this process"):
            assert Pipeline([sleepy]).run({"x": 1}, engine=engine) == {"y": 1}


def test_max_tasks_per_worker_replaces_workers(tmp_path):
    with ProcessEngine(workers=1, max_tasks_per_worker=5) as engine:
        out = Pipeline([whoami]).map({"x": list(range(20))}, map_over="x", engine=engine)
    pids = [r["pid"] for r in out]
    assert len(set(pids)) == 4 and all(pids.count(p) == 5 for p in set(pids))


def test_engine_restarts_after_shutdown():
    engine = ProcessEngine(workers=1)
    p = Pipeline([whoami])
    first = p.map({"x": [1]}, map_over="x", engine=engine)[0]["pid"]
    engine.shutdown()
    assert engine.pids == []
    second = p.map({"x": [1]}, map_over="x", engine=engine)[0]["pid"]
    engine.shutdown()
    assert first != second


class Recorder(PipelineCallback):
    def __init__(self):
        self.ends: list[tuple[int, float]] = []
        self.threads: set[int] = set()

    def on_map_item_end(self, item_index, duration, ctx):
        self.threads.add(threading.get_ident())
        self.ends.append((item_index, time.perf_counter()))


def test_callbacks_fire_in_the_driver_as_batches_complete():
    rec = Recorder()

    @node(output_name="y")
    def uneven(x):
        time.sleep(0.6 if x == 9 else 0.001)
        return x

    with ProcessEngine(workers=2, batch_size=1, callbacks=[rec]) as engine:
        Pipeline([uneven]).map({"x": list(range(10))}, map_over="x", engine=engine)
        done = time.perf_counter()
    assert rec.threads == {threading.get_ident()}
    assert sorted(i for i, _ in rec.ends) == list(range(10))
    first = min(t for i, t in rec.ends if i == 0)
    assert done - first > 0.3  # item 0 was reported long before the slow item finished


def test_large_arrays_travel_through_shared_memory(engine):
    np = pytest.importorskip("numpy")
    weights = np.arange(300_000, dtype=np.float64)  # broadcast input, 2.4 MB

    @node(output_name="a")
    def scaled(x, w):
        return w * x

    out = Pipeline([scaled]).map({"x": [1, 2, 3], "w": weights}, map_over="x", engine=engine)
    for k, r in enumerate(out, 1):
        assert r["a"].shape == (300_000,) and r["a"][-1] == 299_999 * k
    a = out[0]["a"]
    a[0] = 42.0  # results are ordinary writable arrays
    # Zero-copy: the array is a view of a mapped segment, not of a pickle's bytes.
    assert a.base is not None and a.flags.writeable


def test_nested_map_runs_in_the_workers(engine):
    # The inner items of all outer items run as one map over the workers (fan-out, see
    # test_fanout.py), not inside the worker of their outer item: none runs here.
    inner = Pipeline([whoami], name="inner").as_node(
        input_mapping={"xs": "x"}, map_over="xs", output_mapping={"pid": "pids"})
    out = Pipeline([inner]).map({"xs": [[1, 2], [3]]}, map_over="xs", engine=engine)
    assert [len(r["pids"]) for r in out] == [2, 1]
    assert all(os.getpid() not in r["pids"] for r in out)


def test_main_module_code_travels_by_value(tmp_path):
    # Functions, lambdas and classes defined in __main__ (a script, or a notebook) are
    # not importable in a worker: they are pickled by value, and a class comes back as
    # the driver's own class.
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import os
        from dataclasses import dataclass
        from gilfree import Node, Pipeline, node
        from gilfree.engines import ProcessEngine

        @dataclass
        class Point:
            x: int
            y: int

        SCALE = 3

        @node(output_name="p")
        def make(x):
            return Point(x, x * SCALE)

        shift = Node(lambda p: Point(p.x, p.y + 1), output_name="q")

        if __name__ == "__main__":
            with ProcessEngine(workers=2) as engine:
                out = Pipeline([make, shift]).map({"x": [1, 2]}, map_over="x",
                                                  engine=engine)
            assert all(type(r["q"]) is Point for r in out), out
            print([r["q"].y for r in out])
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[4, 7]"


def test_map_from_a_callback_of_the_same_engine_is_refused():
    class Nested(PipelineCallback):
        def on_map_item_end(self, item_index, duration, ctx):
            Pipeline([whoami]).map({"x": [1]}, map_over="x", engine=engine)

    engine = ProcessEngine(workers=1, callbacks=[Nested()])
    with engine, pytest.raises(RuntimeError, match="callback of a map"):
        Pipeline([whoami]).map({"x": [1, 2]}, map_over="x", engine=engine)


def test_spawn_start_method_runs_fresh_interpreters():
    with ProcessEngine(workers=2, start_method="spawn") as engine:
        out = Pipeline([whoami]).map({"x": list(range(10))}, map_over="x", engine=engine)
        workers = set(engine.pids)
    pids = {r["pid"] for r in out}
    assert pids <= workers and len(workers) == 2 and os.getpid() not in pids


@node(output_name="state")
def startup_state(x):
    import tokenize

    compiled = (tokenize._compile.cache_info().currsize > 0 if sys.version_info < (3, 12)
                else True)  # from 3.12 tokenize is in C: nothing to compile
    return "gilfree.engines" in sys.modules, compiled


def test_a_new_worker_starts_with_what_its_first_batch_needs():
    # The forkserver imports what encoding results needs (engines) and compiles
    # tokenize's patterns (which decorating a node in an imported module uses) once, so
    # that each new worker does not (_zygote.zygote_main). This is the first batch of a worker.
    with ProcessEngine(workers=1) as engine:
        out = Pipeline([startup_state]).map({"x": [0]}, map_over="x", engine=engine)
    assert out == [{"state": (True, True)}]


def test_workers_see_the_driver_environment_and_directory(tmp_path, monkeypatch):
    @node(output_name="seen")
    def look(x):
        return os.environ.get("GILFREE_TEST_VAR"), os.getcwd()

    monkeypatch.setenv("GILFREE_TEST_VAR", "set-after-the-forkserver-started")
    monkeypatch.chdir(tmp_path)
    with ProcessEngine(workers=1) as engine:
        out = Pipeline([look]).map({"x": [1]}, map_over="x", engine=engine)
    assert out[0]["seen"] == ("set-after-the-forkserver-started", str(tmp_path))


@node(output_name="y")
def nap(x):
    time.sleep(0.005)
    return x


def test_a_map_of_slow_items_ends_with_single_item_batches(monkeypatch):
    """The driver times finished batches: at >= 5 ms an item, the tail batches hold one
    item each (before an item is timed the smallest batch is 260 / 128 -> 3 items), so
    no worker idles long while another finishes a batch of several."""
    from gilfree.engines import processes

    ranges = []
    on_result = processes._MapCall.on_result

    def record(self, a, b, origin, body, fds):
        ranges.append((a, b))
        return on_result(self, a, b, origin, body, fds)

    monkeypatch.setattr(processes._MapCall, "on_result", record)
    with ProcessEngine(workers=2) as engine:
        out = Pipeline([nap]).map({"x": list(range(260))}, map_over="x", engine=engine)
    assert [r["y"] for r in out] == list(range(260))
    ranges.sort()
    assert ranges[0][0] == 0 and ranges[-1][1] == 260
    assert [b - a for a, b in ranges[-4:]] == [1, 1, 1, 1]



DRIVER_RSS = """
import gc, sys
from gilfree import Pipeline, node
from gilfree.engines import ProcessEngine

@node(output_name="y")
def plus_one(x):
    return x + 1

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

xs = list(range(300_000))
with ProcessEngine(workers=2) as engine:
    for _ in range(8):
        out = Pipeline([plus_one]).map({"x": xs}, map_over="x", engine=engine)
        assert out[-1] == {"y": 300_000}
        del out
        gc.collect()
        print(round(rss_mib(), 1))
"""


def test_repeated_large_maps_keep_the_driver_memory_flat(tmp_path):
    """Issue 14, defect 9: each batch's result left a small object alive in the driver
    (a global's name, kept by CPython's type cache; see transport._Unpickler), each in
    another 1 MiB arena: RSS grew ~7 MiB per 300k-item map (45 -> 104 MiB over 8 maps),
    map after map. Now flat after the first two maps (measured: +1 MiB)."""
    script = tmp_path / "rss.py"
    script.write_text(DRIVER_RSS)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    rss = [float(v) for v in proc.stdout.split()]
    assert len(rss) == 8 and rss[-1] - rss[1] < 20, f"driver RSS per map (MiB): {rss}"


@node(output_name="handle")
def open_handle(x):
    return threading.Lock() if x == 7 else x


@node(output_name="label")
def label(handle):
    return str(handle)


def test_an_output_that_does_not_pickle_fails_its_item_naming_node_and_item():
    """Issue 14, defect 6: the error named neither the node nor the item."""
    from gilfree.errors import SerializationError

    p = Pipeline([open_handle, label])
    with ProcessEngine(workers=2, batch_size=4, on_error="collect") as engine:
        out = p.map({"x": list(range(10))}, map_over="x", engine=engine)
        assert [out[i] for i in range(10) if i != 7] == [
            {"handle": i, "label": str(i)} for i in range(10) if i != 7]
        err = out[7]
        assert isinstance(err, SerializationError)
        assert "output 'handle' of node 'open_handle' (map item 7)" in str(err)
        assert "worker -> driver" in str(err) and "lock" in str(err)
        assert "gilfree: raised in node 'open_handle' (map item 7)" in err.__notes__
        # The raise policy: the same error for the same item.
        with pytest.raises(SerializationError, match=r"'open_handle' \(map item 7\)"):
            p.map({"x": list(range(10))}, map_over="x", engine=engine, on_error="raise")


@node(output_name="y")
def stalls_after_ten(x):
    time.sleep(0.001 if x < 10 else 3600)
    return x


@pytest.mark.parametrize("policy", ["collect", "raise"])
def test_shutdown_while_another_thread_maps_ends_that_map_with_a_clear_error(policy):
    """Issue 14, defect 10: the mapping thread got a bare RuntimeError('ProcessPool is
    shut down'), and shutdown waited 2 s for workers busy on the map. Now the busy
    workers are killed at once, items that finished keep their results, every other
    item fails saying the engine was shut down, and the engine maps again afterwards."""
    from gilfree.errors import ExecutionError

    ten_done = threading.Event()

    class Progress(PipelineCallback):
        def __init__(self):
            self.ended = 0

        def on_map_item_end(self, item_index, duration, ctx):
            self.ended += 1
            if self.ended == 10:
                ten_done.set()

    engine = ProcessEngine(workers=2, batch_size=5, on_error=policy, callbacks=[Progress()])
    p = Pipeline([stalls_after_ten])
    outcome: dict = {}

    def mapping():
        try:
            outcome["out"] = p.map({"x": list(range(40))}, map_over="x", engine=engine)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=mapping)
    thread.start()
    try:
        assert ten_done.wait(60), "the first ten items never finished"
        engine.shutdown()
        thread.join(60)
        assert not thread.is_alive(), "the mapping thread hangs after shutdown"
        if policy == "raise":
            err = outcome["error"]
            assert isinstance(err, ExecutionError), repr(err)
            assert "ProcessEngine was shut down" in str(err) and "during this map" in str(err)
            assert "30 of 40 map items did not finish (the first is map item 10)" in str(err)
        else:
            out = outcome["out"]
            assert out[:10] == [{"y": i} for i in range(10)]
            for i in range(10, 40):
                assert isinstance(out[i], ExecutionError), (i, out[i])
                assert f"was shut down" in str(out[i]) and f"map item {i} " in str(out[i])
        # The engine starts afresh when used again.
        assert p.map({"x": [1, 2]}, map_over="x", engine=engine) == [{"y": 1}, {"y": 2}]
    finally:
        engine.shutdown()
        thread.join(10)


ALL_HUNG = """
import threading
from gilfree import Pipeline, node
from gilfree.engines import ProcessEngine

@node(output_name="y")
def hang(x):
    threading.Event().wait()
    return x

with ProcessEngine(workers=2, timeout=0.5, on_error="collect") as engine:
    out = Pipeline([hang]).map({"x": list(range(4))}, map_over="x", engine=engine)
    print([type(r).__name__ for r in out])
    print(Pipeline([node(output_name="y")(lambda x: x + 1)]).map(
        {"x": [1, 2]}, map_over="x", engine=engine))
"""


def test_every_worker_killed_for_a_timeout_still_ends_the_map(tmp_path):
    """Every worker held an overdue item and was killed: the batches queued behind them
    had to run again, but with no chunk left to plan the driver started no replacement
    worker, and the map hung for ever (found by the crash matrix, issue 14)."""
    script = tmp_path / "hung.py"
    script.write_text(ALL_HUNG)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == [str(["TimeoutError"] * 4), "[{'y': 2}, {'y': 3}]"]


@stateful
class BrokenModel:
    """Appends its process id to a file at each attempt to build it, then fails."""

    def __init__(self, log: str):
        with open(log, "a") as f:  # O_APPEND: one line per attempt, whichever process
            f.write(f"{os.getpid()}\n")
        raise RuntimeError("no weights file")

    def predict(self, x):
        return x


def test_a_failing_stateful_constructor_runs_once_per_worker_per_map(tmp_path):
    """Issue 14, defect 3 (in worker processes): the constructor ran again for every
    item (collect) or batch (raise). Now once per worker per map, every item that needed
    it fails with its error and traceback, and the next map tries once more."""
    log = tmp_path / "builds"
    p = Pipeline([predict])
    with ProcessEngine(workers=2, batch_size=2) as engine:  # 10 batches a map
        out = p.map({"x": list(range(20)), "model": BrokenModel(str(log))}, map_over="x",
                    engine=engine, on_error="collect")
        workers = set(map(str, engine.pids))
        builds = lines(log)
        assert 1 <= len(builds) <= 2 and len(set(builds)) == len(builds), builds
        assert set(builds) <= workers
        for i, r in enumerate(out):
            assert isinstance(r, RuntimeError) and str(r) == "no weights file", (i, r)
            assert f"gilfree: raised in node 'predict' (map item {i})" in r.__notes__
            # The remote traceback shows the constructor's own failure, also for the
            # items that got a copy of its error.
            assert 'raise RuntimeError("no weights file")' in str(r.__cause__), (i, r)
        for attempt in range(2):  # each map tries again (the file may be fixed by now)
            log.unlink()
            with pytest.raises(RuntimeError, match="no weights file"):
                p.map({"x": list(range(20)), "model": BrokenModel(str(log))}, map_over="x",
                      engine=engine)
            builds = lines(log)
            assert 1 <= len(builds) <= 2 and len(set(builds)) == len(builds), builds
