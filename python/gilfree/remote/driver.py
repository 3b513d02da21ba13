"""The driver side of the remote layer: what ProcessEngine and DaskEngine send to their
workers and how they take the answers back, in one place.

    engine (driver thread)                              worker (session.py)
    encode_payload(plan, base, options) ─ Payload ────▶ once per worker, kept by key
    encode_batch(map id, rows, a, b) ──── Batch ──────▶ run
    decode_result(bytes, fds) ◀────────── Result ────── parts / error, events
      place(out, a, parts): results into their slots (input order)
      replay(rt, events, depth): callbacks fire here, on the driver thread

Anything that does not pickle is named with its input, item and nodes (driver ->
worker); the transport module does the pickling.
"""

from __future__ import annotations

import math
from typing import Any

from . import transport
from ..errors import SerializationError
from ..model.plan import DUAL
from .messages import COLS, Batch, Payload, RemoteOptions, Result


def encode_payload(plan: Any, base: dict, options: RemoteOptions, *, shm: bool = True,
                   keys: set[str] | None = None) -> tuple[bytes, list[int]]:
    """A map's Payload pickled (``keys`` collects the @stateful keys it ships), or a
    SerializationError naming the first node or input that does not pickle."""
    try:
        return transport.dumps(Payload(plan, base, options), shm=shm, keys=keys)
    except Exception as exc:
        culprit = transport.find_unpicklable(lambda: {
            **{f"node {s.name!r}": s.node for s in plan.iter_steps()},
            **{f"input {k!r}": v for k, v in base.items()},
            "the cache": options.cache}) or "the pipeline"
        raise transport.serialization_error(
            culprit, "to the worker processes (driver -> worker)", exc) from exc


def check_sendable(plan: Any, base: dict, rows: list[dict], cache: Any) -> None:
    """Before a map a node makes on the engine running it (nothing sent yet): raise a
    SerializationError marked ``nothing_ran`` if a node, a shared input or an item does
    not pickle, so that ``Pipeline.map`` can run that map where the node runs instead
    (as before engines took such maps). Pickles into nothing, large buffers not copied:
    such maps only."""
    culprit = transport.find_unpicklable(lambda: {
        **{f"node {s.name!r}": s.node for s in plan.iter_steps()},
        **{f"input {k!r}": v for k, v in base.items()},
        "the cache": cache,
        **{f"map item {i}": row for i, row in enumerate(rows)}})
    if culprit is not None:
        err = transport.serialization_error(
            culprit, "to the worker processes (driver -> worker)", None)
        err.nothing_ran = True  # type: ignore[attr-defined]
        raise err


def consumers(plan: Any, names: list[str]) -> dict[str, list[str]]:
    """Which nodes take each mapped input (named when an input does not pickle)."""
    return {a: [s.name for s in plan.steps if a in s.args] for a in names}


def encode_batch(map_id: Any, rows: list[dict], a: int, names: list[str],
                 users: dict[str, list[str]], *, failed: dict | None = None,
                 shm: bool = True, keys: set[str] | None = None,
                 first: int = 0) -> tuple[bytes, list[int]]:
    """Map items ``a, a + 1, ...`` (``rows``) as a pickled Batch; ``failed``: batch
    offset -> the error of an item that fails without running. A row that does not
    pickle fails its item only (a SerializationError naming item, input and nodes); the
    other items travel and run. ``first``: the map's number of item 0 (the rows may be
    the rest of a larger map: AutoEngine ran its first items itself)."""
    cols = [[r[k] for r in rows] for k in names]
    failed = dict(failed or {})
    try:
        return transport.dumps(Batch(map_id, a, names, cols, failed), shm=shm, keys=keys)
    except Exception:
        pass
    for k, row in enumerate(rows):
        if k in failed:
            continue
        for name, value in row.items():
            bad = transport.find_unpicklable(lambda: {f"input {name!r}": value})
            if bad is not None:
                failed[k] = err = SerializationError(
                    f"cannot send {bad} of map item {first + a + k} (used by node(s) "
                    f"{users.get(name, [])}) to a worker process (driver -> worker)")
                err.nodes, err.value = tuple(users.get(name, ())), "input"
                break
    cols = [[None if i in failed else r[k] for i, r in enumerate(rows)] for k in names]
    return transport.dumps(Batch(map_id, a, names, cols, failed), shm=shm, keys=keys)


