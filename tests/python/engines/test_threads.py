"""ThreadEngine and AsyncEngine specifics: what the contract suite cannot express
(concurrency really happens, scoping of stateful objects, hints, lifecycle)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

from gilfree import DualNode, Pipeline, PipelineCallback, node, stateful
from gilfree.engines import AsyncEngine, ThreadEngine


def test_blocking_items_overlap():
    # 40 items that each wait on one barrier can only finish if they run at once.
    barrier = threading.Barrier(40, timeout=10)

    @node(output_name="y")
    def wait(x):
        barrier.wait()
        return x

    with ThreadEngine() as engine:
        out = Pipeline([wait]).map({"x": list(range(40))}, map_over="x", engine=engine)
    assert out == [{"y": i} for i in range(40)]


def test_independent_nodes_of_a_run_overlap():
    barrier = threading.Barrier(2, timeout=10)

    @node(output_name="a")
    def left(x):
        barrier.wait()
        return x

    @node(output_name="b")
    def right(x):
        barrier.wait()
        return -x

    @node(output_name="c")
    def join(a, b):
        return a + b

    with ThreadEngine() as engine:
        assert Pipeline([left, right, join]).run({"x": 3}, engine=engine) == {"a": 3, "b": -3, "c": 0}


@stateful
class Counter:
    built = 0
    lock = threading.Lock()

    def __init__(self):
        with Counter.lock:
            Counter.built += 1
        self.owner = threading.get_ident()

    def who(self):
        return self.owner


@node(output_name="owner")
def owner(x, model):
    time.sleep(0.002)
    return model.who()


def test_stateful_shared_by_default_and_per_thread_on_request():
    Counter.built = 0
    with ThreadEngine(max_workers=4) as engine:
        out = Pipeline([owner]).map({"x": list(range(32)), "model": Counter()}, map_over="x",
                                    engine=engine)
    assert Counter.built == 1 and len({r["owner"] for r in out}) == 1

    Counter.built = 0
    with ThreadEngine(max_workers=4, stateful="per_thread") as engine:
        out = Pipeline([owner]).map({"x": list(range(32)), "model": Counter()}, map_over="x",
                                    engine=engine)
    owners = {r["owner"] for r in out}
    assert Counter.built == len(owners) and 1 < len(owners) <= 4


def test_max_concurrency_hint_is_honoured():
    active, peak, lock = [0], [0], threading.Lock()

    @node(output_name="y", max_concurrency=2)
    def gpu(x):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.005)
        with lock:
            active[0] -= 1
        return x

    with ThreadEngine() as engine:
        Pipeline([gpu]).map({"x": list(range(20))}, map_over="x", engine=engine)
    assert peak[0] == 2


def test_dual_node_batches_overlap_with_auto_size():
    sizes, lock = [], threading.Lock()

    def one(x):
        return x

    def many(x):
        with lock:
            sizes.append(len(x))
        time.sleep(0.01)
        return list(x)

    with ThreadEngine() as engine:
        out = Pipeline([DualNode("y", one, many)]).map({"x": list(range(100))}, map_over="x",
                                                       engine=engine)
    assert out == [{"y": i} for i in range(100)]
    assert sum(sizes) == 100 and len(sizes) > 1


def test_thread_timeout_fails_only_the_slow_item():
    @node(output_name="y")
    def fetch(x):
        time.sleep(3 if x == 2 else 0)
        return x

    with ThreadEngine(timeout=0.2, on_error="collect") as engine:
        t0 = time.perf_counter()
        out = Pipeline([fetch]).map({"x": [0, 1, 2, 3]}, map_over="x", engine=engine)
        assert time.perf_counter() - t0 < 2  # the 3 s call is abandoned, not waited for
    assert isinstance(out[2], TimeoutError) and "map item 2" in str(out[2])
    assert [out[i] for i in (0, 1, 3)] == [{"y": 0}, {"y": 1}, {"y": 3}]


def test_thread_timeout_hint_raises_with_the_item_by_default():
    @node(output_name="y", timeout=0.2)
    def fetch(x):
        time.sleep(3 if x == 1 else 0)
        return x

    @node(output_name="z")
    def parse(y):
        return y + 1

    with ThreadEngine() as engine:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # honoured: no "cannot honour" warning
            with pytest.raises(TimeoutError, match="map item 1"):
                Pipeline([fetch, parse]).map({"x": [0, 1, 2]}, map_over="x", engine=engine)
        # The engine stays usable; the smallest deadline of engine and hints applies.
        out = Pipeline([parse]).map({"y": [1, 2]}, map_over="y", engine=engine)
    assert out == [{"z": 2}, {"z": 3}]


@pytest.mark.parametrize("make", [lambda: ThreadEngine(timeout=1), lambda: AsyncEngine(timeout=1)])
def test_timeout_says_once_that_run_is_not_bounded(make):
    @node(output_name="y")
    def f(x):
        return x + 1

    with make() as engine:
        with pytest.warns(RuntimeWarning, match="run\\(\\) is not bounded"):
            assert Pipeline([f]).run({"x": 1}, engine=engine) == {"y": 2}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert Pipeline([f]).run({"x": 2}, engine=engine) == {"y": 3}


def test_thread_timeout_keeps_callbacks_in_the_driver_and_stops_its_loop():
    seen = []

    class Record(PipelineCallback):
        def on_map_item_end(self, index, duration, ctx):
            seen.append(threading.current_thread() is threading.main_thread())

    @node(output_name="y")
    def f(x):
        return x * 2

    engine = ThreadEngine(timeout=5, callbacks=[Record()])
    out = Pipeline([f]).map({"x": [1, 2, 3]}, map_over="x", engine=engine)
    assert out == [{"y": 2}, {"y": 4}, {"y": 6}] and seen == [True] * 3
    loop_thread = engine._loop_thread
    assert loop_thread is not None and loop_thread._thread.is_alive()
    engine.shutdown()
    assert not loop_thread._thread.is_alive()


def test_async_items_run_concurrently_under_the_cap():
    active, peak = [0], [0]

    @node(output_name="y")
    async def fetch(x):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        await asyncio.sleep(0.01)
        active[0] -= 1
        return x

    with AsyncEngine(max_concurrency=8) as engine:
        out = Pipeline([fetch]).map({"x": list(range(50))}, map_over="x", engine=engine)
    assert out == [{"y": i} for i in range(50)] and peak[0] == 8


def test_async_timeout_fails_only_the_slow_item():
    @node(output_name="y")
    async def fetch(x):
        await asyncio.sleep(5 if x == 2 else 0)
        return x

    with AsyncEngine(timeout=0.2, on_error="collect") as engine:
        t0 = time.perf_counter()
        out = Pipeline([fetch]).map({"x": [0, 1, 2, 3]}, map_over="x", engine=engine)
    assert time.perf_counter() - t0 < 3
    assert isinstance(out[2], TimeoutError) and "map item 2" in str(out[2])
    assert [out[i] for i in (0, 1, 3)] == [{"y": 0}, {"y": 1}, {"y": 3}]


def test_sync_nodes_do_not_block_the_loop():
    # A sync node that blocks must not stall async items of other rows.
    @node(output_name="y")
    async def fetch(x):
        await asyncio.sleep(0.01)
        return x

    @node(output_name="z")
    def parse(y):
        time.sleep(0.02)
        return y

    with AsyncEngine() as engine:
        t0 = time.perf_counter()
        Pipeline([fetch, parse]).map({"x": list(range(20))}, map_over="x", engine=engine)
        elapsed = time.perf_counter() - t0
    assert elapsed < 20 * 0.02  # serial parse alone would take 0.4 s


def test_pool_is_reused_and_engine_usable_after_shutdown():
    @node(output_name="y")
    def f(x):
        return x

    engine = ThreadEngine()
    p = Pipeline([f])
    p.map({"x": [1, 2]}, map_over="x", engine=engine)
    pool = engine.pool
    p.map({"x": [1, 2]}, map_over="x", engine=engine)
    assert engine.pool is pool  # warm: same pool
    engine.shutdown()
    assert p.map({"x": [3]}, map_over="x", engine=engine) == [{"y": 3}]  # starts a new one
    engine.shutdown()


def test_interpreter_exit_with_open_engines_does_not_hang():
    code = textwrap.dedent("""
        import asyncio, time
        from gilfree import Pipeline, node
        from gilfree.engines import ThreadEngine, AsyncEngine
        @node(output_name="y")
        def f(x):
            time.sleep(0.01); return x
        @node(output_name="z")
        async def g(y):
            await asyncio.sleep(0.01); return y
        p = Pipeline([f, g])
        print(p.map({"x": [1, 2, 3]}, map_over="x", engine=ThreadEngine()))
        print(p.map({"x": [1, 2, 3]}, map_over="x", engine=AsyncEngine()))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("{'y': 1, 'z': 1}") == 2


