"""A map's plan cut into stages: consecutive steps that run on the same executor.

Every node may say where it runs (``executor=`` "inline" | "thread" | "async" |
"process"; ``engine.configure(name, executor=...)`` overrides it); a node without a hint
runs on the engine's own kind. Consecutive steps (in execution order) on the same
executor fuse into one stage, so a map with no hints is one stage and runs exactly as
before. A DualNode is a stage of its own (it needs a batch of items); a nested pipeline
runs whole inside the stage of its own executor.

The stages of a map run one after another over the items still alive (an item that
failed under ``on_error="collect"`` skips the rest); ``execute.execute_map`` drives them
and the engine places each stage (``Placement``): on the C++ thread pool (``pfor``), on
the event loop (``async_items``), in the calling thread (neither), or in the engine's
worker processes (``remote``: only the values the stage reads cross the boundary, and
only the outputs later stages or the caller need come back).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from ..model.plan import DUAL, PIPE, Plan, Step

INLINE, THREAD, ASYNC, PROCESS = "inline", "thread", "async", "process"
EXECUTORS = (INLINE, THREAD, ASYNC, PROCESS)
#: A step hint only AutoEngine writes: how many threads the step's stage should use (a
#: thread stage's pool.map parallelism, a streaming thread stage's workers).
STAGE_THREADS = "_stage_threads"
#: With it, in a stream (AutoEngine): the items per second the stage has to sustain
#: (the slowest stage's pace, headroom included). The stage then re-sizes itself by
#: Little's law as its latency changes (stage_runners._ThreadRunner.adapt).
STAGE_PACE = "_stage_pace"
#: A step hint only AutoEngine writes, on a DualNode whose batch size it chose: an
#: ``execute_batch.BatchAdapt`` by which the size follows the batch calls' time per item
#: during a map (a map's batches, a stream's batch stage).
BATCH_ADAPT = "_batch_adapt"
#: The key under which a remote stage's items carry their values' cache signatures to
#: the workers and back (with a cache only).
SIGS = "__gilfree_sigs__"


class Stage:
    """Consecutive steps of a plan that run on one executor."""

    __slots__ = ("executor", "kind", "steps", "row_names", "base_names", "keep", "plan",
                 "index")

    def __init__(self, executor: str, kind: str, steps: list[Step], index: int):
        self.executor = executor
        # "items" (per-item steps), "batch" (one DualNode step) or "fanout" (one nested
        # pipeline with map_over: the inner items of all items as one map, fanout.py)
        self.kind = kind
        self.steps = steps
        self.index = index
        self.row_names: list[str] = []   # per-item values the stage reads
        self.base_names: list[str] = []  # shared values the stage reads
        self.keep: list[str] = []        # outputs later stages or the caller need
        self.plan: Plan | None = None    # the stage as a plan of its own (remote stages)

    @property
    def payload(self) -> Any:
        """What ``execute_map``'s segment loop runs: the steps, or the DualNode (nested)
        step."""
        return self.steps if self.kind == "items" else self.steps[0]

    def __repr__(self) -> str:
        return f"Stage({self.executor}:{[s.name for s in self.steps]})"


class Placement(NamedTuple):
    """Where one stage runs: ``pfor`` runs per-item (and per-batch) tasks (None: the
    calling thread), ``async_items`` runs items as coroutines on a loop, ``remote`` ships
    the stage to worker processes: ``remote(values, sigs, failed, cached, collect)``
    runs the stage for every live item, storing outputs in ``values`` or errors in
    ``failed`` (raising the first error unless ``collect``); ``fanout(step, values,
    failed, collect)`` runs a "fanout" stage the same way (fanout.py)."""
    pfor: Any = None
    async_items: Any = None
    remote: Callable | None = None
    fanout: Callable | None = None


class Skipped(Exception):
    """Stands in, on the way to worker processes, for an item that failed in an earlier
    stage (under on_error="collect"): the workers run around it; it never reaches users."""


def executor_of(step: Step, default: str, same: dict[str, str]) -> str:
    """The executor a step runs on: its hint (after ``configure``) or the engine's kind;
    ``same`` folds executors that the engine runs the same way (AsyncEngine runs
    "thread" steps through its loop, which offloads them to its pool)."""
    want = step.hints.get("executor") or default
    return same.get(want, want)


def fans_out(plan: Plan) -> bool:
    """True when ``plan``'s nested maps run as one map on the engine (fanout.py): some
    top-level step is ``is_fanout``."""
    return any(is_fanout(s) for s in plan.steps)


def is_fanout(step: Step) -> bool:
    """A nested pipeline with ``map_over`` and no executor hint: with ``fanout``, its
    inner items run as one map (fanout.py). A hinted one runs whole where it says."""
    return step.kind == PIPE and bool(step.map_over) and not step.hints.get("executor")


def compile_stages(plan: Plan, default: str, same: dict[str, str] | None = None,
                   varying: set[str] | None = None, fanout: bool = False) -> list[Stage]:
    """Cut ``plan``'s top-level steps into stages; fill in what each reads and keeps.

    ``varying`` holds the names that differ per item (mapped inputs and every output of
    the plan); the rest come from the map's shared inputs. ``fanout``: nested maps
    (``is_fanout``) are stages of their own."""
    same = same or {}
    stages: list[Stage] = []
    for step in plan.steps:
        where = executor_of(step, default, same)
        if fanout and is_fanout(step):
            stages.append(Stage(where, "fanout", [step], len(stages)))
        elif where == PROCESS and stages and stages[-1].executor == PROCESS \
                and stages[-1].kind != "fanout":
            # Worker processes run a plan's per-item and batch steps alike: one trip.
            stages[-1].steps.append(step)
            stages[-1].kind = "items"
        elif step.kind == DUAL:
            stages.append(Stage(where, "batch", [step], len(stages)))
        elif stages and stages[-1].kind == "items" and stages[-1].executor == where:
            stages[-1].steps.append(step)
        else:
            stages.append(Stage(where, "items", [step], len(stages)))
    varying = (varying or set()) | plan.produced
    needed_later: set[str] = set(plan.outputs)
    for stage in reversed(stages):
        made = {o for s in stage.steps for o in s.out_names}
        stage.keep = [o for s in stage.steps for o in s.out_names if o in needed_later]
        reads: list[str] = []
        inside: set[str] = set()
        for s in stage.steps:
            reads += [a for a in s.args if a not in inside and a not in reads]
            inside.update(s.out_names)
        stage.row_names = [a for a in reads if a in varying]
        stage.base_names = [a for a in reads if a not in varying]
        needed_later = (needed_later - made) | set(reads)
    return stages


def largest_hint(steps: list[Step], key: str) -> Any:
    """The largest value of hint ``key`` among steps that run as one stage (STAGE_THREADS:
    the threads it should use; STAGE_PACE: the pace it must keep); None: none asks."""
    asked = [s.hints[key] for s in steps if s.hints.get(key)]
    return max(asked) if asked else None


def is_mixed(stages: list[Stage], default: str) -> bool:
    """True when some stage runs elsewhere than the engine's own kind."""
    return any(st.executor != default for st in stages)


