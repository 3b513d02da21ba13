"""ThreadEngine and AsyncEngine when things go wrong (issue 14): calls that hang past a
timeout, nested maps on the same engine, per-thread @stateful teardown, shutdown() while
another thread maps. Anything that could hang runs under a bounded wait."""

from __future__ import annotations

import threading
import time
import warnings

import pytest

from gilfree import Pipeline, node, stateful
from gilfree.engines import AsyncEngine, ThreadEngine

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
def test_exhausted_capacity_is_named_in_the_timeout(engine_cls):
    # max_workers=1 and at most one stuck thread replaced: after two stuck calls, an item
    # cannot get a thread, and its TimeoutError says why instead of "did not finish".
    release, ran = threading.Event(), []

    @node(output_name="y")
    def stuck(x):
        release.wait(30)
        return x

    @node(output_name="y")
    def record(x):
        ran.append(x)
        return x

    try:
        with engine_cls(max_workers=1, max_abandoned=1, timeout=0.3,
                        on_error="collect") as engine:
            for _ in range(2):
                [r] = Pipeline([stuck]).map({"x": [0]}, map_over="x", engine=engine)
                assert isinstance(r, TimeoutError) and "did not finish" in str(r)
            [r] = Pipeline([record]).map({"x": [1]}, map_over="x", engine=engine)
            assert isinstance(r, TimeoutError)
            message = str(r)
            assert "map item 0" in message and "without starting" in message, message
            assert "all 2 threads" in message and "2 of them stuck" in message, message
            assert "max_abandoned=1 reached" in message, message
            release.set()  # the stuck calls return: the engine has its threads back
            assert Pipeline([record]).map({"x": [2]}, map_over="x", engine=engine) == [{"y": 2}]
        assert ran == [2]  # the call given up before it started never ran
    finally:
        release.set()
    with pytest.raises(ValueError, match="max_abandoned"):
        engine_cls(max_abandoned=-1)


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


@pytest.mark.parametrize("how", ["map", "imap"])
@pytest.mark.parametrize("engine_class", [ThreadEngine, AsyncEngine])
def test_a_timeout_names_the_node_that_ran_over(engine_class, how):
    @node(output_name="a")
    def quick(x):
        return x

    @node(output_name="b")
    def stuck(a):
        if a == 1:
            time.sleep(2)
        return a

    p = Pipeline([quick, stuck])
    with engine_class(timeout=0.2) as engine:
        run = getattr(p, how)
        out = list(run({"x": [0, 1, 2]}, map_over="x", engine=engine, on_error="collect"))
    assert isinstance(out[1], TimeoutError), out
    assert "map item 1 did not finish within 0.2 s (node 'stuck')" in str(out[1]), out[1]


def test_shutdown_does_not_wait_for_a_call_a_closed_stream_left_running():
    release = threading.Event()

    @node(output_name="b")
    def hangs_on_zero(x):
        if x == 0:
            release.wait(20)  # a hung socket
        return x

    engine = ThreadEngine()
    it = Pipeline([hangs_on_zero]).imap({"x": iter(range(10))}, map_over="x",
                                        engine=engine, ordered=False)
    assert {next(it)["b"] for _ in range(3)} <= set(range(1, 10))
    it.close()  # item 0 still runs
    t = threading.Thread(target=engine.shutdown, daemon=True)
    t.start()
    t.join(5)
    try:
        assert not t.is_alive(), "shutdown() waited for the call the stream left running"
    finally:
        release.set()
