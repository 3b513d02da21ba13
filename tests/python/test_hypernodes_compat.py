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
    # Listed by inner name, as HyperNodes lists them, whatever the mapping's order.
    renamed = Pipeline([make_a, make_b]).as_node(output_mapping={"b": "second", "a": "first"})
    assert renamed.output_name == ("first", "second")


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


def test_ctx_has_the_map_size_and_the_item_index_as_in_hypernodes():
    seen = []

    class Probe(PipelineCallback):
        def on_node_start(self, node_id, inputs, ctx):
            seen.append((ctx.get("_map_item_index"), ctx.get("_map_total_items"), inputs["x"]))

    Pipeline([add], engine=SeqEngine(callbacks=[Probe()])).map(
        inputs={"x": [10, 20, 30], "y": 0}, map_over="x")
    assert seen == [(0, 3, 10), (1, 3, 20), (2, 3, 30)]


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


# -- top-level names ---------------------------------------------------------------------
def test_every_name_hypernodes_exports_at_the_top_level_is_here():
    import gilfree

    hypernodes_all = ["node", "stateful", "DualNode", "HyperNode", "Node", "Pipeline",
                      "SeqEngine", "DiskCache", "PipelineCallback", "CallbackContext",
                      "GraphvizTheme", "DESIGN_STYLES", "visualize", "HyperNodesError",
                      "CycleError", "DependencyError", "ExecutionError"]
    missing = [n for n in hypernodes_all if n not in gilfree.__all__ or not hasattr(gilfree, n)]
    assert missing == []
    assert isinstance(gilfree.__version__, str)


def test_hypernode_protocol_is_satisfied_by_every_kind_of_node():
    from gilfree import DualNode, HyperNode

    dual = DualNode(output_name="y", singular=lambda x: x, batch=lambda x: x)
    nested = Pipeline([add]).as_node()
    for n in (add, dual, nested):
        assert isinstance(n, HyperNode), n
        assert isinstance(n.code_hash, str) and n.root_args and n.output_name
    assert not isinstance(object(), HyperNode)


def test_visualize_at_the_top_level_is_pipeline_visualize():
    from gilfree import visualize
    from gilfree.visualization import to_dot, visualize as from_module

    assert visualize is from_module
    assert "total" in to_dot(Pipeline([add]))


def test_design_styles_and_themes():
    from gilfree import DESIGN_STYLES, GraphvizTheme
    from gilfree.viz_themes import ColorPair, NodeStyle, create_custom_theme, resolve_theme

    assert {"default", "hypernodes", "legacy", "dark_neon"} <= set(DESIGN_STYLES)
    assert all(isinstance(t, GraphvizTheme) for t in DESIGN_STYLES.values())
    assert resolve_theme(None) is DESIGN_STYLES["default"] is resolve_theme("default")
    assert resolve_theme("legacy").colors("func").fill == "#87D3F9"
    assert resolve_theme("legacy").colors("input") == resolve_theme("legacy").colors("data")
    # A dual node without its own style looks like a function.
    custom = GraphvizTheme(node_styles={"function": NodeStyle(color=ColorPair("#123456"))})
    assert resolve_theme(custom) is custom
    assert custom.colors("dual").fill == "#123456"
    assert custom.colors("dual").outline == "#0c243c"  # darker: computed
    assert custom.edge_attr["color"] == custom.edge_color
    theme = create_custom_theme(ColorPair("#ffffff"), ColorPair("#000000"), ColorPair("#abc"))
    assert theme.node_styles["data"].graphviz_attrs["fillcolor"] == "#abc"
    with pytest.raises(ValueError, match="unknown style 'nope'.*legacy"):
        resolve_theme("nope")


# -- gilfree.telemetry -------------------------------------------------------------------
def test_telemetry_exports_the_progress_callback():
    import gilfree.progress
    from gilfree.telemetry import ProgressCallback
    from gilfree.telemetry.progress import ProgressCallback as FromSubmodule

    assert ProgressCallback is FromSubmodule is gilfree.progress.ProgressCallback


