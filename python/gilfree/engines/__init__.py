"""Engines: where and how a pipeline's nodes run.  Swap them without changing code."""

from .base import Engine
from .seq import SeqEngine

__all__ = ["Engine", "SeqEngine"]
