"""W4, dispatch overhead: per-item cost of a map of ``x + 1`` through a pipeline.

Compares gilfree engines with a plain Python loop building the same result dicts,
for a one-node pipeline and a three-node chain.  Run: ``python benchmarks/w4_dispatch.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from gilfree import Pipeline, node
from gilfree import engines


@node(output_name="y")
def inc(x):
    return x + 1


@node(output_name="z")
def inc2(y):
    return y + 1


@node(output_name="w")
def inc3(z):
    return z + 1


def plain_loop(xs):
    return [{"y": x + 1} for x in xs]


def plain_chain(xs):
    out = []
    for x in xs:
        y = x + 1
        z = y + 1
        out.append({"y": y, "z": z, "w": z + 1})
    return out


def measure(fn, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run(items: int, rounds: int) -> list[dict]:
    xs = list(range(items))
    one, chain = Pipeline([inc]), Pipeline([inc, inc2, inc3])
    candidates = [("plain loop", "1 node", lambda: plain_loop(xs)),
                  ("plain loop", "3-node chain", lambda: plain_chain(xs))]
    engine_objects = []
    for name in ("SeqEngine", "ThreadEngine", "ProcessEngine"):
        cls = getattr(engines, name, None)
        if cls is None:
            continue
        e = cls()
        engine_objects.append(e)
        candidates.append((name, "1 node",
                           lambda e=e: one.map({"x": xs}, map_over="x", engine=e)))
        candidates.append((name, "3-node chain",
                           lambda e=e: chain.map({"x": xs}, map_over="x", engine=e)))
    for _, _, fn in candidates:  # warm pools and caches once, outside the timing
        fn()
    samples: dict[int, list[float]] = {i: [] for i in range(len(candidates))}
    for _ in range(rounds):  # interleaved, so drift hits every candidate alike
        for i, (_, _, fn) in enumerate(candidates):
            samples[i].extend(measure(fn, 1))
    for e in engine_objects:
        e.shutdown()
    rows = []
    for i, (who, shape, _) in enumerate(candidates):
        t = samples[i]
        rows.append({"who": who, "shape": shape, "median_us": statistics.median(t) / items * 1e6,
                     "min_us": min(t) / items * 1e6})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    rows = run(args.items, args.rounds)
    print(f"W4 dispatch overhead, {args.items} items, {args.rounds} interleaved rounds")
    print(f"{'':<14}{'pipeline':<14}{'median us/item':>16}{'min us/item':>13}")
    for r in rows:
        print(f"{r['who']:<14}{r['shape']:<14}{r['median_us']:>16.2f}{r['min_us']:>13.2f}")


if __name__ == "__main__":
    main()
