"""A streaming map's process stage (run/stage_runners.py's runner for the ``process``
executor): the ids the flow dispatches wait in a heap until a worker of the
ProcessEngine's pool has room (engines/process_stream.py asks for them); each batch's
items go on to the flow as soon as it is back."""

from __future__ import annotations

import heapq
import math
import threading
import time
from typing import Any

from .stage_runners import _Runner
from .stages import Stage, StagePart

#: Items a process stage holds at most (running in workers, or waiting for a worker).
PROCESS_IN_FLIGHT = 4096
#: How long ready items wait for more before a process stage sends a batch smaller than
#: its measured size (~50 ms of work).
PROCESS_LINGER_S = 0.02
#: A process stage gives the pool back after this long with no item to run (a map on
#: the same engine in another thread may be waiting; a waiting map also asks for it).
PROCESS_IDLE_S = 0.05
#: A process stage's last items go in batches of about what is left / (this x workers),
#: but (a stage ending in batch calls) not fewer items than take as long as those calls,
#: up to MAX_CALL_ITEMS.
TAIL_SPLIT, MAX_CALL_ITEMS = 2, 64
#: Placeholders a process stage's batch may carry beyond its own items' count: a
#: placeholder is a row of Nones that the worker skips, a batch a round trip to it.
STRAGGLER_GAP = 256


