"""W6, batch encoding: 200 passages through a DualNode encoder.

singular: 10 ms per call; batch: 10 ms + 0.05 ms per item (a model's fixed cost per
call plus a small per-item cost; sleeps, so they release the GIL like a GPU call).
Bar: ``pipeline.map`` on ThreadEngine with automatic batch size <= 15 ms.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from common import engine_pair
from harness import Candidate

from gilfree import DualNode, Pipeline
from gilfree.engines import SeqEngine, ThreadEngine

ID, TITLE = "W6", "batch encoding: 200 passages, DualNode"
ITEMS, CALL, PER_ITEM = 200, 0.010, 0.00005
#: (id, title, candidates function, items for per-item units or None, baseline name)
WORKLOADS = [("W6", TITLE, "candidates", None, None)]


def encode_one(passage: str) -> int:
    time.sleep(CALL)
    return len(passage)


def encode_batch(passage: list[str]) -> list[int]:
    time.sleep(CALL + PER_ITEM * len(passage))
    return [len(p) for p in passage]


def candidates(quick: bool) -> list[Candidate]:
    passages = [f"passage number {i}" for i in range(ITEMS)]
    pipeline = Pipeline([DualNode("embedding", encode_one, encode_batch)])
    expected = [{"embedding": len(p)} for p in passages]
    check = lambda out: out == expected  # noqa: E731
    plain = [len(p) for p in passages]

    def run_pipeline(engine):
        return pipeline.map({"passage": passages}, map_over="passage", engine=engine)

    def batches_in_threads(ex, size=32):
        chunks = [passages[i:i + size] for i in range(0, len(passages), size)]
        return [v for part in ex.map(encode_batch, chunks) for v in part]

    return [
        Candidate("one batch of all (SeqEngine)", "gilfree", run_pipeline, make=SeqEngine,
                  check=check),
        *engine_pair("ThreadEngine() auto batch", ThreadEngine, run_pipeline, check),
        Candidate("batches of 32 in 7 threads", "peer", batches_in_threads,
                  make=lambda: ThreadPoolExecutor(7), close=lambda ex: ex.shutdown(),
                  check=lambda r: r == plain),
        Candidate("one batch of all (plain call)", "peer", lambda _: encode_batch(passages),
                  mode="-", check=lambda r: r == plain),
        Candidate("singular per item, ThreadPoolExecutor(200)", "peer",
                  lambda ex: list(ex.map(encode_one, passages)),
                  make=lambda: ThreadPoolExecutor(200), close=lambda ex: ex.shutdown(),
                  check=lambda r: r == plain),
    ]
