"""The REST API over real HTTP: uvicorn on a free loopback port, SQLite and PostgreSQL.

Data is made through the registry (telemetry rows, which only ingest writes, through the
ORM); every request goes through a real socket with httpx.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import hub_db
import pytest

from cloud_hub.api import create_app
from cloud_hub.api.server import HttpServer
from cloud_hub.broker import BrokerAuth
from cloud_hub.db import Database
from cloud_hub.db import models as orm
from cloud_hub.registry import ArtifactStore, Device, Registry
from cloud_hub.settings import load_settings
from edge_agent.model_card import read_card

database_url = hub_db.database_url_fixture("api")
clock = hub_db.clock_fixture()
registry = hub_db.registry_fixture()

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)  # the FakeClock's start


@dataclasses.dataclass
class Api:
    """A running API: ``client`` sends a valid operator token, ``anonymous`` none."""

    url: str
    client: httpx.Client
    anonymous: httpx.Client
    token: str


@pytest.fixture
def api(registry: Registry, database_url: str, tmp_path: Path) -> Iterator[Api]:
    settings = load_settings(data_dir=tmp_path / "hub", database_url=database_url)
    server = HttpServer(create_app(registry, settings), "127.0.0.1", 0)
    server.start()
    token = registry.create_operator_token("tests").token
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with (
            httpx.Client(base_url=server.url, headers=headers, timeout=30) as client,
            httpx.Client(base_url=server.url, timeout=30) as anonymous,
        ):
            yield Api(server.url, client, anonymous, token)
    finally:
        server.stop()


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The error body of ``response``, checked for status and the one JSON shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def _enroll(registry: Registry, fleet: str, hostname: str, profile: str | None = None) -> Device:
    issued = registry.create_enrollment_token(fleet, ttl=timedelta(hours=1), uses=1)
    enrolled = registry.redeem_enrollment_token(
        issued.token, public_key_pem=None, hostname=hostname, profile=profile
    )
    return enrolled.device


# -- auth -------------------------------------------------------------------------------------


def test_no_token_is_401_with_a_bearer_challenge(api: Api) -> None:
    response = api.anonymous.get("/api/v1/fleets")
    error = _error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "operator-token create" in error["message"]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer eop_000000000000_not-the-secret",
        "Bearer elt_000000000000_an-enrollment-token",
        "Bearer nonsense",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_a_bad_token_is_401(api: Api, header: str) -> None:
    response = api.anonymous.get("/api/v1/devices", headers={"Authorization": header})
    _error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_good_token_with_a_wrong_secret_is_401(api: Api) -> None:
    token_id = api.token.split("_", 2)[1]
    response = api.anonymous.get(
        "/api/v1/fleets", headers={"Authorization": f"Bearer eop_{token_id}_wrong"}
    )
    _error(response, 401, "unauthorized")


def test_a_revoked_token_is_403(api: Api, registry: Registry) -> None:
    issued = registry.create_operator_token("leaver")
    headers = {"Authorization": f"Bearer {issued.token}"}
    assert api.anonymous.get("/api/v1/fleets", headers=headers).status_code == 200
    registry.revoke_operator_token(issued.info.id)
    error = _error(api.anonymous.get("/api/v1/fleets", headers=headers), 403, "forbidden")
    assert "revoked" in error["message"]
    # The other operator is not affected.
    assert api.client.get("/api/v1/fleets").status_code == 200


def test_health_and_docs_need_no_token(api: Api) -> None:
    assert api.anonymous.get("/healthz").json() == {"status": "ok"}
    schema = api.anonymous.get("/openapi.json").json()
    assert "/api/v1/devices" in schema["paths"]
    assert schema["components"]["securitySchemes"]["operatorToken"]["scheme"] == "bearer"
    docs = api.anonymous.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_an_unreachable_database_is_503(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nothing-listens-here"
    settings = load_settings(data_dir=tmp_path / "hub", database_url=url)
    down = Registry(Database(url), ArtifactStore(settings.artifacts_dir))
    server = HttpServer(create_app(down, settings), "127.0.0.1", 0)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            health = client.get("/healthz")
            listed = client.get("/api/v1/fleets", headers={"Authorization": "Bearer eop_x"})
            valid = client.get(
                "/api/v1/fleets", headers={"Authorization": f"Bearer eop_{'0' * 12}_secret"}
            )
    finally:
        server.stop()
        down.close()
    assert "cannot reach the database" in _error(health, 503, "unavailable")["message"]
    _error(listed, 401)  # a malformed token is refused before the database is asked
    assert _error(valid, 503, "unavailable")["message"] == "the hub's database cannot be reached"


# -- fleets -----------------------------------------------------------------------------------


def test_fleets_create_list_show(api: Api, registry: Registry) -> None:
    created = api.client.post("/api/v1/fleets", json={"name": "lab", "keep_inputs": False})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "lab" and created.json()["keep_inputs"] is False
    registry.create_fleet("field")
    _enroll(registry, "field", "pi-1")

    listed = api.client.get("/api/v1/fleets").json()
    assert [(f["name"], f["devices"]) for f in listed] == [("field", 1), ("lab", 0)]
    shown = api.client.get("/api/v1/fleets/field").json()
    assert shown["devices"] == 1 and shown["keep_inputs"] is True
    assert registry.fleet("lab").keep_inputs is False


def test_fleet_errors(api: Api, registry: Registry) -> None:
    registry.create_fleet("lab")
    _error(api.client.post("/api/v1/fleets", json={"name": "lab"}), 409, "conflict")
    _error(api.client.get("/api/v1/fleets/nowhere"), 404, "not_found")
    error = _error(api.client.post("/api/v1/fleets", json={"name": "-bad"}), 422)
    assert error["details"][0]["location"] == "body.name"
    _error(api.client.post("/api/v1/fleets", json={"name": "x", "colour": "red"}), 422)
    _error(api.client.post("/api/v1/fleets", content=b"{not json"), 422)
    _error(api.client.get("/api/v1/fleets/bad%20name"), 422, "validation_error")


# -- devices ----------------------------------------------------------------------------------


@pytest.fixture
def fleet_devices(registry: Registry) -> dict[str, Device]:
    """Four devices in two fleets; pi-1 online on model version 2, pi-3 revoked."""
    registry.create_fleet("lab")
    registry.create_fleet("field")
    made = {
        "pi-1": _enroll(registry, "lab", "pi-1", "raspberry-pi-5"),
        "pi-2": _enroll(registry, "lab", "pi-2", "raspberry-pi-5"),
        "jet-1": _enroll(registry, "field", "jet-1", "jetson-orin-nano"),
        "pi-3": _enroll(registry, "field", "pi-3", "raspberry-pi-5"),
    }
    registry.update_device_state(
        made["pi-1"].id, status="online", seen_at=T0, model_name="digits", model_version="2"
    )
    registry.update_device_state(made["pi-2"].id, status="offline", model_version="1")
    registry.revoke_device(made["pi-3"].id)
    return made


def _hostnames(page: dict[str, Any]) -> set[str]:
    return {device["hostname"] for device in page["items"]}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, {"pi-1", "pi-2", "jet-1", "pi-3"}),
        ({"fleet": "lab"}, {"pi-1", "pi-2"}),
        ({"profile": "raspberry-pi-5"}, {"pi-1", "pi-2", "pi-3"}),
        ({"status": "online"}, {"pi-1"}),
        ({"status": "unknown"}, {"jet-1"}),
        ({"status": "revoked"}, {"pi-3"}),
        ({"model_version": "2"}, {"pi-1"}),
        ({"fleet": "field", "profile": "raspberry-pi-5"}, {"pi-3"}),
        ({"fleet": "lab", "model_version": "3"}, set()),
    ],
)
def test_device_filters(
    api: Api, fleet_devices: dict[str, Device], query: dict[str, str], expected: set[str]
) -> None:
    response = api.client.get("/api/v1/devices", params=query)
    assert response.status_code == 200, response.text
    page = response.json()
    assert _hostnames(page) == expected
    assert page["total"] == len(expected)


def test_device_pages(api: Api, fleet_devices: dict[str, Device]) -> None:
    everything = api.client.get("/api/v1/devices").json()
    ids = [device["id"] for device in everything["items"]]
    assert len(ids) == 4
    pages = [
        api.client.get("/api/v1/devices", params={"limit": 3, "offset": offset}).json()
        for offset in (0, 3, 6)
    ]
    assert [len(page["items"]) for page in pages] == [3, 1, 0]
    assert all(page["total"] == 4 and page["limit"] == 3 for page in pages)
    assert [d["id"] for page in pages for d in page["items"]] == ids


@pytest.mark.parametrize(
    "query",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"offset": "-1"},
        {"status": "asleep"},
        {"fleet": "no/slashes"},
        {"model_version": "+1"},
    ],
)
def test_bad_device_queries_are_422(api: Api, query: dict[str, str]) -> None:
    error = _error(api.client.get("/api/v1/devices", params=query), 422, "validation_error")
    assert error["details"][0]["location"] == f"query.{next(iter(query))}"


def test_filtering_by_an_unknown_fleet_is_404(api: Api) -> None:
    _error(api.client.get("/api/v1/devices", params={"fleet": "nowhere"}), 404, "not_found")


def test_device_show_and_revoke(
    api: Api, registry: Registry, fleet_devices: dict[str, Device]
) -> None:
    pi1 = fleet_devices["pi-1"]
    shown = api.client.get(f"/api/v1/devices/{pi1.id}").json()
    assert shown["hostname"] == "pi-1" and shown["fleet"] == "lab"
    assert shown["status"] == "online" and shown["model_version"] == "2"
    assert shown["revoked"] is False and shown["revoked_at"] is None
    assert datetime.fromisoformat(shown["last_seen_at"]) == T0

    revoked = api.client.post(f"/api/v1/devices/{pi1.id}/revoke")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked"] is True and revoked.json()["status"] == "offline"
    assert registry.device(pi1.id).revoked
    # Revoking again changes nothing.
    again = api.client.post(f"/api/v1/devices/{pi1.id}/revoke").json()
    assert again["revoked_at"] == revoked.json()["revoked_at"]


def test_revoking_takes_the_device_off_a_managed_broker(
    registry: Registry, database_url: str, tmp_path: Path
) -> None:
    settings = load_settings(
        data_dir=tmp_path / "hub",
        database_url=database_url,
        broker_password_file=tmp_path / "broker" / "passwd",
        broker_acl_file=tmp_path / "broker" / "acl",
    )
    auth = BrokerAuth.from_settings(settings)
    assert auth is not None
    registry.create_fleet("lab")
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=2)
    enrolled = {}
    for hostname in ("pi-1", "pi-2"):
        made = registry.redeem_enrollment_token(
            issued.token, public_key_pem=None, hostname=hostname
        )
        with registry.db.transaction() as session:
            auth.record_credential(session, made.device.id, made.secret)
        enrolled[hostname] = made.device.id
    auth.sync(registry.db)
    users = _broker_users(settings.broker_password_file)
    assert set(enrolled.values()) <= users

    server = HttpServer(create_app(registry, settings), "127.0.0.1", 0)
    server.start()
    try:
        token = registry.create_operator_token("tests").token
        response = httpx.post(
            f"{server.url}/api/v1/devices/{enrolled['pi-1']}/revoke",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    users = _broker_users(settings.broker_password_file)
    assert enrolled["pi-1"] not in users and enrolled["pi-2"] in users


def _broker_users(password_file: Path | None) -> set[str]:
    assert password_file is not None
    return {line.split(":", 1)[0] for line in password_file.read_text().splitlines() if line}


def test_unknown_device_is_404(api: Api) -> None:
    for path in ("", "/revoke", "/telemetry", "/rollups", "/events"):
        method = "POST" if path == "/revoke" else "GET"
        response = api.client.request(method, f"/api/v1/devices/dev-000000000000{path}")
        error = _error(response, 404, "not_found")
        assert "dev-000000000000" in error["message"]


# -- telemetry --------------------------------------------------------------------------------


def _add_telemetry(registry: Registry, device_id: str, minutes: int) -> None:
    """One raw message, one rollup and one event per minute from T0 on (as ingest would)."""
    with registry.db.transaction() as session:
        for i in range(minutes):
            at = T0 + timedelta(minutes=i)
            session.add(
                orm.TelemetryRaw(
                    device_id=device_id,
                    boot_id="boot-1",
                    seq=i,
                    ts=at,
                    received_at=at + timedelta(seconds=1),
                    payload={"v": 1, "seq": i, "requests": 10 * i},
                )
            )
            session.add(
                orm.TelemetryRollup(
                    device_id=device_id,
                    minute=at,
                    count=1,
                    requests=10 * i,
                    errors=0,
                    offloads=i,
                    latency_p50_ms=1.5,
                    latency_p95_ms=3.0,
                    latency_p99_ms=4.0,
                    confidence_sum=0.9 * 10 * i,
                    cpu_pct_max=50.0,
                    mem_pct_max=None,
                    temp_c_max=None,
                )
            )
            session.add(orm.DeviceEvent(device_id=device_id, ts=at, kind="status", body={"i": i}))


def test_raw_telemetry_latest_first_limited_and_in_range(
    api: Api, registry: Registry, fleet_devices: dict[str, Device]
) -> None:
    device = fleet_devices["pi-1"].id
    _add_telemetry(registry, device, 10)
    url = f"/api/v1/devices/{device}/telemetry"
    everything = api.client.get(url).json()
    assert [r["seq"] for r in everything] == list(range(10))
    assert everything[3]["payload"] == {"v": 1, "seq": 3, "requests": 30}
    assert [r["seq"] for r in api.client.get(url, params={"limit": 3}).json()] == [7, 8, 9]
    window = {"since": (T0 + timedelta(minutes=2)).isoformat(), "until": "2030-01-01T12:05:00"}
    assert [r["seq"] for r in api.client.get(url, params=window).json()] == [2, 3, 4]
    other = fleet_devices["pi-2"].id
    assert api.client.get(f"/api/v1/devices/{other}/telemetry").json() == []


def test_rollups_per_minute(api: Api, registry: Registry, fleet_devices: dict[str, Device]) -> None:
    device = fleet_devices["pi-1"].id
    _add_telemetry(registry, device, 5)
    url = f"/api/v1/devices/{device}/rollups"
    window = {"since": "2030-01-01T12:01:00Z", "until": "2030-01-01T13:03:00+01:00"}
    rollups = api.client.get(url, params=window).json()
    assert [datetime.fromisoformat(r["minute"]) for r in rollups] == [
        T0 + timedelta(minutes=1),
        T0 + timedelta(minutes=2),
    ]
    assert rollups[1]["requests"] == 20 and rollups[1]["confidence_mean"] == pytest.approx(0.9)
    assert rollups[0]["mem_pct_max"] is None
    # Without a window: the hour before now (the registry's clock, T0), so nothing yet.
    assert api.client.get(url).json() == []
    later = {"until": (T0 + timedelta(minutes=30)).isoformat()}
    assert len(api.client.get(url, params=later).json()) == 5


def test_device_events(api: Api, registry: Registry, fleet_devices: dict[str, Device]) -> None:
    device = fleet_devices["jet-1"].id
    _add_telemetry(registry, device, 4)
    events = api.client.get(f"/api/v1/devices/{device}/events", params={"limit": 2}).json()
    assert [(e["kind"], e["body"]["i"]) for e in events] == [("status", 2), ("status", 3)]


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("telemetry", {"since": "yesterday"}),
        ("telemetry", {"limit": "0"}),
        ("telemetry", {"since": "2030-01-01T12:05:00Z", "until": "2030-01-01T12:00:00Z"}),
        ("rollups", {"since": "2030-01-01T12:00:00Z", "until": "2030-01-01T12:00:00Z"}),
        ("rollups", {"since": "2029-01-01T00:00:00Z", "until": "2030-01-01T00:00:00Z"}),
        ("rollups", {"until": "0001-01-01T00:10:00Z"}),
        ("events", {"limit": "1001"}),
    ],
)
def test_bad_telemetry_queries_are_422(
    api: Api, fleet_devices: dict[str, Device], path: str, query: dict[str, str]
) -> None:
    device = fleet_devices["pi-1"].id
    _error(api.client.get(f"/api/v1/devices/{device}/{path}", params=query), 422)


# -- models and artifacts ---------------------------------------------------------------------


@pytest.fixture
def models(registry: Registry, reference_dir: Path) -> dict[str, Path]:
    """digits-edge version 1 in two formats and version 2 in one, with their model cards."""
    files = {
        "onnx-int8": reference_dir / "digits-edge" / "digits-edge-int8.onnx",
        "tflite-int8": reference_dir / "digits-edge" / "digits-edge-int8.tflite",
    }
    for model_format, path in files.items():
        card = read_card(path)
        assert card is not None
        registry.register_model(
            "digits-edge", "1", model_format, path, card=dataclasses.asdict(card)
        )
    registry.register_model("digits-edge", "2", "onnx-int8", files["onnx-int8"])
    return files


def test_models_and_versions(api: Api, models: dict[str, Path]) -> None:
    listed = api.client.get("/api/v1/models").json()
    assert listed == [
        {
            "name": "digits-edge",
            "versions": ["1", "2"],
            "formats": ["onnx-int8", "tflite-int8"],
            "latest_version": "2",
            "updated_at": listed[0]["updated_at"],
        }
    ]
    model = api.client.get("/api/v1/models/digits-edge").json()
    assert [v["version"] for v in model["versions"]] == ["1", "2"]
    version = api.client.get("/api/v1/models/digits-edge/versions/1").json()
    assert version["model"] == "digits-edge" and version["version"] == "1"
    by_format = {f["format"]: f for f in version["formats"]}
    assert set(by_format) == set(models)
    for model_format, path in models.items():
        entry = by_format[model_format]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["size"] == path.stat().st_size
        assert entry["filename"] == path.name
        assert entry["card"]["sha256"] == entry["sha256"]
        assert entry["content_url"] == f"/api/v1/artifacts/{entry['sha256']}/content"
    unsigned = api.client.get("/api/v1/models/digits-edge/versions/2").json()
    assert unsigned["formats"][0]["card"] is None


def test_model_errors(api: Api, models: dict[str, Path]) -> None:
    _error(api.client.get("/api/v1/models/unknown"), 404, "not_found")
    _error(api.client.get("/api/v1/models/digits-edge/versions/9"), 404, "not_found")
    _error(api.client.get("/api/v1/models/digits-edge/versions/.9"), 422)


def test_artifact_metadata_and_download(api: Api, models: dict[str, Path]) -> None:
    path = models["onnx-int8"]
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    meta = api.client.get(f"/api/v1/artifacts/{sha}").json()
    assert meta["sha256"] == sha and meta["size"] == len(data)
    assert {(u["version"], u["format"]) for u in meta["used_by"]} == {
        ("1", "onnx-int8"),
        ("2", "onnx-int8"),
    }

    with api.client.stream("GET", meta["content_url"]) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["content-length"] == str(len(data))
        assert response.headers["etag"] == f'"{sha}"'
        body = response.read()
    assert body == data
    assert hashlib.sha256(body).hexdigest() == sha

    cached = api.client.get(meta["content_url"], headers={"If-None-Match": f'"{sha}"'})
    assert cached.status_code == 304 and cached.content == b""
    part = api.client.get(meta["content_url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]


def test_artifact_errors(api: Api) -> None:
    unknown = "0" * 64
    _error(api.client.get(f"/api/v1/artifacts/{unknown}"), 404, "not_found")
    _error(api.client.get(f"/api/v1/artifacts/{unknown}/content"), 404, "not_found")
    _error(api.client.get("/api/v1/artifacts/ABC"), 422, "validation_error")


# -- enrollment tokens ------------------------------------------------------------------------


def test_enrollment_tokens(api: Api, registry: Registry) -> None:
    registry.create_fleet("lab")
    response = api.client.post(
        "/api/v1/enrollment-tokens", json={"fleet": "lab", "ttl_s": 600, "uses": 2}
    )
    assert response.status_code == 201, response.text
    issued = response.json()
    assert issued["state"] == "active" and issued["uses_allowed"] == 2
    assert datetime.fromisoformat(issued["expires_at"]) == T0 + timedelta(minutes=10)
    # The token is real: a device enrolls with it.
    enrolled = registry.redeem_enrollment_token(
        issued["token"], public_key_pem=None, hostname="pi-9"
    )
    assert enrolled.device.fleet == "lab"

    listed = api.client.get("/api/v1/enrollment-tokens", params={"fleet": "lab"}).json()
    assert [(t["id"], t["uses_count"]) for t in listed] == [(issued["id"], 1)]
    assert "token" not in listed[0]
    assert issued["token"].split("_", 2)[2] not in api.client.get("/api/v1/enrollment-tokens").text


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"fleet": "nowhere"}, 404),
        ({"fleet": "lab", "ttl_s": 0}, 422),
        ({"fleet": "lab", "ttl_s": 366 * 24 * 3600}, 422),
        ({"fleet": "lab", "uses": 0}, 422),
        ({"fleet": "lab", "uses": "many"}, 422),
        ({"ttl_s": 60}, 422),
    ],
)
def test_bad_enrollment_token_requests(
    api: Api, registry: Registry, body: dict[str, Any], status: int
) -> None:
    registry.create_fleet("lab")
    _error(api.client.post("/api/v1/enrollment-tokens", json=body), status)
    assert registry.list_enrollment_tokens() == []


# -- the error shape everywhere ---------------------------------------------------------------


def test_unknown_routes_and_methods_use_the_error_shape(api: Api) -> None:
    _error(api.client.get("/api/v1/nothing-here"), 404, "not_found")
    _error(api.client.delete("/api/v1/fleets"), 405, "method_not_allowed")
