"""gilfree: pipelines of plain Python functions, run fast on swappable engines.

Code written for HyperNodes runs unchanged apart from the import line.

The public names are imported on first use (PEP 562): ``import gilfree`` itself is
nearly free, and a worker process loads only what its pipeline needs.  Measured on the
2-core VM, ``import gilfree.remote.process_worker`` went from 86 ms to ~35 ms, which every
ProcessEngine's first map waits for.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_names

# Eager on purpose: these functions share their names with their modules, and once the
# submodule ``gilfree.node`` is imported the package attribute ``node`` would be the
# module, not the decorator. So the public module paths ``gilfree.node`` and
# ``gilfree.stateful`` (aliases of gilfree.model's) are loaded first, then the names are
# bound to the functions. Every pipeline needs them anyway.
from . import node as _node_module, stateful as _stateful_module  # noqa: F401
from .model.node import Node, node
from .model.stateful import stateful

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "CallbackContext": ".callbacks", "PipelineCallback": ".callbacks",
    "CycleError": ".errors", "DependencyError": ".errors", "ExecutionError": ".errors",
    "EngineShutDown": ".errors",
    "GilfreeError": ".errors", "HyperNodesError": ".errors", "SerializationError": ".errors",
    "DiskCache": ".cache", "DualNode": ".model.batch", "Pipeline": ".model.pipeline",
    "PipelineNode": ".model.nested", "ProgressCallback": ".run.progress",
    # Every engine, as in gilfree.engines (each module still loads on first use).
    "AsyncEngine": ".engines", "AutoEngine": ".engines", "DaftEngine": ".engines", "DaskEngine": ".engines",
    "Engine": ".engines",
    "ProcessEngine": ".engines", "SeqEngine": ".engines", "ThreadEngine": ".engines",
    # HyperNodes' other top-level names: its node protocol and its drawing API.
    "HyperNode": ".model.hypernode", "visualize": ".viz.visualization",
    "DESIGN_STYLES": ".viz.themes", "GraphvizTheme": ".viz.themes",
}

__all__ = sorted([*_PUBLIC, "Node", "node", "stateful"], key=str.lower)

if TYPE_CHECKING:
    from .model.batch import DualNode
    from .cache import DiskCache
    from .callbacks import CallbackContext, PipelineCallback
    from .engines import (AsyncEngine, AutoEngine, DaftEngine, DaskEngine, Engine, ProcessEngine,
                          SeqEngine, ThreadEngine)
    from .errors import (CycleError, DependencyError, EngineShutDown, ExecutionError, GilfreeError,
                         HyperNodesError, SerializationError)
    from .model.hypernode import HyperNode
    from .model.nested import PipelineNode
    from .model.pipeline import Pipeline
    from .run.progress import ProgressCallback
    from .viz.visualization import visualize
    from .viz.themes import DESIGN_STYLES, GraphvizTheme

__getattr__, __dir__ = lazy_names(__name__, globals(), _PUBLIC, __all__)
