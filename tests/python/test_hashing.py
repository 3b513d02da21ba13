"""Typed, deterministic value hashing for cache keys."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gilfree.hashing import hash_value

HEX64 = re.compile(r"^[0-9a-f]{64}$")
PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"


def test_digest_is_sha256_hex():
    assert HEX64.match(hash_value({"a": [1, 2]}))


def test_same_value_same_digest():
    assert hash_value([1, "a", None, 2.5]) == hash_value([1, "a", None, 2.5])


@pytest.mark.parametrize("values", [
    (1, 1.0, True, "1", b"1"),
    (0, 0.0, False, "", None, "0", b""),
    ([], (), {}, set(), frozenset(), None),
    ([1, 2], (1, 2)),
    ([1, [2]], [[1], 2], [1, 2]),
    (["ab"], ["a", "b"]),
    ({"a": 1}, {"a": "1"}, {"a": True}, {"a": 1.0}),
])
def test_types_and_structure_distinguish(values):
    digests = [hash_value(v) for v in values]
    assert len(set(digests)) == len(values), values


def test_dict_order_independent():
    assert hash_value({"a": 1, "b": 2}) == hash_value({"b": 2, "a": 1})
    assert hash_value({"a": 1, "b": 2}) != hash_value({"a": 2, "b": 1})


def test_dict_with_mixed_key_types():
    d1 = {1: "int", "1": "str", 1.5: "float"}
    d2 = {"1": "str", 1.5: "float", 1: "int"}
    assert hash_value(d1) == hash_value(d2)


def test_set_order_independent():
    assert hash_value({"x", "y", "z"}) == hash_value({"z", "y", "x"})
    assert hash_value({1, 2}) != hash_value(frozenset({1, 2}))


def test_nested_structures():
    a = {"cfg": {"layers": [1, 2, {"k": (3, 4)}], "name": "m"}, "ids": {1, 2}}
    b = {"ids": {2, 1}, "cfg": {"name": "m", "layers": [1, 2, {"k": (3, 4)}]}}
    assert hash_value(a) == hash_value(b)
    b["cfg"]["layers"][2]["k"] = (3, 5)
    assert hash_value(a) != hash_value(b)


@dataclasses.dataclass
class Point:
    x: int
    y: int


@dataclasses.dataclass
class OtherPoint:
    x: int
    y: int


def test_dataclasses_by_fields():
    assert hash_value(Point(1, 2)) == hash_value(Point(1, 2))
    assert hash_value(Point(1, 2)) != hash_value(Point(2, 1))
    assert hash_value(Point(1, 2)) != hash_value(OtherPoint(1, 2))
    assert hash_value(Point(1, 2)) != hash_value({"x": 1, "y": 2})


class Config:
    def __init__(self, lr, layers):
        self.lr = lr
        self.layers = layers
        self._cache = object()  # private: never part of the key


def test_objects_by_public_attributes():
    assert hash_value(Config(0.1, [1, 2])) == hash_value(Config(0.1, [1, 2]))
    assert hash_value(Config(0.1, [1, 2])) != hash_value(Config(0.2, [1, 2]))


def test_private_attribute_change_does_not_change_hash():
    c = Config(0.1, [1])
    before = hash_value(c)
    c._cache = "something else entirely"
    c._new_private = 123
    assert hash_value(c) == before
    c.lr = 0.5
    assert hash_value(c) != before


class CallableScorer:
    def __init__(self, weight):
        self.weight = weight
        self._memo = {}

    def __call__(self, x):
        return x * self.weight


def test_callable_objects_differ_by_public_attributes():
    assert hash_value(CallableScorer(2)) != hash_value(CallableScorer(3))
    assert hash_value(CallableScorer(2)) == hash_value(CallableScorer(2))


class Keyed:
    def __init__(self, key, noise):
        self.key = key
        self.noise = noise

    def __cache_key__(self):
        return self.key


def test_cache_key_used():
    assert hash_value(Keyed("k1", 1)) == hash_value(Keyed("k1", 2))
    assert hash_value(Keyed("k1", 1)) != hash_value(Keyed("k2", 1))


def test_cache_key_used_inside_containers():
    assert hash_value([Keyed("k", 1)]) == hash_value([Keyed("k", 99)])
    assert hash_value({"m": Keyed("k", 1)}) != hash_value({"m": Keyed("j", 1)})


def test_classes_themselves_are_hashable_values():
    # A class defining __cache_key__ as a method is a value, not a key provider.
    assert hash_value(Keyed) == hash_value(Keyed)
    assert hash_value(Keyed) != hash_value(Config)


def test_module_level_functions_hash_stably():
    assert hash_value(json.dumps) == hash_value(json.dumps)
    assert hash_value(json.dumps) != hash_value(json.loads)


def _adder(k):
    def add(x):
        return x + k

    return add


def test_closures_and_lambdas_hash_by_code_and_closure():
    assert hash_value(_adder(1)) != hash_value(_adder(2))
    plus_one = lambda x: x + 1  # noqa: E731
    plus_two = lambda x: x + 2  # noqa: E731
    assert hash_value(plus_one) != hash_value(plus_two)


def test_same_closure_hashes_the_same():
    assert hash_value(_adder(1)) == hash_value(_adder(1))


def test_cyclic_value_raises_instead_of_recursing_forever():
    a: list = []
    a.append(a)
    with pytest.raises((ValueError, RecursionError)):
        hash_value(a)


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Tag(str):
    pass


def test_enum_members_differ():
    assert hash_value(Color.RED) != hash_value(Color.BLUE)
    assert hash_value(Level.LOW) != hash_value(Level.HIGH)


def test_builtin_subclass_instances_hash_by_value():
    assert hash_value(Tag("a")) != hash_value(Tag("b"))


def test_enum_member_is_stable():
    assert hash_value(Color.RED) == hash_value(Color.RED)


# -- numpy ------------------------------------------------------------------------------
def test_numpy_arrays():
    np = pytest.importorskip("numpy")
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert hash_value(a) == hash_value(a.copy())
    assert hash_value(a) != hash_value(a.reshape(3, 2))  # shape matters
    assert hash_value(a) != hash_value(a.astype(np.int32))  # dtype matters
    b = a.copy()
    b[1, 2] = 99
    assert hash_value(a) != hash_value(b)
    assert hash_value(a) != hash_value(a.tolist())


def test_numpy_non_contiguous_view_hashes_by_content():
    np = pytest.importorskip("numpy")
    a = np.arange(12).reshape(3, 4)
    view = a[:, ::2]
    assert hash_value(view) == hash_value(np.ascontiguousarray(view))


def test_numpy_object_arrays_hash_by_content():
    np = pytest.importorskip("numpy")
    a = np.array([[1, 2], "x" * 3], dtype=object)
    b = np.array([[1, 2], "".join(["x", "x", "x"])], dtype=object)
    assert hash_value(a) == hash_value(b)


# -- across processes -------------------------------------------------------------------
_CHILD = textwrap.dedent("""
    import json, sys
    from gilfree.hashing import hash_value
    values = [
        "hello, world",
        {"delta", "alpha", "charlie", "bravo"},
        frozenset({"x", "y"}),
        {"b": [1, 2, {"z", "q"}], "a": ("t", 1.5), "c": None},
        {"kk": {"nested": "dict", "other": "key"}},
        [1, 1.0, True, "1", b"1"],
    ]
    print(json.dumps([hash_value(v) for v in values]))
""")


def _digests_with_seed(seed: str) -> list[str]:
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = seed
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PYTHON_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_stable_across_processes_with_different_hash_seeds():
    first = _digests_with_seed("1")
    second = _digests_with_seed("12345")
    assert first == second
    ns: dict = {}
    exec(_CHILD.replace("print(json.dumps(", "result = (("), ns)
    assert ns["result"] == first  # and the same in this process
