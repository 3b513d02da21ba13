"""What a step needs at run time: the Runtime (cache, callbacks, policy) and the
per-step helpers shared by the synchronous, async, batch and fast paths."""

from __future__ import annotations

import copy
import threading
import time
import warnings
import weakref
from collections import deque
from typing import Any, Callable

from .async_bridge import run_coroutine
from ..errors import annotate
from ..model.hashing import hash_strings, hash_value
from ..model.plan import Step

_MISS = object()

# -- the engine a node's own maps run on -------------------------------------------------
# A node whose function calls ``pipeline.map(...)`` (no engine given, none on the
# pipeline) maps on the engine running it when that engine takes them (ThreadEngine,
# AutoEngine): the inner items of every outer item then share its workers, one pool of
# work, instead of running one by one in the node's thread (SeqEngine, the default).
# Which engine: the one a thread-local names (an engine sets it around nodes it runs in
# the calling thread: maps_on), else the one whose pool the calling thread works for
# (no cost per item: only a node's map asks).
_inner_maps = threading.local()
_pool_engines: "weakref.WeakSet[Any]" = weakref.WeakSet()


def inner_map_engine() -> Any:
    """The engine a node running in this thread maps on by default; None: the default."""
    engine = getattr(_inner_maps, "engine", None)
    if engine is not None:
        return engine
    for engine in list(_pool_engines):
        if engine.on_own_thread():
            return engine.node_map_engine()
    return None


def takes_maps_on_its_threads(engine: Any) -> None:
    """``engine`` (its pool started) takes the maps of nodes run on its pool's threads;
    ``engine.on_own_thread()`` says if the calling thread is one of them."""
    _pool_engines.add(engine)


class maps_on:
    """``with maps_on(engine):`` the calling thread's nodes map on ``engine`` (None:
    on the default engine); restores the previous engine on exit (maps nest)."""

    __slots__ = ("engine", "before")

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        self.before = getattr(_inner_maps, "engine", None)
        _inner_maps.engine = self.engine

    def __exit__(self, *exc: Any) -> None:
        _inner_maps.engine = self.before


class Runtime:
    """What one engine call carries down to every step: cache, callbacks, policy."""

    __slots__ = ("cache", "callbacks", "ctx", "retries", "batch_size", "collect", "tracing",
                 "engine", "queue", "pending", "stage_times", "on_resize", "nested_map",
                 "on_stream_end")

    def __copy__(self) -> "Runtime":
        new = Runtime.__new__(Runtime)
        for name in Runtime.__slots__:
            setattr(new, name, getattr(self, name))
        return new

    def __init__(self, *, cache: Any = None, callbacks: list | None = None, ctx: Any = None,
                 retries: int = 0, batch_size: int | None = None, collect: bool = False,
                 engine: Any = None):
        self.cache = cache
        self.callbacks = list(callbacks or ())
        self.ctx = ctx
        self.retries = retries
        self.batch_size = batch_size
        self.collect = collect
        self.engine = engine
        # Signatures and timings cost time: compute them only when someone reads them.
        self.tracing = cache is not None or bool(self.callbacks)
        self.queue: deque | None = None  # set on worker views: events wait for the driver
        self.pending: deque = deque()  # the driver's inbox of worker events
        # (plan, [(stage's node names, items in, seconds)]): execute_map times the
        # stages of that plan's map into it (AutoEngine.explain()'s items/s per stage).
        self.stage_times: tuple[Any, list] | None = None
        # on_resize(node names, threads, latency s): a stream's stage re-sized itself
        # (stage_runners._ThreadRunner.adapt; AutoEngine.explain() shows it).
        self.on_resize: Callable[[list[str], int, float], None] | None = None
        # on_stream_end([(stage's node names, items, seconds some item of it ran)], items
        # that left): a stream ended (run/flow.py; AutoEngine.explain()'s items/s).
        self.on_stream_end: Callable[[list, int], None] | None = None
        # run() on an engine that spreads nested maps (Engine.run): the engine's map of
        # (plan, shared inputs, rows, runtime), for a nested pipeline's inner items.
        self.nested_map: Callable[[Any, dict, list, "Runtime"], list] | None = None

    def emit(self, event: str, *args: Any) -> None:
        q = self.queue
        if q is not None:
            # deque.append is atomic under the GIL; the path is copied because the
            # driver replays the event later, when this worker may be elsewhere.
            q.append((event, args, list(self.ctx.hierarchy_path) if self.ctx else None))
            return
        _deliver(self.callbacks, event, args, self.ctx)

    def with_collect(self, collect: bool = True) -> "Runtime":
        """A copy under another error policy ("collect": failed items hold their
        exceptions; the caller applies its own policy to them)."""
        new = copy.copy(self)
        new.collect = collect
        return new

    def inside(self, step: Any) -> "Runtime":
        """The runtime for the steps inside nested node ``step``: this one, minus the
        cache when the node turns it off (``as_node(cache=False)``). A copy keeps a
        worker view's event queue, so the inner callbacks still reach the driver."""
        if self.cache is None or step.cache:
            return self
        new = copy.copy(self)
        new.cache = None
        new.tracing = bool(self.callbacks)
        return new

    def worker_view(self) -> "Runtime":
        """A copy for code running on another thread: its events queue for the driver,
        and it has its own pipeline path (nested pipelines push and pop on it)."""
        if not self.callbacks:
            return self
        view = copy.copy(self)
        if self.ctx is not None:
            view.ctx = copy.copy(self.ctx)
            view.ctx.hierarchy_path = list(self.ctx.hierarchy_path)
        view.queue = self.pending
        return view

    def flush(self) -> None:
        """Driver thread only: deliver the events workers queued, in their order."""
        q = self.pending
        if not q:
            return
        ctx = self.ctx
        saved = ctx.hierarchy_path
        try:
            while q:
                event, args, path = q.popleft()
                ctx.hierarchy_path = path
                _deliver(self.callbacks, event, args, ctx)
        finally:
            ctx.hierarchy_path = saved


