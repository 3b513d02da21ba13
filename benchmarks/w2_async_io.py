"""W2, async I/O: 200 items of ``await asyncio.sleep(0.010)``; and 20,000 trivial
async items (per-item cost).  Bars: ``AsyncEngine()`` <= 13 ms; <= 10 us/item.
"""

from __future__ import annotations

import asyncio

from common import engine_pair
from harness import Candidate, optional

from gilfree import Pipeline, node
from gilfree.engines import AsyncEngine

ID, TITLE = "W2", "async I/O: 200 x asyncio.sleep(10 ms)"
ITEMS, SLEEP, TRIVIAL_ITEMS = 200, 0.010, 20_000
#: (id, title, candidates function, items for per-item units or None, baseline name)
WORKLOADS = [("W2", TITLE, "candidates", None, None),
             ("W2b", "async dispatch: 20,000 trivial async items", "candidates_trivial",
              TRIVIAL_ITEMS, None)]


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


def _uvloop(main):
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def candidates(quick: bool, items: int = ITEMS, fn=fetch_one, node_=fetch, name="url",
               out="page", expect=lambda x: x) -> list[Candidate]:
    xs = list(range(items))
    pipeline = Pipeline([node_])
    expected = [{out: expect(x)} for x in xs]

    def run_pipeline(engine):
        return pipeline.map({name: xs}, map_over=name, engine=engine)

    plain = [expect(x) for x in xs]
    return [
        Candidate("asyncio.gather (asyncio.run)", "peer",
                  lambda _: asyncio.run(_gather(fn, xs)()), mode="-",
                  check=lambda r: list(r) == plain),
        Candidate("uvloop gather", "peer", lambda _: _uvloop(_gather(fn, xs)), mode="-",
                  check=lambda r: list(r) == plain, unavailable=optional("uvloop")),
        *engine_pair("AsyncEngine()", AsyncEngine, run_pipeline, lambda r: r == expected),
    ]


def candidates_trivial(quick: bool) -> list[Candidate]:
    return candidates(quick, items=TRIVIAL_ITEMS, fn=bump_one, node_=bump, name="x", out="y",
                      expect=lambda x: x + 1)
