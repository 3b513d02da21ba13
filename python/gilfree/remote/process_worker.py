"""The main loop of a ProcessEngine worker process (started by ``_core.ProcessPool``).

    driver (ProcessPool)                       this process (its main thread)
    INIT    sys.path, cwd, initializer ──────▶ set up, run initializer once ── READY ──▶
                                                (or INIT_FAILED + traceback, exit 1)
    PAYLOAD key, Payload ────────────────────▶ session: unpickled once, kept by key (LRU
    DROP    key ─────────────────────────────▶ owned by the driver: it says what to forget)
    BATCH   key, Batch (map id, first index, ─▶ session.start_batch: run_items, ─ RESULT ─▶
            input columns)                      finish: Result: sub-batches, each pickled
                                                when done (large buffers appended to one
                                                memfd); recorded callback events, or the
                                                error that stopped the batch
                                                A batch whose DualNode calls wait (Job.beside):
                                                finish on the tail thread while the next
                                                batch's items run here; answers in order
    QUIT, or end of stream ──────────────────▶ tear down @stateful objects, exit 0

    A node's own map, in a map of few items (RemoteOptions.node_maps; worker_maps.py):
                                       ◀──────── SUBMAP (where it is + payload), SUBBATCHes
    SUBBATCH (anyone's sub-map) ─────────────▶ run now, even while waiting ── RESULT ──▶
    SUBRESULT / SUBLOST (its own) ───────────▶ the node's map goes on; other frames that
                                                come meanwhile wait for the loop
                                       ◀──────── SUBEND

The messages (``remote/messages.py``) and what a worker does with them (the session,
``remote/session.py``) are the remote layer's, shared with DaskEngine's workers; this
module carries frames and keeps the status page current (``_StatusPage``).

Started by posix_spawn (``main``) or forked by the forkserver (``zygote.py``, which
imported all this once). argv: ``3 4 <parent pid>``: fd 3 is the socket to the driver,
fd 4 the status page (int64 slots SLOT_*: batch id, item, step, phase, item start, the
batch whose DualNode calls run beside it and their step) that
the driver reads if this process dies, to say which node and item it was running (and,
under a per-item timeout, since when). This process dies with its parent:
PR_SET_PDEATHSIG(SIGKILL), checked against the parent pid given, and end of stream on
the socket. SIGINT is ignored: Ctrl-C in a terminal reaches the whole process group, and
the driver decides what happens to running work.
"""

from __future__ import annotations

import mmap
import os
import queue
import signal
import sys
import threading
import traceback
from collections import deque
from contextlib import nullcontext
from time import monotonic_ns
from typing import Any

from ..run.runtime import maps_on
from .messages import BatchCancelled
from .session import Session, Watch, release_stateful
from .transport import close_fds

#: The status page's int64 slots and phases; the driver reads them by the same names
#: (StatusSlot and WorkerPhase in cpp/include/gilfree/process_pool.hpp).
SLOT_BATCH, SLOT_ITEM, SLOT_STEP, SLOT_PHASE, SLOT_STARTED = 0, 1, 2, 3, 4
#: A batch whose batch calls run beside the next batch's items (the tail thread), and
#: the step of its first batch call: after a death, both batches are the victim's.
SLOT_TAIL, SLOT_TAIL_STEP = 5, 6
#: Written by the driver: the batch it asks this process to stop (its map failed at an
#: earlier item: under on_error="raise" the results would be dropped). Read before each
#: item; -1: none.
SLOT_CANCEL = 7
PHASE_IDLE, PHASE_PAYLOAD, PHASE_BATCH, PHASE_SEND = 0, 1, 2, 3


