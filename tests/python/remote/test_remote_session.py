"""The remote layer itself (gilfree/remote/), in this process: what a driver encodes,
what one worker Session makes of it, what the driver decodes. ProcessEngine's and
DaskEngine's workers run this same session; the engines only carry the bytes."""

from __future__ import annotations

import ast
import os
import threading
from pathlib import Path

import pytest

import gilfree
from gilfree import Pipeline, SerializationError, node, stateful
from gilfree import transport
from gilfree.callbacks import CallbackContext
from gilfree.run.execute import Runtime
from gilfree.model.plan import compile_plan
from gilfree.remote import driver
from gilfree.remote.messages import COLS, ROWS, Event, Part, RemoteOptions, Result
from gilfree.remote.session import Session, release_stateful
from gilfree.run.stages import Skipped


@node(output_name="y")
def double(x):
    if x == 13:
        raise KeyError("thirteen")
    return 2 * x


def _generator():
    yield 1


@pytest.fixture(autouse=True)
def sessions(monkeypatch):
    """The sessions a test makes, whose maps end with it: a map left open in this process
    would change how later tests' @stateful constructors fail (once per map)."""
    made = []

    class Tracked(Session):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setitem(globals(), "Session", Tracked)
    yield
    for session in made:
        for map_id in list(session.maps):
            session.end_map(map_id)


def _run(pipeline, xs, *, collect=False, shm=True, session=None, callbacks=None,
         first=0, skipped=()):
    """One map of ``xs`` as one batch through a Session: (Result, results in order).
    ``first``: the map item number of xs[0]; ``skipped``: offsets sent as Skipped
    placeholders (items a streaming stage's micro-batch does not hold)."""
    plan = compile_plan(pipeline, {"x"})
    ctx = CallbackContext() if callbacks else None
    rt = Runtime(collect=collect, callbacks=callbacks, ctx=ctx)
    session = session or Session()
    body, fds = driver.encode_payload(plan, {}, RemoteOptions.of(rt), shm=shm)
    session.load_payload("key", body, fds)
    rows = [{"x": x} for x in xs]
    body, fds = driver.encode_batch(7, rows, first, ["x"], driver.consumers(plan, ["x"]),
                                    failed={k: Skipped() for k in skipped}, shm=shm)
    out_body, out_fds = session.run_batch("key", body, fds, shm=shm)
    if not shm:
        assert out_fds == []
    result = driver.decode_result(out_body, out_fds, 0, len(xs))
    out = [None] * len(xs)
    if result.error is None:
        driver.place(out, 0, result.parts, plan.outputs)
    return result, out


@pytest.mark.parametrize("shm", [True, False])
def test_a_batch_round_trips_as_named_messages(shm):
    result, out = _run(Pipeline([double]), [1, 2, 3], shm=shm)
    assert isinstance(result, Result) and result.error is None and result.events == []
    assert all(isinstance(p, Part) for p in result.parts)
    assert sum(p.count for p in result.parts) == 3
    assert {p.mode for p in result.parts} == {COLS}  # every item succeeded: columns
    assert out == [{"y": 2}, {"y": 4}, {"y": 6}]


def test_large_arrays_come_back_through_shared_memory_only_when_asked():
    np = pytest.importorskip("numpy")

    @node(output_name="arr")
    def big(x):
        return np.full(transport.SHM_THRESHOLD, x, dtype=np.uint8)  # protocol 5: out of band

    plan = compile_plan(Pipeline([big]), {"x"})
    for shm, memfds in ((True, 1), (False, 0)):
        session = Session()
        body, fds = driver.encode_payload(plan, {}, RemoteOptions(), shm=shm)
        session.load_payload("k", body, fds)
        body, fds = driver.encode_batch(1, [{"x": 1}, {"x": 2}], 0, ["x"], {}, shm=shm)
        out_body, out_fds = session.run_batch("k", body, fds, shm=shm)
        assert len(out_fds) == memfds  # Dask carries bytes alone: everything in band
        out = [None, None]
        driver.place(out, 0, driver.decode_result(out_body, out_fds, 0, 2).parts, ["arr"])
        assert [int(r["arr"].sum()) for r in out] == [transport.SHM_THRESHOLD,
                                                     2 * transport.SHM_THRESHOLD]


