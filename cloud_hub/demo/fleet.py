"""Step 2, a fleet of one: a hub, one enrolled agent, 200 digits, and the hub's view of them.

In order, every part a real process, as an operator would run them:

1. an MQTT broker (:mod:`.broker`);
2. ``cloud-hub serve`` with a fresh data directory, on free ports (:mod:`.hub`);
3. ``cloud-hub fleet create``, ``operator-token create`` and ``enroll-token create``;
   and ``model register`` of the fp32 cloud digits model, which the hub serves for offload;
4. ``edge-agent enroll`` with that token; ``edge-agent calibrate`` picks, on the validation
   split, the threshold that offloads about a fifth of the inputs; then ``edge-agent run``
   on the int8 digits model with a one-second telemetry interval and that cascade
   (:mod:`.agent`);
5. the first held-out digits to the agent's local inference API: the sure ones answered on
   the device, the hard ones by the hub;
6. the hub's REST API, polled until the device is online, its telemetry counts every
   request and the hub keeps every offloaded input; then a summary (:mod:`.report`).

Everything lives in ``<workdir>/demo`` (emptied first): ``hub/`` (data), ``agent/`` (state),
``agent.toml`` and a log per process. Leaving stops every process, newest first.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .agent import RunningAgent, calibrate, classify, enroll, start_agent, write_config
from .broker import provide_broker
from .errors import DemoFailed, DemoSkipped
from .hub import HubApi, RunningHub, start_hub
from .models import (
    CLOUD_MODEL,
    CLOUD_NAME,
    DEMO_MODELS,
    TARGET_OFFLOAD,
    VALIDATION,
    heldout_digits,
)
from .processes import Children
from .report import FleetReport, accuracy, requests_seen, summary_lines, worst_p95_ms

FLEET = "demo"
DIGITS = 200
TELEMETRY_TIMEOUT_S = 60.0
PROGRESS_EVERY_S = 3.0
POLL_S = 0.5
# What `cloud-hub serve` imports (the hub extra), by module name.
_HUB_MODULES = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "pydantic_settings", "cryptography")


@dataclass(frozen=True)
class FleetOptions:
    folder: Path  # <workdir>/demo: emptied, then everything of step 2 goes here
    models: Path  # the reference models of step 1
    broker: str  # auto, private or HOST:PORT (see .broker)
    keep_running: bool


def say(message: str) -> None:
    print(f"  {message}", flush=True)


def run_fleet(options: FleetOptions) -> bool:
    """Run step 2; True when every part worked and stopped cleanly.

    DemoSkipped when this machine lacks what it needs (the hub extra, a broker).
    """
    _check_hub_extra()
    _reset(options.folder)
    with Children(options.folder) as children:
        try:
            report = _run(children, options)
        except DemoFailed as exc:
            print(f"\nstep 2 FAILED: {exc}\n", file=sys.stderr, flush=True)
            return False
        print()
        for line in summary_lines(report, hub_running=options.keep_running):
            print(line)
        print(flush=True)
        if options.keep_running:
            _keep_running(children)
    return not children.problems


def _run(children: Children, options: FleetOptions) -> FleetReport:
    folder = options.folder
    broker = provide_broker(options.broker, folder, children)
    say(f"MQTT broker: {broker.address} ({broker.origin})")
    data_dir = folder / "hub"
    say(f"starting the hub: cloud-hub serve --data-dir {data_dir} ...")
    hub = start_hub(children, data_dir, broker)
    say(f"hub up: REST http://{hub.http}/api/v1, gRPC {hub.grpc}, telemetry via {hub.mqtt}")

    hub.cli(children, "fleet", "create", FLEET)
    token = hub.cli(children, "operator-token", "create", "demo")
    enroll_token = hub.cli(
        children, "enroll-token", "create", "--fleet", FLEET, "--ttl", "10m", "--uses", "1"
    )
    say(f"created fleet {FLEET}, an operator token and a one-use enrollment token")
    hub.cli(
        children,
        *("model", "register", CLOUD_NAME, "--version", "1.0.0", "--format", "onnx-fp32"),
        *("--artifact", str(options.models / CLOUD_MODEL)),
    )
    say(f"registered {CLOUD_NAME} 1.0.0 (fp32): the hub answers offloaded inputs with it")

    state_dir = folder / "agent"
    device_id = enroll(children, hub.grpc, enroll_token, state_dir)
    say(f"enrolled device {device_id} (identity in {state_dir})")
    edge_model = options.models / DEMO_MODELS["onnxruntime"]
    config = write_config(folder, edge_model, hub.grpc, CLOUD_NAME)
    threshold = calibrate(children, edge_model, options.models / VALIDATION, TARGET_OFFLOAD, config)
    say(
        f"calibrated: confidence under {threshold:.4g} goes to the hub "
        f"(about {TARGET_OFFLOAD:.0%} of the validation digits)"
    )
    agent = start_agent(children, config, state_dir)
    say(f"agent up: serving {agent.model} on {agent.url} (config {config})")

    images, labels = heldout_digits(options.models, DIGITS)
    answers = classify(agent, images)
    right, fraction = accuracy([a.label for a in answers], [int(y) for y in labels])
    offloaded = sum(a.answered_by == "cloud" for a in answers)
    say(
        f"sent {len(images)} held-out digits to the agent: {right} right ({fraction:.1%}), "
        f"{offloaded} answered by the hub"
    )

    api = HubApi(hub.api_url, token)
    device, records = _wait_for_telemetry(api, hub, agent, device_id, len(images))
    kept = _wait_for_hard_examples(api, hub, offloaded)
    return FleetReport(
        rest=hub.http,
        grpc=hub.grpc,
        mqtt=hub.mqtt,
        data_dir=data_dir,
        fleet=FLEET,
        device_id=device_id,
        status=str(device["status"]),
        sent=len(images),
        seen=requests_seen(records),
        p95_ms=worst_p95_ms(records),
        right=right,
        operator_token=token,
        offloaded=offloaded,
        threshold=threshold,
        hard_examples=kept,
    )


def _wait_for_telemetry(
    api: HubApi, hub: RunningHub, agent: RunningAgent, device_id: str, expected: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll the REST API until the device is online with ``expected`` requests counted."""
    say(f"waiting for the hub to see the device online with {expected} requests...")
    started = time.monotonic()
    next_progress = started + PROGRESS_EVERY_S
    while True:
        for child in (hub.child, agent.child):
            if not child.alive():
                raise child.failure(f"{child.name} stopped while the demo waited for telemetry")
        device = api.device(FLEET, device_id)
        records = api.telemetry(device_id) if device is not None else []
        status = "not listed" if device is None else str(device["status"])
        seen = requests_seen(records)
        if device is not None and status == "online" and seen >= expected:
            return device, records
        elapsed = time.monotonic() - started
        if elapsed > TELEMETRY_TIMEOUT_S:
            raise DemoFailed(
                f"after {TELEMETRY_TIMEOUT_S:.0f} s the hub shows device {device_id} "
                f"{status} with {seen} of {expected} requests (logs: {hub.child.log_path}, "
                f"{agent.child.log_path})"
            )
        if time.monotonic() >= next_progress:
            say(f"... device {status}, {seen}/{expected} requests seen ({elapsed:.0f} s)")
            next_progress += PROGRESS_EVERY_S
        time.sleep(POLL_S)


