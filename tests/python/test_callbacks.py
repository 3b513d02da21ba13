"""Callbacks: the events an engine fires, their order, and the context they see."""

from __future__ import annotations

import threading

import pytest

from gilfree import (CallbackContext, DiskCache, DualNode, Pipeline, PipelineCallback,
                     SeqEngine, node)
from gilfree.callbacks import CallbackContext as CallbackContextFromModule
from gilfree.callbacks import PipelineCallback as PipelineCallbackFromModule


class Recorder(PipelineCallback):
    """Records every event; pipeline ids are replaced by P0, P1, ... in order of first
    appearance so that sequences can be compared exactly."""

    def __init__(self):
        self.events: list[tuple] = []
        self.contexts: list[tuple] = []
        self._ids: dict[str, str] = {}
        self.threads: set[int] = set()
        self.durations: list[float] = []

    def pid(self, pipeline_id):
        if pipeline_id is None:
            return None
        return self._ids.setdefault(pipeline_id, f"P{len(self._ids)}")

    def _where(self, event, ctx):
        self.threads.add(threading.get_ident())
        assert isinstance(ctx, CallbackContext)
        self.contexts.append((event, ctx.depth, self.pid(ctx.current_pipeline_id),
                              self.pid(ctx.parent_pipeline_id),
                              [self.pid(p) for p in ctx.hierarchy_path]))

    def on_pipeline_start(self, pipeline_id, inputs, ctx):
        self.events.append(("pipeline_start", self.pid(pipeline_id), dict(inputs)))
        self._where("pipeline_start", ctx)

    def on_pipeline_end(self, pipeline_id, outputs, duration, ctx):
        self.events.append(("pipeline_end", self.pid(pipeline_id), dict(outputs)))
        self.durations.append(duration)
        self._where("pipeline_end", ctx)

    def on_node_start(self, node_id, inputs, ctx):
        self.events.append(("node_start", node_id, dict(inputs)))
        self._where(f"node_start:{node_id}", ctx)

    def on_node_end(self, node_id, outputs, duration, ctx):
        self.events.append(("node_end", node_id, dict(outputs)))
        self.durations.append(duration)
        self._where(f"node_end:{node_id}", ctx)

    def on_node_cached(self, node_id, signature, ctx):
        assert isinstance(signature, str) and signature
        self.events.append(("node_cached", node_id))
        self._where(f"node_cached:{node_id}", ctx)

    def on_error(self, node_id, error, ctx):
        self.events.append(("error", node_id, error))
        self._where(f"error:{node_id}", ctx)

    def on_nested_pipeline_start(self, parent_id, child_id, ctx):
        self.events.append(("nested_start", self.pid(parent_id), self.pid(child_id)))
        self._where("nested_start", ctx)

    def on_nested_pipeline_end(self, parent_id, child_id, duration, ctx):
        self.events.append(("nested_end", self.pid(parent_id), self.pid(child_id)))
        self.durations.append(duration)
        self._where("nested_end", ctx)

    def on_map_start(self, total_items, ctx):
        self.events.append(("map_start", total_items))
        self._where("map_start", ctx)

    def on_map_item_start(self, item_index, ctx):
        self.events.append(("item_start", item_index))

    def on_map_item_end(self, item_index, duration, ctx):
        self.events.append(("item_end", item_index))
        self.durations.append(duration)

    def on_map_item_cached(self, item_index, signature, ctx):
        assert isinstance(signature, str)
        self.events.append(("item_cached", item_index))

    def on_map_end(self, total_duration, ctx):
        self.events.append(("map_end",))
        self.durations.append(total_duration)

    def names(self):
        return [e[0] if e[0] not in ("node_start", "node_end", "node_cached", "error")
                else f"{e[0]}:{e[1]}" for e in self.events]


@node
def double(x):
    return 2 * x


@node
def inc(double):
    return double + 1


