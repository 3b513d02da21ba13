"""AutoEngine's DualNode batch sizes follow the batch calls' time during a map and an
imap (run/execute_batch.py's BatchAdapt), and the next map starts from what the last
one's calls took."""

from __future__ import annotations

import time

import pytest

from gilfree import AutoEngine, DualNode, Pipeline
from gilfree.engines import auto
from gilfree.run.execute_batch import BatchAdapt

sizes: list[int] = []


def _one(x):
    return x + 1


def _many(xs):
    """Holds the GIL (pure Python): items below 100 cost ~10 us, the others ~2 ms."""
    sizes.append(len(xs))
    deadline = time.perf_counter() + sum(0.002 if x >= 100 else 0.00001 for x in xs)
    while time.perf_counter() < deadline:
        pass
    return [x + 1 for x in xs]


plus_one = Pipeline([DualNode("y", singular=_one, batch=_many)])


@pytest.fixture
def small_batches(monkeypatch):
    """A batch holds at most 20 ms of work (0.5 s by default): ~10 items of 2 ms."""
    monkeypatch.setattr(auto, "MAX_BATCH_S", 0.02)
    sizes.clear()


def test_batch_adapt_follows_the_time_per_item():
    a = BatchAdapt(50, 0.02, 64)
    assert a.observe(50, 0.0005) == 64  # cheap: up to its cap
    assert a.describe().startswith("re-sized while running: 50 -> 64 items")
    size = a.observe(64, 0.128)  # 2 ms an item now: ~10 a batch (decaying mean)
    assert 1 <= size < 20
    assert a.observe(size, size * 0.00205) == size  # a few % slower: no flicker
    assert BatchAdapt(8, 0.02, 64).observe(8, 8.0) == 1  # never below one item


def test_a_map_re_sizes_its_batches_and_the_next_map_starts_there(small_batches):
    engine = AutoEngine()
    out = plus_one.map({"x": list(range(400))}, map_over="x", engine=engine)
    assert [r["y"] for r in out] == [x + 1 for x in range(400)]
    [row] = engine.explain().rows
    first = max(sizes)  # cheap items first: batches of the size chosen from them
    assert "one at a time" in row["concurrency"] and "re-sized while running" in \
        row["concurrency"], row
    assert max(sizes[-5:]) < first / 2, sizes  # the expensive items: smaller batches
    sizes.clear()
    out = plus_one.map({"x": list(range(100, 300))}, map_over="x", engine=engine)
    assert [r["y"] for r in out] == [x + 1 for x in range(100, 300)]
    [row] = engine.explain().rows
    assert "per item in the last map's calls" in row["why"], row
    assert max(sizes[1:]) < first / 2, sizes  # (sizes[0]: a probe's batch, if any)


def test_an_imap_re_sizes_its_batch_stage(small_batches):
    engine = AutoEngine()
    plus_one.map({"x": list(range(2))}, map_over="x", engine=engine)  # measured: cheap
    sizes.clear()
    out = list(plus_one.imap({"x": iter(range(100, 400))}, map_over="x", engine=engine))
    assert [r["y"] for r in out] == [x + 1 for x in range(100, 400)]
    [row] = engine.explain().rows
    assert "re-sized while running" in row["concurrency"], row
    assert max(sizes[-5:]) <= 16 < max(sizes), sizes  # from 32 (the stream's) to ~10


@pytest.mark.parametrize("read_ahead", [1, 2])
def test_an_imap_with_a_tiny_read_ahead_keeps_its_batches_within_it(small_batches,
                                                                   read_ahead):
    # A flow's batch stage holds at most its queue bound (the read-ahead) and, batched, at
    # least 2: with a read-ahead of 1 there is nothing to re-size (it raised, before).
    engine = AutoEngine()
    plus_one.map({"x": list(range(2))}, map_over="x", engine=engine)  # measured: cheap
    sizes.clear()
    out = list(plus_one.imap({"x": iter(range(100, 140))}, map_over="x", engine=engine,
                             read_ahead=read_ahead))
    assert [r["y"] for r in out] == [x + 1 for x in range(100, 140)]
    assert sizes and max(sizes) <= read_ahead, sizes
