"""The worker side of the remote layer: one ``Session`` per worker process, whoever
carries its messages (ProcessEngine's ``_worker.py``, DaskEngine's ``_dask_worker.py``).

    adapter (socket frames / Dask task)        Session (this module)
    payload bytes, key ──────────────────────▶ load_payload: Payload unpickled once, kept
                                                by key (an unpicklable one: its error,
                                                raised by each batch that needs it)
    drop / forget key ───────────────────────▶ drop_payload; end_map(map id)
    batch bytes, key ────────────────────────▶ run_batch: new map id -> stateful.new_map();
                                                execute_map_around in sub-batches (or the
                                                column path), each Part pickled as it ends
    ◀── Result bytes (+ memfds) ─────────────── parts or the boxed error, recorded Events
    exit / engine shutdown ──────────────────▶ release_stateful: @stateful teardown

``Watch`` is how a worker reports where it is (ProcessEngine's status page, read by the
driver when a worker dies or overruns); Dask workers need none. The @stateful registry is
per process: unpickling a @stateful object (transport) resolves its key here, so a model
is built once per worker process, across batches, maps and engines.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import OrderedDict
from typing import Any, Callable

from . import transport
from ..model.stateful import end_map, new_map
from ..run.execute_fast import column_sources, column_step, map_columns
from ..run.stages import Skipped, split_at_batch
from .messages import (COLS, ROWS, Batch, BatchCancelled, Event, Part, Payload,
                       RemoteOptions, Result)

#: Results larger than this per item are pickled in sub-batches of about SPILL_CHUNK.
SPILL_ITEM, SPILL_CHUNK = 64 * 1024, 4 * 1024 * 1024
#: Batch calls shorter than this are not worth another thread (Job.beside).
OVERLAP_MIN_S = 0.001

# -- @stateful objects: one per key per process -------------------------------------------
_REGISTRY: dict[str, Any] = {}  # stateful key -> this process's object
_REGISTRY_LOCK = threading.RLock()  # Dask worker threads share it; re-entered unpickling


def stateful_instance(key: str, blob: bytes) -> Any:
    """What a pickled @stateful object unpickles to (``transport``): this process's one
    object for ``key``, unpickled from ``blob`` the first time (built lazily, on use)."""
    with _REGISTRY_LOCK:
        obj = _REGISTRY.get(key)
        if obj is None:
            obj = _REGISTRY[key] = transport.unpickle(blob)
        return obj


def release_stateful(keys: list[str] | None = None) -> None:
    """Tear down (``__teardown__``) and forget these @stateful objects (None: all of
    them, at worker exit). A failing teardown is printed; the others still run."""
    with _REGISTRY_LOCK:
        chosen = list(_REGISTRY) if keys is None else [k for k in keys if k in _REGISTRY]
        objs = [_REGISTRY.pop(k) for k in chosen]
    for obj in objs:
        try:
            obj._gilfree_release()
        except Exception:
            traceback.print_exc()


class Watch:
    """Where a worker is, told as it goes; the default tells nobody. Each method runs on
    the hot path of its phase: keep overrides to a few stores."""

    #: What the running batch adds to item numbers in events (RemoteOptions.offset).
    offset = 0

    def loading(self) -> None:
        """A payload is being unpickled."""

    def loaded(self, plan: Any, options: RemoteOptions) -> None:
        """A payload's plan is ready (it may wrap the plan's steps to track them)."""

    def at_item(self, index: int) -> None:
        """Map item ``index`` runs next."""

    def items_done(self) -> None:
        """The items of a sub-batch are done; their results are being pickled."""

    def sending(self) -> None:
        """The batch's answer is being pickled and sent."""

    def event(self, name: str, args: tuple, steps: dict[str, int]) -> None:
        """A callback event (only when callbacks are on)."""


