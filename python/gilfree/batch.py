"""``gilfree.batch``, kept as a public path: the module is ``gilfree.model.batch``."""

import sys

from .model import batch as _module

sys.modules[__name__] = _module
