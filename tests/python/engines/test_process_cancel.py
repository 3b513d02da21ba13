"""ProcessEngine under on_error="raise": once an item failed, the batches in the workers
that hold only later items stop (their results would be dropped), and the map still
raises the error SeqEngine raises, the first failing item's in input order.

Calls are counted in a file (one line per call, O_APPEND): workers are other processes.
"""

from __future__ import annotations

import os
import time

import pytest

from gilfree import Pipeline, PipelineCallback, node
from gilfree.engines import ProcessEngine


def calls(path) -> list[int]:
    return [int(v) for v in path.read_text().split()] if path.exists() else []


def _record(log: str, x: int) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)


@node(output_name="y")
def fails_at(x: int, bad: tuple, log: str, pause: float) -> int:
    _record(log, x)
    if x in bad:
        raise ValueError(f"bad item {x}")
    time.sleep(pause)
    return x


@node(output_name="y")
def slow_before(x: int, log: str) -> int:
    """Items 0-49 take 4 ms each, so item 50 fails ~0.2 s in: after item 120, whose
    batch started at the same time on the other worker, failed."""
    _record(log, x)
    if x in (50, 120):
        raise ValueError(f"bad item {x}")
    time.sleep(0.004 if x < 50 else 0.0)
    return x


def test_batches_after_the_failed_item_stop(tmp_path):
    log = tmp_path / "calls"
    with ProcessEngine(workers=2) as engine:
        with pytest.raises(ValueError, match="bad item 2"):
            Pipeline([fails_at]).map({"x": list(range(2000)), "bad": (2,), "log": str(log),
                                      "pause": 0.001}, map_over="x", engine=engine)
        ran = calls(log)
        # Before: the four batches in the workers (~1000 items) ran to their end, ~1 s
        # of work after the error. Now a worker stops before its next item once the
        # driver has the error; a loaded machine may let it run some more.
        assert len(ran) < 400, len(ran)
        # The engine goes on: the next map (no error) runs every item, once.
        log.unlink()
        out = Pipeline([fails_at]).map({"x": list(range(300)), "bad": (), "log": str(log),
                                        "pause": 0.0}, map_over="x", engine=engine)
        assert [r["y"] for r in out] == list(range(300))
        assert sorted(calls(log)) == list(range(300))


def test_an_earlier_batch_runs_on_and_its_error_is_the_one_raised(tmp_path):
    log = tmp_path / "calls"
    # Batches of 100: [0, 100) on one worker, [100, 200) on the other, and two more
    # queued. Item 120 fails first; [0, 100) holds an earlier item and is not stopped:
    # item 50 fails later in time, and is the error raised (SeqEngine's).
    with ProcessEngine(workers=2, batch_size=100) as engine:
        with pytest.raises(ValueError, match="bad item 50"):
            Pipeline([slow_before]).map({"x": list(range(1000)), "log": str(log)},
                                        map_over="x", engine=engine)
        ran = set(calls(log))
        assert set(range(51)) <= ran and 120 in ran
        # Under "collect" nothing is stopped: every item, once.
        log.unlink()
        out = Pipeline([slow_before]).map({"x": list(range(1000)), "log": str(log)},
                                          map_over="x", engine=engine, on_error="collect")
        assert [i for i, r in enumerate(out) if isinstance(r, Exception)] == [50, 120]
        assert sorted(calls(log)) == list(range(1000))


class Events(PipelineCallback):
    def __init__(self):
        self.starts, self.ends = [], []

    def on_map_item_start(self, item_index, ctx):
        self.starts.append(item_index)

    def on_map_item_end(self, item_index, duration, ctx):
        self.ends.append(item_index)


def test_a_stopped_batch_tells_callbacks_nothing(tmp_path):
    """A stopped batch's answer carries none of its events: its last item was told to
    start, and would never be told it ended. Every item told to start is told it ended,
    but the one that failed."""
    log = tmp_path / "calls"
    events = Events()
    with ProcessEngine(workers=2, batch_size=100, callbacks=[events]) as engine:
        with pytest.raises(ValueError, match="bad item 1"):
            Pipeline([fails_at]).map(
                {"x": list(range(1000)), "bad": (1,), "log": str(log), "pause": 0.002},
                map_over="x", engine=engine)
    assert len(set(events.ends)) == len(events.ends)  # each at most once
    assert set(events.starts) - set(events.ends) == {1}
    assert set(events.ends) <= set(calls(log))
    assert len(calls(log)) < 200  # (failed before: the other batches ran whole)
