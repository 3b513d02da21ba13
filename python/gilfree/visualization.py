"""``gilfree.visualization``, kept as a public path: the module is ``gilfree.viz.visualization``."""

import sys

from .viz import visualization as _module

sys.modules[__name__] = _module
