"""A node that maps, run in a ProcessEngine worker during a map of few items: its map
spreads over every worker (remote/worker_maps.py, map_scheduler.hpp "Sub-maps"), with
the map's semantics unchanged: order, errors in both policies, a worker that dies."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from gilfree import DualNode, Pipeline, ProcessEngine, node
from gilfree.engines.process_map import WorkerDied

from cpu_busy import spin


@node(output_name="y")
def work(x, asker=0, die=""):
    if x == 7:
        raise ValueError("seven is bad")
    # ``die``: a marker file; the first item to create it kills its process, one that is
    # ("asker") or is not ("other") the process that asked for the map.
    if die and (os.getpid() == asker) == die.endswith("asker"):
        try:
            os.close(os.open(die, os.O_CREAT | os.O_EXCL))
            os.kill(os.getpid(), signal.SIGKILL)
        except FileExistsError:
            pass
    spin(20_000)
    return (x * 10, os.getpid())


inner = Pipeline([work], name="inner")


@node(output_name="found")
def task(xs, die="", on_error="raise"):
    """A node that maps: its pid, and its inner results (value, pid) or errors."""
    out = inner.map({"x": xs, "asker": os.getpid(), "die": die}, map_over="x",
                    on_error=on_error)
    return os.getpid(), [r["y"] if isinstance(r, dict) else r for r in out]


outer = Pipeline([task], name="outer")


@pytest.fixture(scope="module")
def engine():
    with ProcessEngine(workers=2) as e:
        yield e


def test_one_item_spreads_its_nodes_map_over_every_worker(engine):
    [row] = outer.map({"xs": [list(range(8, 40))]}, map_over="xs", engine=engine)
    asker, found = row["found"]
    assert [v for v, _ in found] == [x * 10 for x in range(8, 40)]  # in order
    assert asker != os.getpid()
    assert {pid for _, pid in found} == set(engine.pids)  # every worker, the asker too


def test_three_items_share_the_workers_and_the_pool_stays_usable(engine):
    rows = outer.map({"xs": [list(range(8, 30))] * 3}, map_over="xs", engine=engine)
    for row in rows:
        assert [v for v, _ in row["found"][1]] == [x * 10 for x in range(8, 30)]
    assert {pid for row in rows for _, pid in row["found"][1]} == set(engine.pids)
    # Some item's map ran beyond its own worker (run where it was asked: never).
    assert any({pid for _, pid in row["found"][1]} != {row["found"][0]} for row in rows)
    # Many items keep the workers busy by themselves: a node's map runs where it runs.
    many = outer.map({"xs": [[8, 9]] * (4 * engine.workers)}, map_over="xs", engine=engine)
    for row in many:
        asker, found = row["found"]
        assert [pid for _, pid in found] == [asker, asker]


def test_an_inner_error_raises_from_the_node_naming_both_items(engine):
    with pytest.raises(ValueError, match="seven is bad") as info:
        outer.map({"xs": [list(range(20)), list(range(8, 12))]}, map_over="xs",
                  engine=engine)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "node 'work' (map item 7)" in notes and "node 'task' (map item 0)" in notes
    # The other item's map and the stopped one's late answers do not disturb the next.
    [row] = outer.map({"xs": [list(range(8, 16))]}, map_over="xs", engine=engine)
    assert [v for v, _ in row["found"][1]] == [x * 10 for x in range(8, 16)]


def test_an_inner_error_is_collected_where_it_happened(engine):
    [row] = outer.map({"xs": [list(range(12))], "on_error": "collect"}, map_over="xs",
                      engine=engine)
    found = row["found"][1]
    assert isinstance(found[7], ValueError)
    assert [v for k, (v, _) in enumerate(found[:7] + found[8:])] == \
        [x * 10 for x in range(12) if x != 7]


def test_a_worker_dying_on_an_inner_item_loses_those_items_only(engine, tmp_path):
    die = str(tmp_path / "other")
    [row] = outer.map({"xs": [list(range(8, 40))], "die": die, "on_error": "collect"},
                      map_over="xs", engine=engine)
    assert os.path.exists(die)  # the item ran in the other worker and killed it
    found = row["found"][1]
    lost = [r for r in found if isinstance(r, BaseException)]
    assert lost and all(isinstance(r, WorkerDied) for r in lost)
    assert "node 'work'" in str(lost[0]) and "SIGKILL" in str(lost[0])
    assert [v for r in found if not isinstance(r, BaseException) for v in r[:1]] == \
        [x * 10 for x, r in zip(range(8, 40), found) if not isinstance(r, BaseException)]
    # The pool replaced the worker: the next map runs on two again.
    [row] = outer.map({"xs": [list(range(8, 40))]}, map_over="xs", engine=engine)
    assert len({pid for _, pid in row["found"][1]}) == 2


def test_the_asking_worker_dying_loses_its_outer_item(engine, tmp_path):
    die = str(tmp_path / "asker")
    out = outer.map({"xs": [list(range(8, 40))], "die": die}, map_over="xs",
                    engine=engine, on_error="collect")
    assert os.path.exists(die)
    [err] = out
    assert isinstance(err, WorkerDied)
    assert "node 'task' on map item 0" in str(err), str(err)
    [row] = outer.map({"xs": [list(range(8, 12))]}, map_over="xs", engine=engine)
    assert [v for v, _ in row["found"][1]] == [80, 90, 100, 110]


@node(output_name="arr")
def big(x):
    return np.full(100_000, float(x))  # 800 kB: travels in shared memory (memfds)


@node(output_name="total")
def sums(xs):
    return float(sum(r["arr"].sum() for r in Pipeline([big]).map({"x": xs}, map_over="x")))


def test_large_results_travel_back_through_the_driver(engine):
    out = Pipeline([sums]).map({"xs": [list(range(12))] * 2}, map_over="xs", engine=engine)
    assert [r["total"] for r in out] == [100_000.0 * sum(range(12))] * 2


def _plus_one(y):
    return y[0] + 1


def _plus_one_each(ys):
    return [y[0] + 1 for y in ys]


scaled = DualNode("z", singular=_plus_one, batch=_plus_one_each)


@node(output_name="zs")
def batched(items):
    """A node whose map runs a DualNode: the workers' batches call its batch form."""
    return [r["z"] for r in Pipeline([scaled]).map({"y": items}, map_over="y")]