def _two_nodes(**kw):
    return Pipeline([double, inc], **kw)


def test_exports():
    assert CallbackContext is CallbackContextFromModule
    assert PipelineCallback is PipelineCallbackFromModule


def test_base_callback_hooks_are_no_ops():
    cb = PipelineCallback()
    assert cb.supported_engines is None
    out = _two_nodes().run({"x": 1}, engine=SeqEngine(callbacks=[cb]))
    assert out == {"double": 2, "inc": 3}


def test_two_node_run_event_sequence():
    rec = Recorder()
    out = _two_nodes().run({"x": 5}, engine=SeqEngine(callbacks=[rec]))
    assert out == {"double": 10, "inc": 11}
    assert rec.events == [
        ("pipeline_start", "P0", {"x": 5}),
        ("node_start", "double", {"x": 5}),
        ("node_end", "double", {"double": 10}),
        ("node_start", "inc", {"double": 10}),
        ("node_end", "inc", {"inc": 11}),
        ("pipeline_end", "P0", {"double": 10, "inc": 11}),
    ]
    assert all(isinstance(d, float) and d >= 0 for d in rec.durations)
    assert rec.threads == {threading.get_ident()}


def test_map_of_two_items_event_sequence():
    rec = Recorder()
    out = _two_nodes().map({"x": [1, 2]}, map_over="x", engine=SeqEngine(callbacks=[rec]))
    assert out == [{"double": 2, "inc": 3}, {"double": 4, "inc": 5}]
    assert rec.names() == [
        "map_start",
        "item_start", "pipeline_start", "node_start:double", "node_end:double",
        "node_start:inc", "node_end:inc", "pipeline_end", "item_end",
        "item_start", "pipeline_start", "node_start:double", "node_end:double",
        "node_start:inc", "node_end:inc", "pipeline_end", "item_end",
        "map_end",
    ]
    assert rec.events[0] == ("map_start", 2)
    assert [e[1] for e in rec.events if e[0] in ("item_start", "item_end")] == [0, 0, 1, 1]
    assert ("node_end", "inc", {"inc": 5}) in rec.events


def test_callbacks_from_pipeline_engine():
    rec = Recorder()
    _two_nodes(engine=SeqEngine(callbacks=[rec])).run({"x": 1})
    assert rec.names()[0] == "pipeline_start"


def test_node_cached_events(tmp_path):
    rec = Recorder()
    engine = SeqEngine(cache=DiskCache(tmp_path), callbacks=[rec])
    p = _two_nodes()
    p.run({"x": 3}, engine=engine)
    rec.events.clear()
    assert p.run({"x": 3}, engine=engine) == {"double": 6, "inc": 7}
    assert rec.names() == ["pipeline_start", "node_cached:double", "node_cached:inc",
                           "pipeline_end"]


def test_map_item_cached_events(tmp_path):
    rec = Recorder()
    engine = SeqEngine(cache=DiskCache(tmp_path), callbacks=[rec])
    p = _two_nodes()
    p.map({"x": [1]}, map_over="x", engine=engine)
    rec.events.clear()
    p.map({"x": [1, 2]}, map_over="x", engine=engine)
    names = rec.names()
    assert names[:7] == ["map_start", "item_start", "pipeline_start", "node_cached:double",
                         "node_cached:inc", "pipeline_end", "item_cached"]
    assert ("item_cached", 0) in rec.events
    assert ("item_cached", 1) not in rec.events
    assert names[-1] == "map_end"


def test_on_error():
    rec = Recorder()

    @node
    def boom(double):
        raise KeyError("nope")

    p = Pipeline([double, boom])
    with pytest.raises(KeyError) as ei:
        p.run({"x": 1}, engine=SeqEngine(callbacks=[rec]))
    assert rec.names() == ["pipeline_start", "node_start:double", "node_end:double",
                           "node_start:boom", "error:boom"]
    assert rec.events[-1][2] is ei.value


