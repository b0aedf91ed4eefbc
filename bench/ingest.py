"""The highest telemetry rate one hub ingest process sustains with nothing lost.

A private Mosquitto on a free loopback port; one :class:`~cloud_hub.ingest.IngestService`
in this process; simulated devices (:mod:`bench._ingest_load`, a few processes, the
agent's message shape) publishing QoS 1 at a stepped offered rate. A step is *sustained*
when the publishers reached at least 95% of the offered rate and every message they
published was stored within :data:`DRAIN_S` after they stopped (so the backlog did not
grow without bound). Stepping stops at the first step that is not; its messages are still
waited for (up to :data:`LOSS_WAIT_S`) and anything never stored counts as ``lost``.
Done for a SQLite file and for a PostgreSQL database made for the run and dropped after.

Figures: ``msgs_per_s_sqlite`` and ``msgs_per_s_postgres`` (the rate the publishers
achieved in the best sustained step; 0 where none was), ``lost`` (published and
acknowledged by the broker, never stored, over every step).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._harness import Figure, Goal, figures_dict, log, print_table
from ._mosquitto import Mosquitto

RATE_GOAL = Goal(">=", 1_000)
LOST_GOAL = Goal("<=", 0)
# (quick, full): offered rates in msg/s, seconds per step, simulated devices.
STEPS = ((1_000, 3_000), (500, 1_000, 2_000, 3_000, 4_000, 6_000))
STEP_S = (5.0, 30.0)
DEVICES = (1_000, 2_000)
PUBLISHERS, CONNECTIONS = 2, 2  # processes, MQTT clients per process
DRAIN_S = (3.0, 5.0)
LOSS_WAIT_S = 60.0
MIN_ACHIEVED = 0.95
ADMIN_URL = os.environ.get(
    "EDGELOOP_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Step:
    offered: int
    published: int  # acknowledged by the broker
    achieved: float  # msg/s the publishers reached
    drained_s: float | None  # after publishing ended, until all were stored (None: not in time)
    max_queue: int
    lost: int

    @property
    def sustained(self) -> bool:
        return self.drained_s is not None and self.achieved >= MIN_ACHIEVED * self.offered


def run(quick: bool) -> dict[str, object]:
    pick = 0 if quick else 1
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as work, Mosquitto(Path(work)) as mq:
        log(f"ingest: mosquitto on 127.0.0.1:{mq.port}")
        results: dict[str, list[Step]] = {}
        for backend in ("sqlite", "postgresql"):
            with _database(backend, Path(work)) as url:
                if url is None:
                    results[backend] = []
                    continue
                results[backend] = measure(url, mq.port, Path(work) / backend, pick)
    figures = [
        Figure("msgs_per_s_sqlite", "sustained, SQLite", _best(results["sqlite"]), "msg/s",
               RATE_GOAL),
        Figure("msgs_per_s_postgres", "sustained, PostgreSQL", _best(results["postgresql"]),
               "msg/s", RATE_GOAL),
        Figure("lost", "messages lost (all steps)",
               sum(s.lost for steps in results.values() for s in steps), "n", LOST_GOAL),
    ]  # fmt: skip
    step_s = STEP_S[pick]
    print_table(f"ingest: one hub process, {step_s:.0f} s steps, QoS 1, zero loss", figures)
    return figures_dict(figures)


def measure(url: str, port: int, data_dir: Path, pick: int) -> list[Step]:
    """Step the offered rate up until a step is not sustained; every step's outcome."""
    from cloud_hub.ingest import IngestOptions, IngestService
    from cloud_hub.registry import Registry
    from cloud_hub.settings import load_settings

    settings = load_settings(data_dir=data_dir, database_url=url, mqtt_port=port)
    steps: list[Step] = []
    with Registry.open(settings) as registry:
        devices = _enroll(registry, DEVICES[pick])
        options = IngestOptions(group=f"bench-{secrets.token_hex(4)}", client_id="bench-hub")
        service = IngestService(registry, settings, options=options)
        service.start()
        try:
            if not service.wait_ready(30):
                raise RuntimeError(f"the ingest service did not subscribe on port {port}")
            for n, rate in enumerate(STEPS[pick]):
                step = _step(service, port, devices, rate, f"s{n}", pick)
                steps.append(step)
                log(
                    f"ingest: {url.split(':', 1)[0]} offered {rate}/s: achieved "
                    f"{step.achieved:,.0f}/s, drained "
                    f"{'-' if step.drained_s is None else f'{step.drained_s:.1f} s'}, "
                    f"max queue {step.max_queue}, lost {step.lost}"
                )
                if not step.sustained:
                    break
        finally:
            service.stop(timeout=30.0, leave=True)
        stats = service.stats()
        log(f"ingest: final stats {stats}")
        if stats["duplicates"] or stats["malformed"] or stats["unknown_device"]:
            raise RuntimeError(f"ingest stored something unexpected: {stats}")
    return steps


