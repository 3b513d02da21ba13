"""W10, nested maps: an outer map over tasks whose nested pipeline maps over samples
(~2 ms of pure Python each), in three shapes of 400 samples: 1 task x 400, 3 x 134 and
400 x 5 (seed 004: "which level do I parallelise?").

Bar (issue 17): each shape >= 1.85x the sequential loop on 2 cores, on ``ProcessEngine()``
and ``AutoEngine()`` (warm). Run per outer item, 1 x 400 keeps one worker busy and the
other idle, and 400 x 5 pays an inner map's start-up per task; run as one map of all
inner items (run/fanout.py), every shape is 400 items over the cores.
The hand-written peer flattens the samples itself: ``Pool.map`` over all of them in
chunks, then regroups per task.

The "a node that maps" rows run the same work written as a node whose function calls
``Pipeline.map`` over its samples (opaque to the engine; no bar): on ``AutoEngine`` its
maps run on the engine and it picks the level (docs/choosing-an-engine.md); on
``ProcessEngine`` each call runs in a worker, and in a map of few items (fewer than 4
per worker: W10a, W10b) its map spreads over every worker from there (sub-maps,
remote/worker_maps.py); with many items (W10c) each call's map runs item after item in
its worker, the outer items keeping the workers busy. Placed in the driver
(``configure(..., executor="thread")``), its maps run on the engine from the driver's
threads, one map at a time on the pool: W10c's 400 maps of 5 items then barely beat
the loop (no bar; docs/nesting.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gilfree import Pipeline, engines, node

if TYPE_CHECKING:
    from harness import Candidate

ITERATIONS = 34_000  # ~2 ms per sample on the 2-core development VM
SHAPES = {"W10a": (1, 400), "W10b": (3, 134), "W10c": (400, 5)}
#: (id, title, candidates function, items for per-item units or None, baseline name)
WORKLOADS = [(wid, f"nested maps: {t} task(s) x {s} samples of ~2 ms pure Python",
              f"candidates_{wid[-1]}", None, "sequential loop")
             for wid, (t, s) in SHAPES.items()]


def analyse(sample: int) -> int:
    s = 0
    for i in range(ITERATIONS):
        s += (i * 31 + sample) % 7
    return s


@node(output_name="samples")
def make_samples(task: int, per_task: int) -> list[int]:
    return [task * 1000 + k for k in range(per_task)]


@node(output_name="score")
def score(sample: int) -> int:
    return analyse(sample)


@node(output_name="total")
def summarize(scores: list[int]) -> int:
    return sum(scores)


def pipeline() -> Pipeline:
    per_sample = Pipeline([score], name="per_sample").as_node(
        input_mapping={"samples": "sample"}, output_mapping={"score": "scores"},
        map_over="samples")
    return Pipeline([make_samples, per_sample, summarize], name="per_task")


_per_sample = Pipeline([score], name="per_sample")


@node(output_name="total")
def mapping_task(task: int, per_task: int) -> int:
    """A task written as a node whose function maps (not a nested pipeline)."""
    samples = [task * 1000 + k for k in range(per_task)]
    return sum(r["score"] for r in _per_sample.map({"sample": samples}, map_over="sample"))


def _flat_peer(pool, tasks, per_task):
    import os

    samples = [t * 1000 + k for t in tasks for k in range(per_task)]
    chunk = max(1, len(samples) // (4 * (len(os.sched_getaffinity(0)))))
    scores = pool.map(analyse, samples, chunksize=chunk)
    return [sum(scores[k * per_task:(k + 1) * per_task]) for k in range(len(tasks))]


def _candidates(wid: str) -> list[Candidate]:
    import multiprocessing

    from common import cores, engine_pair, size
    from harness import Candidate

    n_tasks, per_task = SHAPES[wid]
    per_task = size(per_task) if n_tasks == 1 else per_task
    tasks = list(range(n_tasks))
    expected_totals = [sum(analyse(t * 1000 + k) for k in range(per_task)) for t in tasks]
    p = pipeline()

    def check(out):
        return [r["total"] for r in out] == expected_totals

    def run(engine):
        return p.map({"task": tasks, "per_task": per_task}, map_over="task", engine=engine)

    def loop(_):
        return [sum(analyse(t * 1000 + k) for k in range(per_task)) for t in tasks]

    def make_pool():
        return multiprocessing.Pool(cores())

    def close_pool(pool):
        pool.terminate()
        pool.join()

    out = [Candidate("sequential loop", "baseline", loop, mode="-", key=True,
                     check=lambda r: list(r) == expected_totals)]
    for name in ("ProcessEngine", "AutoEngine"):
        cls = getattr(engines, name, None)
        if cls is None:
            continue
        rows = engine_pair(f"{name}()", cls, run, check)
        for c in rows:
            c.key = c.mode == "warm"  # the bar's rows: every round
        out += rows
    out += engine_pair("ThreadEngine()", engines.ThreadEngine, run, check, cold=False)
    mapping = Pipeline([mapping_task], name="mapping_task")

    def run_mapping(engine):
        return mapping.map({"task": tasks, "per_task": per_task}, map_over="task",
                           engine=engine)

    for name in ("AutoEngine", "ProcessEngine"):
        out += engine_pair(f"{name}(), a node that maps", getattr(engines, name),
                           run_mapping, check, cold=False)
    # The node placed in the driver (its threads): its maps run on the engine, over
    # every worker, as in run() (docs/nesting.md).
    out += engine_pair('ProcessEngine().configure("mapping_task", executor="thread"), a '
                       'node that maps',
                       lambda: engines.ProcessEngine().configure("mapping_task",
                                                                 executor="thread"),
                       run_mapping, check, cold=False)
    out += [Candidate(f"multiprocessing.Pool({cores()}).map over all samples, regrouped",
                      "peer", lambda pool: _flat_peer(pool, tasks, per_task), make=make_pool,
                      close=close_pool, mode=m, check=lambda r: r == expected_totals)
            for m in ("warm", "cold")]
    return out


def candidates_a(quick: bool) -> list[Candidate]:
    return _candidates("W10a")


def candidates_b(quick: bool) -> list[Candidate]:
    return _candidates("W10b")


def candidates_c(quick: bool) -> list[Candidate]:
    return _candidates("W10c")


if __name__ == "__main__":  # these workloads alone: the same as run.py --only W10a,...
    import sys

    import run

    sys.exit(run.main(["--only", ",".join(SHAPES), *sys.argv[1:]]))
