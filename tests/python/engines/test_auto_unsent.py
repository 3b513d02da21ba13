"""AutoEngine and values that do not pickle: worker processes take inputs and send
outputs by pickle, and AutoEngine, not the user, chose them. A pipeline that runs on
ThreadEngine runs on AutoEngine too: a node whose output does not pickle stays here, and
an item whose value could not travel runs again here; the user's own hints keep
ProcessEngine's rule (the item fails with a SerializationError)."""

from __future__ import annotations

import contextlib
import threading

import pytest

from gilfree import AutoEngine, Pipeline, PipelineCallback, node
from gilfree.errors import SerializationError

from cpu_busy import Unlocked, spin

XS = list(range(64))  # 64 calls of ~2-8 ms of pure Python: worth worker processes
LOCK = type(threading.Lock())


@pytest.fixture
def engine():
    e = AutoEngine()
    yield e
    e.shutdown()


def row_of(engine, name):
    return next(r for r in engine.explain().rows if r["node"] == name)


@node(output_name="obj")
def lock_from_50(x):
    return spin(40_000) + x, (threading.Lock() if x >= 50 else None)


@node(output_name="gen")
def counter(x):
    s = spin(40_000) + x
    return (v for v in range(s % 3 + 1))  # a generator: it never pickles


@node(output_name="n")
def drain(gen):
    return sum(1 for _ in gen)


@node(output_name="burned")
def burn_under(x, lock):
    with lock:
        return spin(40_000) + x


@node(output_name="checked")
def fails_at_30_and_40(x):
    if x in (30, 40):
        raise ValueError(f"bad {x}")
    return spin(40_000) + x, (threading.Lock() if x == 50 else None)


class Maps(PipelineCallback):
    def __init__(self):
        self.events = []

    def on_map_start(self, *a):
        self.events.append("start")

    def on_map_end(self, *a):
        self.events.append("end")


def test_an_item_whose_output_does_not_pickle_runs_here():
    # (Under "raise", the map stopped at item 50's error and ran again under "collect":
    # still one map to the callbacks.)
    maps = Maps()
    engine = AutoEngine(callbacks=[maps])
    try:
        check_output_at_50(engine)
    finally:
        engine.shutdown()
    assert maps.events == ["start", "end"] * 2


def check_output_at_50(engine):
    p = Pipeline([lock_from_50])
    out = p.map({"x": XS}, map_over="x", engine=engine)
    assert [r["obj"][0] for r in out] == [spin(40_000) + x for x in XS]
    assert [isinstance(r["obj"][1], LOCK) for r in out] == [x >= 50 for x in XS]
    assert row_of(engine, "lock_from_50")["executor"] == "process"  # (as chosen)
    # The next map keeps it here, and says why.
    out = p.map({"x": XS}, map_over="x", engine=engine)
    assert [isinstance(r["obj"][1], LOCK) for r in out] == [x >= 50 for x in XS]
    row = row_of(engine, "lock_from_50")
    assert row["executor"] == "inline", row
    assert "its output 'obj' (map item 50" in row["why"], row
    assert "does not pickle" in row["why"] and "earlier map" in row["why"], row


def test_an_output_that_never_pickles_keeps_its_node_here_from_the_first_map(engine):
    out = Pipeline([counter]).map({"x": XS}, map_over="x", engine=engine)
    assert [len(list(r["gen"])) for r in out] == [(spin(40_000) + x) % 3 + 1 for x in XS]
    row = row_of(engine, "counter")
    assert row["executor"] == "inline", row
    assert "its output 'gen'" in row["why"] and "generator" in row["why"], row


def test_an_output_used_inside_its_process_stage_need_not_pickle(engine):
    # drain is cheap: it joins counter's stage in the workers, and the generator never
    # leaves them: only the count travels.
    out = Pipeline([counter, drain]).map({"x": XS}, map_over="x", engine=engine,
                                         output_name="n")
    assert [r["n"] for r in out] == [(spin(40_000) + x) % 3 + 1 for x in XS]
    assert row_of(engine, "counter")["executor"] == "process"


@node(output_name="total")
def checksum(x):
    return spin(40_000) + x


@node(output_name="guarded")
def with_lock(total):
    return total, threading.Lock()  # cheap, and its output does not pickle