def test_each_failure_stays_with_its_item_under_collect():
    result, out = _run(Pipeline([double]), [1, _generator(), 13, 4], collect=True)
    assert result.error is None and {p.mode for p in result.parts} <= {COLS, ROWS}
    assert out[0] == {"y": 2} and out[3] == {"y": 8}
    assert isinstance(out[1], SerializationError)
    assert str(out[1]).startswith("cannot send input 'x' (generator: TypeError: cannot "
                                  "pickle 'generator' object) of map item 1 (used by "
                                  "node(s) ['double']) to a worker process")
    assert isinstance(out[2], KeyError) and "'double' (map item 2)" in out[2].__notes__[-1]


def test_skipped_placeholders_keep_the_batch_on_the_column_path(monkeypatch):
    # The row path (execute_map_around) must not run: it is what placeholders used to
    # force, at ~5 us an item more in W9's streaming process stage.
    import gilfree.run.execute as execute

    def no_row_path(*args, **kwargs):
        raise AssertionError("the row path ran")

    monkeypatch.setattr(execute, "execute_map_around", no_row_path)
    xs = list(range(20))
    result, out = _run(Pipeline([double]), xs, collect=True, skipped={0, 5, 6, 13, 19})
    assert {p.mode for p in result.parts} == {COLS}
    assert [out[k] for k in range(20) if k not in {0, 5, 6, 13, 19}] == [
        {"y": 2 * x} for x in xs if x not in {0, 5, 6, 13, 19}]
    # An item failing among placeholders: rows, each failure with its own item number
    # (first + offset), each placeholder a Skipped.
    result, out = _run(Pipeline([double]), [11, 12, 13, 14], collect=True, first=100,
                       skipped={1})
    assert ROWS in {p.mode for p in result.parts}
    assert out[0] == {"y": 22} and isinstance(out[1], Skipped) and out[3] == {"y": 28}
    assert isinstance(out[2], KeyError) and "(map item 102)" in out[2].__notes__[-1]


def test_the_error_that_stops_a_batch_comes_back_with_the_worker_traceback():
    result, _ = _run(Pipeline([double]), [12, 13, 14])
    assert isinstance(result.error, KeyError) and result.parts is None
    assert isinstance(result.error.__cause__, transport.RemoteTraceback)
    assert 'raise KeyError("thirteen")' in str(result.error.__cause__)


def test_a_payload_that_does_not_unpickle_fails_each_batch_with_a_clear_error():
    session = Session()
    session.load_payload("bad", b"\x00\x00\x00\x00not a pickle", [])
    body, fds = driver.encode_batch(1, [{"x": 1}], 0, ["x"], {})
    result = driver.decode_result(*session.run_batch("bad", body, fds), 0, 1)
    assert isinstance(result.error, SerializationError)
    assert "must be importable on every worker" in str(result.error)


def test_a_batch_for_a_payload_that_failed_releases_its_shared_memory():
    np = pytest.importorskip("numpy")
    session = Session()
    session.load_payload("bad", b"\x00\x00\x00\x00not a pickle", [])
    rows = [{"x": np.zeros(transport.SHM_THRESHOLD, dtype=np.uint8)}]
    for _ in range(2):  # each batch: the payload's error, and its memfd closed
        body, fds = driver.encode_batch(1, rows, 0, ["x"], {})
        assert len(fds) == 1  # the array travels in a memfd
        memfd = os.fstat(fds[0]).st_ino
        result = driver.decode_result(*session.run_batch("bad", body, fds), 0, 1)
        assert isinstance(result.error, SerializationError)
        # Closed by the session: no memfd left behind. (Its number may be another file's
        # by now: threads of other tests' engines open sockets meanwhile.)
        try:
            assert os.fstat(fds[0]).st_ino != memfd
        except OSError:
            pass


class _Record:
    """Every event it is told (a plain object: PipelineCallback's no-op hooks would hide
    ``__getattr__``)."""

    def __init__(self):
        self.seen = []

    def __getattr__(self, name):
        if not name.startswith("on_"):
            raise AttributeError(name)
        return lambda *args: self.seen.append((name, list(args[-1].hierarchy_path)))


