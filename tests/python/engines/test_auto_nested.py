"""A node whose function maps (calls ``Pipeline.map`` itself) on AutoEngine: its inner
items share the engine's workers (few calls), or each call runs whole in a worker
process (many calls); never a pool per call. On ThreadEngine and AsyncEngine its inner
items share the pool's threads (and AsyncEngine's loop)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter

import pytest

from gilfree import AutoEngine, Pipeline, ProcessEngine, SeqEngine, node
from gilfree.engines import AsyncEngine, ThreadEngine, auto

from cpu_busy import spin


@node(output_name="where")
def sample(k):
    spin(100_000)  # ~4-8 ms of pure Python: 22 of them pay for worker processes
    return os.getpid()


inner = Pipeline([sample])


@node(output_name="found")
def task(ks):
    """A node that maps: its pid, and the pid each of its inner items ran in."""
    return os.getpid(), [r["where"] for r in inner.map({"k": ks}, map_over="k")]


outer = Pipeline([task])


@pytest.fixture
def engine():
    e = AutoEngine()
    yield e
    e.shutdown()


def rows(engine):
    return {r["node"]: r for r in engine.explain().rows}


def test_one_call_spreads_its_inner_items_over_the_workers(engine):
    out = outer.map({"ks": [list(range(24))]}, map_over="ks", engine=engine)
    called_in, inner_pids = out[0]["found"]
    assert called_in == os.getpid() and len(inner_pids) == 24
    workers = Counter(p for p in inner_pids if p != os.getpid())
    assert len(workers) == engine.workers, inner_pids  # every worker took some
    explained = rows(engine)
    assert "its function maps (24 inner items a call)" in explained["task"]["why"]
    [(label, inner_row)] = [(k, r) for k, r in explained.items() if k.endswith("/sample")]
    assert inner_row["executor"] == "process"
    assert "last map: 1 item in" in str(engine.explain())


def test_few_calls_run_here_and_share_the_workers(engine):
    outer.map({"ks": [list(range(24))]}, map_over="ks", engine=engine)  # measures
    out = outer.map({"ks": [list(range(24))] * 3}, map_over="ks", engine=engine)
    assert [r["found"][0] for r in out] == [os.getpid()] * 3
    assert all(os.getpid() not in r["found"][1] for r in out)
    explained = rows(engine)
    assert explained["task"]["executor"] == "thread", explained["task"]
    # The inner maps ran on pool threads, concurrently: shown once, under their pipeline.
    assert sum(k.endswith("/sample") for k in explained) == 1
    assert "last map: 3 items" in str(engine.explain())


def test_many_calls_run_whole_in_worker_processes(engine):
    outer.map({"ks": [list(range(24))]}, map_over="ks", engine=engine)  # measures
    calls = 4 * engine.workers
    out = outer.map({"ks": [[0, 1]] * calls}, map_over="ks", engine=engine)
    assert rows(engine)["task"]["executor"] == "process"
    for r in out:
        called_in, inner_pids = r["found"]
        assert called_in != os.getpid() and inner_pids == [called_in] * 2


def test_many_calls_whose_inner_items_wait_stay_here_on_threads(engine):
    # In a worker process, a call's map would run its fetches one after another (the
    # accepted choice before: 100 calls of 5 fetches of 10 ms took 3 s, ThreadEngine 0.1 s)
    calls = 4 * engine.workers
    out = Pipeline([crawl]).map({"urls": [list(range(4))] * calls}, map_over="urls",
                                engine=engine)
    explained = rows(engine)
    assert explained["crawl"]["executor"] == "thread", explained["crawl"]
    assert "its inner items mostly wait" in explained["crawl"]["why"]
    callers = {r["threads"][0] for r in out[auto.PROBE_ITEMS:]}  # (after those measured)
    assert threading.get_ident() not in callers  # the calls ran on pool threads
    assert any(len(set(r["threads"][1])) > 1 for r in out)  # fetches at once


def test_an_inner_pipeline_with_an_engine_of_its_own_keeps_it(engine):
    own = Pipeline([sample], engine=SeqEngine())

    @node(output_name="found")
    def task_own(ks):
        return os.getpid(), [r["where"] for r in own.map({"k": ks}, map_over="k")]

    out = Pipeline([task_own]).map({"ks": [list(range(24))]}, map_over="ks", engine=engine)
    assert out[0]["found"] == (os.getpid(), [os.getpid()] * 24)


def test_on_process_engine_run_spreads_a_nodes_map_over_the_workers():
    """run() executes the node here: its map runs on the engine, over every worker. In a
    map of few items the node runs in a worker process and its map spreads over the
    workers from there (remote/worker_maps.py); in a map of many, the items keep the
    workers busy: the node's map runs where the node runs, item after item."""
    from gilfree import PipelineCallback

    maps = []

    class Record(PipelineCallback):
        def on_map_start(self, total, ctx):
            maps.append(total)

    with ProcessEngine(callbacks=[Record()]) as e:
        called_in, inner_pids = outer.run({"ks": list(range(24))}, engine=e)["found"]
        assert called_in == os.getpid()
        assert len(set(inner_pids)) == e.workers and os.getpid() not in inner_pids
        assert maps == []  # the node's map is its own: not the caller's map
        [row] = outer.map({"ks": [list(range(24))]}, map_over="ks", engine=e)
        called_in, inner_pids = row["found"]
        assert called_in != os.getpid() and len(inner_pids) == 24
        assert set(inner_pids) == set(e.pids)
        assert maps == [1]
        many = outer.map({"ks": [[0, 1]] * (4 * e.workers)}, map_over="ks", engine=e)
        for row in many:
            called_in, inner_pids = row["found"]
            assert called_in != os.getpid() and inner_pids == [called_in] * 2


