"""``gilfree.hypernode``, kept as a public path: the module is ``gilfree.model.hypernode``."""

import sys

from .model import hypernode as _module

sys.modules[__name__] = _module
