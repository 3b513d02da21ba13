"""``python -m gilfree demo``."""

import sys

from .demo import main

USAGE = "usage: python -m gilfree demo [--items N]"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or argv[0] != "demo":
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(argv[1:]))
