"""One load-generator process of ``bench.ingest``: simulated devices publishing telemetry.

Run as ``python -m bench._ingest_load SPEC_JSON``; prints one JSON line when done::

    {"sent": 30000, "acked": 30000, "send_s": 30.01}

SPEC: ``port``, ``fleet``, ``devices`` (ids), ``boot_id``, ``rate`` (messages/s over all
devices), ``duration_s``, ``connections``. Messages go round-robin over the devices (each
device's ``seq`` counts up from 1), spread over ``connections`` MQTT 5 clients (QoS 1),
paced in 5 ms ticks. The body is a real :class:`~edge_agent.telemetry.aggregate.Recorder`
window with system, model and spool figures, as the agent sends it (about 1.2 KB). The
process waits up to :data:`ACK_WAIT_S` for the broker's PUBACKs, then exits: it never
runs unbounded.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.telemetry.aggregate import Recorder
from edge_agent.telemetry.schema import SCHEMA_VERSION, encode

ACK_WAIT_S = 60.0
TICK_S = 0.005
MAX_INFLIGHT = 1_000


def sample_body(now: float, seed: int = 0) -> dict[str, Any]:
    """A realistic telemetry body: a 10 s window of 200 requests of an 8x8 digits model."""
    rng = np.random.default_rng(seed)
    recorder = Recorder(now - 10.0, seed=seed)
    for _ in range(200):
        probabilities = rng.dirichlet(np.ones(10) * 0.3)[None, :].astype(np.float32)
        image = rng.random((1, 8, 8, 1), dtype=np.float32)
        recorder.record(float(rng.gamma(2.0, 0.002)), True, probabilities, {"image": image})
    recorder.record(0.0, False)
    body = recorder.snapshot(now)
    body["system"] = {
        "cpu_pct": 23.5,
        "mem_pct": 41.2,
        "rss_bytes": 84_213_760,
        "disk_free_bytes": 12_884_901_888,
        "temps_c": {"cpu-thermal": 52.1, "gpu-thermal": 49.8},
        "throttled": False,
    }
    body["model"] = {
        "name": "digits-edge",
        "version": "7",
        "backend": "onnxruntime",
        "format": "onnx-int8",
    }
    body["spool"] = {"dropped": 0, "backlog": 0, "bytes": 0}
    return body


class _Acks:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0

    def on_publish(self, client: mqtt.Client, userdata: object, mid: int, *rest: object) -> None:
        with self.lock:
            self.count += 1


def main(spec: dict[str, Any]) -> dict[str, Any]:
    devices: list[str] = spec["devices"]
    fleet, boot_id = spec["fleet"], spec["boot_id"]
    rate, duration = float(spec["rate"]), float(spec["duration_s"])
    acks = _Acks()
    clients = [_client(spec["port"], f"{boot_id}-{n}", acks) for n in range(spec["connections"])]
    body = sample_body(time.time())
    topics = [f"edgeloop/v1/{fleet}/{device}/telemetry" for device in devices]
    total = int(rate * duration)
    sent = 0
    start = time.monotonic()
    try:
        while sent < total:
            due = min(total, int(rate * (time.monotonic() - start)) + 1)
            while sent < due:
                index = sent % len(devices)
                message = {
                    "schema": SCHEMA_VERSION,
                    "kind": "telemetry",
                    "device": devices[index],
                    "fleet": fleet,
                    "boot_id": boot_id,
                    "seq": sent // len(devices) + 1,
                    "ts": time.time(),
                    "historical": False,
                    **body,
                }
                clients[sent % len(clients)].publish(topics[index], encode(message), qos=1)
                sent += 1
            time.sleep(TICK_S)
        send_s = time.monotonic() - start
        deadline = time.monotonic() + ACK_WAIT_S
        while acks.count < sent and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
    return {"sent": sent, "acked": acks.count, "send_s": send_s}


def _client(port: int, client_id: str, acks: _Acks) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    client.on_publish = acks.on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))), flush=True)
