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
from peak import Peak


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
    peak = Peak()

    @node(output_name="y", max_concurrency=2)
    def gpu(x):
        with peak:
            time.sleep(0.005)
        return x

    with ThreadEngine() as engine:
        Pipeline([gpu]).map({"x": list(range(20))}, map_over="x", engine=engine)
    assert peak.most == 2


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


def test_async_engine_caps_sync_items_at_max_concurrency():
    # Only sync nodes: the items may go to the pool directly, but a cap below the pool's
    # size is still the cap.
    active, peak, lock = [0], [0], threading.Lock()

    @node(output_name="y")
    def work(x):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return x

    with AsyncEngine(max_concurrency=3) as engine:
        out = Pipeline([work]).map({"x": list(range(30))}, map_over="x", engine=engine)
    assert out == [{"y": i} for i in range(30)] and peak[0] == 3


class _Noted(PipelineCallback):
    def on_map_item_end(self, item, duration, ctx):
        pass


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("with_callbacks", [False, True])
def test_imap_keeps_bookkeeping_only_for_the_items_in_flight(tmp_path, cached, with_callbacks):
    """imap skips per-item bookkeeping that only callbacks or a cache read; what it
    keeps, it drops when the item leaves (a long stream must not grow it)."""
    from gilfree import DiskCache

    @node(output_name="y")
    def double(x):
        return 2 * x

    engine = ThreadEngine(cache=DiskCache(tmp_path) if cached else None,
                          callbacks=[_Noted()] if with_callbacks else None)
    try:
        it = Pipeline([double]).imap({"x": iter(range(300))}, map_over="x",
                                     read_ahead=8, engine=engine)
        assert [next(it)["y"] for _ in range(250)] == [2 * i for i in range(250)]
        stream = it.gi_frame.f_locals["stream"]
        for kept in (stream.values, stream.sigs, stream.cached, stream.started):
            assert len(kept) <= 16, (kept, stream.read_ahead)
        assert [r["y"] for r in it] == [2 * i for i in range(250, 300)]
    finally:
        engine.shutdown()
