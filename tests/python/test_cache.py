"""``DiskCache`` on its own, under concurrent writers, and as used by a pipeline."""

from __future__ import annotations

import enum
import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest

from gilfree import DiskCache, Pipeline, SeqEngine, node

HERE = str(Path(__file__).resolve().parent)
PYTHON_DIR = str(Path(__file__).resolve().parents[2] / "python")
if HERE not in sys.path:  # spawned workers import this module by name
    sys.path.insert(0, HERE)

_MISS = object()


# -- DiskCache --------------------------------------------------------------------------
def test_put_get_has(tmp_path):
    c = DiskCache(tmp_path)
    assert not c.has("a" * 64)
    assert c.get("a" * 64) is None
    assert c.get("a" * 64, _MISS) is _MISS
    c.put("a" * 64, {"out": [1, 2, 3]})
    assert c.has("a" * 64)
    assert c.get("a" * 64) == {"out": [1, 2, 3]}


def test_put_overwrites(tmp_path):
    c = DiskCache(tmp_path)
    c.put("k" * 64, 1)
    c.put("k" * 64, 2)
    assert c.get("k" * 64) == 2


def test_persists_across_instances(tmp_path):
    DiskCache(tmp_path).put("p" * 64, "kept")
    assert DiskCache(tmp_path).get("p" * 64) == "kept"


def test_creates_missing_directory(tmp_path):
    c = DiskCache(tmp_path / "deep" / "er")
    c.put("d" * 64, 5)
    assert c.get("d" * 64) == 5


def test_clear(tmp_path):
    c = DiskCache(tmp_path)
    c.put("a" * 64, 1)
    c.put("b" * 64, 2)
    c.clear()
    assert not c.has("a" * 64) and not c.has("b" * 64)
    c.put("a" * 64, 3)  # still usable after clear
    assert c.get("a" * 64) == 3


def test_none_is_a_cacheable_value(tmp_path):
    c = DiskCache(tmp_path)
    c.put("n" * 64, None)
    assert c.has("n" * 64)
    assert c.get("n" * 64, _MISS) is None
    assert not c.has("m" * 64)
    assert c.get("m" * 64, _MISS) is _MISS


def _cache_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")]


@pytest.mark.parametrize("garbage", [b"", b"not a pickle at all", b"\x80\x05\x95"])
def test_corrupt_file_counts_as_a_miss(tmp_path, garbage):
    c = DiskCache(tmp_path)
    c.put("c" * 64, {"v": 1})
    files = _cache_files(tmp_path)
    assert len(files) == 1
    files[0].write_bytes(garbage)
    assert not c.has("c" * 64)
    assert c.get("c" * 64, _MISS) is _MISS
    c.put("c" * 64, {"v": 2})  # and a put repairs it
    assert c.get("c" * 64) == {"v": 2}


def test_unpicklable_value_warns_and_does_not_crash(tmp_path):
    c = DiskCache(tmp_path)
    with pytest.warns(RuntimeWarning):
        c.put("u" * 64, threading.Lock())
    assert not c.has("u" * 64)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no temp file left


def test_locally_defined_value_is_stored_via_cloudpickle(tmp_path):
    pytest.importorskip("cloudpickle")

    class Local:
        def __init__(self, v):
            self.v = v

    c = DiskCache(tmp_path)
    c.put("l" * 64, Local(3))
    assert c.get("l" * 64).v == 3


# -- concurrency ------------------------------------------------------------------------
KEYS = [f"{i:02d}" * 32 for i in range(4)]


def _payload(writer: int, round_: int) -> dict:
    # Large enough that a torn write would be visible; the content identifies the writer.
    return {"writer": writer, "round": round_, "blob": bytes([writer % 256]) * 20_000}


def _is_valid(value) -> bool:
    return (isinstance(value, dict) and set(value) == {"writer", "round", "blob"}
            and value["blob"] == bytes([value["writer"] % 256]) * 20_000)