def _deliver(callbacks: list, event: str, args: tuple, ctx: Any) -> None:
    """Call every callback's ``event`` hook; keep ``ctx.get("_in_map")`` up to date.

    HyperNodes' callbacks tell map items from plain runs with ``ctx.get("_in_map")``:
    True between a map's ``on_map_start`` and ``on_map_end`` (not during those two, as
    there), still True in a nested map's items and after it ends inside an outer map.
    As there, ``_map_total_items`` is the latest map's size and ``_map_item_index`` the
    latest item started.
    """
    if ctx is None:
        for cb in callbacks:
            getattr(cb, event)(*args, ctx)
        return
    if event == "on_map_item_start":
        ctx.data["_map_item_index"] = args[0]
    elif event == "on_map_end":
        depth = ctx.data.get("_map_depth", 1) - 1
        ctx.data["_map_depth"] = depth
        ctx.data["_in_map"] = depth > 0
    for cb in callbacks:
        getattr(cb, event)(*args, ctx)
    if event == "on_map_start":
        ctx.data["_map_depth"] = ctx.data.get("_map_depth", 0) + 1
        ctx.data["_in_map"] = True
        ctx.data["_map_total_items"] = args[0]


# -- one step ---------------------------------------------------------------------------
def invoke(step: Step, func: Callable, values: dict) -> Any:
    """Call ``func`` with the step's arguments taken from ``values`` (the raw result:
    a coroutine for an async node).  Positional when the plan allows it: cheaper."""
    n = step.nargs
    if n == 1:
        return func(values[step.arg0])
    if n == 0:
        return func()
    if n > 1:
        return func(*step.getter(values))
    return func(**{a: values[a] for a in step.args})


def _call(step: Step, func: Callable, values: dict, retries: int) -> Any:
    attempt = 0
    while True:
        try:
            r = invoke(step, func, values)
            return run_coroutine(r) if step.is_async else r
        except Exception:
            attempt += 1
            if attempt > retries:
                raise


def _store(step: Step, result: Any, values: dict) -> None:
    if not step.multi:
        values[step.out0] = result
        return
    names = step.out_names
    if not isinstance(result, (tuple, list)) or len(result) != len(names):
        got = f"{len(result)} values" if isinstance(result, (tuple, list)) else type(result).__name__
        raise ValueError(
            f"node {step.name!r} declares {len(names)} outputs {names} but returned {got}"
        )
    for name, v in zip(names, result):
        values[name] = v