def test_on_error_in_a_collected_map():
    rec = Recorder()

    @node
    def picky(x):
        if x == 1:
            raise ValueError("one")
        return x

    out = Pipeline([picky]).map({"x": [0, 1, 2]}, map_over="x",
                                engine=SeqEngine(callbacks=[rec], on_error="collect"))
    assert isinstance(out[1], ValueError)
    assert [e[1] for e in rec.events if e[0] == "error"] == ["picky"]
    assert [e[1] for e in rec.events if e[0] == "item_end"] == [0, 1, 2]
    assert rec.names()[-1] == "map_end"


def _nested():
    @node
    def inner_step(x):
        return x + 1

    @node
    def outer_step(inner_step):
        return inner_step * 10

    inner = Pipeline([inner_step], name="inner")
    return Pipeline([inner.as_node(), outer_step], name="outer")


def test_nested_pipeline_events_and_context():
    rec = Recorder()
    out = _nested().run({"x": 1}, engine=SeqEngine(callbacks=[rec]))
    assert out == {"inner_step": 2, "outer_step": 20}
    assert rec.names() == [
        "pipeline_start", "nested_start", "pipeline_start", "node_start:inner_step",
        "node_end:inner_step", "pipeline_end", "nested_end", "node_start:outer_step",
        "node_end:outer_step", "pipeline_end",
    ]
    assert rec.events[1] == ("nested_start", "P0", "P1")
    assert rec.events[2][1] == "P1"
    ctx = {c[0]: c[1:] for c in rec.contexts}
    # (depth, current, parent, hierarchy_path)
    assert ctx["node_start:inner_step"] == (1, "P1", "P0", ["P0", "P1"])
    assert ctx["node_start:outer_step"] == (0, "P0", None, ["P0"])
    assert ctx["nested_start"][0] == 0
    assert ctx["nested_end"][0] == 0


def test_nested_mapped_pipeline_events():
    rec = Recorder()

    @node
    def sq(v):
        return v * v

    inner = Pipeline([sq], name="inner")
    outer = Pipeline([inner.as_node(map_over="v")], name="outer")
    assert outer.run({"v": [1, 2]}, engine=SeqEngine(callbacks=[rec])) == {"sq": [1, 4]}
    names = rec.names()
    assert names[:3] == ["pipeline_start", "nested_start", "map_start"]
    assert names.count("item_start") == 2
    assert names[-3:] == ["map_end", "nested_end", "pipeline_end"]
    sq_ctx = [c for c in rec.contexts if c[0] == "node_start:sq"]
    assert len(sq_ctx) == 2
    assert all(c[1:] == (1, "P1", "P0", ["P0", "P1"]) for c in sq_ctx)


def test_ctx_data_is_shared_across_hooks_and_callbacks():
    seen = []

    class Writer(PipelineCallback):
        def on_pipeline_start(self, pipeline_id, inputs, ctx):
            ctx.set("started", pipeline_id)
            ctx.set("count", 0)

        def on_node_end(self, node_id, outputs, duration, ctx):
            ctx.set("count", ctx.get("count") + 1)

    class Reader(PipelineCallback):
        def on_pipeline_end(self, pipeline_id, outputs, duration, ctx):
            seen.append((ctx.get("started") == pipeline_id, ctx.get("count"),
                         ctx.get("absent", "default")))

    _two_nodes().run({"x": 1}, engine=SeqEngine(callbacks=[Writer(), Reader()]))
    assert seen == [(True, 2, "default")]


def test_callback_context_standalone():
    ctx = CallbackContext()
    assert ctx.depth == 0 and ctx.current_pipeline_id is None
    assert ctx.parent_pipeline_id is None
    ctx.set("k", 1)
    assert ctx.get("k") == 1 and ctx.data["k"] == 1
    assert ctx.get("missing") is None


