"""``imap`` over a slow source (contract suite, every engine that streams item by item):
a generator over a queue, whose items come one at a time, gets each item's result about
when the next item comes, not once the read-ahead has filled or the input has ended."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from gilfree import Pipeline, node

INTERVAL = 0.15  # between two items of the source


@node(output_name="doubled")
def double(x):
    return 2 * x


def test_a_slow_sources_results_come_as_its_items_do(engine):
    if type(engine).__name__ in ("DaskEngine", "DaftEngine"):
        pytest.skip(f"{type(engine).__name__} streams in windows, each window one map")
    q: queue.Queue = queue.Queue()
    put_at: dict[int, float] = {}

    def feed():
        for i in range(6):
            put_at[i] = time.monotonic()
            q.put(i)
            time.sleep(INTERVAL)
        q.put(None)

    def source():
        while (x := q.get(timeout=30)) is not None:
            yield x

    threading.Thread(target=feed, daemon=True).start()
    got_at = {}
    for r in Pipeline([double], engine=engine).imap({"x": source()}, map_over="x"):
        got_at[r["doubled"] // 2] = time.monotonic()
    assert sorted(got_at) == list(range(6))
    # Item i may wait for the read of item i + 1 (a read of the source cannot be cut
    # short): one interval, plus a generous margin for a busy machine.
    late = {i: round(got_at[i] - put_at[i], 2) for i in range(5)}
    assert all(s < INTERVAL + 0.35 for s in late.values()), late