@pytest.mark.parametrize("executor", ["thread", "inline"])
@pytest.mark.parametrize("tasks", [1, 3])
def test_on_process_engine_a_node_placed_in_the_driver_spreads_its_map(executor, tasks):
    """A node that maps, hinted onto the driver (its threads, or inline): its map runs on
    the ProcessEngine, over every worker, as in run(); one task or several."""
    with ProcessEngine().configure("task", executor=executor) as e:
        out = outer.map({"ks": [list(range(24))] * tasks}, map_over="ks", engine=e)
        for row in out:
            called_in, inner_pids = row["found"]
            assert called_in == os.getpid() and len(inner_pids) == 24
            assert len(set(inner_pids)) == e.workers and os.getpid() not in inner_pids
        # imap too
        for row in outer.imap({"ks": [list(range(24))] * tasks}, map_over="ks", engine=e):
            assert len(set(row["found"][1])) == e.workers


@pytest.mark.parametrize("engine_class", [ThreadEngine, AsyncEngine])
def test_an_inline_node_maps_on_the_engine(engine_class):
    """A node hinted inline runs in the calling thread; its map still shares the pool."""
    here = Pipeline([crawl])
    with engine_class().configure("crawl", executor="inline") as e:
        for out in (here.map({"urls": [list(range(8))]}, map_over="urls", engine=e),
                    list(here.imap({"urls": [list(range(8))]}, map_over="urls", engine=e))):
            [(caller, fetched_on)] = [r["threads"] for r in out]
            assert caller == threading.get_ident() and len(set(fetched_on)) > 1


@node(output_name="v")
def locked(k, lock):
    with lock:
        return k * 2


@node(output_name="total")
def maps_with_a_lock(ks, lock):
    return sum(r["v"] for r in Pipeline([locked]).map({"k": ks, "lock": lock}, map_over="k"))


@node(output_name="total")
def maps_over_locks(ks):
    locks = [threading.Lock() for _ in ks]
    return sum(r["v"] for r in Pipeline([locked]).map({"k": ks, "lock": locks},
                                                       map_over=["k", "lock"]))


def test_on_process_engine_run_a_nodes_map_that_cannot_be_sent_runs_in_the_node():
    """A map the engine cannot send to its workers (an input or an item that does not
    pickle) runs where the node runs, item after item, as before engines took node maps,
    and says so."""
    with ProcessEngine() as e:
        with pytest.warns(RuntimeWarning, match="made inside a node, runs in the node's "
                                                "process.*input 'lock'"):
            out = Pipeline([maps_with_a_lock]).run({"ks": [1, 2, 3],
                                                    "lock": threading.Lock()}, engine=e)
        assert out == {"total": 12}
        with pytest.warns(RuntimeWarning, match="map item 0"):
            assert Pipeline([maps_over_locks]).run({"ks": [1, 2]}, engine=e) == {"total": 6}

        # Asked for by name, the engine is not second-guessed: the error says what.
        @node(output_name="total")
        def maps_here_explicitly(ks, lock):
            return sum(r["v"] for r in Pipeline([locked]).map(
                {"k": ks, "lock": lock}, map_over="k", engine=e))

        from gilfree.errors import SerializationError

        with pytest.raises(SerializationError, match="input 'lock'"):
            Pipeline([maps_here_explicitly]).run({"ks": [1], "lock": threading.Lock()},
                                                 engine=e)