def stage_plan(plan: Plan, stage: Stage, ship_sigs: bool = False) -> Plan:
    """The stage as a plan of its own, to ship to worker processes: its steps, the
    outputs it keeps, and a light stand-in for the pipeline (its id and label only:
    events keep the map's pipeline id; the rest of the pipeline does not travel)."""
    if stage.plan is None:
        ref = PipelineRef(plan.pipeline_id, getattr(plan.pipeline, "label", "?"))
        stage.plan = sub_plan(plan, stage.steps, list(stage.keep) + ([SIGS] if ship_sigs
                                                                      else []),
                              list(stage.row_names) + list(stage.base_names), ref)
        stage.plan.ships_sigs = ship_sigs
    return stage.plan


def sub_plan(plan: Plan, steps: list[Step], outputs: list[str], required: list[str],
             pipeline: Any = None) -> Plan:
    """Some of ``plan``'s steps as a plan of their own (run one after another).
    ``pipeline``: what stands for the pipeline (default: ``plan``'s); its id is
    ``plan``'s either way."""
    sub = Plan(plan.pipeline if pipeline is None else pipeline, list(steps), outputs,
               required)
    sub.waves = [[s] for s in sub.steps]
    return sub


def split_at_batch(plan: Plan, shared: set[str]) -> tuple[Plan, Plan] | None:
    """``plan`` as (per-item steps, the DualNode steps that end it), so that a worker can
    run the batch calls of one batch while the next batch's items run (session.py); None
    when the plan is not that shape (no per-item step first, a per-item step after a
    DualNode, an output that neither part makes) or when both parts read one of the
    ``shared`` inputs: the two may run at once, and an object both read (a @stateful
    model) would be used from two threads."""
    d = next((k for k, st in enumerate(plan.steps) if st.kind == DUAL), 0)
    head, tail = plan.steps[:d], plan.steps[d:]
    if not head or any(st.kind != DUAL for st in tail):
        return None
    head_made = {o for st in head for o in st.out_names}
    tail_made = {o for st in tail for o in st.out_names}
    if any(o not in head_made and o not in tail_made for o in plan.outputs):
        return None
    tail_reads = [a for st in tail for a in st.args if a not in tail_made]
    head_reads = [a for st in head for a in st.args if a not in head_made]
    if shared & set(head_reads) & set(tail_reads):
        return None
    keep = [o for st in head for o in st.out_names
            if o in plan.outputs or o in tail_reads]
    return (sub_plan(plan, head, keep, list(dict.fromkeys(head_reads))),
            sub_plan(plan, tail, [o for o in plan.outputs if o in tail_made],
                     list(dict.fromkeys(tail_reads))))


