"""A streaming map's process stage (run/stage_process.py's ProcessRunner, on the pool
through engines/process_stream.py): workers take the ready items as they come, in
batches sized by the measured item time; out-of-order items travel as placeholders of
other batches; the pool goes back to other maps when they ask, and when the stage idles."""

from __future__ import annotations

import threading
import time

import pytest

from gilfree import Pipeline, ProcessEngine, ThreadEngine, node
from gilfree.engines import process_stream
from gilfree.run import stage_process


@node(output_name="y", executor="thread")
def nap(x):
    time.sleep(0.001)  # items reach the process stage over time
    return x + 1


#: Set once the process stage has sent a batch past id 100: every 7th item waits for it,
#: so those items reach the stage after later ones (gaps in the ids), however long the
#: pool takes to start.
LATE_GATE = threading.Event()


@node(output_name="y", executor="thread")
def uneven(x):
    if x % 7 == 3:
        LATE_GATE.wait(10)
    else:
        time.sleep(0.001)
    return x + 1


@node(output_name="z", executor="process")
def square(y):
    return y * y


def _record_batches(monkeypatch):
    """(start, stop, origin, own ids) of every batch a stream's process stage makes."""
    made = []
    real = process_stream.StreamCall.make_batch

    def spy(self, a, b, origin):
        made.append((a, b, origin, set(self.source.members.get(origin, ()))))
        if b > 100:
            LATE_GATE.set()
        return real(self, a, b, origin)

    monkeypatch.setattr(process_stream.StreamCall, "make_batch", spy)
    return made


def test_batches_grow_once_an_item_is_timed(monkeypatch):
    made = _record_batches(monkeypatch)
    with ThreadEngine() as engine:
        out = [r["z"] for r in Pipeline([nap, square]).imap(
            {"x": (i for i in range(3000))}, map_over="x", engine=engine)]
    assert out == [(i + 1) ** 2 for i in range(3000)]
    own = [ids for _, _, _, ids in made]
    assert len(own[0]) == 1  # nothing measured yet: one item
    assert max(len(ids) for ids in own) > 1  # then as many as ~20 ms of work, or ready
    ids = sorted(i for batch in own for i in batch)
    assert ids == list(range(3000))  # each item in exactly one batch


def test_late_items_travel_as_placeholders_of_other_batches(monkeypatch):
    made = _record_batches(monkeypatch)
    LATE_GATE.clear()
    with ThreadEngine() as engine:
        out = list(Pipeline([uneven, square]).imap(
            {"x": range(300)}, map_over="x", engine=engine, ordered=False))
    assert sorted(r["z"] for r in out) == sorted((i + 1) ** 2 for i in range(300))
    owners = {}
    for a, b, origin, ids in made:
        assert a == origin == min(ids) and b == max(ids) + 1
        # placeholders about as few as its own items (+ room for a straggler's gap)
        assert b - a <= 2 * len(ids) + stage_process.STRAGGLER_GAP
        for i in ids:
            assert i not in owners  # sent once (no retries here)
            owners[i] = origin
    assert sorted(owners) == list(range(300))
    # Some range held an id that was not its own yet (a late one, sent later).
    assert any(b - a > len(ids) for a, b, _, ids in made)


#: Opened once the process stage has sent every id below 200 that it has: item 5 and
#: the items from 200 on wait for it, so item 5 comes back late, beside items far above it.
STRAGGLER_GATE = threading.Event()


@node(output_name="y", executor="thread")
def straggles(x):
    if x == 5 or x >= 200:
        STRAGGLER_GATE.wait(10)
    return x + 1


def test_a_straggler_rides_with_the_items_after_it(monkeypatch):
    # Item 5 reaches the process stage after items 6-199 were sent: the lowest ready id,
    # with the next ones ~200 ids above it. It goes with them (the ids between travel as
    # placeholders), not as a batch of its own: each batch costs a round trip.
    made = []
    real = process_stream.StreamCall.make_batch

    def spy(self, a, b, origin):
        made.append((a, b, set(self.source.members.get(origin, ()))))
        if b >= 200:
            STRAGGLER_GATE.set()
        return real(self, a, b, origin)

    monkeypatch.setattr(process_stream.StreamCall, "make_batch", spy)
    STRAGGLER_GATE.clear()
    with ThreadEngine() as engine:
        out = [r["z"] for r in Pipeline([straggles, square]).imap(
            {"x": range(600)}, map_over="x", engine=engine)]
    assert out == [(i + 1) ** 2 for i in range(600)]
    [with_5] = [ids for _, _, ids in made if 5 in ids]
    assert max(with_5) >= 200, made
    for a, b, ids in made:
        assert b - a <= 2 * len(ids) + stage_process.STRAGGLER_GAP


