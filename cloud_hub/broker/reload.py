"""Telling Mosquitto to re-read its password and ACL files.

Two ways, as configured: run ``broker_reload_command`` (for a broker the hub may not
signal: ``sudo systemctl reload mosquitto``, ``docker kill -s HUP mqtt``, an ``ssh`` to
another host), else send SIGHUP to the pid in ``broker_pid_file`` (Mosquitto's own
``pid_file``). With neither, the files are written and a warning says a reload is needed.

Before signalling, the pid is checked to be a mosquitto process (``/proc/<pid>/comm``),
so a stale pid file never makes the hub send SIGHUP to an unrelated process.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from pathlib import Path

from ..errors import Unavailable

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 30.0


class BrokerReloader:
    """Makes the broker reload its files; :meth:`reload` says what it did."""

    def __init__(self, *, pid_file: Path | None = None, command: str | None = None) -> None:
        self.pid_file = pid_file
        self.command = command

    @property
    def configured(self) -> bool:
        return self.command is not None or self.pid_file is not None

    def reload(self) -> str:
        """Reload the broker; a line saying how. :class:`Unavailable` when it fails."""
        if self.command is not None:
            return self._run_command(self.command)
        if self.pid_file is not None:
            return self._signal(self.pid_file)
        message = (
            "broker files rewritten, but neither broker_pid_file nor broker_reload_command "
            "is set: reload Mosquitto (SIGHUP) for the change to take effect"
        )
        log.warning(message)
        return message

    def _run_command(self, command: str) -> str:
        try:
            done = subprocess.run(
                shlex.split(command),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"broker_reload_command {command!r} failed to run: {exc}") from exc
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip().splitlines()
            detail = f": {output[-1]}" if output else ""
            raise Unavailable(
                f"broker_reload_command {command!r} exited with {done.returncode}{detail}"
            )
        return f"ran {command!r}"

    def _signal(self, pid_file: Path) -> str:
        pid = _read_pid(pid_file)
        comm = Path(f"/proc/{pid}/comm")
        if comm.exists():
            try:
                name = comm.read_text().strip()
            except OSError:  # exited between the two calls
                name = ""
            if "mosquitto" not in name:
                raise Unavailable(
                    f"broker_pid_file {pid_file} names pid {pid}, which is "
                    f"{name or 'not running'}, not mosquitto: is the pid file stale?"
                )
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            raise Unavailable(
                f"broker_pid_file {pid_file} names pid {pid}, which is not running"
            ) from None
        except PermissionError:
            raise Unavailable(
                f"not allowed to signal the broker (pid {pid} from {pid_file}): run the hub "
                "as the broker's user, or set broker_reload_command"
            ) from None
        return f"sent SIGHUP to mosquitto (pid {pid})"


def _read_pid(pid_file: Path) -> int:
    try:
        text = pid_file.read_text().strip()
    except OSError as exc:
        raise Unavailable(
            f"cannot read broker_pid_file {pid_file} ({exc.strerror or exc}): is Mosquitto "
            "running with pid_file set to it?"
        ) from exc
    if not text.isdigit() or int(text) <= 1:
        raise Unavailable(f"broker_pid_file {pid_file} does not hold a pid: {text[:40]!r}")
    return int(text)
