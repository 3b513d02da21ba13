"""Nesting, stateful objects, batch nodes, caching and callbacks on every engine."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from gilfree import DiskCache, DualNode, Pipeline, PipelineCallback, node, stateful


@node(output_name="doubled")
def double(x):
    return 2 * x


@node(output_name="incremented")
def increment(doubled):
    return doubled + 1


@node(output_name="result")
def square(incremented):
    return incremented ** 2


def _record(path: str, value) -> None:
    # A file is the one ledger that threads, worker processes and cluster workers all
    # append to, so call-counting tests say the same thing on every engine.
    with open(path, "a") as f:
        f.write(json.dumps(value) + "\n")


def _recorded(path: str) -> list:
    p = Path(path)
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def inner_pipeline():
    return Pipeline([double, increment], name="inner")


# -- nesting -----------------------------------------------------------------------------
def test_output_pruning_and_pruned_output_by_name(engine):
    outer = Pipeline([inner_pipeline().as_node(), square], engine=engine)
    assert outer.run({"x": 5}) == {"incremented": 11, "result": 121}
    assert outer.run({"x": 5}, output_name="doubled") == {"doubled": 10}
    assert outer.map({"x": [1, 2]}, map_over="x") == [
        {"incremented": 3, "result": 9}, {"incremented": 5, "result": 25}]


def test_no_sibling_consumer_exposes_everything(engine):
    outer = Pipeline([inner_pipeline().as_node()], engine=engine)
    assert outer.run({"x": 1}) == {"doubled": 2, "incremented": 3}


def test_input_and_output_mapping(engine):
    nested = inner_pipeline().as_node(input_mapping={"value": "x"},
                                      output_mapping={"incremented": "out"})
    assert nested.root_args == ("value",)
    outer = Pipeline([nested], engine=engine)
    assert outer.run({"value": 2}) == {"out": 5}


def test_nested_map_over(engine):
    nested = inner_pipeline().as_node(input_mapping={"xs": "x"}, map_over="xs",
                                      output_mapping={"incremented": "all"})

    @node(output_name="total")
    def total(all):
        return sum(all)

    outer = Pipeline([nested, total], engine=engine)
    assert outer.run({"xs": [1, 2, 3]}) == {"all": [3, 5, 7], "total": 15}
    out = outer.map({"xs": [[1], [1, 2]]}, map_over="xs")
    assert out == [{"all": [3], "total": 3}, {"all": [3, 5], "total": 8}]


def test_fully_bound_inner_pipeline_needs_nothing(engine):
    nested = inner_pipeline().bind(x=4).as_node()
    assert nested.root_args == ()
    assert Pipeline([nested, square], engine=engine).run() == {"incremented": 9, "result": 81}


def test_pipeline_passed_directly_is_a_node(engine):
    outer = Pipeline([inner_pipeline(), square], engine=engine)
    assert outer.run({"x": 1}) == {"incremented": 3, "result": 9}


# -- stateful --------------------------------------------------------------------------
@stateful
class Model:
    builds = 0
    lock = threading.Lock()

    def __init__(self, offset):
        with Model.lock:
            Model.builds += 1
        self.offset = offset

    def predict(self, x):
        return x + self.offset


@node(output_name="prediction")
def predict(x, model):
    return model.predict(x)


def test_stateful_built_once_not_per_item(engine):
    Model.builds = 0  # class attributes reach the wrapped class
    model = Model(100)
    assert "not initialized" in repr(model)
    p = Pipeline([predict], engine=engine)
    out = p.map({"x": list(range(40)), "model": model}, map_over="x")
    assert [r["prediction"] for r in out] == [x + 100 for x in range(40)]
    assert p.run({"x": 1, "model": model}) == {"prediction": 101}
    assert Model.builds == 1 and Model.__wrapped__.builds == 1


# -- batch nodes -----------------------------------------------------------------------
def test_dual_node_batches_in_multi_node_pipeline(engine, tmp_path):
    log = str(tmp_path / "batches.jsonl")

    def encode_one(text, scale):
        return len(text) * scale

    def encode_batch(text, scale):
        _record(log, len(text))
        return [len(t) * scale for t in text]

    encode = DualNode(output_name="encoded", singular=encode_one, batch=encode_batch)

    @node(output_name="text")
    def clean(raw):
        return raw.strip()

    @node(output_name="score")
    def score(encoded):
        return encoded + 1

    p = Pipeline([clean, encode, score], engine=engine)
    assert p.run({"raw": " ab ", "scale": 2}) == {"text": "ab", "encoded": 4, "score": 5}
    assert _recorded(log) == []  # run uses the singular function
    raws = [" a ", "bb", " ccc"] * 10
    out = p.map({"raw": raws, "scale": 3}, map_over="raw")
    assert [r["score"] for r in out] == [len(r.strip()) * 3 + 1 for r in raws]
    sizes = _recorded(log)
    assert sum(sizes) == len(raws) and len(sizes) < len(raws)


def test_dual_node_batch_size_hint(engine, tmp_path):
    log = str(tmp_path / "batches.jsonl")

    def one(x):
        return -x

    def many(x):
        _record(log, len(x))
        return [-v for v in x]

    p = Pipeline([DualNode("neg", one, many, batch_size=4)], engine=engine)
    assert p.map({"x": list(range(10))}, map_over="x") == [{"neg": -i} for i in range(10)]
    assert sorted(_recorded(log), reverse=True) == [4, 4, 2]


# -- caching ---------------------------------------------------------------------------
def test_cache_per_item(engine_factory, tmp_path):
    log = str(tmp_path / "calls.jsonl")

    @node(output_name="y")
    def slow(x):
        _record(log, x)
        return None if x == 0 else x * 2

    engine = engine_factory(cache=DiskCache(tmp_path / "cache"))
    p = Pipeline([slow], engine=engine)
    assert p.map({"x": [0, 1, 2]}, map_over="x") == [{"y": None}, {"y": 2}, {"y": 4}]
    assert p.map({"x": [0, 1, 2, 3]}, map_over="x")[-1] == {"y": 6}
    assert Counter(_recorded(log)) == Counter({0: 1, 1: 1, 2: 1, 3: 1})  # None was cached too
    assert p.run({"x": "1"}) == {"y": "11"}  # "1" is not 1


# -- callbacks -------------------------------------------------------------------------
class Recorder(PipelineCallback):
    def __init__(self):
        self.events = []
        self.threads = set()

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name.startswith("on_"):
            def record(*args):
                object.__getattribute__(self, "threads").add(threading.get_ident())
                object.__getattribute__(self, "events").append((name, args[0] if len(args) > 1 else None))
                return attr(*args)
            return record
        return attr


def test_callbacks_fire_in_caller_thread_once_per_item(engine_factory):
    rec = Recorder()
    engine = engine_factory(callbacks=[rec])
    p = Pipeline([double, increment], engine=engine)
    p.map({"x": [1, 2, 3]}, map_over="x")
    kinds = Counter(name for name, _ in rec.events)
    assert kinds["on_map_start"] == 1 and kinds["on_map_end"] == 1
    assert kinds["on_map_item_start"] == 3 and kinds["on_map_item_end"] == 3
    assert kinds["on_node_start"] == 6 and kinds["on_node_end"] == 6
    assert rec.events[0][0] == "on_map_start" and rec.events[-1][0] == "on_map_end"
    assert rec.threads == {threading.get_ident()}
    # per item, start comes before end
    for i in range(3):
        assert rec.events.index(("on_map_item_start", i)) < rec.events.index(("on_map_item_end", i))


def test_callbacks_for_nested_run(engine_factory):
    rec = Recorder()
    engine = engine_factory(callbacks=[rec])
    Pipeline([inner_pipeline().as_node(), square], engine=engine).run({"x": 1})
    names = [n for n, _ in rec.events]
    assert names[0] == "on_pipeline_start" and names[-1] == "on_pipeline_end"
    assert names.index("on_nested_pipeline_start") < names.index("on_nested_pipeline_end")


def test_unsupported_engine_is_refused_before_running(engine_factory):
    ran = []

    class OnlyElsewhere(PipelineCallback):
        @property
        def supported_engines(self):
            return ["NoSuchEngine"]

    @node(output_name="y")
    def f(x):
        ran.append(x)
        return x

    engine = engine_factory(callbacks=[OnlyElsewhere()])
    with pytest.raises(ValueError, match="does not support"):
        Pipeline([f], engine=engine).run({"x": 1})
    assert ran == []


# A model whose load fails: tried at most once per worker per map, never once per item.
@stateful
class BrokenModel:
    def __init__(self, log):
        with open(log, "a") as f:
            f.write("built\n")
        raise OSError("weights file is corrupt")

    def predict(self, x):
        return x


def _attempts(log) -> int:
    try:
        with open(log) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def _workers(engine) -> int:
    """How many separate builders an engine has: its worker processes, else 1 (a mixed
    engine's "process" nodes run in worker processes of its own)."""
    lent = getattr(engine, "_lent", {}).get("process")
    if lent is not None:
        return lent.workers
    if type(engine).__name__ == "DaskEngine":
        return sum(engine.client.nthreads().values())
    return getattr(engine, "workers", 1) if type(engine).__name__ == "ProcessEngine" else 1


@pytest.mark.parametrize("on_error", ["collect", "raise"])
def test_failing_stateful_constructor_is_tried_once_per_worker_per_map(engine_factory,
                                                                        tmp_path, on_error):
    log = str(tmp_path / "builds.txt")
    engine = engine_factory(on_error=on_error)
    p = Pipeline([predict], engine=engine)
    model = BrokenModel(log)
    for attempt in (1, 2):  # the second map tries again: the file may have been fixed
        before = _attempts(log)
        if on_error == "collect":
            out = p.map({"x": list(range(20)), "model": model}, map_over="x")
            assert len(out) == 20
            for i, r in enumerate(out):
                assert isinstance(r, OSError) and "weights file is corrupt" in str(r), r
                assert any(f"map item {i}" in n for n in r.__notes__), r.__notes__
        else:
            with pytest.raises(OSError, match="weights file is corrupt"):
                p.map({"x": list(range(20)), "model": model}, map_over="x")
        built = _attempts(log) - before
        assert 1 <= built <= _workers(engine), f"map {attempt}: constructor ran {built} times"
