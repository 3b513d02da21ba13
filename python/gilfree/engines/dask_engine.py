"""``DaskEngine``: map items run in batches on a Dask cluster (``dask.distributed``).

    driver (caller's thread)                           Dask workers (processes)
      plan + broadcast inputs, pickled once: a task ──▶ fetched and unpickled once per
      one client.submit per batch of rows ────────────▶ worker and map; each @stateful
                                                       object built once per process;
                                                       execute_map(batch rows)
      as_completed: each finished batch ◀───────────── (results, recorded events, error)
        its events replayed (Runtime.flush): callbacks fire here, in the driver
        its results put in their slots: input order

Dask's client runs its event loop on its own thread; the driver thread blocks only in
``as_completed``, which wakes every 100 ms (Ctrl-C cancels the outstanding batches).
``run`` executes in the calling process, as in HyperNodes' DaskEngine: one item gains
nothing from a cluster, and breakpoints and tracebacks stay local.
"""

from __future__ import annotations

import atexit
import io
import math
import pickle
import threading
import time
import uuid
import warnings
import weakref
from concurrent.futures import CancelledError
from typing import Any, Callable

from ..callbacks import CallbackContext
from ..errors import ExecutionError, SerializationError
from ..execute import Runtime, execute_map
from ..plan import DUAL, Plan
from ..stateful import is_stateful
from ..transport import Pickler, pickle_by_value, stateful_key
from .base import Engine
from .threads import usable_cores

#: Automatic batch size: a few batches per worker thread, so that a slow batch or worker
#: is balanced by the others while Dask's ~1 ms per task stays negligible.
BATCHES_PER_THREAD = 4
MAX_BATCHES = 1024  # a big cluster still gets at most this many tasks per map


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ModuleNotFoundError("DaskEngine needs dask.distributed, which is not installed:"
                                  " pip install 'gilfree[dask]'", name="distributed") from exc
    return distributed


