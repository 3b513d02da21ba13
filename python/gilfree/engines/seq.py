"""``SeqEngine``: one item at a time, in the calling thread.  The semantic reference."""

from __future__ import annotations

import threading

from .base import Engine


class SeqEngine(Engine):
    """Runs everything in the caller's thread; stateful objects are built once there.

    ``max_concurrency`` is honoured trivially (one call at a time); ``timeout`` cannot
    be (a running Python function cannot be interrupted in its own thread), and
    ``executor`` other than ``"inline"`` is ignored, each with one warning.
    """


_default: SeqEngine | None = None
_default_lock = threading.Lock()


def default_engine() -> SeqEngine:
    """The engine of pipelines created without one."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SeqEngine()
        return _default
