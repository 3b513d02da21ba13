"""AutoEngine: what it chooses per node, from what it measures, and that the map it
splits (measured items here, the rest on the chosen executors) stays one map."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import threading
import time

import pytest

from gilfree import AutoEngine, DualNode, Pipeline, PipelineCallback, node, stateful
from gilfree.engines import auto, auto_threads

from cpu_busy import spin
from peak import Peak

PAGE = os.urandom(1 << 23)  # hashing 8 MiB takes ~15-30 ms, with the GIL released


@node(output_name="y")
def plus_one(x):
    return x + 1


@node(output_name="slept")
def wait_a_bit(y):
    time.sleep(0.005)
    return y


@node(output_name="burned")
def burn(slept):
    return spin(60_000) + slept  # ~4-8 ms of pure Python


@node(output_name="digest")
def digest(x):
    return hashlib.sha256(PAGE).hexdigest()[:8] + str(x)


@node(output_name=("burned", "pid"))
def burn_where(slept):
    """burn, and where it ran. (A node returning os.getpid() after burn's pure-Python
    call measured 8-13 us on this VM under load, around CHEAP_S: whether it joins the
    process stage is not a test's to pin down.)"""
    return spin(60_000) + slept, os.getpid()


def executors(engine):
    return {r["node"]: r["executor"] for r in engine.explain().rows}


@pytest.fixture
def engine():
    e = AutoEngine()
    yield e
    e.shutdown()


def test_explain_before_any_map(engine):
    assert "no map has run" in str(engine.explain())


def test_explain_after_a_map_of_no_items_says_so(engine):
    assert Pipeline([wait_a_bit]).map({"y": []}, map_over="y", engine=engine) == []
    [row] = engine.explain().rows
    assert "not measured (the map had no items)" in row["why"], row


def test_each_node_gets_the_executor_that_suits_it(engine):
    p = Pipeline([plus_one, wait_a_bit, burn_where])
    out = p.map({"x": list(range(40))}, map_over="x", engine=engine)
    assert [r["y"] for r in out] == list(range(1, 41))
    assert executors(engine) == {"plus_one": "thread", "wait_a_bit": "thread",
                                 "burn_where": "process"}
    # The measured items ran here; the others in the worker processes.
    pids = [r["pid"] for r in out]
    assert pids[:auto.PROBE_ITEMS] == [os.getpid()] * auto.PROBE_ITEMS
    assert os.getpid() not in pids[auto.PROBE_ITEMS:]
    why = {r["node"]: r["why"] for r in engine.explain().rows}
    assert "cheap" in why["plus_one"] and "joins the stage of 'wait_a_bit'" in why["plus_one"]
    assert "waits" in why["wait_a_bit"]
    assert "holds the GIL" in why["burn_where"]
    text = str(engine.explain())
    assert "last map: 40 items" in text and "items/s" in text
    assert "<table>" in engine.explain()._repr_html_()


def test_measurements_are_kept_no_item_runs_twice(engine):
    calls = []

    @node(output_name="y")
    def counted(x):
        calls.append(x)
        time.sleep(0.002)
        return x

    p = Pipeline([counted])
    assert p.map({"x": list(range(30))}, map_over="x", engine=engine) == \
        [{"y": i} for i in range(30)]
    assert sorted(calls) == list(range(30))
    measured = dict(engine._measures)
    calls.clear()
    p.map({"x": list(range(30))}, map_over="x", engine=engine)
    assert sorted(calls) == list(range(30))
    assert engine._measures == measured  # not measured again


def test_cpu_that_releases_the_gil_goes_to_threads_one_per_core(engine):
    p = Pipeline([digest])
    out = p.map({"x": list(range(6))}, map_over="x", engine=engine)
    assert [r["digest"][8:] for r in out] == [str(i) for i in range(6)]
    row = engine.explain().rows[0]
    assert row["executor"] == "thread", row
    assert "releases the GIL" in row["why"]
    assert f"<= {auto.usable_cores()} threads" == row["concurrency"]


def test_cpu_that_releases_the_gil_uses_one_thread_per_core(engine):
    @node(output_name="thread")
    def digest_where(x):
        hashlib.sha256(PAGE).hexdigest()
        return threading.get_ident()

    out = Pipeline([digest_where]).map({"x": list(range(10))}, map_over="x", engine=engine)
    # The stage's pool.map runs on at most one thread per core (not a thread per item,
    # most of them waiting for a lock).
    assert len({r["thread"] for r in out[auto.PROBE_ITEMS:]}) <= auto.usable_cores()


def test_waiting_nodes_get_threads_by_littles_law(engine):
    peak = Peak()

    @node(output_name="slept")
    def wait_counted(y):
        with peak:
            time.sleep(0.005)
        return y

    p = Pipeline([wait_counted, burn])
    items = list(range(80))
    # A map: the waiting stage runs alone, all its items in one call's time.
    p.map({"y": items}, map_over="y", engine=engine)
    wait = engine.explain().choices[0]
    assert wait.threads == min(80 - auto.PROBE_ITEMS, engine.max_workers)
    assert "Little's law: its 78 items in one call's time" in wait.reason
    # A stream: the stages overlap; the waiting stage keeps pace with the process stage
    # (its measured pace x 5 ms x HEADROOM), not more.
    peak.most = 0
    out = list(p.imap({"y": items}, map_over="y", engine=engine))
    assert [r["burned"] - r["slept"] for r in out] == [spin(60_000)] * 80
    wait, cpu = engine.explain().choices
    pace = engine.workers / cpu.measure.wall
    initial = max(auto.usable_cores(), min(
        engine.max_workers, math.ceil(pace * wait.measure.wall * auto_threads.HEADROOM)))
    assert "the pace of 'burn'" in wait.reason and f"= {initial} threads" in wait.reason
    # (The stream may re-size it as the calls' latency moves: see the next test.)
    assert wait.concurrency.startswith(f"<= {wait.threads} threads")
    # Far fewer calls at once than the 78 items the stream had room to start.
    assert peak.most < 40 and wait.threads < 40


def test_a_stream_resizes_a_waiting_stage_when_its_latency_changes(engine):
    peak = Peak()

    @node(output_name="slept")
    def slows_down(y):
        with peak:
            # The measured items are quick; the rest take 20x longer (a server under load).
            time.sleep(0.001 if y < auto.PROBE_ITEMS else 0.02)
        return y

    p = Pipeline([slows_down, burn])
    out = list(p.imap({"y": list(range(120))}, map_over="y", engine=engine))
    assert [r["slept"] for r in out] == list(range(120))
    wait = engine.explain().choices[0]
    # Sized from a 1 ms call, it started at one thread per core; at 20 ms per call,
    # Little's law wants about 20x more, and the stage grew while the stream ran.
    started = max(auto.usable_cores(), min(engine.max_workers, math.ceil(
        wait.pace * wait.measure.wall)))
    assert "re-sized while running" in wait.concurrency, wait.concurrency
    assert wait.threads > started
    assert peak.most > started


def test_explain_has_items_per_second_per_stage(engine):
    p = Pipeline([wait_a_bit, burn])
    p.map({"y": list(range(30))}, map_over="y", engine=engine)
    wait, cpu = engine.explain().choices
    # Each stage's items (those after the measured ones) and its own time.
    assert wait.stage[0] == cpu.stage[0] == 30 - auto.PROBE_ITEMS
    assert 0 < wait.stage[1] and 0 < cpu.stage[1]
    rows = engine.explain().rows
    assert all(r["items_per_s"] > 0 and r["items/s"] != "-" for r in rows), rows
    # The waiting stage (5 ms on threads) is much faster than 6 ms of CPU on 2 workers.
    assert wait.items_per_s > cpu.items_per_s


def test_explain_of_a_stream_has_items_per_second_per_stage(engine):
    p = Pipeline([wait_a_bit, burn])
    out = list(p.imap({"y": range(30)}, map_over="y", engine=engine))
    assert [r["burned"] for r in out] == [spin(60_000) + y for y in range(30)]
    explained = engine.explain()
    wait, cpu = explained.choices
    # The streamed items (after the measured ones), over the time each stage had some
    # running: the stages overlap, and the CPU stage holds the stream back.
    assert wait.stage[0] == cpu.stage[0] == 30 - auto.PROBE_ITEMS
    assert wait.items_per_s > cpu.items_per_s > 0
    assert explained.items == 30 and "a stream (imap) of 30 items" in explained.summary()


def test_a_small_map_of_cpu_work_stays_inline(engine):
    @node(output_name="s")
    def small(x):
        return spin(3_000) + x  # ~0.2 ms: 4 items are far from paying for processes

    out = Pipeline([small]).map({"x": [1, 2, 3, 4]}, map_over="x", engine=engine)
    assert [r["s"] for r in out] == [spin(3_000) + x for x in [1, 2, 3, 4]]
    row = engine.explain().rows[0]
    assert row["executor"] == "inline" and "does not pay" in row["why"], row


@node(output_name="burned")
def burn_under(x, lock):
    with lock:
        return spin(60_000) + x  # ~4-8 ms of pure Python: worth processes, if it could go


@pytest.mark.parametrize("shared", [True, False], ids=["shared input", "mapped input"])
def test_cpu_work_whose_input_does_not_pickle_stays_here(engine, shared):
    """Worker processes take everything by pickle: a node reading a lock (shared, or one
    per item) would fail every item there. It runs here instead, and explain() says why;
    with inputs that pickle, the same node goes to processes."""
    # 64 items: the map's work must pay for processes (>= PROCESS_MIN_WORK_S) on a fast
    # machine too (24 items of a 1.9 ms call measured 45 ms: inline for that reason)
    xs = list(range(64))
    locks = threading.Lock() if shared else [threading.Lock() for _ in xs]
    mapped = ["x"] if shared else ["x", "lock"]
    out = Pipeline([burn_under]).map({"x": xs, "lock": locks}, map_over=mapped,
                                     engine=engine)
    assert [r["burned"] for r in out] == [spin(60_000) + x for x in xs]
    row = engine.explain().rows[0]
    assert row["executor"] == "inline", row
    assert "input 'lock'" in row["why"] and "does not pickle" in row["why"], row
    # (the same node, measured already, with an input that pickles: processes)
    from cpu_busy import Unlocked

    Pipeline([burn_under]).map({"x": xs, "lock": Unlocked()}, map_over="x", engine=engine)
    assert engine.explain().rows[0]["executor"] == "process"


def test_cheap_nodes_alone_stay_inline(engine):
    out = Pipeline([plus_one]).map({"x": list(range(100))}, map_over="x", engine=engine)
    assert out == [{"y": i + 1} for i in range(100)]
    assert executors(engine) == {"plus_one": "inline"}


def test_async_and_batch_nodes(engine):
    @node(output_name="a")
    async def fetch(x):
        await asyncio.sleep(0.001)
        return x

    def one(a):
        return a * 2

    def many(a):
        return [v * 2 for v in a]

    p = Pipeline([fetch, DualNode("b", one, many)])
    out = p.map({"x": list(range(10))}, map_over="x", engine=engine)
    assert [r["b"] for r in out] == [2 * i for i in range(10)]
    assert executors(engine) == {"fetch": "async", "one": "thread"}


def test_a_dualnode_batch_size_from_its_measured_call(engine, monkeypatch):
    sizes = []

    def one(x):
        return x

    def many(x):
        sizes.append(len(x))
        time.sleep(0.002 * len(x))  # 2 ms per item, the GIL released
        return list(x)

    monkeypatch.setattr(auto, "MAX_BATCH_S", 0.01)  # ~5 items of this one's work
    p = Pipeline([DualNode("y", one, many)])
    out = p.map({"x": list(range(60))}, map_over="x", engine=engine)
    assert out == [{"y": i} for i in range(60)]
    assert sizes[0] == auto.PROBE_ITEMS  # the measured batch
    row = engine.explain().choices[0]
    assert 3 <= row.batch_size <= 5, row  # 0.01 s / (~2 ms per item)
    assert row.batch_size < auto_threads_batch(60 - auto.PROBE_ITEMS)
    assert max(sizes[1:]) == row.batch_size and sum(sizes) == 60
    assert "several at once" in row.reason and "at most 0.01 s" in row.reason


def auto_threads_batch(n):
    from gilfree.engines.threads import auto_batch_size
    return auto_batch_size(n)


def test_a_dualnode_that_holds_the_gil_runs_one_batch_at_a_time(engine):
    peak = Peak()

    def one(x):
        return x

    def many(x):
        with peak:
            spin(20_000 * len(x))  # pure Python: threads would only take turns
        return list(x)

    p = Pipeline([DualNode("y", one, many)])
    out = p.map({"x": list(range(40))}, map_over="x", engine=engine)
    assert out == [{"y": i} for i in range(40)]
    row = engine.explain().choices[0]
    assert "holds the GIL: one batch at a time" in row.reason, row.reason
    assert row.concurrency.endswith("one at a time")
    assert peak.most == 1


def test_the_users_hints_win(engine):
    hinted = node(output_name="burned", executor="thread")(burn.func)
    engine.configure("wait_a_bit", executor="inline")
    p = Pipeline([plus_one, wait_a_bit, hinted])
    p.map({"x": list(range(8))}, map_over="x", engine=engine)
    rows = {r["node"]: r for r in engine.explain().rows}
    assert rows["burn"]["executor"] == "thread" and "hinted" in rows["burn"]["why"]
    assert rows["wait_a_bit"]["executor"] == "inline"


class Record(PipelineCallback):
    """Map starts, item starts and map ends, in order."""

    def __init__(self, events: list):
        self.events = events

    def on_map_start(self, total, *a):
        self.events.append(("start", total))

    def on_map_item_start(self, i, *a):
        self.events.append(("item", i))

    def on_map_end(self, *a):
        self.events.append(("end",))


def fails_at(bad: int):
    """A CPU node (worker processes, once measured) whose item ``bad`` raises."""
    @node(output_name="burned")
    def fails(slept):
        if slept == bad:
            raise ValueError(f"item {bad}")
        return spin(60_000)
    return fails


def test_one_map_for_callbacks_and_item_numbers(engine):
    events = []

    fails_at_five = fails_at(5)
    e = AutoEngine(callbacks=[Record(events)], on_error="collect")
    try:
        p = Pipeline([wait_a_bit, fails_at_five])
        out = p.map({"y": list(range(40))}, map_over="y", engine=e)
        assert executors(e) == {"wait_a_bit": "thread", "fails": "process"}
    finally:
        e.shutdown()
    assert isinstance(out[5], ValueError)
    assert any("map item 5" in n for n in out[5].__notes__), out[5].__notes__
    assert all(not isinstance(r, BaseException) for k, r in enumerate(out) if k != 5)
    assert events[0] == ("start", 40) and events[-1] == ("end",)
    assert sorted(i for kind, *i in events if kind == "item") == [[i] for i in range(40)]


def test_an_error_under_raise_names_its_item(engine):
    @node(output_name="slept")
    def fails_at_seven(y):
        time.sleep(0.002)
        if y == 7:
            raise KeyError("seven")
        return y

    with pytest.raises(KeyError) as info:
        Pipeline([fails_at_seven]).map({"y": list(range(12))}, map_over="y", engine=engine)
    assert any("map item 7" in n for n in info.value.__notes__)


@stateful
class Model:
    def __init__(self, log: str):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")

    def __call__(self, x):
        return spin(60_000) + x


@node(output_name="scored")
def score(x, model):
    return model(x)


def test_stateful_objects_are_built_once_per_process(engine, tmp_path):
    log = tmp_path / "inits"
    model = Model(str(log))
    out = Pipeline([score]).map({"x": list(range(40)), "model": model}, map_over="x",
                                engine=engine)
    assert [r["scored"] for r in out] == [spin(60_000) + x for x in range(40)]
    assert executors(engine) == {"score": "process"}
    pids = log.read_text().split()
    assert len(pids) == len(set(pids))  # once per process: here (measured) and workers
    assert str(os.getpid()) in pids


def test_with_a_timeout_nothing_is_measured_here():
    e = AutoEngine(timeout=5)
    try:
        out = Pipeline([wait_a_bit]).map({"y": [1, 2, 3]}, map_over="y", engine=e)
        assert out == [{"slept": v} for v in [1, 2, 3]]
        row = e.explain().rows[0]
        assert row["executor"] == "thread" and "not measured" in row["why"], row
    finally:
        e.shutdown()


def test_imap_measures_its_first_items_and_streams_the_rest(engine):
    p = Pipeline([wait_a_bit, burn_where])
    out = list(p.imap({"y": iter(range(8))}, map_over="y", engine=engine))
    assert [r["burned"] for r in out] == [spin(60_000) + i for i in range(8)]
    assert executors(engine) == {"wait_a_bit": "thread", "burn_where": "process"}
    pids = [r["pid"] for r in out]
    assert pids[:auto.PROBE_ITEMS] == [os.getpid()] * auto.PROBE_ITEMS
    assert os.getpid() not in pids[auto.PROBE_ITEMS:]
    assert "a stream" in str(engine.explain())
    measured = dict(engine._measures)
    out = list(p.imap({"y": iter(range(8))}, map_over="y", engine=engine, ordered=False))
    assert sorted(r["burned"] for r in out) == [spin(60_000) + i for i in range(8)]
    assert os.getpid() not in [r["pid"] for r in out]  # measured before: all streamed
    assert engine._measures == measured


@pytest.mark.parametrize("policy", ["collect", "raise"])
def test_imap_one_map_for_callbacks_and_item_numbers(policy):
    events = []

    fails_at_six = fails_at(6)
    e = AutoEngine(callbacks=[Record(events)], on_error=policy)
    try:
        p = Pipeline([wait_a_bit, fails_at_six])
        it = p.imap({"y": iter(range(10))}, map_over="y", engine=e)
        if policy == "collect":
            out = list(it)
            assert isinstance(out[6], ValueError)
            assert all(not isinstance(r, BaseException) for k, r in enumerate(out) if k != 6)
            err = out[6]
        else:
            with pytest.raises(ValueError) as info:
                list(it)
            err = info.value
        assert any("map item 6" in n for n in err.__notes__), err.__notes__
    finally:
        e.shutdown()
    assert events[0] == ("start", None) and events[-1] == ("end",)
    assert sum(1 for ev in events if ev[0] == "start") == 1
    assert sum(1 for ev in events if ev[0] == "end") == 1
    items = [ev[1] for ev in events if ev[0] == "item"]
    assert items[:2] == [0, 1] and len(items) == len(set(items))
    if policy == "collect":
        assert sorted(items) == list(range(10))


def test_imap_closed_after_the_measured_items_ends_the_map(engine):
    ends = []

    class End(PipelineCallback):
        def on_map_end(self, *a):
            ends.append(a)

    e = AutoEngine(callbacks=[End()])
    try:
        it = Pipeline([wait_a_bit]).imap({"y": iter(range(100))}, map_over="y", engine=e)
        assert next(it) == {"slept": 0}
        it.close()
    finally:
        e.shutdown()
    assert len(ends) == 1


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="workers=0"):
        AutoEngine(workers=0)
    with pytest.raises(TypeError, match="did you mean 'workers'"):
        AutoEngine(worker=2)