class ProcessRunner(_Runner):
    """A process stage: the ids the flow dispatches wait in a heap; a feeder thread runs
    the ProcessEngine's pool as a stream over them while there are any
    (engines/process_stream.py): a worker with room takes the lowest ready ids, as many as
    its measured share, and each batch's items go on to the next stage as soon as it is
    back. No barrier: a worker never waits for another's batch. The pool serves one map
    at a time: a spell ends when nothing came for PROCESS_IDLE_S, or at once when another
    map waits for the pool."""

    def __init__(self, stream: Any, k: int, stage: Stage, processes: Any, base: dict):
        super().__init__(stream, k, stage)
        self.processes = processes
        self.timeout = stream.engine._item_timeout(stream.plan)
        self.part = StagePart(stage, stream.plan, stream.work_rt, base)
        # The flow hands over what it has (bounded by the read-ahead): the heap holds the
        # items while the workers are busy, so that each batch is as large as is ready.
        self.spec = (PROCESS_IN_FLIGHT, 0, 0, 0.0, False)
        self.lock = threading.Lock()  # ready, busy: the flow's thread and the feeder's
        self.ready: list[int] = []  # heap of ids dispatched, not yet in a batch
        self.arrived: dict[int, float] = {}  # the same ids: when they came (monotonic)
        # > 0: the spell waits for items, and wants this many ready to look again
        self.wanted = 0
        self.sent: set[int] = set()  # ids in batches, not yet reported
        self.members: dict[int, set[int]] = {}  # batch origin -> its ids not yet back
        self.busy = False  # the feeder runs a spell (or is about to)
        self.go = threading.Event()
        self.idle_since: float | None = None
        self.thread: threading.Thread | None = None
        self.stopped = False
        # A stage that ends in batch calls (a DualNode): the items whose steps take as
        # long as a batch's calls (the workers say, Result.timing). A last batch smaller
        # than that waits for the previous batch's calls (one batch's at a time, beside
        # the next batch's items, process_worker.py) instead of running its items.
        self.call_items = 1
        self.most = 1  # the largest batch the pool asked for last

    def at_once(self) -> int:
        # Unmeasured, a batch is one item; measured (next_range's ``most``, the pool's
        # batch size), the stream's read-ahead grows with it.
        return self.processes.batches_at_once

    def begin(self) -> None:
        # Started before the first items come: Thread.start() waits for the new thread
        # to run, which, among a burst of I/O threads returning, costs milliseconds.
        if self.thread is None:
            self.thread = threading.Thread(target=self._feed, daemon=True,
                                           name="gilfree-stream-process-stage")
            self.thread.start()

    def dispatch(self, ids: list[int]) -> None:
        now = time.monotonic()
        with self.lock:
            for i in ids:
                heapq.heappush(self.ready, i)
                self.arrived[i] = now
            start, self.busy = not self.busy, True
            # A spell waiting for items (not for a worker) looks again once there are as
            # many as it wants; not at every dispatch: each wake costs it the GIL.
            wake = not start and 0 < self.wanted <= len(self.ready)
            if wake:
                self.wanted = 0
        if wake:
            pool = self.processes._pool
            if pool is not None:
                pool.wake()
        if not start:
            return
        self.begin()
        self.go.set()

    def close(self) -> None:
        self.stopped = True
        self.go.set()
        pool = self.processes._pool
        if pool is not None:
            pool.wake()

    # -- the feeder thread ---------------------------------------------------------------
    def _feed(self) -> None:
        s, k = self.stream, self.k
        while True:
            self.go.wait()
            self.go.clear()
            if self.stopped:
                return
            while self.processes.waited_for and not self.stopped:
                time.sleep(0.001)  # another map asked for the pool: it goes first
            self.idle_since = None
            try:
                if s._shut_down():  # not a new pool for a map whose engine was shut down
                    raise s._shut_down_error()
                self.processes._stage_stream(self.part, s.work_rt, self, self.timeout)
            except BaseException as exc:  # the pool broke, the engine shut down
                with self.lock:
                    left = sorted(self.sent) + self.ready
                    self.sent.clear()
                    self.members.clear()
                    self.ready = []
                    self.arrived.clear()
                for i in left:
                    s.fail(i, exc if not s._shut_down() else s._shut_down_error(i))
                if left:
                    s.done(k, left, [True] * len(left))
            with self.lock:
                if not self.ready or self.stopped:
                    self.busy = False
                    continue
            self.go.set()  # items came while the spell ended: another one

    # -- what StreamCall asks (the feeder thread, GIL held) -------------------------------
    def open(self) -> bool:
        if self.stopped or self.processes.waited_for:
            return False
        if self.ready:
            self.idle_since = None
            return True
        now = time.monotonic()
        if self.idle_since is None:
            self.idle_since = now
        return now - self.idle_since < PROCESS_IDLE_S

    def next_range(self, most: int, share: int) -> tuple[int, int] | float | None:
        """The lowest ready ids, ``most`` of them at most and about a ``share``-th of
        those ready, as the range from the first to the last; None if none is ready.
        Fewer than that wait until the first has been ready for PROCESS_LINGER_S (the
        seconds left are returned), unless no more can come: a batch costs the driver a
        round trip whatever its size, and items that trickle in would go one per batch.
        Ids of the range that are not the batch's travel as placeholders; they are
        bounded by the batch's size plus STRAGGLER_GAP."""
        if self.stopped or self.processes.waited_for:
            return None
        if most != self.most:  # the pool's batch size (~50 ms of measured work)
            self.most = most
            self.stream.more_at_once(most * self.processes.batches_at_once)
        with self.lock:
            ready, arrived = self.ready, self.arrived
            if not ready:
                self.wanted = 1
                return None
            a = ready[0]
            take = min(most, max(1, -(-len(ready) // share)))
            # The stage's last items (no more can come: asked only when it would change
            # the batch) go in batches that shrink with what is left, to about a fair
            # share / TAIL_SPLIT (guided self-scheduling), so that the workers end
            # together, not one idle while another runs a full batch it queued (W8: one
            # worker ended up to 35 ms after the other); with batch calls, to no fewer
            # items than take as long as those calls (call_items).
            fair = max(-(-len(ready) // (TAIL_SPLIT * self.processes.workers)),
                       self.call_items)
            if fair < take and self.stream.flow.drained(self.k):
                take = fair
            # A stage with a DualNode takes consecutive ids only: a worker calls the batch
            # function once per run of items between placeholders, each call with its
            # fixed cost. Its ids come out of order from an earlier stage: the run from
            # the lowest lingers like a small batch, for the ids missing in it.
            consecutive = self.part.plan.has_batch
            if consecutive:
                run = 1
                while run < take and a + run in arrived:
                    run += 1
            if (run < take) if consecutive else (len(ready) < most):
                left = arrived[a] + PROCESS_LINGER_S - time.monotonic()
                # (flow.drained: no more items can come, the input ended and earlier
                # stages are empty; the tail goes now, it would only linger)
                if left > 0 and not self.stream.flow.drained(self.k):
                    self.wanted = most
                    return left
            self.wanted = 0
            ids = []
            # Otherwise the range grows while it stays at most twice its ids plus
            # STRAGGLER_GAP: placeholders (each a None per input) stay about as few as
            # the batch's own items, and a straggler (a lowest id that came late from a
            # thread stage, the ids after it long sent) rides with the run after it
            # instead of going alone (W9, 200,000 items: 925-937 batches, 27-30 % of them
            # with 1 item, before; 397-452, 7 %, with this).
            while ready and len(ids) < take and ready[0] - a < (
                    len(ids) + 1 if consecutive else 2 * len(ids) + STRAGGLER_GAP):
                i = heapq.heappop(ready)
                del arrived[i]
                ids.append(i)
            self.sent.update(ids)
            self.members[a] = set(ids)
        return a, ids[-1] + 1

    def timed(self, item_s: float, calls_s: float) -> None:
        """A batch's timing from its worker (the feeder thread): its items' steps took
        ``item_s`` each, its batch calls ``calls_s`` in all."""
        if item_s > 0:
            self.call_items = max(1, min(MAX_CALL_ITEMS, math.ceil(calls_s / item_s)))

    def rows(self, a: int, b: int, origin: int) -> tuple[list, list[int]]:
        """The rows of ids [a, b) for the batch ``origin``, and the offsets (from ``a``)
        of those that are not its own (placeholders: None; or the stream was closed)."""
        s, part = self.stream, self.part
        own = self.members.get(origin, ())
        values, sigs = s.values, s.sigs
        rows: list = []
        skipped: list[int] = []
        starts = s.work_rt.worker_view() if self.k == 0 and s.rt.callbacks else None
        for i in range(a, b):
            v = values.get(i) if i in own else None
            if v is None:
                skipped.append(i - a)
                rows.append(None)
            else:
                if starts is not None:  # (its worker's node events come after)
                    s.item_starts(i, starts)
                rows.append(part.row(v, sigs.get(i)))
        return rows, skipped

    def placed(self, results: list, a: int, origin: int) -> None:
        """Items [a, a + len(results)) of batch ``origin`` are back (``results``: a
        result dict, an exception, or None for an item that never ran): its own go on to
        the flow, placeholders' results are dropped."""
        own = self.members.get(origin, set())
        s, take = self.stream, self.part.take
        values, sigs = s.values, s.sigs
        done, failed = [], []
        for i, result in enumerate(results, a):
            if i not in own:
                continue
            done.append(i)
            v = values.get(i)
            if v is None or result is None:  # closed meanwhile, or never ran
                failed.append(True)
            elif isinstance(result, BaseException):
                s.fail(i, result)
                failed.append(True)
            else:
                if not take(result, v, sigs.get(i)):
                    s.cached[i] = False
                failed.append(False)
        if not done:
            return
        with self.lock:
            self.sent.difference_update(done)
            own.difference_update(done)
            if not own:
                self.members.pop(origin, None)
        s.done(self.k, done, failed)
