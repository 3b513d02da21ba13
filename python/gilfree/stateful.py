"""``gilfree.stateful``, kept as a public path: the module is ``gilfree.model.stateful``."""

import sys

from .model import stateful as _module

sys.modules[__name__] = _module