@pytest.mark.parametrize("engine_name, node_kind", [("ThreadEngine", "sync"),
                                                    ("AsyncEngine", "async")])
def test_ctrl_c_interrupts_a_map_promptly(engine_name, node_kind):
    code = textwrap.dedent(f"""
        import asyncio, sys, time
        from gilfree import Pipeline, node
        from gilfree.engines import {engine_name}
        if "{node_kind}" == "sync":
            @node(output_name="y")
            def slow(x):
                time.sleep(30); return x
        else:
            @node(output_name="y")
            async def slow(x):
                await asyncio.sleep(30); return x
        engine = {engine_name}()
        print("started", flush=True)
        t0 = None
        try:
            Pipeline([slow]).map({{"x": list(range(8))}}, map_over="x", engine=engine)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.stdout.flush()
            import os; os._exit(0)  # the sleeping workers cannot be interrupted
    """)
    import signal

    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(0.5)  # let the map start (not a synchronisation: the map runs 30 s)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline().strip()
        latency = time.perf_counter() - t0
        assert line == "interrupted" and latency < 1.0, (line, latency)
        proc.wait(timeout=10)
    finally:
        proc.kill()


@pytest.mark.parametrize("engine_cls, honoured, refused", [
    (ThreadEngine, "thread", "process"),
    (AsyncEngine, "async", "process"),
])
def test_executor_hint_is_honoured_or_reported(engine_cls, honoured, refused):
    import warnings

    @node(output_name="y", executor=honoured)
    def fine(x):
        return x

    @node(output_name="z", executor=refused)
    def elsewhere(y):
        return y

    with engine_cls() as engine, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert Pipeline([fine, elsewhere]).run({"x": 1}, engine=engine) == {"y": 1, "z": 1}
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "'executor'" in messages[0] and "'elsewhere'" in messages[0]


