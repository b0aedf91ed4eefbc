""":class:`Rollouts`: what the CLI and the REST API call; one transaction per call."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from ..registry import Registry
from . import store
from .store import Rollout

DEFAULT_CANARY_PCT = 10.0
DEFAULT_WAVES_PCT = (25.0, 50.0, 100.0)
DEFAULT_SOAK = timedelta(minutes=10)
DEFAULT_PROBATION = timedelta(minutes=10)


class Rollouts:
    """Rollouts over a registry's database, on the registry's clock."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def push(
        self,
        model: str,
        version: str,
        *,
        fleet: str,
        format: str | None = None,
        devices: Sequence[str] | None = None,
        canary_pct: float = DEFAULT_CANARY_PCT,
        waves_pct: Sequence[float] = DEFAULT_WAVES_PCT,
        soak: timedelta = DEFAULT_SOAK,
        probation: timedelta = DEFAULT_PROBATION,
        gates: Sequence[str] = (),
        failure_tolerance: float = 0.0,
    ) -> Rollout:
        """Start a rollout (see :func:`.store.create_rollout` for the checks)."""
        with self.registry.db.transaction() as session:
            return store.create_rollout(
                session,
                fleet=fleet,
                model=model,
                version=version,
                format=format,
                device_ids=devices,
                canary_pct=canary_pct,
                waves_pct=waves_pct,
                soak=soak,
                probation=probation,
                gates=gates,
                failure_tolerance=failure_tolerance,
                now=self.registry.now(),
            )

    def get(self, rollout_id: str) -> Rollout:
        with self.registry.db.transaction() as session:
            return store.get_rollout(session, rollout_id)

    def list(self, *, fleet: str | None = None, state: str | None = None) -> list[Rollout]:
        with self.registry.db.transaction() as session:
            return store.list_rollouts(session, fleet=fleet, state=state)

    def pause(self, rollout_id: str) -> Rollout:
        with self.registry.db.transaction() as session:
            return store.pause(session, rollout_id, now=self.registry.now())

    def resume(self, rollout_id: str) -> Rollout:
        with self.registry.db.transaction() as session:
            return store.resume(session, rollout_id, now=self.registry.now())

    def abort(self, rollout_id: str, *, reason: str | None = None) -> Rollout:
        with self.registry.db.transaction() as session:
            return store.abort(session, rollout_id, now=self.registry.now(), reason=reason)
