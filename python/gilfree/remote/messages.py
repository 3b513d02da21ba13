"""The messages a driver and its remote workers exchange (ProcessEngine and DaskEngine).

    driver                                                      worker (session.py)
    Payload(plan, base, RemoteOptions) ── once per worker ────▶ kept by key
    Batch(map id, first index, input names, columns, failed) ─▶ run: execute_map_around
    ◀──────────────── Result(parts, error, events) ──────────── parts: Part(count, mode,
                                                                data) per sub-batch;
                                                                events: Event(name, args,
                                                                path) to replay

What carries them differs (the process pool's socket frames with memfds, Dask tasks'
bytes); what they are does not. All of them are pickled by ``transport`` and only there.
Small NamedTuples: a field has a name on both sides, and a tuple costs nothing to pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

#: Part modes: every item of the sub-batch succeeded and its outputs travel as columns
#: (one list per plan output: cheap to pickle), or one entry per item, each a result dict
#: or a boxed exception.
COLS, ROWS = "cols", "rows"


@dataclass(frozen=True)
class RemoteOptions:
    """What a worker needs of the driver's Runtime to run a map's items as the driver
    would: one object, built once on the driver (``of``) and turned back into a Runtime
    in the worker (``runtime``)."""

    cache: Any = None
    retries: int = 0
    batch_size: int | None = None
    collect: bool = False
    events: bool = False  # callbacks are on: record events for the driver to replay
    path: tuple = ()  # the driver's pipeline path (nested maps) the events are under
    timeout: float | None = None  # per-item timeout (ProcessEngine kills overdue items)
    # Added to a batch's item numbers where users see them (error notes, events): the
    # map's rows are a part of a larger map (AutoEngine ran the first items itself).
    # Status pages keep the batch's own numbers: the pool reads them.
    offset: int = 0
    # A node's own map spreads over the pool (ProcessEngine: remote/worker_maps.py), not
    # item after item in the worker: the map has too few items to keep the workers busy.
    node_maps: bool = False

    @classmethod
    def of(cls, rt: Any, timeout: float | None = None, offset: int = 0,
           node_maps: bool = False) -> "RemoteOptions":
        path = tuple(rt.ctx.hierarchy_path) if rt.ctx is not None else ()
        return cls(cache=rt.cache, retries=rt.retries, batch_size=rt.batch_size,
                   collect=rt.collect, events=bool(rt.callbacks), path=path, timeout=timeout,
                   offset=offset, node_maps=node_maps)

    def runtime(self, recorder: Any = None) -> Any:
        """The worker's Runtime: the driver's policy, ``recorder`` its only callback."""
        from ..callbacks import CallbackContext
        from ..run.execute import Runtime

        ctx = None
        if recorder is not None:
            ctx = CallbackContext()
            ctx.hierarchy_path = list(self.path)
        return Runtime(cache=self.cache, callbacks=[recorder] if recorder else None, ctx=ctx,
                       retries=self.retries, batch_size=self.batch_size, collect=self.collect)


class Payload(NamedTuple):
    """What every batch of a map shares: sent once per worker, kept by key."""

    plan: Any
    base: dict
    options: RemoteOptions


class Batch(NamedTuple):
    """Map items ``first, first + 1, ...``: one column per mapped input. ``failed``: batch
    offset -> the SerializationError of an item whose inputs did not pickle (its column
    entries are None placeholders)."""

    map_id: Any
    first: int
    names: list
    cols: list
    failed: dict

    @property
    def size(self) -> int:
        """The number of items (a map without mapped columns has only failed ones)."""
        return len(self.cols[0]) if self.cols else len(self.failed)


class Part(NamedTuple):
    """The results of ``count`` consecutive items (see COLS, ROWS)."""

    count: int
    mode: str
    data: list


class BatchCancelled(BaseException):
    """A batch stopped because the driver asked (a ProcessEngine map that already failed
    under ``on_error="raise"`` drops the results of batches after the failed item).
    Raised in the worker before an item's first step; a BaseException so that no node's
    ``except Exception`` and no "collect" bookkeeping takes it for the item's error. It
    travels back as the batch's error, is never raised to the user: the map raises the
    earlier item's error."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*(args or ("the driver stopped this batch: its map failed at an "
                                    "earlier item",)))


class Result(NamedTuple):
    """A batch's answer: its parts in order (each pickled as it finished), or the boxed
    exception that stopped it; and the callback events it recorded either way.
    ``timing``: for a plan that ends in batch calls that run beside the next batch's
    items (a DualNode that waits, after per-item steps), (seconds an item's steps took,
    on average; seconds the batch calls took), which a streaming process stage sizes its
    last batches by."""

    parts: list | None
    error: Any
    events: list
    timing: tuple[float, float] | None = None


class Event(NamedTuple):
    """A callback event recorded in a worker, replayed by the driver (Runtime.flush)."""

    name: str
    args: tuple
    path: list
