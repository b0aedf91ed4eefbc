"""The ``cloud-hub`` operator commands, run as an operator runs them: real processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import hub_db
import pytest

from cloud_hub.db import head_revision
from cloud_hub.db.models import TelemetryRaw
from cloud_hub.registry import Registry
from cloud_hub.settings import load_settings

TOKEN = re.compile(r"elt_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


def hub(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_HUB_")}
    return subprocess.run(
        [sys.executable, "-m", "cloud_hub.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=cwd,
        env={**clean, "PYTHONWARNINGS": "ignore", **(env or {})},
    )


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    done = hub(*args, env=env)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "hub"


@pytest.fixture(scope="module")
def hub_with_a_fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory whose hub has one fleet, "lab"; tests must leave it as it is."""
    data_dir = tmp_path_factory.mktemp("hub-with-a-fleet")
    with Registry.open(load_settings(data_dir=data_dir)) as registry:
        registry.create_fleet("lab")
    return data_dir


def _enroll(data_dir: Path, token: str, hostname: str) -> str:
    """What the gRPC enrollment service does for a device, done in-process."""
    with Registry.open(load_settings(data_dir=data_dir)) as registry:
        enrolled = registry.redeem_enrollment_token(
            token, public_key_pem=None, hostname=hostname, profile="raspberry-pi-5"
        )
    return enrolled.device.id


def test_fleets_tokens_and_devices_from_the_command_line(data_dir: Path) -> None:
    d = ("--data-dir", str(data_dir))
    assert ok(*d, "fleet", "create", "lab").strip() == "created fleet lab"
    assert "no devices enrolled yet" in ok(*d, "devices")
    created = hub(*d, "enroll-token", "create", "--fleet", "lab", "--ttl", "30m", "--uses", "3")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert TOKEN.fullmatch(token), created.stdout  # alone on stdout, for $(...)
    assert "shown only now" in created.stderr and "3 use(s)" in created.stderr
    (listed,) = json.loads(ok(*d, "enroll-token", "list", "--json"))
    assert (listed["fleet"], listed["state"], listed["uses_allowed"]) == ("lab", "active", 3)
    assert token not in json.dumps(listed)

    first, second = _enroll(data_dir, token, "pi-17"), _enroll(data_dir, token, "pi-18")
    table = ok(*d, "devices")
    assert table.splitlines()[0].split()[:5] == ["ID", "FLEET", "HOSTNAME", "PROFILE", "STATUS"]
    assert first in table and second in table and "unknown" in table
    assert "2/3" in ok(*d, "enroll-token", "list")
    assert "lab    2" in ok(*d, "fleet", "list")

    shown = ok(*d, "device", "show", first)
    assert re.search(r"hostname:\s+pi-17", shown) and re.search(r"revoked:\s+-", shown)
    assert json.loads(ok(*d, "device", "show", first, "--json"))["fleet"] == "lab"

    assert ok(*d, "device", "revoke", first).startswith(f"revoked device {first} (pi-17) at ")
    revoked = json.loads(ok(*d, "devices", "--status", "revoked", "--json"))
    assert [r["id"] for r in revoked] == [first]
    assert [r["id"] for r in json.loads(ok(*d, "devices", "--fleet", "lab", "--json"))] == [
        first,
        second,
    ]
    assert "no devices match" in ok(*d, "devices", "--profile", "jetson-orin-nano")

    ok(*d, "enroll-token", "revoke", listed["id"])
    assert "revoked" in ok(*d, "enroll-token", "list")

    operator = ok(*d, "operator-token", "create", "ci").strip()
    assert re.fullmatch(r"eop_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", operator)
    with Registry.open(load_settings(data_dir=data_dir)) as registry:
        assert registry.authenticate_operator(operator).name == "ci"
    assert "ci" in ok(*d, "operator-token", "list")


