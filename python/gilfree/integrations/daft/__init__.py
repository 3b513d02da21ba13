"""HyperNodes' import path for DaftEngine (gilfree's runs without daft)."""

from ...engines.daft_engine import DaftEngine

__all__ = ["DaftEngine"]
