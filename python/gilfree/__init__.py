"""gilfree: pipelines of plain Python functions, run fast on swappable engines.

Code written for HyperNodes runs unchanged apart from the import line.

The public names are imported on first use (PEP 562): ``import gilfree`` itself is
nearly free, and a worker process loads only what its pipeline needs.  Measured on the
2-core VM, ``import gilfree._worker`` went from 86 ms to ~35 ms, which every
ProcessEngine's first map waits for.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_names

# Eager on purpose: these functions share their names with their modules, and once the
# submodule ``gilfree.node`` is imported the package attribute ``node`` would be the
# module, not the decorator. Every pipeline needs them anyway.
from .node import Node, node
from .stateful import stateful

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "CallbackContext": ".callbacks", "PipelineCallback": ".callbacks",
    "CycleError": ".errors", "DependencyError": ".errors", "ExecutionError": ".errors",
    "EngineShutDown": ".errors",
    "GilfreeError": ".errors", "HyperNodesError": ".errors", "SerializationError": ".errors",
    "DiskCache": ".cache", "DualNode": ".batch", "Pipeline": ".pipeline",
    "PipelineNode": ".nested", "ProgressCallback": ".progress",
    # Every engine, as in gilfree.engines (each module still loads on first use).
    "AsyncEngine": ".engines", "DaftEngine": ".engines", "DaskEngine": ".engines",
    "Engine": ".engines",
    "ProcessEngine": ".engines", "SeqEngine": ".engines", "ThreadEngine": ".engines",
    # HyperNodes' other top-level names: its node protocol and its drawing API.
    "HyperNode": ".hypernode", "visualize": ".visualization",
    "DESIGN_STYLES": ".viz_themes", "GraphvizTheme": ".viz_themes",
}

__all__ = sorted([*_PUBLIC, "Node", "node", "stateful"], key=str.lower)

if TYPE_CHECKING:
    from .batch import DualNode
    from .cache import DiskCache
    from .callbacks import CallbackContext, PipelineCallback
    from .engines import (AsyncEngine, DaftEngine, DaskEngine, Engine, ProcessEngine,
                          SeqEngine, ThreadEngine)
    from .errors import (CycleError, DependencyError, EngineShutDown, ExecutionError, GilfreeError,
                         HyperNodesError, SerializationError)
    from .hypernode import HyperNode
    from .nested import PipelineNode
    from .pipeline import Pipeline
    from .progress import ProgressCallback
    from .visualization import visualize
    from .viz_themes import DESIGN_STYLES, GraphvizTheme

__getattr__, __dir__ = lazy_names(__name__, globals(), _PUBLIC, __all__)