@node(output_name="deep")
def two_levels(xss):
    """A node whose map's items map again: each level spreads over the pool."""
    mid = Pipeline([task]).map({"xs": xss}, map_over="xs")
    return [[v for v, _ in r["found"][1]] for r in mid]


def test_maps_nest_two_levels_and_batch_nodes_batch():
    with ProcessEngine(workers=2) as e:
        [row] = Pipeline([two_levels]).map({"xss": [[list(range(8, 14))] * 3]},
                                           map_over="xss", engine=e)
        assert row["deep"] == [[x * 10 for x in range(8, 14)]] * 3
        ys = [(x, 0) for x in range(10)]
        [row] = Pipeline([batched]).map({"items": [ys]}, map_over="items", engine=e)
        assert row["zs"] == [x + 1 for x in range(10)]


@node(output_name="slept")
def nap(s):
    import time

    time.sleep(s)
    return s


@node(output_name="naps")
def naps(ss):
    return [r["slept"] for r in Pipeline([nap]).map({"s": ss}, map_over="s")]


def test_an_item_waiting_for_its_nodes_map_still_times_out():
    """The worker runs batches of its node's map while it waits: its own item's time
    runs on meanwhile, and the per-item timeout stops it."""
    with ProcessEngine(workers=2, timeout=1.0) as e:
        [err] = Pipeline([naps]).map({"ss": [[0.5] * 12]}, map_over="ss", engine=e,
                                     on_error="collect")
        assert isinstance(err, TimeoutError), err
        assert "map item 0 did not finish within 1.0 s (node 'naps')" in str(err)
        [row] = Pipeline([naps]).map({"ss": [[0.01] * 4]}, map_over="ss", engine=e)
        assert row["naps"] == [0.01] * 4


@node(output_name="where")
def beside(x, lock):
    return os.getpid()


@node(output_name="found")
def maps_with_a_lock(xs):
    """A node whose map takes an input that does not pickle (a lock): the warnings too."""
    import threading
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = Pipeline([beside]).map({"x": xs, "lock": threading.Lock()}, map_over="x")
    return os.getpid(), [r["where"] for r in out], [str(w.message) for w in caught]


def test_a_map_that_cannot_leave_the_worker_runs_there_and_says_so(engine):
    [row] = Pipeline([maps_with_a_lock]).map({"xs": [list(range(6))]}, map_over="xs",
                                             engine=engine)
    asker, pids, warned = row["found"]
    assert pids == [asker] * 6
    [message] = warned
    assert message.startswith("ProcessEngine: the map of pipeline") and "lock" in message
