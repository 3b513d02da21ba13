"""Engines: where and how a pipeline's nodes run.  Swap them without changing code.

Each engine's module is imported on first use (``from gilfree.engines import
ThreadEngine`` imports threads.py only): ``import gilfree`` stays cheap, which every
worker process and notebook start pays.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_names
from .base import Engine
from .seq import SeqEngine

if TYPE_CHECKING:
    from .aio import AsyncEngine
    from .auto import AutoEngine
    from .daft_engine import DaftEngine
    from .dask_engine import DaskEngine
    from .processes import ProcessEngine
    from .threads import ThreadEngine

_LAZY = {"AsyncEngine": ".aio", "AutoEngine": ".auto", "DaftEngine": ".daft_engine",
         "DaskEngine": ".dask_engine", "ProcessEngine": ".processes", "ThreadEngine": ".threads"}

__all__ = ["AsyncEngine", "AutoEngine", "DaftEngine", "DaskEngine", "Engine", "ProcessEngine",
           "SeqEngine", "ThreadEngine"]

__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY, __all__)