class StagePart:
    """What a stage of a map with several executors sends to the workers: its plan, the
    shared inputs it reads, and per item the values it reads (with, under a cache, their
    signatures, so cache keys are those of a one-executor map)."""

    def __init__(self, stage: Stage, plan: Plan, rt: Any, base: dict):
        self.ship_sigs = rt.cache is not None
        self.plan = stage_plan(plan, stage, self.ship_sigs)
        self.shared = {k: base[k] for k in stage.base_names}
        # A stage that reads only shared inputs still needs a column: a batch's length
        # travels as the length of its columns.
        self.names = stage.row_names or ["__gilfree_item__"]

    def row(self, values: dict, sigs: dict | None) -> dict:
        row = {k: values.get(k) for k in self.names}
        if self.ship_sigs:
            row[SIGS] = {k: sigs[k] for k in self.names if k in sigs}
        return row

    def remote(self, rt: Any, map_stage: Callable[[list[dict], Any, set[int]], list]
               ) -> Callable:
        """``Placement.remote`` for this stage: ``map_stage(rows, rt, skip)`` runs the
        stage's plan over every item's row as one map elsewhere (worker processes, a
        cluster) and returns a result or an exception per row; ``skip``: the items that
        failed in an earlier stage (their rows are placeholders, their results unread)."""
        def remote(values: list, sigs: list, failed: list, cached: list,
                   collect: bool) -> None:
            skip = {i for i, err in enumerate(failed) if err is not None}
            rows = [self.row(v, s) for v, s in zip(values, sigs)]
            out = map_stage(rows, rt if rt.collect == collect else rt.with_collect(collect),
                            skip)
            for i, result in enumerate(out):
                if i in skip:
                    continue
                if isinstance(result, BaseException):
                    failed[i] = result
                    cached[i] = False
                else:
                    cached[i] = self.take(result, values[i], sigs[i]) and cached[i]
        return remote

    def take(self, result: dict, values: dict, sigs: dict | None) -> bool:
        """An item's stage result into its values; True if the workers served all of the
        stage's steps from the cache."""
        hit = False  # no cache: nothing was served from it
        if self.ship_sigs:  # what the stage's steps were cached under, and if all hit
            stage_sigs, hit = result.pop(SIGS)
            sigs.update(stage_sigs)
        values.update(result)
        return hit


class PipelineRef:
    """What a stage's plan keeps of its pipeline: id and label (for events, messages)."""

    __slots__ = ("id", "label")

    def __init__(self, id: str, label: str):  # noqa: A002 - a pipeline's own name for it
        self.id = id
        self.label = label

    def __getstate__(self) -> tuple:
        return (self.id, self.label)

    def __setstate__(self, state: tuple) -> None:
        self.id, self.label = state