def test_disabled_progress_callback_creates_no_bars():
    from gilfree.telemetry import ProgressCallback

    progress = ProgressCallback(enable=False)
    engine = SeqEngine(callbacks=[progress])
    assert Pipeline([add], engine=engine).run(inputs={"x": 1, "y": 2}) == {"total": 3}
    assert Pipeline([add], engine=engine).map(inputs={"x": [1, 2], "y": 1}, map_over="x") == [
        {"total": 2}, {"total": 3}]
    assert progress._bars == {}


class FakeSpan:
    def __init__(self, log, name, attributes):
        self.log, self.name, self.attributes = log, name, dict(attributes)

    def __enter__(self):
        self.log.append(("enter", self.name))
        return self

    def __exit__(self, *exc):
        self.log.append(("exit", self.name, exc[0].__name__ if exc[0] else None))

    def set_attribute(self, key, value):
        self.attributes[key] = value


class FakeLogfire:
    def __init__(self):
        self.log, self.spans, self.errors = [], [], []

    def span(self, name, **attributes):
        span = FakeSpan(self.log, name, attributes)
        self.spans.append(span)
        return span

    def error(self, message, **attributes):
        self.errors.append(message)


def test_telemetry_callback_opens_and_closes_a_span_per_pipeline_node_and_map(tmp_path):
    from gilfree.telemetry import TelemetryCallback

    fake = FakeLogfire()
    telemetry = TelemetryCallback(logfire_instance=fake)
    engine = SeqEngine(cache=DiskCache(path=str(tmp_path)), callbacks=[telemetry])
    pipeline = Pipeline([add, scale], engine=engine, name="tele")
    pipeline.run(inputs={"x": 1, "y": 2, "value": 3, "factor": 2})
    names = [s.name for s in fake.spans]
    assert names[0].startswith("pipeline:") and {"node:add", "node:scale"} <= set(names)
    entered = [e[1] for e in fake.log if e[0] == "enter"]
    exited = [e[1] for e in fake.log if e[0] == "exit"]
    assert sorted(entered) == sorted(exited)  # every span is closed
    assert fake.log[-1][:2] == ("exit", names[0])  # the pipeline's span last
    kinds = sorted(s["type"] for s in telemetry.span_data)
    assert kinds == ["node", "node", "pipeline"]
    assert all(s["duration"] >= 0 and s["start_time"] > 0 for s in telemetry.span_data)

    fake.log.clear(), fake.spans.clear(), telemetry.span_data.clear()
    pipeline.map(inputs={"x": [1, 5], "y": 2, "value": 3, "factor": 2}, map_over="x")
    names = [s.name for s in fake.spans]
    assert "map_operation" in names and {"map_item[0]", "map_item[1]"} <= set(names)
    cached = [s for s in fake.spans if s.attributes.get("cached")]
    assert {s.name for s in cached} >= {"node:add", "node:scale"}  # (1, 2) and scale were cached
    entered = [e[1] for e in fake.log if e[0] == "enter"]
    assert sorted(entered) == sorted(e[1] for e in fake.log if e[0] == "exit")
    assert any(s["type"] == "map" for s in telemetry.span_data)
    assert any(s["cached"] for s in telemetry.span_data)


def test_telemetry_callback_closes_a_failed_nodes_span_with_the_error():
    from gilfree.telemetry import TelemetryCallback

    @node(output_name="boom")
    def explode(x: int) -> int:
        raise ValueError("no")

    fake = FakeLogfire()
    pipeline = Pipeline([explode], engine=SeqEngine(
        callbacks=[TelemetryCallback(logfire_instance=fake, trace_map_items=False)]))
    with pytest.raises(ValueError):
        pipeline.run(inputs={"x": 1})
    assert ("exit", "node:explode", "ValueError") in fake.log
    span = next(s for s in fake.spans if s.name == "node:explode")
    assert span.attributes["error_type"] == "ValueError"


