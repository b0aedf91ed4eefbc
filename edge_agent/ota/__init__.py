"""Over-the-air model updates on the device: the hub client, TUF trust and the A/B install.

See docs/ota.md for how the parts fit.
"""

from __future__ import annotations

from .trust import TrustedUpdater, VerifiedTarget, pin_root, verify_file

__all__ = [
    "TrustedUpdater",
    "VerifiedTarget",
    "pin_root",
    "verify_file",
]
