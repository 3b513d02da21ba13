"""W2, async I/O: 200 items of ``await asyncio.sleep(0.010)``; and 20,000 trivial
async items (per-item cost).  Bars: ``AsyncEngine()`` <= 13 ms; <= 10 us/item.
"""

from __future__ import annotations

import asyncio

from common import every_engine, size
from harness import Candidate, optional
from hypernodes_peer import hypernodes_rows

from gilfree import Pipeline, node

ID, TITLE = "W2", "async I/O: 200 x asyncio.sleep(10 ms)"
ITEMS, SLEEP, TRIVIAL_ITEMS = 200, 0.010, 20_000
#: (id, title, candidates function, items for per-item units or None, baseline name)
WORKLOADS = [("W2", TITLE, "candidates", None, "sequential await loop"),
             ("W2b", "async dispatch: 20,000 trivial async items", "candidates_trivial",
              TRIVIAL_ITEMS, "sequential await loop")]


async def fetch_one(url: int) -> int:
    await asyncio.sleep(SLEEP)
    return url


async def bump_one(x: int) -> int:
    return x + 1


@node(output_name="page")
async def fetch(url: int) -> int:
    await asyncio.sleep(SLEEP)
    return url


@node(output_name="y")
async def bump(x: int) -> int:
    return x + 1


def _gather(fn, xs):
    async def main():
        return await asyncio.gather(*(fn(x) for x in xs))
    return main


def _sequential(fn, xs):
    async def main():
        return [await fn(x) for x in xs]
    return main


def _uvloop(main):
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def daft_async(fn, xs: list, plain: list, slow: bool) -> Candidate:
    """An ``async def`` ``@daft.func``: Daft awaits the rows of a batch concurrently."""
    def call(_):
        import daft

        f = daft.func(fn)
        df = daft.from_pydict({"x": xs})
        return df.select(f(df["x"]).alias("y")).to_pydict()["y"]

    return Candidate("daft async @daft.func", "peer", call, mode="-",
                     check=lambda r: list(r) == plain, unavailable=optional("daft"),
                     rounds=1 if slow else None)


def candidates(quick: bool, items: int = ITEMS, fn=fetch_one, node_=fetch, name="url",
               out="page", expect=lambda x: x, wid: str = "W2") -> list[Candidate]:
    xs = list(range(size(items)))
    pipeline = Pipeline([node_])
    expected = [{out: expect(x)} for x in xs]
    check = lambda r: r == expected  # noqa: E731

    def run_pipeline(engine):
        return pipeline.map({name: xs}, map_over=name, engine=engine)

    plain = [expect(x) for x in xs]
    sleepy = wid == "W2"  # the sequential rows take 2 s there: run them once
    rows = [
        Candidate("sequential await loop", "baseline",
                  lambda _: asyncio.run(_sequential(fn, xs)()), mode="-",
                  rounds=1 if sleepy else None, warmup=False if sleepy else None,
                  check=lambda r: list(r) == plain),
        *every_engine(run_pipeline, check, seq_rounds=1 if sleepy else None,
                      seq_warmup=not sleepy),
        Candidate("asyncio.gather (asyncio.run)", "peer",
                  lambda _: asyncio.run(_gather(fn, xs)()), mode="-",
                  check=lambda r: list(r) == plain),
        Candidate("uvloop gather", "peer", lambda _: _uvloop(_gather(fn, xs)), mode="-",
                  check=lambda r: list(r) == plain, unavailable=optional("uvloop")),
        daft_async(fn, xs, plain, slow=not sleepy),
    ]
    if sleepy:
        rows += hypernodes_rows("W2", len(xs), slow=("SeqEngine",))
    return rows


def candidates_trivial(quick: bool) -> list[Candidate]:
    return candidates(quick, items=TRIVIAL_ITEMS, fn=bump_one, node_=bump, name="x", out="y",
                      expect=lambda x: x + 1, wid="W2b")


if __name__ == "__main__":  # this workload alone: the same as run.py --only <id>
    import sys

    import run

    sys.exit(run.main(["--only", ID, *sys.argv[1:]]))
