"""The hub's operator commands, one module per noun, registered by :func:`add_commands`.

Every command takes ``--config``, ``--data-dir`` and ``--database-url`` (or the
``EDGELOOP_HUB_*`` variables), prints tables for people and ``--json`` for scripts, and
fails with one line and a non-zero exit. An empty database gets the schema on first use;
an older one asks for ``cloud-hub db upgrade``.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import (
    broker,
    db,
    devices,
    fleets,
    hard_examples,
    models,
    ota,
    rollouts,
    telemetry,
    tokens,
)
from ._common import add_hub_options, open_registry, settings_from

__all__ = ["add_commands", "add_hub_options", "open_registry", "settings_from"]


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    for module in (
        db,
        fleets,
        tokens,
        devices,
        models,
        ota,
        rollouts,
        telemetry,
        hard_examples,
        broker,
    ):
        module.add_parser(commands, common)
