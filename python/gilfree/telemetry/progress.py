"""``from gilfree.telemetry.progress import ProgressCallback``, as in HyperNodes; the
bars themselves live in ``gilfree.progress``."""

from ..progress import ProgressCallback

__all__ = ["ProgressCallback"]
