"""``DualNode``: singular for ``run``, batch for ``map``."""

from __future__ import annotations

import math

import pytest

from gilfree import DualNode, Pipeline, SeqEngine, node


class Recorder:
    """A singular/batch pair that records every call."""

    def __init__(self, factor: int = 2):
        self.factor = factor
        self.single_calls: list = []
        self.batch_calls: list = []

    def one(self, x):
        self.single_calls.append(x)
        return x * self.factor

    def many(self, x):
        self.batch_calls.append(list(x))
        return [v * self.factor for v in x]


def _dual(rec: Recorder, output_name="y") -> DualNode:
    def scale_one(x):
        return rec.one(x)

    def scale_batch(x):
        return rec.many(x)

    return DualNode(output_name, singular=scale_one, batch=scale_batch)


# -- names ------------------------------------------------------------------------------
@pytest.mark.parametrize("fname, expected", [
    ("embed_singular", "embed"), ("embed_one", "embed"), ("embed_single", "embed"),
    ("embed", "embed"), ("embed_batch", "embed_batch"), ("one_one", "one"),
])
def test_name_suffix_stripping(fname, expected):
    ns: dict = {}
    exec(f"def {fname}(x):\n    return x\ndef many(x):\n    return x\n", ns)
    d = DualNode("out", singular=ns[fname], batch=ns["many"])
    assert d.name == expected
    assert d.output_name == "out"
    assert d.root_args == ("x",)


def test_bare_suffix_is_not_stripped_to_nothing():
    def _one(x):
        return x

    def many(x):
        return x

    assert DualNode("out", singular=_one, batch=many).name == "_one"


def test_mismatched_parameters_rejected():
    def a_one(x, y):
        return x

    def a_many(x):
        return x

    with pytest.raises(TypeError):
        DualNode("out", singular=a_one, batch=a_many)


# -- run and map ------------------------------------------------------------------------
def test_run_uses_singular():
    rec = Recorder()
    p = Pipeline([_dual(rec)])
    assert p.run({"x": 3}) == {"y": 6}
    assert rec.single_calls == [3]
    assert rec.batch_calls == []


def test_map_uses_one_batch_call_by_default():
    rec = Recorder()
    p = Pipeline([_dual(rec)], engine=SeqEngine())
    out = p.map({"x": [1, 2, 3, 4, 5]}, map_over="x")
    assert out == [{"y": v * 2} for v in [1, 2, 3, 4, 5]]
    assert rec.batch_calls == [[1, 2, 3, 4, 5]]
    assert rec.single_calls == []


@pytest.mark.parametrize("items, size", [(7, 3), (6, 3), (1, 4), (10, 1)])
def test_batch_size_hint(items, size):
    rec = Recorder()

    def s_one(x):
        return rec.one(x)

    def s_many(x):
        return rec.many(x)

    d = DualNode("y", singular=s_one, batch=s_many, batch_size=size)
    out = Pipeline([d]).map({"x": list(range(items))}, map_over="x", engine=SeqEngine())
    assert [o["y"] for o in out] == [2 * v for v in range(items)]
    assert len(rec.batch_calls) == math.ceil(items / size)
    assert [v for call in rec.batch_calls for v in call] == list(range(items))
    assert all(len(c) <= size for c in rec.batch_calls)


def test_batch_size_via_engine_configure():
    rec = Recorder()
    d = _dual(rec)
    engine = SeqEngine().configure(d.name, batch_size=2)
    Pipeline([d]).map({"x": [1, 2, 3, 4, 5]}, map_over="x", engine=engine)
    assert rec.batch_calls == [[1, 2], [3, 4], [5]]


def test_configure_by_output_name_says_which_node_to_configure():
    import warnings

    rec = Recorder()
    d = _dual(rec, output_name="embedding")  # named "scale" after its functions
    engine = SeqEngine().configure("embedding", batch_size=2)
    with pytest.warns(RuntimeWarning, match=r"configure\('embedding'\): no node .* "
                      r"named 'embedding'.*node 'scale' outputs 'embedding': configure "
                      r"'scale'"):
        Pipeline([d]).map({"x": [1, 2, 3]}, map_over="x", engine=engine)
    assert rec.batch_calls == [[1, 2, 3]]  # the hint was not used: one batch
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per name
        Pipeline([d]).map({"x": [1, 2, 3]}, map_over="x", engine=engine)
        # a name that is no node's and no output here: another pipeline's node
        other = SeqEngine().configure("tokenize", batch_size=2)
        Pipeline([d]).map({"x": [1, 2, 3]}, map_over="x", engine=other)


