"""The package's exception hierarchy.

Node exceptions are never wrapped: they propagate with their original type and gain a
note (``add_note``) naming the node and, in a map, the item index.  The classes here are
for failures that belong to gilfree itself.
"""

from __future__ import annotations


class GilfreeError(Exception):
    """Root of every error raised by gilfree itself."""


#: Code written for HyperNodes catches this name.
HyperNodesError = GilfreeError


class DependencyError(GilfreeError):
    """The graph is ill-defined: e.g. two nodes produce the same output."""


class CycleError(GilfreeError):
    """The graph has a cycle; the message names it, e.g. ``a -> b -> a``."""


class ExecutionError(GilfreeError):
    """A failure that had to be wrapped, e.g. a worker process died."""


class EngineShutDown(ExecutionError):
    """The engine was shut down (``engine.shutdown()``, e.g. from another thread) while
    a map ran on it: the items that had not finished did not run to their end."""


class SerializationError(GilfreeError):
    """Something could not be pickled; the message says what, where and which way."""


def annotate(exc: BaseException, node_name: str, item_index: int | None = None) -> None:
    """Attach a note naming the node (and map item) to a node's own exception, once."""
    where = f"in node {node_name!r}"
    if item_index is not None:
        where += f" (map item {item_index})"
    notes = getattr(exc, "__notes__", ())
    if any(n.startswith("gilfree: ") for n in notes):
        return  # the innermost node already said where it failed
    exc.add_note(f"gilfree: raised {where}")


def renumber_item(exc: BaseException, old: int, new: int) -> None:
    """Make gilfree's own "raised in node" note of ``exc`` name map item ``new`` instead
    of ``old`` (an item of one big map that stands for an item of a smaller one: the
    inner maps of a nested pipeline run as one, run/fanout.py)."""
    notes = getattr(exc, "__notes__", None)
    said = f" (map item {old})"
    for k, note in enumerate(notes or ()):
        if note.startswith("gilfree: raised ") and note.endswith(said):
            notes[k] = f"{note[:-len(said)]} (map item {new})"
            return
