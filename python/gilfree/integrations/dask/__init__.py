"""HyperNodes' import path for DaskEngine (needs dask installed)."""

from ...engines.dask_engine import DaskEngine

__all__ = ["DaskEngine"]
