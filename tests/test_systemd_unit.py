"""The shipped systemd unit: filled in by `edge-agent systemd-unit`, checked by systemd."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.service.systemd import render_unit, unit_template

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def _directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_the_cli_prints_the_unit_filled_in() -> None:
    done = _cli(
        "systemd-unit", "--user", "agent", "--config", "/etc/el/a.toml", "--executable", "/bin/true"
    )
    assert done.returncode == 0, done.stderr
    unit = _directives(done.stdout)
    assert unit["ExecStart"] == ["/bin/true run --config /etc/el/a.toml"]
    assert unit["User"] == ["agent"]
    assert "@" not in done.stdout.replace("%S", "")  # no placeholder left


def test_the_unit_sets_notify_watchdog_restart_and_hardening() -> None:
    unit = _directives(render_unit(executable="/bin/true"))
    assert unit["Type"] == ["notify"]
    assert unit["WatchdogSec"] == ["30s"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["User"] == ["edgeloop"]
    assert unit["StateDirectory"] == ["edgeloop"]
    assert unit["StateDirectoryMode"] == ["0700"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ProtectHome"] == ["yes"]
    assert unit["PrivateTmp"] == ["yes"]
    assert "DynamicUser" not in unit
    # accelerators (/dev/apex_0, /dev/nvidia*) must stay reachable
    assert "PrivateDevices" not in unit
    assert unit.get("DevicePolicy", ["auto"]) == ["auto"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user": "root"}, "--user 'root': expected a non-root"),
        ({"user": "Bad User"}, "--user 'Bad User'"),
        ({"config": "/etc/my agent.toml"}, "--config '/etc/my agent.toml': expected a path"),
        ({"executable": "/opt/$x/edge-agent"}, "--executable"),
    ],
)
def test_values_that_would_break_the_unit_are_refused(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("$", r"\$")):
        render_unit(**{"executable": "/bin/true", **kwargs})


def test_a_bad_user_is_one_line_on_stderr() -> None:
    done = _cli("systemd-unit", "--user", "root")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "expected a non-root" in done.stderr
    assert done.stdout == ""


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")
def test_the_printed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    done = _cli(
        "systemd-unit", "--config", str(tmp_path / "agent.toml"), "--executable", sys.executable
    )
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "edge-agent.service"
    unit.write_text(done.stdout)
    verify = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    # Unknown keys and bad values are warnings with exit status 0: none may name our unit.
    assert unit.name not in verify.stderr, verify.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo in a key is reported."""
    unit = tmp_path / "edge-agent.service"
    unit.write_text(render_unit(executable=sys.executable).replace("Type=notify", "Typ=notify"))
    verify = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert unit.name in verify.stderr


def test_the_template_ships_as_package_data() -> None:
    template = unit_template()
    assert "@USER@" in template and "@EXEC@" in template and "@CONFIG@" in template
