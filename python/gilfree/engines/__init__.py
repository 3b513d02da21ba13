"""Engines: where and how a pipeline's nodes run.  Swap them without changing code.

Each engine's module is imported on first use (``from gilfree.engines import
ThreadEngine`` imports threads.py only): ``import gilfree`` stays cheap, which every
worker process and notebook start pays.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .base import Engine
from .seq import SeqEngine

if TYPE_CHECKING:
    from .aio import AsyncEngine
    from .dask_engine import DaskEngine
    from .processes import ProcessEngine
    from .threads import ThreadEngine

_LAZY = {"AsyncEngine": ".aio", "DaskEngine": ".dask_engine", "ProcessEngine": ".processes",
         "ThreadEngine": ".threads"}

__all__ = ["AsyncEngine", "DaskEngine", "Engine", "ProcessEngine", "SeqEngine", "ThreadEngine"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