# --- issue 14: timeouts, nested maps, per-thread teardown, shutdown during a map ---------
ENGINES = [ThreadEngine, AsyncEngine]


@pytest.fixture
def hang():
    """A node that blocks until the test ends (a call that never returns, as far as the
    engine can tell); released at teardown so that no thread outlives the test."""
    release = threading.Event()

    @node(output_name="y")
    def stuck(x):
        release.wait(30)
        return x

    yield stuck
    release.set()


@node(output_name="y")
def plus_one(x):
    return x + 1


@pytest.mark.parametrize("engine_cls", ENGINES)
def test_calls_given_up_by_a_timeout_do_not_starve_later_maps(engine_cls, hang):
    with engine_cls(max_workers=4, timeout=0.3, on_error="collect") as engine:
        out = Pipeline([hang]).map({"x": list(range(4))}, map_over="x", engine=engine)
        assert all(isinstance(r, TimeoutError) and "did not finish" in str(r) for r in out)
        # All 4 threads are still stuck in those calls: the next map gets threads anyway.
        out = Pipeline([plus_one]).map({"x": list(range(10))}, map_over="x", engine=engine)
        assert out == [{"y": x + 1} for x in range(10)]
        # Again: 8 threads stuck now, still no effect on the next map.
        Pipeline([hang]).map({"x": list(range(4))}, map_over="x", engine=engine)
        out = Pipeline([plus_one]).map({"x": list(range(8))}, map_over="x", engine=engine)
        assert out == [{"y": x + 1} for x in range(8)]


