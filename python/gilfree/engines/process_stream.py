"""A streaming map's process stage on a ProcessEngine's pool: one ``pool.stream()`` per
busy spell of the stage (run/stage_process.py's ``ProcessRunner`` is its source).

    source (the stage's runner)         StreamCall (its feeder thread)      C++ MapScheduler
    items made ready: dispatch() ─────▶ pool.wake() ───────────────────────▶ looks again
    next_range(most, share) ◀────────── a worker has room ◀──────────────── (streaming)
      -> [a, b): the lowest ready ids
    rows(a, b, origin) ◀─────────────── make_batch(a, b, origin): its rows ─▶ BATCH
    placed(results, a, origin) ◀─────── on_result / on_lost ◀─────────────── RESULT, exit
    open() ◀─────────────────────────── false: no new batches; returns when
                                        what was sent is back

Items are numbered by the stream (item i is item i on the workers' status pages, in
their events and in error notes). A batch is the range from its lowest id to its highest:
the ids in it that are not its own (still in an earlier stage, or sent in another batch)
travel as placeholders, as in a staged map; its origin (lowest id) tells whose they are.
"""

from __future__ import annotations

from typing import Any

from ..errors import EngineShutDown, ExecutionError
from ..remote import driver as remote
from ..remote import transport
from ..remote.messages import RemoteOptions
from ..run.stages import Skipped, StagePart
from .process_map import DEPTH, _dual_batch_size, _MapCall


class StreamCall(_MapCall):
    """One busy spell of a process stage: batches of the ids ``source`` has ready, on
    the pool, until ``source.open()`` says no more and what was sent is back."""

    def __init__(self, engine: Any, pool: Any, part: StagePart, rt: Any, source: Any,
                 timeout: float | None):
        names = list(part.row({}, {} if part.ship_sigs else None))
        super().__init__(engine, pool, part.plan, part.shared, [dict.fromkeys(names)], rt,
                         stage=True, timeout=timeout, deferred=True,
                         first=source.stream.offset, node_maps=False)  # items unknown
        self.source = source
        # The slots on_lost fills (_MapCall._fail_item): of the ids in flight only.
        self.out: dict = {}

    def run(self) -> None:
        chunk = self.engine.batch_size or 0
        align = _dual_batch_size(self.plan, self.rt)
        if align:  # a DualNode's batch function gets whole batches where items allow
            chunk = remote.whole_batches(chunk or align, align)
        try:
            self.pool.stream(self.key, self.payload, self.payload_fds, self.make_batch,
                             self.on_result, self.on_lost, self.source.next_range,
                             self.source.open, chunk=chunk, depth=DEPTH,
                             item_timeout=self.timeout or 0.0)
        finally:
            transport.close_fds(self.payload_fds)
            self.payload_fds = []
        broken = self.pool.broken
        if broken:
            raise ExecutionError(f"ProcessEngine is broken: {broken}")
        if self.pool.is_shut_down:  # its workers are gone: what was in flight is lost
            raise EngineShutDown(f"{self.engine.name_in_messages} was shut down during "
                                 "the map")

    # -- callbacks from C++ (the feeder thread, GIL held) ------------------------------
    def make_batch(self, a: int, b: int, origin: int) -> tuple[bytes, list[int]]:
        rows, skipped = self.source.rows(a, b, origin)
        if skipped:  # not this batch's (or the stream was closed): placeholders
            placeholder, empty = Skipped(), dict.fromkeys(self.names)
            for k in skipped:
                rows[k] = empty
            skipped = dict.fromkeys(skipped, placeholder)
        return remote.encode_batch(self.map_id, rows, a, self.names, self.consumers,
                                   failed=skipped or {}, first=self.first)

    def on_result(self, a: int, b: int, origin: int, body: bytes, fds: list[int]) -> bool:
        result = remote.decode_result(body, fds, a, b)
        self._replay(result.events)
        if result.timing is not None:
            self.source.timed(*result.timing)
        if result.error is not None:  # the batch as a whole failed: each item says so
            results = [result.error] * (b - a)
        else:
            results = [None] * (b - a)
            remote.place(results, 0, result.parts, self.plan.outputs)
        self.source.placed(results, a, origin)
        return not self.source.stopped

    def on_lost(self, a: int, b: int, origin: int, info: dict) -> bool:
        super().on_lost(a, b, origin, info)  # collect: the items' errors into their slots
        self.source.placed([self.out.pop(i, None) for i in range(a, b)], a, origin)
        return not self.source.stopped
