"""Builds the daemon's offload cascade from ``[offload]`` (docs/cascade.md).

The cascade offloads hard inputs to any Open Inference Protocol v2 server: over gRPC
(``grpc://host:port`` or ``host:port``) or HTTP (``http://host:port[/path]``). With
``send_credentials`` and an enrolled identity, each call carries the device credential
(``authorization: Bearer <secret>``, ``x-edgeloop-device: <id>``); on a device that has
not enrolled it goes without.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..config import OffloadSection
from ..identity import Identity

if TYPE_CHECKING:
    from ..offload.cascade import Cascade, OffloadRecorder

__all__ = ["new_cascade"]

_LOG = logging.getLogger(__name__)


def new_cascade(
    section: OffloadSection,
    *,
    local_model: str,
    identity: Identity | None,
    recorder: OffloadRecorder | None,
) -> Cascade | None:
    """The cascade ``section`` asks for, or None when offloading is off (no url)."""
    if section.url is None:
        return None
    from ..enroll import device_metadata
    from ..offload.address import parse_address
    from ..offload.breaker import CircuitBreaker
    from ..offload.budget import Budget
    from ..offload.cascade import Cascade
    from ..offload.client import OffloadClient
    from ..offload.http_client import HttpOffloadClient
    from ..offload.scores import Policy

    metadata: tuple[tuple[str, str], ...] = ()
    if section.send_credentials and identity is not None:
        metadata = device_metadata(identity)
    elif section.send_credentials:
        _LOG.info("offload: no device credential to send (the device has not enrolled)")
    model = section.model or local_model
    http = parse_address(section.url).scheme == "http"
    kind = HttpOffloadClient if http else OffloadClient
    client = kind(section.url, model, section.version, metadata=metadata)

    def on_change(state: str) -> None:
        log = _LOG.warning if state == "open" else _LOG.info
        log("offload: circuit breaker %s", state)
        if recorder is not None:
            recorder.set_breaker(state)

    cascade = Cascade(
        client,
        Policy(section.score, section.threshold),
        deadline_s=section.deadline_ms / 1000.0,
        breaker=CircuitBreaker(
            section.breaker_failures, section.breaker_cooldown_s, on_change=on_change
        ),
        budget=Budget(section.max_per_second, section.max_bytes_per_minute),
        recorder=recorder,
        send_edge_answer=section.send_edge_answer,
    )
    _LOG.info(
        "offload: %s confidence below %g goes to model %s at %s://%s (deadline %d ms)",
        section.score,
        section.threshold,
        model,
        "http" if http else "grpc",
        client.target,
        section.deadline_ms,
    )
    return cascade