@pytest.mark.parametrize("engine_cls", ENGINES)
def test_stuck_and_quick_items_of_one_map(engine_cls):
    release = threading.Event()

    @node(output_name="y")
    def some_hang(x):
        if x < 4:
            release.wait(30)
        return x

    # 4 items at once (AsyncEngine would otherwise queue all 10 for the 4 threads, and
    # the 6 quick ones would time out waiting, rightly, while the stuck 4 hold them).
    options = {"max_concurrency": 4} if engine_cls is AsyncEngine else {}
    try:
        with engine_cls(max_workers=4, timeout=0.3, on_error="collect", **options) as engine:
            out = Pipeline([some_hang]).map({"x": list(range(10))}, map_over="x", engine=engine)
        assert all(isinstance(r, TimeoutError) for r in out[:4])
        assert out[4:] == [{"y": x} for x in range(4, 10)]
    finally:
        release.set()


@pytest.mark.parametrize("engine_cls", ENGINES)
def test_exhausted_capacity_is_named_in_the_timeout(engine_cls, hang):
    # max_workers=1 and at most one stuck thread replaced: after two stuck calls, an item
    # cannot get a thread, and its TimeoutError says why instead of "did not finish".
    with engine_cls(max_workers=1, max_abandoned=1, timeout=0.3, on_error="collect") as engine:
        for _ in range(2):
            [r] = Pipeline([hang]).map({"x": [0]}, map_over="x", engine=engine)
            assert isinstance(r, TimeoutError) and "did not finish" in str(r)
        [r] = Pipeline([plus_one]).map({"x": [1]}, map_over="x", engine=engine)
        assert isinstance(r, TimeoutError)
        message = str(r)
        assert "map item 0" in message and "without starting" in message, message
        assert "all 2 threads" in message and "2 of them stuck" in message, message
        assert "max_abandoned=1 reached" in message, message


