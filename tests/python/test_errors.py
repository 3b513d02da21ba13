"""Node errors: original type kept, context in notes, collect policy, retries."""

from __future__ import annotations

import pytest

from gilfree import DiskCache, DualNode, Pipeline, PipelineCallback, SeqEngine, node


class CustomError(Exception):
    pass


def _notes(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


def _failing_pipeline(bad=2):
    @node
    def prepare(x):
        return x

    @node
    def explode(prepare):
        if prepare == bad:
            raise CustomError(f"bad value {prepare}")
        return prepare * 10

    return Pipeline([prepare, explode])


# -- run --------------------------------------------------------------------------------
def test_run_error_keeps_type_and_names_node():
    with pytest.raises(CustomError, match="bad value 2") as ei:
        _failing_pipeline().run({"x": 2})
    notes = _notes(ei.value)
    assert "explode" in notes
    assert "map item" not in notes


def test_run_error_not_wrapped():
    with pytest.raises(CustomError) as ei:
        _failing_pipeline().run({"x": 2})
    assert type(ei.value) is CustomError


@pytest.mark.parametrize("with_tracing", [False, True])
def test_builtin_exception_types_kept(tmp_path, with_tracing):
    @node
    def div(x):
        return 1 / x

    engine = SeqEngine(cache=DiskCache(tmp_path)) if with_tracing else SeqEngine()
    with pytest.raises(ZeroDivisionError) as ei:
        Pipeline([div]).run({"x": 0}, engine=engine)
    assert "div" in _notes(ei.value)


def test_note_added_once():
    with pytest.raises(CustomError) as ei:
        _failing_pipeline().run({"x": 2})
    assert len([n for n in ei.value.__notes__ if "explode" in n]) == 1


# -- map --------------------------------------------------------------------------------
@pytest.mark.parametrize("engine_kw", [{}, {"callbacks": [PipelineCallback()]}])
def test_map_error_names_node_and_item(engine_kw):
    with pytest.raises(CustomError) as ei:
        _failing_pipeline().map({"x": [0, 1, 2, 3]}, map_over="x",
                                engine=SeqEngine(**engine_kw))
    notes = _notes(ei.value)
    assert "explode" in notes
    assert "map item 2" in notes


def test_map_error_item_index_in_product_mode():
    @node
    def combo(a, b):
        if (a, b) == (2, "y"):
            raise CustomError("combo")
        return (a, b)

    with pytest.raises(CustomError) as ei:
        Pipeline([combo]).map({"a": [1, 2], "b": ["x", "y"]}, map_over=["a", "b"],
                              map_mode="product")
    assert "map item 3" in _notes(ei.value)


def test_map_raise_policy_stops_at_first_error():
    calls = []

    @node
    def f(x):
        calls.append(x)
        if x == 1:
            raise CustomError("one")
        return x

    with pytest.raises(CustomError):
        Pipeline([f]).map({"x": [0, 1, 2]}, map_over="x")
    assert calls == [0, 1]


def test_collect_on_engine():
    engine = SeqEngine(on_error="collect")
    out = _failing_pipeline().map({"x": [1, 2, 3]}, map_over="x", engine=engine)
    assert out[0] == {"prepare": 1, "explode": 10}
    assert isinstance(out[1], CustomError)
    assert "map item 1" in _notes(out[1])
    assert out[2] == {"prepare": 3, "explode": 30}


def test_return_exceptions_on_engine():
    out = _failing_pipeline().map({"x": [2, 3]}, map_over="x",
                                  engine=SeqEngine(return_exceptions=True))
    assert isinstance(out[0], CustomError) and out[1]["explode"] == 30


def test_collect_via_map_option():
    out = _failing_pipeline().map({"x": [2, 5]}, map_over="x", on_error="collect")
    assert isinstance(out[0], CustomError)
    assert out[1] == {"prepare": 5, "explode": 50}


def test_return_exceptions_via_map_option():
    out = _failing_pipeline().map({"x": [5, 2]}, map_over="x", return_exceptions=True)
    assert out[0]["explode"] == 50 and isinstance(out[1], CustomError)


def test_map_option_overrides_engine_policy():
    with pytest.raises(CustomError):
        _failing_pipeline().map({"x": [2]}, map_over="x",
                                engine=SeqEngine(on_error="collect"), on_error="raise")


def test_collect_with_cache_and_callbacks(tmp_path):
    engine = SeqEngine(cache=DiskCache(tmp_path), callbacks=[PipelineCallback()],
                       on_error="collect")
    p = _failing_pipeline()
    for _ in range(2):  # the second time from the cache, the error again
        out = p.map({"x": [1, 2, 3]}, map_over="x", engine=engine)
        assert out[0]["explode"] == 10 and out[2]["explode"] == 30
        assert isinstance(out[1], CustomError)


def test_collect_with_batch_node_failure():
    @node
    def pre(x):
        if x == 1:
            raise CustomError("pre")
        return x

    def b_one(pre):
        return pre

    def b_many(pre):
        return [v * 2 for v in pre]

    d = DualNode("doubled", singular=b_one, batch=b_many)
    out = Pipeline([pre, d]).map({"x": [0, 1, 2]}, map_over="x", on_error="collect")
    assert out[0] == {"pre": 0, "doubled": 0}
    assert isinstance(out[1], CustomError)
    assert out[2] == {"pre": 2, "doubled": 4}


def test_collect_batch_function_failure_fails_its_items():
    def c_one(x):
        return x

    def c_many(x):
        raise CustomError("whole batch")

    d = DualNode("c", singular=c_one, batch=c_many)
    out = Pipeline([d]).map({"x": [1, 2]}, map_over="x", on_error="collect")
    assert all(isinstance(o, CustomError) for o in out)
    assert "c" in _notes(out[0])


def test_bad_on_error_value():
    with pytest.raises(ValueError):
        SeqEngine(on_error="ignore")
    with pytest.raises(ValueError):
        _failing_pipeline().map({"x": [1]}, map_over="x", on_error="ignore")


def test_unknown_option_rejected():
    with pytest.raises(TypeError):
        _failing_pipeline().map({"x": [1]}, map_over="x", bogus=True)


# -- retries ----------------------------------------------------------------------------
def _flaky(fails: int, **hints):
    state = {"calls": 0}

    @node(**hints)
    def flaky(x):
        state["calls"] += 1
        if state["calls"] <= fails:
            raise ConnectionError(f"attempt {state['calls']}")
        return x

    return flaky, state


def test_retries_hint_makes_a_flaky_node_succeed():
    flaky, state = _flaky(2, retries=2)
    assert Pipeline([flaky]).run({"x": 7}) == {"flaky": 7}
    assert state["calls"] == 3


def test_retries_hint_exhausted_raises_the_last_error():
    flaky, state = _flaky(3, retries=2)
    with pytest.raises(ConnectionError, match="attempt 3"):
        Pipeline([flaky]).run({"x": 7})
    assert state["calls"] == 3


def test_retries_hint_in_map():
    flaky, state = _flaky(2, retries=2)
    assert Pipeline([flaky]).map({"x": [1, 2]}, map_over="x") == [{"flaky": 1},
                                                                 {"flaky": 2}]
    assert state["calls"] == 4


@pytest.mark.parametrize("how", ["engine", "option"])
def test_engine_level_retries(how):
    flaky, state = _flaky(2)
    p = Pipeline([flaky])
    if how == "engine":
        out = p.map({"x": [1, 2]}, map_over="x", engine=SeqEngine(retries=2))
        assert p.run({"x": 3}, engine=SeqEngine(retries=2)) == {"flaky": 3}
    else:
        out = p.map({"x": [1, 2]}, map_over="x", retries=2)
    assert out == [{"flaky": 1}, {"flaky": 2}]


def test_no_retries_by_default():
    flaky, state = _flaky(1)
    with pytest.raises(ConnectionError):
        Pipeline([flaky]).run({"x": 1})
    assert state["calls"] == 1


def test_retries_for_batch_function():
    state = {"calls": 0}

    def r_one(x):
        return x

    def r_many(x):
        state["calls"] += 1
        if state["calls"] < 3:
            raise ConnectionError("flaky batch")
        return list(x)

    d = DualNode("r", singular=r_one, batch=r_many, retries=2)
    assert Pipeline([d]).map({"x": [1, 2]}, map_over="x") == [{"r": 1}, {"r": 2}]
    assert state["calls"] == 3


def test_retries_in_async_node():
    state = {"calls": 0}

    @node(retries=1)
    async def fetch(x):
        state["calls"] += 1
        if state["calls"] == 1:
            raise ConnectionError("first")
        return x

    assert Pipeline([fetch]).run({"x": 4}) == {"fetch": 4}


# -- nested -----------------------------------------------------------------------------
def test_error_in_nested_pipeline_keeps_type_and_names_inner_node():
    @node
    def deep(x):
        raise CustomError("deep")

    inner = Pipeline([deep], name="inner")

    @node
    def after(deep):
        return deep

    with pytest.raises(CustomError) as ei:
        Pipeline([inner.as_node(), after]).run({"x": 1})
    notes = _notes(ei.value)
    assert "deep" in notes and "inner" in notes


def test_error_in_nested_mapped_pipeline_names_item():
    @node
    def picky(v):
        if v == 3:
            raise CustomError("three")
        return v

    inner = Pipeline([picky], name="inner")
    with pytest.raises(CustomError) as ei:
        Pipeline([inner.as_node(map_over="v")]).run({"v": [1, 2, 3]})
    assert "map item 2" in _notes(ei.value)


# -- input errors -----------------------------------------------------------------------
def test_missing_input_lists_required():
    @node
    def needs(a, b):
        return a + b

    with pytest.raises(ValueError) as ei:
        Pipeline([needs]).run({"a": 1})
    msg = str(ei.value)
    assert msg.startswith("Missing required input(s): ['b']")
    assert "'a'" in msg


def test_unknown_output_lists_available():
    with pytest.raises(ValueError) as ei:
        _failing_pipeline().run({"x": 1}, output_name="nope")
    assert "explode" in str(ei.value) and "prepare" in str(ei.value)


def test_multi_output_length_mismatch_names_node_in_run_and_map():
    @node(output_name=("a", "b"))
    def splitter(x):
        return (x,) * x

    p = Pipeline([splitter])
    assert p.run({"x": 2}) == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="splitter"):
        p.run({"x": 3})
    with pytest.raises(ValueError, match="splitter") as ei:
        p.map({"x": [2, 1]}, map_over="x")
    assert "map item 1" in _notes(ei.value)


def test_multi_output_non_sequence_names_node():
    @node(output_name=("a", "b"))
    def scalar(x):
        return x

    with pytest.raises((ValueError, TypeError), match="scalar"):
        Pipeline([scalar]).run({"x": 1})