def test_events_are_recorded_in_the_worker_and_replayed_without_its_map_announcements():
    recorder = _Record()
    result, out = _run(Pipeline([double]), [1, 2], callbacks=[recorder])
    assert out == [{"y": 2}, {"y": 4}]
    names = [e.name for e in result.events]
    assert all(isinstance(e, Event) for e in result.events)
    assert "on_map_start" in names and names.count("on_node_end") == 2
    rt = Runtime(callbacks=[recorder], ctx=CallbackContext())
    nested = Event("on_map_start", (3,), ["outer", "inner"])  # a nested map's: kept
    driver.replay(rt, [*result.events, nested], depth=0)
    replayed = [name for name, _ in recorder.seen]
    assert "on_map_end" not in replayed
    assert replayed.count("on_map_start") == 1 and replayed.count("on_node_end") == 2
    assert ("on_map_start", ["outer", "inner"]) in recorder.seen


def test_options_are_one_object_built_from_the_runtime():
    ctx = CallbackContext()
    ctx.hierarchy_path = ["outer"]
    rt = Runtime(retries=2, batch_size=8, collect=True, callbacks=[_Record()], ctx=ctx)
    opts = RemoteOptions.of(rt, timeout=1.5)
    assert opts == RemoteOptions(cache=None, retries=2, batch_size=8, collect=True,
                                 events=True, path=("outer",), timeout=1.5)
    worker = opts.runtime()
    assert (worker.retries, worker.batch_size, worker.collect) == (2, 8, True)


BUILT: list = []
RELEASED: list = []


@stateful
class Model:
    def __init__(self, tag):
        BUILT.append(tag)
        self.tag = tag

    def __teardown__(self):
        RELEASED.append(self.tag)


def test_a_stateful_object_is_one_instance_per_key_until_released():
    keys: set[str] = set()
    tag = f"m-{threading.get_ident()}"
    first = transport.loads(*transport.dumps(Model(tag), keys=keys))
    second = transport.loads(*transport.dumps(Model(tag), keys=keys))
    assert first is second and len(keys) == 1
    first.tag  # noqa: B018 - built on first use
    assert BUILT.count(tag) == 1
    release_stateful(sorted(keys))
    assert RELEASED.count(tag) == 1
    third = transport.loads(*transport.dumps(Model(tag)))
    assert third is not first


def test_only_the_transport_module_pickles():
    """Everything that crosses a process boundary (and the disk cache) is pickled by
    gilfree.transport: no other module imports a pickler."""
    root = Path(gilfree.__file__).parent
    picklers = {"pickle", "_pickle", "cloudpickle", "dill", "tblib"}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root) == Path("remote", "transport.py"):
            continue
        for n in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                     [n.module or ""] if isinstance(n, ast.ImportFrom) and not n.level else [])
            offenders += [f"{path.relative_to(root)}: {m}" for m in names
                          if m.split(".")[0] in picklers]
    assert offenders == []


def _one_sum(y):
    return y


def _sums(y):
    return list(y)


def test_a_batch_reports_the_timing_of_batch_calls_only_when_they_run_beside():
    """Result.timing (seconds per item of the per-item steps, seconds of the batch calls)
    sizes a streaming process stage's last batches so that none waits for the previous
    batch's calls; calls that do not run beside the next batch (they compute: nothing
    waits for them) are not reported."""
    from gilfree import DualNode

    session = Session(overlap=True)  # a ProcessEngine worker's: batch calls may go beside
    p = Pipeline([double, DualNode("n", _one_sum, _sums)])
    _run(p, [1, 2, 3], session=session)  # the first batch here measures its calls
    for beside in (False, True):
        session.payloads["key"].overlap = beside
        result, out = _run(p, [1, 2, 3], session=session)
        assert [r["n"] for r in out] == [2, 4, 6]
        if beside:
            item_s, calls_s = result.timing
            assert item_s > 0 and calls_s > 0
        else:
            assert result.timing is None
