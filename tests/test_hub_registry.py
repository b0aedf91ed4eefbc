"""The registry service on SQLite and PostgreSQL: fleets, tokens, devices, models, telemetry."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hub_db
import pytest

from cloud_hub.db.models import DeviceEvent, TelemetryRaw, TelemetryRollup
from cloud_hub.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from cloud_hub.registry import Enrollment, Registry
from cloud_hub.settings import load_settings

database_url = hub_db.database_url_fixture("registry")
clock = hub_db.clock_fixture()
registry = hub_db.registry_fixture()

PEM = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAexample\n-----END PUBLIC KEY-----\n"


def _enroll(
    registry: Registry, token: str, hostname: str = "pi-17", profile: str = "raspberry-pi-5"
) -> Enrollment:
    return registry.redeem_enrollment_token(
        token,
        public_key_pem=PEM,
        hostname=hostname,
        profile=profile,
        hardware={"cpu": "cortex-a76", "accelerators": ["coral-usb"]},
        agent_version="0.1.0",
    )


# -- fleets --------------------------------------------------------------------------------


def test_fleets_are_unique_named_and_counted(registry: Registry) -> None:
    lab = registry.create_fleet("lab")
    assert lab.name == "lab" and lab.keep_inputs and lab.devices == 0
    registry.create_fleet("field-2", keep_inputs=False)
    with pytest.raises(Conflict, match="fleet 'lab' already exists"):
        registry.create_fleet("lab")
    for bad in ("", "has space", "a/b", "+", "x" * 65):
        with pytest.raises(InvalidRequest, match="not a valid name"):
            registry.create_fleet(bad)
    with pytest.raises(NotFound, match="fleet 'nope' does not exist"):
        registry.fleet("nope")
    token = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=2)
    _enroll(registry, token.token)
    listed = {f.name: f for f in registry.list_fleets()}
    assert listed["lab"].devices == 1 and listed["field-2"].devices == 0
    assert listed["field-2"].keep_inputs is False
    assert registry.fleet("lab").devices == 1


# -- enrollment ----------------------------------------------------------------------------


def test_a_token_enrolls_a_device_with_its_own_credential(
    registry: Registry, clock: hub_db.FakeClock
) -> None:
    registry.create_fleet("lab")
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=10)
    assert issued.token.startswith(f"elt_{issued.info.id}_")
    assert issued.info.expires_at == clock.now + timedelta(hours=1)
    enrolled = _enroll(registry, issued.token)
    device = enrolled.device
    assert device.id.startswith("dev-") and len(device.id) == 16
    assert (device.fleet, device.hostname, device.profile) == ("lab", "pi-17", "raspberry-pi-5")
    assert device.status == "unknown" and device.public_key_pem == PEM
    assert device.hardware["accelerators"] == ["coral-usb"]
    assert registry.authenticate_device(device.id, enrolled.secret) == device
    assert registry.list_enrollment_tokens()[0].uses_count == 1
    second = _enroll(registry, issued.token, hostname="pi-18")
    assert second.device.id != device.id and second.secret != enrolled.secret
    # One device's secret does not open another.
    with pytest.raises(Unauthorized, match="unknown device or wrong credential"):
        registry.authenticate_device(second.device.id, enrolled.secret)
    with pytest.raises(Unauthorized, match="unknown device or wrong credential"):
        registry.authenticate_device("dev-000000000000", enrolled.secret)


def test_an_expired_token_is_refused_with_when(registry: Registry, clock: hub_db.FakeClock) -> None:
    registry.create_fleet("lab")
    issued = registry.create_enrollment_token("lab", ttl=timedelta(minutes=30), uses=5)
    clock.advance(timedelta(minutes=29))
    _enroll(registry, issued.token)
    clock.advance(timedelta(minutes=1))
    with pytest.raises(Forbidden, match=r"expired at 2030-01-01T12:30:00\+00:00"):
        _enroll(registry, issued.token)
    (listed,) = registry.list_enrollment_tokens(fleet="lab")
    assert listed.state(clock.now) == "expired" and listed.uses_count == 1


def test_a_used_up_token_is_refused_with_its_count(registry: Registry) -> None:
    registry.create_fleet("lab")
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=2)
    _enroll(registry, issued.token, hostname="a")
    _enroll(registry, issued.token, hostname="b")
    with pytest.raises(Forbidden, match=r"is used up \(2 of 2 uses\)"):
        _enroll(registry, issued.token, hostname="c")
    assert len(registry.list_devices(fleet="lab")) == 2


def test_a_revoked_token_is_refused(registry: Registry, clock: hub_db.FakeClock) -> None:
    registry.create_fleet("lab")
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=5)
    clock.advance(timedelta(seconds=5))
    revoked = registry.revoke_enrollment_token(issued.info.id)
    assert revoked.revoked_at == clock.now
    clock.advance(timedelta(seconds=5))
    # Revoking again, by the whole token this time, keeps the first time.
    assert registry.revoke_enrollment_token(issued.token).revoked_at == revoked.revoked_at
    with pytest.raises(Forbidden, match=r"was revoked at 2030-01-01T12:00:05\+00:00"):
        _enroll(registry, issued.token)
    with pytest.raises(NotFound, match="enrollment token 'nope' does not exist"):
        registry.revoke_enrollment_token("nope")


def test_unknown_mistyped_and_foreign_tokens_are_unauthorized(registry: Registry) -> None:
    registry.create_fleet("lab")
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=5)
    operator = registry.create_operator_token("ci")
    token_id = issued.info.id
    wrong_secret = f"elt_{token_id}_{'A' * 43}"
    for bad in (
        "",
        "elt_",
        "nonsense",
        f"elt_{token_id}",
        wrong_secret,
        operator.token,
        issued.token[:-1],
        f"elt_000000000000_{issued.token.split('_', 2)[2]}",
    ):
        with pytest.raises(Unauthorized, match="enrollment token is not valid"):
            _enroll(registry, bad)
    assert registry.list_enrollment_tokens()[0].uses_count == 0


def test_a_failed_enrollment_gives_its_use_back(registry: Registry) -> None:
    registry.create_fleet("lab")
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=1)
    with pytest.raises(InvalidRequest, match="hostname is required"):
        _enroll(registry, issued.token, hostname="")
    with pytest.raises(InvalidRequest, match="not a PEM block"):
        registry.redeem_enrollment_token(
            issued.token, public_key_pem="ssh-ed25519 AAA", hostname="x"
        )
    assert registry.list_enrollment_tokens()[0].uses_count == 0
    _enroll(registry, issued.token)


def test_token_rules_are_checked_when_created(registry: Registry) -> None:
    registry.create_fleet("lab")
    with pytest.raises(NotFound, match="fleet 'ghost' does not exist"):
        registry.create_enrollment_token("ghost", ttl=timedelta(hours=1), uses=1)
    with pytest.raises(InvalidRequest, match="ttl"):
        registry.create_enrollment_token("lab", ttl=timedelta(0), uses=1)
    with pytest.raises(InvalidRequest, match="uses = 0"):
        registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=0)


def test_concurrent_redemptions_never_exceed_the_allowed_uses(registry: Registry) -> None:
    registry.create_fleet("lab")
    uses, callers = 5, 16
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=uses)
    barrier = threading.Barrier(callers)
    enrolled: list[str] = []
    refused: list[str] = []
    unexpected: list[BaseException] = []
    lock = threading.Lock()

    def redeem(n: int) -> None:
        try:
            barrier.wait(timeout=60)
            result = _enroll(registry, issued.token, hostname=f"host-{n}")
            with lock:
                enrolled.append(result.device.id)
        except Forbidden as exc:
            with lock:
                refused.append(str(exc))
        except BaseException as exc:
            with lock:
                unexpected.append(exc)

    threads = [threading.Thread(target=redeem, args=(n,), daemon=True) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert unexpected == []
    assert len(enrolled) == uses and len(set(enrolled)) == uses
    assert len(refused) == callers - uses
    assert all(f"used up ({uses} of {uses} uses)" in message for message in refused)
    assert registry.list_enrollment_tokens()[0].uses_count == uses
    assert len(registry.list_devices()) == uses


def test_secrets_are_stored_hashed(registry: Registry, database_url: str) -> None:
    registry.create_fleet("lab")
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=1)
    enrolled = _enroll(registry, issued.token)
    operator = registry.create_operator_token("ci")
    secrets = {
        "enrollment token": issued.token,
        "enrollment secret": issued.token.split("_", 2)[2],
        "device secret": enrolled.secret,
        "operator token": operator.token,
        "operator secret": operator.token.split("_", 2)[2],
    }
    dump = hub_db.dump(registry.db)
    assert issued.info.id in dump and enrolled.device.id in dump  # the dump is real
    assert [name for name, secret in secrets.items() if secret in dump] == []
    if database_url.startswith("sqlite:///"):
        registry.close()
        path = Path(database_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        assert [name for name, s in secrets.items() if s.encode() in raw] == []


# -- devices -------------------------------------------------------------------------------


def test_revoking_a_device_cuts_off_its_credential(
    registry: Registry, clock: hub_db.FakeClock
) -> None:
    registry.create_fleet("lab")
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=2)
    kept, cut = _enroll(registry, issued.token, "kept"), _enroll(registry, issued.token, "cut")
    clock.advance(timedelta(minutes=3))
    revoked = registry.revoke_device(cut.device.id)
    assert revoked.revoked and revoked.revoked_at == clock.now and revoked.status == "offline"
    with pytest.raises(Forbidden, match=rf"device {cut.device.id} was revoked at 2030-01-01T12:03"):
        registry.authenticate_device(cut.device.id, cut.secret)
    # A wrong secret for a revoked device says no more than for any device.
    with pytest.raises(Unauthorized):
        registry.authenticate_device(cut.device.id, kept.secret)
    assert registry.authenticate_device(kept.device.id, kept.secret).id == kept.device.id
    clock.advance(timedelta(minutes=1))
    assert registry.revoke_device(cut.device.id).revoked_at == revoked.revoked_at
    assert [d.id for d in registry.list_devices(revoked=True)] == [cut.device.id]
    assert [d.id for d in registry.list_devices(revoked=False)] == [kept.device.id]
    with pytest.raises(NotFound, match="device 'dev-nope' does not exist"):
        registry.revoke_device("dev-nope")


def test_devices_filter_by_fleet_profile_status_and_model_version(
    registry: Registry, clock: hub_db.FakeClock
) -> None:
    for fleet in ("lab", "field"):
        registry.create_fleet(fleet)
    lab = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=5)
    field = registry.create_enrollment_token("field", ttl=timedelta(hours=1), uses=5)
    a = _enroll(registry, lab.token, "a", profile="jetson-orin-nano").device
    b = _enroll(registry, lab.token, "b", profile="raspberry-pi-5").device
    c = _enroll(registry, field.token, "c", profile="raspberry-pi-5").device
    seen = clock.now + timedelta(seconds=10)
    assert registry.update_device_state(
        a.id,
        status="online",
        seen_at=seen,
        boot_id="boot-1",
        model_name="digits-edge",
        model_version="3",
    )
    assert registry.update_device_state(c.id, status="offline", model_version="2")
    assert not registry.update_device_state("dev-000000000000", status="online")

    def ids(**filters: Any) -> set[str]:
        return {d.id for d in registry.list_devices(**filters)}

    assert ids() == {a.id, b.id, c.id}
    assert ids(fleet="lab") == {a.id, b.id}
    assert ids(profile="raspberry-pi-5") == {b.id, c.id}
    assert ids(status="online") == {a.id}
    assert ids(status="unknown") == {b.id}
    assert ids(model_version="3") == {a.id}
    assert ids(fleet="lab", profile="raspberry-pi-5", status="unknown") == {b.id}
    assert ids(fleet="field", model_version="3") == set()
    with pytest.raises(NotFound, match="fleet 'ghost' does not exist"):
        registry.list_devices(fleet="ghost")
    with pytest.raises(InvalidRequest, match="device status 'asleep' is not one of"):
        registry.list_devices(status="asleep")
    shown = registry.device(a.id)
    assert (shown.status, shown.last_seen_at, shown.boot_id) == ("online", seen, "boot-1")
    assert (shown.model_name, shown.model_version) == ("digits-edge", "3")
    # A late (replayed) report does not move last_seen_at back.
    registry.update_device_state(a.id, seen_at=seen - timedelta(minutes=5))
    assert registry.device(a.id).last_seen_at == seen
    assert json.loads(json.dumps(shown.to_dict()))["last_seen_at"] == seen.isoformat()


# -- operator tokens -----------------------------------------------------------------------


def test_operator_tokens_authenticate_until_revoked(registry: Registry) -> None:
    issued = registry.create_operator_token("ci")
    assert issued.token.startswith(f"eop_{issued.info.id}_")
    assert registry.authenticate_operator(issued.token) == issued.info
    for bad in ("", "Bearer " + issued.token, issued.token + "x", "eop_nothing_here"):
        with pytest.raises(Unauthorized, match="operator token is not valid"):
            registry.authenticate_operator(bad)
    registry.revoke_operator_token(issued.info.id)
    with pytest.raises(Forbidden, match=f"operator token {issued.info.id} was revoked"):
        registry.authenticate_operator(issued.token)
    assert [t.name for t in registry.list_operator_tokens()] == ["ci"]
    with pytest.raises(InvalidRequest, match="operator token name is required"):
        registry.create_operator_token("")


# -- models and artifacts ------------------------------------------------------------------


def _card(path: Path, **extra: object) -> dict[str, object]:
    import hashlib

    data = path.read_bytes()
    return {
        "name": "digits-edge",
        "format": "onnx-int8",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "metrics": {"accuracy": 0.97},
        **extra,
    }


def test_registering_the_same_bytes_twice_stores_them_once(
    registry: Registry, tmp_path: Path
) -> None:
    artifact = tmp_path / "digits-edge-int8.onnx"
    artifact.write_bytes(b"\x08\x07onnx-model-bytes" * 1000)
    copy = tmp_path / "elsewhere" / "renamed.onnx"
    copy.parent.mkdir()
    copy.write_bytes(artifact.read_bytes())
    first = registry.register_model("digits-edge", "1", "onnx-int8", artifact, _card(artifact))
    second = registry.register_model("digits-edge", "2", "onnx-int8", copy)
    assert first.sha256 == second.sha256 and first.size == artifact.stat().st_size
    assert first.card is not None and first.card["metrics"] == {"accuracy": 0.97}
    assert second.card is None and second.filename == "renamed.onnx"
    stored = list((registry.store.root / "sha256").rglob("*"))
    files = [p for p in stored if p.is_file()]
    assert files == [registry.store.root / "sha256" / first.sha256[:2] / first.sha256]
    assert files[0].read_bytes() == artifact.read_bytes()
    assert registry.artifact_file(first.sha256) == files[0]
    assert registry.artifact(first.sha256).size == first.size
    assert list((registry.store.root / "tmp").iterdir()) == []
    # The same version with the same bytes again is the same version; other bytes conflict.
    assert registry.register_model("digits-edge", "1", "onnx-int8", copy).id == first.id
    other = tmp_path / "other.onnx"
    other.write_bytes(b"different")
    with pytest.raises(Conflict, match="already registered with other bytes"):
        registry.register_model("digits-edge", "1", "onnx-int8", other)
    # Another format of the same version is its own entry.
    registry.register_model("digits-edge", "1", "tflite-int8", other)
    listed = [(v.model, v.version, v.format) for v in registry.list_models()]
    assert listed == [
        ("digits-edge", "1", "onnx-int8"),
        ("digits-edge", "2", "onnx-int8"),
        ("digits-edge", "1", "tflite-int8"),
    ]
    assert registry.model_version("digits-edge", "2", "onnx-int8").id == second.id


def test_model_registration_refuses_what_does_not_fit(registry: Registry, tmp_path: Path) -> None:
    artifact = tmp_path / "m.onnx"
    artifact.write_bytes(b"model")
    with pytest.raises(InvalidRequest, match="the model card is for sha256 0000"):
        registry.register_model("m", "1", "onnx-int8", artifact, _card(artifact, sha256="0" * 64))
    with pytest.raises(InvalidRequest, match="does not exist"):
        registry.register_model("m", "1", "onnx-int8", tmp_path / "missing.onnx")
    with pytest.raises(InvalidRequest, match="version 'one two' is not valid"):
        registry.register_model("m", "one two", "onnx-int8", artifact)
    with pytest.raises(InvalidRequest, match="format 'ONNX' is not valid"):
        registry.register_model("m", "1", "ONNX", artifact)
    with pytest.raises(NotFound, match="model 'm' does not exist"):
        registry.list_models(name="m")
    with pytest.raises(NotFound, match="model m version 1"):
        registry.model_version("m", "1", "onnx-int8")
    with pytest.raises(InvalidRequest, match="is not a sha256"):
        registry.artifact_file("../../etc/passwd")


# -- telemetry queries ---------------------------------------------------------------------


def test_tail_series_and_events_read_what_ingest_wrote(
    registry: Registry, clock: hub_db.FakeClock
) -> None:
    registry.create_fleet("lab")
    token = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=2)
    device = _enroll(registry, token.token).device
    other = _enroll(registry, token.token, "other").device
    start = clock.now
    with registry.db.transaction() as session:
        for seq in range(1, 31):
            at = start + timedelta(seconds=10 * seq)
            session.add(
                TelemetryRaw(
                    device_id=device.id,
                    boot_id="boot-1",
                    seq=seq,
                    ts=at,
                    received_at=at,
                    payload={"seq": seq, "requests": seq},
                )
            )
        session.add(
            TelemetryRaw(
                device_id=other.id,
                boot_id="b",
                seq=1,
                ts=start,
                received_at=start + timedelta(hours=1),
                payload={},
            )
        )
        for minute in range(3):
            session.add(
                TelemetryRollup(
                    device_id=device.id,
                    minute=start + timedelta(minutes=minute),
                    count=6,
                    requests=100,
                    errors=minute,
                    offloads=4,
                    latency_p50_ms=2.0,
                    latency_p95_ms=5.0,
                    latency_p99_ms=9.0,
                    confidence_sum=87.5,
                    cpu_pct_max=40.0,
                    mem_pct_max=20.0,
                    temp_c_max=55.0,
                )
            )
        session.add(
            DeviceEvent(device_id=device.id, ts=start, kind="model-switch", body={"to": "3"})
        )

    tail = registry.telemetry_tail(device.id, limit=5)
    assert [r.seq for r in tail] == [26, 27, 28, 29, 30]
    assert tail[-1].payload == {"seq": 30, "requests": 30}
    assert tail[0].received_at == start + timedelta(seconds=260)
    series = registry.telemetry_series(
        device.id, since=start + timedelta(minutes=1), until=start + timedelta(minutes=10)
    )
    assert [r.errors for r in series] == [1, 2]
    assert series[0].confidence_mean == pytest.approx(0.875)
    assert series[0].minute == start + timedelta(minutes=1)
    (event,) = registry.device_events(device.id)
    assert (event.kind, event.body) == ("model-switch", {"to": "3"})
    assert json.dumps([r.to_dict() for r in tail + series])  # JSON-ready views
    with pytest.raises(NotFound):
        registry.telemetry_tail("dev-000000000000")
    with pytest.raises(InvalidRequest, match="limit 0"):
        registry.telemetry_tail(device.id, limit=0)
    with pytest.raises(InvalidRequest, match="must be after since"):
        registry.telemetry_series(device.id, since=start, until=start)


# -- restarts ------------------------------------------------------------------------------


def test_a_restart_loses_nothing(database_url: str, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "hub", database_url=database_url)
    clock = hub_db.FakeClock()
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"weights" * 100)
    with Registry.open(settings, clock=clock) as first:
        first.create_fleet("restart")
        issued = first.create_enrollment_token("restart", ttl=timedelta(hours=1), uses=3)
        enrolled = _enroll(first, issued.token)
        operator = first.create_operator_token("ci")
        version = first.register_model("restart-model", "1", "onnx-int8", artifact)
    try:
        with Registry.open(settings, clock=clock) as second:
            assert second.fleet("restart").devices == 1
            assert (
                second.authenticate_device(enrolled.device.id, enrolled.secret).fleet == "restart"
            )
            assert second.authenticate_operator(operator.token).name == "ci"
            assert second.artifact_file(version.sha256).read_bytes() == artifact.read_bytes()
            _enroll(second, issued.token, "after-restart")
            assert second.list_enrollment_tokens(fleet="restart")[0].uses_count == 2
    finally:
        with Registry.open(settings) as cleanup:
            hub_db.empty_tables(cleanup.db)


def test_views_serialise_with_utc_offsets(registry: Registry) -> None:
    fleet = registry.create_fleet("lab")
    data = fleet.to_dict()
    assert data["created_at"] == datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc).isoformat()
    assert data["created_at"].endswith("+00:00")