class Recorder:
    """The worker runtime's only callback: records each event for the driver to replay
    (exceptions boxed), telling the watch."""

    def __init__(self, watch: Watch, plan: Any):
        self.events: list[Event] = []
        self.watch = watch
        self.steps = {s.name: k for k, s in enumerate(plan.steps)}

    def __getattr__(self, event: str) -> Any:
        if not event.startswith("on_"):
            raise AttributeError(event)
        events, watch, steps = self.events, self.watch, self.steps
        box = transport.box_exception

        def record(*args: Any) -> None:
            watch.event(event, args, steps)
            values = tuple(box(a) if isinstance(a, BaseException) else a for a in args[:-1])
            events.append(Event(event, values, list(args[-1].hierarchy_path)))
        return record


class _Loaded:
    __slots__ = ("plan", "base", "options", "column_step", "error", "split", "overlap")

    def __init__(self, payload: Payload | None, error: BaseException | None = None,
                 overlap: bool = False):
        self.plan, self.base, self.options = payload if payload else (None, None, None)
        self.column_step = column_step(self.plan, self.options) if payload else None
        self.error = error
        # (per-item steps, the batch calls that end the plan): with ``overlap``, a batch's
        # batch calls may run beside the next batch's items (Job). Not with callbacks (the
        # events of one batch come in order), a per-item timeout (the status page times
        # one item), or a cache (the batch calls' keys chain on their inputs' keys).
        options = self.options
        self.split = (split_at_batch(self.plan, set(self.base)) if overlap and payload
                      and not options.events and not options.timeout and options.cache is None
                      else None)
        # Whether they do: measured on the map's first batch here (None until then).
        self.overlap: bool | None = None


class Session:
    """One worker process's remote runtime: payloads by key, the maps it is in (for
    @stateful failures), running batches. ``max_payloads``/``max_maps``: how many to keep
    (None: until dropped). Thread-safe where Dask's worker threads share it."""

    def __init__(self, watch: Watch | None = None, max_payloads: int | None = None,
                 max_maps: int = 1, overlap: bool = False):
        self.watch = watch or Watch()
        self.overlap = overlap  # batch calls may run beside the next batch (Job.beside)
        self.max_payloads, self.max_maps = max_payloads, max_maps
        self.payloads: OrderedDict[Any, _Loaded] = OrderedDict()
        # map id -> stateful.new_map()'s number: a @stateful constructor that fails is
        # run once per map here (later items get a copy of its error), again next map.
        self.maps: OrderedDict[Any, int] = OrderedDict()
        self.lock = threading.RLock()

    # -- payloads and maps ---------------------------------------------------------------
    def load_payload(self, key: Any, body: bytes, fds: list[int]) -> None:
        """Unpickle a map's Payload and keep it under ``key`` (unless already kept)."""
        with self.lock:
            if key in self.payloads:
                transport.close_fds(fds)
                return
            self.watch.loading()
            try:
                payload = transport.loads(body, fds)
                self.watch.loaded(payload.plan, payload.options)
                loaded = _Loaded(payload, overlap=self.overlap)
            except Exception as exc:
                err = transport.serialization_error(
                    "the pipeline or its inputs", "to the workers (a worker could not "
                    "unpickle them: modules that nodes and inputs use must be importable "
                    "on every worker; code defined in __main__ or a notebook travels by "
                    "value)", exc)
                err.add_note("".join(traceback.format_exception(exc)))
                loaded = _Loaded(None, err)
            self.payloads[key] = loaded
            while self.max_payloads and len(self.payloads) > self.max_payloads:
                self.payloads.popitem(last=False)  # maps whose driver never said "drop"

    def has_payload(self, key: Any) -> bool:
        return key in self.payloads

    def drop_payload(self, key: Any) -> None:
        with self.lock:
            self.payloads.pop(key, None)

    def begin_map(self, map_id: Any) -> None:
        """A batch of map ``map_id``: the first one here starts a map for @stateful."""
        if map_id in self.maps:
            return
        with self.lock:
            if map_id not in self.maps:
                self.maps[map_id] = new_map()
                while len(self.maps) > self.max_maps:
                    end_map(self.maps.popitem(last=False)[1])

    def end_map(self, map_id: Any) -> None:
        with self.lock:
            number = self.maps.pop(map_id, None)
        if number is not None:
            end_map(number)

    # -- batches ---------------------------------------------------------------------------
    def run_batch(self, key: Any, body: bytes, fds: list[int],
                  shm: bool = True) -> tuple[bytes, list[int]]:
        """Run a Batch with the payload kept under ``key``: the pickled Result and its
        memfds (``shm``: large buffers in a memfd; else all in the bytes)."""
        job = self.start_batch(key, body, fds, shm)
        job.run_items()
        return job.finish()

    def start_batch(self, key: Any, body: bytes, fds: list[int], shm: bool = True) -> "Job":
        """A Batch to run in two steps (``Job``); ``run_batch`` runs both at once."""
        return Job(self, key, body, fds, shm)

    def _runner(self, loaded: _Loaded, batch: Batch,
                recorder: Recorder | None) -> Callable[[int, int], tuple]:
        plan, base, options = loaded.plan, loaded.base, loaded.options
        step, names, cols, failed = loaded.column_step, batch.names, batch.cols, batch.failed
        first = batch.first + options.offset  # item numbers as users see them
        # Placeholders of items that failed in an earlier stage (Skipped) do not keep a
        # batch off the column path: a streaming stage's batches may have many.
        only_skipped = all(type(e) is Skipped for e in failed.values())
        sources = column_sources(step, base, names, cols) if step and only_skipped else None
        if sources is not None:
            collect = options.collect
            if failed:
                def run(a: int, b: int) -> tuple:
                    return _map_columns_around(step, sources, a, b, first, collect, failed)
                return run

            def run(a: int, b: int) -> tuple:
                return _map_columns(step, sources, a, b, first, collect)
            return run
        from ..run.execute import execute_map_around

        rows = _rows(batch)
        rt = options.runtime(recorder)
        at_item = self.watch.at_item

        def run(a: int, b: int) -> tuple:
            sub = {k - a: e for k, e in failed.items() if a <= k < b}
            # Rows the driver could not pickle fail in their slots; the rest run around.
            results = execute_map_around(plan, base, rows[a:b], rt, first + a, sub,
                                         options.collect,
                                         lambda k: at_item(batch.first + a + k))
            return _encode_results(results, plan.outputs)
        return run