def _step(service: Any, port: int, devices: list[str], rate: int, boot_id: str, pick: int) -> Step:
    before = service.stats()["stored"]
    duration = STEP_S[pick]
    per_process = [devices[n::PUBLISHERS] for n in range(PUBLISHERS)]
    publishers = [
        _spawn(port, chunk, rate / PUBLISHERS, duration, f"{boot_id}-{n}")
        for n, chunk in enumerate(per_process)
    ]
    max_queue = 0
    try:
        while any(p.poll() is None for p in publishers):
            max_queue = max(max_queue, service.stats()["queue_depth"])
            time.sleep(0.25)
        reports = [_report(p) for p in publishers]
    finally:
        for process in publishers:
            if process.poll() is None:
                process.kill()
                process.wait()
    published = sum(r["acked"] for r in reports)
    achieved = published / max(r["send_s"] for r in reports)

    def stored() -> int:
        return int(service.stats()["stored"]) - before

    drained = _wait(lambda: stored() >= published, DRAIN_S[pick])
    if drained is None:  # not sustained; but is anything lost?
        _wait(lambda: stored() >= published, LOSS_WAIT_S)
    return Step(rate, published, achieved, drained, max_queue, max(published - stored(), 0))


def _spawn(
    port: int, devices: list[str], rate: float, duration: float, boot_id: str
) -> subprocess.Popen[str]:
    spec = {
        "port": port,
        "fleet": "bench",
        "devices": devices,
        "boot_id": boot_id,
        "rate": rate,
        "duration_s": duration,
        "connections": CONNECTIONS,
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "bench._ingest_load", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def _report(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=120)
    if process.returncode != 0 or not out.strip():
        raise RuntimeError(f"a load generator failed (exit status {process.returncode})")
    return dict(json.loads(out.strip().splitlines()[-1]))


def _wait(predicate: Any, timeout: float) -> float | None:
    """Seconds until ``predicate()`` held, or None if it did not within ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            return None
        time.sleep(0.05)
    return time.monotonic() - start


def _best(steps: list[Step]) -> float:
    return max((s.achieved for s in steps if s.sustained), default=0.0)


def _enroll(registry: Any, count: int) -> list[str]:
    """``count`` devices in fleet "bench", created in one transaction (not what is timed)."""
    from cloud_hub.registry import devices, fleets

    registry.create_fleet("bench")
    with registry.db.transaction() as session:
        fleet = fleets.fleet_row(session, "bench")
        return [
            devices.create_device(
                session,
                fleet,
                hostname=f"sim-{n}",
                profile="raspberry-pi-5",
                hardware=None,
                agent_version="bench",
                public_key_pem=None,
                now=registry.now(),
            ).id
            for n in range(count)
        ]


@contextmanager
def _database(backend: str, work: Path) -> Iterator[str | None]:
    """A SQLite file, or a PostgreSQL database created for the run and dropped after
    (None, said on stderr, when the server cannot be reached)."""
    if backend == "sqlite":
        yield f"sqlite:///{work / 'bench.db'}"
        return
    import psycopg
    from psycopg import sql

    name = f"edgeloop_bench_ingest_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        log(f"ingest: PostgreSQL at {ADMIN_URL} unusable, skipped: {str(exc).strip()}")
        yield None
        return
    try:
        base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
