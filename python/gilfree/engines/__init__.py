"""Engines: where and how a pipeline's nodes run.  Swap them without changing code."""

from .aio import AsyncEngine
from .base import Engine
from .processes import ProcessEngine
from .dask_engine import DaskEngine  # imports dask only when an engine is created
from .seq import SeqEngine
from .threads import ThreadEngine

__all__ = ["AsyncEngine", "DaskEngine", "Engine", "ProcessEngine", "SeqEngine", "ThreadEngine"]
