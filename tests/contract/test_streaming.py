"""Streaming maps (``imap``) on every engine: the same results as ``map``, in input order
or as they finish; inputs of unknown or endless length read lazily, at most about
``read_ahead`` items ahead of the consumer; closing the iterator stops the map and
leaves the engine usable; errors in both policies; callbacks in the iterating thread.

An input that would be endless is a ``Source``: it counts what was read from it, and
reading far past any read-ahead fails with an AssertionError instead of filling memory
(an imap that read its input whole would otherwise never stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import threading
import time
from collections import Counter

import pytest

from gilfree import (DiskCache, DualNode, EngineShutDown, Pipeline, PipelineCallback,
                     ProgressCallback, node, stateful)

#: pulled beyond ``consumed + read_ahead``: a reader may look one item ahead to see the
#: end of its input, or hold one item it could not hand over yet
SLACK = 2


@node(output_name="doubled")
def double(x):
    return 2 * x


@node(output_name="total")
def add(doubled, y=10):
    return doubled + y


def expected(xs, y=10):
    return [{"doubled": 2 * x, "total": 2 * x + y} for x in xs]


class Source:
    """A generator of unknown length (``items`` None: endless) that counts its reads."""

    def __init__(self, items=None, limit=10_000):
        self.items, self.limit, self.read = items, limit, 0

    def stream(self):
        for value in (itertools.count() if self.items is None else self.items):
            if self.read >= self.limit:
                raise AssertionError(f"the input was read past {self.limit} items")
            self.read += 1
            yield value


def gen(n):
    return (i for i in range(n))


# -- results ---------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["list", "generator"])
def test_ordered_results_equal_map(engine, source):
    p = Pipeline([double, add], engine=engine)
    xs = list(range(40))
    fed = xs if source == "list" else gen(40)
    out = list(p.imap({"x": fed, "y": 1}, map_over="x"))
    assert out == p.map({"x": xs, "y": 1}, map_over="x") == expected(xs, y=1)


def test_engine_imap_with_output_name(engine):
    p = Pipeline([double, add])
    out = list(engine.imap(p, {"x": gen(5)}, map_over="x", output_name="doubled"))
    assert out == [{"doubled": 2 * i} for i in range(5)]


def test_unordered_yields_every_item_exactly_once(engine):
    p = Pipeline([double, add], engine=engine)
    out = list(p.imap({"x": gen(40)}, map_over="x", ordered=False))
    assert len(out) == 40
    assert sorted(out, key=lambda r: r["doubled"]) == expected(range(40))


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("read_ahead", [1, 3])
def test_tiny_read_ahead_still_finishes(engine, ordered, read_ahead):
    p = Pipeline([double, add], engine=engine)
    src = Source(range(12))
    out = list(p.imap({"x": src.stream()}, map_over="x", ordered=ordered,
                      read_ahead=read_ahead))
    assert sorted(out, key=lambda r: r["doubled"]) == expected(range(12))
    if ordered:
        assert out == expected(range(12))


def _stages_stream(engine):
    """Skip where a map's stages cannot overlap: SeqEngine runs everything inline, one
    item at a time; DaskEngine and DaftEngine stream in windows, each window one map."""
    if type(engine).__name__ not in ("ThreadEngine", "AsyncEngine", "ProcessEngine",
                                     "AutoEngine"):
        pytest.skip(f"{type(engine).__name__} does not overlap stages")


def test_unordered_does_not_wait_for_a_slow_item(engine):
    _stages_stream(engine)
    gate = threading.Event()

    @node(output_name="y", executor="thread")  # in this process: the Event is shared
    def held(x):
        if x == 0 and not gate.wait(20):
            return "item 0 was never released: nothing was yielded before it"
        return x

    it = Pipeline([held], engine=engine).imap({"x": gen(6)}, map_over="x", ordered=False)
    first = next(it)
    gate.set()
    rest = list(it)
    assert first != {"y": 0}, "the first result yielded was the held item"
    assert sorted(r["y"] for r in [first, *rest]) == list(range(6))


def test_stages_overlap(engine):
    _stages_stream(engine)
    gate = threading.Event()

    @node(output_name="y", executor="thread")
    def hold(x):
        if x == 3 and not gate.wait(20):
            return "item 3 waited for item 0 to reach the next stage: no overlap"
        return x

    @node(output_name="z", executor="inline")
    def release(y):
        if y == 0:
            gate.set()
        return y

    out = list(Pipeline([hold, release], engine=engine).imap({"x": gen(6)}, map_over="x"))
    assert out == [{"y": i, "z": i} for i in range(6)]


def test_zip_of_generators_and_product(engine):
    p = Pipeline([double, add], engine=engine)
    zipped = list(p.imap({"x": gen(6), "y": (10 * i for i in range(6))}, map_over=["x", "y"]))
    assert [r["total"] for r in zipped] == [2 * i + 10 * i for i in range(6)]
    xs, ys = [1, 2, 3], [10, 20]
    product = list(p.imap({"x": xs, "y": iter(ys)}, map_over=["x", "y"], map_mode="product"))
    assert product == p.map({"x": xs, "y": ys}, map_over=["x", "y"], map_mode="product")
    assert [r["total"] for r in product] == [2 * x + y for x, y in itertools.product(xs, ys)]


@pytest.mark.parametrize("shorter", ["x", "y"])
def test_zip_of_unequal_generators_raises(engine, shorter):
    p = Pipeline([double, add], engine=engine)
    lengths = {"x": 5, "y": 5, shorter: 3}
    got = []
    with pytest.raises(ValueError):
        for r in p.imap({"x": gen(lengths["x"]), "y": gen(lengths["y"])},
                        map_over=["x", "y"]):
            got.append(r)
    assert got == [{"doubled": 2 * i, "total": 3 * i} for i in range(3)]  # then the error
    assert p.map({"x": [1]}, map_over="x") == expected([1])  # the engine still maps


def test_empty_inputs(engine):
    p = Pipeline([double], engine=engine)
    assert list(p.imap({"x": []}, map_over="x")) == []
    assert list(p.imap({"x": gen(0)}, map_over="x", ordered=False)) == []


def test_map_accepts_a_generator(engine):
    p = Pipeline([double, add], engine=engine)
    assert p.map({"x": gen(10)}, map_over="x") == expected(range(10))
    assert p.map({"x": gen(3), "y": gen(3)}, map_over=["x", "y"]) == [
        {"doubled": 2 * i, "total": 3 * i} for i in range(3)]


def test_async_node_streams(engine):
    @node(output_name="doubled")
    async def fetch(x):
        await asyncio.sleep(0)
        return 2 * x

    p = Pipeline([fetch, add], engine=engine)
    assert list(p.imap({"x": gen(20)}, map_over="x")) == expected(range(20))


def _with_batch_size(engine_factory, n):
    """An engine whose DualNode batches hold at most ``n`` items (DaftEngine takes it
    the HyperNodes way, in its Daft configuration)."""
    if type(engine_factory()).__name__ == "DaftEngine":
        return engine_factory(default_daft_config={"batch_size": n})
    return engine_factory(batch_size=n)


def test_dual_node_streams_in_batches_of_at_most_batch_size(engine_factory):
    def scale_one(doubled):
        return doubled * 3

    def scale_many(doubled):
        if len(doubled) > 4:  # raised wherever the batch runs, and travels back
            raise AssertionError(f"a batch of {len(doubled)} items; batch_size is 4")
        return [d * 3 for d in doubled]

    p = Pipeline([double, DualNode("scaled", scale_one, scale_many)],
                 engine=_with_batch_size(engine_factory, 4))
    out = list(p.imap({"x": gen(30)}, map_over="x"))
    assert out == p.map({"x": list(range(30))}, map_over="x")
    assert out == [{"doubled": 2 * i, "scaled": 6 * i} for i in range(30)]
    unordered = list(p.imap({"x": gen(30)}, map_over="x", ordered=False, read_ahead=8))
    assert sorted(unordered, key=lambda r: r["doubled"]) == out


def test_two_imaps_on_one_engine_interleave(engine):
    p = Pipeline([double, add], engine=engine)
    a = p.imap({"x": gen(20)}, map_over="x", read_ahead=4)
    b = p.imap({"x": gen(20)}, map_over="x", ordered=False, read_ahead=4)
    pairs = [(next(a), next(b)) for _ in range(20)]
    assert [x for x, _ in pairs] == expected(range(20))
    assert sorted((y for _, y in pairs), key=lambda r: r["doubled"]) == expected(range(20))
    assert list(a) == [] and list(b) == []


def test_nested_mapped_pipeline_streams(engine):
    inner = Pipeline([double], name="inner").as_node(
        map_over="xs", input_mapping={"xs": "x"}, output_mapping={"doubled": "ds"})
    p = Pipeline([inner], engine=engine)
    lists = [[1, 2], [3], [], [4, 5, 6]]
    assert list(p.imap({"xs": iter(lists)}, map_over="xs")) == p.map(
        {"xs": lists}, map_over="xs") == [{"ds": [2 * v for v in xs]} for xs in lists]


def test_retries_apply(engine):
    attempts = {}

    @node(output_name="y")
    def flaky(x):
        attempts[x] = attempts.get(x, 0) + 1
        if attempts[x] < 2:
            raise ConnectionError("try again")
        return x

    p = Pipeline([flaky], engine=engine)
    assert list(p.imap({"x": gen(4)}, map_over="x", retries=2)) == [{"y": i} for i in range(4)]


def test_cache_is_shared_with_map(engine_factory, tmp_path):
    log = tmp_path / "calls.txt"

    @node(output_name="y")
    def logged(x, log):
        with open(log, "a") as f:  # a file: every worker process appends to it
            f.write(f"{x}\n")
        return x * 2

    p = Pipeline([logged], engine=engine_factory(cache=DiskCache(tmp_path / "cache")))
    first = list(p.imap({"x": gen(5), "log": str(log)}, map_over="x"))
    assert sorted(log.read_text().split()) == [str(i) for i in range(5)]
    again = list(p.imap({"x": gen(6), "log": str(log)}, map_over="x", ordered=False))
    assert p.map({"x": list(range(6)), "log": str(log)}, map_over="x") == first + [{"y": 10}]
    assert sorted(r["y"] for r in again) == [0, 2, 4, 6, 8, 10]
    assert sorted(log.read_text().split()) == [str(i) for i in range(5)] + ["5"]  # hits


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("items", [0, 1, 5, 300])
def test_an_input_that_raises_ends_the_map_with_its_error(engine, items, ordered):
    # Where the input ended: after the results of every item read before it (none lost)
    def broken():
        yield from range(items)
        raise OSError("the input file went away")

    p = Pipeline([double, add], engine=engine)
    got = []
    with pytest.raises(OSError, match="the input file went away") as caught:
        for r in p.imap({"x": broken()}, map_over="x", ordered=ordered):
            got.append(r)
    if not ordered:
        got.sort(key=lambda r: r["total"])
    assert got == expected(range(items))
    where = f"after its item {items - 1}" if items else "before its first item"
    assert f"the map's input raised {where}" in "\n".join(caught.value.__notes__)
    assert p.map({"x": [1]}, map_over="x") == expected([1])


# -- arguments -------------------------------------------------------------------------
@pytest.mark.parametrize("inputs, map_over, match", [
    ({"x": "stream"}, "nope", "not among the inputs"),
    ({"y": "stream"}, "y", r"Missing required input\(s\): \['x'\]"),
    ({"x": 3}, "x", "must be a list"),
    ({"x": "stream"}, None, "map_over"),
])
def test_bad_arguments_raise_at_the_call(engine, inputs, map_over, match):
    src = Source(range(5))
    inputs = {k: src.stream() if v == "stream" else v for k, v in inputs.items()}
    with pytest.raises(ValueError, match=match):
        Pipeline([double], engine=engine).imap(inputs, map_over=map_over)  # not iterated
    assert src.read == 0


@pytest.mark.parametrize("read_ahead", [0, -1, 2.5])
def test_read_ahead_must_be_a_positive_integer(engine, read_ahead):
    with pytest.raises(ValueError, match="read_ahead"):
        Pipeline([double], engine=engine).imap({"x": gen(3)}, map_over="x",
                                               read_ahead=read_ahead)


# -- bounded reading, early close ------------------------------------------------------
@pytest.mark.parametrize("ordered", [True, False])
def test_endless_input_is_read_at_most_read_ahead_past_the_consumer(engine, ordered):
    p = Pipeline([double, add], engine=engine)
    src = Source()  # itertools.count(): endless
    got = []
    for r in p.imap({"x": src.stream()}, map_over="x", read_ahead=8, ordered=ordered):
        got.append(r)
        assert src.read <= len(got) + 8 + SLACK, (len(got), src.read)
        if len(got) == 20:
            break  # the iterator is dropped here: the map stops
    if ordered:
        assert got == expected(range(20))
    else:
        assert len({r["doubled"] for r in got}) == 20
        assert all(r["total"] == r["doubled"] + 10 and r["doubled"] % 2 == 0 for r in got)
    assert p.map({"x": [1, 2]}, map_over="x") == expected([1, 2])
    gc.collect()
    # nothing read after the break (the map above gave a stray reader time to show)
    assert src.read <= 20 + 8 + SLACK, src.read


@pytest.mark.parametrize("how", ["close", "break", "del", "closing"])
def test_early_close_stops_the_map_and_the_engine_maps_again(engine, how):
    p = Pipeline([double, add], engine=engine)
    src = Source(range(1000))
    got = []
    if how == "close":
        it = p.imap({"x": src.stream()}, map_over="x", read_ahead=8)
        got += [next(it), next(it), next(it)]
        it.close()
        assert list(it) == []  # a closed iterator yields nothing more
    elif how == "break":
        for r in p.imap({"x": src.stream()}, map_over="x", read_ahead=8):
            got.append(r)
            if len(got) == 3:
                break
    elif how == "del":
        it = p.imap({"x": src.stream()}, map_over="x", read_ahead=8)
        got += [next(it), next(it), next(it)]
        del it
        gc.collect()
    else:
        with contextlib.closing(p.imap({"x": src.stream()}, map_over="x", read_ahead=8)) as it:
            got += [next(it), next(it), next(it)]
    assert got == expected(range(3))
    assert p.map({"x": list(range(10))}, map_over="x") == expected(range(10))
    assert list(p.imap({"x": gen(10)}, map_over="x", ordered=False, read_ahead=4)) != []
    assert src.read <= 3 + 8 + SLACK, src.read


def test_an_imap_dropped_before_iterating_ends_its_map(engine):
    attempts = []

    @stateful
    class Flaky:
        def __init__(self):
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("first build fails")
            self.ok = True

    p = Pipeline([double], engine=engine)
    gc.disable()  # dropped by its reference count alone, as in a plain script
    try:
        it = p.imap({"x": gen(3)}, map_over="x")
        del it
        # outside any map, a failed build is not remembered: the next access retries
        model = Flaky()
        with pytest.raises(RuntimeError, match="first build fails"):
            model.ok
        assert model.ok is True
    finally:
        gc.enable()


def test_shutdown_while_an_imap_is_open_ends_it_with_engine_shut_down(engine):
    # As for map (docs/engines.md): no new item starts after shutdown(), and what did not
    # run to its end fails with EngineShutDown; the engine works again afterwards.
    if type(engine).__name__ == "SeqEngine":
        pytest.skip("SeqEngine has nothing to shut down")
    p = Pipeline([double, add], engine=engine)
    src = Source(limit=1000)
    it = p.imap({"x": src.stream()}, map_over="x", read_ahead=8)
    assert next(it) == expected([0])[0]
    engine.shutdown()
    got = []
    with pytest.raises(EngineShutDown):
        for r in itertools.islice(it, 100):  # bounded: an imap that went on ends here
            got.append(r)
    assert got == expected(range(1, 1 + len(got)))  # items already in the map, if any
    assert len(got) <= 8 + SLACK, len(got)
    assert p.map({"x": [1, 2]}, map_over="x") == expected([1, 2])


@node(output_name="y")
def nap(x):
    time.sleep(0.002)  # the map is busy when shutdown() comes
    return x


@pytest.mark.parametrize("on_error", ["raise", "collect"])
def test_shutdown_from_another_thread_during_an_imap_raises_engine_shut_down(engine_factory,
                                                                             on_error):
    # shutdown() stops the pools while the iterating thread may be starting a stage's
    # workers on one: that is the engine shut down too, never the pool's own error.
    engine = engine_factory(on_error=on_error)
    if type(engine).__name__ == "SeqEngine":
        pytest.skip("SeqEngine has nothing to shut down")
    p = Pipeline([nap], engine=engine)
    it = p.imap({"x": Source(limit=10**7).stream()}, map_over="x")
    assert next(it) == {"y": 0}
    stopper = threading.Timer(0.2, engine.shutdown)
    stopper.start()
    got = 1
    with pytest.raises(EngineShutDown):
        for r in it:
            got += 1
            assert isinstance(r, (dict, EngineShutDown)), r
            assert got < 10**6, "the imap went on after shutdown()"
    stopper.join()
    assert p.map({"x": [1, 2]}, map_over="x") == [{"y": 1}, {"y": 2}]


# -- errors ----------------------------------------------------------------------------
@node(output_name="y")
def fragile(x):
    if x == 5:
        raise KeyError("boom")
    return x


def _notes(exc) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


def test_raise_policy_ordered_raises_at_the_failed_item(engine):
    p = Pipeline([fragile], engine=engine)
    src = Source(range(200))
    got = []
    with pytest.raises(KeyError) as info:
        for r in p.imap({"x": src.stream()}, map_over="x", read_ahead=8):
            got.append(r)
    assert got == [{"y": i} for i in range(5)]  # every item before it, in order
    assert "'fragile'" in _notes(info.value) and "map item 5" in _notes(info.value)
    assert src.read <= 6 + 8 + SLACK, src.read  # the map stopped
    assert p.map({"x": [1, 2]}, map_over="x") == [{"y": 1}, {"y": 2}]


def test_ordered_raise_still_yields_earlier_items_that_finish_after_the_failure(engine):
    _stages_stream(engine)
    failed = threading.Event()

    @node(output_name="y", executor="thread")  # in this process: the Event is shared
    def late(x):
        if x == 5:
            failed.set()
            raise KeyError("boom")
        if x == 2 and not failed.wait(20):
            return "item 5 did not run while item 2 waited"
        return x

    got = []
    with pytest.raises(KeyError) as info:
        for r in Pipeline([late], engine=engine).imap({"x": gen(8)}, map_over="x"):
            got.append(r)
    assert got == [{"y": i} for i in range(5)]  # item 2 finished after item 5 failed
    assert "map item 5" in _notes(info.value)


def test_raise_policy_unordered_raises_when_the_item_fails(engine):
    p = Pipeline([fragile], engine=engine)
    got = []
    with pytest.raises(KeyError) as info:
        for r in p.imap({"x": gen(12)}, map_over="x", ordered=False):
            got.append(r)
    values = [r["y"] for r in got]
    assert len(set(values)) == len(values) and set(values) <= set(range(12)) - {5}
    assert "'fragile'" in _notes(info.value) and "map item 5" in _notes(info.value)
    assert p.map({"x": [1]}, map_over="x") == [{"y": 1}]


@node(output_name="y")
def odd_fails(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def test_collect_policy_yields_exceptions_in_place(engine):
    p = Pipeline([odd_fails], engine=engine)
    out = list(p.imap({"x": gen(8)}, map_over="x", on_error="collect"))
    assert len(out) == 8
    assert out[::2] == [{"y": i} for i in (0, 2, 4, 6)]
    for i in (1, 3, 5, 7):
        assert isinstance(out[i], ValueError) and str(out[i]) == f"odd {i}", out[i]
        assert f"map item {i}" in _notes(out[i]), _notes(out[i])


def test_collect_policy_unordered(engine):
    p = Pipeline([odd_fails], engine=engine)
    out = list(p.imap({"x": gen(8)}, map_over="x", on_error="collect", ordered=False))
    assert len(out) == 8
    errors = [r for r in out if isinstance(r, Exception)]
    assert sorted(str(e) for e in errors) == [f"odd {i}" for i in (1, 3, 5, 7)]
    assert sorted(r["y"] for r in out if not isinstance(r, Exception)) == [0, 2, 4, 6]


# -- callbacks -------------------------------------------------------------------------
class Recorder(PipelineCallback):
    """Records (hook, first argument) of every hook, and the threads they fired in."""

    def __init__(self):
        self.events = []
        self.threads = set()

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name.startswith("on_"):
            def record(*args):
                object.__getattribute__(self, "threads").add(threading.get_ident())
                object.__getattribute__(self, "events").append(
                    (name, args[0] if len(args) > 1 else None))
                return attr(*args)
            return record
        return attr


def _in_thread(fn, timeout=60):
    """``fn()`` in another thread; its result, or its exception re-raised here."""
    box = {}

    def target():
        box["thread"] = threading.get_ident()
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"iterating did not finish within {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["thread"], box["result"]


@pytest.mark.parametrize("source", ["list", "generator"])
def test_callbacks_fire_in_the_iterating_thread(engine_factory, source):
    rec = Recorder()
    p = Pipeline([double, add], engine=engine_factory(callbacks=[rec]))
    it = p.imap({"x": [1, 2, 3] if source == "list" else gen(3)}, map_over="x")
    thread, out = _in_thread(lambda: list(it))
    assert out == expected([1, 2, 3] if source == "list" else range(3))
    assert rec.events[0] == ("on_map_start", 3 if source == "list" else None)
    assert rec.events[-1][0] == "on_map_end"
    kinds = Counter(name for name, _ in rec.events)
    assert kinds["on_map_start"] == 1 and kinds["on_map_end"] == 1
    assert kinds["on_map_item_start"] == 3 and kinds["on_map_item_end"] == 3
    assert kinds["on_node_start"] == 6 and kinds["on_node_end"] == 6
    for i in range(3):
        assert rec.events.index(("on_map_item_start", i)) < rec.events.index(("on_map_item_end", i))
    assert rec.threads == {thread}


def test_progress_bar_counts_an_input_of_unknown_length(engine_factory):
    p = Pipeline([double, add], engine=engine_factory(callbacks=[ProgressCallback()]),
                 name="counted")
    assert list(p.imap({"x": gen(5)}, map_over="x")) == expected(range(5))


@pytest.mark.parametrize("how", ["close", "break"])
def test_closing_early_ends_the_map_for_callbacks(engine_factory, how):
    rec = Recorder()
    p = Pipeline([double, add], engine=engine_factory(callbacks=[rec]))
    if how == "close":
        it = p.imap({"x": Source().stream()}, map_over="x", read_ahead=4)
        assert next(it) == expected([0])[0]
        it.close()
    else:  # the loop drops the iterator: a progress bar must not be left open
        for r in p.imap({"x": Source().stream()}, map_over="x", read_ahead=4):
            assert r == expected([0])[0]
            break
    kinds = Counter(name for name, _ in rec.events)
    assert kinds["on_map_start"] == 1 and kinds["on_map_end"] == 1, kinds
    assert kinds["on_map_item_end"] >= 1 and rec.threads == {threading.get_ident()}
    # An item starts when its first stage runs it, not when it is read: an item started
    # and dropped by the close ends there (a span or a bar is never left open).
    starts = sorted(i for name, i in rec.events if name == "on_map_item_start")
    ends = sorted(i for name, i in rec.events if name == "on_map_item_end")
    assert starts == ends, (starts, ends)
