"""W6, batch encoding: 200 passages through a DualNode encoder.

singular: 10 ms per call; batch: 10 ms + 0.05 ms per item (a model's fixed cost per
call plus a small per-item cost; sleeps, so they release the GIL like a GPU call).
Bar: ``pipeline.map`` on ThreadEngine with automatic batch size <= 15 ms.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from common import every_engine, size
from harness import Candidate, optional
from hypernodes_peer import hypernodes_rows

from gilfree import DualNode, Pipeline

ID, TITLE = "W6", "batch encoding: 200 passages, DualNode"
ITEMS, CALL, PER_ITEM = 200, 0.010, 0.00005
#: (id, title, candidates function, items for per-item units or None, baseline name)
WORKLOADS = [("W6", TITLE, "candidates", None, "sequential loop (singular)")]


def encode_one(passage: str) -> int:
    time.sleep(CALL)
    return len(passage)


def encode_batch(passage: list[str]) -> list[int]:
    time.sleep(CALL + PER_ITEM * len(passage))
    return [len(p) for p in passage]


def daft_rows(passages: list[str], plain: list[int]) -> list[Candidate]:
    """Daft as the seed reports used it for encoders: a batch UDF (``@daft.func.batch``,
    batch of 32) and a class UDF whose method takes batches (``@daft.cls`` +
    ``@daft.method.batch``, the model built once per instance)."""
    reason = optional("daft")
    check = lambda r: list(r) == plain  # noqa: E731

    def func_batch(_):
        import daft

        @daft.func.batch(return_dtype=daft.DataType.int64(), batch_size=32)
        def encode(passage):
            return encode_batch(passage.to_pylist())

        df = daft.from_pydict({"passage": passages})
        return df.select(encode(df["passage"]).alias("e")).to_pydict()["e"]

    def make_encoder():
        import daft

        @daft.cls
        class Encoder:
            @daft.method.batch(return_dtype=daft.DataType.int64())
            def encode(self, passage):
                return encode_batch(passage.to_pylist())

        return Encoder()

    def cls_batch(encoder):
        import daft

        df = daft.from_pydict({"passage": passages})
        return df.select(encoder.encode(df["passage"]).alias("e")).to_pydict()["e"]

    return [
        Candidate("daft @daft.func.batch(batch_size=32)", "peer", func_batch, mode="-",
                  check=check, unavailable=reason),
        Candidate("daft @daft.cls + @daft.method.batch", "peer", cls_batch,
                  make=make_encoder, mode="warm", check=check, unavailable=reason),
    ]


def candidates(quick: bool) -> list[Candidate]:
    passages = [f"passage number {i}" for i in range(size(ITEMS))]
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
        Candidate("sequential loop (singular)", "baseline",
                  lambda _: [encode_one(p) for p in passages], mode="-", rounds=1,
                  warmup=False, check=lambda r: r == plain),
        *every_engine(run_pipeline, check),
        Candidate("batches of 32 in 7 threads", "peer", batches_in_threads,
                  make=lambda: ThreadPoolExecutor(7), close=lambda ex: ex.shutdown(),
                  check=lambda r: r == plain),
        Candidate("one batch of all (plain call)", "peer", lambda _: encode_batch(passages),
                  mode="-", check=lambda r: r == plain),
        Candidate("singular per item, ThreadPoolExecutor(200)", "peer",
                  lambda ex: list(ex.map(encode_one, passages)),
                  make=lambda: ThreadPoolExecutor(200), close=lambda ex: ex.shutdown(),
                  check=lambda r: r == plain),
        *daft_rows(passages, plain),
        *hypernodes_rows("W6", len(passages)),
    ]


if __name__ == "__main__":  # this workload alone: the same as run.py --only <id>
    import sys

    import run

    sys.exit(run.main(["--only", ID, *sys.argv[1:]]))
