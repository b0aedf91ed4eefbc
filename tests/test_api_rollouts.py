"""``/api/v1/rollouts`` over real HTTP (uvicorn on a free port), SQLite and PostgreSQL.

The fleet is :class:`test_rollouts.Fleet`: enrolled devices running digits-edge 1.0.0, with
1.1.0 registered. What the controller then does with a rollout is tested in
``test_rollouts.py``; here, that the REST routes start and steer one as the CLI does, with
the same checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hub_db
import pytest
from test_rollouts import Fleet

from cloud_hub.api import create_app
from cloud_hub.api.server import HttpServer
from cloud_hub.registry import Registry
from cloud_hub.settings import load_settings

database_url = hub_db.database_url_fixture("api_rollouts")
clock = hub_db.clock_fixture()
registry = hub_db.registry_fixture()

PUSH = {
    "model": "digits-edge",
    "version": "1.1.0",
    "fleet": "lab",
    "canary_pct": 20,
    "waves_pct": [50, 100],
    "soak_s": 300,
    "gates": ["p99_ms<=50", "error_rate<=0.01"],
}


@pytest.fixture
def client(
    registry: Registry, clock: hub_db.FakeClock, database_url: str, tmp_path: Path
) -> Iterator[httpx.Client]:
    Fleet(registry, clock, tmp_path, 5)
    registry.create_fleet("empty")
    settings = load_settings(data_dir=tmp_path / "hub", database_url=database_url)
    server = HttpServer(create_app(registry, settings), "127.0.0.1", 0)
    server.start()
    token = registry.create_operator_token("tests").token
    try:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            yield http
    finally:
        server.stop()


def _error(response: httpx.Response) -> str:
    message: str = response.json()["error"]["message"]
    return message


def test_start_follow_pause_resume_and_abort(client: httpx.Client) -> None:
    started = client.post("/api/v1/rollouts", json=PUSH)
    assert started.status_code == 201, started.text
    rollout: dict[str, Any] = started.json()
    rid = rollout["id"]
    assert rid.startswith("ro-") and rollout["state"] == "running"
    assert [w["name"] for w in rollout["waves"]] == ["canary", "wave 1", "wave 2"]
    assert [len(w["device_ids"]) for w in rollout["waves"]] == [1, 2, 2]
    assert rollout["gates"] == ["p99_ms<=50", "error_rate<=0.01"]
    assert rollout["soak_seconds"] == 300 and len(rollout["devices"]) == 5

    assert client.get(f"/api/v1/rollouts/{rid}").json() == rollout
    listed = client.get("/api/v1/rollouts", params={"fleet": "lab", "state": "running"})
    assert [r["id"] for r in listed.json()] == [rid]
    assert client.get("/api/v1/rollouts", params={"state": "paused"}).json() == []

    for verb, state in (("pause", "paused"), ("resume", "running")):
        answer = client.post(f"/api/v1/rollouts/{rid}/{verb}")
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == state
    aborted = client.post(f"/api/v1/rollouts/{rid}/abort", json={"reason": "wrong build"})
    assert aborted.status_code == 200, aborted.text
    assert aborted.json()["state"] == "aborted" and "wrong build" in aborted.json()["reason"]
    assert aborted.json()["finished_at"] is not None

    again = client.post(f"/api/v1/rollouts/{rid}/resume")
    assert again.status_code == 409
    assert (
        _error(again)
        == f"cannot resume rollout {rid}: it is aborted (only a paused rollout can be)"
    )


def test_a_device_in_an_unfinished_rollout_cannot_join_another(client: httpx.Client) -> None:
    assert client.post("/api/v1/rollouts", json=PUSH).status_code == 201
    second = client.post("/api/v1/rollouts", json=PUSH)
    assert second.status_code == 409, second.text


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"version": "2.0.0"}, 404, "model digits-edge has no version 2.0.0 registered"),
        ({"gates": ["p99_ms=<50"]}, 422, "gate 'p99_ms=<50' is not METRIC<=NUMBER"),
        ({"fleet": "empty"}, 422, "fleet 'empty' has no devices to update"),
        ({"waves_pct": [50]}, 422, "100%"),
        ({"canary_pct": 150}, 422, "canary_pct"),
        ({"soak": "5m"}, 422, "soak"),
    ],
)
def test_a_bad_push_is_refused_naming_what_is_wrong(
    client: httpx.Client, change: dict[str, Any], status: int, message: str
) -> None:
    answer = client.post("/api/v1/rollouts", json={**PUSH, **change})
    assert answer.status_code == status, answer.text
    assert message in answer.text, answer.text
    assert client.get("/api/v1/rollouts").json() == []


def test_unknown_rollouts_and_anonymous_callers(client: httpx.Client) -> None:
    missing = client.get("/api/v1/rollouts/ro-nope")
    assert missing.status_code == 404 and "ro-nope" in _error(missing)
    assert client.post("/api/v1/rollouts/ro-nope/pause").status_code == 404
    assert client.get("/api/v1/rollouts/not-an-id").status_code == 422
    anonymous = httpx.get(str(client.base_url.join("/api/v1/rollouts")), timeout=30)
    assert anonymous.status_code == 401
