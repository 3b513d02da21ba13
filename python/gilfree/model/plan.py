"""Compiling a pipeline call into a plan: which steps run, with which arguments.

A plan is made once per ``run``/``map`` call (not per item), so that per item the
executor only looks values up and calls functions.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Iterable

FUNC, DUAL, PIPE = "func", "dual", "pipe"


class Step:
    """One node of a plan, with everything the per-item loop needs precomputed."""

    __slots__ = (
        "node", "name", "kind", "func", "args", "nargs", "arg0", "getter", "out_names",
        "out0", "multi", "is_async", "cache", "hints", "code_hash", "batch", "owners",
        # nested pipelines only
        "inner", "arg_map", "out_map", "map_over", "map_mode", "pipeline",
    )

    def __init__(self, node: Any, args: tuple[str, ...]):
        self.node = node
        self.name = node.name
        self.cache = node.cache
        self.hints = node.hints
        self.code_hash = node.code_hash
        self.is_async = node.is_async
        self.args = args
        self.nargs = len(args)
        self.arg0 = args[0] if args else None
        self.batch = None
        if getattr(node, "is_pipeline_node", False):
            self.kind, self.func = PIPE, None
        elif getattr(node, "is_dual_node", False):
            self.kind, self.func = DUAL, node.singular
            self.batch = node.batch
        else:
            self.kind, self.func = FUNC, node.func
        # Positional calls are cheaper than keyword calls; they are only correct when
        # the passed arguments are a prefix of the signature (no default skipped).
        positional = (node.root_args[: len(args)] == args
                      and not set(args) & getattr(node, "keyword_only", frozenset()))
        self.getter = itemgetter(*args) if positional and len(args) > 1 else None
        if not positional:
            self.nargs = -1  # keyword call
        # Bound methods: the object they belong to is part of the computation, so it
        # is part of the cache key (hashed only when a cache asks, see execute.py).
        self.owners = tuple(o for o in (_owner(self.func), _owner(self.batch)) if o is not None)
        if not positional and self.func is not None and getattr(node, "positional_only", ()):
            self.func = _keywords_to_positional(self.func, node.positional_only, node.defaults)
        self.out_names = node.output_names
        self.out0 = self.out_names[0] if self.out_names else None
        self.multi = isinstance(getattr(node, "output_name", None), tuple) and self.kind != PIPE
        self.inner = None

    def __repr__(self) -> str:
        return f"Step({self.kind}:{self.name})"


def _keywords_to_positional(func: Any, names: tuple[str, ...], defaults: dict) -> Any:
    """A keyword-callable front for a function with positional-only parameters."""
    def call(**kwargs: Any) -> Any:
        head = [kwargs.pop(n) if n in kwargs else defaults[n] for n in names]
        return func(*head, **kwargs)
    return call


def _owner(func: Any) -> Any:
    if func is None or isinstance(func, type(len)):  # builtins: __self__ is a module
        return None
    return getattr(func, "__self__", None)


def is_plain(step: Step) -> bool:
    """A plain synchronous function step with no retries hint: what the fast paths (and
    a streaming thread stage's written-out call) run without run_step."""
    return step.kind == FUNC and not step.is_async and not step.hints.get("retries")


class Plan:
    """The steps needed for the requested outputs, in execution order."""

    def __init__(self, pipeline: Any, steps: list[Step], outputs: list[str],
                 required: list[str]):
        self.pipeline = pipeline
        self.pipeline_id = pipeline.id
        self.steps = steps
        self.outputs = outputs
        self.required = required
        self.produced = {o for s in steps for o in s.out_names}
        self.has_batch = any(s.kind == DUAL for s in steps)
        # The per-item fast loop handles plain synchronous function steps only.
        self.simple = all(is_plain(s) for s in steps)
        self.segments = _segments(steps)
        self.waves = _waves(steps)
        self.ships_sigs = False  # a remote stage's plan: signatures travel (stages.py)

    def iter_steps(self) -> Iterable[Step]:
        """Every step, nested plans included (for hint checks and visualisation)."""
        for s in self.steps:
            yield s
            if s.inner is not None:
                yield from s.inner.iter_steps()


def _segments(steps: list[Step]) -> list[tuple[str, Any]]:
    """Runs of per-item steps, split at batch (DualNode) steps, for ``map``."""
    out: list[tuple[str, Any]] = []
    for s in steps:
        if s.kind == DUAL:
            out.append(("batch", s))
        elif out and out[-1][0] == "items":
            out[-1][1].append(s)
        else:
            out.append(("items", [s]))
    return out


def _waves(steps: list[Step]) -> list[list[Step]]:
    """Steps grouped so that each group depends only on earlier groups."""
    level: dict[str, int] = {}
    waves: list[list[Step]] = []
    for s in steps:
        lv = max((level[a] + 1 for a in s.args if a in level), default=0)
        for o in s.out_names:
            level[o] = lv
        while len(waves) <= lv:
            waves.append([])
        waves[lv].append(s)
    return waves


def _as_list(output_name: str | Iterable[str]) -> list[str]:
    return [output_name] if isinstance(output_name, str) else list(output_name)


def compile_plan(pipeline: Any, available: set[str], output_name: Any = None) -> Plan:
    """Validate the requested outputs and inputs, and build the plan.

    ``available`` is the set of input names that will be present (bound, given, or
    mapped).  Raises ``ValueError`` for unknown outputs and missing inputs.
    """
    graph = pipeline.graph
    if output_name is None:
        requested = list(graph.default_output_names)
        nodes = list(graph.execution_order)
    else:
        requested = _as_list(output_name)
        unknown = [o for o in requested if o not in graph.producer]
        if unknown:
            raise ValueError(
                f"Unknown output(s) {unknown} for pipeline {pipeline.label!r}. "
                f"Available outputs: {graph.available_output_names}"
            )
        nodes = graph.get_required_nodes(requested)

    produced = {o for n in nodes for o in n.output_names}
    external: dict[str, bool] = {}
    for n in nodes:
        for a in n.root_args:
            if a not in produced:
                external[a] = external.get(a, True) and a in n.defaults
    required = sorted(a for a, optional in external.items() if not optional)
    missing = [a for a in required if a not in available]
    if missing:
        raise ValueError(
            f"Missing required input(s): {missing}. Required inputs: {required}"
            f" (pipeline {pipeline.label!r})"
        )

    wanted = set(requested) | {a for n in nodes for a in n.root_args}
    steps = []
    for n in nodes:
        args = tuple(a for a in n.root_args if a in produced or a in available)
        step = Step(n, args)
        if step.kind == PIPE:
            _compile_nested(step, n, args, wanted)
        steps.append(step)
    return Plan(pipeline, steps, requested, required)


def _compile_nested(step: Step, pnode: Any, args: tuple[str, ...], wanted: set[str]) -> None:
    inner_pipe = pnode.pipeline
    step.pipeline = inner_pipe
    step.arg_map = tuple((outer, pnode.inner_name(outer)) for outer in args)
    step.map_over = [pnode.inner_name(m) for m in pnode.map_over]
    step.map_mode = pnode.map_mode
    renamed = dict(zip(pnode.inner_outputs, pnode.output_names))
    # Only what siblings consume or the caller asked for is computed inside.
    out_map = [(i, o) for i, o in renamed.items() if o in wanted]
    if not out_map:
        out_map = list(renamed.items())
    step.out_map = tuple(out_map)
    step.out_names = tuple(o for _, o in out_map)
    step.out0 = step.out_names[0] if step.out_names else None
    inner_available = set(inner_pipe.bound_inputs) | {i for _, i in step.arg_map}
    step.inner = compile_plan(inner_pipe, inner_available, [i for i, _ in out_map])
