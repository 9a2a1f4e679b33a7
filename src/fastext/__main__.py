"""``python -m fastext``: the same as the ``fastext`` command."""

from __future__ import annotations

import sys

from fastext.cli import main

if __name__ == "__main__":
    sys.exit(main())
