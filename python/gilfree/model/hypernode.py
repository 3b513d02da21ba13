"""``HyperNode``: what every node of a pipeline provides (HyperNodes' protocol).

``Node``, ``DualNode`` and ``PipelineNode`` all satisfy it. As in HyperNodes it is a
``typing.Protocol`` for type hints; here it is also runtime-checkable, so
``isinstance(x, HyperNode)`` tells a node from anything else.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class HyperNode(Protocol):
    """An executable unit of a pipeline: its name, inputs, outputs and cache key."""

    name: str
    """Display name (the function name, or the name given)."""

    cache: bool
    """Whether the node's outputs are cached."""

    @property
    def root_args(self) -> tuple:
        """The input names the node takes."""
        ...

    @property
    def output_name(self) -> str | tuple:
        """The output name, or a tuple of names for several outputs."""
        ...

    @property
    def code_hash(self) -> str:
        """A hash of the node's code: a change of code invalidates its cache entries."""
        ...
