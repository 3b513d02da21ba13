"""DaskEngine(scheduler=..., num_workers=..., workload_type=..., npartitions=...):
HyperNodes' form, on dask's local schedulers (no cluster, dask.distributed not needed)."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("dask")

from gilfree import Pipeline, PipelineCallback, node, stateful  # noqa: E402
from gilfree.engines import DaskEngine  # noqa: E402
from gilfree.engines._dask_local import LocalDaskEngine, partitions  # noqa: E402

SCHEDULERS = ["threads", "synchronous", "processes"]


@node(output_name="y")
def inc(x: int) -> int:
    if x == 7:
        raise KeyError(x)
    return x + 1


@node(output_name="z")
def double(y: int) -> int:
    return y * 2


class Events(PipelineCallback):
    def __init__(self):
        self.items, self.threads, self.maps = [], set(), []

    def on_map_start(self, total_items, ctx):
        self.maps.append(total_items)

    def on_map_item_end(self, item_index, duration, ctx):
        self.items.append(item_index)
        self.threads.add(threading.get_ident())


@pytest.mark.parametrize("kwargs", [{"scheduler": "threads"}, {"num_workers": 2},
                                    {"workload_type": "io"}, {"npartitions": 3}])
def test_hypernodes_arguments_pick_the_local_schedulers(kwargs):
    engine = DaskEngine(**kwargs)
    assert type(engine) is LocalDaskEngine and isinstance(engine, DaskEngine)
    assert engine.client is None
    assert type(DaskEngine("processes")) is LocalDaskEngine  # HyperNodes' first positional


def test_hypernodes_defaults_and_bad_values():
    e = DaskEngine(scheduler="threads")
    assert (e.scheduler, e.workload_type, e.npartitions) == ("threads", "mixed", None)
    assert e.num_workers >= 1
    assert DaskEngine(scheduler="sync").scheduler == "synchronous"  # dask's alias
    with pytest.raises(ValueError, match="scheduler"):
        DaskEngine(scheduler="gpu")
    with pytest.raises(ValueError, match="workload_type"):
        DaskEngine(workload_type="disk")
    with pytest.raises(ValueError, match="num_workers"):
        DaskEngine(num_workers=0)
    with pytest.raises(ValueError, match="one or the other"):
        DaskEngine(scheduler="threads", address="tcp://127.0.0.1:8786")


def test_partition_rule_is_hypernodes():
    # Values of HyperNodes' DaskEngine._calculate_npartitions (checked against it).
    assert partitions(3, 2) == 1  # at least 10 items per partition
    assert partitions(100, 16) == 8  # 48 -> at most n/10 = 10 -> power of two 8
    assert partitions(1000, 2, "io") == 8
    assert partitions(5000, 8, "cpu") == 16
    assert partitions(10 ** 6, 4, "mixed") == 1024  # at most 1000 items per partition
    assert partitions(20000, 64, "io") == 256


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_map_results_order_and_callbacks(scheduler):
    events = Events()
    engine = DaskEngine(scheduler=scheduler, num_workers=2, npartitions=3, callbacks=[events])
    p = Pipeline([inc, double], engine=engine)
    assert p.run(inputs={"x": 1}) == {"y": 2, "z": 4}
    xs = [1, 2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert p.map(inputs={"x": xs}, map_over="x") == [{"y": x + 1, "z": 2 * x + 2} for x in xs]
    assert events.maps == [10] and sorted(events.items) == list(range(10))
    assert events.threads == {threading.get_ident()}  # callbacks fire in the caller


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_errors_first_in_input_order_or_collected(scheduler):
    p = Pipeline([inc], engine=DaskEngine(scheduler=scheduler, num_workers=2, npartitions=4))
    with pytest.raises(KeyError) as info:
        p.map(inputs={"x": list(range(20))}, map_over="x")
    assert "map item 7" in " ".join(info.value.__notes__)
    out = p.map(inputs={"x": list(range(9))}, map_over="x", on_error="collect")
    assert isinstance(out[7], KeyError) and out[8] == {"y": 9}


def test_npartitions_sets_the_dask_tasks(monkeypatch):
    seen = []
    original = LocalDaskEngine._compute

    def compute(self, tasks):
        seen.append(len(tasks))
        return original(self, tasks)

    monkeypatch.setattr(LocalDaskEngine, "_compute", compute)
    p = Pipeline([double])
    p.map(inputs={"y": list(range(12))}, map_over="y",
          engine=DaskEngine(scheduler="synchronous", npartitions=5))
    p.map(inputs={"y": list(range(200))}, map_over="y",
          engine=DaskEngine(scheduler="synchronous", num_workers=4, workload_type="cpu"))
    assert seen == [4, partitions(200, 4, "cpu")]  # 5 wanted: spans of 3 make 4


@stateful
class Offset:
    def __init__(self, by):
        self.by = by

    def add(self, x):
        return x + self.by


@node(output_name="moved")
def move(x, offset):
    return offset.add(x)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_stateful_and_broadcast_inputs(scheduler):
    engine = DaskEngine(scheduler=scheduler, num_workers=2)
    out = Pipeline([move], engine=engine).map(
        inputs={"x": list(range(25)), "offset": Offset(100)}, map_over="x")
    assert [r["moved"] for r in out] == list(range(100, 125))


def test_hypernodes_docs_example_runs():
    # docs/engines/dask.mdx of HyperNodes, import line changed only, except that the
    # mapped range(100) is a list: gilfree maps over lists and tuples until iterable
    # inputs land (tests/python/test_mapping.py still expects a range to be refused).
    engine = DaskEngine(
        scheduler="threads",      # "threads", "processes", or "synchronous"
        num_workers=None,         # Defaults to CPU count
        workload_type="mixed"     # "cpu", "io", or "mixed"
    )
    pipeline = Pipeline(nodes=[double], engine=engine)
    results = pipeline.map(inputs={"y": list(range(100))}, map_over="y")
    assert results == [{"z": 2 * y} for y in range(100)]