def test_supported_engines_rejects_before_anything_runs():
    calls = []

    @node
    def tracked(x):
        calls.append(x)
        return x

    class Picky(PipelineCallback):
        @property
        def supported_engines(self):
            return ["SomeOtherEngine"]

        def on_pipeline_start(self, *a):
            calls.append("callback")

    engine = SeqEngine(callbacks=[Picky()])
    with pytest.raises(ValueError, match="SeqEngine"):
        Pipeline([tracked]).run({"x": 1}, engine=engine)
    with pytest.raises(ValueError):
        Pipeline([tracked]).map({"x": [1, 2]}, map_over="x", engine=engine)
    assert calls == []


@pytest.mark.parametrize("allowed", [["SeqEngine"], [SeqEngine], ("Engine",)])
def test_supported_engines_accepts_listed_engine(allowed):
    class Picky(Recorder):
        @property
        def supported_engines(self):
            return allowed

    rec = Picky()
    assert _two_nodes().run({"x": 1}, engine=SeqEngine(callbacks=[rec])) == {
        "double": 2, "inc": 3}
    assert rec.events


def test_dual_node_fires_node_events_per_item():
    rec = Recorder()

    def tw_one(x):
        return 2 * x

    def tw_many(x):
        return [2 * v for v in x]

    d = DualNode("tw", singular=tw_one, batch=tw_many)

    @node
    def after(tw):
        return tw + 1

    out = Pipeline([d, after]).map({"x": [1, 2]}, map_over="x",
                                   engine=SeqEngine(callbacks=[rec]))
    assert out == [{"tw": 2, "after": 3}, {"tw": 4, "after": 5}]
    names = rec.names()
    assert names.count("node_start:tw") == 2 and names.count("node_end:tw") == 2
    assert names.count("node_end:after") == 2
    assert names.count("item_start") == 2 and names.count("item_end") == 2
    assert names.count("pipeline_start") == 2 and names.count("pipeline_end") == 2
    assert names[0] == "map_start" and names[-1] == "map_end"
    # each item starts before its own node events and ends after them
    for i in (0, 1):
        start = rec.events.index(("item_start", i))
        end = rec.events.index(("item_end", i))
        assert start < end
    assert ("node_end", "tw", {"tw": 4}) in rec.events


def test_empty_map_fires_map_start_and_end():
    rec = Recorder()
    assert _two_nodes().map({"x": []}, map_over="x", engine=SeqEngine(callbacks=[rec])) == []
    assert rec.names() == ["map_start", "map_end"]
    assert rec.events[0] == ("map_start", 0)


def test_failed_map_still_ends_the_map():
    rec = Recorder()

    @node
    def fragile(x):
        if x == 1:
            raise KeyError("one")
        return x

    with pytest.raises(KeyError):
        Pipeline([fragile]).map({"x": [0, 1, 2]}, map_over="x",
                                engine=SeqEngine(callbacks=[rec]))
    names = rec.names()
    assert names[0] == "map_start" and names[-1] == "map_end"
    assert "error:fragile" in names
    assert ("item_start", 2) not in rec.events  # the map stopped at the failure


def test_nested_pipeline_fully_cached_item_reports_item_cached(tmp_path):
    rec = Recorder()

    @node
    def leaf(x):
        return x + 1

    inner = Pipeline([leaf], name="inner")
    outer = Pipeline([inner.as_node()], name="outer")
    engine = SeqEngine(cache=DiskCache(tmp_path), callbacks=[rec])
    outer.map({"x": [1, 2]}, map_over="x", engine=engine)
    assert not [e for e in rec.events if e[0] == "item_cached"]
    rec.events.clear()
    assert outer.map({"x": [1, 2]}, map_over="x", engine=engine) == [{"leaf": 2},
                                                                     {"leaf": 3}]
    assert [e[1] for e in rec.events if e[0] == "item_cached"] == [0, 1]
    assert rec.names().count("node_cached:leaf") == 2
