"""``gilfree.pipeline``, kept as a public path: the module is ``gilfree.model.pipeline``."""

import sys

from .model import pipeline as _module

sys.modules[__name__] = _module
