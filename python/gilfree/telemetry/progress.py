"""``from gilfree.telemetry.progress import ProgressCallback``, as in HyperNodes; the
bars themselves live in ``gilfree.progress``."""

from ..run.progress import ProgressCallback

__all__ = ["ProgressCallback"]
