"""Engines: where and how a pipeline's nodes run.  Swap them without changing code."""

from .aio import AsyncEngine
from .base import Engine
from .seq import SeqEngine
from .threads import ThreadEngine

__all__ = ["AsyncEngine", "Engine", "SeqEngine", "ThreadEngine"]
