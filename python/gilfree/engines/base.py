"""What every engine shares: input handling, plans, callbacks and policies.

Engines differ only in *where* items run; ``_execute_run`` and ``_execute_map`` are
the two places they override.  Semantics live in ``gilfree.run.execute``.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
import warnings
import weakref
from typing import Any, Iterator

from ..callbacks import CallbackContext, check_supported
from ..run.execute import Runtime, execute_map, execute_run
from ..run.runtime import inner_map_engine, maps_on
from ..model.mapping import expand_rows, normalize_map_over, stream_rows
from ..model.node import validate_hints
from ..model.plan import Plan, compile_plan
from ..run.stages import (INLINE, PROCESS, STAGE_THREADS, THREAD, Placement, Stage,
                          compile_stages, fans_out, is_mixed, largest_hint)
from ..model.stateful import end_map, is_stateful, new_map


class Engine:
    """Base class: ``run`` / ``map`` with cache, callbacks, error policy and retries."""

    #: How the transport recognises an engine inside a payload (it pickles as None: a
    #: worker has no use for the driver's engine) without importing this module.
    _gilfree_engine = True

    #: Hints this engine honours; others get one warning per node.
    supported_hints: frozenset[str] = frozenset({"batch_size", "max_concurrency", "retries"})
    #: ``executor=`` values that describe where this engine already runs nodes.
    native_executors: frozenset[str] = frozenset({"inline"})
    #: Where nodes without an ``executor=`` hint run. Engines that set it honour the
    #: hint in ``map`` (see stages.py); None: hints other than native ones are ignored.
    default_executor: str | None = None
    #: Executors this engine runs the same way as another (AsyncEngine: "thread" nodes
    #: go through its loop, which hands them to its pool).
    executor_aliases: dict[str, str] = {}
    #: Appended to the warning that ``timeout`` does not bound ``run()`` (engines that
    #: honour it bound the items of a map only).
    unbounded_run_note: str = ""
    #: True: a node whose function calls ``Pipeline.map`` (no engine given, none on its
    #: pipeline) maps on this engine when the node runs in this process: in ``run``
    #: (``maps_on``), and on ThreadEngine's pool threads; False: on SeqEngine.
    takes_inner_maps: bool = False
    #: Map items travel to worker processes by pickle (a node's own map whose items do
    #: not pickle then runs where the node runs: ``Pipeline.map``).
    pickles_items: bool = False
    #: An engine lent for stages of another's maps (``_lend``): that engine, weakly.
    _lent_by: Any = None

    def __init__(self, cache: Any = None, callbacks: list | None = None, *,
                 on_error: str = "raise", return_exceptions: bool | None = None,
                 retries: int = 0, timeout: float | None = None, batch_size: int | None = None,
                 **unknown: Any):
        if unknown:
            raise TypeError(_unknown_options(type(self), unknown))
        if return_exceptions is not None:
            on_error = "collect" if return_exceptions else "raise"
        if on_error not in ("raise", "collect"):
            raise ValueError(f"on_error must be 'raise' or 'collect', not {on_error!r}")
        validate_hints(type(self).__name__, {"retries": retries, "timeout": timeout,
                                             "batch_size": batch_size})
        self.cache = cache
        self.callbacks = list(callbacks or [])
        self.on_error = on_error
        self.retries = retries
        self.timeout = timeout
        self.batch_size = batch_size
        self._node_hints: dict[str, dict[str, Any]] = {}
        self._warned: set[tuple[str, str]] = set()
        # Grows at each shutdown(), before any pool is stopped: a streaming map open
        # across it notices, and tells a refusal of a pool shut down from a failure.
        self._shutdowns = 0
        # Engines lent to nodes hinted to run elsewhere (a ThreadEngine's "process"
        # nodes run on a ProcessEngine of its own), started on first use, kept across
        # maps (@stateful objects stay built in its workers), shut down with this one.
        self._lent: dict[str, Engine] = {}
        self._lent_lock = threading.Lock()
        # @stateful objects this engine ran with: shutdown() tears the built ones down
        # (their __teardown__ hook), as a worker pool does when its workers exit.
        self._stateful_seen: weakref.WeakSet = weakref.WeakSet()
        if timeout is not None and "timeout" not in self.supported_hints:
            self._warn_once("*", "timeout")

    # -- configuration ----------------------------------------------------------------
    def configure(self, node_name: str, **hints: Any) -> "Engine":
        """Per-node hints that override the node's own (e.g. ``batch_size=64``)."""
        self._node_hints.setdefault(node_name, {}).update(
            validate_hints(f"{type(self).__name__}.configure({node_name!r})", hints))
        return self

    def _warn_once(self, node_name: str, hint: str) -> None:
        if (node_name, hint) in self._warned:
            return
        self._warned.add((node_name, hint))
        where = "" if node_name == "*" else f" (node {node_name!r})"
        warnings.warn(f"{type(self).__name__} cannot honour the {hint!r} hint{where}; "
                      "it is ignored", RuntimeWarning, stacklevel=4)

    def _prepare(self, plan: Plan) -> None:
        if self._node_hints:
            self._check_configured_names(plan)
        for step in plan.iter_steps():
            extra = self._node_hints.get(step.name)
            if extra:
                step.hints = {**step.hints, **extra}
            for hint, value in step.hints.items():
                if not self._honours(step, hint, value, top=step in plan.steps):
                    self._warn_once(step.name, hint)
        for p in _plans(plan):
            p.simple = p.simple and not any(s.hints.get("retries") for s in p.steps)
        if self.default_executor is not None:
            for step in plan.steps:
                if step.inner is not None:
                    self._check_inner_executors(step, step.hints.get("executor")
                                                or self.default_executor)

    def _check_configured_names(self, plan: Plan) -> None:
        """A configured name that is no node's name here but a node's output (a
        DualNode is named after its singular function, not its output) is told once
        which node to configure. Other unknown names stay quiet: an engine may be
        configured for the nodes of several pipelines."""
        steps = list(plan.iter_steps())
        names = {s.name for s in steps}
        for name in self._node_hints:
            if name in names or ("configure", name) in self._warned:
                continue
            maker = next((s for s in steps if name in s.out_names), None)
            if maker is not None:
                self._warned.add(("configure", name))
                warnings.warn(
                    f"{type(self).__name__}.configure({name!r}): no node of pipeline "
                    f"{plan.pipeline.label!r} is named {name!r}, so its hints are not "
                    f"used; node {maker.name!r} outputs {name!r}: configure "
                    f"{maker.name!r}", RuntimeWarning, stacklevel=4)

    def _check_inner_executors(self, outer: Any, where: str) -> None:
        """A nested pipeline runs whole on its own executor: a node inside it hinted
        elsewhere is told so once (hint the nested pipeline instead)."""
        for step in outer.inner.iter_steps():
            want = step.hints.get("executor")
            if want and self.executor_aliases.get(want, want) != \
                    self.executor_aliases.get(where, where) and \
                    (step.name, "executor") not in self._warned:
                self._warned.add((step.name, "executor"))
                warnings.warn(
                    f"{type(self).__name__}: node {step.name!r} is inside nested pipeline "
                    f"{outer.name!r}, which runs whole on {where!r}: its executor={want!r} "
                    f"hint is not honoured (hint the nested pipeline instead: "
                    f"as_node(..., executor={want!r}))", RuntimeWarning, stacklevel=4)

    def _honours(self, step: Any, hint: str, value: Any, top: bool) -> bool:
        if hint == "max_concurrency" and top and self.default_executor is not None:
            # A lock in this process bounds calls made here (threads, the loop, inline),
            # not calls in worker processes.
            return (step.hints.get("executor") or self.default_executor) != PROCESS
        return hint in self.supported_hints or self._trivially_honoured(hint, value)

    def _trivially_honoured(self, hint: str, value: Any) -> bool:
        return hint == "executor" and (value in self.native_executors
                                       or self.default_executor is not None)

    # -- per-node executors (stages.py) -----------------------------------------------
    def _stages(self, plan: Plan, rows: list[dict], rt: Runtime | None = None
                ) -> list[Stage] | None:
        """The map's stages when some node runs on another executor than this engine's
        own kind, or a nested pipeline maps (its inner items then run as one map,
        run/fanout.py); None for a map that runs as one stage (the plain paths)."""
        default = self.default_executor
        if default is None or not rows:
            return None
        fanout = rt is not None and fans_out(plan)
        if not fanout and not any(s.hints.get("executor") for s in plan.steps):
            return None
        stages = compile_stages(plan, default, self.executor_aliases, set(rows[0]), fanout)
        return stages if fanout or is_mixed(stages, default) else None

    def _lend(self, kind: str) -> "Engine":
        """The engine that runs this engine's ``kind`` stages: itself when that is its
        own kind, else one of its own kept in ``_lent`` (same timeout; default sizes)."""
        from .processes import ProcessEngine
        from .threads import ThreadEngine

        cls = ProcessEngine if kind == "process" else ThreadEngine
        if isinstance(self, cls):
            return self
        with self._lent_lock:
            lent = self._lent.get(kind)
            if lent is None:
                lent = self._lent[kind] = cls(timeout=self.timeout)
                lent.engine_name = self.name_in_messages  # (the user's engine)
                if self.takes_inner_maps:
                    lent._lent_by = weakref.ref(self)
            return lent

    @property
    def name_in_messages(self) -> str:
        """The engine's name as the user knows it: an engine lent to another, or one
        standing in for another (a worker's NodeMapsEngine), says the user's."""
        return getattr(self, "engine_name", type(self).__name__)

    def node_map_engine(self) -> "Engine":
        """The engine that a node run on this engine's threads maps on: this one, or
        for an engine lent to another (a ProcessEngine's thread stages), the lender: a
        node hinted onto the driver's threads spreads its inner items over the
        lender's workers, as every node's map does in that engine's run()."""
        lender = self._lent_by() if self._lent_by is not None else None
        return lender if lender is not None else self

    def _nodes_map_here(self) -> Any:
        """``with engine._nodes_map_here():`` a node run in the calling thread (run(), an
        inline stage, a stream's next()) maps on ``node_map_engine()``, as one run on the
        engine's threads does (run/runtime.py: inner_map_engine); nothing changes on an
        engine that does not take node maps."""
        return maps_on(self.node_map_engine()) if self.takes_inner_maps else nullcontext()

    def _placement(self, stage: Stage, plan: Plan, rt: Runtime, base: dict,
                   first: int = 0) -> Placement:
        """Where ``stage`` runs (stages.py): threads, the loop, processes or here.
        ``first``: the map's index of the first row (error notes name map items)."""
        where = stage.executor
        if stage.kind == "fanout":
            from ..run.fanout import run_fanout

            def fanout(step: Any, values: list, failed: list, collect: bool) -> None:
                run_fanout(step, values, failed, rt, collect, first, self._execute_map)
            return Placement(fanout=fanout)
        if where == INLINE:
            return Placement()
        timeout = self._item_timeout(plan)
        if where == PROCESS:
            return Placement(remote=self._lend(PROCESS)._remote_stage(stage, plan, rt, base,
                                                                      timeout, first))
        threads = self._lend(THREAD)
        if where == THREAD and timeout is None:
            return Placement(pfor=threads._pfor(rt, largest_hint(stage.steps, STAGE_THREADS)))
        return Placement(pfor=threads._pfor(rt), async_items=threads._items(rt, plan, timeout))

    def _staged_map(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime,
                    stages: list[Stage], remote_base: dict | None = None, *,
                    first: int = 0, announce: bool = True) -> list:
        """A map whose stages run on different executors, one stage after another.
        ``remote_base`` is what worker processes get of the shared inputs (default:
        ``base``; ThreadEngine's per-thread @stateful proxies stay in this process).
        ``first``/``announce``: the rows are a part of a larger map (AutoEngine: the
        rows after the ones it measured), numbered from ``first``, announced by it."""
        if rt.batch_size is None and plan.has_batch:
            from .threads import auto_batch_size

            rt.batch_size = auto_batch_size(len(rows))
        shipped = base if remote_base is None else remote_base
        with self._nodes_map_here():  # (an inline stage, or a thread stage of one item)
            return execute_map(plan, base, rows, rt, stages=stages, first_index=first,
                               announce=announce,
                               place=lambda st: self._placement(st, plan, rt, shipped, first))

    def _runtime(self, plan: Plan, options: dict[str, Any]) -> Runtime:
        # A map one of our nodes makes (engines that take those: maps_on) is the node's
        # own call: the engine's on_error and retries are the caller's maps' defaults, not
        # the node's (on SeqEngine or in a worker process its map would not have them).
        inner = inner_map_engine() is self
        on_error = options.pop("on_error", None)
        if "return_exceptions" in options:
            on_error = "collect" if options.pop("return_exceptions") else "raise"
        on_error = on_error or ("raise" if inner else self.on_error)
        if on_error not in ("raise", "collect"):
            raise ValueError(f"on_error must be 'raise' or 'collect', not {on_error!r}")
        retries = options.pop("retries", 0 if inner else self.retries)
        if options:
            raise TypeError(f"{type(self).__name__}: unknown option(s) {sorted(options)}")
        check_supported(self.callbacks, self)
        ctx = CallbackContext() if self.callbacks else None
        if ctx is not None:
            for p in _plans(plan):
                ctx.set_pipeline_metadata(p.pipeline_id, {
                    "pipeline_name": p.pipeline.label,
                    "total_nodes": len(p.steps),
                    "node_ids": [s.name for s in p.steps],
                })
        rt = Runtime(cache=self.cache, callbacks=self.callbacks, ctx=ctx, retries=retries,
                     batch_size=self.batch_size, collect=on_error == "collect", engine=self)
        if rt.callbacks and inner:
            # Its time is that node's call, its events are not the caller's maps (nor
            # theirs to deliver, maybe from a pool thread).
            rt.callbacks, rt.ctx, rt.tracing = [], None, rt.cache is not None
        return rt

    # -- the public calls -------------------------------------------------------------
    def run(self, pipeline: Any, inputs: dict[str, Any] | None = None,
            output_name: Any = None, **options: Any) -> dict[str, Any]:
        values = {**pipeline.bound_inputs, **(inputs or {})}
        plan = compile_plan(pipeline, set(values), output_name)
        self._track_stateful(values)
        self._prepare(plan)
        rt = self._runtime(plan, options)
        if rt.ctx is not None:
            rt.ctx.push_pipeline(plan.pipeline_id)
        if self.default_executor is not None and fans_out(plan):
            # A nested map's inner items run as one map on this engine, as in a map
            # (run/fanout.py), not one after another in this thread.
            rt.nested_map = self._execute_map
        if ("timeout" in self.supported_hints and self._item_timeout(plan) is not None
                and ("run", "timeout") not in self._warned):
            # Said, not ignored silently: the deadline is for the items of a map.
            self._warned.add(("run", "timeout"))
            warnings.warn(f"{type(self).__name__}: timeout bounds each item of a map; run() "
                          f"is not bounded by it{self.unbounded_run_note}", RuntimeWarning,
                          stacklevel=3)
        number = new_map()  # a failing @stateful constructor runs once per call
        try:
            return self._execute_run(plan, values, rt)
        finally:
            end_map(number)

    def map(self, pipeline: Any, inputs: dict[str, Any] | None = None, map_over: Any = None,
            map_mode: str = "zip", output_name: Any = None, **options: Any) -> list[Any]:
        values = {**pipeline.bound_inputs, **(inputs or {})}
        owner = f"pipeline {pipeline.label!r}"
        names = normalize_map_over(map_over, owner)
        plan = compile_plan(pipeline, set(values) | set(names), output_name)
        base, rows = expand_rows(values, names, map_mode, owner)
        if self.pickles_items and rows and inner_map_engine() is self:
            # A node's own map, from a node run in this process: nothing sent yet
            from ..remote.driver import check_sendable

            check_sendable(plan, base, rows, self.cache)
        self._track_stateful(base)
        self._prepare(plan)
        rt = self._runtime(plan, options)
        if rt.ctx is not None:
            rt.ctx.push_pipeline(plan.pipeline_id)
        number = new_map()
        try:
            return self._execute_map(plan, base, rows, rt)
        finally:
            end_map(number)

    def imap(self, pipeline: Any, inputs: dict[str, Any] | None = None, map_over: Any = None,
             map_mode: str = "zip", output_name: Any = None, *, ordered: bool = True,
             read_ahead: int | None = None, **options: Any) -> Iterator[Any]:
        """``map`` as an iterator: results as they come (in input order, or as they finish
        with ``ordered=False``), the mapped inputs read lazily (generators included), at
        most ``read_ahead`` items in the map at once. See docs/streaming.md."""
        if read_ahead is not None and (not isinstance(read_ahead, int) or read_ahead < 1):
            raise ValueError(f"{type(self).__name__}.imap: read_ahead={read_ahead!r} must be "
                             "a positive integer")
        values = {**pipeline.bound_inputs, **(inputs or {})}
        owner = f"pipeline {pipeline.label!r}"
        names = normalize_map_over(map_over, owner)
        plan = compile_plan(pipeline, set(values) | set(names), output_name)
        base, rows, total = stream_rows(values, names, map_mode, owner)
        self._track_stateful(base)
        self._prepare(plan)
        rt = self._runtime(plan, options)
        if rt.ctx is not None:
            rt.ctx.push_pipeline(plan.pipeline_id)
        if rt.batch_size is None and plan.has_batch:
            from .threads import auto_batch_size

            rt.batch_size = auto_batch_size(total or 1024)
        return self._stream(plan, base, rows, rt, ordered, read_ahead, total, set(names))

    def _stream(self, plan: Plan, base: dict, rows: Iterator[dict], rt: Runtime,
                ordered: bool, read_ahead: int | None, total: int | None,
                mapped: set[str]) -> Iterator[Any]:
        """The iterator of ``imap``: the flow scheduler (run/flow.py) moves items between
        the stages, each on its executor (all inline here unless the engine places
        nodes)."""
        from ..run.flow import Stream, iterate

        return iterate(Stream(self, plan, self._scoped(base), rows, rt, ordered=ordered,
                              read_ahead=read_ahead, collect=rt.collect, total=total,
                              mapped=mapped, remote_base=base))

    def _scoped(self, values: dict) -> dict:
        """The shared inputs as this engine's threads see them (ThreadEngine: per-thread
        @stateful copies); worker processes get the originals."""
        return values

    def _item_timeout(self, plan: Plan) -> float | None:
        """The per-item deadline of a map: the engine's ``timeout`` or the smallest node
        hint, whichever is smaller (None: none)."""
        hinted = [s.hints["timeout"] for s in plan.steps if s.hints.get("timeout")]
        if self.timeout:
            hinted.append(self.timeout)
        return min(hinted) if hinted else None

    # -- where items run (engines override these two) ---------------------------------
    def _execute_run(self, plan: Plan, values: dict, rt: Runtime) -> dict:
        with self._nodes_map_here():
            return execute_run(plan, values, rt)

    def _execute_map(self, plan: Plan, base: dict, rows: list[dict], rt: Runtime) -> list:
        stages = self._stages(plan, rows, rt)
        if stages is not None:
            return self._staged_map(plan, base, rows, rt, stages)
        return execute_map(plan, base, rows, rt)

    # -- lifecycle --------------------------------------------------------------------
    def _track_stateful(self, values: dict) -> None:
        for v in values.values():
            if is_stateful(v):
                self._stateful_seen.add(v)

    def shutdown(self) -> None:
        """Release workers and pools; tear down the @stateful objects built for us."""
        self._shutdowns += 1
        with self._lent_lock:
            lent, self._lent = list(self._lent.values()), {}
        try:
            for engine in lent:
                engine.shutdown()
        finally:
            for obj in list(self._stateful_seen):
                obj._gilfree_release()
            self._stateful_seen = weakref.WeakSet()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _unknown_options(cls: type, unknown: dict[str, Any]) -> str:
    """``ThreadEngine: unknown option 'on_eror' (did you mean 'on_error'?); ...``"""
    import difflib
    import inspect

    known: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) \
                    and p.name not in known:
                known.append(p.name)
    parts = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    s = "s" if len(parts) > 1 else ""
    return (f"{cls.__name__}: unknown option{s} {', '.join(parts)}; "
            f"its options are {', '.join(sorted(known))}")


def _plans(plan: Plan):
    yield plan
    for s in plan.steps:
        if s.inner is not None:
            yield from _plans(s.inner)