def _write_and_read(path: str, writer: int, rounds: int) -> list[str]:
    """One writer: put every key each round, reading back in between."""
    c = DiskCache(path)
    problems = []
    for r in range(rounds):
        for k in KEYS:
            try:
                c.put(k, _payload(writer, r))
                v = c.get(k, _MISS)
                if not _is_valid(v):
                    problems.append(f"writer {writer} read {v!r:.80}")
            except Exception as exc:  # pragma: no cover - the failure being tested
                problems.append(f"writer {writer}: {type(exc).__name__}: {exc}")
    return problems


def _reader(path: str, stop: threading.Event, problems: list, reads: list) -> None:
    c = DiskCache(path)
    n = 0
    while not stop.is_set() or n < 50:
        for k in KEYS:
            try:
                v = c.get(k, _MISS)
                if not _is_valid(v):
                    problems.append(f"reader read {v!r:.80}")
            except Exception as exc:  # pragma: no cover
                problems.append(f"reader: {type(exc).__name__}: {exc}")
            n += 1
    reads.append(n)


def _seed(path) -> None:
    c = DiskCache(path)
    for k in KEYS:
        c.put(k, _payload(0, -1))


def test_concurrent_thread_writers(tmp_path):
    _seed(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed store would warn: that is a failure too
        stop = threading.Event()
        problems: list = []
        reads: list = []
        readers = [threading.Thread(target=_reader, args=(str(tmp_path), stop, problems,
                                                          reads)) for _ in range(4)]
        for t in readers:
            t.start()
        results: list = [None] * 8

        def run(i):
            results[i] = _write_and_read(str(tmp_path), i + 1, 30)

        writers = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in writers:
            t.start()
        for t in writers:
            t.join(timeout=60)
        stop.set()
        for t in readers:
            t.join(timeout=60)
    assert all(r == [] for r in results), results
    assert problems == []
    assert len(reads) == 4
    for k in KEYS:
        assert _is_valid(DiskCache(tmp_path).get(k))
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp files left


def test_concurrent_process_writers(tmp_path):
    _seed(tmp_path)
    stop = threading.Event()
    problems: list = []
    reads: list = []
    readers = [threading.Thread(target=_reader, args=(str(tmp_path), stop, problems, reads))
               for _ in range(2)]
    for t in readers:
        t.start()
    try:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(4) as pool:
            results = pool.starmap(_write_and_read,
                                   [(str(tmp_path), w, 40) for w in range(1, 5)])
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=60)
    assert results == [[], [], [], []]
    assert problems == []
    for k in KEYS:
        assert _is_valid(DiskCache(tmp_path).get(k))


# -- pipelines with a cache -------------------------------------------------------------
def _engine(tmp_path) -> SeqEngine:
    return SeqEngine(cache=DiskCache(tmp_path))


def test_second_run_hits(tmp_path):
    calls = []

    @node
    def double(x):
        calls.append(x)
        return 2 * x

    @node
    def inc(double):
        calls.append("inc")
        return double + 1

    p = Pipeline([double, inc], engine=_engine(tmp_path))
    assert p.run({"x": 5}) == {"double": 10, "inc": 11}
    assert p.run({"x": 5}) == {"double": 10, "inc": 11}
    assert calls == [5, "inc"]
    assert p.run({"x": 6}) == {"double": 12, "inc": 13}
    assert calls == [5, "inc", 6, "inc"]


def test_cache_shared_by_a_new_engine_on_the_same_directory(tmp_path):
    calls = []

    @node
    def f(x):
        calls.append(x)
        return x

    Pipeline([f]).run({"x": 1}, engine=_engine(tmp_path))
    Pipeline([f]).run({"x": 1}, engine=_engine(tmp_path))
    assert calls == [1]


def test_map_caches_per_item(tmp_path):
    calls = []

    @node
    def square(x):
        calls.append(x)
        return x * x

    p = Pipeline([square], engine=_engine(tmp_path))
    assert p.map({"x": [1, 2]}, map_over="x") == [{"square": 1}, {"square": 4}]
    assert p.map({"x": [1, 2, 3]}, map_over="x") == [{"square": 1}, {"square": 4},
                                                     {"square": 9}]
    assert calls == [1, 2, 3]
    assert p.run({"x": 2}) == {"square": 4}  # run and map share entries
    assert calls == [1, 2, 3]