@node(output_name="t")
def fetch_here(url):
    time.sleep(0.02)  # a network call
    return threading.get_ident()


@node(output_name="threads")
def crawl(urls):
    """A node that maps I/O: the thread it ran on, and the thread each fetch ran on."""
    return threading.get_ident(), [r["t"] for r in Pipeline([fetch_here]).map(
        {"url": urls}, map_over="url")]


def test_on_thread_engine_a_nodes_map_shares_the_pool():
    with ThreadEngine() as e:
        out = Pipeline([crawl]).map({"urls": [list(range(8))]}, map_over="urls", engine=e)
        [(caller, fetched_on)] = [r["threads"] for r in out]
        assert caller != threading.get_ident()  # the node ran on a pool thread ...
        assert len(set(fetched_on)) > 1  # ... and its fetches on several at once
        # run() too: the node runs in this thread, its fetches on the pool.
        caller, fetched_on = Pipeline([crawl]).run({"urls": list(range(8))},
                                                   engine=e)["threads"]
        assert caller == threading.get_ident() and len(set(fetched_on)) > 1


@node(output_name="threads")
def icrawl(urls):
    """crawl with imap: the thread it ran on, and the thread each fetch ran on."""
    return threading.get_ident(), [r["t"] for r in Pipeline([fetch_here]).imap(
        {"url": iter(urls)}, map_over="url")]


@pytest.mark.parametrize("engine_class", [ThreadEngine, AsyncEngine, AutoEngine])
def test_a_nodes_imap_streams_on_the_engine_running_it(engine_class):
    # As its map does; it ran on SeqEngine, one fetch after another.
    with engine_class() as e:
        out = Pipeline([icrawl]).map({"urls": [list(range(8))] * 2}, map_over="urls",
                                     engine=e)
    for r in out:
        caller, fetched_on = r["threads"]
        assert len(fetched_on) == 8 and len(set(fetched_on)) > 1, fetched_on


_awaiting = {"now": 0, "most": 0}


@node(output_name="threads")
def acrawl(urls):
    """crawl with async fetches: the thread each fetch awaited on, and how many of them
    awaited at once at most."""
    @node(output_name="t")
    async def fetch(url):
        _awaiting["now"] += 1  # (all on one loop: no lock needed)
        _awaiting["most"] = max(_awaiting["most"], _awaiting["now"])
        await asyncio.sleep(0.02)
        _awaiting["now"] -= 1
        return threading.get_ident()

    return threading.get_ident(), [r["t"] for r in Pipeline([fetch]).map(
        {"url": urls}, map_over="url")]


@node(output_name="page")
async def download(url):
    await asyncio.sleep(0.001)
    return url


@pytest.mark.parametrize("crawler", [crawl, acrawl], ids=["sync", "async"])
def test_on_async_engine_a_nodes_map_shares_the_engine(crawler):
    """AsyncEngine takes a node's own map as ThreadEngine does: the sync node runs on the
    pool, its fetches run at once (sync ones on pool threads, async ones awaiting
    together on the engine's loop), not one after another in the node's thread."""
    with AsyncEngine() as e:
        for outer_pipeline in (Pipeline([crawler]), Pipeline([download, crawler])):
            # (with an async node the map runs through the loop, crawl's call offloaded
            # from it to the pool: its map comes from a pool thread all the same)
            _awaiting["most"] = 0
            inputs = {"urls": [list(range(8))] * 2, "url": [0, 1]}
            out = outer_pipeline.map(inputs, map_over=["urls", "url"], engine=e)
            for r in out:
                caller, fetched_on = r["threads"]
                assert caller != threading.get_ident() and len(fetched_on) == 8
                if crawler is crawl:
                    assert len(set(fetched_on)) > 1, fetched_on  # several threads at once
                else:  # on the engine's loop, all 8 awaiting at once
                    assert len(set(fetched_on)) == 1 and caller not in fetched_on
            if crawler is acrawl:
                assert _awaiting["most"] >= 8
        # run(): the node runs in this thread, its map on the engine all the same
        _awaiting["most"] = 0
        caller, fetched_on = Pipeline([crawler]).run({"urls": list(range(8))},
                                                     engine=e)["threads"]
        assert caller == threading.get_ident()
        assert len(set(fetched_on)) > 1 if crawler is crawl else _awaiting["most"] >= 8


