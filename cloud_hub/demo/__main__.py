"""``python -m cloud_hub.demo``: what ``scripts/demo`` runs."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
