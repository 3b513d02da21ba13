"""Core semantics of run and map: written once, run on every engine."""

from __future__ import annotations

import asyncio
import itertools

from collections import Counter

import pytest

from gilfree import CycleError, DependencyError, GilfreeError, Pipeline, node


@node(output_name="doubled")
def double(x):
    return 2 * x


@node(output_name="total")
def add(doubled, y=10):
    return doubled + y


@node(output_name=("lo", "hi"))
def split(x):
    return x - 1, x + 1


def test_run_returns_all_outputs_not_inputs(engine):
    p = Pipeline([double, add], engine=engine)
    assert p.run({"x": 3, "y": 1}) == {"doubled": 6, "total": 7}


def test_default_parameter_is_optional(engine):
    p = Pipeline([double, add], engine=engine)
    assert p.run({"x": 3}) == {"doubled": 6, "total": 16}


def test_output_name_restricts_what_runs_and_what_is_required(engine):
    calls = []

    @node(output_name="a")
    def make_a(x):
        calls.append("a")
        return x

    @node(output_name="b")
    def make_b(z):
        calls.append("b")
        return z

    p = Pipeline([make_a, make_b], engine=engine)
    assert p.run({"x": 1}, output_name="a") == {"a": 1}  # z not needed
    assert calls == ["a"]
    assert p.run({"x": 1, "z": 2}, output_name=["b"]) == {"b": 2}


def test_unknown_output_lists_available(engine):
    p = Pipeline([double], engine=engine)
    with pytest.raises(ValueError, match=r"Available outputs: \['doubled'\]"):
        p.run({"x": 1}, output_name="nope")


def test_missing_inputs_are_listed(engine):
    p = Pipeline([double, add], engine=engine)
    with pytest.raises(ValueError, match=r"Missing required input\(s\): \['x'\]"):
        p.run({"y": 1})


def test_extra_inputs_are_ignored(engine):
    p = Pipeline([double], engine=engine)
    assert p.run({"x": 1, "unused": 5}) == {"doubled": 2}


def test_multi_output_node(engine):
    p = Pipeline([split], engine=engine)
    assert p.run({"x": 5}) == {"lo": 4, "hi": 6}


def test_multi_output_length_mismatch_names_node(engine):
    @node(output_name=("a", "b"))
    def bad(x):
        return (1, 2, 3)

    with pytest.raises(ValueError, match="'bad'.*2 outputs"):
        Pipeline([bad], engine=engine).run({"x": 1})


def test_bound_inputs_and_call_time_override(engine):
    p = Pipeline([double, add], engine=engine).bind(x=1, y=2)
    assert p.run() == {"doubled": 2, "total": 4}
    assert p.run({"y": 5}) == {"doubled": 2, "total": 7}
    assert p.map({"x": [1, 2]}, map_over="x") == [
        {"doubled": 2, "total": 4}, {"doubled": 4, "total": 6}]


def test_map_zip_keeps_order_and_broadcasts(engine):
    p = Pipeline([double, add], engine=engine)
    out = p.map({"x": list(range(50)), "y": 1}, map_over="x")
    assert out == [{"doubled": 2 * i, "total": 2 * i + 1} for i in range(50)]


def test_map_zip_several_names(engine):
    p = Pipeline([double, add], engine=engine)
    out = p.map({"x": [1, 2], "y": [10, 20]}, map_over=["x", "y"])
    assert [r["total"] for r in out] == [12, 24]


def test_map_zip_unequal_lengths(engine):
    p = Pipeline([double, add], engine=engine)
    with pytest.raises(ValueError, match=r"\{'x': 2, 'y': 3\}"):
        p.map({"x": [1, 2], "y": [1, 2, 3]}, map_over=["x", "y"])


def test_map_product_order(engine):
    p = Pipeline([double, add], engine=engine)
    xs, ys = [1, 2, 3], [10, 20]
    out = p.map({"x": xs, "y": ys}, map_over=["x", "y"], map_mode="product")
    assert [r["total"] for r in out] == [2 * x + y for x, y in itertools.product(xs, ys)]


def test_map_empty_list(engine):
    assert Pipeline([double], engine=engine).map({"x": []}, map_over="x") == []


@pytest.mark.parametrize("inputs, map_over, match", [
    ({"x": 3}, "x", "must be a list"),
    ({"x": [1]}, "nope", "not among the inputs"),
])
def test_map_bad_map_over(engine, inputs, map_over, match):
    with pytest.raises(ValueError, match=match):
        Pipeline([double], engine=engine).map(inputs, map_over=map_over)


def test_map_with_output_name(engine):
    p = Pipeline([double, add], engine=engine)
    assert p.map({"x": [1, 2]}, map_over="x", output_name="doubled") == [
        {"doubled": 2}, {"doubled": 4}]


def test_engine_argument_wins(engine):
    p = Pipeline([double])
    assert p.run({"x": 2}, engine=engine) == {"doubled": 4}
    assert p.map({"x": [2]}, map_over="x", engine=engine) == [{"doubled": 4}]


def test_node_error_keeps_type_and_names_node_and_item(engine):
    @node(output_name="y")
    def fragile(x):
        if x == 3:
            raise KeyError("boom")
        return x

    p = Pipeline([fragile], engine=engine)
    with pytest.raises(KeyError) as info:
        p.map({"x": [0, 1, 2, 3, 4]}, map_over="x")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "'fragile'" in notes and "map item 3" in notes
    with pytest.raises(KeyError) as info:
        p.run({"x": 3})
    assert "'fragile'" in "\n".join(info.value.__notes__)