DRIVER = os.getpid()


@node(output_name="burned")
def dies_at_nine(slept):
    if slept == 9 and os.getpid() != DRIVER:
        os._exit(3)
    return spin(60_000)


@pytest.mark.parametrize("with_callbacks", [False, True])
def test_a_dead_worker_names_the_maps_item(with_callbacks):
    from gilfree.engines.processes import WorkerDied

    e = AutoEngine(on_error="collect", callbacks=[PipelineCallback()] if with_callbacks else None)
    try:
        out = Pipeline([wait_a_bit, dies_at_nine]).map({"y": list(range(40))}, map_over="y",
                                                       engine=e)
        assert executors(e)["dies_at_nine"] == "process"
    finally:
        e.shutdown()
    assert isinstance(out[9], WorkerDied), out[9]
    assert "on map item 9; map item 9 is lost (the other items of its batch run again)" \
        in str(out[9]), out[9]
    lost = [k for k, r in enumerate(out) if isinstance(r, BaseException)]
    assert lost == [9]  # the other items of its batch ran again


@node(output_name="burned")
def burn_or_fail(slept):
    if slept == 30:
        raise ValueError("bad item 30")
    return spin(60_000) + slept


def test_a_failed_map_is_explained_and_its_items_numbered_in_the_whole_map(engine):
    # The map's first items ran here (measured); its other items run as a map of their
    # own on the worker processes, numbered on from them in errors.
    with pytest.raises(ValueError) as info:
        Pipeline([burn_or_fail]).map({"slept": list(range(60))}, map_over="slept",
                                     engine=engine)
    assert "gilfree: raised in node 'burn_or_fail' (map item 30)" in info.value.__notes__
    assert executors(engine) == {"burn_or_fail": "process"}
    assert "stopped after" in str(engine.explain()) and "bad item 30" in str(engine.explain())


