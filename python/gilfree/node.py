"""``gilfree.node``, kept as a public path: the module is ``gilfree.model.node``."""

import sys

from .model import node as _module

sys.modules[__name__] = _module
