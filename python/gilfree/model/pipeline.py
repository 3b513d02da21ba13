"""``Pipeline``: nodes composed into a graph, run on a swappable engine."""

from __future__ import annotations

import builtins
import functools
from typing import Any, Sequence

from .graph import Graph
from .nested import PipelineNode


def _check_node(n: Any, i: int) -> Any:
    if isinstance(n, Pipeline):
        return n.as_node()
    if not all(hasattr(n, a) for a in ("name", "root_args", "output_names", "code_hash")):
        raise TypeError(
            f"Pipeline node #{i} is {n!r}: decorate functions with @node, or pass "
            "DualNode / Pipeline / Pipeline.as_node(...) objects"
        )
    return n


class Pipeline:
    """A graph of nodes.  ``run`` computes one set of outputs, ``map`` many."""

    def __init__(self, nodes: Sequence[Any], engine: Any = None, name: str | None = None):
        if not isinstance(nodes, (list, tuple)):
            raise TypeError("Pipeline(nodes=...) takes a list of nodes")
        self.nodes = [_check_node(n, i) for i, n in enumerate(nodes)]
        self.engine = engine
        self.name = name
        self.graph = Graph(self.nodes)
        self.id = f"pipeline_{builtins.id(self):x}"
        self._bound_inputs: dict[str, Any] = {}

    @property
    def label(self) -> str:
        """The name shown to people (progress bars, errors): the name, else the id."""
        return self.name or self.id

    # -- running ----------------------------------------------------------------------
    def _engine(self, engine: Any, inner: bool = False) -> Any:
        if engine is not None:
            return engine
        if self.engine is not None:
            return self.engine
        if inner:  # a map a node makes, on an engine that takes those (Thread, Auto)
            from ..run.runtime import inner_map_engine

            running = inner_map_engine()
            if running is not None:
                return running
        from ..engines.seq import default_engine

        return default_engine()

    def run(self, inputs: dict[str, Any] | None = None, output_name: Any = None,
            engine: Any = None, **options: Any) -> dict[str, Any]:
        """Compute the outputs (all, or those named) for one set of inputs."""
        return self._engine(engine).run(self, inputs, output_name=output_name, **options)

    def map(self, inputs: dict[str, Any] | None = None, map_over: Any = None,
            map_mode: str = "zip", output_name: Any = None, engine: Any = None,
            **options: Any) -> list[Any]:
        """Run once per item of the ``map_over`` list(s); one output dict per item."""
        chosen = self._engine(engine, inner=True)
        try:
            return chosen.map(self, inputs, map_over=map_over, map_mode=map_mode,
                              output_name=output_name, **options)
        except Exception as exc:
            if engine is not None or self.engine is not None \
                    or not getattr(exc, "nothing_ran", False):
                raise
            # A node's own map, taken by the engine running the node (ProcessEngine.run,
            # DaskEngine), that cannot be sent to its workers (a node or input does not
            # pickle): nothing of it ran; it runs where the node runs, item after item,
            # as every node's own map did before engines took them.
            import warnings

            from ..engines.seq import default_engine

            # (the engine's name as users know it: a worker's NodeMapsEngine is theirs)
            name = getattr(chosen, "name_in_messages", type(chosen).__name__)
            warnings.warn(
                f"{name}: the map of pipeline {self.label!r}, made inside "
                f"a node, runs in the node's process, item after item: {exc}",
                RuntimeWarning, stacklevel=2)
            return default_engine().map(self, inputs, map_over=map_over, map_mode=map_mode,
                                        output_name=output_name, **options)

    def imap(self, inputs: dict[str, Any] | None = None, map_over: Any = None,
             map_mode: str = "zip", output_name: Any = None, engine: Any = None, *,
             ordered: bool = True, read_ahead: int | None = None, **options: Any) -> Any:
        """``map`` as an iterator over results as they come; inputs read lazily (any
        iterable, generators included), at most ``read_ahead`` items in flight. Close it
        (or break out of the loop) to stop the map. See docs/streaming.md."""
        chosen = self._engine(engine, inner=True)
        if engine is None and self.engine is None and not getattr(chosen, "streams_node_maps",
                                                                  False):
            # A node's own imap streams on the engine running the node where it runs in
            # this process (ThreadEngine, AsyncEngine, AutoEngine); elsewhere (in a
            # worker process) on the default engine, item after item.
            chosen = self._engine(engine)
        return chosen.imap(self, inputs, map_over=map_over, map_mode=map_mode,
                           output_name=output_name, ordered=ordered,
                           read_ahead=read_ahead, **options)

    async def arun(self, inputs: dict[str, Any] | None = None, output_name: Any = None,
                   engine: Any = None, **options: Any) -> dict[str, Any]:
        """``run`` for async callers: the caller's event loop keeps running meanwhile."""
        eng = self._engine(engine)
        if hasattr(eng, "arun"):
            return await eng.arun(self, inputs, output_name=output_name, **options)
        call = functools.partial(eng.run, self, inputs, output_name=output_name, **options)
        import asyncio  # already loaded: the caller runs an event loop

        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def amap(self, inputs: dict[str, Any] | None = None, map_over: Any = None,
                   map_mode: str = "zip", output_name: Any = None, engine: Any = None,
                   **options: Any) -> list[Any]:
        """``map`` for async callers."""
        eng = self._engine(engine)
        if hasattr(eng, "amap"):
            return await eng.amap(self, inputs, map_over=map_over, map_mode=map_mode,
                                  output_name=output_name, **options)
        call = functools.partial(eng.map, self, inputs, map_over=map_over, map_mode=map_mode,
                                 output_name=output_name, **options)
        import asyncio  # already loaded: the caller runs an event loop

        return await asyncio.get_running_loop().run_in_executor(None, call)

    # -- composition ------------------------------------------------------------------
    def as_node(self, input_mapping: dict[str, str] | None = None,
                output_mapping: dict[str, str] | None = None, map_over: Any = None,
                map_mode: str = "zip", name: str | None = None,
                cache: bool = True, **hints: Any) -> PipelineNode:
        """This pipeline as a node of another one (see docs/nesting.md); ``hints`` as for
        ``@node`` (e.g. ``executor="process"``: the inner pipeline runs there whole)."""
        return PipelineNode(self, input_mapping=input_mapping, output_mapping=output_mapping,
                            map_over=map_over, map_mode=map_mode, name=name, cache=cache,
                            **hints)

    def visualize(self, filename: str | None = None, engine: Any = "auto",
                  depth: int | None = 1, **options: Any):
        """Draw the graph (HyperNodes' argument order): inline in Jupyter, or to ``filename``.

        Needs nothing installed (gilfree's own SVG layout); Graphviz draws it when its
        programs are installed or ``engine="graphviz"``.  See docs/visualization.md.
        """
        from ..viz.visualization import visualize

        return visualize(self, filename=filename, engine=engine, depth=depth, **options)

    # -- inputs -----------------------------------------------------------------------
    def bind(self, **inputs: Any) -> "Pipeline":
        """Default input values for every later call (call-time inputs win)."""
        self._bound_inputs.update(inputs)
        return self

    def unbind(self, *keys: str) -> "Pipeline":
        """Forget the named bound inputs, or all of them when no name is given."""
        if not keys:
            self._bound_inputs.clear()
        for k in keys:
            self._bound_inputs.pop(k, None)
        return self

    @property
    def bound_inputs(self) -> dict[str, Any]:
        return dict(self._bound_inputs)

    @property
    def unfulfilled_args(self) -> tuple[str, ...]:
        return tuple(a for a in self.graph.root_args if a not in self._bound_inputs)

    def with_engine(self, engine: Any) -> "Pipeline":
        self.engine = engine
        return self

    def with_name(self, name: str) -> "Pipeline":
        self.name = name
        return self

    def __repr__(self) -> str:
        parts = [f"name={self.name!r}"] if self.name else []
        parts.append(f"nodes={len(self.nodes)}")
        if self._bound_inputs:
            bound = ", ".join(f"{k}={v!r}" for k, v in self._bound_inputs.items())
            parts.append(f"bound=[{bound}]")
        needs = self.unfulfilled_args
        if needs:
            parts.append(f"needs=[{', '.join(needs)}]")
        return f"Pipeline({', '.join(parts)})"