def test_batch_size_via_engine_option():
    rec = Recorder()
    Pipeline([_dual(rec)]).map({"x": [1, 2, 3]}, map_over="x",
                               engine=SeqEngine(batch_size=2))
    assert rec.batch_calls == [[1, 2], [3]]


def test_constants_are_single_values_and_varying_args_lists():
    seen = []

    def shift_one(x, offset):
        return x + offset

    def shift_many(x, offset):
        seen.append((x, offset))
        return [v + offset for v in x]

    d = DualNode("shifted", singular=shift_one, batch=shift_many)
    out = Pipeline([d]).map({"x": [1, 2, 3], "offset": 10}, map_over="x")
    assert [o["shifted"] for o in out] == [11, 12, 13]
    assert seen == [([1, 2, 3], 10)]


def test_bound_constant_is_a_single_value():
    seen = []

    def f_one(x, k):
        return x * k

    def f_many(x, k):
        seen.append(k)
        return [v * k for v in x]

    p = Pipeline([DualNode("r", singular=f_one, batch=f_many)]).bind(k=3)
    assert [o["r"] for o in p.map({"x": [1, 2]}, map_over="x")] == [3, 6]
    assert seen == [3]


def test_two_varying_args_zip():
    seen = []

    def add_one(a, b):
        return a + b

    def add_many(a, b):
        seen.append((list(a), list(b)))
        return [x + y for x, y in zip(a, b)]

    d = DualNode("s", singular=add_one, batch=add_many)
    out = Pipeline([d]).map({"a": [1, 2], "b": [10, 20]}, map_over=["a", "b"])
    assert [o["s"] for o in out] == [11, 22]
    assert seen == [([1, 2], [10, 20])]


def test_empty_map_calls_nothing():
    rec = Recorder()
    assert Pipeline([_dual(rec)]).map({"x": []}, map_over="x") == []
    assert rec.batch_calls == [] and rec.single_calls == []


# -- in bigger pipelines ----------------------------------------------------------------
def test_works_in_multi_node_pipeline():
    rec = Recorder(factor=10)

    @node
    def x(raw):
        return raw + 1

    @node
    def z(y, raw):
        return y - raw

    p = Pipeline([x, _dual(rec), z])
    out = p.map({"raw": [1, 2, 3]}, map_over="raw")
    assert out == [{"x": 2, "y": 20, "z": 19}, {"x": 3, "y": 30, "z": 28},
                   {"x": 4, "y": 40, "z": 37}]
    assert rec.batch_calls == [[2, 3, 4]]
    assert rec.single_calls == []
    # and run goes through singular
    assert p.run({"raw": 1}) == {"x": 2, "y": 20, "z": 19}
    assert rec.single_calls == [2]


def test_output_name_restricts_batch_pipeline():
    rec = Recorder()

    @node
    def other(x):
        raise AssertionError("must not run")

    p = Pipeline([_dual(rec), other])
    assert p.map({"x": [1, 2]}, map_over="x", output_name="y") == [{"y": 2}, {"y": 4}]


def test_length_mismatch_is_a_clear_error_naming_the_node():
    def broken_one(x):
        return x

    def broken_many(x):
        return list(x)[:-1]

    d = DualNode("out", singular=broken_one, batch=broken_many)
    with pytest.raises(ValueError) as ei:
        Pipeline([d]).map({"x": [1, 2, 3]}, map_over="x")
    msg = str(ei.value)
    assert "broken" in msg and "2" in msg and "3" in msg


def test_non_sequence_result_is_a_clear_error():
    def bad_one(x):
        return x

    def bad_many(x):
        return 42

    d = DualNode("out", singular=bad_one, batch=bad_many)
    with pytest.raises(TypeError, match="bad"):
        Pipeline([d]).map({"x": [1, 2]}, map_over="x")


def test_numpy_array_result_accepted():
    np = pytest.importorskip("numpy")

    def sq_one(x):
        return x * x

    def sq_many(x):
        return np.asarray(x) ** 2

    d = DualNode("sq", singular=sq_one, batch=sq_many)
    out = Pipeline([d]).map({"x": [1, 2, 3]}, map_over="x")
    assert [int(o["sq"]) for o in out] == [1, 4, 9]


def test_tuple_result_accepted():
    def t_one(x):
        return -x

    def t_many(x):
        return tuple(-v for v in x)

    out = Pipeline([DualNode("neg", singular=t_one, batch=t_many)]).map(
        {"x": [1, 2]}, map_over="x")
    assert out == [{"neg": -1}, {"neg": -2}]