@pytest.mark.parametrize("max_workers", [1, 2])
def test_on_async_engine_maps_nested_three_deep_finish_on_a_small_pool(max_workers):
    """Every pool thread may wait for a map of its own (each level a node that maps):
    the waiting ones do not hold a slot, so all of them finish, sync and async alike."""
    @node(output_name="leaf")
    async def leaf(z):
        await asyncio.sleep(0.001)
        return z

    @node(output_name="middle")
    def middle(y):
        return sum(r["leaf"] for r in Pipeline([leaf]).map(
            {"z": list(range(y, y + 3))}, map_over="z"))

    @node(output_name="top")
    def top(x):
        return sum(r["middle"] for r in Pipeline([middle]).map(
            {"y": list(range(x, x + 3))}, map_over="y"))

    with AsyncEngine(max_workers=max_workers) as e:
        out = Pipeline([top]).map({"x": list(range(4))}, map_over="x", engine=e)
    assert [r["top"] for r in out] == [
        sum(sum(range(y, y + 3)) for y in range(x, x + 3)) for x in range(4)]


@pytest.mark.parametrize("on_error", ["raise", "collect"])
def test_an_inner_item_that_fails_names_its_node_and_item(engine, on_error):
    @node(output_name="y")
    def fragile(k):
        if k == 7:
            raise ValueError("bad sample")
        return k

    @node(output_name="total")
    def adds(ks):
        return sum(r["y"] for r in Pipeline([fragile]).map({"k": ks}, map_over="k"))

    p = Pipeline([adds])
    inputs = {"ks": [list(range(5)), list(range(10))]}
    if on_error == "raise":
        with pytest.raises(ValueError, match="bad sample") as info:
            p.map(inputs, map_over="ks", engine=engine)
        text = str(info.value) + "".join(getattr(info.value, "__notes__", []))
    else:
        out = p.map(inputs, map_over="ks", engine=engine, on_error="collect")
        assert out[0] == {"total": 10} and isinstance(out[1], ValueError)
        text = str(out[1]) + "".join(getattr(out[1], "__notes__", []))
    assert "fragile" in text and "7" in text


def test_imap_on_auto_engine_maps_on_it_too(engine):
    outer.map({"ks": [list(range(24))]}, map_over="ks", engine=engine)  # measures
    out = list(outer.imap({"ks": [list(range(24))] * 2}, map_over="ks", engine=engine))
    assert [r["found"][0] for r in out] == [os.getpid()] * 2  # few calls: here
    assert all(os.getpid() not in r["found"][1] for r in out)


def test_imap_measures_a_node_that_maps_as_one(engine):
    out = list(outer.imap({"ks": [list(range(24))] * 3}, map_over="ks", engine=engine))
    # (The first call's map measured its first samples here, as every first map does.)
    assert out[0]["found"][1].count(os.getpid()) == auto.PROBE_ITEMS
    assert all(os.getpid() not in r["found"][1] for r in out[1:])
    assert "its function maps (24 inner items a call)" in rows(engine)["task"]["why"]


def test_run_maps_on_auto_engine_too(engine):
    called_in, inner_pids = outer.run({"ks": list(range(24))}, engine=engine)["found"]
    assert called_in == os.getpid()
    assert len(set(inner_pids) - {os.getpid()}) == engine.workers


@pytest.mark.parametrize("engine_class", [AutoEngine, ThreadEngine, AsyncEngine])
def test_callbacks_see_the_callers_maps_not_a_nodes_own(engine_class):
    """A node's own map is part of its call: before AutoEngine took those maps they ran
    on SeqEngine with no callbacks; on the engine's pool threads they must not deliver
    the engine's callbacks there, as top-level maps."""
    from gilfree import PipelineCallback

    seen = []

    class Record(PipelineCallback):
        def on_map_start(self, total, ctx):
            seen.append(("start", total, threading.current_thread() is main))

        def on_map_item_end(self, item, duration, ctx):
            seen.append(("item", item, threading.current_thread() is main))

        def on_map_end(self, duration, ctx):
            seen.append(("end", None, threading.current_thread() is main))

    main = threading.current_thread()
    with engine_class(callbacks=[Record()]) as e:
        for _ in range(2):  # measured, then placed (its calls on pool threads)
            seen.clear()
            out = outer.map({"ks": [list(range(24))] * 3}, map_over="ks", engine=e)
            assert len(out) == 3
            assert seen[0] == ("start", 3, True) and seen[-1] == ("end", None, True)
            assert sorted(i for kind, i, _ in seen if kind == "item") == [0, 1, 2]
            assert all(on_main for *_, on_main in seen), seen