def test_a_map_on_the_same_engine_inside_the_loop_gets_the_pool():
    # The stream's process stage holds the pool while it has items; the consumer's own
    # map on that engine asks for it and gets it (waiting for the stage would deadlock:
    # the stage waits for the consumer to take results).
    other = Pipeline([square])
    got = []

    def consume():
        with ProcessEngine(workers=2) as engine:
            for r in Pipeline([nap, square]).imap({"x": range(200)}, map_over="x",
                                                  engine=engine):
                got.append((r["z"], other.map({"y": [r["y"]]}, map_over="y",
                                              engine=engine)[0]["z"]))

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the map inside the imap loop waited for the pool for ever"
    assert got == [((i + 1) ** 2, (i + 1) ** 2) for i in range(200)]


def test_two_streams_share_one_pool():
    errors, results = [], {}

    def run(k, engine):
        try:
            results[k] = [r["z"] for r in Pipeline([nap, square]).imap(
                {"x": range(k * 1000, k * 1000 + 300)}, map_over="x", engine=engine)]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with ThreadEngine() as engine:
        threads = [threading.Thread(target=run, args=(k, engine)) for k in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    for k in (1, 2):
        assert results[k] == [(i + 1) ** 2 for i in range(k * 1000, k * 1000 + 300)]


def test_an_idle_stage_gives_the_pool_back_and_takes_it_again(monkeypatch):
    spells = []
    real = process_stream.StreamCall.run

    def spy(self):
        spells.append(time.monotonic())
        return real(self)

    monkeypatch.setattr(process_stream.StreamCall, "run", spy)

    def slow_source():
        for i in range(4):
            yield i
            time.sleep(0.2)  # far longer than the stage's idle time

    with ThreadEngine() as engine:
        out = [r["z"] for r in Pipeline([nap, square]).imap(
            {"x": slow_source()}, map_over="x", engine=engine)]
        assert out == [(i + 1) ** 2 for i in range(4)]
        # In between, a plain map on the lent process pool runs without waiting.
        t0 = time.monotonic()
        assert Pipeline([square]).map({"y": [3]}, map_over="y",
                                       engine=engine._lend("process"))[0]["z"] == 9
        assert time.monotonic() - t0 < 5
    assert len(spells) >= 2  # idle between items: a spell each


@pytest.mark.parametrize("policy", ["collect", "raise"])
def test_a_failing_item_in_a_late_batch(policy):
    @node(output_name="z", executor="process")
    def picky(y):
        if y == 151:
            raise ValueError("no 151")
        return y

    pipeline = Pipeline([nap, picky])
    with ThreadEngine() as engine:
        it = pipeline.imap({"x": range(300)}, map_over="x", engine=engine, on_error=policy)
        if policy == "raise":
            with pytest.raises(ValueError, match="no 151") as info:
                list(it)
            assert any("map item 150" in n for n in getattr(info.value, "__notes__", []))
        else:
            out = list(it)
            assert isinstance(out[150], ValueError)
            assert [r["z"] for k, r in enumerate(out) if k != 150] == \
                [i + 1 for i in range(300) if i != 150]



def _one_size(y):
    return 1


def _batch_sizes(y):
    return [len(y)] * len(y)  # each item says how large its call of the batch function was


def test_a_dualnode_in_a_process_stage_gets_consecutive_items(monkeypatch):
    # A worker calls the batch function once per run of items between placeholders: a
    # stage with a DualNode takes consecutive ready ids only (no placeholders), and
    # items that come in order go in whole batches.
    from gilfree import DualNode

    made = _record_batches(monkeypatch)
    sizes = DualNode("size", _one_size, _batch_sizes, executor="process", batch_size=16)
    with ThreadEngine() as engine:
        for pipeline in (Pipeline([uneven, square, sizes]), Pipeline([nap, square, sizes])):
            list(pipeline.imap({"x": range(20)}, map_over="x", engine=engine))  # warm
            made.clear()
            out = list(pipeline.imap({"x": range(300)}, map_over="x", engine=engine))
            assert [r["z"] for r in out] == [(i + 1) ** 2 for i in range(300)]
            assert all(b - a == len(ids) for a, b, _, ids in made), made
    calls = sum(1 / r["size"] for r in out)  # in order (nap): an item of n counts 1/n
    assert calls <= 300 / 8, f"{calls:.0f} calls of the batch function for 300 items"


def test_the_last_items_go_without_waiting_for_more(monkeypatch):
    # Ready items fewer than a batch wait for more (PROCESS_LINGER_S), unless none can
    # come: the input ended and the earlier stages are empty. With a linger of 60 s, the
    # tail of this stream still goes at once.
    monkeypatch.setattr(stage_process, "PROCESS_LINGER_S", 60.0)
    made = _record_batches(monkeypatch)
    with ThreadEngine() as engine:
        t0 = time.monotonic()
        out = list(Pipeline([nap, square]).imap({"x": range(30)}, map_over="x",
                                               engine=engine))
        waited = time.monotonic() - t0
    assert [r["z"] for r in out] == [(x + 1) ** 2 for x in range(30)]
    assert made and waited < 30  # not 60 s: the tail waiting for items that cannot come


@node(output_name="z", executor="process")
def slow_square(x):
    time.sleep(0.002)  # ~25 items make one batch of ~50 ms
    return x * x


def test_the_last_items_go_in_batches_that_shrink(monkeypatch):
    # Once no more items can come (the input was read whole: nothing before the stage),
    # each batch takes about what is left / (TAIL_SPLIT x workers), so the last ones go
    # one by one and the workers end together; before, a worker's last batch was as
    # large as the others (~50 ms of work) while another worker had nothing left.
    made = _record_batches(monkeypatch)
    with ThreadEngine() as engine:
        pipeline = Pipeline([slow_square])
        list(pipeline.imap({"x": range(40)}, map_over="x", engine=engine))  # warm
        made.clear()
        out = list(pipeline.imap({"x": range(300)}, map_over="x", engine=engine))
    assert [r["z"] for r in out] == [x * x for x in range(300)]
    sizes = [len(ids) for _, _, _, ids in made]
    assert sum(sizes) == 300
    assert max(sizes) > 4, sizes  # the stage did batch
    assert sizes[-3:] == [1, 1, 1], sizes


def _one_digits(z):
    return len(str(z))


def _digits_after_a_wait(z):
    time.sleep(0.02)  # a model call with a fixed cost (it waits: it runs beside)
    return [len(str(v)) for v in z]


def _batch_sizes_before_a_dualnode(monkeypatch, batch_function):
    """The sizes of the batches a stream's process stage made for 300 items of ~2 ms
    (slow_square) followed by a DualNode calling ``batch_function``."""
    from gilfree import DualNode

    made = _record_batches(monkeypatch)
    sizes = DualNode("n", _one_digits, batch_function, executor="process")
    with ThreadEngine() as engine:
        pipeline = Pipeline([slow_square, sizes])
        list(pipeline.imap({"x": range(60)}, map_over="x", engine=engine))  # warm
        made.clear()
        out = list(pipeline.imap({"x": range(300)}, map_over="x", engine=engine))
    assert [r["n"] for r in out] == [len(str(x * x)) for x in range(300)]
    return [len(ids) for _, _, _, ids in made]


def test_the_last_batches_hold_as_much_item_work_as_their_batch_calls_take(monkeypatch):
    # A stage ending in batch calls (a DualNode after per-item steps): a worker runs a
    # batch's calls beside the next batch's items, one batch's calls at a time. Last
    # batches of one 2 ms item would each wait for the previous batch's 20 ms of calls;
    # they hold about 20 / 2 items instead (the workers time both: Result.timing; batch
    # calls that compute are not timed for this: tests/python/remote).
    last = _batch_sizes_before_a_dualnode(monkeypatch, _digits_after_a_wait)[-5:]
    # ~10 items but the very last, what was left; before, the last went one at a time
    assert sum(n < 4 for n in last) <= 1, last


class _Counted:
    def __init__(self):
        self.read = 0

    def stream(self):
        while True:
            self.read += 1
            yield self.read - 1


@node(output_name="z", executor="process")
def napping_square(y):
    time.sleep(0.01)
    return y * y


@pytest.mark.parametrize("cheap", [True, False])
def test_the_default_read_ahead_follows_the_process_stages_batches(cheap):
    # Unmeasured, a process stage runs one item a batch: the stream reads 64 ahead (not
    # 8192 items of a queue that a close would drop, as before). Once the pool's batches
    # hold thousands of cheap items, the stream reads that far ahead to keep them full.
    src = _Counted()
    with ProcessEngine(workers=2) as engine:
        it = Pipeline([square if cheap else napping_square]).imap(
            {"y": src.stream()}, map_over="y", engine=engine)
        taken = 3000 if cheap else 2
        for _ in range(taken):
            next(it)
        time.sleep(0.3)  # the stream reads ahead as far as it may meanwhile
        ahead = src.read - taken
        it.close()
    if cheap:
        assert ahead > 1000, ahead
    else:
        assert ahead <= 64 + 2, ahead