@node(output_name="y")
def fragile_sample(k):
    if k == 7:
        raise ValueError("bad sample 7")
    return k


@node(output_name="total")
def adds_its_samples(ks):  # a node that maps: its function calls Pipeline.map
    return sum(r["y"] for r in Pipeline([fragile_sample]).map({"k": ks}, map_over="k"))


@pytest.mark.parametrize("on_error", ["raise", "collect"])
def test_an_error_in_a_nodes_own_map_names_both_nodes_and_items(engine, on_error):
    """Whichever engine runs the node's map (its own, or SeqEngine in the node's
    worker), the error names the inner node and item, then the node that mapped and
    its item, innermost first, as a nested pipeline's does."""
    p = Pipeline([adds_its_samples])
    inputs = {"ks": [list(range(5)), list(range(10))]}
    if on_error == "raise":
        with pytest.raises(ValueError, match="bad sample 7") as info:
            p.map(inputs, map_over="ks", engine=engine)
        error = info.value
    else:
        out = p.map(inputs, map_over="ks", engine=engine, on_error="collect")
        assert out[0] == {"total": 10} and isinstance(out[1], ValueError)
        error = out[1]
    assert error.__notes__ == ["gilfree: raised in node 'fragile_sample' (map item 7)",
                               "gilfree: inside node 'adds_its_samples' (map item 1)"]
    with pytest.raises(ValueError) as info:
        p.run({"ks": list(range(10))}, engine=engine)
    assert info.value.__notes__ == [
        "gilfree: raised in node 'fragile_sample' (map item 7)",
        "gilfree: inside node 'adds_its_samples'"]


_flaky_calls = Counter()


@node(output_name="y")
def flaky_sample(k):
    _flaky_calls[k] += 1
    if k == 7:
        raise ValueError("bad sample 7")
    return k


@node(output_name="total")
def adds_flaky_samples(ks):  # a node that maps, with no on_error or retries of its own
    return sum(r["y"] for r in Pipeline([flaky_sample]).map({"k": ks}, map_over="k"))


def test_a_nodes_own_map_does_not_take_the_engines_policy_or_retries(engine_factory):
    # on_error= and retries= given to the engine are its callers' maps' defaults. A map a
    # node makes raises and does not retry, on every engine (on SeqEngine, or in a
    # worker process, it never had the engine's): ThreadEngine, AsyncEngine and
    # AutoEngine handed the node its inner item's exception as a result, and retried it.
    engine = engine_factory(on_error="collect", retries=2)
    _flaky_calls.clear()
    out = Pipeline([adds_flaky_samples]).map({"ks": [list(range(5)), list(range(10))]},
                                             map_over="ks", engine=engine)
    assert out[0] == {"total": 10}
    assert isinstance(out[1], ValueError), out[1]  # the outer item, collected
    assert out[1].__notes__[:2] == ["gilfree: raised in node 'flaky_sample' (map item 7)",
                                    "gilfree: inside node 'adds_flaky_samples' (map item 1)"]
    if type(engine).__name__ in ("SeqEngine", "ThreadEngine", "AsyncEngine", "AutoEngine") \
            and "mixed" not in repr(engine):  # (elsewhere counted in worker processes)
        assert _flaky_calls[7] == 1 + 2, _flaky_calls  # the outer item's retries only


def test_collect_policy_keeps_other_items(engine):
    @node(output_name="y")
    def fragile(x):
        if x % 2:
            raise ValueError(f"odd {x}")
        return x

    p = Pipeline([fragile], engine=engine)
    out = p.map({"x": list(range(6))}, map_over="x", on_error="collect")
    assert [r["y"] for r in out[::2]] == [0, 2, 4]
    assert all(isinstance(r, ValueError) for r in out[1::2])
    assert str(out[3]) == "odd 3"


def test_retries(engine):
    attempts = {}

    @node(output_name="y")
    def flaky(x):
        attempts[x] = attempts.get(x, 0) + 1
        if attempts[x] < 3:
            raise ConnectionError("try again")
        return x

    p = Pipeline([flaky], engine=engine)
    assert p.map({"x": [1, 2]}, map_over="x", retries=2) == [{"y": 1}, {"y": 2}]


def test_async_nodes(engine):
    @node(output_name="y")
    async def fetch(x):
        await asyncio.sleep(0)
        return x * 3

    p = Pipeline([fetch, add.__class__(lambda y: y, "z")], engine=engine)
    assert p.run({"x": 2}) == {"y": 6, "z": 6}
    assert p.map({"x": [1, 2]}, map_over="x") == [{"y": 3, "z": 3}, {"y": 6, "z": 6}]


def test_async_node_called_from_a_running_loop(engine):
    @node(output_name="y")
    async def fetch(x):
        await asyncio.sleep(0)
        return x + 1

    p = Pipeline([fetch], engine=engine)

    async def main():
        sync_result = p.run({"x": 1})          # a notebook cell calling run()
        async_result = await p.arun({"x": 2})
        mapped = await p.amap({"x": [3, 4]}, map_over="x")
        return sync_result, async_result, mapped

    assert asyncio.run(main()) == ({"y": 2}, {"y": 3}, [{"y": 4}, {"y": 5}])


def test_graph_errors_are_gilfree_errors():
    @node(output_name="a")
    def f(b):
        return b

    @node(output_name="b")
    def g(a):
        return a

    with pytest.raises(CycleError, match="f -> g -> f|g -> f -> g"):
        Pipeline([f, g])
    with pytest.raises(DependencyError):
        Pipeline([double, double.__class__(lambda x: x, "doubled")])
    assert issubclass(CycleError, GilfreeError)