class Job:
    """One Batch in a worker: ``run_items()`` runs its items, ``finish()`` makes its
    answer (the pickled Result and its memfds).

    A plan that ends in DualNodes after per-item steps (``_Loaded.split``) runs in two
    parts: the per-item steps in ``run_items``, the batch calls in ``finish``. When the
    first batch of a map here showed that its batch calls mostly wait (a model on a GPU,
    a service: thread CPU time at most half their wall time), ``beside`` is True: the
    worker (process_worker.py) may run ``finish`` on another thread while the next
    batch's items run, so the process keeps its core busy through the wait."""

    def __init__(self, session: Session, key: Any, body: bytes, fds: list[int], shm: bool):
        self.session, self.watch = session, session.watch
        self.spill = transport.Spill(shm)
        self.parts: list = []
        self.error: BaseException | None = None
        self.recorder: Recorder | None = None
        self.head: list | None = None  # a split plan's per-item results
        self.beside = False
        self.timing: tuple[float, float] | None = None  # a split plan's (Result.timing)
        self.items_s = 0.0  # a split plan: its per-item steps' seconds, per item run
        try:
            loaded = session.payloads.get(key)
            if loaded is None or loaded.error is not None:
                transport.close_fds(fds)  # the batch's buffers: nobody maps them now
                raise (loaded.error.with_traceback(None) if loaded is not None else
                       KeyError(f"no payload {key!r} in this worker"))
            self.batch: Batch = transport.loads(body, fds)
            session.begin_map(self.batch.map_id)
        except Exception as exc:
            self.error = exc
            return
        self.loaded = loaded
        self.beside = loaded.split is not None and loaded.overlap is True

    @property
    def tail_step(self) -> int:
        """The index in the plan of the first batch call ``finish`` makes."""
        return len(self.loaded.split[0].steps)

    def run_items(self) -> None:
        if self.error is not None:
            return
        loaded, batch, watch = self.loaded, self.batch, self.watch
        plan, options = loaded.plan, loaded.options
        try:
            if options.events:
                self.recorder = Recorder(watch, plan)
            n, first = batch.size, batch.first + options.offset
            watch.offset = options.offset
            watch.at_item(batch.first)
            if loaded.split is not None:
                self.rows = _rows(batch)
                t0 = time.perf_counter()
                self.head = self._around(loaded.split[0], self.rows, batch.failed, True)
                ran = max(1, len(self.rows) - len(batch.failed))
                self.items_s = (time.perf_counter() - t0) / ran
                return
            run = self.session._runner(loaded, batch, self.recorder)
            # Sub-batches: pickled (large buffers copied out) as soon as they finish, so
            # that a batch of big arrays never lives in this process all at once.
            # (DualNode batches are not split: their batch function wants whole batches.)
            a, size = 0, (n if plan.has_batch else 1)
            while a < n:
                b = min(n, a + size)
                before = self.spill.size
                encoded = run(a, b)
                watch.items_done()
                self.parts.append(_part(self.spill, b - a, encoded, plan, first + a))
                if a == 0:
                    per_item = (self.spill.size - before) / (b - a)
                    size = n if per_item < SPILL_ITEM else max(1, int(SPILL_CHUNK // per_item))
                a = b
        except BatchCancelled as exc:
            # Its map already failed: the answer says so, with no events (the driver
            # drops this batch's results; its callbacks must not see half an item).
            self.error, self.recorder = exc, None
        except Exception as exc:
            self.error = exc

    def _around(self, plan: Any, rows: list, failed: dict, tell: bool) -> list:
        from ..run.execute import execute_map_around

        options, batch = self.loaded.options, self.batch
        watch = self.watch
        return execute_map_around(plan, self.loaded.base, rows, options.runtime(None),
                                  batch.first + options.offset, failed, options.collect,
                                  (lambda k: watch.at_item(batch.first + k)) if tell else None)

    def _run_tail(self) -> None:
        """A split plan's batch calls over the items its per-item steps left alive."""
        loaded, head = self.loaded, self.head
        failed = {k: r for k, r in enumerate(head) if isinstance(r, BaseException)}
        rows = [{} if k in failed else {**row, **r}
                for k, (row, r) in enumerate(zip(self.rows, head))]
        wall, cpu = time.perf_counter(), time.thread_time()
        out = self._around(loaded.split[1], rows, failed, False)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        if loaded.overlap is None:
            loaded.overlap = wall >= OVERLAP_MIN_S and cpu <= wall / 2
        if loaded.overlap:  # calls that run beside the next batch's items: it may wait
            self.timing = (self.items_s, wall)
        results = [o if isinstance(o, BaseException) else {**r, **o}
                   for r, o in zip(head, out)]
        plan = loaded.plan
        self.parts.append(_part(self.spill, len(results),
                                _encode_results(results, plan.outputs), plan,
                                self.batch.first + loaded.options.offset))

    def finish(self, tell: bool = True) -> tuple[bytes, list[int]]:
        """The answer; ``tell``: say so on the status page (not from another thread: the
        page is the next batch's by then)."""
        if self.error is None and self.head is not None:
            try:
                self._run_tail()
            except Exception as exc:
                self.error = exc
        if tell:
            self.watch.sending()
        spill = self.spill
        events = self.recorder.events if self.recorder is not None else []
        if self.error is not None:
            spill.close()
            spill = transport.Spill(spill.shm)
            reply = Result(None, transport.box_exception(self.error), events)
        else:
            reply = Result(self.parts, None, events, self.timing)
        try:
            try:
                body = spill.body(reply)
            except Exception:
                # An event argument that cannot travel is told to callbacks as its repr, a
                # dict's (inputs, outputs) value by value: every event still arrives (a
                # progress bar counts it). Outputs themselves were checked in _part. The
                # answer goes into the same spill: the parts' buffers are in its memfd, at
                # the offsets their pickles name (a fresh spill gave them other arrays).
                events = [Event(e.name, tuple(_portable(a) for a in e.args), e.path)
                          for e in events]
                body = spill.body(reply._replace(events=events))
            return body, spill.fds()
        except BaseException:
            spill.close()
            raise


def _rows(batch: Batch) -> list[dict]:
    names, cols = batch.names, batch.cols
    return [dict(zip(names, vals)) for vals in zip(*cols)] if cols else [{}] * batch.size


# -- the column path and result encoding ----------------------------------------------
def _map_columns(step: Any, sources: list, a: int, b: int, first: int,
                 collect: bool) -> tuple:
    out, failed = map_columns(step, sources, a, b, first, collect)
    if not failed:
        return (COLS, [out])
    o = step.out0
    return _encode_results([v if isinstance(v, BaseException) else {o: v} for v in out], [o])


def _map_columns_around(step: Any, sources: list, a: int, b: int, first: int,
                        collect: bool, skipped: dict) -> tuple:
    """The column path over items [a, b) except the ``skipped`` placeholders (batch
    offset -> Skipped): each run of other items in one go. A placeholder's slot holds None
    among column results (the driver reads no result of an item it skipped), its Skipped
    among rows when some item failed."""
    out: list = []
    failed = False
    k = a
    while k < b:
        if k in skipped:
            out.append(None)
            k += 1
            continue
        stop = k + 1
        while stop < b and stop not in skipped:
            stop += 1
        got, bad = map_columns(step, sources, k, stop, first, collect)
        out.extend(got)
        failed = failed or bad
        k = stop
    if not failed:
        return (COLS, [out])
    o = step.out0
    return _encode_results([skipped[a + j] if a + j in skipped else
                            v if isinstance(v, BaseException) else {o: v}
                            for j, v in enumerate(out)], [o])


def _encode_results(results: list, outputs: list[str]) -> tuple:
    """Column lists when every item succeeded (cheap to pickle), else the list with each
    exception boxed."""
    if all(type(r) is dict for r in results):
        return (COLS, [[r[o] for r in results] for o in outputs])
    box = transport.box_exception
    return (ROWS, [box(r) if isinstance(r, BaseException) else r for r in results])


def _unsendable(value: Any) -> Exception | None:
    """Why ``value`` cannot be sent to the driver, or None if it can."""
    try:
        transport.dumps(value, shm=False)
        return None
    except Exception as why:
        return why


def _sendable(value: Any) -> bool:
    return _unsendable(value) is None


def _portable(value: Any) -> Any:
    """``value`` if it can be sent, else its repr (a dict: each value that cannot)."""
    if _sendable(value):
        return value
    if type(value) is dict:
        return {k: v if _sendable(v) else repr(v) for k, v in value.items()}
    return repr(value)


def _part(spill: Any, count: int, encoded: tuple, plan: Any, first: int) -> Any:
    """One sub-batch's results (map items ``first``, ...), pickled into the spill now;
    an item whose outputs do not pickle fails alone, with a SerializationError naming
    the output, the node that produced it and the item."""
    mode, data = encoded
    try:
        return spill.part(Part(count, mode, data))
    except Exception:
        pass
    outputs = plan.outputs
    rows = data if mode == ROWS else [dict(zip(outputs, vals)) for vals in zip(*data)]
    producer = {o: s.name for s in plan.steps for o in s.out_names}
    fixed = []
    for k, r in enumerate(rows):
        bad = ({o: _unsendable(v) for o, v in r.items()} if isinstance(r, dict)
               else {None: _unsendable(r)})
        bad = {o: why for o, why in bad.items() if why is not None}
        if not bad:
            fixed.append(r)
            continue
        fixed.append(transport.box_exception(transport.output_error(bad, producer, first + k)))
    return spill.part(Part(count, ROWS, fixed))
