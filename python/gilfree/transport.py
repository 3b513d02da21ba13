"""``gilfree.transport``, kept as a public path: the module is ``gilfree.remote.transport``."""

import sys

from .remote import transport as _module

sys.modules[__name__] = _module
