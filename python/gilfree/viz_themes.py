"""``gilfree.viz_themes``, kept as a public path: the module is ``gilfree.viz.themes``."""

import sys

from .viz import themes as _module

sys.modules[__name__] = _module
