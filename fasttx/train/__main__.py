"""``python -m fasttx.train``: the same as the ``fasttx-train`` command."""

import sys

from fasttx.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
