"""Why the demo stopped short.

::

    HubError
    └── DemoError
        ├── DemoFailed    a step went wrong (the message says which, and where its log is)
        └── DemoSkipped   step 2 cannot run here (the message says what to install)
"""

from __future__ import annotations

from ..errors import HubError


class DemoError(HubError):
    """Root of the demo's errors."""


class DemoFailed(DemoError):
    """A step of the demo failed: the demo exits non-zero."""


class DemoSkipped(DemoError):
    """Step 2 needs something this machine lacks: the demo says what and skips it."""