def test_cache_false_always_reruns(tmp_path):
    calls = []

    @node(cache=False)
    def noisy(x):
        calls.append(x)
        return x

    @node
    def stable(noisy):
        calls.append("stable")
        return noisy

    p = Pipeline([noisy, stable], engine=_engine(tmp_path))
    p.run({"x": 1})
    p.run({"x": 1})
    assert calls == [1, "stable", 1]


def test_none_result_is_cached(tmp_path):
    calls = []

    @node
    def nothing(x):
        calls.append(x)
        return None

    p = Pipeline([nothing], engine=_engine(tmp_path))
    assert p.run({"x": 1}) == {"nothing": None}
    assert p.run({"x": 1}) == {"nothing": None}
    assert calls == [1]


def test_int_and_str_inputs_do_not_collide(tmp_path):
    @node
    def kind(x):
        return type(x).__name__

    p = Pipeline([kind], engine=_engine(tmp_path))
    assert p.run({"x": 1}) == {"kind": "int"}
    assert p.run({"x": "1"}) == {"kind": "str"}
    assert p.run({"x": 1.0}) == {"kind": "float"}
    assert p.run({"x": True}) == {"kind": "bool"}


class Mode(enum.Enum):
    FAST = 1
    SLOW = 2


def test_enum_inputs_do_not_collide(tmp_path):
    @node
    def which(mode):
        return mode.name

    p = Pipeline([which], engine=_engine(tmp_path))
    assert p.run({"mode": Mode.FAST}) == {"which": "FAST"}
    assert p.run({"mode": Mode.SLOW}) == {"which": "SLOW"}


def test_changing_upstream_code_invalidates_downstream(tmp_path):
    calls = []

    @node
    def down(up):
        calls.append(up)
        return up

    @node
    def up(x):
        return x * 2

    v1 = up
    engine = _engine(tmp_path)
    Pipeline([v1, down]).run({"x": 3}, engine=engine)
    Pipeline([v1, down]).run({"x": 3}, engine=engine)
    assert calls == [6]

    @node
    def up(x):  # noqa: F811 - new code, same value
        return x + x

    Pipeline([up, down]).run({"x": 3}, engine=engine)
    assert calls == [6, 6]


def test_changing_node_code_invalidates_itself(tmp_path):
    engine = _engine(tmp_path)

    @node
    def f(x):
        return x + 1

    assert Pipeline([f]).run({"x": 1}, engine=engine) == {"f": 2}

    @node
    def f(x):  # noqa: F811
        return x + 2

    assert Pipeline([f]).run({"x": 1}, engine=engine) == {"f": 3}


def test_multi_output_node_cached(tmp_path):
    calls = []

    @node(output_name=("a", "b"))
    def pair(x):
        calls.append(x)
        return x, -x

    p = Pipeline([pair], engine=_engine(tmp_path))
    assert p.run({"x": 2}) == {"a": 2, "b": -2}
    assert p.run({"x": 2}) == {"a": 2, "b": -2}
    assert calls == [2]


def test_unpicklable_result_warns_but_the_run_succeeds(tmp_path):
    lock = threading.Lock()

    @node
    def make_lock(x):
        return lock

    p = Pipeline([make_lock], engine=_engine(tmp_path))
    with pytest.warns(RuntimeWarning):
        assert p.run({"x": 1})["make_lock"] is lock


def test_nested_pipeline_cached(tmp_path):
    calls = []

    @node
    def inner(x):
        calls.append(x)
        return x + 1

    @node
    def outer(inner):
        return inner * 10

    sub = Pipeline([inner], name="sub")
    p = Pipeline([sub.as_node(), outer], engine=_engine(tmp_path))
    assert p.run({"x": 1}) == {"inner": 2, "outer": 20}
    assert p.run({"x": 1}) == {"inner": 2, "outer": 20}
    assert calls == [1]


def test_same_function_with_two_output_names_at_two_places(tmp_path):
    def plus_one(x):
        return x + 1

    a = node("a")(plus_one)
    b = node("b")(plus_one)
    engine = _engine(tmp_path)
    assert Pipeline([a]).run({"x": 1}, engine=engine) == {"a": 2}
    assert Pipeline([b]).run({"x": 1}, engine=engine) == {"b": 2}