def decode_result(body: bytes, fds: list[int], a: int, b: int) -> Result:
    """A worker's answer for map items ``a`` to ``b - 1`` (takes ownership of ``fds``);
    its exceptions are rebuilt."""
    try:
        return transport.loads(body, fds)
    except Exception as exc:
        err = SerializationError(
            f"the results of map items {a} to {b - 1} cannot be unpickled in the driver "
            f"(worker -> driver): {type(exc).__name__}: {exc}")
        err.nodes, err.value = (), "results"
        raise err from exc


def place(out: list, a: int, parts: list, outputs: list[str]) -> int | None:
    """Put a batch's parts (map items from ``a``) into ``out``; the index of the first
    item that failed, or None."""
    first_error = None
    for part in parts:
        b = a + part.count
        data = part.data
        if part.mode == COLS:
            if len(outputs) == 1:
                o = outputs[0]
                out[a:b] = [{o: v} for v in data[0]]
            else:
                out[a:b] = [dict(zip(outputs, vals)) for vals in zip(*data)]
        else:
            out[a:b] = data
            if first_error is None:
                first_error = next((a + k for k, r in enumerate(data)
                                    if isinstance(r, BaseException)), None)
        a = b
    return first_error


#: The events a worker's own execute_map announces that the driver's map stands for.
MAP_ANNOUNCEMENTS = frozenset({"on_map_start", "on_map_end"})
#: The same for a stage's map (a map with several executors, a fan-out's steps around
#: it): the driver's map also tells each item's start and end.
STAGE_ANNOUNCEMENTS = MAP_ANNOUNCEMENTS | {
    "on_map_item_start", "on_map_item_end", "on_map_item_cached", "on_pipeline_start",
    "on_pipeline_end"}


def replay(rt: Any, events: list, depth: int,
           dropped: frozenset[str] = MAP_ANNOUNCEMENTS, flush: bool = True) -> None:
    """Fire the callbacks of a batch's recorded events, here and now (``flush=False``:
    queue them for the thread that flushes ``rt``, a streaming map's consumer). The
    driver announces the map once (on_map_start/end); each batch's own announcements
    (``dropped``) at the map's level (``depth``: the driver's pipeline path length) are
    dropped; nested maps' are kept."""
    if not events or not rt.callbacks:
        return
    rt.pending.extend(e for e in events if not (e.name in dropped and len(e.path) == depth))
    if flush:
        rt.flush()


# -- DualNode batch alignment ---------------------------------------------------------
def dual_batch_size(plan: Any, rt: Any) -> int:
    """The number of items a worker's batch should be a whole multiple of, so that each
    DualNode's batch function gets full batches of its size; 0 when the plan has none.

    The least common multiple of the DualNodes' sizes (their ``batch_size`` hint, else
    the engine's): with sizes 4 and 6 a batch of 12 gives both full batches, where the
    maximum (6, DaskEngine's rule before) gave the size-4 node batches of 4 and 2. The
    cost: sizes with a large LCM make large worker batches, fewer to balance."""
    sizes = [s.hints.get("batch_size") or rt.batch_size for s in plan.steps if s.kind == DUAL]
    sizes = [n for n in sizes if n]
    return math.lcm(*sizes) if sizes else 0


def whole_batches(size: int, align: int) -> int:
    """``size`` rounded up to a whole multiple of ``align`` (``align`` 0: unchanged)."""
    return -(-size // align) * align if align else size
