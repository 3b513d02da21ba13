"""HyperNodes code runs unchanged (issue 18): the parts of its API that gilfree adds for
it: ``PipelineNode`` as HyperNodes has it, ``ctx.get("_in_map")``, its callback error
wording, ``gilfree.telemetry`` and its top-level names.

HyperNodes' own tests are run by tests/compat/run_hypernodes_tests.py; these pin the
same behaviour inside gilfree's suite."""

from __future__ import annotations

import pytest

from gilfree import (CallbackContext, DiskCache, Pipeline, PipelineCallback, SeqEngine,
                     ThreadEngine, node)


@node(output_name="total")
def add(x: int, y: int) -> int:
    return x + y


@node(output_name="scaled")
def scale(value: int, factor: int) -> int:
    return value * factor


# -- PipelineNode ------------------------------------------------------------------------
def test_pipeline_node_output_name_is_the_name_for_one_output_a_tuple_for_several():
    @node(output_name="a")
    def make_a(x: int) -> int:
        return x * 2

    @node(output_name="b")
    def make_b(x: int) -> int:
        return x * 3

    assert Pipeline([make_a]).as_node().output_name == "a"
    assert Pipeline([make_a]).as_node(output_mapping={"a": "first"}).output_name == "first"
    both = Pipeline([make_a, make_b]).as_node()
    assert both.output_name == ("a", "b")
    assert both.output_names == ("a", "b")  # gilfree's name: always a tuple


def test_pipeline_node_bound_inputs_and_unfulfilled_args():
    inner = Pipeline([add]).bind(x=5, y=10)
    assert inner.as_node().bound_inputs == {"x": 5, "y": 10}
    assert inner.as_node().unfulfilled_args == ()
    half = Pipeline([add]).bind(x=5).as_node(input_mapping={"outer_y": "y"})
    assert half.unfulfilled_args == ("outer_y",)
    mapped = Pipeline([scale]).bind(factor=10).as_node(map_over="values",
                                                       input_mapping={"values": "value"})
    assert mapped.unfulfilled_args == ("values",)
    # root_args still lets an outer value override a bound, mapped input.
    over = Pipeline([add]).bind(x=5).as_node(input_mapping={"outer_x": "x"})
    assert over.unfulfilled_args == ("y",)
    assert set(over.root_args) == {"y", "outer_x"}


def test_pipeline_node_is_callable_with_outer_names():
    @node(output_name="a")
    def make_a(x: int) -> int:
        return x * 2

    @node(output_name="b")
    def make_b(x: int) -> int:
        return x * 3

    @node(output_name="c")
    def make_c(x: int) -> int:
        return x * 4

    inner = Pipeline([make_a, make_b, make_c])
    wrapped = inner.as_node(input_mapping={"n": "x"}, output_mapping={"a": "first", "b": "second"})
    assert wrapped(n=5) == {"first": 10, "second": 15}
    assert wrapped(required_outputs=["second"], n=5) == {"second": 15}
    assert inner.as_node()(x=1) == {"a": 2, "b": 3, "c": 4}


def test_mapped_pipeline_node_call_returns_one_list_per_output():
    inner = Pipeline([scale]).bind(factor=10)
    mapped = inner.as_node(map_over="values", input_mapping={"values": "value"},
                           output_mapping={"scaled": "all_scaled"})
    assert mapped(values=[1, 2, 3]) == {"all_scaled": [10, 20, 30]}


# -- callbacks ---------------------------------------------------------------------------
class InMapTracker(PipelineCallback):
    def __init__(self):
        self.events = []

    def on_map_start(self, total_items, ctx):
        self.events.append(("map_start", ctx.get("_in_map", False)))

    def on_node_start(self, node_id, inputs, ctx):
        self.events.append(("executed" if ctx.get("_in_map") else "run", node_id))

    def on_node_cached(self, node_id, signature, ctx):
        self.events.append(("cached" if ctx.get("_in_map") else "run_cached", node_id))

    def on_map_end(self, total_duration, ctx):
        self.events.append(("map_end", ctx.get("_in_map", False)))


@pytest.mark.parametrize("engine_cls", [SeqEngine, ThreadEngine])
def test_ctx_in_map_is_true_for_map_items_only(tmp_path, engine_cls):
    @node(output_name="doubled")
    def double(item: int) -> int:
        return item * 2

    tracker = InMapTracker()
    engine = engine_cls(cache=DiskCache(path=str(tmp_path)), callbacks=[tracker])
    pipeline = Pipeline([double], engine=engine)
    try:
        pipeline.map(inputs={"item": [1, 2, 3]}, map_over="item")
        assert sorted(tracker.events) == sorted(
            [("map_start", False), ("map_end", False)] + [("executed", "double")] * 3)
        tracker.events.clear()
        pipeline.map(inputs={"item": [1, 2, 4]}, map_over="item")
        assert sorted(tracker.events) == sorted(
            [("map_start", False), ("map_end", False), ("executed", "double")]
            + [("cached", "double")] * 2)
        tracker.events.clear()
        pipeline.run(inputs={"item": 9})
        assert tracker.events == [("run", "double")]
    finally:
        if hasattr(engine, "shutdown"):
            engine.shutdown()


def test_ctx_in_map_stays_true_inside_an_outer_map_after_a_nested_map_ends():
    seen = []

    class Probe(PipelineCallback):
        def on_node_end(self, node_id, outputs, duration, ctx):
            seen.append((node_id, ctx.get("_in_map")))

    @node(output_name="sq")
    def square(v: int) -> int:
        return v * v

    @node(output_name="total")
    def total(sq: list) -> int:
        return sum(sq)

    inner = Pipeline([square]).as_node(map_over="vs", input_mapping={"vs": "v"})
    outer = Pipeline([inner, total], engine=SeqEngine(callbacks=[Probe()]))
    assert outer.map(inputs={"vs": [[1, 2], [3]]}, map_over="vs") == [
        {"sq": [1, 4], "total": 5}, {"sq": [9], "total": 9}]
    assert ("total", True) in seen and all(flag for _, flag in seen)


def test_incompatible_callback_message_has_hypernodes_wording():
    class DaftOnly(PipelineCallback):
        @property
        def supported_engines(self):
            return ["DaftEngine"]

    pipeline = Pipeline([add], engine=SeqEngine(callbacks=[DaftOnly()]))
    with pytest.raises(ValueError, match="is not compatible with engine SeqEngine") as exc:
        pipeline.run(inputs={"x": 1, "y": 2})
    assert "it supports ['DaftEngine']" in str(exc.value)
    assert isinstance(CallbackContext(), CallbackContext)