def test_an_input_that_does_not_pickle_is_named_by_its_item_in_the_whole_map(engine):
    items = list(range(40))
    items[5] = threading.Lock()  # (past the measured items)
    out = Pipeline([burn]).map({"slept": items}, map_over="slept", engine=engine,
                               on_error="collect")
    assert [i for i, r in enumerate(out) if isinstance(r, BaseException)] == [5]
    # It could not go to a worker process, so it ran here (test_auto_unsent.py), where
    # burn's "+" fails with it, as on ThreadEngine; the note names the item in the map.
    assert isinstance(out[5], TypeError), out[5]
    assert "gilfree: raised in node 'burn' (map item 5)" in out[5].__notes__, out[5]


def test_a_shutdown_during_a_map_on_processes_names_the_auto_engine():
    # (its worker processes are a ProcessEngine of its own, which the user never made)
    engine = AutoEngine()
    try:
        stopper = threading.Timer(0.3, engine.shutdown)
        stopper.start()
        out = Pipeline([burn]).map({"slept": list(range(400))}, map_over="slept",
                                   engine=engine, on_error="collect")
        stopper.join()
        errors = [r for r in out if isinstance(r, BaseException)]
        assert errors, "the map ended before the shutdown"
        assert all(str(e).startswith("AutoEngine was shut down") for e in errors), errors[0]
    finally:
        engine.shutdown()


@node(output_name="y")
def lookup(x, remote):
    if remote:
        time.sleep(0.005)  # a cache that now misses: a network call
    return x


def test_a_node_whose_calls_changed_is_measured_again_at_the_next_map(engine):
    p = Pipeline([lookup])
    p.map({"x": list(range(40)), "remote": False}, map_over="x", engine=engine)
    assert executors(engine) == {"lookup": "inline"}  # cheap
    p.map({"x": list(range(40)), "remote": True}, map_over="x", engine=engine)
    [row] = engine.explain().rows
    assert row["executor"] == "inline" and "measured again at the next" in row["why"], row
    p.map({"x": list(range(40)), "remote": True}, map_over="x", engine=engine)
    [row] = engine.explain().rows
    assert row["executor"] == "thread" and "waits" in row["why"], row
    # A map of few items (its measurement is not the map's cost): nothing forgotten
    p.map({"x": [1], "remote": True}, map_over="x", engine=engine)
    assert "measured again" not in engine.explain().rows[0]["why"]
