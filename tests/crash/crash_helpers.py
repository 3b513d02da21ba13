"""Helpers of the crash cases: the engines a case runs on, reading their reports,
watching processes."""

from __future__ import annotations

import importlib.util
import json
import os
import time

import pytest

_HAS_DASK = importlib.util.find_spec("distributed") is not None

#: Engine names a case can be parametrized with.  "process" starts workers from the
#: forkserver (the default), "process-spawn" with spawn; "dask" starts its own small
#: LocalCluster (2 worker processes x 1 thread) inside the case's interpreter.
SEQ, THREAD, ASYNC, PROCESS, SPAWN = "seq", "thread", "async", "process", "process-spawn"
DASK = pytest.param("dask", marks=pytest.mark.skipif(
    not _HAS_DASK, reason="dask.distributed is not installed (pip install '.[dask]')"))
#: ThreadEngine / ProcessEngine with each pipeline's nodes spread over executors
#: (conftest.PRELUDE's MIXED): maps of several stages, some in worker processes.
THREAD_MIXED, PROCESS_MIXED = "thread-mixed", "process-mixed"
ALL = [SEQ, THREAD, ASYNC, PROCESS, DASK, THREAD_MIXED, PROCESS_MIXED]
IN_PROCESS = [SEQ, THREAD, ASYNC]
WITH_WORKERS = [PROCESS, DASK]  # items run in other processes
BOTH_STARTS = [PROCESS, SPAWN]


def results(stdout: str) -> dict:
    out: dict = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            out.update(json.loads(line[7:]))
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> set[int]:
    """Direct children of ``pid`` (workers, or the forkserver that forks them)."""
    out: set[int] = set()
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out |= {int(c) for c in f.read().split()}
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def wait_gone(pids, timeout: float = 10) -> list[int]:
    """Wait until none of ``pids`` is alive (bounded); return those still alive."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [p for p in pids if alive(p)]
