"""DaskEngine, the worker side: Dask's task functions over the remote layer's session
(``remote/session.py``, the one ProcessEngine's workers run too).

The driver side (``dask_engine.py``, ``_dask_local.py``) submits ``run_batch`` once per
batch and reaches the functions below with ``Client.run`` (``release_stateful``,
``forget_payload``, ``interrupt``, ``running``).  One session per worker process; the
worker's threads share it (it locks what they share).

    run_batch(token, payload, batch)         payload, batch: bytes (remote/messages.py)
      first batch of a map here: Payload unpickled once ─▶ session, kept by token (8 at
                                 most); the map's @stateful failures are its own
      session.run_batch ─▶ Result bytes: parts (items that failed boxed, or the rows the
                           driver could not pickle), recorded events, or the error
    forget_payload(token)  the map is over: payload dropped, its map ended
    interrupt(token)  (Ctrl-C, an error ends the map): running batches of that map get
                      Interrupted at their next bytecode; queued ones return at once
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from ..remote import transport
from ..errors import ExecutionError
from ..remote import session as _session
from ..remote.messages import Result

#: This process's session: payloads by map token; a map ends when the driver forgets it
#: (or, when drivers vanished, after 8 newer ones).
_SESSION = _session.Session(max_payloads=8, max_maps=8)
_RUNNING: dict[int, str] = {}  # thread id -> token of the batch it runs
_INTERRUPTED: dict[str, None] = {}  # tokens of interrupted maps (the last few), in order
_LOCK = threading.Lock()  # worker threads share both


class Interrupted(BaseException):
    """Raised asynchronously in a thread running a batch whose map was cancelled (a
    BaseException: node code's ``except Exception`` and gilfree's per-item error
    handling must not turn it into one item's failure and go on with the batch)."""


def release_stateful(keys: list[str]) -> None:
    """Engine shutdown: tear down (``__teardown__``) and forget these instances."""
    _session.release_stateful(keys)


async def forget_payload(token: str) -> None:  # async: Client.run(wait=False) needs it
    _SESSION.drop_payload(token)
    _SESSION.end_map(token)


async def interrupt(token: str) -> int:
    """Stop this map's batches here: queued ones return at once, running ones get
    ``Interrupted`` at their next bytecode (a node blocked in C, e.g. ``time.sleep``,
    first returns from it).  Returns how many running batches were told."""
    told = 0
    with _LOCK:
        _INTERRUPTED[token] = None
        while len(_INTERRUPTED) > 64:
            del _INTERRUPTED[next(iter(_INTERRUPTED))]
        for tid, tok in _RUNNING.items():
            if tok == token:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid),
                                                           ctypes.py_object(Interrupted))
                told += 1
    return told


async def running(tokens: list[str]) -> int:
    """How many of this process's threads still run a batch of one of ``tokens``."""
    with _LOCK:
        return sum(tok in tokens for tok in _RUNNING.values())


def run_batch(token: str, payload: bytes, batch: bytes, node_maps: bool = False) -> bytes:
    """One Dask task: a Batch of the map ``token`` run by this process's session.

    Returns a pickled Result.  A node's exception is the task's answer, not a Dask
    failure: no worker log noise, and the events recorded before it still reach the
    driver.  ``node_maps``: a node whose function calls ``Pipeline.map`` (no engine
    given, none on its pipeline) maps on the cluster (``node_map_engine``), not item
    after item here: the driver asks for it when the map's items are too few to keep
    the cluster busy by themselves.
    """
    try:
        if node_maps:
            from ..run.runtime import maps_on

            with maps_on(node_map_engine()):
                return _run_registered(token, payload, batch)
        return _run_registered(token, payload, batch)
    except Interrupted:  # the driver has forgotten this batch: nobody reads the answer
        body, _ = transport.dumps(Result(None, transport.box_exception(
            ExecutionError("map interrupted")), []), shm=False)
        return body


def _run_registered(token: str, payload: bytes, batch: bytes) -> bytes:
    tid = threading.get_ident()
    with _LOCK:
        if token in _INTERRUPTED:
            raise Interrupted
        _RUNNING[tid] = token
    try:
        _SESSION.load_payload(token, payload, [])  # the first batch of a map here unpickles
        body, _ = _SESSION.run_batch(token, batch, [], shm=False)  # Dask carries bytes
        return body
    finally:
        with _LOCK:  # from here on no interrupt is sent to this thread ...
            _RUNNING.pop(tid, None)
        # ... and one sent but not raised yet is withdrawn: it must not hit Dask's code
        # after this function returns (raised before this line, run_batch catches it).
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)


_node_maps: Any = None  # this worker's engine for nodes' own maps (one per process)


def node_map_engine() -> Any:
    """The engine a node's own map runs on in this worker: a DaskEngine on the worker's
    client (the same cluster), whose maps secede from the worker's thread pool while
    they wait, so that the waiting task's thread slot runs inner items meanwhile (as
    ``distributed.worker_client`` does: the outer task waits, it does not hold a slot)."""
    global _node_maps
    with _LOCK:
        if _node_maps is None:
            import distributed

            from .dask_engine import DaskEngine

            class NodeMaps(DaskEngine):
                def _map_whole(self, *args: Any, **kwargs: Any) -> list:
                    distributed.secede()
                    try:
                        return super()._map_whole(*args, **kwargs)
                    finally:
                        distributed.rejoin()

            _node_maps = NodeMaps(client=distributed.get_client())
        return _node_maps