def test_model_register_stores_each_artifact_once(data_dir: Path, reference_dir: Path) -> None:
    d = ("--data-dir", str(data_dir))
    onnx = reference_dir / "digits-edge" / "digits-edge-int8.onnx"
    tflite = reference_dir / "digits-edge" / "digits-edge-int8.tflite"
    out = ok(
        *d,
        "model",
        "register",
        "digits-edge",
        "--version",
        "1",
        "--artifact",
        str(onnx),
        "--format",
        "onnx-int8",
    )
    assert out.startswith("registered digits-edge 1 (onnx-int8): sha256 ")
    ok(
        *d,
        "model",
        "register",
        "digits-edge",
        "--version",
        "1",
        "--artifact",
        str(tflite),
        "--format",
        "tflite-int8",
    )
    ok(
        *d,
        "model",
        "register",
        "digits-edge",
        "--version",
        "2",
        "--artifact",
        str(onnx),
        "--format",
        "onnx-int8",
        "--no-card",
    )
    stored = [p for p in (data_dir / "artifacts" / "sha256").rglob("*") if p.is_file()]
    assert sorted(p.read_bytes() for p in stored) == sorted(
        [onnx.read_bytes(), tflite.read_bytes()]
    )
    versions = json.loads(ok(*d, "model", "list", "--json"))
    assert [(v["version"], v["format"]) for v in versions] == [
        ("1", "onnx-int8"),
        ("1", "tflite-int8"),
        ("2", "onnx-int8"),
    ]
    card = versions[0]["card"]
    assert card["sha256"] == versions[0]["sha256"] and card["inputs"][0]["name"] == "image"
    assert versions[2]["card"] is None
    table = ok(*d, "model", "list")
    accuracy = f"{card['metrics']['heldout_accuracy']:.3f}"
    assert "ACCURACY" in table and accuracy in table
    # A card that belongs to other bytes is refused.
    wrong = data_dir.parent / "wrong.card.json"
    wrong.write_text((onnx.parent / (tflite.name + ".card.json")).read_text())
    refused = hub(
        *d,
        "model",
        "register",
        "digits-edge",
        "--version",
        "3",
        "--artifact",
        str(onnx),
        "--format",
        "onnx-int8",
        "--card",
        str(wrong),
    )
    assert refused.returncode == 1
    assert "the model card is for sha256" in refused.stderr