def _wait_for_hard_examples(api: HubApi, hub: RunningHub, expected: int) -> int:
    """Poll until the hub keeps ``expected`` hard examples (it writes them in batches)."""
    started = time.monotonic()
    while True:
        if not hub.child.alive():
            raise hub.child.failure("the hub stopped while the demo waited for hard examples")
        kept = api.hard_examples(FLEET)
        if kept >= expected:
            return kept
        if time.monotonic() - started > TELEMETRY_TIMEOUT_S:
            raise DemoFailed(
                f"after {TELEMETRY_TIMEOUT_S:.0f} s the hub keeps {kept} of the {expected} "
                f"inputs the agent offloaded (log: {hub.child.log_path})"
            )
        time.sleep(POLL_S)


def _keep_running(children: Children) -> None:
    """Wait for Ctrl-C (or SIGTERM); DemoFailed if a process stops on its own first."""
    names = ", ".join(child.name for child in children.started)
    say(f"{names} keep running (logs in {children.folder}).")
    say(f"Press Ctrl-C (or kill {os.getpid()}) to stop them all.")
    try:
        while all(child.alive() for child in children.started):
            time.sleep(1.0)
    except KeyboardInterrupt:
        print(flush=True)
        return
    dead = next(child for child in children.started if not child.alive())
    print(f"\n{dead.failure(f'{dead.name} stopped on its own')}\n", file=sys.stderr)
    children.problems.append(f"{dead.name} stopped on its own")


def _check_hub_extra() -> None:
    missing = [name for name in _HUB_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise DemoSkipped(
            f"step 2 needs the hub's dependencies ({', '.join(missing)} missing): "
            "pip install 'edgeloop[hub]'"
        )


def _reset(folder: Path) -> None:
    """An empty ``folder``: what an earlier run left there goes."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
