"""The systemd unit that ships with the agent, filled in for one install.

The template is package data (``edge_agent/service/edge-agent.service``) with three
placeholders: ``@USER@`` (the service user), ``@CONFIG@`` (the config file) and ``@EXEC@``
(the ``edge-agent`` executable). ``edge-agent systemd-unit`` prints it filled in.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import shutil
import sys
from pathlib import Path

from ..errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_USER",
    "UNIT_NAME",
    "default_executable",
    "render_unit",
    "unit_template",
]

UNIT_NAME = "edge-agent.service"
DEFAULT_USER = "edgeloop"
DEFAULT_CONFIG = "/etc/edgeloop/agent.toml"
# POSIX portable user names, as useradd accepts them by default.
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}\Z")
_UNSAFE = re.compile(r"[\s\"'\\$%;]")


def unit_template() -> str:
    """The unit file as shipped, placeholders unfilled."""
    return importlib.resources.files(__package__).joinpath(UNIT_NAME).read_text(encoding="utf-8")


def default_executable() -> str:
    """The ``edge-agent`` beside this Python (a venv's bin/), else on PATH, else /usr/bin."""
    beside = Path(sys.executable).parent / "edge-agent"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.absolute())
    found = shutil.which("edge-agent")
    return str(Path(found).absolute()) if found else "/usr/bin/edge-agent"


def render_unit(
    *,
    user: str = DEFAULT_USER,
    config: str | os.PathLike[str] = DEFAULT_CONFIG,
    executable: str | os.PathLike[str] | None = None,
) -> str:
    """The unit text for ``user`` running ``executable run --config config``."""
    if not _USER_RE.match(user) or user == "root":
        raise ConfigError(
            f"--user {user!r}: expected a non-root system user name "
            "(lower-case letters, digits, '_' and '-', at most 32)"
        )
    exec_path = _absolute("--executable", executable or default_executable())
    config_path = _absolute("--config", config)
    return (
        unit_template()
        .replace("@USER@", user)
        .replace("@CONFIG@", config_path)
        .replace("@EXEC@", exec_path)
    )


def _absolute(option: str, value: str | os.PathLike[str]) -> str:
    """An absolute path that needs no quoting on a unit's ExecStart line."""
    path = Path(value).expanduser().absolute()
    text = str(path)
    if _UNSAFE.search(text):
        raise ConfigError(
            f"{option} {text!r}: expected a path without spaces, quotes, '\\', '$', '%' or ';'"
        )
    return text