class _StatusPage(Watch):
    """The session's watch here: keeps the status page current (the driver reads it when
    this process dies or overruns). Each method is a few stores: the hot path."""

    def __init__(self, status: Any):
        self.status = status

    def loading(self) -> None:
        self.status[SLOT_PHASE] = PHASE_PAYLOAD

    def loaded(self, plan: Any, options: Any) -> None:
        _track_steps(plan, self.status, timed=bool(options.timeout))

    def at_item(self, index: int) -> None:
        self.status[SLOT_ITEM] = index - 1  # the first step's wrapper adds one

    def items_done(self) -> None:
        self.status[SLOT_STARTED] = -1  # items done: pickling them is not an item overrunning

    def sending(self) -> None:
        self.status[SLOT_PHASE] = PHASE_SEND

    def event(self, name: str, args: tuple, steps: dict[str, int]) -> None:
        status = self.status
        if name == "on_map_item_start":  # (the event's number is the user's)
            status[SLOT_ITEM] = args[0] - self.offset - 1  # the first step's wrapper adds one
        elif name == "on_node_start":
            status[SLOT_STEP] = steps.get(args[0], -1)
        elif name == "on_node_cached" and steps.get(args[0]) == 0:
            status[SLOT_ITEM] += 1  # the first step did not run for this item


def _track_steps(plan: Any, status: Any, timed: bool = False) -> None:
    """Wrap the top-level steps so that the status page says which step runs and which
    item (a DualNode's batch call: which step): the first step runs once per item, in order (the recorder keeps the count
    right when callbacks are on, cached steps included). Before an item's first step,
    the batch stops if the driver asked for it (SLOT_CANCEL). Specialised by call shape:
    this runs once per item and step, on the hot path (~0.2 us)."""
    main = threading.get_ident()
    for k, step in enumerate(plan.steps):
        if step.batch is not None:
            # A DualNode's batch call says so too (the tail thread's calls are on the
            # page's tail slots already: this thread's step is another batch's).
            # Its page names no item meanwhile: the call is all of its items' (a death
            # there loses the batch, not one item; map_scheduler.cpp).
            def batch_tracked(*args: Any, f: Any = step.batch, k: int = k,
                              **kwargs: Any) -> Any:
                if threading.get_ident() != main:
                    return f(*args, **kwargs)
                status[SLOT_STEP], item, status[SLOT_ITEM] = k, status[SLOT_ITEM], -1
                try:
                    return f(*args, **kwargs)
                finally:
                    status[SLOT_ITEM] = item
            step.batch = batch_tracked
        f = step.func
        if f is None:
            continue
        if k == 0 and timed:
            # A map with a per-item timeout: the driver kills a worker whose item started
            # too long ago (SLOT_STARTED, CLOCK_MONOTONIC ns, what the driver's clock reads).
            def tracked(*args: Any, f: Any = f, **kwargs: Any) -> Any:
                if status[SLOT_CANCEL] >= 0 and status[SLOT_CANCEL] == status[SLOT_BATCH]:
                    raise BatchCancelled
                status[SLOT_ITEM] += 1
                status[SLOT_STEP] = 0
                status[SLOT_STARTED] = monotonic_ns()
                return f(*args, **kwargs)
        elif k == 0 and step.nargs == 1:
            def tracked(a: Any, f: Any = f) -> Any:
                if status[SLOT_CANCEL] >= 0 and status[SLOT_CANCEL] == status[SLOT_BATCH]:
                    raise BatchCancelled
                status[SLOT_ITEM] += 1
                status[SLOT_STEP] = 0
                return f(a)
        elif k == 0:
            def tracked(*args: Any, f: Any = f, **kwargs: Any) -> Any:
                if status[SLOT_CANCEL] >= 0 and status[SLOT_CANCEL] == status[SLOT_BATCH]:
                    raise BatchCancelled
                status[SLOT_ITEM] += 1
                status[SLOT_STEP] = 0
                return f(*args, **kwargs)
        else:
            def tracked(*args: Any, f: Any = f, k: int = k, **kwargs: Any) -> Any:
                status[SLOT_STEP] = k
                return f(*args, **kwargs)
        step.func = tracked


