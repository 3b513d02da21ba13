"""``gilfree.hashing``, kept as a public path: the module is ``gilfree.model.hashing``."""

import sys

from .model import hashing as _module

sys.modules[__name__] = _module
