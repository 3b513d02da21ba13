"""``@node``: decorator forms, names, inputs, code hashes, metadata, hints."""

from __future__ import annotations

import functools
import re

import pytest

from gilfree import Node, Pipeline, node

HEX64 = re.compile(r"^[0-9a-f]{64}$")


# -- decorator forms --------------------------------------------------------------------
def test_bare_decorator_uses_function_name_as_output():
    @node
    def double(x):
        return 2 * x

    assert isinstance(double, Node)
    assert double.name == "double"
    assert double.output_name == "double"
    assert Pipeline([double]).run({"x": 3}) == {"double": 6}


def test_empty_call_decorator():
    @node()
    def double(x):
        return 2 * x

    assert double.output_name == "double"
    assert double.cache is True
    assert Pipeline([double]).run({"x": 3}) == {"double": 6}


def test_positional_output_name():
    @node("out")
    def double(x):
        return 2 * x

    assert double.name == "double"
    assert double.output_name == "out"
    assert Pipeline([double]).run({"x": 3}) == {"out": 6}


def test_keyword_output_name():
    @node(output_name="out")
    def double(x):
        return 2 * x

    assert double.output_name == "out"
    assert Pipeline([double]).run({"x": 4}) == {"out": 8}


def test_cache_flag():
    @node(cache=False)
    def f(x):
        return x

    @node("g_out", cache=False)
    def g(x):
        return x

    assert f.cache is False
    assert g.cache is False and g.output_name == "g_out"


def test_multi_output_tuple():
    @node(output_name=("lo", "hi"))
    def bounds(xs):
        return min(xs), max(xs)

    assert bounds.output_name == ("lo", "hi")
    assert Pipeline([bounds]).run({"xs": [3, 1, 2]}) == {"lo": 1, "hi": 3}


def test_multi_output_list_result_is_accepted():
    @node(output_name=("a", "b"))
    def pair(x):
        return [x, x + 1]

    assert Pipeline([pair]).run({"x": 1}) == {"a": 1, "b": 2}


def test_multi_output_length_mismatch_names_node():
    @node(output_name=("a", "b", "c"))
    def short(x):
        return x, x

    with pytest.raises(Exception, match="short"):
        Pipeline([short]).run({"x": 1})


# -- inputs -----------------------------------------------------------------------------
def test_root_args_in_signature_order():
    @node
    def f(zeta, alpha, mid):
        return zeta

    assert f.root_args == ("zeta", "alpha", "mid")
    assert isinstance(f.root_args, tuple)


def test_zero_argument_node():
    @node
    def const():
        return 42

    assert const.root_args == ()
    assert Pipeline([const]).run() == {"const": 42}


def test_default_parameter_is_optional():
    @node
    def add(x, y=10):
        return x + y

    p = Pipeline([add])
    assert p.run({"x": 1}) == {"add": 11}
    assert p.run({"x": 1, "y": 2}) == {"add": 3}


def test_default_parameter_skipped_in_the_middle():
    @node
    def f(a, b=2, c=3):
        return (a, b, c)

    p = Pipeline([f])
    assert p.run({"a": 1, "c": 30}) == {"f": (1, 2, 30)}
    assert p.run({"a": 1, "b": 20}) == {"f": (1, 20, 3)}


def test_default_parameter_in_map():
    @node
    def f(a, b=2, c=3):
        return a + b + c

    assert Pipeline([f]).map({"a": [1, 2], "c": 0}, map_over="a") == [{"f": 3}, {"f": 4}]


def test_missing_required_input_still_errors_with_defaults():
    @node
    def add(x, y=10):
        return x + y

    with pytest.raises(ValueError, match="Missing required input"):
        Pipeline([add]).run({"y": 1})


def test_var_positional_rejected():
    with pytest.raises(TypeError):
        @node
        def f(*args):
            return args


def test_var_keyword_rejected():
    with pytest.raises(TypeError):
        @node("out")
        def f(x, **kwargs):
            return x


