"""DaftEngine: HyperNodes' constructor, run on gilfree's engines without daft."""

from __future__ import annotations

import sys
import threading
import time

import pytest

import gilfree
from gilfree import DualNode, Pipeline, PipelineCallback, node, stateful
from gilfree.engines import DaftEngine, ProcessEngine, ThreadEngine


@node(output_name="y")
def add_one(x: int) -> int:
    return x + 1


@node(output_name="z")
def double(y: int) -> int:
    return y * 2


class Recorder(PipelineCallback):
    def __init__(self):
        self.events = []

    def on_pipeline_start(self, pipeline_id, inputs, ctx):
        self.events.append("pipeline_start")

    def on_pipeline_end(self, pipeline_id, outputs, duration, ctx):
        self.events.append("pipeline_end")

    def on_node_end(self, node_id, outputs, duration, ctx):
        self.events.append(f"node_end:{node_id}")

    def on_map_start(self, total_items, ctx):
        self.events.append(f"map_start:{total_items}")

    def on_map_item_end(self, item_index, duration, ctx):
        self.events.append(f"item_end:{item_index}")

    def on_map_end(self, total_duration, ctx):
        self.events.append("map_end")


def test_exported_at_every_hypernodes_path():
    from gilfree.integrations.daft import DaftEngine as A
    from gilfree.integrations.daft.engine import DaftEngine as B

    assert A is B is DaftEngine is gilfree.DaftEngine


def test_runs_without_daft(monkeypatch):
    monkeypatch.setitem(sys.modules, "daft", None)  # import daft would fail
    with DaftEngine() as engine:
        p = Pipeline([add_one, double], engine=engine)
        assert p.run(inputs={"x": 1}) == {"y": 2, "z": 4}
        assert p.map(inputs={"x": [1, 2, 3]}, map_over="x") == [
            {"y": 2, "z": 4}, {"y": 3, "z": 6}, {"y": 4, "z": 8}]


def test_config_picks_the_engine():
    with DaftEngine(default_daft_config={"max_workers": 3, "batch_size": 7}) as e:
        assert isinstance(e.engine, ThreadEngine)
        assert e.engine.max_workers == 3 and e.engine.batch_size == 7
    with DaftEngine(default_daft_config={"use_process": True, "max_workers": 4,
                                         "max_concurrency": 2}) as e:
        assert isinstance(e.engine, ProcessEngine)
        assert e.engine.workers == 2  # at most max_concurrency copies of a stateful object
        p = Pipeline([add_one])
        assert e.map(p, {"x": [1, 2, 3]}, map_over="x") == [{"y": 2}, {"y": 3}, {"y": 4}]


def test_bad_config_values():
    with pytest.raises(ValueError, match="max_workers"):
        DaftEngine(default_daft_config={"max_workers": 0})
    with pytest.warns(RuntimeWarning, match="gpus"):
        DaftEngine(default_daft_config={"gpus": 1})
    with pytest.warns(RuntimeWarning, match="not known"):
        DaftEngine(default_daft_config={"colour": "red"})


def test_max_concurrency_limits_nodes_that_take_a_stateful_object():
    @stateful
    class Model:
        def __init__(self):
            self.lock = threading.Lock()
            self.active = 0
            self.peak = 0

        def __call__(self, x):
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            time.sleep(0.01)
            with self.lock:
                self.active -= 1
            return x

    @node(output_name="out")
    def predict(x, model):
        return model(x)

    model = Model()
    with DaftEngine(default_daft_config={"max_concurrency": 1, "max_workers": 4}) as e:
        results = Pipeline([predict], engine=e).map(
            inputs={"x": list(range(12)), "model": model}, map_over="x")
        assert model.peak == 1  # before shutdown() tears the built model down
    assert [r["out"] for r in results] == list(range(12))


def test_dual_node_gets_one_batch_by_default_and_batch_size_when_set():
    calls = []

    def batch(xs):
        calls.append(list(xs))
        return [x * 10 for x in xs]

    dual = DualNode(output_name="r", singular=lambda x: x * 10, batch=batch)
    with DaftEngine() as e:
        assert Pipeline([dual], engine=e).map(inputs={"x": [1, 2, 3]}, map_over="x") == [
            {"r": 10}, {"r": 20}, {"r": 30}]
    assert calls == [[1, 2, 3]]
    calls.clear()
    with DaftEngine(default_daft_config={"batch_size": 2}) as e:
        Pipeline([dual], engine=e).map(inputs={"x": [1, 2, 3]}, map_over="x")
    assert sorted(map(tuple, calls)) == [(1, 2), (3,)]


def test_map_items_are_rows_not_pipeline_runs():
    seq, daft = Recorder(), Recorder()
    Pipeline([add_one], engine=gilfree.SeqEngine(callbacks=[seq])).map(
        inputs={"x": [1, 2]}, map_over="x")
    with DaftEngine(callbacks=[daft]) as e:
        Pipeline([add_one], engine=e).map(inputs={"x": [1, 2]}, map_over="x")
    assert "pipeline_start" in seq.events
    assert [ev for ev in seq.events if not ev.startswith("pipeline_")] == daft.events
    # a run is a pipeline run: the same events as SeqEngine
    seq.events.clear()
    daft.events.clear()
    Pipeline([add_one, double], engine=gilfree.SeqEngine(callbacks=[seq])).run(
        inputs={"x": 1})
    with DaftEngine(callbacks=[daft]) as e:
        Pipeline([add_one, double], engine=e).run(inputs={"x": 1})
    assert seq.events == daft.events


def test_cache_per_item(tmp_path):
    calls = []

    @node(output_name="y")
    def slow(x):
        calls.append(x)
        return x + 1

    with DaftEngine(cache=gilfree.DiskCache(str(tmp_path))) as e:
        p = Pipeline([slow], engine=e)
        p.map(inputs={"x": [1, 2]}, map_over="x")
        assert p.map(inputs={"x": [1, 2, 3]}, map_over="x") == [{"y": 2}, {"y": 3}, {"y": 4}]
    assert sorted(calls) == [1, 2, 3]


def test_stateful_only_node_is_refused_as_in_hypernodes():
    @stateful
    class Counter:
        def increment(self):
            return 1

    @node(output_name="count")
    def get_count(counter):
        return counter.increment()

    with DaftEngine() as e:
        with pytest.raises(ValueError, match="only stateful parameters"):
            Pipeline([get_count], engine=e).run(inputs={"counter": Counter()})


def test_options_and_configure_reach_the_engine_underneath():
    @node(output_name="y")
    def boom(x):
        if x == 2:
            raise KeyError(x)
        return x

    with DaftEngine(on_error="collect") as e:
        e.configure("boom", retries=1)
        out = Pipeline([boom], engine=e).map(inputs={"x": [1, 2]}, map_over="x")
        assert out[0] == {"y": 1} and isinstance(out[1], KeyError)
        assert e.engine._node_hints["boom"] == {"retries": 1}
    with pytest.raises(NotImplementedError, match="daft"):
        DaftEngine().generate_code(Pipeline([boom]))


def test_executor_hints_are_honoured_by_the_engine_underneath():
    import os
    import warnings

    @node(output_name="y", executor="process")
    def elsewhere(x):
        return os.getpid()

    engine = DaftEngine()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = Pipeline([elsewhere]).map({"x": [1, 2]}, map_over="x", engine=engine)
    finally:
        engine.shutdown()
    assert all(r["y"] != os.getpid() for r in out)
