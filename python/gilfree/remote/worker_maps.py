"""A node's own map, made in a ProcessEngine worker: its items spread over the pool.

Why: a node whose function calls ``pipeline.map(...)`` runs in a worker during a map;
its map ran there item after item, so one outer item of 400 inner items kept one core
busy and the others idle (issue 17: "never pools inside pools"). Here the worker hands
its map to the driver's scheduler, which spreads its batches over every worker, this
one included (it runs batches while it waits), before any new item of the outer map.

    worker (the node's thread)                  driver (map_scheduler.cpp)
    RelayPool.map: SUBMAP (payload, where ─────▶ sub-map: its batches go first, to any
    this worker is) + SUBBATCH per batch         worker with room (this one too)
    wait_answer: runs SUBBATCH frames sent  ◀─── SUBBATCH (any worker's sub-map)
    here, keeps map batches for later       ◀─── SUBRESULT / SUBLOST (a worker died)
    SUBEND (done, or stopped at an error) ─────▶ what is left of it is dropped

The map's semantics (events, errors, results in order, collect) are ``_MapCall``'s, the
same object that runs a map in the driver: ``RelayPool`` only stands in for the native
pool. When the driver asks for it (``RemoteOptions.node_maps``: the outer map has fewer
items than would keep the workers busy by themselves, ``process_map.spreads_node_maps``),
the worker loop (process_worker.py) sets ``maps_on(NodeMapsEngine)`` around a batch's
items.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable

from ..engines.processes import ProcessEngine
from ..run.execute import execute_map


def _ranges(n: int, workers: int, chunk: int = 0) -> list[tuple[int, int]]:
    """The batches of a sub-map, fixed when it is sent: the pool's own guided chunks
    (``ChunkPlanner``, which the driver's maps use), or ``chunk`` items each."""
    from .._native import core

    planner = core().ChunkPlanner(n, workers, chunk)
    out = []
    while (r := planner.next()) is not None:
        out.append(r)
    return out


class RelayPool:
    """Stands in for the native pool in a worker's ``_MapCall``: the batches go to the
    driver as a sub-map, the answers come back through the worker's frame loop."""

    is_shut_down = False
    broken = ""

    def __init__(self, worker: Any, workers: int):
        self.worker = worker
        self.workers = workers
        self._ids = itertools.count(1)

    def map(self, n: int, key: bytes, payload: bytes, payload_fds: list[int],
            make_batch: Callable, on_result: Callable, on_lost: Callable, *, chunk: int = 0,
            depth: int = 2, item_timeout: float = 0.0) -> None:
        worker = self.worker
        sub = next(self._ids)
        ranges = _ranges(n, self.workers, chunk)
        worker.open_sub(sub, key, payload, [os.dup(fd) for fd in payload_fds])
        try:
            for i, (a, b) in enumerate(ranges):
                body, fds = make_batch(a, b, a)
                worker.send("subbatch", sub, body, fds, key=str(i).encode())
            for _ in ranges:
                kind, i, body, fds = worker.wait_answer(sub)
                a, b = ranges[i]
                if kind == "lost":
                    ok = on_lost(a, b, a, _lost_info(body))
                else:
                    ok = on_result(a, b, a, body, fds)
                if not ok:
                    return  # the raise policy: _MapCall raises the first error
        finally:
            worker.end_sub(sub)


def _lost_info(body: bytes) -> dict:
    """SUBLOST's body ("pid signal exitcode step item") as _MapCall.on_lost reads it."""
    pid, sig, code, step, item = (int(x) for x in body.split())
    return {"pid": pid, "signal": None if sig < 0 else sig,
            "exitcode": None if code < 0 else code, "step": step, "item": item,
            "beside_step": -1}


class NodeMapsEngine(ProcessEngine):
    """The engine a node's own map runs on in a worker: a ProcessEngine whose pool is
    the driver's, reached through this worker (``RelayPool``). Every node of the inner
    pipeline runs in the workers: hints that would place one in the driver cannot, here."""

    engine_name = "ProcessEngine"  # in messages: the user's engine

    def __init__(self, relay: RelayPool):
        super().__init__(workers=relay.workers)
        self._relay = relay

    @property
    def pool(self) -> Any:
        return self._relay

    def _on_pool(self, work: Any) -> Any:
        return work(self._relay)

    def _execute_map(self, plan: Any, base: dict, rows: list[dict], rt: Any) -> list:
        if not rows:
            return execute_map(plan, base, rows, rt)
        return self._map_rows(plan, base, rows, rt)

    def shutdown(self) -> None:
        """Nothing to stop: the pool is the driver's."""

    def __repr__(self) -> str:
        return f"ProcessEngine(workers={self.workers}) (a node's map, from a worker)"
