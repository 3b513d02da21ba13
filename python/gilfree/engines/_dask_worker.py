"""DaskEngine, the worker side: what runs inside the Dask worker processes.

The driver side (``dask_engine.py``) submits ``run_batch`` once per batch and reaches
the module globals below with ``Client.run`` (``release_stateful``, ``forget_payload``,
``interrupt``, ``running``).  One of each global per worker process; the worker's
threads share them under ``_LOCK``.

    run_batch(token, payload, rows, first)
      first batch of a map here: unpickle (plan, base, options) once ─▶ _PAYLOADS[token]
                                 stateful.new_map(): a failed @stateful build is
                                 remembered for this map only
      rows that the driver could not pickle: their items fail, the others run
      execute_map ─▶ pickled (results, recorded events, error) back to the driver
    interrupt(token)  (Ctrl-C, an error ends the map): running batches of that map get
                      Interrupted at their next bytecode; queued ones return at once
"""

from __future__ import annotations

import ctypes
import pickle
import threading
import traceback
from typing import Any

from ..callbacks import CallbackContext
from ..errors import ExecutionError, SerializationError
from ..execute import Runtime, execute_map_around
from ..stateful import end_map, new_map
from ..transport import RemoteError, output_error, pickle_by_value

_REGISTRY: dict[str, Any] = {}  # stateful key -> this process's instance
_PAYLOADS: dict[str, tuple] = {}  # map token -> (plan, base, options, map number)
_RUNNING: dict[int, str] = {}  # thread id -> token of the batch it runs
_INTERRUPTED: dict[str, None] = {}  # tokens of interrupted maps (the last few), in order
_LOCK = threading.RLock()  # worker threads share all four; re-entered while unpickling


class Interrupted(BaseException):
    """Raised asynchronously in a thread running a batch whose map was cancelled (a
    BaseException: node code's ``except Exception`` and gilfree's per-item error
    handling must not turn it into one item's failure and go on with the batch)."""


def worker_stateful(key: str, blob: bytes) -> Any:
    """Unpickling a ``@stateful`` object resolves to this process's one instance."""
    with _LOCK:
        obj = _REGISTRY.get(key)
        if obj is None:
            obj = _REGISTRY[key] = pickle.loads(blob)  # built lazily, on first use
        return obj


def release_stateful(keys: list[str]) -> None:
    """Engine shutdown: tear down (``__teardown__``) and forget these instances."""
    with _LOCK:
        objs = [_REGISTRY.pop(k) for k in keys if k in _REGISTRY]
    for o in objs:
        o._gilfree_release()


async def forget_payload(token: str) -> None:  # async: Client.run(wait=False) needs it
    with _LOCK:
        entry = _PAYLOADS.pop(token, None)
    if entry is not None:
        end_map(entry[3])


async def interrupt(token: str) -> int:
    """Stop this map's batches here: queued ones return at once, running ones get
    ``Interrupted`` at their next bytecode (a node blocked in C, e.g. ``time.sleep``,
    first returns from it).  Returns how many running batches were told."""
    told = 0
    with _LOCK:
        _INTERRUPTED[token] = None
        while len(_INTERRUPTED) > 64:
            del _INTERRUPTED[next(iter(_INTERRUPTED))]
        for tid, tok in _RUNNING.items():
            if tok == token:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid),
                                                           ctypes.py_object(Interrupted))
                told += 1
    return told


async def running(tokens: list[str]) -> int:
    """How many of this process's threads still run a batch of one of ``tokens``."""
    with _LOCK:
        return sum(tok in tokens for tok in _RUNNING.values())


class _Recorder:
    """A worker runtime's only callback: records each event for the driver to replay."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def __getattr__(self, event: str) -> Any:
        if not event.startswith("on_"):
            raise AttributeError(event)
        return lambda *args: self.events.append(
            (event, args[:-1], list(args[-1].hierarchy_path)))


def _fits(value: Any) -> bool:
    try:
        pickle_by_value(value)
        return True
    except Exception:
        return False


def _portable(exc: BaseException) -> BaseException:
    """An exception fit to travel: its traceback as a dict (tblib).  One that does not
    survive pickling (it would lose the whole batch) travels as ProcessEngine's
    RemoteError: type and message as text, the worker's traceback its ``__cause__``."""
    try:
        from tblib import Traceback  # a dependency of distributed

        exc.__dict__["_gilfree_tb"] = Traceback(exc.__traceback__).to_dict()
    except Exception:
        pass
    try:
        pickle.loads(pickle_by_value(exc))
        return exc
    except Exception:
        text = RemoteError(f"{type(exc).__qualname__}: {exc} (the exception could not be "
                           "rebuilt in the driver; the remote traceback follows)")
        for note in getattr(exc, "__notes__", ()):
            text.add_note(note)
        text.__dict__["_gilfree_remote_tb"] = "".join(traceback.format_exception(exc))
        return text


