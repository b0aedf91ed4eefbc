"""Running the agent as a service: the daemon, systemd's notify protocol and unit file.

``edge-agent run --config agent.toml`` runs :func:`serve`; ``edge-agent systemd-unit``
prints the unit from :func:`render_unit`. Importing this package is cheap: the engine,
the HTTP server and telemetry are imported when the daemon starts them.
"""

from __future__ import annotations

from .notify import Notifier, watchdog_interval
from .state import prepare_state_dir
from .systemd import render_unit

__all__ = ["Notifier", "prepare_state_dir", "render_unit", "serve", "watchdog_interval"]


def __getattr__(name: str) -> object:
    if name == "serve":  # lazily: the daemon imports the engine (numpy, runtimes)
        from .daemon import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