def test_same_function_with_two_output_names_in_one_pipeline(tmp_path):
    def plus_one(x):
        return x + 1

    p = Pipeline([node("a")(plus_one), node("b")(plus_one)], engine=_engine(tmp_path))
    assert p.run({"x": 1}) == {"a": 2, "b": 2}


_NESTED_SCRIPT = textwrap.dedent("""
    import json, sys
    from gilfree import DiskCache, Pipeline, SeqEngine, node

    calls = []

    @node
    def inner_step(x):
        calls.append("inner")
        return x + 1

    @node
    def outer_step(inner_step):
        calls.append("outer")
        return inner_step * 2

    @node
    def per_item(v):
        calls.append("item")
        return v * 10

    inner = Pipeline([inner_step], name="inner")
    items = Pipeline([per_item], name="items")
    p = Pipeline([inner.as_node(), outer_step, items.as_node(map_over="v")], name="outer")
    out = p.run({"x": 1, "v": [1, 2]}, engine=SeqEngine(cache=DiskCache(sys.argv[1])))
    print(json.dumps([out, calls]))
""")


def test_nested_pipeline_keys_stable_across_processes(tmp_path):
    script = tmp_path / "nested_script.py"
    script.write_text(_NESTED_SCRIPT)
    results = []
    for seed in ("1", "999"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=PYTHON_DIR)
        out = subprocess.run([sys.executable, str(script), str(tmp_path / "cache")],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        results.append(__import__("json").loads(out.stdout))
    expected = {"inner_step": 2, "outer_step": 4, "per_item": [10, 20]}
    assert results[0] == [expected, ["inner", "item", "item", "outer"]]
    assert results[1] == [expected, []]


def test_dual_node_on_differently_configured_models_do_not_share_entries(tmp_path):
    from gilfree import DualNode, stateful

    @stateful
    class Scaler:
        def __init__(self, k):
            self.k = k

        def scale_one(self, x):
            return x * self.k

        def scale_many(self, x):
            return [v * self.k for v in x]

    engine = _engine(tmp_path)
    results = []
    for k in (2, 3):
        m = Scaler(k)
        p = Pipeline([DualNode("y", singular=m.scale_one, batch=m.scale_many)])
        results.append((p.run({"x": 1}, engine=engine)["y"],
                        [o["y"] for o in p.map({"x": [1, 2]}, map_over="x", engine=engine)]))
    assert results == [(2, [2, 4]), (3, [3, 6])]


def test_node_on_bound_methods_of_different_objects_do_not_share_entries(tmp_path):
    class Adder:
        def __init__(self, k):
            self.k = k

        def add(self, x):
            return x + self.k

    engine = _engine(tmp_path)
    assert Pipeline([node(Adder(1).add)]).run({"x": 0}, engine=engine) == {"add": 1}
    assert Pipeline([node(Adder(5).add)]).run({"x": 0}, engine=engine) == {"add": 5}


def _make_adder(k):
    def add(x):
        return x + k

    return add


def test_function_inputs_with_different_closures_do_not_collide(tmp_path):
    @node
    def apply(fn, x):
        return fn(x)

    p = Pipeline([apply], engine=_engine(tmp_path))
    assert p.run({"fn": _make_adder(1), "x": 0}) == {"apply": 1}
    assert p.run({"fn": _make_adder(100), "x": 0}) == {"apply": 100}


class _TreeNode:
    def __init__(self, parent=None):
        self.parent = parent
        self.children = []
        if parent is not None:
            parent.children.append(self)


def test_unhashable_cyclic_input_does_not_break_a_cached_run(tmp_path):
    @node
    def depth(t):
        d = 0
        while t.parent is not None:
            t, d = t.parent, d + 1
        return d

    child = _TreeNode(_TreeNode())
    assert Pipeline([depth]).run({"t": child}) == {"depth": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a warning that the node is not cached is fine
        assert Pipeline([depth], engine=_engine(tmp_path)).run({"t": child}) == {"depth": 1}
