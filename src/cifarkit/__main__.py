"""``python -m cifarkit``: the same command as ``cifarkit``."""

from __future__ import annotations

import sys

from cifarkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
