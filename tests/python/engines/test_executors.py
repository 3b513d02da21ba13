"""Per-node executors in one map (stages.py): hints honoured, stages fused, nothing lost."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings

import pytest

from gilfree import (AsyncEngine, DualNode, Pipeline, ProcessEngine, SeqEngine, ThreadEngine,
                     node, stateful)
from gilfree.model.plan import compile_plan
from gilfree.run.stages import compile_stages
from peak import Peak

LOCAL_ENGINES = [ThreadEngine, AsyncEngine, ProcessEngine]


def where() -> tuple[int, str]:
    return os.getpid(), threading.current_thread().name


@node(output_name="a", executor="thread")
def on_thread(x):
    return (x, where())


@node(output_name="b", executor="process")
def on_process(a):
    return (a[0], where())


@node(output_name="c", executor="inline")
def inline(b):
    return (b[0], where())


@node(output_name="d", executor="async")
async def on_loop(c):
    await asyncio.sleep(0)
    return (c[0], where())


@pytest.mark.parametrize("engine_cls", LOCAL_ENGINES)
def test_each_node_runs_on_its_executor(engine_cls):
    driver = os.getpid()
    caller = threading.current_thread().name
    with engine_cls() as engine:
        out = Pipeline([on_thread, inline, on_process, on_loop]).map(
            {"x": list(range(12))}, map_over="x", engine=engine)
    assert [r["d"][0] for r in out] == list(range(12))  # input order kept
    for r in out:
        (_, (pid_a, thread_a)), (_, (pid_b, _)) = r["a"], r["b"]
        (_, (pid_c, thread_c)), (_, (pid_d, thread_d)) = r["c"], r["d"]
        assert pid_a == driver and thread_a != caller          # the C++ thread pool
        assert pid_b != driver                                  # a worker process
        assert pid_c == driver and thread_c == caller          # the calling thread
        assert pid_d == driver and thread_d != caller          # the engine's loop thread


@pytest.mark.parametrize("engine_cls", LOCAL_ENGINES)
def test_configure_overrides_the_hint(engine_cls):
    with engine_cls() as engine:
        engine.configure("on_process", executor="inline")
        out = Pipeline([on_thread, on_process]).map({"x": [1, 2]}, map_over="x",
                                                   engine=engine)
    assert all(r["b"][1] == (os.getpid(), threading.current_thread().name) for r in out)


def test_hints_in_run_execute_here_without_warnings():
    for engine_cls in LOCAL_ENGINES:
        with engine_cls() as engine, warnings.catch_warnings():
            warnings.simplefilter("error")
            out = Pipeline([on_thread, on_process]).run({"x": 3}, engine=engine)
        assert out["b"][1][0] == os.getpid()


def test_seq_engine_reports_hints_once_and_runs_everything_inline():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = SeqEngine()
        p = Pipeline([on_thread, on_process])
        p.map({"x": [1, 2]}, map_over="x", engine=engine)
        p.map({"x": [1, 2]}, map_over="x", engine=engine)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2  # one per hinted node, not per map or item
    assert all("'executor'" in m for m in messages)


def test_consecutive_nodes_on_one_executor_fuse_into_one_stage():
    @node(output_name="p", executor="process")
    def p1(a):
        return a

    @node(output_name="q", executor="process")
    def p2(p):
        return p

    def encode(q):
        return q

    def encode_batch(q):
        return q

    encode = DualNode("e", encode, encode_batch)

    @node(output_name="t", executor="inline")
    def tail(e):
        return e

    plan = compile_plan(Pipeline([on_thread, p1, p2, encode, tail]), {"x"})
    stages = compile_stages(plan, "thread", {}, {"x"})
    assert [(st.executor, [s.name for s in st.steps]) for st in stages] == [
        ("thread", ["on_thread"]), ("process", ["p1", "p2"]), ("thread", ["encode"]),
        ("inline", ["tail"])]
    # what crosses into the process stage, and what comes back
    assert stages[1].row_names == ["a"] and stages[1].keep == ["p", "q"]


def test_plain_process_map_stays_one_stage():
    @node(output_name="y")
    def f(x):
        return x

    engine = ProcessEngine()
    plan = compile_plan(Pipeline([f]), {"x"})
    engine._prepare(plan)
    assert engine._stages(plan, [{"x": 1}]) is None


class Model:
    def __init__(self, log):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")

    def predict(self, v):
        return v * 2


@pytest.mark.parametrize("engine_cls", [ThreadEngine, AsyncEngine])
def test_stateful_of_a_process_node_is_built_once_per_worker_across_maps(engine_cls, tmp_path):
    log = str(tmp_path / "builds.txt")
    model = stateful(Model)(log)

    @node(output_name="y", executor="process")
    def predict(a, model):
        return model.predict(a[0])

    p = Pipeline([on_thread, predict])
    with engine_cls() as engine:
        for _ in range(3):
            out = p.map({"x": list(range(40)), "model": model}, map_over="x", engine=engine)
            assert [r["y"] for r in out] == [2 * x for x in range(40)]
        workers = engine._lent["process"].workers
    with open(log) as f:
        builds = f.read().split()
    assert 1 <= len(builds) <= workers and len(set(builds)) == len(builds)
    assert str(os.getpid()) not in builds


@node(output_name="checked", executor="thread")
def check(x):
    if x % 3 == 0:
        raise ValueError(f"bad {x}")
    return x


@node(output_name="parsed", executor="process")
def parse(checked):
    if checked == 4:
        raise KeyError("four")
    return checked * 10


@pytest.mark.parametrize("engine_cls", LOCAL_ENGINES)
def test_collect_across_stages_every_item_ends_once(engine_cls):
    with engine_cls() as engine:
        out = Pipeline([check, parse]).map({"x": list(range(8))}, map_over="x",
                                           engine=engine, on_error="collect")
    assert len(out) == 8
    for x, r in enumerate(out):
        if x % 3 == 0:
            assert isinstance(r, ValueError) and str(r) == f"bad {x}"
        elif x == 4:
            assert isinstance(r, KeyError)
            assert any("'parse'" in n and "map item 4" in n for n in r.__notes__)
        else:
            assert r == {"checked": x, "parsed": 10 * x}


@pytest.mark.parametrize("engine_cls", LOCAL_ENGINES)
def test_raise_names_node_and_item_of_a_later_stage(engine_cls):
    with engine_cls() as engine:
        with pytest.raises(KeyError) as info:
            Pipeline([check, parse]).map({"x": [1, 2, 4, 5]}, map_over="x", engine=engine)
    notes = "\n".join(info.value.__notes__)
    assert "'parse'" in notes and "map item 2" in notes


@node(output_name="slept", executor="process")
def sleepy(checked):
    if checked == 2:
        time.sleep(30)
    return checked


@pytest.mark.parametrize("engine_cls", [ThreadEngine, AsyncEngine])
def test_timeout_bounds_a_process_stage(engine_cls):
    with engine_cls(timeout=2.0) as engine:
        t0 = time.perf_counter()
        out = Pipeline([check, sleepy]).map({"x": [1, 2, 4]}, map_over="x", engine=engine,
                                            on_error="collect")
        assert time.perf_counter() - t0 < 20
    assert out[0] == {"checked": 1, "slept": 1} and out[2] == {"checked": 4, "slept": 4}
    assert isinstance(out[1], TimeoutError) and "map item 1" in str(out[1])


def test_large_values_cross_into_a_process_stage():
    np = pytest.importorskip("numpy")

    @node(output_name="arr", executor="thread")
    def make(x):
        return np.full(2_000_000, x, dtype=np.float64)  # 16 MB per item

    @node(output_name="total", executor="process")
    def total(arr):
        return float(arr.sum())

    with ThreadEngine() as engine:
        out = Pipeline([make, total]).map({"x": [1, 2, 3]}, map_over="x", engine=engine,
                                          output_name="total")
    assert out == [{"total": 2e6 * x} for x in (1, 2, 3)]


@pytest.mark.parametrize("engine_cls", LOCAL_ENGINES)
def test_callbacks_see_every_node_once_per_item(engine_cls):
    from gilfree.callbacks import PipelineCallback

    seen: list = []
    threads: set = set()

    class Log(PipelineCallback):
        def on_node_end(self, node_id, outputs, duration, ctx):
            seen.append(node_id)
            threads.add(threading.get_ident())

        def on_map_item_end(self, item_index, duration, ctx):
            seen.append(("item", item_index))

    with engine_cls(callbacks=[Log()]) as engine:
        Pipeline([check, parse]).map({"x": [1, 2]}, map_over="x", engine=engine)
    assert sorted(map(str, seen)) == sorted(map(str, [
        "check", "check", "parse", "parse", ("item", 0), ("item", 1)]))
    assert threads == {threading.get_ident()}  # fired in the calling thread


@node(output_name="y")
def inner_pid(x):
    return (x * 2, os.getpid())


@node(output_name="xs", executor="thread")
def make_list(n):
    return list(range(n))


@pytest.mark.parametrize("engine_cls", LOCAL_ENGINES)
def test_nested_pipeline_with_map_over_runs_whole_on_its_executor(engine_cls):
    nested = Pipeline([inner_pid]).as_node(input_mapping={"xs": "x"}, map_over="xs",
                                          output_mapping={"y": "ys"}, name="sub",
                                          executor="process")
    with engine_cls() as engine:
        out = Pipeline([make_list, nested]).map({"n": [2, 3]}, map_over="n", engine=engine)
    assert [[v for v, _ in r["ys"]] for r in out] == [[0, 2], [0, 2, 4]]
    assert all(pid != os.getpid() for r in out for _, pid in r["ys"])


def test_dual_node_hinted_to_processes_gets_batches_there():
    def one(xs):
        return (xs, os.getpid())

    def batch(xs):
        return [(v, os.getpid(), len(xs)) for v in xs]

    encode = DualNode("e", one, batch)
    with ThreadEngine() as engine:
        engine.configure("one", executor="process", batch_size=4)
        out = Pipeline([make_list, encode]).map({"n": list(range(8))},
                                                map_over="n", engine=engine,
                                                output_name="e")
    assert [r["e"][0] for r in out] == [list(range(n)) for n in range(8)]
    assert all(r["e"][1] != os.getpid() and r["e"][2] <= 4 for r in out)


@node(output_name="z", executor="process")
def uses_lock(lock):
    return 1


@node(output_name="lock", executor="thread")
def make_lock(n):
    return threading.Lock()


@pytest.mark.parametrize("engine_cls", [ThreadEngine, ProcessEngine])
def test_a_value_that_cannot_cross_into_a_process_stage_is_named(engine_cls):
    from gilfree.errors import SerializationError

    with engine_cls() as engine:
        out = Pipeline([make_lock, uses_lock]).map({"n": [1, 2]}, map_over="n", engine=engine,
                                                  on_error="collect")
    for i, r in enumerate(out):
        assert isinstance(r, SerializationError)
        assert "'lock'" in str(r) and f"map item {i}" in str(r) and "uses_lock" in str(r)


def _logged(log, name):
    with open(log, "a") as f:
        f.write(name + "\n")


@pytest.mark.parametrize("engine_cls", LOCAL_ENGINES)
def test_cache_keys_are_those_of_a_one_executor_map(engine_cls, tmp_path):
    from gilfree import DiskCache

    log = str(tmp_path / "calls")

    @node(output_name="a")
    def first(x):
        _logged(log, "first")
        return [x, x]

    @node(output_name="b", executor="process")
    def second(a):
        _logged(log, "second")
        return sum(a)

    @node(output_name="c", executor="thread")
    def third(b):
        _logged(log, "third")
        return b + 1

    p = Pipeline([first, second, third])
    cache = DiskCache(str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SeqEngine reports the hints it does not honour
        assert [r["c"] for r in p.map({"x": [1, 2, 3]}, map_over="x",
                                      engine=SeqEngine(cache=cache))] == [3, 5, 7]
    with open(log) as f:
        assert len(f.read().split()) == 9
    with engine_cls(cache=cache) as engine:
        out = p.map({"x": [1, 2, 3]}, map_over="x", engine=engine)
    assert [r["c"] for r in out] == [3, 5, 7]
    with open(log) as f:
        assert len(f.read().split()) == 9  # every step of every item served from the cache


@pytest.mark.parametrize("engine_cls", LOCAL_ENGINES)
def test_items_served_whole_from_the_cache_are_reported(engine_cls, tmp_path):
    from gilfree import DiskCache
    from gilfree.callbacks import PipelineCallback

    hits: list = []

    class Hits(PipelineCallback):
        def on_map_item_cached(self, item_index, signature, ctx):
            hits.append(item_index)

    p = Pipeline([check, parse])
    cache = DiskCache(str(tmp_path / "cache"))
    with engine_cls(cache=cache, callbacks=[Hits()]) as engine:
        p.map({"x": [1, 2]}, map_over="x", engine=engine)
        assert hits == []
        p.map({"x": [1, 2, 5]}, map_over="x", engine=engine)
    assert sorted(hits) == [0, 1]  # item 2 (x=5) was new


def test_a_hint_inside_a_nested_pipeline_is_reported_once():
    @node(output_name="y", executor="process")
    def hinted_inside(x):
        return x

    nested = Pipeline([hinted_inside]).as_node(name="sub")
    with ThreadEngine() as engine, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert Pipeline([nested]).map({"x": [1, 2]}, map_over="x",
                                          engine=engine) == [{"y": 1}, {"y": 2}]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "'hinted_inside'" in messages[0] and "'sub'" in messages[0]
    assert "as_node(..., executor='process')" in messages[0]


def test_max_concurrency_bounds_a_thread_node_in_a_process_engine_map():
    peak = Peak()

    @node(output_name="y", executor="thread", max_concurrency=2)
    def limited(x):
        with peak:
            time.sleep(0.02)
        return x

    with ProcessEngine() as engine, warnings.catch_warnings():
        warnings.simplefilter("error")  # honoured: no "cannot honour" warning
        out = Pipeline([limited]).map({"x": list(range(12))}, map_over="x", engine=engine)
    assert [r["y"] for r in out] == list(range(12))
    assert peak.most == 2


def test_max_concurrency_of_a_node_in_worker_processes_is_reported():
    @node(output_name="y", executor="process", max_concurrency=1)
    def elsewhere(x):
        return x

    with ThreadEngine() as engine, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Pipeline([elsewhere]).map({"x": [1, 2]}, map_over="x", engine=engine)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "'max_concurrency'" in messages[0]
    assert "'elsewhere'" in messages[0]
