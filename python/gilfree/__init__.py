"""gilfree: pipelines of plain Python functions, run fast on swappable engines.

Code written for HyperNodes runs unchanged apart from the import line.
"""

from .batch import DualNode
from .cache import DiskCache
from .callbacks import CallbackContext, PipelineCallback
from .engines import SeqEngine
from .errors import (CycleError, DependencyError, ExecutionError, GilfreeError,
                     HyperNodesError, SerializationError)
from .nested import PipelineNode
from .node import Node, node
from .pipeline import Pipeline
from .progress import ProgressCallback
from .stateful import stateful

__version__ = "0.1.0"

__all__ = [
    "CallbackContext", "CycleError", "DependencyError", "DiskCache", "DualNode",
    "ExecutionError", "GilfreeError", "HyperNodesError", "Node", "Pipeline",
    "PipelineCallback", "PipelineNode", "ProgressCallback", "SerializationError",
    "SeqEngine", "node", "stateful",
]