def test_multi_output_dual_node():
    def split_one(x):
        return x // 10, x % 10

    def split_many(x):
        return [(v // 10, v % 10) for v in x]

    d = DualNode(("tens", "units"), singular=split_one, batch=split_many)
    assert d.output_names == ("tens", "units")
    p = Pipeline([d])
    assert p.run({"x": 42}) == {"tens": 4, "units": 2}
    assert p.map({"x": [12, 34]}, map_over="x") == [{"tens": 1, "units": 2},
                                                   {"tens": 3, "units": 4}]


def test_multi_output_dual_node_bad_item_names_node():
    def pair_one(x):
        return x, x

    def pair_many(x):
        return [(v,) for v in x]  # one value per item instead of two

    d = DualNode(("a", "b"), singular=pair_one, batch=pair_many)
    with pytest.raises(ValueError, match="pair"):
        Pipeline([d]).map({"x": [1]}, map_over="x")


def test_batch_inside_nested_pipeline_mapped_with_as_node():
    rec = Recorder(factor=3)
    inner = Pipeline([_dual(rec)], name="inner")

    @node
    def total(y):
        return sum(y)

    outer = Pipeline([inner.as_node(map_over="x"), total])
    assert outer.run({"x": [1, 2, 3, 4]}) == {"y": [3, 6, 9, 12], "total": 30}
    assert rec.batch_calls == [[1, 2, 3, 4]]
    assert rec.single_calls == []


def test_batch_inside_nested_pipeline_with_renamed_input():
    rec = Recorder(factor=2)
    inner = Pipeline([_dual(rec)], name="inner")
    pn = inner.as_node(input_mapping={"values": "x"}, output_mapping={"y": "ys"},
                       map_over="values")
    assert Pipeline([pn]).run({"values": [5, 6]}) == {"ys": [10, 12]}
    assert rec.batch_calls == [[5, 6]]


def test_dual_node_callable_and_func():
    def inc_one(x):
        return x + 1

    def inc_many(x):
        return [v + 1 for v in x]

    d = DualNode("inc", singular=inc_one, batch=inc_many)
    assert d(x=1) == 2
    assert d.func is inc_one
    assert len(d.code_hash) == 64


def test_dual_node_code_hash_depends_on_both_functions():
    def f_one(x):
        return x

    def f_many(x):
        return x

    def g_many(x):
        return list(x)

    assert (DualNode("o", singular=f_one, batch=f_many).code_hash
            != DualNode("o", singular=f_one, batch=g_many).code_hash)


def test_unknown_hint_rejected():
    def f_one(x):
        return x

    def f_many(x):
        return x

    with pytest.raises(TypeError):
        DualNode("o", singular=f_one, batch=f_many, chunk=3)


def test_batch_results_cached_per_item(tmp_path):
    from gilfree import DiskCache

    rec = Recorder()
    d = _dual(rec)
    engine = SeqEngine(cache=DiskCache(tmp_path))
    p = Pipeline([d])
    assert p.map({"x": [1, 2]}, map_over="x", engine=engine) == [{"y": 2}, {"y": 4}]
    assert p.map({"x": [1, 2, 3]}, map_over="x", engine=engine) == [{"y": 2}, {"y": 4},
                                                                   {"y": 6}]
    assert rec.batch_calls == [[1, 2], [3]]


def test_default_parameter_of_dual_node():
    seen = []

    def p_one(x, k=5):
        return x + k

    def p_many(x, k=5):
        seen.append(k)
        return [v + k for v in x]

    d = DualNode("p", singular=p_one, batch=p_many)
    assert Pipeline([d]).map({"x": [1, 2]}, map_over="x") == [{"p": 6}, {"p": 7}]
    assert Pipeline([d]).run({"x": 1}) == {"p": 6}
    assert seen == [5]


def test_keyword_only_parameters_of_dual_node():
    def k_one(x, *, k):
        return x * k

    def k_many(x, *, k):
        return [v * k for v in x]

    d = DualNode("kk", singular=k_one, batch=k_many)
    assert Pipeline([d]).run({"x": 1, "k": 2}) == {"kk": 2}
    assert Pipeline([d]).map({"x": [1, 2], "k": 3}, map_over="x") == [{"kk": 3}, {"kk": 6}]


def test_dual_node_from_partials_is_named_after_the_function():
    import functools

    def enc_one(x, k):
        return x * k

    def enc_batch(x, k):
        return [v * k for v in x]

    d = DualNode("y", functools.partial(enc_one, k=2), functools.partial(enc_batch, k=2))
    assert d.name == "enc"
    assert Pipeline([d]).map({"x": [1, 2, 3]}, map_over="x") == [{"y": 2}, {"y": 4}, {"y": 6}]
