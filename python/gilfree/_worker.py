"""The main loop of a ProcessEngine worker process (started by ``_core.ProcessPool``).

    driver (ProcessPool)                       this process (single-threaded)
    INIT    sys.path, cwd, initializer ──────▶ set up, run initializer once ── READY ──▶
                                                (or INIT_FAILED + traceback, exit 1)
    PAYLOAD key: plan, broadcast inputs ─────▶ unpickled once, kept by key (LRU owned
    DROP    key ─────────────────────────────▶ by the driver: it says what to forget)
    BATCH   key, map id, first index, rows ──▶ execute_map(plan, base, rows) ─ RESULT ─▶
                                                in sub-batches, each pickled when done
                                                (large buffers appended to one memfd);
                                                plus recorded callback events, or the
                                                error that stopped the batch
    QUIT, or end of stream ──────────────────▶ tear down @stateful objects, exit 0

Started by posix_spawn (``main``) or forked by the forkserver (``_zygote.py``, which
imported all this once). argv: ``3 4 <parent pid>``: fd 3 is the socket to the driver,
fd 4 the status page (int64 x 4: batch id, item, step, phase) that the driver reads if
this process dies, to say which node and item it was running. This process dies with its parent:
PR_SET_PDEATHSIG(SIGKILL), checked against the parent pid given, and end of stream on
the socket. SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and
the driver decides what happens to running work.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
import traceback
from time import monotonic_ns
from typing import Any

PHASE_IDLE, PHASE_PAYLOAD, PHASE_BATCH, PHASE_SEND = 0, 1, 2, 3
#: Results larger than this per item are pickled in sub-batches of about SPILL_CHUNK.
SPILL_ITEM, SPILL_CHUNK = 64 * 1024, 4 * 1024 * 1024


class _Recorder:
    """The worker runtime's only callback: records each event for the driver to replay,
    and keeps the status page's item and step current."""

    def __init__(self, status: Any, steps: dict[str, int]):
        self.events: list[tuple] = []
        self.status = status
        self.steps = steps

    def __getattr__(self, event: str) -> Any:
        if not event.startswith("on_"):
            raise AttributeError(event)
        from .transport import box_exception

        events, status, steps = self.events, self.status, self.steps

        def record(*args: Any) -> None:
            if event == "on_map_item_start":
                status[1] = args[0] - 1  # the first step's wrapper adds one
            elif event == "on_node_start":
                status[2] = steps.get(args[0], -1)
            elif event == "on_node_cached" and steps.get(args[0]) == 0:
                status[1] += 1  # the first step did not run for this item
            values = tuple(box_exception(a) if isinstance(a, BaseException) else a
                           for a in args[:-1])
            events.append((event, values, list(args[-1].hierarchy_path)))
        return record


def _track_steps(plan: Any, status: Any, timed: bool = False) -> None:
    """Wrap the top-level steps so that the status page says which step runs and which
    item: the first step runs once per item, in order (the recorder keeps the count
    right when callbacks are on, cached steps included). Specialised by call shape: this
    runs once per item and step, on the hot path (~0.2 us)."""
    for k, step in enumerate(plan.steps):
        f = step.func
        if f is None:
            continue
        if k == 0 and timed:
            # A map with a per-item timeout: the driver kills a worker whose item started
            # too long ago (status[4], CLOCK_MONOTONIC ns, what the driver's clock reads).
            def tracked(*args: Any, f: Any = f, **kwargs: Any) -> Any:
                status[1] += 1
                status[2] = 0
                status[4] = monotonic_ns()
                return f(*args, **kwargs)
        elif k == 0 and step.nargs == 1:
            def tracked(a: Any, f: Any = f) -> Any:
                status[1] += 1
                status[2] = 0
                return f(a)
        elif k == 0:
            def tracked(*args: Any, f: Any = f, **kwargs: Any) -> Any:
                status[1] += 1
                status[2] = 0
                return f(*args, **kwargs)
        else:
            def tracked(*args: Any, f: Any = f, k: int = k, **kwargs: Any) -> Any:
                status[2] = k
                return f(*args, **kwargs)
        step.func = tracked