# -- transport (driver side) --------------------------------------------------------------
class _Pickler(Pickler):
    """gilfree's pickler (``__main__``/notebook code by value), except that a
    ``@stateful`` object goes as (key, its pickle), which a worker resolves to its one
    instance for that key, and engines (``pipeline.engine``) stay behind."""

    def __init__(self, file: Any, keys: set[str]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.keys = keys

    def reducer_override(self, obj: Any) -> Any:
        # Called for non-builtin objects only: rows of ints and dicts cost nothing here.
        if is_stateful(obj):
            key = stateful_key(obj)
            self.keys.add(key)
            return _worker_stateful, (key, pickle_by_value(obj))
        if isinstance(obj, Engine):
            return _no_engine, ()
        return super().reducer_override(obj)


def _dumps(obj: Any, keys: set[str], parts: Callable[[], dict[str, Any]]) -> bytes:
    """Pickle ``obj``; on failure, a SerializationError naming the first bad of ``parts()``."""
    buf = io.BytesIO()
    try:
        _Pickler(buf, keys).dump(obj)
    except Exception as exc:
        culprit = "the pipeline"
        for label, value in parts().items():
            try:
                _Pickler(io.BytesIO(), set()).dump(value)
            except Exception as why:
                culprit = f"{label} ({type(value).__name__}: {type(why).__name__}: {why})"
                break
        raise SerializationError(
            f"DaskEngine cannot send {culprit} to the workers (driver -> worker). Workers are "
            "other processes: pass picklable values, or create the object inside a node "
            "or a @stateful class") from exc
    return buf.getvalue()


def _no_engine() -> None:
    return None


def _identity(blob: bytes) -> bytes:
    return blob


# -- on the workers (module globals: one of each per worker process) ------------------
_REGISTRY: dict[str, Any] = {}  # stateful key -> this process's instance
_PAYLOADS: dict[str, tuple] = {}  # map token -> (plan, base, options), while the map runs
_LOCK = threading.RLock()  # worker threads share both; re-entered while unpickling


def _worker_stateful(key: str, blob: bytes) -> Any:
    with _LOCK:
        obj = _REGISTRY.get(key)
        if obj is None:
            obj = _REGISTRY[key] = pickle.loads(blob)  # built lazily, on first use
        return obj


def _release_stateful(keys: list[str]) -> None:
    """Engine shutdown: tear down (``__teardown__``) and forget these instances."""
    with _LOCK:
        objs = [_REGISTRY.pop(k) for k in keys if k in _REGISTRY]
    for o in objs:
        o._gilfree_release()


async def _forget_payload(token: str) -> None:  # async: Client.run(wait=False) needs it
    with _LOCK:
        _PAYLOADS.pop(token, None)


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
    """An exception fit to travel: its traceback as a dict (tblib); as text if it does
    not survive pickling (an unpicklable one would lose the whole batch)."""
    try:
        from tblib import Traceback  # a dependency of distributed

        exc.__dict__["_gilfree_tb"] = Traceback(exc.__traceback__).to_dict()
    except Exception:
        pass
    try:
        pickle.loads(pickle_by_value(exc))
        return exc
    except Exception:
        text = ExecutionError(f"{type(exc).__name__}: {exc} (the exception itself could "
                              "not be pickled on the worker)")
        for note in getattr(exc, "__notes__", ()):
            text.add_note(note)
        return text


def _run_batch(token: str, blob: bytes, rows_blob: bytes, first: int) -> bytes:
    """One Dask task: ``execute_map`` over a batch of rows.

    Returns, pickled: (results or None, recorded callback events, the exception that
    stopped it).  A node's exception is the task's answer, not a Dask failure: no worker
    log noise, and the events recorded before it still reach the driver.
    """
    with _LOCK:  # the first batch of a map on this worker unpickles; the others reuse
        if token not in _PAYLOADS:
            try:
                _PAYLOADS[token] = pickle.loads(blob)
                while len(_PAYLOADS) > 8:  # maps whose driver vanished before forgetting
                    del _PAYLOADS[next(iter(_PAYLOADS))]
            except Exception as exc:
                raise SerializationError(
                    f"a Dask worker could not unpickle the pipeline or its inputs "
                    f"({type(exc).__name__}: {exc}). Modules that nodes and inputs use "
                    "must be importable on every worker; code defined in __main__ or a "
                    "notebook travels by value") from exc
        plan, base, opts = _PAYLOADS[token]
    rows = pickle.loads(rows_blob)
    recorder = ctx = None
    if opts["events"]:
        recorder, ctx = _Recorder(), CallbackContext()
        ctx.hierarchy_path = list(opts["path"])
    rt = Runtime(cache=opts["cache"], callbacks=[recorder] if recorder else None, ctx=ctx,
                 retries=opts["retries"], batch_size=opts["batch_size"],
                 collect=opts["collect"])
    results = error = None
    try:
        results = execute_map(plan, base, rows, rt, first_index=first)
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
    for i, r in enumerate(results or ()):
        if not _fits(r):
            bad = SerializationError(f"map item {first + i}: its outputs cannot be sent "
                                     f"back to the driver (worker -> driver): {r!r:.200}")
            if not opts["collect"]:
                results, error = None, error or bad
                break
            results[i] = bad
    return pickle_by_value((results, events, error))


# -- the engine (driver side) ---------------------------------------------------------
def _restore(result: Any) -> Any:
    if isinstance(result, BaseException) and "_gilfree_tb" in result.__dict__:
        from tblib import Traceback

        tb = result.__dict__.pop("_gilfree_tb")
        result.__traceback__ = Traceback.from_dict(tb).as_traceback()
    return result


class DaskEngine(Engine):
    """Runs map items in batches on a Dask cluster; ``run`` runs in the calling process.

    With neither ``client`` nor ``address`` a ``LocalCluster`` of processes starts on first
    use (``n_workers`` defaults to the usable cores, ``threads_per_worker`` to 1: pure
    Python needs processes) and is reused until ``shutdown()``.  ``address="tcp://...:8786"``
    connects to a running scheduler; ``client=`` uses the caller's
    ``distributed.Client`` and never closes it.  ``batch_size=None`` sends ~4 batches per
    worker thread; an int sets the items per task.  A ``@stateful`` object is built at
    most once per worker process and reused across batches, maps and engines.
    """

    supported_hints = frozenset({"batch_size", "retries"})

    def __init__(self, client: Any = None, address: str | None = None,
                 batch_size: int | None = None, *, n_workers: int | None = None,
                 threads_per_worker: int = 1, cluster_options: dict[str, Any] | None = None,
                 connect_timeout: float = 30.0, **options: Any):
        super().__init__(batch_size=batch_size, **options)
        if client is not None and address is not None:
            raise ValueError("DaskEngine: give client= or address=, not both")
        _distributed()  # fail now, with the install hint, when dask is missing
        self.address = address
        self.n_workers, self.threads_per_worker = n_workers, threads_per_worker
        self.cluster_options = dict(cluster_options or {})
        self.connect_timeout = connect_timeout
        self._client, self._cluster, self._owns_client = client, None, False
        self._lock = threading.Lock()
        self._shipped: set[str] = set()  # stateful keys this engine sent to workers
        self._at_exit: Any = None

    @property
    def client(self) -> Any:
        """The ``distributed.Client``, connecting or starting the LocalCluster on first use."""
        with self._lock:
            if self._client is None:
                d = _distributed()
                if self.address is None:
                    self._cluster = d.LocalCluster(**{
                        "n_workers": self.n_workers or usable_cores(), "processes": True,
                        "threads_per_worker": self.threads_per_worker, **self.cluster_options})
                target = self._cluster if self._cluster is not None else self.address
                self._client = d.Client(target, timeout=self.connect_timeout,
                                        set_as_default=False)
                self._owns_client = True
                # An engine left open must not keep the interpreter from exiting.
                ref = weakref.ref(self)
                self._at_exit = lambda: ref() is not None and ref().shutdown()
                atexit.register(self._at_exit)
            return self._client

    def shutdown(self) -> None:
        """Tear down the @stateful objects built for us on the workers; close the client
        and cluster if this engine started them (a caller's client stays open)."""
        with self._lock:
            client, cluster, owns = self._client, self._cluster, self._owns_client
            if owns:
                self._client = self._cluster = None
                self._owns_client = False
            keys, self._shipped = sorted(self._shipped), set()
            if self._at_exit is not None:
                atexit.unregister(self._at_exit)
                self._at_exit = None
        try:
            if client is not None and keys and client.status == "running":
                client.run(_release_stateful, keys)
        except Exception:
            pass  # workers gone or unreachable: nothing left to tear down there
        finally:
            if owns:
                client.close(timeout=10)
            if cluster is not None:
                cluster.close(timeout=10)
            super().shutdown()

    # -- where items run --------------------------------------------------------------
    def _execute_map(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime) -> list:
        if not rows:
            return execute_map(plan, base, rows, rt)
        client, n = self.client, len(rows)
        size = self.batch_size
        if size is None:
            threads = sum(client.nthreads().values())
            size = math.ceil(n / min(MAX_BATCHES, BATCHES_PER_THREAD * max(threads, 1)))
            # A DualNode's batch_size hint: whole batches per task, so that its batch
            # function gets the items it asked for (a task is the most it can get).
            hint = max((s.hints.get("batch_size") or 0 for s in plan.steps if s.kind == DUAL),
                       default=0)
            if hint:
                size = math.ceil(size / hint) * hint
        spans = [(a, min(a + size, n)) for a in range(0, n, size)]
        path = list(rt.ctx.hierarchy_path) if rt.ctx is not None else []
        opts = {"cache": rt.cache, "retries": rt.retries, "batch_size": rt.batch_size,
                "collect": rt.collect, "events": bool(rt.callbacks), "path": path}
        keys: set[str] = set()
        blob = _dumps((plan, base, opts), keys, lambda: {
            **{f"input {k!r}": v for k, v in base.items()},
            **{f"node {s.name!r}": s.node for s in plan.iter_steps()}})
        batches = [_dumps(rows[a:b], keys, lambda a=a, b=b: {
            f"map item {a + i} input {k!r}": v for i, row in enumerate(rows[a:b])
            for k, v in row.items()}) for a, b in spans]
        with self._lock:
            self._shipped |= keys
        token = uuid.uuid4().hex
        # Once per map, as a task (not scatter): a worker that dies takes its copy with
        # it, and Dask can recompute a task's result for the re-run batches, never
        # scattered data.  Workers fetch it from each other, once each.
        with warnings.catch_warnings():  # big inputs are the point; Dask's hint misleads
            warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
            payload = client.submit(_identity, blob, pure=False,
                                    key=f"gilfree-payload-{token}")
        futures = [client.submit(_run_batch, token, payload, rows_blob, a, pure=False,
                                 key=f"gilfree-batch-{k}-{token}")
                   for k, (rows_blob, (a, _)) in enumerate(zip(batches, spans))]
        del blob, batches
        if rt.callbacks:
            rt.emit("on_map_start", n)
        t0 = time.perf_counter()
        try:
            return self._gather(client, futures, spans, plan, rt, len(path))
        finally:
            left = [f for f in futures if not f.done()]
            if left:  # an error or Ctrl-C stopped the map: free the workers
                client.cancel(left)
            del payload, futures, left
            try:
                client.run(_forget_payload, token, wait=False)
            except Exception:
                pass  # the cluster is gone; so is the payload
            if rt.callbacks:
                rt.emit("on_map_end", time.perf_counter() - t0)

    def _gather(self, client: Any, futures: list, spans: list, plan: Plan, rt: Runtime,
                depth: int) -> list:
        index = {f.key: k for k, f in enumerate(futures)}
        out: list[Any] = [None] * spans[-1][1]
        failures: dict[int, BaseException] = {}
        pending = set(range(len(futures)))
        stop = len(futures)  # on_error="raise": batches from here on are not needed
        for fut in _distributed().as_completed(futures, loop=client.loop):
            k = index[fut.key]
            pending.discard(k)
            if k >= stop:
                continue
            a, b = spans[k]
            try:
                answer = fut.result()
            except Exception as exc:  # the batch itself failed or was lost
                results, events, error = None, (), self._batch_error(exc, plan, a, b)
                if rt.collect and isinstance(error, ExecutionError):
                    results = [error] * (b - a)
            else:
                try:
                    results, events, error = pickle.loads(answer)
                except Exception as exc:
                    raise SerializationError(
                        f"the results of map items {a} to {b - 1} cannot be unpickled in "
                        f"the driver (worker -> driver): {type(exc).__name__}: {exc}") from exc
            if results is not None:
                results = [_restore(r) for r in results]
            error = _restore(error)
            if events:
                # Each worker's execute_map opened and closed a map of its own; the
                # driver's (with the total) stands for them.  Nested maps' are kept.
                rt.pending.extend(e for e in events if len(e[2]) != depth
                                  or e[0] not in ("on_map_start", "on_map_end"))
                rt.flush()
            if results is not None:
                out[a:b] = results
                continue
            # The first failure in input order wins, as on the other engines: later
            # batches are cancelled, earlier ones still finish (they may fail first).
            failures[k], stop = error, k
            later = [f for f in futures[k + 1:] if not f.done()]
            if later:
                client.cancel(later)
            if not any(j < stop for j in pending):
                break
        if failures:
            raise failures[min(failures)]
        return out

    @staticmethod
    def _batch_error(exc: BaseException, plan: Plan, a: int, b: int) -> BaseException:
        """A lost batch as an ExecutionError naming its items; other errors as they are."""
        from distributed.comm import CommClosedError
        from distributed.scheduler import KilledWorker

        if not isinstance(exc, (KilledWorker, CancelledError, CommClosedError)):
            return exc
        names = [s.name for s in plan.steps]
        nodes = f"node {names[0]!r}" if len(names) == 1 else f"one of the nodes {names}"
        items = f"map item {a}" if b - a == 1 else f"map items {a} to {b - 1}"
        what = (f"Dask lost it ({type(exc).__name__}: {exc})"
                if not isinstance(exc, KilledWorker) else
                "a Dask worker process died while running it (crash, out of memory, "
                "os._exit, killed) and Dask gave up after its retries "
                "(distributed.scheduler.allowed-failures); the worker logs say why")
        err = ExecutionError(f"{items} of pipeline {plan.pipeline.label!r} ({nodes}) did "
                             f"not complete: {what}."
                             + (" Use batch_size=1 to find the item." if b - a > 1 else ""))
        err.__cause__ = exc
        return err

    def __repr__(self) -> str:
        where = self.address or ("client" if self._client is not None and not self._owns_client
                                 else "LocalCluster")
        return f"DaskEngine({where})"
