"""``DaftEngine``: HyperNodes' Daft-configured code, run on gilfree's own engines.

HyperNodes' ``DaftEngine(use_batch_udf=, default_daft_config=, cache=, callbacks=)``
turns a pipeline into a Daft query.  Here the same constructor picks a gilfree engine
from the Daft configuration and runs the pipeline on it; daft is never imported, so
code written for it runs where daft is not installed.  See docs/engines.md, section
"DaftEngine (HyperNodes compatibility)".
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

from ..callbacks import PipelineCallback, check_supported
from ..model.stateful import is_stateful
from .base import Engine

#: ``default_daft_config`` keys that change how gilfree runs the pipeline.
_HONOURED = ("use_process", "max_concurrency", "batch_size", "max_workers")
#: Daft's default morsel size: without ``batch_size``, a batch UDF gets up to this many
#: rows per call (one call for the whole of most maps).
DAFT_DEFAULT_BATCH = 131072
#: Keys HyperNodes passes to Daft that have no gilfree counterpart (accepted, warned).
_NO_EFFECT = ("gpus",)

_EVENTS = ("on_pipeline_start", "on_pipeline_end", "on_node_start", "on_node_end",
           "on_node_cached", "on_error", "on_nested_pipeline_start", "on_nested_pipeline_end",
           "on_map_start", "on_map_item_start", "on_map_item_end", "on_map_item_cached",
           "on_map_end")


class DaftEngine(Engine):
    """HyperNodes' ``DaftEngine`` constructor on gilfree's executors, without daft.

    Arguments (HyperNodes' names and defaults):

    - ``use_batch_udf=True``: accepted for compatibility.  Daft used it to call plain
      nodes on batches of rows; gilfree already runs the items of a map in chunks of
      ``batch_size`` and calls a ``DualNode``'s batch function in a map, so results do
      not depend on it.
    - ``default_daft_config``: a dict; the keys gilfree honours are
      ``use_process`` (True: the pipeline runs on a ``ProcessEngine``, so stateful
      objects are built once per worker process and CPU-bound work escapes the GIL;
      otherwise a ``ThreadEngine``), ``max_workers`` (the engine's worker threads or
      processes), ``max_concurrency`` (threads: at most N concurrent calls of each node
      that takes a stateful object, the ``max_concurrency`` hint; processes: at most N
      worker processes, so at most N copies of each stateful object exist) and
      ``batch_size`` (items per batch-function call of a ``DualNode``, and items per
      chunk of a map: the engine's ``batch_size``).  Unset, a ``DualNode``'s batch
      function gets up to 131072 items per call (Daft's default morsel size) on
      threads; on processes the ``ProcessEngine`` sizes the chunks.  ``gpus`` is accepted and has no
      effect (a warning says so); other keys are ignored with a warning, as Daft
      would reject them.
    - ``cache``, ``callbacks``: as on every engine.  In a map, the items are rows of one
      query as in Daft, not runs of their own: ``on_pipeline_start``/``on_pipeline_end``
      do not fire per item (``on_map_item_*``, node events and progress bars do).
    - As in HyperNodes, a node whose every input is a stateful object raises
      ``ValueError`` ("only stateful parameters"); other gilfree engines run it.
    - Any other gilfree engine option (``on_error=``, ``retries=``, ``timeout=``) is
      passed to the engine underneath; ``configure(node_name, ...)`` hints too.

    The engine underneath is created on first use and released by ``shutdown()``. The
    configuration picks the engine for the whole pipeline; a node hinted with
    ``executor=`` (or ``configure(name, executor=...)``) still runs where it says, as on
    that engine (e.g. one ``"process"`` node of a threaded pipeline).
    """

    supported_hints = frozenset({"batch_size", "max_concurrency", "retries", "timeout"})

    def __init__(self, use_batch_udf: bool = True,
                 default_daft_config: dict[str, Any] | None = None, cache: Any = None,
                 callbacks: list | None = None, **options: Any):
        config = dict(default_daft_config or {})
        _check_config(config)
        super().__init__(cache=cache, callbacks=callbacks, batch_size=config.get("batch_size"),
                         **options)
        self.use_batch_udf = bool(use_batch_udf)
        self.default_daft_config = config
        self._options = options
        self._inner: Engine | None = None

    # -- the engine underneath --------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The gilfree engine the pipeline runs on (created on first use)."""
        if self._inner is None:
            self._inner = self._make_engine()
            for name, hints in self._node_hints.items():
                self._inner.configure(name, **hints)
        return self._inner

    def _make_engine(self) -> Engine:
        cfg = self.default_daft_config
        common = dict(self._options, batch_size=cfg.get("batch_size"))
        if cfg.get("use_process"):
            from .processes import ProcessEngine

            # Unset batch_size stays unset here: a process pool's chunks follow it, and
            # Daft-sized chunks would leave all but one worker idle.
            # Daft's max_concurrency for a process UDF is how many processes hold an
            # instance: with one pool for the whole pipeline, that caps the pool.
            limits = [cfg[k] for k in ("max_workers", "max_concurrency") if cfg.get(k)]
            return ProcessEngine(workers=min(limits) if limits else None, **common)
        from .threads import ThreadEngine

        # As in Daft, a DualNode's batch function gets up to a morsel of items per call.
        common["batch_size"] = common["batch_size"] or DAFT_DEFAULT_BATCH
        return ThreadEngine(max_workers=cfg.get("max_workers"), **common)

    def _ready(self, pipeline: Any, values: dict) -> Engine:
        inner = self.engine
        check_supported(self.callbacks, self)
        _refuse_stateful_only(pipeline, values)
        # Read at every call: code that sets ``engine.cache`` later is obeyed.
        inner.cache = self.cache
        inner.callbacks = [_DaftEvents(self.callbacks)] if self.callbacks else []
        limit = self.default_daft_config.get("max_concurrency")
        if limit and not self.default_daft_config.get("use_process"):
            for name in _stateful_nodes(pipeline, values):
                if "max_concurrency" not in self._node_hints.get(name, {}):
                    inner.configure(name, max_concurrency=limit)
        return inner

    # -- the public calls -------------------------------------------------------------
    def configure(self, node_name: str, **hints: Any) -> "DaftEngine":
        super().configure(node_name, **hints)
        if self._inner is not None:
            self._inner.configure(node_name, **hints)
        return self

    def run(self, pipeline: Any, inputs: dict[str, Any] | None = None,
            output_name: Any = None, **options: Any) -> dict[str, Any]:
        inner = self._ready(pipeline, {**pipeline.bound_inputs, **(inputs or {})})
        return inner.run(pipeline, inputs, output_name, **options)

    def map(self, pipeline: Any, inputs: dict[str, Any] | None = None, map_over: Any = None,
            map_mode: str = "zip", output_name: Any = None, **options: Any) -> list[Any]:
        inner = self._ready(pipeline, {**pipeline.bound_inputs, **(inputs or {})})
        return inner.map(pipeline, inputs, map_over=map_over, map_mode=map_mode,
                         output_name=output_name, **options)

    def imap(self, pipeline: Any, inputs: dict[str, Any] | None = None, map_over: Any = None,
             map_mode: str = "zip", output_name: Any = None, **options: Any) -> Any:
        inner = self._ready(pipeline, {**pipeline.bound_inputs, **(inputs or {})})
        return inner.imap(pipeline, inputs, map_over=map_over, map_mode=map_mode,
                          output_name=output_name, **options)

    def generate_code(self, pipeline: Any, inputs: Any = None, mode: str = "run") -> str:
        raise NotImplementedError(
            "DaftEngine.generate_code writes Daft code, which needs HyperNodes and daft; "
            "gilfree's DaftEngine runs the pipeline on gilfree's own engines instead")

    def shutdown(self) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.shutdown()
        super().shutdown()

    def __repr__(self) -> str:
        return (f"DaftEngine(use_batch_udf={self.use_batch_udf}, "
                f"default_daft_config={self.default_daft_config!r})")


def _check_config(config: dict[str, Any]) -> None:
    for key in ("max_concurrency", "batch_size", "max_workers"):
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ValueError(f"DaftEngine: default_daft_config[{key!r}]={value!r} must be a "
                             "positive integer")
    for key in config:
        if key in _NO_EFFECT:
            warnings.warn(f"DaftEngine: default_daft_config[{key!r}] has no effect on gilfree",
                          RuntimeWarning, stacklevel=3)
        elif key not in _HONOURED:
            warnings.warn(f"DaftEngine: default_daft_config key {key!r} is not known; it is "
                          f"ignored (known: {sorted(_HONOURED + _NO_EFFECT)})",
                          RuntimeWarning, stacklevel=3)


def _refuse_stateful_only(pipeline: Any, values: dict) -> None:
    """HyperNodes' DaftEngine refuses a node whose every input is a stateful object (a
    Daft UDF needs a data column); its tests expect that ValueError, so it is kept."""
    for n in pipeline.graph.execution_order:
        if getattr(n, "pipeline", None) is None and n.root_args and all(
                is_stateful(values.get(a)) for a in n.root_args):
            raise ValueError(
                f"Node '{n.name}' has only stateful parameters. Daft UDFs require at least "
                "one data column; gilfree's DaftEngine refuses it too, as HyperNodes' does "
                "(any other gilfree engine runs it)")


def _is_stateful_value(value: Any) -> bool:
    # HyperNodes' Daft engine also treats ``__daft_stateful__`` classes as stateful.
    return is_stateful(value) or getattr(type(value), "__daft_stateful__", False) is True


def _stateful_nodes(pipeline: Any, values: dict) -> list[str]:
    """Names of the nodes (nested pipelines included) that take a stateful object."""
    names: list[str] = []
    for n in pipeline.graph.execution_order:
        inner = getattr(n, "pipeline", None)
        if inner is not None:
            mapping = getattr(n, "input_mapping", None) or {}  # outer -> inner name
            inner_values = {**inner.bound_inputs,
                            **{mapping.get(k, k): v for k, v in values.items()}}
            names += _stateful_nodes(inner, inner_values)
        elif any(_is_stateful_value(values.get(a)) for a in n.root_args):
            names.append(n.name)
    return names


class _DaftEvents(PipelineCallback):
    """Forwards every event to the user's callbacks, except the per-item pipeline
    start/end of a map: Daft runs a map as one query whose items are rows."""

    def __init__(self, callbacks: list):
        self.callbacks = list(callbacks)
        self._maps: Counter = Counter()  # open maps per pipeline level

    def _forward(self, event: str, args: tuple) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(*args)

    def on_map_start(self, total_items: int, ctx: Any) -> None:
        self._maps[tuple(ctx.hierarchy_path)] += 1
        self._forward("on_map_start", (total_items, ctx))

    def on_map_end(self, total_duration: float, ctx: Any) -> None:
        level = tuple(ctx.hierarchy_path)
        self._maps[level] -= 1
        if self._maps[level] <= 0:
            del self._maps[level]
        self._forward("on_map_end", (total_duration, ctx))

    def on_pipeline_start(self, pipeline_id: str, inputs: dict, ctx: Any) -> None:
        if not self._maps.get(tuple(ctx.hierarchy_path)):
            self._forward("on_pipeline_start", (pipeline_id, inputs, ctx))

    def on_pipeline_end(self, pipeline_id: str, outputs: dict, duration: float,
                        ctx: Any) -> None:
        if not self._maps.get(tuple(ctx.hierarchy_path)):
            self._forward("on_pipeline_end", (pipeline_id, outputs, duration, ctx))


def _forwarder(event: str) -> Any:
    def forward(self: _DaftEvents, *args: Any) -> None:
        self._forward(event, args)
    forward.__name__ = event
    return forward


for _event in _EVENTS:
    if _event not in _DaftEvents.__dict__:
        setattr(_DaftEvents, _event, _forwarder(_event))