def test_telemetry_tail_shows_the_latest_messages(data_dir: Path) -> None:
    d = ("--data-dir", str(data_dir))
    ok(*d, "fleet", "create", "lab")
    token = ok(*d, "enroll-token", "create", "--fleet", "lab").strip()
    device = _enroll(data_dir, token, "pi-17")
    assert f"no telemetry from {device} yet" in ok(*d, "telemetry", "tail", device)
    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    with (
        Registry.open(load_settings(data_dir=data_dir)) as registry,
        registry.db.transaction() as s,
    ):
        for seq in range(1, 6):
            at = start + timedelta(seconds=10 * seq)
            payload = {
                "seq": seq,
                "requests": 10 * seq,
                "errors": 0,
                "latency_ms": {"p50": 1.5, "p95": 3.25, "p99": 7.0},
                "system": {"cpu_pct": 12.5},
                "model": {"name": "digits-edge", "version": "1"},
            }
            s.add(
                TelemetryRaw(
                    device_id=device,
                    boot_id="0123456789ab",
                    seq=seq,
                    ts=at,
                    received_at=at,
                    payload=payload,
                )
            )
    records = json.loads(ok(*d, "telemetry", "tail", device, "--limit", "2", "--json"))
    assert [r["seq"] for r in records] == [4, 5]
    table = ok(*d, "telemetry", "tail", device, "--limit", "3").splitlines()
    assert table[0].split()[:3] == ["TIME", "BOOT", "SEQ"] and len(table) == 4
    assert "digits-edge@1" in table[-1] and "3.2" in table[-1] and "50" in table[-1]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("fleet", "create", "lab"), {}, "fleet 'lab' already exists"),
        (("device", "show", "dev-nope"), {}, "device 'dev-nope' does not exist"),
        (("device", "revoke", "dev-nope"), {}, "device 'dev-nope' does not exist"),
        (("telemetry", "tail", "dev-nope"), {}, "device 'dev-nope' does not exist"),
        (("enroll-token", "create", "--fleet", "ghost"), {}, "fleet 'ghost' does not exist"),
        (("enroll-token", "create", "--fleet", "lab", "--ttl", "soon"), {}, "not a duration"),
        (("enroll-token", "create", "--fleet", "lab", "--uses", "0"), {}, "uses = 0"),
        (("enroll-token", "revoke", "abc"), {}, "enrollment token 'abc' does not exist"),
        (("devices", "--status", "asleep"), {}, "device status 'asleep' is not one of"),
        (
            (
                "model",
                "register",
                "m",
                "--version",
                "1",
                "--artifact",
                "missing.onnx",
                "--format",
                "onnx-int8",
            ),
            {},
            "artifact missing.onnx does not exist",
        ),
        (
            ("fleet", "list"),
            {"EDGELOOP_HUB_HTTP_PORT": "abc"},
            "http_port = 'abc' (from EDGELOOP_HUB_HTTP_PORT)",
        ),
        (
            ("--config", "missing.toml", "fleet", "list"),
            {},
            "config file missing.toml does not exist",
        ),
        (
            ("--database-url", "postgresql://postgres:pw@127.0.0.1:1/x", "fleet", "list"),
            {},
            "cannot reach the database postgresql+psycopg://postgres:***@127.0.0.1:1/x",
        ),
        (("--database-url", "mysql://x", "fleet", "list"), {}, "a SQLite or PostgreSQL URL"),
    ],
)
def test_errors_are_one_line_and_a_non_zero_exit(
    hub_with_a_fleet: Path, tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    done = hub("--data-dir", str(hub_with_a_fleet), *args, env=env, cwd=tmp_path)
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("cloud-hub: error: ")
    assert message in done.stderr


def test_db_upgrade_and_commands_against_postgresql(tmp_path: Path) -> None:
    with hub_db.postgres_database("cli") as url:
        d = ("--database-url", url, "--data-dir", str(tmp_path / "hub"))
        assert "needs 'cloud-hub db upgrade'" in ok(*d, "db", "current")
        head = head_revision()
        assert f"upgraded from empty to {head}" in ok(*d, "db", "upgrade")
        assert f"already at revision {head}" in ok(*d, "db", "upgrade")
        assert json.loads(ok(*d, "db", "current", "--json"))["current"] == head
        ok(*d, "fleet", "create", "pg-fleet")
        assert [f["name"] for f in json.loads(ok(*d, "fleet", "list", "--json"))] == ["pg-fleet"]
        assert not (tmp_path / "hub" / "hub.db").exists()


def test_settings_come_from_a_toml_file_with_paths_relative_to_it(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "hub.toml"
    config.parent.mkdir()
    config.write_text('data_dir = "state"\nhttp_port = 9000\n')
    ok("--config", str(config), "fleet", "create", "from-file")
    assert (tmp_path / "conf" / "state" / "hub.db").is_file()
    # A flag beats the environment, which beats the file.
    other = tmp_path / "flag"
    ok(
        "--config",
        str(config),
        "--data-dir",
        str(other),
        "fleet",
        "create",
        "x",
        env={"EDGELOOP_HUB_DATA_DIR": str(tmp_path / "env")},
    )
    assert (other / "hub.db").is_file() and not (tmp_path / "env").exists()
    config.write_text('data_dir = "state"\nhttp_prot = 9000\n')
    done = hub("--config", str(config), "fleet", "list")
    assert done.returncode == 1 and "unknown key(s) http_prot" in done.stderr