# -- code hash --------------------------------------------------------------------------
def _make(k):
    @node
    def scaled(x):
        return x * k

    return scaled


def test_code_hash_is_64_hex():
    @node
    def f(x):
        return x

    assert HEX64.match(f.code_hash)


def test_code_hash_stable_for_same_source():
    assert _make(3).code_hash == _make(3).code_hash


def test_code_hash_differs_when_closure_value_changes():
    assert _make(3).code_hash != _make(4).code_hash
    # typed: 1 and "1" closures differ
    assert _make(1).code_hash != _make("1").code_hash


def test_code_hash_differs_when_source_changes():
    @node
    def f(x):
        return x + 1

    first = f.code_hash

    @node
    def f(x):  # noqa: F811 - same name, different body
        return x + 2

    assert f.code_hash != first


def test_code_hash_is_computed_at_decoration():
    box = [1]

    @node
    def f(x):
        return x + box[0]

    before = f.code_hash
    box[0] = 2
    assert f.code_hash == before


def _exec_made():
    ns: dict = {}
    exec("def made(xs):\n    return [v * 2 for v in xs]\n", ns)
    return ns["made"]


def test_code_hash_without_source_depends_on_code_not_addresses():
    first, second = _exec_made(), _exec_made()  # both alive: different addresses
    assert node(first).code_hash == node(second).code_hash


def test_code_hash_for_lambda_like_function_without_source():
    ns: dict = {}
    exec("def made(x):\n    return x + 1\n", ns)
    n = node(ns["made"])
    assert HEX64.match(n.code_hash)
    assert n(x=1) == 2


# -- async, func, metadata --------------------------------------------------------------
def test_is_async():
    @node
    async def fetch(x):
        return x

    @node
    def plain(x):
        return x

    assert fetch.is_async is True
    assert plain.is_async is False


def test_async_node_runs():
    @node
    async def fetch(x):
        return x + 1

    assert Pipeline([fetch]).run({"x": 1}) == {"fetch": 2}


def test_func_is_the_function():
    def raw(x):
        return x

    n = node(raw)
    assert n.func is raw


def test_functools_metadata():
    def documented(x):
        """Some docs."""
        return x

    n = node("out")(documented)
    assert n.__doc__ == "Some docs."
    assert n.__name__ == "documented"
    assert n.__qualname__ == documented.__qualname__
    assert n.__module__ == documented.__module__
    assert n.__wrapped__ is documented


def test_calling_node_calls_function():
    @node
    def add(x, y):
        return x + y

    assert add(x=1, y=2) == 3
    assert add(1, 2) == 3


# -- equality ---------------------------------------------------------------------------
def test_equality_and_hash_by_name_and_output():
    def f(x):
        return x

    a = node(f)
    b = node(f)
    c = node("other")(f)
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2


def test_equality_ignores_body_same_name():
    @node
    def f(x):
        return 1

    first = f

    @node
    def f(x):  # noqa: F811
        return 2

    assert first == f
    assert first != "f"


# -- hints ------------------------------------------------------------------------------
def test_known_hints_accepted():
    @node(batch_size=8, max_concurrency=2, executor="thread", timeout=1.5, retries=0)
    def f(x):
        return x

    assert f.hints == {"batch_size": 8, "max_concurrency": 2, "executor": "thread",
                       "timeout": 1.5, "retries": 0}


@pytest.mark.parametrize("form", ["call", "positional", "keyword"])
def test_unknown_hint_is_type_error_at_decoration(form):
    def f(x):
        return x

    with pytest.raises(TypeError, match="bogus"):
        if form == "call":
            node(bogus=1)(f)
        elif form == "positional":
            node("out", bogus=1)(f)
        else:
            node(output_name="out", bogus=1)(f)


def test_unknown_hint_raises_before_a_function_is_given():
    with pytest.raises(TypeError):
        node(batchsize=3)


