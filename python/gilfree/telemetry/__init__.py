"""Observability at HyperNodes' import path: ``from gilfree.telemetry import ...``.

- ``ProgressCallback``: live progress bars (the one in ``gilfree.progress``).
- ``TelemetryCallback``: a span per pipeline, node and map (sent to Logfire when it is
  installed), with ``get_waterfall_chart()`` (needs plotly).

Nothing here imports tqdm, logfire or plotly until a callback uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

_PUBLIC = {
    "ProgressCallback": "..run.progress",
    "TelemetryCallback": ".tracing",
    "create_waterfall_chart": ".waterfall",
    "is_jupyter": ".environment",
}

__all__ = ["ProgressCallback", "TelemetryCallback"]

if TYPE_CHECKING:
    from ..run.progress import ProgressCallback
    from .environment import is_jupyter
    from .tracing import TelemetryCallback
    from .waterfall import create_waterfall_chart

__getattr__, __dir__ = lazy_names(__name__, globals(), _PUBLIC, __all__)
