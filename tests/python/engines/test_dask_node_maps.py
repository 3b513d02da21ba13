"""A node whose function maps (calls ``Pipeline.map`` itself) on DaskEngine: with too few
outer items to keep the cluster busy, its inner items spread over the cluster (the task
running the node secedes while it waits); with more, each call maps where it runs; from
``run``, the node runs here and its map on the cluster."""

from __future__ import annotations

import os
import threading

import pytest

from gilfree import Pipeline, PipelineCallback, SeqEngine, node

from cpu_busy import spin


@node(output_name="where")
def sample(k):
    spin(20_000)
    if k == 107:
        raise ValueError("bad sample 107")
    return os.getpid()


inner = Pipeline([sample], name="per_sample")


@node(output_name="found")
def task(ks):
    """A node that maps: its pid, and the pid each of its inner items ran in."""
    return os.getpid(), [r["where"] for r in inner.map({"k": ks}, map_over="k")]


outer = Pipeline([task])


@node(output_name="leaf")
def leaf(z):
    return z


@node(output_name="middle")
def middle(y):
    return sum(r["leaf"] for r in Pipeline([leaf]).map({"z": list(range(y, y + 3))},
                                                       map_over="z"))


@node(output_name="top")
def top(x):
    return sum(r["middle"] for r in Pipeline([middle]).map({"y": list(range(x, x + 3))},
                                                           map_over="y"))


@pytest.fixture
def engine(dask_client):
    from gilfree.engines import DaskEngine

    e = DaskEngine(client=dask_client)
    yield e
    e.shutdown()


def test_one_call_spreads_its_inner_items_over_the_cluster(engine):
    out = outer.map({"ks": [list(range(24))]}, map_over="ks", engine=engine)
    called_in, inner_pids = out[0]["found"]
    assert called_in != os.getpid() and len(inner_pids) == 24
    assert len(set(inner_pids)) == 2, inner_pids  # both workers (one before: the caller's)


def test_many_calls_each_map_where_they_run(engine):
    calls = 4 * 2  # 4 per worker thread: they keep the cluster busy by themselves
    out = outer.map({"ks": [[0, 1, 2]] * calls}, map_over="ks", engine=engine)
    for r in out:
        called_in, inner_pids = r["found"]
        assert inner_pids == [called_in] * 3


def test_run_maps_on_the_cluster(engine):
    called_in, inner_pids = outer.run({"ks": list(range(24))}, engine=engine)["found"]
    assert called_in == os.getpid()
    assert len(set(inner_pids)) == 2 and os.getpid() not in inner_pids


def test_a_map_that_fails_inside_a_nodes_map_leaves_the_engine_working(engine):
    """(The error's notes: the contract suite.) The task that waited on the inner map
    rejoins its worker thread: the next map runs on both workers."""
    with pytest.raises(ValueError, match="bad sample 107"):
        outer.map({"ks": [list(range(5)), list(range(100, 110))]}, map_over="ks",
                  engine=engine)
    out = outer.map({"ks": [list(range(24))]}, map_over="ks", engine=engine)
    assert len(set(out[0]["found"][1])) == 2


def test_maps_nested_three_deep_finish_on_one_thread_per_worker(engine):
    out = Pipeline([top]).map({"x": list(range(3))}, map_over="x", engine=engine)
    with SeqEngine() as seq:
        assert out == Pipeline([top]).map({"x": list(range(3))}, map_over="x", engine=seq)


def test_callbacks_see_the_callers_maps_not_a_nodes_own(dask_client):
    from gilfree.engines import DaskEngine

    seen = []

    class Record(PipelineCallback):
        def on_map_start(self, total, ctx):
            seen.append(("start", total))

        def on_map_item_end(self, item, duration, ctx):
            seen.append(("item", item))

    with DaskEngine(client=dask_client, callbacks=[Record()]) as engine:
        outer.run({"ks": list(range(6))}, engine=engine)
        assert seen == []  # run() opens no map; the node's map is its own
        outer.map({"ks": [[0, 1, 2]] * 2}, map_over="ks", engine=engine)
        assert seen[0] == ("start", 2)
        assert sorted(i for kind, i in seen if kind == "item") == [0, 1]


@node(output_name="v")
def locked(k, lock):
    with lock:
        return k * 2


@node(output_name="total")
def maps_with_a_lock(ks):
    lock = threading.Lock()  # made here: it cannot travel to other workers
    return sum(r["v"] for r in Pipeline([locked]).map({"k": ks, "lock": lock}, map_over="k"))


def test_a_nodes_map_that_cannot_be_sent_runs_where_the_node_runs(engine):
    out = Pipeline([maps_with_a_lock]).map({"ks": [[1, 2, 3]]}, map_over="ks", engine=engine)
    assert out == [{"total": 12}]  # (in the worker running the node: its warning there)
    with pytest.warns(RuntimeWarning, match="runs in the node's process"):
        assert Pipeline([maps_with_a_lock]).run({"ks": [1, 2]}, engine=engine) == {"total": 6}