class Worker:
    """The frame loop over this process's remote session (``remote/session.py``): the
    session runs payloads and batches, this class carries frames and the status page."""

    def __init__(self, channel: Any, status: Any, kinds: dict[str, int]):
        self.ch = channel
        self.status = status
        self.k = kinds
        # Payloads stay until the driver drops them (it owns the LRU); one map at a time:
        # a pool runs one map at a time, so a new map id means the previous map is over.
        self.session = Session(_StatusPage(status), max_payloads=None, max_maps=1,
                               overlap=True)
        # The tail thread: runs a batch's waiting batch calls and sends its answer while
        # this thread runs the next batch's items (Job.beside); one batch at a time.
        self.tails: queue.SimpleQueue | None = None
        self.tail_idle = threading.Event()
        self.tail_idle.set()
        # Sends come from this thread and the tail thread: one frame at a time.
        self.send_lock = threading.Lock()
        # A node's own map spread over the pool (worker_maps.py): the answers to the
        # sub-maps this process waits for, by id; frames that came meanwhile and wait
        # for the loop (the map's next batches, DROPs, QUIT), in order.
        self.workers = 1
        self.answers: dict[int, deque] = {}
        self.deferred: deque = deque()
        self.node_maps: Any = None  # NodeMapsEngine, made on first use

    def send(self, kind: str, ident: int, body: bytes, fds: list[int],
             key: bytes = b"") -> None:
        with self.send_lock:
            self.ch.send(self.k[kind], ident, key, body, fds)

    def init(self, body: bytes) -> None:
        from .transport import loads

        setup = loads(body, [])
        sys.path[:] = setup["path"]
        self.workers = setup.get("workers", 1)
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

    def run_batch(self, ident: int, key: bytes, body: bytes, fds: list[int]) -> None:
        st = self.status
        job = self.session.start_batch(key, body, fds)
        if not job.beside:  # it runs alone
            self.tail_idle.wait()
        st[SLOT_BATCH], st[SLOT_STEP], st[SLOT_PHASE] = ident, -1, PHASE_BATCH
        with self._maps(job):
            job.run_items()
        if isinstance(job.error, BatchCancelled):
            st[SLOT_CANCEL] = -1  # (before the answer: the driver's next ask comes after it)
        if not self.tail_idle.is_set():  # answers leave in the order the batches came
            st[SLOT_BATCH] = -1  # its items are done: a death now is not theirs (rerun)
            self.tail_idle.wait()
            st[SLOT_BATCH] = ident
        if job.beside and job.error is None:
            if self.tails is None:
                self.tails = queue.SimpleQueue()
                threading.Thread(target=self._tail_loop, daemon=True,
                                 name="gilfree-worker-batch-calls").start()
            st[SLOT_TAIL_STEP] = job.tail_step
            st[SLOT_TAIL] = ident
            self.tail_idle.clear()
            self.tails.put((ident, job))
        else:
            with self._maps(job):
                out, out_fds = job.finish()
            self.send("result", ident, out, out_fds)
        st[SLOT_BATCH], st[SLOT_ITEM], st[SLOT_STEP], st[SLOT_STARTED] = -1, -1, -1, -1
        st[SLOT_PHASE] = PHASE_IDLE

    def _maps(self, job: Any) -> Any:
        """Around a batch's items: its nodes' own maps spread over the pool when the
        driver asks for it (RemoteOptions.node_maps), else they run here."""
        loaded = getattr(job, "loaded", None)
        if loaded is None or not getattr(loaded.options, "node_maps", False):
            return nullcontext()
        if self.node_maps is None:
            from .worker_maps import NodeMapsEngine, RelayPool

            self.node_maps = NodeMapsEngine(RelayPool(self, self.workers))
        return maps_on(self.node_maps)

    # -- a node's own map, spread over the pool (worker_maps.py) ----------------------
    def open_sub(self, sub: int, key: bytes, payload: bytes, fds: list[int]) -> None:
        """Ask the driver to run sub-map ``sub``; SUBMAP says where this process is (the
        batch, item and step asking, and since when: the item's timeout runs on), for
        the driver's message if it dies waiting."""
        st = self.status
        where = f"{st[SLOT_BATCH]} {st[SLOT_ITEM]} {st[SLOT_STEP]} {st[SLOT_STARTED]}\n"
        where = where.encode()
        self.answers[sub] = deque()
        self.send("submap", sub, where + payload, fds, key=key)

    def end_sub(self, sub: int) -> None:
        for _kind, _i, _body, fds in self.answers.pop(sub, ()):
            close_fds(fds)
        self.send("subend", sub, b"", [])

    def wait_answer(self, sub: int) -> tuple[str, int, bytes, list[int]]:
        """The next answer to sub-map ``sub`` (("result" or "lost"), batch index, body,
        fds). Meanwhile this process runs the sub-map batches it is sent (this one's or
        another worker's) and keeps the other frames for its loop."""
        k = self.k
        answers = self.answers[sub]
        while not answers:
            frame = self.ch.recv()
            if frame is None:  # the driver is gone: nobody waits for anything here
                os._exit(0)
            kind, ident, key, body, fds = frame
            if kind == k["subresult"] or kind == k["sublost"]:
                waiting = self.answers.get(ident)
                if waiting is None:  # a sub-map that ended (an error stopped it)
                    close_fds(fds)
                else:
                    waiting.append(("result" if kind == k["subresult"] else "lost",
                                    int(key), body, fds))
            elif kind == k["subbatch"]:
                self.run_sub_batch(ident, key, body, fds)
            elif kind == k["payload"]:
                self.session.load_payload(key, body, fds)
                # A DROP of it kept for later would now drop what the driver just sent.
                self.deferred = deque(f for f in self.deferred
                                      if not (f[0] == k["drop"] and f[2] == key))
            else:
                self.deferred.append(frame)
        return answers.popleft()

    def run_sub_batch(self, ident: int, key: bytes, body: bytes, fds: list[int]) -> None:
        """A batch of a sub-map, run now, on this thread, whole (no tail thread); the
        status page says so while it runs, then says again what it said before."""
        st = self.status
        before = [st[i] for i in range(SLOT_TAIL)]
        offset = self.session.watch.offset
        try:
            job = self.session.start_batch(key, body, fds)
            st[SLOT_BATCH], st[SLOT_STEP], st[SLOT_PHASE] = ident, -1, PHASE_BATCH
            with self._maps(job):
                job.run_items()
                out, out_fds = job.finish()
            self.send("result", ident, out, out_fds)
        finally:
            for i, v in enumerate(before):
                st[i] = v
            self.session.watch.offset = offset

    def _tail_loop(self) -> None:
        st = self.status
        while True:
            ident, job = self.tails.get()
            try:
                out, out_fds = job.finish(tell=False)
                self.send("result", ident, out, out_fds)
            except BaseException:  # no answer can come now: die, so the driver knows
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
            st[SLOT_TAIL], st[SLOT_TAIL_STEP] = -1, -1
            self.tail_idle.set()

    def teardown(self) -> None:
        release_stateful()

    def loop(self) -> None:
        try:
            self._loop()
        finally:
            self.tail_idle.wait()  # @stateful objects are torn down after their last use

    def _loop(self) -> None:
        k = self.k
        session = self.session
        while True:
            frame = self.deferred.popleft() if self.deferred else self.ch.recv()
            if frame is None:
                return
            kind, ident, key, body, fds = frame
            if kind == k["batch"]:
                self.run_batch(ident, key, body, fds)
            elif kind == k["subbatch"]:  # another worker's node maps: spread here too
                self.run_sub_batch(ident, key, body, fds)
            elif kind == k["subresult"] or kind == k["sublost"]:
                close_fds(fds)  # of a sub-map that ended early: nobody waits for it
            elif kind == k["payload"]:
                session.load_payload(key, body, fds)
            elif kind == k["drop"]:
                session.drop_payload(key)
            elif kind == k["quit"]:
                return


def _core_module() -> Any:
    try:  # the driver loaded it: this is quicker than _native's search (importlib.metadata)
        from .. import _core
        return _core
    except ImportError:
        from .._native import core

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
    status[SLOT_PHASE] = PHASE_IDLE
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
