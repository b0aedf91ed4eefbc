"""Logging for the daemon: one line per record on stderr, journald-friendly.

Under systemd (``JOURNAL_STREAM`` names our stderr) lines carry no timestamp — the journal
adds its own — and start with a ``<N>`` syslog priority, which journald turns into the
record's priority (``SyslogLevelPrefix=yes`` is systemd's default). In a terminal lines
carry a timestamp and the level name instead.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

__all__ = ["LEVELS", "configure_logging", "logs_to_journal"]

LEVELS = ("debug", "info", "warning", "error")
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6 if record.levelno > logging.DEBUG else 7)
        text = super().format(record)
        # Continuation lines (tracebacks) keep the priority, so journald files them alike.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def logs_to_journal(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr) is the journal stream systemd connected us to."""
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not device or not inode:
        return False
    try:
        stat = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return f"{stat.st_dev}:{stat.st_ino}" == f"{device}:{inode}"


def configure_logging(
    level: str = "info",
    *,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Send the ``edge_agent`` loggers' records at ``level`` and above to stderr."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    if logs_to_journal(environ, out):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and up
    logging.getLogger("edge_agent").setLevel(level.upper())
