"""The dependency graph: order, validation errors, root args, required subsets."""

from __future__ import annotations

import pytest

import gilfree
from gilfree import (CycleError, DependencyError, GilfreeError, HyperNodesError, Pipeline,
                     node)


def _names(nodes):
    return [n.name for n in nodes]


# -- execution order --------------------------------------------------------------------
def test_execution_order_is_topological():
    @node
    def c(b):
        return b + 1

    @node
    def b(a):
        return a + 1

    @node
    def a(x):
        return x + 1

    p = Pipeline([c, b, a])
    assert _names(p.graph.execution_order) == ["a", "b", "c"]
    assert p.run({"x": 0}) == {"a": 1, "b": 2, "c": 3}


def test_ties_broken_by_name_whatever_the_list_order():
    @node
    def zeta(x):
        return x

    @node
    def alpha(x):
        return x

    @node
    def mid(x):
        return x

    for order in ([zeta, alpha, mid], [mid, zeta, alpha], [alpha, mid, zeta]):
        assert _names(Pipeline(order).graph.execution_order) == ["alpha", "mid", "zeta"]


def test_ties_by_name_among_nodes_ready_later():
    # root "r" first; then "b_child" and "a_child" both become ready; "z_root" is ready
    # from the start and sorts after them.
    @node
    def r(x):
        return x

    @node
    def z_root(x):
        return x

    @node
    def b_child(r):
        return r

    @node
    def a_child(r):
        return r

    order = _names(Pipeline([z_root, b_child, a_child, r]).graph.execution_order)
    assert order.index("r") < order.index("a_child") < order.index("b_child")
    assert order == ["r", "a_child", "b_child", "z_root"]


def test_diamond_order():
    @node
    def top(x):
        return x

    @node
    def left(top):
        return top + 1

    @node
    def right(top):
        return top + 2

    @node
    def bottom(left, right):
        return left * right

    p = Pipeline([bottom, right, left, top])
    assert _names(p.graph.execution_order) == ["top", "left", "right", "bottom"]
    assert p.run({"x": 1})["bottom"] == 6


# -- errors -----------------------------------------------------------------------------
def test_duplicate_output_is_dependency_error_naming_both_nodes():
    @node(output_name="out")
    def first(x):
        return x

    @node(output_name="out")
    def second(x):
        return x

    with pytest.raises(DependencyError) as ei:
        Pipeline([first, second])
    msg = str(ei.value)
    assert "first" in msg and "second" in msg and "out" in msg


def test_duplicate_output_within_multi_output():
    @node(output_name=("a", "b"))
    def pair(x):
        return x, x

    @node(output_name="b")
    def other(x):
        return x

    with pytest.raises(DependencyError, match="pair"):
        Pipeline([pair, other])


def test_two_node_cycle():
    @node
    def a(b):
        return b

    @node
    def b(a):
        return a

    with pytest.raises(CycleError) as ei:
        Pipeline([a, b])
    msg = str(ei.value)
    assert "a -> b -> a" in msg or "b -> a -> b" in msg


def test_three_node_cycle_names_it_in_data_flow_order():
    # data flows a -> b -> c -> a
    @node
    def a(c):
        return c

    @node
    def b(a):
        return a

    @node
    def c(b):
        return b

    with pytest.raises(CycleError) as ei:
        Pipeline([c, a, b])
    msg = str(ei.value)
    assert any(s in msg for s in ("a -> b -> c -> a", "b -> c -> a -> b",
                                  "c -> a -> b -> c")), msg


def test_self_loop():
    @node(output_name="x")
    def grow(x):
        return x + 1

    with pytest.raises(CycleError, match="grow -> grow"):
        Pipeline([grow])


def test_cycle_message_leaves_out_nodes_outside_the_cycle():
    @node
    def src(x):
        return x

    @node
    def a(b, src):
        return b

    @node
    def b(a):
        return a

    @node
    def aaa_downstream(b):  # sorts first, hangs off the cycle
        return b

    with pytest.raises(CycleError) as ei:
        Pipeline([src, a, b, aaa_downstream])
    msg = str(ei.value)
    assert "a -> b -> a" in msg or "b -> a -> b" in msg
    assert "aaa_downstream" not in msg and "src" not in msg


def test_errors_subclass_the_root_error():
    assert issubclass(CycleError, GilfreeError)
    assert issubclass(DependencyError, GilfreeError)
    assert issubclass(gilfree.ExecutionError, GilfreeError)
    assert issubclass(gilfree.SerializationError, GilfreeError)
    assert HyperNodesError is GilfreeError
    assert issubclass(GilfreeError, Exception)


def test_cycle_error_caught_as_hypernodes_error():
    @node
    def a(b):
        return b

    @node
    def b(a):
        return a

    with pytest.raises(HyperNodesError):
        Pipeline([a, b])


# -- names ------------------------------------------------------------------------------
def test_root_args_sorted_and_exclude_produced_names():
    @node
    def one(zz, aa):
        return zz

    @node
    def two(one, mm, aa):
        return one

    g = Pipeline([two, one]).graph
    assert list(g.root_args) == ["aa", "mm", "zz"]


def test_root_args_include_optional_parameters():
    @node
    def f(x, y=1):
        return x + y

    assert list(Pipeline([f]).graph.root_args) == ["x", "y"]


def test_available_output_names_sorted():
    @node(output_name=("zed", "ab"))
    def pair(x):
        return x, x

    @node
    def mid(zed):
        return zed

    assert list(Pipeline([pair, mid]).graph.available_output_names) == ["ab", "mid", "zed"]


# -- required subsets -------------------------------------------------------------------
def _chain():
    @node
    def a(x):
        return x + 1

    @node
    def b(a):
        return a * 2

    @node
    def c(b):
        return b - 1

    @node
    def side(y):
        return y

    return Pipeline([side, c, b, a])


def test_get_required_nodes_returns_needed_subset_in_order():
    g = _chain().graph
    assert _names(g.get_required_nodes(["b"])) == ["a", "b"]
    assert _names(g.get_required_nodes("c")) == ["a", "b", "c"]
    assert _names(g.get_required_nodes(["side"])) == ["side"]
    assert _names(g.get_required_nodes(["side", "a"])) == ["a", "side"]


def test_get_required_nodes_none_gives_all():
    g = _chain().graph
    assert _names(g.get_required_nodes(None)) == _names(g.execution_order)


def test_output_name_limits_what_runs_and_what_is_required():
    p = _chain()
    # "side" needs y, which is not given: asking for "b" only must not require it.
    assert p.run({"x": 1}, output_name="b") == {"b": 4}
    assert p.run({"x": 1}, output_name=["a", "c"]) == {"a": 2, "c": 3}
