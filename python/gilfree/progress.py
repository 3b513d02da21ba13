"""``gilfree.progress``, kept as a public path: the module is ``gilfree.run.progress``."""

import sys

from .run import progress as _module

sys.modules[__name__] = _module
