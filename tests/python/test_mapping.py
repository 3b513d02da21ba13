"""``map``: zip and product modes, broadcasting, validation of ``map_over``."""

from __future__ import annotations

import itertools

import pytest

from gilfree import DiskCache, Pipeline, PipelineCallback, SeqEngine, node


@node
def pair(a, b):
    return (a, b)


@node
def triple(a, b, c):
    return (a, b, c)


def _engines(tmp_path):
    # The plain fast loop, and the traced loop (cache + callbacks) must agree.
    return [SeqEngine(), SeqEngine(cache=DiskCache(tmp_path), callbacks=[PipelineCallback()])]


# -- modes ------------------------------------------------------------------------------
def test_single_name_map(tmp_path):
    for engine in _engines(tmp_path):
        out = Pipeline([pair]).map({"a": [1, 2, 3], "b": "k"}, map_over="a", engine=engine)
        assert out == [{"pair": (1, "k")}, {"pair": (2, "k")}, {"pair": (3, "k")}]


def test_zip_mode_is_default(tmp_path):
    for engine in _engines(tmp_path):
        out = Pipeline([pair]).map({"a": [1, 2], "b": ["x", "y"]}, map_over=["a", "b"],
                                   engine=engine)
        assert out == [{"pair": (1, "x")}, {"pair": (2, "y")}]


def test_product_order_matches_itertools_product(tmp_path):
    a, b, c = [1, 2], ["x", "y", "z"], [True, False]
    expected = [{"triple": t} for t in itertools.product(a, b, c)]
    for engine in _engines(tmp_path):
        out = Pipeline([triple]).map({"a": a, "b": b, "c": c}, map_over=["a", "b", "c"],
                                     map_mode="product", engine=engine)
        assert out == expected


def test_product_follows_map_over_order_not_signature_order():
    out = Pipeline([pair]).map({"a": [1, 2], "b": ["x", "y"]}, map_over=["b", "a"],
                               map_mode="product")
    assert [o["pair"] for o in out] == [(1, "x"), (2, "x"), (1, "y"), (2, "y")]


def test_product_with_constant():
    out = Pipeline([triple]).map({"a": [1, 2], "b": ["x"], "c": 0}, map_over=["a", "b"],
                                 map_mode="product")
    assert [o["triple"] for o in out] == [(1, "x", 0), (2, "x", 0)]


def test_unknown_map_mode():
    with pytest.raises(ValueError):
        Pipeline([pair]).map({"a": [1], "b": [2]}, map_over=["a", "b"], map_mode="cross")


# -- empty ------------------------------------------------------------------------------
@pytest.mark.parametrize("inputs, map_over, mode", [
    ({"a": [], "b": 1}, "a", "zip"),
    ({"a": [], "b": []}, ["a", "b"], "zip"),
    ({"a": [], "b": [1, 2]}, ["a", "b"], "product"),
])
def test_empty_list_gives_empty_result(tmp_path, inputs, map_over, mode):
    for engine in _engines(tmp_path):
        assert Pipeline([pair]).map(inputs, map_over=map_over, map_mode=mode,
                                    engine=engine) == []


# -- validation -------------------------------------------------------------------------
def test_map_over_name_absent_from_inputs():
    with pytest.raises(ValueError, match="'c'"):
        Pipeline([pair]).map({"a": [1], "b": [2]}, map_over=["a", "c"])


def test_map_over_name_absent_single():
    with pytest.raises(ValueError):
        Pipeline([pair]).map({"b": 2}, map_over="a")


@pytest.mark.parametrize("value", [5, "abc", b"abc", {"k": 1}, None])
def test_mapped_value_not_a_list(value):
    with pytest.raises(ValueError, match="'a'"):
        Pipeline([pair]).map({"a": value, "b": 1}, map_over="a")


@pytest.mark.parametrize("value", [range(1, 3), iter([1, 2]), (v for v in [1, 2])])
def test_ranges_iterators_and_generators_are_read_into_a_list(value):
    assert Pipeline([pair]).map({"a": value, "b": 0}, map_over="a") == [
        {"pair": (1, 0)}, {"pair": (2, 0)}]


def test_numpy_array_is_mapped_item_by_item():
    np = pytest.importorskip("numpy")
    out = Pipeline([pair]).map({"a": np.arange(3), "b": 0}, map_over="a")
    assert [r["pair"][0] for r in out] == [0, 1, 2]


def test_product_reads_generators_once():
    out = Pipeline([pair]).map({"a": (v for v in [1, 2]), "b": iter([5, 6])},
                               map_over=["a", "b"], map_mode="product")
    assert [r["pair"] for r in out] == [(1, 5), (1, 6), (2, 5), (2, 6)]


