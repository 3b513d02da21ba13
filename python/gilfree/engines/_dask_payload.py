"""What DaskEngine's driver sends to the workers: the map's shared payload and each
batch's rows, pickled here (gilfree's transport Pickler; @stateful objects travel as
keys the workers build once) so that anything that does not pickle is named with its
input, item and nodes, worded as on ProcessEngine. Split from dask_engine.py (the
engine's scheduling and lifecycle)."""

from __future__ import annotations

import io
import pickle
from typing import Any, Callable

from ..errors import SerializationError
from ..execute import Runtime
from ..plan import Plan
from ..stateful import is_stateful
from ..transport import Pickler, pickle_by_value, stateful_key
from . import _dask_worker as _w
from .base import Engine


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
            return _w.worker_stateful, (key, pickle_by_value(obj))
        if isinstance(obj, Engine):
            return _no_engine, ()
        return super().reducer_override(obj)


def _payload(plan: Plan, base: dict, rows: list[dict], rt: Runtime) -> tuple:
    """What every batch of a map shares: (callback path, stateful keys shipped, the
    pickled plan/base/options, which nodes use each mapped input)."""
    path = list(rt.ctx.hierarchy_path) if rt.ctx is not None else []
    opts = {"cache": rt.cache, "retries": rt.retries, "batch_size": rt.batch_size,
            "collect": rt.collect, "events": bool(rt.callbacks), "path": path}
    keys: set[str] = set()
    blob = _dumps((plan, base, opts), keys, lambda: {
        **{f"input {k!r}": v for k, v in base.items()},
        **{f"node {s.name!r}": s.node for s in plan.iter_steps()}})
    consumers = {name: [s.name for s in plan.steps if name in s.args] for name in rows[0]}
    return path, keys, blob, consumers


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


def _dump_rows(rows: list[dict], first: int, keys: set[str],
               consumers: dict[str, list[str]]) -> bytes:
    """A batch's rows, pickled as (rows, failed): a row that does not pickle fails its
    item only (failed: batch offset -> SerializationError naming item, input and nodes,
    worded as on ProcessEngine); the other items travel and run."""
    buf = io.BytesIO()
    try:
        _Pickler(buf, keys).dump((rows, {}))
        return buf.getvalue()
    except Exception:
        pass
    failed: dict[int, SerializationError] = {}
    for k, row in enumerate(rows):
        for name, value in row.items():
            try:
                _Pickler(io.BytesIO(), set()).dump(value)
            except Exception as why:
                failed[k] = SerializationError(
                    f"cannot send input {name!r} ({type(value).__name__}: "
                    f"{type(why).__name__}: {why}) of map item {first + k} (used by node(s) "
                    f"{consumers.get(name, [])}) to a worker process (driver -> worker)")
                break
    good = [None if k in failed else row for k, row in enumerate(rows)]
    return _dumps((good, failed), keys, lambda: {
        f"map item {first + k} input {n!r}": v for k, row in enumerate(good) if row
        for n, v in row.items()})