def _bounded(fn, limit=60):
    """Runs fn() in a daemon thread; a hang fails the test instead of blocking it."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # reported by the caller
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"did not finish within {limit} s (deadlock?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("engine_cls", ENGINES)
@pytest.mark.parametrize("timeout", [None, 30])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_map_inside_a_node_on_the_same_engine_completes(engine_cls, timeout, kind):
    engine = engine_cls(max_workers=8, timeout=timeout)
    inner = Pipeline([node(output_name="z")(lambda y: y + 1)])

    def inner_sum(x):
        return sum(r["z"] for r in inner.map({"y": list(range(x, x + 8))}, map_over="y",
                                             engine=engine))

    if kind == "sync":
        outer = node(output_name="s")(inner_sum)
    else:
        @node(output_name="s")
        async def outer(x):
            return inner_sum(x)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RuntimeWarning: timeout does not bound run()
            out = _bounded(lambda: Pipeline([outer]).map({"x": list(range(8))}, map_over="x",
                                                         engine=engine))
        assert out == [{"s": sum(range(x + 1, x + 9))} for x in range(8)]
        # and the engine keeps working
        assert inner.map({"y": [1, 2]}, map_over="y", engine=engine) == [{"z": 2}, {"z": 3}]
    finally:
        engine.shutdown()


@stateful
class Tracked:
    lock = threading.Lock()
    built: list = []
    torn_down: list = []
    fail_teardown = False

    def __init__(self):
        with Tracked.lock:
            Tracked.built.append(self)

    def who(self):
        return threading.get_ident()

    def __teardown__(self):
        with Tracked.lock:
            Tracked.torn_down.append(self)
            if Tracked.fail_teardown and len(Tracked.torn_down) == 1:
                raise OSError("teardown failed")


@pytest.mark.parametrize("fail_one", [False, True])
def test_per_thread_copies_are_all_torn_down_on_shutdown(fail_one):
    Tracked.built, Tracked.torn_down, Tracked.fail_teardown = [], [], fail_one
    two_at_once = threading.Barrier(2, timeout=10)

    @node(output_name="owner")
    def use(x, model):
        if x < 2:
            two_at_once.wait()  # items 0 and 1 overlap: at least two threads build one
        return model.who()

    engine = ThreadEngine(max_workers=4, stateful="per_thread")
    out = Pipeline([use]).map({"x": list(range(32)), "model": Tracked()}, map_over="x",
                              engine=engine)
    assert len(Tracked.built) == len({r["owner"] for r in out}) >= 2
    assert Tracked.torn_down == []
    if fail_one:
        with pytest.raises(OSError, match="teardown failed"):
            engine.shutdown()
    else:
        engine.shutdown()
    # every copy, on whichever thread it was built, and despite a failing one
    assert sorted(map(id, Tracked.torn_down)) == sorted(map(id, Tracked.built))
    # the engine still works: new copies are built for the next map
    Tracked.fail_teardown = False
    Pipeline([use]).map({"x": [5, 6], "model": Tracked()}, map_over="x", engine=engine)
    engine.shutdown()
    assert sorted(map(id, Tracked.torn_down)) == sorted(map(id, Tracked.built))


@pytest.mark.parametrize("make", [
    lambda: ThreadEngine(max_workers=2),
    lambda: ThreadEngine(max_workers=2, timeout=30),
    lambda: AsyncEngine(max_concurrency=2),
], ids=["ThreadEngine", "ThreadEngine-timeout", "AsyncEngine"])
@pytest.mark.parametrize("on_error", ["collect", "raise"])
def test_shutdown_during_a_map_fails_the_unfinished_items(make, on_error):
    from gilfree.errors import ExecutionError

    entered, gate = threading.Semaphore(0), threading.Event()

    @node(output_name="y")
    def slow(x):
        entered.release()
        gate.wait(10)
        return x

    engine = make()
    pool = engine.pool

    def mapping():
        try:
            return Pipeline([slow]).map({"x": list(range(10))}, map_over="x", engine=engine,
                                        on_error=on_error)
        except ExecutionError as exc:
            return exc

    result = {}
    mapper = threading.Thread(target=lambda: result.update(out=mapping()), daemon=True)
    mapper.start()
    try:
        assert entered.acquire(timeout=10) and entered.acquire(timeout=10)  # 2 running
        stopper = threading.Thread(target=engine.shutdown, daemon=True)
        stopper.start()
        deadline = time.monotonic() + 10
        while not pool.is_shut_down and time.monotonic() < deadline:
            time.sleep(0.001)  # polling a condition, bounded
        assert pool.is_shut_down
    finally:
        gate.set()
    mapper.join(20)
    stopper.join(20)
    assert not mapper.is_alive() and not stopper.is_alive()
    out = result["out"]
    said = f"{engine!r} was shut down during the map"
    if on_error == "raise":
        assert isinstance(out, ExecutionError) and said in str(out)
    else:
        assert len(out) == 10
        failed = [r for r in out if not isinstance(r, dict)]
        assert failed and all(isinstance(r, ExecutionError) and said in str(r) for r in failed)
        assert all(r == {"y": i} for i, r in enumerate(out) if isinstance(r, dict))
    # a new map on the same engine starts a new pool and works
    assert Pipeline([plus_one]).map({"x": [1]}, map_over="x", engine=engine) == [{"y": 2}]
    engine.shutdown()
