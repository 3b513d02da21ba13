"""DualNode steps in a map: items grouped into batches, one batch-function call each."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..model.batch_formats import batch_kwargs, plain_results
from ..errors import annotate
from ..model.plan import Step
from .runtime import _MISS, Runtime, _safe_signature, _set_output_sigs, _store
from .stages import BATCH_ADAPT

PFor = Callable[[Callable[[int], None], int], None]

#: A batch size changes only by more than this share of itself (sizes do not flicker).
RESIZE_BY = 0.25


class BatchAdapt:
    """A DualNode's batch size during a map, for AutoEngine (``stages.BATCH_ADAPT``): a
    batch holds at most ``seconds`` of work, by the recent batch calls' time per item
    (a call's fixed cost included, as when AutoEngine measured it), and at most ``most``
    items (its share of the map for the threads). Updated from the threads running
    batches without a lock: a lost update only delays a re-size."""

    def __init__(self, size: int, seconds: float, most: int):
        self.size, self.seconds, self.most = size, seconds, most
        self.first = size
        self.per_item: float | None = None
        self._s = self._n = 0.0

    def observe(self, items: int, took: float) -> int:
        """A batch call of ``items`` took ``took`` seconds: the size from now on."""
        if items <= 0:
            return self.size
        self._s = 0.5 * self._s + took
        self._n = 0.5 * self._n + items
        per = self.per_item = self._s / self._n
        want = max(1, min(self.most, int(self.seconds / per))) if per > 0 else self.most
        if abs(want - self.size) > RESIZE_BY * self.size:
            self.size = want
        return self.size

    def describe(self) -> str:
        """What explain() says of it after a map."""
        if self.size == self.first or self.per_item is None:
            return ""
        return (f"re-sized while running: {self.first} -> {self.size} items "
                f"({self.per_item * 1e3:.2f} ms per item)")


def _run_batch(step: Step, values: list[dict], sigs: list, failed: list, cached: list,
               varying: set, base: dict, rt: Runtime, collect: bool, first: int | list[int],
               run_tasks: PFor) -> None:
    """One DualNode step for every live item, through its batch function.

    Cache look-ups and callbacks happen here, in the driver; only the batch calls are
    tasks (several batches may run at once on a parallel engine).
    """
    # ``first``: the map item number of values[0], or (a streaming map's batch of items
    # that need not be consecutive) each value's item number.
    number = first.__getitem__ if isinstance(first, list) else (lambda i: first + i)
    cache = rt.cache if step.cache else None
    todo = []
    step_sigs: dict[int, str] = {}
    for i, v in enumerate(values):
        if failed[i] is not None:
            continue
        sig = _safe_signature(step, v, sigs[i]) if cache is not None else None
        if sig is not None:
            step_sigs[i] = sig
            hit = cache.get(sig, _MISS)
            if hit is not _MISS:
                v.update(hit)
                _set_output_sigs(step, sig, sigs[i])
                rt.emit("on_node_cached", step.name, sig)
                continue
        cached[i] = False
        todo.append(i)
    retries = step.hints.get("retries", rt.retries)
    adapt = step.hints.get(BATCH_ADAPT)
    if adapt is None:
        size = step.hints.get("batch_size") or rt.batch_size or max(len(todo), 1)
        chunks = [todo[k:k + size] for k in range(0, len(todo), size)]
    else:  # sizes follow the calls' time: each batch is cut when it starts (claim)
        chunks = []
    outs: list[Any] = [None] * len(chunks)
    errors: list[BaseException | None] = [None] * len(chunks)
    took = [0.0] * len(chunks)

    def call(k: int) -> None:
        chunk = chunks[k]
        kwargs = {a: ([values[i][a] for i in chunk] if a in varying else base[a])
                  for a in step.args}
        t0 = time.perf_counter()
        try:
            outs[k] = _call_batch(step, kwargs, varying, retries, len(chunk))
        except Exception as exc:
            annotate(exc, step.name)
            exc.add_note(f"gilfree: batch of map items {[number(i) for i in chunk]}")
            if not collect:
                raise
            errors[k] = exc
        took[k] = time.perf_counter() - t0

    task, tasks = call, len(chunks)
    if adapt is not None:
        task, tasks = _adapting(todo, adapt, chunks, outs, errors, took, call, collect,
                                step.hints.get("max_concurrency"))
    if rt.callbacks:
        for i in todo:
            rt.emit("on_node_start", step.name, {a: values[i][a] for a in step.args})
    try:
        run_tasks(task, tasks)
    except Exception as exc:
        rt.emit("on_error", step.name, exc)
        raise
    for k, chunk in enumerate(chunks):
        if errors[k] is not None:
            rt.emit("on_error", step.name, errors[k])
            for i in chunk:
                failed[i] = errors[k]
            continue
        share = took[k] / len(chunk)
        for j, i in enumerate(chunk):
            try:
                _store(step, outs[k][j], values[i])
            except Exception as exc:
                annotate(exc, step.name, number(i))
                if not collect:
                    raise
                failed[i] = exc
                continue
            outputs = {o: values[i][o] for o in step.out_names}
            if i in step_sigs:
                cache.put(step_sigs[i], outputs)
                _set_output_sigs(step, step_sigs[i], sigs[i])
            if rt.callbacks:
                rt.emit("on_node_end", step.name, outputs, share)


def _adapting(todo: list[int], adapt: BatchAdapt, chunks: list, outs: list, errors: list,
              took: list, call: Callable[[int], None], collect: bool,
              at_once: int | None) -> tuple[Callable[[int], None], int]:
    """Tasks that cut their batches as they start, of the size ``adapt`` says then:
    each task runs batches until no item is left (or, raising, one failed). As many
    tasks as batches of the first size (a pool runs them as it ran fixed batches), or
    as the node's calls that may run at once (``at_once``, its max_concurrency: a task
    waiting for its turn would have cut its batch too early)."""
    lock = threading.Lock()
    cursor = [0]
    failed = [False]

    def claim() -> int | None:
        with lock:
            a = cursor[0]
            if a >= len(todo) or failed[0]:
                return None
            b = cursor[0] = min(len(todo), a + adapt.size)
            chunks.append(todo[a:b])
            outs.append(None)
            errors.append(None)
            took.append(0.0)
            return len(chunks) - 1

    def task(_: int) -> None:
        while (k := claim()) is not None:
            try:
                call(k)
            except BaseException:
                failed[0] = not collect
                raise
            adapt.observe(len(chunks[k]), took[k])

    return task, min(-(-len(todo) // max(1, adapt.size)), at_once or len(todo))


def _call_batch(step: Step, kwargs: dict, varying: set, retries: int, n: int) -> list:
    """The one place every engine calls a batch function (workers run ``execute_map``
    too): arguments in the formats it asks for, its results as plain Python values."""
    # getattr: a duck-typed dual node (is_dual_node = True) may come without a spec.
    kwargs = batch_kwargs(getattr(step.node, "batch_spec", None), kwargs, varying, step.name)
    attempt = 0
    while True:
        try:
            out = step.batch(**kwargs)
            break
        except Exception:
            attempt += 1
            if attempt > retries:
                raise
    return plain_results(out, n, step.name)
