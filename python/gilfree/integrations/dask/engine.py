"""HyperNodes' ``hypernodes.integrations.dask.engine`` path (needs dask installed)."""

from ...engines.dask_engine import DaskEngine

__all__ = ["DaskEngine"]
