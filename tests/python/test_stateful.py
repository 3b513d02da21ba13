"""``@stateful``: lazy construction, pickling, cache keys, hooks, thread safety."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gilfree import DiskCache, DualNode, Pipeline, SeqEngine, node, stateful
from gilfree.hashing import hash_value

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import stateful_models as sm  # noqa: E402
from stateful_models import EVENTS, Encoder, KeyedEncoder, WithTeardown  # noqa: E402

PYTHON_DIR = str(Path(__file__).resolve().parents[2] / "python")


@pytest.fixture(autouse=True)
def _reset_events():
    EVENTS.clear()
    yield


def builds(name: str = "Encoder") -> int:
    return EVENTS[f"{name}.build"]


# -- laziness ---------------------------------------------------------------------------
def test_construction_does_not_build():
    m = Encoder(3, tag="x")
    assert builds() == 0
    assert "not initialized" in repr(m)


def test_repr_before_and_after():
    m = Encoder(2)
    assert repr(m) == "<Encoder (not initialized)>"
    m.scale
    assert "not initialized" not in repr(m)


def test_public_attribute_access_builds_once():
    m = Encoder(3)
    assert m.scale == 3
    assert m.tag == "t"
    assert builds() == 1


def test_call_builds():
    m = Encoder(4)
    assert m(2) == 8
    assert builds() == 1


def test_method_access_does_not_build_until_called():
    m = Encoder(5)
    method = m.encode_one
    assert builds() == 0
    assert callable(method)
    assert method.__name__ == "encode_one"
    assert builds() == 0
    assert method(2) == 10
    assert builds() == 1
    assert m.encode_many([1, 2]) == [5, 10]
    assert builds() == 1


def test_a_built_wrapper_forwards_methods_as_they_are_now():
    # Public methods are declared on the wrapper class (a cheap call path), yet every
    # access still asks the built instance: its own attribute of that name wins, and a
    # method replaced on the class later is the one called.
    @stateful
    class Model:
        def __init__(self):
            self.calls = 0

        def predict(self, x):
            self.calls += 1
            return x + 1

        def swap(self):
            self.predict = lambda x: x * 100  # an instance attribute shadows the method

    m = Model()
    assert Model.predict.__name__ == "predict" and not m._is_built  # class access: the function
    assert m.predict(1) == 2 and m.calls == 1
    m.swap()
    assert m.predict(2) == 200
    original = Model.__wrapped__.predict
    Model.predict = lambda self, x: -x  # goes to the wrapped class
    try:
        assert Model().predict(3) == -3
        assert m.predict(2) == 200  # m's own attribute still wins
    finally:
        Model.predict = original


def test_private_attribute_access_does_not_build():
    m = Encoder(1)
    with pytest.raises(AttributeError):
        m._not_there
    assert builds() == 0


def test_missing_public_attribute_raises_attribute_error():
    m = Encoder(1)
    with pytest.raises(AttributeError):
        m.not_there


def test_setting_an_attribute_goes_to_the_instance():
    m = Encoder(1)
    m.scale = 7
    assert m.encode_one(1) == 7
    assert builds() == 1


def test_each_object_builds_its_own_instance():
    a, b = Encoder(1), Encoder(2)
    assert a.encode_one(3) == 3 and b.encode_one(3) == 6
    assert builds() == 2


def test_constructor_error_propagates_and_a_later_access_retries():
    attempts = []

    @stateful
    class Flaky:
        def __init__(self):
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("first build fails")
            self.ok = True

    f = Flaky()
    with pytest.raises(RuntimeError, match="first build fails"):
        f.ok
    assert f.ok is True
    assert len(attempts) == 2


# -- identity of the wrapper ------------------------------------------------------------
def test_marker():
    assert Encoder.__hypernode_stateful__ is True
    m = Encoder()
    assert getattr(m, "__hypernode_stateful__", False) is True
    assert builds() == 0


def test_name_qualname_module_doc_preserved():
    assert Encoder.__name__ == "Encoder"
    assert Encoder.__qualname__ == "Encoder"
    assert Encoder.__module__ == "stateful_models"
    assert Encoder.__doc__ == "A stand-in for an expensive model."

    @stateful
    class Local:
        pass

    assert Local.__name__ == "Local"
    assert Local.__qualname__.endswith("<locals>.Local")
    assert Local.__module__ == __name__


def test_isinstance_of_wrapper():
    assert isinstance(Encoder(), Encoder)


def test_stateful_rejects_non_class():
    with pytest.raises(TypeError):
        stateful(lambda: 1)


def test_class_attributes_reachable_through_wrapper():
    assert Encoder.heavy_marker == "HEAVY-STATE-NEVER-PICKLED"
    assert Encoder.describe() == "Encoder model"
    assert builds() == 0


def test_build_count_in_a_class_attribute():
    before = Encoder.builds
    m = Encoder(2)
    assert Encoder.builds == before
    m.encode_one(1)
    m.encode_one(2)
    assert Encoder.builds == before + 1


# -- pickling ---------------------------------------------------------------------------
def test_standard_pickle_roundtrip_carries_only_args():
    m = Encoder(3, tag="p")
    m.encode_one(1)  # built in this process
    assert builds() == 1
    data = pickle.dumps(m)
    assert b"HEAVY-STATE-NEVER-PICKLED" not in data
    copy = pickle.loads(data)
    assert type(copy) is Encoder
    assert builds() == 1
    assert repr(copy) == "<Encoder (not initialized)>"
    assert copy.encode_one(2) == 6
    assert copy.tag == "p"
    assert builds() == 2


def test_standard_pickle_unbuilt_stays_unbuilt():
    copy = pickle.loads(pickle.dumps(Encoder(2)))
    assert builds() == 0
    assert copy(5) == 10


def test_lazy_method_pickles_without_building():
    m = Encoder(4)
    method = pickle.loads(pickle.dumps(m.encode_one))
    assert builds() == 0
    assert method(2) == 8
    assert builds() == 1


def test_pickle_in_a_fresh_process():
    m = Encoder(6)
    m.scale  # build here; the child must build its own
    data = pickle.dumps(m)
    code = ("import pickle, sys; import stateful_models as sm; "
            "o = pickle.loads(sys.stdin.buffer.read()); "
            "before = sm.EVENTS['Encoder.build']; r = o.encode_one(7); "
            "print(before, r, sm.EVENTS['Encoder.build'])")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PYTHON_DIR, HERE]))
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                         env=env, timeout=60, check=True)
    assert out.stdout.decode().split() == ["0", "42", "1"]


def _dynamic_class():
    @stateful
    class Dynamic:
        def __init__(self, k):
            self.k = k
            self.heavy = "-".join(["DYNAMIC", "HEAVY"]) * 5  # not a code constant

        def scaled(self, x):
            return x * self.k

    return Dynamic


def test_cloudpickle_roundtrip_for_class_defined_in_a_function():
    cloudpickle = pytest.importorskip("cloudpickle")
    Dynamic = _dynamic_class()
    d = Dynamic(3)
    assert d.scaled(2) == 6  # built
    data = cloudpickle.dumps(d)
    assert b"DYNAMIC-HEAVY" not in data  # the built state never travels
    copy = cloudpickle.loads(data)
    assert "not initialized" in repr(copy)
    assert copy.scaled(5) == 15


def test_cloudpickle_roundtrip_by_value_in_a_fresh_process():
    cloudpickle = pytest.importorskip("cloudpickle")
    ns = {"__name__": "__main__", "stateful": stateful}
    exec("@stateful\nclass MainModel:\n"
         "    def __init__(self, k):\n        self.k = k\n"
         "    def scaled(self, x):\n        return x * self.k\n", ns)
    obj = ns["MainModel"](4)
    assert obj.__class__.__module__ == "__main__"
    data = cloudpickle.dumps(obj)
    code = ("import sys, cloudpickle; o = cloudpickle.loads(sys.stdin.buffer.read()); "
            "print(repr(o)); print(o.scaled(3))")
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    assert lines == ["<MainModel (not initialized)>", "12"]


# -- cache keys -------------------------------------------------------------------------
def test_default_cache_key_by_args_without_building():
    assert Encoder(2).__cache_key__() == Encoder(2).__cache_key__()
    assert Encoder(2, tag="a").__cache_key__() != Encoder(2, tag="b").__cache_key__()
    assert Encoder(2).__cache_key__() != Encoder(3).__cache_key__()
    assert hash_value(Encoder(2)) == hash_value(Encoder(2))
    assert hash_value(Encoder(2)) != hash_value(Encoder(3))
    assert builds() == 0


def test_default_cache_key_ignores_built_state():
    a, b = Encoder(2), Encoder(2)
    a.encode_one(1)
    assert a.__cache_key__() == b.__cache_key__()


def test_default_cache_key_differs_between_classes_with_same_args():
    @stateful
    class Other:
        def __init__(self, scale=1, *, tag="t"):
            pass

    assert Other(2).__cache_key__() != Encoder(2).__cache_key__()


def test_custom_cache_key():
    assert KeyedEncoder("v1", noise=1).__cache_key__() == "keyed-v1"
    assert hash_value(KeyedEncoder("v1", noise=1)) == hash_value(KeyedEncoder("v1", noise=2))
    assert hash_value(KeyedEncoder("v1")) != hash_value(KeyedEncoder("v2"))


def test_cached_run_with_a_stateful_input_does_not_rebuild(tmp_path):
    @node
    def encode(model, x):
        return model.encode_one(x)

    engine = SeqEngine(cache=DiskCache(tmp_path))
    p = Pipeline([encode], engine=engine)
    assert p.run({"model": Encoder(3), "x": 2}) == {"encode": 6}
    assert builds() == 1
    # A fresh object with the same arguments has the same key: a hit, nothing built.
    assert p.run({"model": Encoder(3), "x": 2}) == {"encode": 6}
    assert builds() == 1
    assert p.run({"model": Encoder(4), "x": 2}) == {"encode": 8}
    assert builds() == 2


# -- hooks ------------------------------------------------------------------------------
def test_teardown_forwards_to_instance():
    w = WithTeardown()
    assert w.ping() == "pong"
    w.__teardown__()
    assert EVENTS["WithTeardown.teardown"] == 1


def test_teardown_of_unbuilt_object_does_not_build():
    w = WithTeardown()
    w.__teardown__()
    assert EVENTS["WithTeardown.build"] == 0
    assert EVENTS["WithTeardown.teardown"] == 0


def test_teardown_without_hook_is_a_no_op():
    m = Encoder()
    m.scale
    m.__teardown__()


# -- threads ----------------------------------------------------------------------------
def test_sixteen_threads_racing_build_exactly_once():
    lock = threading.Lock()
    count = [0]

    @stateful
    class Slow:
        def __init__(self):
            with lock:
                count[0] += 1
            # widen the race window without sleeping
            sum(i * i for i in range(20_000))
            self.ready = True

        def value(self, x):
            return x + 1

    obj = Slow()
    barrier = threading.Barrier(16)
    results = [None] * 16
    errors = []

    def worker(i):
        try:
            barrier.wait(timeout=30)
            results[i] = obj.value(i) if i % 2 else obj.ready
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert count[0] == 1
    assert results == [True if i % 2 == 0 else i + 1 for i in range(16)]


# -- in pipelines -----------------------------------------------------------------------
def test_dual_node_on_stateful_model_stays_unbuilt_until_the_pipeline_runs():
    model = Encoder(10)
    dual = DualNode("encoded", singular=model.encode_one, batch=model.encode_many)
    p = Pipeline([dual])
    repr(p)
    p.graph.execution_order
    assert builds() == 0
    assert "not initialized" in repr(model)
    assert p.map({"x": [1, 2, 3]}, map_over="x") == [{"encoded": 10}, {"encoded": 20},
                                                     {"encoded": 30}]
    assert builds() == 1
    assert p.run({"x": 4}) == {"encoded": 40}
    assert builds() == 1


def test_stateful_input_is_built_once_for_a_whole_map():
    @node
    def encode(model, x):
        return model.encode_one(x)

    p = Pipeline([encode]).bind(model=Encoder(2))
    assert builds() == 0
    out = p.map({"x": list(range(5))}, map_over="x")
    assert [o["encode"] for o in out] == [0, 2, 4, 6, 8]
    assert builds() == 1
    assert EVENTS["Encoder.encode_one"] == 5


def test_module_import_did_not_build_anything():
    # Importing the module defines classes only.
    assert sm.EVENTS["Encoder.build"] == 0
