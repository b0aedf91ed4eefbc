"""Schemathesis over the REST API's OpenAPI schema: no 5xx, responses as documented.

A real server (uvicorn on a free loopback port) over SQLite and over PostgreSQL, with
a fleet, devices and a registered model in it. Every operation gets a bounded number of
generated requests (valid and invalid ones), derandomized so a run is repeatable; each
request carries a valid operator token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import hub_db
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from cloud_hub.api import create_app
from cloud_hub.api.server import HttpServer
from cloud_hub.registry import Registry
from cloud_hub.settings import load_settings
from edge_agent.model_card import read_card

MAX_EXAMPLES = 25
# Rules across parameters (until after since, a series of at most 31 days) are beyond
# what OpenAPI can say, so schema-valid requests may rightly be refused with a 422.
EXCLUDED_CHECKS = [schemathesis.checks.positive_data_acceptance]

database_url = hub_db.database_url_fixture("fuzz")


@dataclasses.dataclass(frozen=True)
class Served:
    url: str
    token: str


@pytest.fixture(scope="module")
def served(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, reference_dir: Path
) -> Iterator[Served]:
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("fuzz-hub"), database_url=database_url
    )
    with Registry.open(settings) as registry:
        token = _seed(registry, reference_dir)
        server = HttpServer(create_app(registry, settings), "127.0.0.1", 0)
        server.start()
        try:
            yield Served(server.url, token)
        finally:
            server.stop()
            hub_db.empty_tables(registry.db)


def _seed(registry: Registry, reference_dir: Path) -> str:
    """Something to find: a fleet with two devices, a model version, an operator token."""
    registry.create_fleet("lab")
    issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=2)
    for hostname in ("pi-1", "pi-2"):
        registry.redeem_enrollment_token(
            issued.token, public_key_pem=None, hostname=hostname, profile="raspberry-pi-5"
        )
    artifact = reference_dir / "digits-edge" / "digits-edge-int8.onnx"
    card = read_card(artifact)
    assert card is not None
    registry.register_model("digits-edge", "1", "onnx-int8", artifact, dataclasses.asdict(card))
    return registry.create_operator_token("schemathesis").token


@pytest.fixture(scope="module")
def api_schema(served: Served) -> Any:
    return schemathesis.openapi.from_url(f"{served.url}/openapi.json")


# schemathesis' own pytest loader (from_fixture) does not run under pytest 9, so each
# test drives Hypothesis over every operation itself and reports every failure at once.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_conforms_to_the_schema(
    api_schema: Any, served: Served, mode: GenerationMode
) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 15
    failures = []
    for operation in operations:
        try:
            _fuzz(operation, mode, served)
        except Unsatisfiable:
            # An operation without parameters or body has no invalid requests to make.
            if mode is not GenerationMode.NEGATIVE:
                raise
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def _fuzz(operation: Any, mode: GenerationMode, served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.token}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(
            base_url=served.url, headers=headers, timeout=30, excluded_checks=EXCLUDED_CHECKS
        )

    run()
