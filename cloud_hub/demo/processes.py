"""The demo's child processes: each one logs to a file, and :class:`Children` stops them all.

Children stay in the demo's process group, so a Ctrl-C in the terminal reaches them too
and each stops itself (the hub and the agent treat SIGINT as SIGTERM); :meth:`Children.stop`
then waits for them, newest first, with SIGKILL for any that will not go.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from .errors import DemoFailed

STOP_TIMEOUT_S = 15.0  # SIGTERM to exit, before SIGKILL (the hub takes up to about 10 s)
COMMAND_TIMEOUT_S = 120.0  # a one-shot command (cloud-hub fleet create, edge-agent enroll)
LOG_TAIL_CHARS = 2000
POLL_S = 0.1
# Settings from outside that would point our children at another hub, state dir or systemd.
_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "EDGELOOP_STATE_DIR")
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # holds cloud_hub/ and edge_agent/


def child_env() -> dict[str, str]:
    """Our environment without outside hub settings, able to import this very source."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("EDGELOOP_HUB_") and key not in _INHERITED
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SOURCE_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A running process whose stdout and stderr go to ``log_path``."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.killed = False  # it had to be killed: SIGTERM did not stop it in time
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def failure(self, what: str) -> DemoFailed:
        """An error saying ``what`` went wrong, with the tail of this process's log."""
        state = "still running" if self.alive() else f"exit status {self.popen.returncode}"
        tail = self.log()[-LOG_TAIL_CHARS:].rstrip() or "(empty)"
        return DemoFailed(f"{what} ({self.name}: {state}; log {self.log_path}):\n{tail}")

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` (multiline) in the log, once it appears."""
        compiled = re.compile(pattern, re.MULTILINE)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            match = compiled.search(self.log())
            if match:
                found.append(match)
            return match is not None

        self.wait(seen, timeout, f"a line matching {pattern!r}")
        return found[0]

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` while this process runs; DemoFailed if it exits or time is up."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if not self.alive():
                raise self.failure(f"{self.name} exited while the demo waited for {what}")
            if time.monotonic() > deadline:
                raise self.failure(f"no {what} from {self.name} within {timeout:.0f} s")
            time.sleep(POLL_S)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; the exit status (negative: a signal)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        self.killed = True
        self.popen.kill()
        return self.popen.wait(STOP_TIMEOUT_S)


class Children:
    """Every process the demo starts, with their logs in ``folder``.

    Leaving the ``with`` block stops those still running, newest first, then runs the
    actions given to :meth:`on_stop`; :attr:`problems` then lists any that did not exit 0.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.env = child_env()
        self.started: list[Child] = []
        self.problems: list[str] = []
        self._on_stop: list[Callable[[], object]] = []

    def start(self, name: str, argv: Sequence[str], **env: str) -> Child:
        child = Child(name, argv, {**self.env, **env}, self.folder / f"{name}.log")
        self.started.append(child)
        return child

    def on_stop(self, action: Callable[[], object]) -> None:
        """Run ``action`` once every child has stopped (close what they talk to)."""
        self._on_stop.append(action)

    def run(self, argv: Sequence[str], what: str) -> str:
        """Run a one-shot command to the end; its stdout, or DemoFailed saying ``what`` failed."""
        try:
            done = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self.env,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DemoFailed(f"{what}: no answer within {COMMAND_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            raise DemoFailed(
                f"{what} failed (exit status {done.returncode}): {done.stderr.strip()}"
            )
        return done.stdout

    def stop(self) -> None:
        """Stop every child, newest first; one print per child."""
        while self.started:
            child = self.started.pop()
            was_alive = child.alive()
            try:
                status = child.stop()
            except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
                status = child.kill()
            if status == 0:
                print(f"  stopped {child.name}", flush=True)
                continue
            if child.killed:
                how = "killed: it did not stop on SIGTERM"
            elif was_alive:
                how = f"exit status {status} after SIGTERM"
            else:
                how = f"it had already exited with status {status}"
            problem = f"{child.name}: {how} (log {child.log_path})"
            print(f"  {problem}", flush=True)
            self.problems.append(problem)
        while self._on_stop:
            self._on_stop.pop()()

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.started:
            print("stopping the demo's processes...", flush=True)
        self.stop()
