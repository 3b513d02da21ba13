"""How ProcessPool.map cuts a map into batches (``_core.ChunkPlanner``): guided
self-scheduling, big chunks first, and tail chunks sized by the time an item takes, so
that the last worker to finish holds little more than its share."""

from __future__ import annotations

import pytest

from gilfree._native import core

_core = core()


def chunks(planner) -> list[tuple[int, int]]:
    out = []
    while (c := planner.next()) is not None:
        out.append(c)
    return out


def sizes(planner) -> list[int]:
    return [b - a for a, b in chunks(planner)]


@pytest.mark.parametrize("items,workers", [(1, 1), (7, 2), (400, 2), (10_000, 16),
                                           (100_000, 2)])
@pytest.mark.parametrize("seconds", [None, 1e-7, 0.004, 2.0])
def test_chunks_hand_out_every_item_once_in_order(items, workers, seconds):
    planner = _core.ChunkPlanner(items, workers)
    if seconds is not None:
        planner.observe_item_seconds(seconds)
    cs = chunks(planner)
    assert cs[0][0] == 0 and cs[-1][1] == items
    assert all(a < b for a, b in cs)
    assert all(cs[k][1] == cs[k + 1][0] for k in range(len(cs) - 1))
    assert planner.next() is None


def test_until_an_item_is_timed_the_tail_is_a_64th_of_a_worker_share():
    planner = _core.ChunkPlanner(400, 2)
    assert planner.min_chunk == 4
    s = sizes(planner)
    assert s[0] == 100 and s == sorted(s, reverse=True)
    assert min(s[:-1]) == 4  # the last one may be what is left


def test_slow_items_shrink_the_tail_to_single_items():
    planner = _core.ChunkPlanner(400, 2)
    planner.observe_item_seconds(0.004)  # W3: ~4 ms per item
    assert planner.min_chunk == 1
    s = sizes(planner)
    assert s[0] == 100 and s[-4:] == [1, 1, 1, 1]


def test_the_tail_holds_about_a_millisecond_of_work():
    planner = _core.ChunkPlanner(100_000, 2)
    assert planner.min_chunk == 782
    planner.observe_item_seconds(10e-6)
    assert planner.min_chunk == 100


def test_fast_items_never_make_chunks_coarser_than_at_the_start():
    planner = _core.ChunkPlanner(400, 2)
    planner.observe_item_seconds(1e-7)
    assert planner.min_chunk == 4


def test_the_slowest_timing_counts():
    """A batch can look quicker than it was (timed from when the driver saw the result
    before it, which may have been late): it must not make the tail coarser."""
    planner = _core.ChunkPlanner(100_000, 2)
    planner.observe_item_seconds(10e-6)
    assert planner.min_chunk == 100
    planner.observe_item_seconds(100e-6)
    assert planner.min_chunk == 10
    planner.observe_item_seconds(10e-6)
    assert planner.min_chunk == 10


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_meaningless_timings_are_ignored(bad):
    planner = _core.ChunkPlanner(400, 2)
    planner.observe_item_seconds(0.004)
    planner.observe_item_seconds(bad)
    assert planner.min_chunk == 1


def test_fixed_and_capped_chunks_keep_their_bounds():
    fixed = _core.ChunkPlanner(100, 2, fixed=30)
    fixed.observe_item_seconds(1.0)
    assert sizes(fixed) == [30, 30, 30, 10]
    capped = _core.ChunkPlanner(400, 2, cap=20)
    capped.observe_item_seconds(1.0)
    s = sizes(capped)
    assert max(s) == 20 and s[-1] == 1
