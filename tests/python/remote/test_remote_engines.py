"""ProcessEngine and DaskEngine over the one remote layer (gilfree/remote/): where the two
engines' worker runtimes had drifted apart, they now behave the same. Each test runs on
both engines."""

from __future__ import annotations

import threading

import pytest

from gilfree import DualNode, Pipeline, PipelineCallback, SerializationError, node
from gilfree.engines import ProcessEngine


@pytest.fixture(params=["process", "dask"])
def make_engine(request):
    """Engines of one kind, each shut down after the test (a DaskEngine runs on the
    session's cluster: its shutdown leaves the caller's client open)."""
    made = []

    def make(**options):
        if request.param == "process":
            made.append(ProcessEngine(workers=2, **options))
        else:
            from gilfree.engines import DaskEngine

            made.append(DaskEngine(client=request.getfixturevalue("dask_client"), **options))
        return made[-1]
    yield make
    for e in made:
        e.shutdown()


def _sizes_a(x):  # each item: how many items its batch call got
    return [len(x)] * len(x)


def _sizes_b(a):
    return [len(a)] * len(a)


def test_dual_nodes_of_different_sizes_get_full_batches(make_engine):
    """Two DualNodes asking for batches of 4 and of 6: each worker batch is a whole
    multiple of both (12, their LCM), so both batch functions get full batches. (Was: the
    largest size on DaskEngine, 6, and the size-4 node got batches of 4 and 2.)"""
    p = Pipeline([DualNode("a", lambda x: 1, _sizes_a, batch_size=4),
                  DualNode("b", lambda a: 1, _sizes_b, batch_size=6)])
    out = p.map({"x": list(range(48))}, map_over="x", engine=make_engine())
    assert [r["a"] for r in out] == [4] * 48
    assert [r["b"] for r in out] == [6] * 48


class _Events(PipelineCallback):
    def __init__(self):
        self.ends = []
        self.lock = threading.Lock()

    def on_node_end(self, node_id, outputs, duration, ctx):
        with self.lock:
            self.ends.append(outputs)


@node(output_name="handle")
def open_handle(x):
    return threading.Lock() if x == 1 else x


def test_an_event_whose_values_do_not_pickle_still_reaches_the_callbacks(make_engine):
    """A node's output that does not pickle fails its item (SerializationError); its
    on_node_end event still arrives, the value told as its repr. (Was: ProcessEngine
    dropped the event, DaskEngine sent the whole outputs dict as one string.)"""
    events = _Events()
    p = Pipeline([open_handle])
    out = p.map({"x": [0, 1, 2]}, map_over="x", on_error="collect",
                engine=make_engine(callbacks=[events]))
    assert out[0] == {"handle": 0} and out[2] == {"handle": 2}
    assert isinstance(out[1], SerializationError)
    assert "output 'handle' of node 'open_handle' (map item 1)" in str(out[1])
    assert len(events.ends) == 3, events.ends
    bad = [e for e in events.ends if e["handle"] not in (0, 2)]
    assert len(bad) == 1 and isinstance(bad[0]["handle"], str)
    assert "lock" in bad[0]["handle"]


@node(output_name="v")
def from_array(x):
    k = int(x[0]) - 100
    if k == 3:
        return threading.Lock()
    import numpy as np

    return np.full(100_000, k, dtype=np.uint8)


def test_large_results_stay_right_when_an_event_value_does_not_pickle(make_engine):
    """Arrays above the shared-memory threshold in the results and in the events, and
    one event value that does not pickle: every item keeps its own array. (Was: on
    ProcessEngine the answer was pickled again into a fresh memfd, holding the events'
    arrays, and the results read other items' inputs from it.)"""
    np = pytest.importorskip("numpy")
    events = _Events()
    xs = [np.full(100_000, k + 100, dtype=np.uint8) for k in range(8)]
    out = Pipeline([from_array]).map({"x": xs}, map_over="x", on_error="collect",
                                     engine=make_engine(batch_size=8, callbacks=[events]))
    assert isinstance(out[3], SerializationError)
    assert [int(r["v"][0]) for k, r in enumerate(out) if k != 3] == [0, 1, 2, 4, 5, 6, 7]
    assert len(events.ends) == 8
