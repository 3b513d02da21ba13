"""A pipeline used as a node of another pipeline (``Pipeline.as_node``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .hashing import hash_strings, hash_value
from .node import validate_hints

if TYPE_CHECKING:
    from .pipeline import Pipeline


class PipelineNode:
    """Runs an inner pipeline as one step; optionally mapped over some inputs.

    ``input_mapping`` is ``{outer_name: inner_name}`` and ``output_mapping`` is
    ``{inner_name: outer_name}``; names not mentioned pass through unchanged.
    """

    is_pipeline_node = True
    is_async = False

    def __init__(
        self,
        pipeline: "Pipeline",
        input_mapping: dict[str, str] | None = None,
        output_mapping: dict[str, str] | None = None,
        map_over: str | Sequence[str] | None = None,
        map_mode: str = "zip",
        name: str | None = None,
        cache: bool = True,
        **hints: Any,
    ):
        self.pipeline = pipeline
        self.input_mapping = dict(input_mapping or {})
        self.output_mapping = dict(output_mapping or {})
        self.map_mode = map_mode
        self.cache = cache
        self.name = name or pipeline.name or "pipeline"
        # e.g. executor="process": the whole inner pipeline (its map too) runs there
        self.hints: dict[str, Any] = validate_hints(f"nested pipeline {self.name!r}", hints)
        if map_mode not in ("zip", "product"):
            raise ValueError(f"nested pipeline {self.name!r}: map_mode must be 'zip' or 'product'")
        self._outer_of = {inner: outer for outer, inner in self.input_mapping.items()}
        inner_args = set(pipeline.graph.root_args)
        bad = sorted(set(self.input_mapping.values()) - inner_args)
        if bad:
            raise ValueError(
                f"nested pipeline {self.name!r}: input_mapping names inner input(s) {bad} "
                f"that the pipeline does not take; it takes {sorted(inner_args)}"
            )
        bad = sorted(set(self.output_mapping) - set(pipeline.graph.available_output_names))
        if bad:
            raise ValueError(
                f"nested pipeline {self.name!r}: output_mapping names output(s) {bad} the "
                f"pipeline does not produce; it produces {pipeline.graph.available_output_names}"
            )
        self.map_over = [map_over] if isinstance(map_over, str) else list(map_over or [])
        outer_args = {self.outer_name(a) for a in inner_args}
        bad = [m for m in self.map_over if m not in outer_args]
        if bad:
            raise ValueError(
                f"nested pipeline {self.name!r}: map_over {bad} is not an input of the "
                f"pipeline; its inputs are {sorted(outer_args)}"
            )

    # -- names ------------------------------------------------------------------------
    def outer_name(self, inner: str) -> str:
        return self._outer_of.get(inner, inner)

    def inner_name(self, outer: str) -> str:
        return self.input_mapping.get(outer, outer)

    @property
    def inner_outputs(self) -> list[str]:
        """Inner output names this node exposes (before renaming)."""
        if self.output_mapping:
            return list(self.output_mapping)
        return list(self.pipeline.graph.default_output_names)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.output_mapping.get(o, o) for o in self.inner_outputs)

    @property
    def output_name(self) -> str | tuple[str, ...]:
        # As a Node's: the name itself for one output, a tuple for several, listed by
        # inner name as HyperNodes lists them (``output_names`` is in execution order).
        names = tuple(self.output_mapping.get(o, o) for o in sorted(self.inner_outputs))
        return names[0] if len(names) == 1 else names

    @property
    def root_args(self) -> tuple[str, ...]:
        args = [self.outer_name(a) for a in self.pipeline.unfulfilled_args]
        # A mapped name whose inner input is bound is still an input: an outer value
        # given for it wins over the bound one (call-time wins), as in run().
        args += [o for o in self.input_mapping if o not in args]
        args += [m for m in self.map_over if m not in args]
        return tuple(args)

    @property
    def bound_inputs(self) -> dict[str, Any]:
        """The inner pipeline's bound inputs (a copy), under their inner names."""
        return self.pipeline.bound_inputs

    @property
    def unfulfilled_args(self) -> tuple[str, ...]:
        """Outer names the outer pipeline must provide: inner inputs not bound, plus
        ``map_over``. (``root_args`` also lists mapped names of bound inputs, which may
        be given to override the bound value.)"""
        args = [self.outer_name(a) for a in self.pipeline.unfulfilled_args]
        return tuple(args + [m for m in self.map_over if m not in args])

    @property
    def defaults(self) -> dict[str, Any]:
        # Inner optional inputs stay optional outside (the inner default is used), and
        # so do inner inputs that are bound.
        optional = set(self.pipeline.graph.optional_args) | set(self.pipeline.bound_inputs)
        return {self.outer_name(a): None for a in optional}

    @property
    def code_hash(self) -> str:
        # Built from the inner nodes' hashes and the wiring, never from ids: the same
        # nested pipeline gets the same key in every process.
        parts = [n.code_hash for n in self.pipeline.graph.execution_order]
        parts += [repr(sorted(self.input_mapping.items())), repr(sorted(self.output_mapping.items()))]
        parts += [repr(self.map_over), self.map_mode]
        return hash_strings(*parts)

    def __cache_key__(self) -> str:
        # A PipelineNode is callable, so a node may call one it closes over: key it by
        # what it would run (code, wiring, bound inputs), not by pickling the pipeline.
        return hash_strings(self.code_hash, hash_value(self.pipeline.bound_inputs))

    @property
    def func(self) -> Any:
        return None

    def __call__(self, required_outputs: Any = None, **inputs: Any) -> dict[str, Any]:
        """Run the inner pipeline on outer-named ``inputs``; outer-named outputs.

        As HyperNodes' ``PipelineNode(...)(x=1)``: mapped nodes return one list per
        output; ``required_outputs`` (outer names) restricts what runs. The inner
        pipeline's own engine runs it.
        """
        inner_of = {outer: inner for inner, outer in self.output_mapping.items()}
        if required_outputs is None:
            wanted = self.inner_outputs
        else:
            outer = [required_outputs] if isinstance(required_outputs, str) else required_outputs
            wanted = [inner_of.get(o, o) for o in outer]
        inner_inputs = {self.inner_name(k): v for k, v in inputs.items()}
        if self.map_over:
            results = self.pipeline.map(inputs=inner_inputs,
                                        map_over=[self.inner_name(m) for m in self.map_over],
                                        map_mode=self.map_mode, output_name=wanted)
            return {self.output_mapping.get(o, o): [r[o] for r in results] for o in wanted}
        result = self.pipeline.run(inputs=inner_inputs, output_name=wanted)
        return {self.output_mapping.get(o, o): result[o] for o in wanted}

    def __repr__(self) -> str:
        extra = f", map_over={self.map_over}" if self.map_over else ""
        return f"PipelineNode({self.name}, outputs={list(self.output_names)}{extra})"
