"""HyperNodes' ``hypernodes.integrations.daft.engine`` path."""

from ...engines.daft_engine import DaftEngine

__all__ = ["DaftEngine"]