def _sig(name: str, values: dict, sigs: dict) -> str:
    s = sigs.get(name)
    if s is None:
        s = sigs[name] = hash_value(values[name])
    return s


def _step_signature(step: Step, values: dict, sigs: dict) -> str:
    owners = [hash_value(o) for o in step.owners]
    return hash_strings(step.code_hash, repr(step.out_names), *owners,
                        *(f"{a}={_sig(a, values, sigs)}" for a in step.args))


def _safe_signature(step: Step, values: dict, sigs: dict) -> str | None:
    """The step's cache key, or None (with a warning) when an input cannot be hashed."""
    try:
        return _step_signature(step, values, sigs)
    except (ValueError, TypeError, RecursionError) as exc:
        warnings.warn(f"node {step.name!r} runs uncached: its inputs cannot be hashed "
                      f"for the cache ({exc})", RuntimeWarning, stacklevel=2)
        return None


def _set_output_sigs(step: Step, sig: str, sigs: dict) -> None:
    for o in step.out_names:
        sigs[o] = hash_strings(sig, o)


def step_lookup(step: Step, values: dict, rt: Runtime, sigs: dict) -> tuple[bool, str | None]:
    """Before a traced step runs: serve it from the cache (True) or announce its start.
    Returns the signature to store the result under (None: do not store)."""
    sig = None
    if rt.cache is not None and step.cache:
        sig = _safe_signature(step, values, sigs)
        if sig is not None:
            hit = rt.cache.get(sig, _MISS)
            if hit is not _MISS:
                values.update(hit)
                _set_output_sigs(step, sig, sigs)
                rt.emit("on_node_cached", step.name, sig)
                return True, sig
    if rt.callbacks:
        rt.emit("on_node_start", step.name, {a: values[a] for a in step.args})
    return False, sig


def step_failed(step: Step, exc: BaseException, rt: Runtime, item: int | None) -> None:
    rt.emit("on_error", step.name, exc)
    annotate(exc, step.name, item)


def step_done(step: Step, values: dict, rt: Runtime, sigs: dict, sig: str | None,
              t0: float) -> None:
    """After a traced step stored its outputs: cache them and announce the end."""
    duration = time.perf_counter() - t0
    outputs = {o: values[o] for o in step.out_names}
    if sig is not None:
        rt.cache.put(sig, outputs)
        _set_output_sigs(step, sig, sigs)
    if rt.callbacks:
        rt.emit("on_node_end", step.name, outputs, duration)




class StepCall:
    """One step for one item, with what surrounds its call: the cache look-up and the
    start event before, the error note (and ``on_error``) on failure, storing, caching
    and the end event after. The one place of that logic for every way of calling:

        with StepCall(step, values, rt, item, sigs) as call:
            if call.hit:
                return True                      # served from the cache
            call.store(f(...))                   # or: call.store(await f(...))
        call.finish()
    """

    __slots__ = ("step", "values", "rt", "item", "sigs", "sig", "t0", "hit")

    def __init__(self, step: Step, values: dict, rt: Runtime, item: int | None,
                 sigs: dict | None):
        self.step, self.values, self.rt, self.item, self.sigs = step, values, rt, item, sigs
        if rt.tracing:
            self.hit, self.sig = step_lookup(step, values, rt, sigs)
            self.t0 = time.perf_counter()
        else:
            self.hit = False

    def __enter__(self) -> "StepCall":
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if isinstance(exc, Exception):
            if self.rt.tracing:
                step_failed(self.step, exc, self.rt, self.item)
            else:
                annotate(exc, self.step.name, self.item)
        return False

    def store(self, result: Any) -> None:
        _store(self.step, result, self.values)

    def finish(self) -> None:
        """After the call stored its outputs (outside the ``with``: a failing callback
        is not the node's error)."""
        if self.rt.tracing:
            step_done(self.step, self.values, self.rt, self.sigs, self.sig, self.t0)
