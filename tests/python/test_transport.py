"""gilfree.transport: pickling for worker processes, large buffers in shared memory,
@stateful keys, boxed exceptions."""

from __future__ import annotations

import os
import pickle
import threading
import traceback

import pytest

from gilfree import stateful, transport
from gilfree.engines import SeqEngine
from gilfree.errors import SerializationError


def roundtrip(obj):
    body, fds = transport.dumps(obj)
    return transport.loads(body, fds), fds


def test_plain_values_stay_in_band():
    value = {"a": [1, 2.5, "x"], "b": (None, b"small")}
    out, fds = roundtrip(value)
    assert out == value and fds == []


def test_large_buffers_go_out_of_band_and_come_back_as_views():
    np = pytest.importorskip("numpy")
    arrays = [np.arange(100_000, dtype=np.float64) * k for k in range(3)]
    body, fds = transport.dumps({"arrays": arrays, "tag": "t"})
    assert len(fds) == 1 and len(body) < 10_000  # 2.4 MB of data, not in the pickle
    out = transport.loads(body, fds)
    for k, a in enumerate(out["arrays"]):
        assert (a == arrays[k]).all() and a.flags.writeable
    with pytest.raises(OSError):
        os.fstat(fds[0])  # loads took ownership of the descriptor


def test_pickling_leaves_no_garbage_holding_what_it_pickled():
    # A pickler that was a reference cycle (its buffer callback a bound method of its own)
    # lived until the cyclic GC ran, keeping the rows it pickled and their pickle alive:
    # a process stage of 1 MiB items held ~50 of them, 250 MiB of the driver's memory.
    import gc
    import weakref

    class Row(dict):  # (a plain dict cannot be weakly referenced)
        pass

    row = Row(blob=b"x" * (1 << 20))
    gone = weakref.ref(row)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        body, fds = transport.dumps([row])
        transport.close_fds(fds)
        del row
        assert gone() is None, "the pickler's memo still holds the row (a cycle)"
    finally:
        if was_enabled:
            gc.enable()


def test_closures_and_lambdas_travel_by_value():
    offset = 5
    fn, _ = roundtrip(lambda x: x + offset)
    assert fn(1) == 6


CELL = """
def outer(x):
    inner = lambda y: 1 / y
    return inner(x)
"""


@pytest.mark.parametrize("pickled", ["frame", "by value"])
def test_code_sent_by_value_keeps_its_file_name(tmp_path, pickled):
    # A notebook cell or a script's __main__: not importable, so sent by value. The
    # worker's traceback must name the file and show the line (cloudpickle 3.1.3 alone
    # writes "<dynamic-code>" for the file, and no source line is found).
    path = tmp_path / "cell.py"
    path.write_text(CELL)
    namespace = {"__name__": "not_importable"}
    exec(compile(CELL, str(path), "exec"), namespace)
    if pickled == "frame":  # ProcessEngine's frames
        fn, _ = roundtrip(namespace["outer"])
    else:  # @stateful objects, exceptions, DaskEngine
        fn = pickle.loads(transport.pickle_by_value(namespace["outer"]))
    assert fn is not namespace["outer"] and fn.__code__.co_filename == str(path)
    with pytest.raises(ZeroDivisionError) as info:
        fn(0)
    text = "".join(traceback.format_exception(info.value))
    assert text.count(f'File "{path}"') == 2  # outer and the lambda nested in it
    assert "return inner(x)" in text and "inner = lambda y: 1 / y" in text


@stateful
class Model:
    def __init__(self, size, *, name="m"):
        self.size = size


def test_stateful_key_is_class_and_arguments():
    assert transport.stateful_key(Model(3)) == transport.stateful_key(Model(3))
    assert transport.stateful_key(Model(3)) != transport.stateful_key(Model(4))
    assert transport.stateful_key(Model(3)) != transport.stateful_key(Model(3, name="n"))


def test_stateful_objects_resolve_to_one_instance_per_process():
    m = Model(3)
    first, _ = roundtrip([m, m])
    second, _ = roundtrip(Model(3))
    assert first[0] is first[1] is second
    assert not m._is_built  # never built by pickling


def test_engines_stay_behind():
    out, _ = roundtrip({"engine": SeqEngine(), "x": 1})
    assert out == {"engine": None, "x": 1}


def test_content_key_sees_buffer_contents():
    np = pytest.importorskip("numpy")
    a, b = np.zeros(100_000), np.ones(100_000)
    ka = transport.content_key(*transport.dumps(a))
    kb = transport.content_key(*transport.dumps(b))
    assert ka != kb and ka == transport.content_key(*transport.dumps(np.zeros(100_000)))


class NeedsTwo(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def test_boxed_exceptions_keep_type_notes_and_remote_traceback():
    try:
        raise KeyError("k")
    except KeyError as exc:
        exc.add_note("gilfree: raised in node 'f' (map item 2)")
        out = pickle.loads(pickle.dumps(transport.box_exception(exc)))
    assert type(out) is KeyError and out.__notes__ == ["gilfree: raised in node 'f' (map item 2)"]
    assert isinstance(out.__cause__, transport.RemoteTraceback)
    assert "raise KeyError" in str(out.__cause__)


@pytest.mark.parametrize("exc", [
    RuntimeError("with a lock"),   # does not pickle (a lock attribute, set below)
    NeedsTwo("a", "b"),           # pickles, does not unpickle
])
def test_exceptions_that_do_not_travel_come_back_as_text(exc):
    if isinstance(exc, RuntimeError):
        exc.lock = threading.Lock()
    out = pickle.loads(pickle.dumps(transport.box_exception(exc)))
    if isinstance(exc, NeedsTwo) and type(out) is NeedsTwo:
        pytest.skip("this Python rebuilds the exception after all")
    assert isinstance(out, transport.RemoteError)
    assert type(exc).__name__ in str(out) and str(exc) in str(out)


def test_serialization_error_names_what_failed():
    culprit = transport.find_unpicklable(lambda: {"input 'a'": 1, "input 'b'": threading.Lock()})
    assert culprit.startswith("input 'b' (lock")
    err = transport.serialization_error(culprit, "to the workers", TypeError("nope"))
    assert isinstance(err, SerializationError) and "input 'b'" in str(err)