def test_a_cheap_node_whose_output_does_not_pickle_joins_no_process_stage(engine):
    # (Cheap nodes join their neighbour's stage; this one must not join the workers',
    # where every item's output would fail to come back and run again here.)
    out = Pipeline([checksum, with_lock]).map({"x": XS}, map_over="x", engine=engine)
    assert [r["guarded"][0] for r in out] == [spin(40_000) + x for x in XS]
    assert row_of(engine, "checksum")["executor"] == "process"
    row = row_of(engine, "with_lock")
    assert row["executor"] == "inline" and "does not pickle" in row["why"], row


def test_a_stream_keeps_a_node_whose_output_never_pickles_here(engine):
    got = list(Pipeline([counter]).imap({"x": iter(XS)}, map_over="x", engine=engine))
    assert [len(list(r["gen"])) for r in got] == [(spin(40_000) + x) % 3 + 1 for x in XS]
    assert row_of(engine, "counter")["executor"] == "inline"


@pytest.mark.parametrize("policy", ["raise", "collect"])
def test_a_stream_cannot_run_such_an_item_again_but_remembers_its_node(policy):
    engine = AutoEngine(on_error=policy)
    try:
        p = Pipeline([lock_from_50])
        got = []
        with pytest.raises(SerializationError, match="map item 50") if policy == "raise" \
                else contextlib.nullcontext():
            for r in p.imap({"x": iter(XS)}, map_over="x", engine=engine):
                got.append(r)
        assert [r["obj"][0] for r in got[:50]] == [spin(40_000) + x for x in XS[:50]]
        if policy == "collect":
            assert all(isinstance(r, SerializationError) for r in got[50:]), got[50:]
        assert row_of(engine, "lock_from_50")["executor"] == "process"
        # The next stream keeps it here: every item comes back.
        again = list(p.imap({"x": iter(XS)}, map_over="x", engine=engine))
        assert [isinstance(r["obj"][1], LOCK) for r in again] == [x >= 50 for x in XS]
        assert row_of(engine, "lock_from_50")["executor"] == "inline"
    finally:
        engine.shutdown()


def test_an_item_whose_input_does_not_pickle_runs_here_and_is_not_remembered(engine):
    p = Pipeline([burn_under])
    locks = [Unlocked() if x < 50 else threading.Lock() for x in XS]
    out = p.map({"x": XS, "lock": locks}, map_over=["x", "lock"], engine=engine)
    assert [r["burned"] for r in out] == [spin(40_000) + x for x in XS]
    assert row_of(engine, "burn_under")["executor"] == "process"
    # The input was at fault, not the node: a map whose inputs pickle still sends it.
    p.map({"x": XS, "lock": [Unlocked()] * len(XS)}, map_over=["x", "lock"], engine=engine)
    assert row_of(engine, "burn_under")["executor"] == "process"


def test_the_nodes_own_errors_keep_the_policy(engine):
    p = Pipeline([fails_at_30_and_40])
    with pytest.raises(ValueError, match="bad 30") as info:
        p.map({"x": XS}, map_over="x", engine=engine)
    assert any("map item 30" in n for n in getattr(info.value, "__notes__", ())), \
        info.value.__notes__
    out = AutoEngine(on_error="collect")
    try:
        got = p.map({"x": XS}, map_over="x", engine=out)
    finally:
        out.shutdown()
    assert [type(r).__name__ if isinstance(r, BaseException) else "ok" for r in got] == \
        ["ValueError" if x in (30, 40) else "ok" for x in XS]
    assert isinstance(got[50]["checked"][1], LOCK)  # (ran here)


def test_a_users_process_hint_keeps_processes_rule(engine):
    hinted = node(output_name="obj", executor="process")(lock_from_50.func)
    with pytest.raises(SerializationError, match="map item 50") as info:
        Pipeline([hinted]).map({"x": XS}, map_over="x", engine=engine)
    assert info.value.nodes == ("lock_from_50",) and info.value.value == "output"


@node(output_name="y")
def fails_at_2(x, log):
    with open(log, "ab") as f:  # (one byte per call, from any process)
        f.write(b".")
    if x == 2:
        raise ValueError("bad 2")
    return spin(40_000) + x


def test_under_raise_a_nodes_error_still_stops_the_map_early(engine, tmp_path):
    log = str(tmp_path / "calls")
    many = list(range(2000))
    with pytest.raises(ValueError, match="bad 2"):
        Pipeline([fails_at_2]).map({"x": many, "log": log}, map_over="x", engine=engine)
    calls = (tmp_path / "calls").stat().st_size
    # Not the whole map and then the error: as on ProcessEngine, the batches already
    # in the workers finish (~870 of 2000 calls here on either engine).
    assert calls < len(many) * 3 // 4, calls