class Worker:
    def __init__(self, channel: Any, status: Any, kinds: dict[str, int]):
        self.ch = channel
        self.status = status
        self.k = kinds
        self.payloads: dict[bytes, tuple] = {}
        # The driver's map whose batches this worker runs now, and stateful.new_map()'s
        # number for it: a @stateful constructor that fails is run once per map here
        # (later items of the map get a copy of its error), and again in the next map.
        self.map_id = 0
        self.map_number = 0

    def send(self, kind: str, ident: int, body: bytes, fds: list[int]) -> None:
        self.ch.send(self.k[kind], ident, b"", body, fds)

    def init(self, body: bytes) -> None:
        from .transport import loads

        setup = loads(body, [])
        sys.path[:] = setup["path"]
        # A forked worker inherited the zygote's environment, which may be older than
        # the driver's: take the driver's, as a spawned process would.
        if os.environ != setup["env"]:
            os.environ.clear()
            os.environ.update(setup["env"])
        try:
            os.chdir(setup["cwd"])
        except OSError:
            pass
        if setup["initializer"] is not None:
            # Pickled apart, and loaded only now: an initializer imported by reference
            # may live on a sys.path entry the driver added at run time (set just above).
            initializer, initargs = loads(setup["initializer"], [])
            initializer(*initargs)

    def load_payload(self, key: bytes, body: bytes, fds: list[int]) -> None:
        from .transport import loads, serialization_error

        self.status[3] = PHASE_PAYLOAD
        try:
            plan, base, opts = loads(body, fds)
            _track_steps(plan, self.status, timed=bool(opts.get("timeout")))
            plan.column_step = _column_step(plan, base, opts)
            self.payloads[key] = (plan, base, opts, None)
        except Exception as exc:
            err = serialization_error(
                "the pipeline or its inputs", "(a worker could not unpickle them: modules "
                "that nodes and inputs use must be importable in the worker; code defined "
                "in __main__ or a notebook travels by value)", exc)
            err.add_note("".join(traceback.format_exception(exc)))
            self.payloads[key] = (None, None, None, err)

    def run_batch(self, ident: int, key: bytes, body: bytes, fds: list[int]) -> None:
        from .transport import Spill, box_exception, dumps, loads

        st = self.status
        st[0], st[2], st[3] = ident, -1, PHASE_BATCH
        events: list = []
        spill = Spill()
        parts: list = []
        error = None
        try:
            plan, base, opts, error = self.payloads[key]
            if error is not None:
                raise error
            outputs = plan.outputs
            map_id, first, names, cols, failed = loads(body, fds)
            if map_id != self.map_id:
                self._new_map(map_id)
            n = len(cols[0]) if cols else len(failed)
            st[1] = first - 1
            step = plan.column_step
            sources = _sources(step, base, names, cols) if step and not failed else None
            if sources is not None:
                collect = opts["collect"]

                def run(a: int, b: int) -> tuple:
                    return _map_columns(step, sources, a, b, first, collect)
            else:
                rows = [dict(zip(names, vals)) for vals in zip(*cols)] if cols else [{}] * n
                rt = self._runtime(plan, opts, events)

                def run(a: int, b: int) -> tuple:
                    sub = {k - a: e for k, e in failed.items() if a <= k < b}
                    return _encode_results(
                        self._execute(plan, base, rt, opts, first + a, rows[a:b], sub), outputs)
            # Sub-batches: pickled (large buffers copied out) as soon as they finish, so
            # that a batch of big arrays never lives in this process all at once.
            # (DualNode batches are not split: their batch function wants whole batches.)
            a, size = 0, (n if plan.has_batch else 1)
            while a < n:
                b = min(n, a + size)
                before = spill.size
                encoded = run(a, b)
                st[4] = -1  # items done: pickling them is not an item overrunning
                parts.append(_part(spill, b - a, encoded, plan, first + a))
                if a == 0:
                    per_item = (spill.size - before) / (b - a)
                    size = n if per_item < SPILL_ITEM else max(1, int(SPILL_CHUNK // per_item))
                a = b
        except Exception as exc:
            error = exc
        st[3] = PHASE_SEND
        if error is not None:
            spill.close()
            spill = Spill()
            reply = ("error", box_exception(error), events)
        else:
            reply = ("ok", ("parts", parts), events)
        try:
            out, out_fds = dumps(reply, spill=spill)
        except Exception:
            kept = [e for e in events if _sendable(e)]
            reply = (reply[0], reply[1] if error is None else box_exception(
                RuntimeError(f"{type(error).__name__}: {error}")), kept)
            out, out_fds = dumps(reply, spill=Spill())
        self.send("result", ident, out, out_fds)
        st[0], st[1], st[2], st[3], st[4] = -1, -1, -1, PHASE_IDLE, -1

    def _new_map(self, map_id: int) -> None:
        """The first batch of another map: batches of one map reach a worker together
        (a pool runs one map at a time), so the previous map is over here."""
        from .stateful import end_map, new_map

        if self.map_number:
            end_map(self.map_number)
        self.map_id, self.map_number = map_id, new_map()

    def _runtime(self, plan: Any, opts: dict, events: list) -> Any:
        from .callbacks import CallbackContext
        from .execute import Runtime

        recorder = ctx = None
        if opts["events"]:
            recorder = _Recorder(self.status, {s.name: k for k, s in enumerate(plan.steps)})
            recorder.events = events
            ctx = CallbackContext()
            ctx.hierarchy_path = list(opts["path"])
        rt = Runtime(cache=opts["cache"], callbacks=[recorder] if recorder else None, ctx=ctx,
                     retries=opts["retries"], batch_size=opts["batch_size"],
                     collect=opts["collect"])
        return rt

    def _execute(self, plan: Any, base: dict, rt: Any, opts: dict, first: int, rows: list,
                 failed: dict) -> list:
        from .execute import execute_map_around

        def before_run(k: int) -> None:
            self.status[1] = first + k - 1

        # Rows the driver could not pickle fail in their slots; the rest run around them.
        return execute_map_around(plan, base, rows, rt, first, failed, opts["collect"],
                                  before_run)

    def teardown(self) -> None:
        from .transport import stateful_registry

        for obj in list(stateful_registry().values()):
            try:
                obj._gilfree_release()
            except Exception:
                traceback.print_exc()

    def loop(self) -> None:
        k = self.k
        while True:
            frame = self.ch.recv()
            if frame is None:
                return
            kind, ident, key, body, fds = frame
            if kind == k["batch"]:
                self.run_batch(ident, key, body, fds)
            elif kind == k["payload"]:
                self.load_payload(key, body, fds)
            elif kind == k["drop"]:
                self.payloads.pop(key, None)
            elif kind == k["quit"]:
                return


def _column_step(plan: Any, base: dict, opts: dict) -> Any:
    """The step of a plan that the column path can run: one plain function called with
    positional arguments, one output, no cache, callbacks or retries (W4's and W5's
    shape). The whole sub-batch is then ``map(f, column, ..., repeat(constant))``: no
    dict per item, no per-item interpreter loop."""
    if opts["cache"] is not None or opts["events"] or opts["retries"] or not plan.simple:
        return None
    if len(plan.steps) != 1:
        return None
    step = plan.steps[0]
    if step.nargs < 1 or step.multi or plan.outputs != [step.out0]:
        return None
    return step


def _sources(step: Any, base: dict, names: list, cols: list) -> list | None:
    """Per argument: its column (mapped input) or its constant (broadcast input)."""
    out = []
    for arg in step.args:
        if arg in names:
            out.append((True, cols[names.index(arg)]))
        elif arg in base:
            out.append((False, base[arg]))
        else:
            return None
    return out


def _map_columns(step: Any, sources: list, a: int, b: int, first: int,
                 collect: bool) -> tuple:
    from itertools import repeat

    from .errors import annotate

    func = step.func
    out: list = []
    k = a
    failed = False
    while k < b:
        its = [value[k:b] if is_col else repeat(value, b - k) for is_col, value in sources]
        before = len(out)
        try:
            out.extend(map(func, *its))  # items done before a failure stay in `out`
            break
        except Exception as exc:
            k += len(out) - before
            annotate(exc, step.name, first + k)
            if not collect:
                raise
            out.append(exc)
            failed = True
            k += 1
    if not failed:
        return ("cols", [out])
    o = step.out0
    return _encode_results([v if isinstance(v, BaseException) else {o: v} for v in out], [o])


def _encode_results(results: list, outputs: list[str]) -> tuple:
    """Column lists when every item succeeded (cheap to pickle), else the list with each
    exception boxed."""
    from .transport import box_exception

    if all(type(r) is dict for r in results):
        return ("cols", [[r[o] for r in results] for o in outputs])
    return ("rows", [box_exception(r) if isinstance(r, BaseException) else r for r in results])


def _unsendable(value: Any) -> Exception | None:
    """Why ``value`` cannot be sent to the driver, or None if it can."""
    from .transport import dumps

    try:
        dumps(value, shm=False)
        return None
    except Exception as why:
        return why


def _sendable(value: Any) -> bool:
    return _unsendable(value) is None


def _part(spill: Any, count: int, encoded: tuple, plan: Any, first: int) -> Any:
    """One sub-batch's results (map items ``first``, ...), pickled into the spill now;
    an item whose outputs do not pickle fails alone, with a SerializationError naming
    the output, the node that produced it and the item."""
    from .transport import box_exception, output_error

    try:
        return spill.part((count, encoded))
    except Exception:
        pass
    outputs = plan.outputs
    mode, data = encoded
    rows = data if mode == "rows" else [dict(zip(outputs, vals)) for vals in zip(*data)]
    producer = {o: s.name for s in plan.steps for o in s.out_names}
    fixed = []
    for k, r in enumerate(rows):
        bad = ({o: _unsendable(v) for o, v in r.items()} if isinstance(r, dict)
               else {None: _unsendable(r)})
        bad = {o: why for o, why in bad.items() if why is not None}
        if not bad:
            fixed.append(r)
            continue
        fixed.append(box_exception(output_error(bad, producer, first + k)))
    return spill.part((count, ("rows", fixed)))


def _core_module() -> Any:
    try:  # the driver loaded it: this is quicker than _native's search (importlib.metadata)
        from . import _core
        return _core
    except ImportError:
        from ._native import core

        return core()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sock_fd, status_fd, parent = int(argv[0]), int(argv[1]), int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    c = _core_module()
    c.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before we asked to die with it
        os._exit(0)
    status = memoryview(mmap.mmap(status_fd, 4096)).cast("q")
    os.close(status_fd)
    ch = c.Channel(sock_fd)
    worker = Worker(ch, status, dict(c.FRAME_KINDS))
    status[3] = PHASE_IDLE
    first = ch.recv()
    if first is None:
        return
    try:
        worker.init(first[3])
    except BaseException:
        worker.send("init_failed", 0, traceback.format_exc().encode(), [])
        os._exit(1)
    worker.send("ready", 0, b"", [])
    try:
        worker.loop()
    finally:
        worker.teardown()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
