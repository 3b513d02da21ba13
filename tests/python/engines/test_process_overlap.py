"""A worker process runs a batch's waiting DualNode calls beside the next batch's items
(remote/session.py ``Job``, remote/process_worker.py's tail thread)."""

from __future__ import annotations

import os
import time

import pytest

from gilfree import DualNode, Pipeline, node
from gilfree.engines import ProcessEngine
from gilfree.engines.process_map import WorkerDied
from gilfree.model.plan import compile_plan
from gilfree.run.stages import split_at_batch


@pytest.fixture(autouse=True)
def started_file(tmp_path, monkeypatch):
    path = tmp_path / "started.txt"
    path.write_text("")
    monkeypatch.setenv("GILFREE_TEST_STARTED", str(path))  # workers get the driver's env

def _started() -> int:
    """Per-item calls started so far (lines in the file the test names)."""
    with open(os.environ["GILFREE_TEST_STARTED"]) as f:
        return len(f.readlines())


@node(output_name="y")
def mark(x: int) -> int:
    with open(os.environ["GILFREE_TEST_STARTED"], "a") as f:
        f.write(f"{x}\n")
    time.sleep(0.002)
    return x


def _one(y: int) -> int:
    return 0


def items_beside(y: list[int]) -> list[int]:
    """Waits 50 ms (the GIL released, as a model call would) and says how many per-item
    calls of other batches started meanwhile (one worker: in this process)."""
    before = _started()
    time.sleep(0.05)
    return [_started() - before] * len(y)


def items_beside_or_die(y: list[int]) -> list[int]:
    if 10 in y:
        os._exit(3)  # a crash in the batch call (a native model that segfaults)
    return items_beside(y)


DUAL_NAME = DualNode("z", _one, items_beside).name


def _pipeline(batch_fn=items_beside) -> Pipeline:
    return Pipeline([mark, DualNode("z", _one, batch_fn, batch_size=4)])


def test_a_waiting_batch_call_runs_beside_the_next_batch_items():
    with ProcessEngine(workers=1, batch_size=4) as engine:
        out = _pipeline().map({"x": list(range(24))}, map_over="x", engine=engine)
    assert [r["y"] for r in out] == list(range(24))
    beside = [out[i]["z"] for i in range(0, 24, 4)]
    # The first batch measures the call (alone); later ones overlap the next batch's
    # items (the last has no next batch).
    assert beside[0] == 0
    assert max(beside[1:-1]) > 0, beside


def test_batch_calls_do_not_overlap_items_that_read_the_same_shared_input():
    @node(output_name="y")
    def mark_with(x: int, model: str) -> int:
        return mark.func(x)

    def beside_with(y: list[int], model: str) -> list[int]:
        return items_beside(y)

    p = Pipeline([mark_with, DualNode("z", lambda y, model: 0, beside_with, batch_size=4)])
    with ProcessEngine(workers=1, batch_size=4) as engine:
        out = p.map({"x": list(range(16)), "model": "m"}, map_over="x", engine=engine)
    assert [r["y"] for r in out] == list(range(16))
    assert all(r["z"] == 0 for r in out)  # a shared model is never used by two threads


def test_split_keeps_per_item_steps_apart_from_the_batch_calls_that_end_the_plan():
    plan = compile_plan(_pipeline(), {"x"})
    head, tail = split_at_batch(plan, set())
    assert [s.name for s in head.steps] == ["mark"]
    assert head.outputs == ["y"] and tail.outputs == ["z"]
    assert tail.required == ["y"]
    # Not split: both parts read the shared input "model"; a per-item step after the
    # DualNode; no per-item step before it.
    assert split_at_batch(plan, {"y"}) is not None  # "y" is the head's output, not shared
    with_model = Pipeline([node(output_name="y")(lambda x, model: x),
                           DualNode("z", lambda y, model: 0, lambda y, model: y)])
    assert split_at_batch(compile_plan(with_model, {"x", "model"}), {"model"}) is None
    after = Pipeline([mark, DualNode("z", _one, items_beside),
                      node(output_name="w")(lambda z: z)])
    assert split_at_batch(compile_plan(after, {"x"}), set()) is None
    first = Pipeline([DualNode("z", lambda x: 0, lambda x: x)])
    assert split_at_batch(compile_plan(first, {"x"}), set()) is None


def test_a_batch_call_that_kills_its_worker_is_named_and_every_item_ends_once():
    with ProcessEngine(workers=1, batch_size=4) as engine:
        out = _pipeline(items_beside_or_die).map(
            {"x": list(range(24))}, map_over="x", engine=engine, on_error="collect")
    assert len(out) == 24
    for i, r in enumerate(out):
        if 8 <= i < 12:  # the batch whose call killed the worker
            assert isinstance(r, WorkerDied), (i, r)
            assert f"the batch call of node {DUAL_NAME!r}" in str(r), str(r)
        elif 12 <= i < 16 and isinstance(r, WorkerDied):
            # its items ran beside the call: either may have killed the worker, and the
            # message says so
            assert "ran beside it" in str(r), str(r)
        else:
            assert isinstance(r, dict) and r["y"] == i, (i, r)


def test_a_batch_call_that_kills_its_worker_alone_is_named():
    # Only one batch: its call runs alone (no next batch to overlap).
    with ProcessEngine(workers=1, batch_size=4) as engine:
        out = _pipeline(items_beside_or_die).map(
            {"x": [9, 10, 11]}, map_over="x", engine=engine, on_error="collect")
    assert all(isinstance(r, WorkerDied) for r in out), out
    assert all(f"the batch call of node {DUAL_NAME!r}" in str(r) for r in out), str(out[0])
    assert all("beside" not in str(r) and "on map item" not in str(r) for r in out)