def _unsendable(results: list, plan: Any, first: int, collect: bool) -> tuple:
    """(results, error) once the outputs that do not pickle are their items' failures,
    worded as on ProcessEngine: output, node that produced it, map item."""
    producer = {o: s.name for s in plan.steps for o in s.out_names}
    for k, r in enumerate(results):
        if isinstance(r, BaseException):
            continue  # made portable already
        bad = {}
        for o, v in (r.items() if isinstance(r, dict) else [(None, r)]):
            try:
                pickle_by_value(v)
            except Exception as why:
                bad[o] = why
        if not bad:
            continue
        err = output_error(bad, producer, first + k)
        if not collect:
            return None, err
        results[k] = err
    return results, None


def run_batch(token: str, blob: bytes, rows_blob: bytes, first: int) -> bytes:
    """One Dask task: ``execute_map`` over a batch of rows.

    Returns, pickled: (results or None, recorded callback events, the exception that
    stopped it).  A node's exception is the task's answer, not a Dask failure: no worker
    log noise, and the events recorded before it still reach the driver.
    """
    try:
        return _run_registered(token, blob, rows_blob, first)
    except Interrupted:  # the driver has forgotten this batch: nobody reads the answer
        return pickle.dumps((None, [], ExecutionError("map interrupted")))


def _run_registered(token: str, blob: bytes, rows_blob: bytes, first: int) -> bytes:
    tid = threading.get_ident()
    with _LOCK:
        if token in _INTERRUPTED:
            raise Interrupted
        _RUNNING[tid] = token
    try:
        return _run(token, blob, rows_blob, first)
    finally:
        with _LOCK:  # from here on no interrupt is sent to this thread ...
            _RUNNING.pop(tid, None)
        # ... and one sent but not raised yet is withdrawn: it must not hit Dask's code
        # after this function returns (raised before this line, run_batch catches it).
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)


def _payload(token: str, blob: bytes) -> tuple:
    with _LOCK:  # the first batch of a map on this worker unpickles; the others reuse
        if token not in _PAYLOADS:
            try:
                plan, base, opts = pickle.loads(blob)
            except Exception as exc:
                raise SerializationError(
                    f"a Dask worker could not unpickle the pipeline or its inputs "
                    f"({type(exc).__name__}: {exc}). Modules that nodes and inputs use "
                    "must be importable on every worker; code defined in __main__ or a "
                    "notebook travels by value") from exc
            # A new map in this process: a @stateful constructor that fails is tried
            # once here for the whole map (not once per item or batch), again next map.
            _PAYLOADS[token] = (plan, base, opts, new_map())
            while len(_PAYLOADS) > 8:  # maps whose driver vanished before forgetting
                end_map(_PAYLOADS.pop(next(iter(_PAYLOADS)))[3])
        return _PAYLOADS[token]


def _run(token: str, blob: bytes, rows_blob: bytes, first: int) -> bytes:
    plan, base, opts, _ = _payload(token, blob)
    rows, failed = pickle.loads(rows_blob)
    recorder = ctx = None
    if opts["events"]:
        recorder, ctx = _Recorder(), CallbackContext()
        ctx.hierarchy_path = list(opts["path"])
    rt = Runtime(cache=opts["cache"], callbacks=[recorder] if recorder else None, ctx=ctx,
                 retries=opts["retries"], batch_size=opts["batch_size"],
                 collect=opts["collect"])
    results = error = None
    try:
        # Rows the driver could not pickle fail in their slots, as on ProcessEngine.
        results = execute_map_around(plan, base, rows, rt, first, failed, opts["collect"])
        if opts["collect"]:
            results = [_portable(r) if isinstance(r, BaseException) else r for r in results]
    except Exception as exc:
        error = _portable(exc)
    events = recorder.events if recorder else []
    try:  # we pickle the answer ourselves, to say what failed if something does not fit
        return pickle_by_value((results, events, error))
    except Exception:
        pass
    # Callbacks are told what cannot travel as its repr; an output that cannot is that
    # item's failure, like an exception in the node (worker -> driver).
    events = [(e, tuple(a if _fits(a) else repr(a) for a in args), path)
              for e, args, path in events]
    if results is not None:
        results, error = _unsendable(results, plan, first, opts["collect"])
    return pickle_by_value((results, events, error))
