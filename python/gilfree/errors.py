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
    """Something could not be pickled; the message says what, where and which way.

    ``nodes``: for a value of one map item that could not travel between the driver and
    a worker process (an input, a node's output, the item's results), the nodes it
    belongs to (an input: the nodes that read it; empty: not known); None for anything
    else. (AutoEngine runs such an item here instead, when it chose the processes.)"""

    nodes: tuple[str, ...] | None = None
    #: "input", "output" or "results": which value of the item did not travel
    value: str | None = None
    #: (an output) which, of which item, and why: "its output 'x' (map item 5: ...)"
    what: str | None = None


def annotate(exc: BaseException, node_name: str, item_index: int | None = None) -> None:
    """Attach a note naming the node (and map item) to a node's own exception, once.

    An exception that a node of a map or run *inside* this node's function raised (a
    node that maps) already names that node: it gets a note naming this one too, the
    way a nested pipeline's does ("inside nested pipeline ..."), so that the caller's
    item is named as well."""
    where = f"node {node_name!r}"
    if item_index is not None:
        where += f" (map item {item_index})"
    notes = getattr(exc, "__notes__", ())
    if not any(n.startswith("gilfree: ") for n in notes):
        exc.add_note(f"gilfree: raised in {where}")
    elif f"node {node_name!r}" not in notes[-1]:
        # Said by a node further in: this node's function called it. (Not when this
        # very node said it already: the same call seen twice on its way out.)
        exc.add_note(f"gilfree: inside {where}")


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