def test_telemetry_callback_without_logfire_records_spans_only(monkeypatch):
    import sys

    from gilfree.telemetry import TelemetryCallback

    monkeypatch.setitem(sys.modules, "logfire", None)  # as if not installed
    with pytest.warns(UserWarning, match="logfire is not installed"):
        telemetry = TelemetryCallback()
    Pipeline([add], engine=SeqEngine(callbacks=[telemetry])).run(inputs={"x": 1, "y": 1})
    assert [s["name"] for s in telemetry.span_data if s["type"] == "node"] == ["add"]


def test_waterfall_chart_needs_plotly():
    from gilfree.telemetry import TelemetryCallback

    telemetry = TelemetryCallback(logfire_instance=FakeLogfire())
    Pipeline([add], engine=SeqEngine(callbacks=[telemetry])).run(inputs={"x": 1, "y": 1})
    try:
        import plotly  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install plotly"):
            telemetry.get_waterfall_chart()
    else:
        fig = telemetry.get_waterfall_chart()
        assert len(fig.data) == len(telemetry.span_data)


def test_is_jupyter_is_false_in_a_plain_interpreter():
    from gilfree.telemetry import is_jupyter

    assert is_jupyter() is False


def test_a_pipeline_node_as_a_value_is_hashed_by_what_it_runs():
    from gilfree.hashing import hash_value

    @node(output_name="total")
    def add_other(x: int, y: int) -> int:
        return x - y

    one, same = Pipeline([add]).as_node(), Pipeline([add]).as_node()
    assert hash_value(one) == hash_value(same)
    assert hash_value(one) != hash_value(Pipeline([add_other]).as_node())
    assert hash_value(one) != hash_value(Pipeline([add]).bind(x=1).as_node())


# tests/compat/run_hypernodes_examples.py decides by explicit rules which doc blocks run;
# these pin the rules so a block is never skipped silently or run when it cannot work.
def _examples_script():
    import importlib.util
    import sys
    from pathlib import Path
    compat = Path(__file__).resolve().parents[1] / "compat"
    sys.path.insert(0, str(compat))  # the script imports its sibling's REWRITES
    try:
        spec = importlib.util.spec_from_file_location(
            "run_hypernodes_examples", compat / "run_hypernodes_examples.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(compat))
    return module


def test_examples_script_rules_decide_what_runs():
    m = _examples_script()
    page = (
        "```bash\npip install hypernodes\n```\n"
        "```python\nfrom hypernodes import node\n\n@node\ndef f(x):\n    return helper(x)\n```\n"
        "```python\npipeline = Pipeline(nodes=[...])\n```\n"
        "```python\ndef g(): ...\nresult = f\n```\n"
        "```python\ninner.as_node()\n```\n"
        "```python\nimport no_such_module_gf18\n```\n"
        "```\nsignature = Hash(code)\n```\n"
        "  ```python\n  pipeline.visualize()\n  ```\n")
    rows, runnable = m.plan_page(m.extract_blocks(page))
    reasons = [r[2].split(":")[0] if r[1] != "run" else "run" for r in rows]
    # The last block reads only `pipeline`: the README pipeline is prepended for it.
    assert reasons == ["run", "rule 1", "run", "rule 3", "run", "rule 5", "rule 4", "rule 1",
                       "run"]
    assert [lbl.split()[0] for lbl, *_ in runnable] == ["prelude", "#2", "#4", "#8"]
    assert m.rewrite("from hypernodes.telemetry import ProgressCallback") == \
        "from gilfree.telemetry import ProgressCallback"


def test_examples_script_runs_blocks_in_one_namespace_and_reports_each(tmp_path):
    import os
    m = _examples_script()
    blocks = [("#1", "x = 41\nprint('hi')", ["x"]), ("#2", "x += 1\nraise KeyError('k')", ["x"]),
              ("#3", "y = [x]", ["y"])]
    results = m.run_page(blocks, dict(os.environ), tmp_path, "t")
    assert results["#1"] == ("pass", "", repr("hi\n"), {"x": "41"})
    assert results["#2"][:2] == ("fail", "KeyError: 'k'")
    assert results["#3"] == ("pass", "", repr(""), {"y": "[42]"})