def test_tuple_is_accepted_as_a_list():
    assert Pipeline([pair]).map({"a": (1, 2), "b": 0}, map_over="a") == [
        {"pair": (1, 0)}, {"pair": (2, 0)}]


def test_zip_unequal_lengths_message_contains_lengths():
    with pytest.raises(ValueError) as ei:
        Pipeline([pair]).map({"a": [1, 2], "b": [1, 2, 3]}, map_over=["a", "b"])
    msg = str(ei.value)
    assert "2" in msg and "3" in msg
    assert "zip" in msg


def test_map_over_required():
    with pytest.raises(ValueError):
        Pipeline([pair]).map({"a": [1], "b": [2]})
    with pytest.raises(ValueError):
        Pipeline([pair]).map({"a": [1], "b": [2]}, map_over=[])


def test_missing_input_in_map():
    with pytest.raises(ValueError, match="Missing required input"):
        Pipeline([pair]).map({"a": [1, 2]}, map_over="a")


def test_no_node_runs_when_validation_fails():
    calls = []

    @node
    def tracked(a, b):
        calls.append(a)
        return a

    with pytest.raises(ValueError):
        Pipeline([tracked]).map({"a": [1, 2], "b": [1]}, map_over=["a", "b"])
    assert calls == []


# -- inputs -----------------------------------------------------------------------------
def test_bound_inputs_can_be_mapped_over(tmp_path):
    for engine in _engines(tmp_path):
        p = Pipeline([pair]).bind(a=[1, 2, 3], b="bound")
        out = p.map(map_over="a", engine=engine)
        assert out == [{"pair": (1, "bound")}, {"pair": (2, "bound")},
                       {"pair": (3, "bound")}]


def test_call_time_inputs_override_bound_mapped_list():
    p = Pipeline([pair]).bind(a=[1, 2, 3], b=0)
    assert p.map({"a": [9]}, map_over="a") == [{"pair": (9, 0)}]
    assert p.bound_inputs == {"a": [1, 2, 3], "b": 0}


def test_broadcast_values_are_not_copied_per_item():
    seen = []

    @node
    def ident(x, shared):
        seen.append(shared)
        return x

    shared = {"big": list(range(10))}
    Pipeline([ident]).map({"x": [1, 2, 3], "shared": shared}, map_over="x")
    assert all(s is shared for s in seen)


def test_a_list_input_that_is_not_mapped_is_broadcast_whole():
    @node
    def total(x, weights):
        return x * sum(weights)

    out = Pipeline([total]).map({"x": [1, 2], "weights": [1, 2, 3]}, map_over="x")
    assert out == [{"total": 6}, {"total": 12}]


def test_results_in_input_order_with_output_name():
    @node
    def sq(x):
        return x * x

    @node
    def neg(sq):
        return -sq

    out = Pipeline([sq, neg]).map({"x": [3, 1, 2]}, map_over="x", output_name="neg")
    assert out == [{"neg": -9}, {"neg": -1}, {"neg": -4}]
    out = Pipeline([sq, neg]).map({"x": [3, 1]}, map_over="x", output_name=["sq"])
    assert out == [{"sq": 9}, {"sq": 1}]


def test_map_returns_outputs_not_inputs():
    out = Pipeline([pair]).map({"a": [1], "b": 2, "extra": 3}, map_over="a")
    assert out == [{"pair": (1, 2)}]


def test_mapped_items_are_independent():
    @node
    def append_one(items):
        items = list(items)
        items.append(1)
        return items

    out = Pipeline([append_one]).map({"items": [[0], [5]]}, map_over="items")
    assert out == [{"append_one": [0, 1]}, {"append_one": [5, 1]}]


# -- nested map_over --------------------------------------------------------------------
def test_nested_as_node_map_over_product():
    inner = Pipeline([pair], name="inner")
    pn = inner.as_node(map_over=["a", "b"], map_mode="product")
    out = Pipeline([pn]).run({"a": [1, 2], "b": ["x", "y"]})
    assert out == {"pair": list(itertools.product([1, 2], ["x", "y"]))}


def test_nested_as_node_map_over_zip_unequal():
    inner = Pipeline([pair], name="inner")
    with pytest.raises(ValueError) as ei:
        Pipeline([inner.as_node(map_over=["a", "b"])]).run({"a": [1, 2], "b": [1]})
    assert "2" in str(ei.value) and "1" in str(ei.value)


def test_nested_as_node_map_over_unknown_name():
    inner = Pipeline([pair], name="inner")
    with pytest.raises(ValueError):
        inner.as_node(map_over="zzz")


def test_nested_as_node_map_over_empty():
    inner = Pipeline([pair], name="inner")
    assert Pipeline([inner.as_node(map_over="a")]).run({"a": [], "b": 1}) == {"pair": []}