@pytest.mark.parametrize("hint, value", [
    ("batch_size", 0), ("batch_size", -1), ("batch_size", 1.5), ("batch_size", True),
    ("max_concurrency", 0), ("retries", -1), ("retries", 1.0),
    ("timeout", 0), ("timeout", -2), ("timeout", "1"),
    ("executor", "gpu"),
])
def test_bad_hint_values_are_value_errors(hint, value):
    with pytest.raises(ValueError, match=hint):
        @node(**{hint: value})
        def f(x):
            return x


def test_bad_output_name_type():
    with pytest.raises(TypeError):
        @node(output_name=("a", 2))
        def f(x):
            return x, x


# -- parameter kinds --------------------------------------------------------------------
def test_keyword_only_parameters():
    @node
    def f(x, *, y):
        return x + y

    p = Pipeline([f])
    assert p.run({"x": 1, "y": 2}) == {"f": 3}
    assert p.map({"x": [1, 2], "y": 10}, map_over="x") == [{"f": 11}, {"f": 12}]


def test_keyword_only_parameter_with_default_left_out():
    @node
    def f(x, *, y=5):
        return x + y

    assert Pipeline([f]).run({"x": 1}) == {"f": 6}


def test_positional_only_parameter_with_a_skipped_default():
    @node
    def g(x, /, y=1, z=2):
        return (x, y, z)

    assert Pipeline([g]).run({"x": 0, "z": 5}) == {"g": (0, 1, 5)}


# -- function attributes ----------------------------------------------------------------
def test_rewrapping_a_node_takes_the_new_output_name():
    @node
    def f(x):
        return x + 1

    g = node(output_name="g_out", cache=False)(f)
    assert g.output_name == "g_out"
    assert g.cache is False
    assert Pipeline([g]).run({"x": 1}) == {"g_out": 2}


def test_function_attributes_do_not_override_node_fields():
    def h(x):
        return x

    h.cache = "not a bool"
    h.name = "other"
    n = node(h)
    assert n.cache is True
    assert n.name == "h"


def test_function_attributes_are_kept_on_the_node():
    def h(x):
        return x

    h.custom_tag = "kept"
    assert node(h).custom_tag == "kept"


# -- ordinary callables -----------------------------------------------------------------
def _add(a, b):
    return a + b


class _Adder:
    def __init__(self, n):
        self.n = n

    def __call__(self, y):
        return y + self.n


class _AsyncAdder:
    async def __call__(self, y):
        return y + 1


def test_partial_is_a_node_named_after_its_function():
    n = node("y")(functools.partial(_add, b=1))
    assert n.name == "_add" and n.root_args == ("a", "b") and n.defaults == {"b": 1}
    assert Pipeline([n]).run({"a": 2}) == {"y": 3}
    # Same function and arguments: same code hash (cache keys survive a restart).
    assert n.code_hash == node("y")(functools.partial(_add, b=1)).code_hash
    assert n.code_hash != node("y")(functools.partial(_add, b=2)).code_hash


def test_callable_instance_is_a_node_named_after_its_class():
    n = node("z")(_Adder(10))
    assert n.name == "_Adder" and n.root_args == ("y",)
    assert not hasattr(n, "n")  # the instance's state stays on the instance
    assert Pipeline([n]).map({"y": [1, 2]}, map_over="y") == [{"z": 11}, {"z": 12}]
    assert n.code_hash == node("z")(_Adder(10)).code_hash
    assert n.code_hash != node("z")(_Adder(11)).code_hash
    a = node("w")(_AsyncAdder())
    assert a.is_async and Pipeline([a]).run({"y": 1}) == {"w": 2}


@pytest.mark.parametrize("bad", [42, "text", None])
def test_not_callable_is_a_type_error_that_says_so(bad):
    with pytest.raises(TypeError, match="not callable"):
        node("y")(bad)
    with pytest.raises(TypeError, match="not callable"):
        Node(bad, "y")


def test_node_with_a_non_name_output_says_what_is_wrong():
    with pytest.raises(TypeError, match="output_name must be a str"):
        node(42)
