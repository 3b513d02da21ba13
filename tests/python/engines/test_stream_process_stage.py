"""How a streaming map's process stage sizes its workers' batches (run/stage_runners.py,
_ProcessRunner._chunk): guided by the planner until an item's time is known, then about
PROCESS_BATCH_S of work per batch, at most two batches per worker per micro-batch."""

from __future__ import annotations

import time

from gilfree import Pipeline, ThreadEngine, node
from gilfree.engines import processes
from gilfree.run import stage_runners


@node(output_name="y", executor="thread")
def nap(x):
    time.sleep(0.001)  # items reach the process stage over time: several micro-batches
    return x + 1


@node(output_name="z", executor="process")
def square(y):
    return y * y


def test_worker_batches_follow_the_measured_item_time(monkeypatch):
    chunks = []
    real = processes._MapCall.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        chunks.append((self.n, self.chunk))

    monkeypatch.setattr(processes._MapCall, "__init__", spy)
    runners = []
    real_runner = stage_runners.runner
    monkeypatch.setattr(stage_runners, "runner",
                        lambda *a: runners.append(real_runner(*a)) or runners[-1])
    from gilfree.run import flow
    monkeypatch.setattr(flow, "runner", stage_runners.runner)
    with ThreadEngine() as engine:
        out = [r["z"] for r in Pipeline([nap, square]).imap(
            {"x": (i for i in range(3000))}, map_over="x", engine=engine)]
    assert out == [(i + 1) ** 2 for i in range(3000)]
    assert len(chunks) >= 2 and chunks[0][1] == 0  # the first: item time unknown
    proc = next(r for r in runners if isinstance(r, stage_runners._ProcessRunner))
    assert proc.item_s > 0
    workers = proc.processes.workers
    for n, chunk in chunks[1:]:
        assert 1 <= chunk <= -(-n // (2 * workers))
    # the rule itself, for a known item time
    proc.item_s = 0.001
    assert proc._chunk(10_000) == int(stage_runners.PROCESS_BATCH_S / 0.001)
    proc.item_s = 1e-7
    assert proc._chunk(1000) == -(-1000 // (2 * workers))  # capped: two per worker
    proc.item_s = 10.0
    assert proc._chunk(1000) == 1
