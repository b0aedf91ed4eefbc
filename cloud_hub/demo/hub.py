"""Step 2's hub: ``cloud-hub serve`` as a child process, its CLI, and its REST API.

The hub listens on free ports (0) and says which in one line::

    listening http=127.0.0.1:40123 grpc=127.0.0.1:40125 mqtt=127.0.0.1:1883

Every ``cloud-hub`` command the demo runs names the same ``--data-dir``, so they share the
hub's SQLite database.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .broker import Broker
from .errors import DemoFailed
from .processes import Child, Children

START_TIMEOUT_S = 120.0  # migrations and imports on a loaded machine
REQUEST_TIMEOUT_S = 30.0
PARTS = ("http", "grpc", "mqtt")


def hub_command(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cloud_hub.cli", "--data-dir", str(data_dir), *args]


def parse_listening(line: str) -> dict[str, str]:
    """``http=A grpc=B mqtt=C`` as ``{"http": "A", ...}``; DemoFailed when a part is off."""
    where = dict(part.split("=", 1) for part in line.split() if "=" in part)
    off = [part for part in PARTS if where.get(part, "off") == "off"]
    if off:
        raise DemoFailed(f"the hub runs without {', '.join(off)} ('listening {line}')")
    return where


@dataclass
class RunningHub:
    child: Child
    data_dir: Path
    http: str  # HOST:PORT of the REST API
    grpc: str  # HOST:PORT devices enroll through
    mqtt: str  # HOST:PORT of the broker it ingests from

    @property
    def api_url(self) -> str:
        return f"http://{self.http}/api/v1"

    def cli(self, children: Children, *args: str) -> str:
        """Run ``cloud-hub ARGS`` on this hub's data; its stdout, stripped."""
        command = " ".join(args)
        return children.run(hub_command(self.data_dir, *args), f"cloud-hub {command}").strip()


def start_hub(children: Children, data_dir: Path, broker: Broker) -> RunningHub:
    """``cloud-hub serve`` on free ports, once it says where it listens."""
    argv = hub_command(
        data_dir,
        *("serve", "--http-port", "0", "--grpc-port", "0", "--offload-port", "0"),
        *("--mqtt-host", broker.host, "--mqtt-port", str(broker.port)),
    )
    child = children.start("hub", argv)
    line = child.wait_for_line(r"^listening (.*)$", START_TIMEOUT_S).group(1)
    where = parse_listening(line)
    return RunningHub(child, data_dir, where["http"], where["grpc"], where["mqtt"])


class HubApi:
    """The REST API as an operator sees it: GETs with a bearer token."""

    def __init__(self, api_url: str, token: str) -> None:
        self.api_url = api_url
        self.token = token

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.api_url}{path}", headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise DemoFailed(f"GET {self.api_url}{path}: HTTP {exc.code} {detail}") from exc
        except (OSError, ValueError) as exc:
            raise DemoFailed(f"GET {self.api_url}{path}: {exc}") from exc

    def device(self, fleet: str, device_id: str) -> dict[str, Any] | None:
        """The device as ``/devices`` lists it, or None while the hub does not list it."""
        page = self.get(f"/devices?fleet={fleet}&limit=1000")
        found: dict[str, Any] | None = next(
            (item for item in page["items"] if item["id"] == device_id), None
        )
        return found

    def hard_examples(self, fleet: str) -> int:
        """How many offloaded inputs the hub keeps for ``fleet``."""
        return int(self.get(f"/hard-examples?fleet={fleet}&limit=1")["total"])

    def telemetry(self, device_id: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.get(f"/devices/{device_id}/telemetry?limit=1000")
        return records
