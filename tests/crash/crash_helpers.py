"""Helpers of the crash cases: reading their reports, watching processes."""

from __future__ import annotations

import json
import os


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
