"""The offload server's core: the one object both transports (HTTP, gRPC) call.

It knows nothing of sockets or protobuf: it authenticates a caller from its headers or
metadata, resolves a model, holds declared inputs against the model before anything is
decoded (:mod:`.guards`), runs decoded inputs through the model's batcher, counts every
outcome in the metrics, and hands each answered device request to the hard-example sink.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from edge_agent import __version__ as _agent_version
from edge_agent.server.codec import BINARY_EXTENSION

from ..errors import HubError, InvalidRequest
from .auth import Caller, OffloadAuthenticator
from .errors import ModelUnloaded, status_for
from .guards import Declared, check_declared
from .metrics import OffloadMetrics
from .pool import LoadedModel, ModelPool
from .sink import EDGE_PARAMETERS, HardExampleSink, OffloadedInput

__all__ = ["SERVER_NAME", "OffloadService", "edge_answer"]

_LOG = logging.getLogger(__name__)

SERVER_NAME = "edgeloop-hub"
#: Request parameter (Triton's) giving the request's timeout in microseconds.
TIMEOUT_PARAMETER = "timeout"
_EDGE_TYPES: dict[str, tuple[type, ...]] = {
    "edgeloop_edge_label": (int,),
    "edgeloop_edge_score": (float, int),
    "edgeloop_edge_version": (str,),
    "edgeloop_edge_labels": (str,),
    "edgeloop_edge_scores": (str,),
}
#: The per-row lists: how each item is read, and how long the string may be.
_EDGE_LISTS: dict[str, type[int] | type[float]] = {"labels": int, "scores": float}
MAX_EDGE_LIST_CHARS = 64 * 1024


class OffloadService:
    """Models, auth, guards, batching, metrics and the sink, behind one surface."""

    def __init__(
        self,
        pool: ModelPool,
        auth: OffloadAuthenticator,
        metrics: OffloadMetrics,
        *,
        max_request_bytes: int,
        sink: HardExampleSink | None = None,
    ) -> None:
        self.pool = pool
        self.auth = auth
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.sink = sink
        self.stopping = False

    # -- server ----------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": _agent_version, "extensions": [BINARY_EXTENSION]}

    @property
    def ready(self) -> bool:
        return not self.stopping

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Caller:
        """The caller, or the refusal (counted) as :class:`HubError`."""
        try:
            return self.auth.check(metadata)
        except HubError as exc:
            self.metrics.reject(status_for(exc).reason)
            raise

    # -- models ----------------------------------------------------------------------------

    def model(self, name: str, version: str | None) -> LoadedModel:
        """The loaded model; NotFound (counted) when there is no such model or version."""
        try:
            return self.pool.get(name, version)
        except HubError as exc:
            self.metrics.reject(status_for(exc).reason)
            raise

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = self.model(name, version)
        return model.metadata(self.pool.versions(name))

    def check(self, model: LoadedModel, declared: Sequence[Declared]) -> None:
        """The guards (counted as ``invalid`` when they refuse)."""
        try:
            check_declared(declared, model.specs, self.max_request_bytes)
        except HubError:
            model.metrics.reject("invalid")
            raise

    # -- inference -------------------------------------------------------------------------

    def infer(
        self,
        caller: Caller,
        model: LoadedModel,
        inputs: dict[str, np.ndarray],
        parameters: Mapping[str, Any] | None = None,
        deadline: float | None = None,
    ) -> tuple[LoadedModel, dict[str, np.ndarray]]:
        """Run ``inputs`` (already checked and decoded); the model that ran and its outputs.

        ``deadline`` is on :func:`time.monotonic`. Raises the errors of :mod:`.errors`.
        """
        received = datetime.now(timezone.utc)
        start = time.monotonic()
        try:
            edge = edge_answer(parameters or {})
        except HubError:
            model.metrics.reject("invalid")
            raise
        try:
            outputs = model.batcher.infer(inputs, deadline)
        except ModelUnloaded:  # evicted as the request came in: once more, freshly loaded
            model = self.model(model.name, model.version)
            outputs = self._run(model, inputs, deadline)
        except HubError as exc:
            self._refused(model, exc)
            raise
        model.metrics.request.observe(time.monotonic() - start)
        model.metrics.answered.inc()
        if caller.kind == "device" and self.sink is not None:
            self._record(caller, model, inputs, outputs, edge, received)
        return model, outputs

    def _run(
        self, model: LoadedModel, inputs: dict[str, np.ndarray], deadline: float | None
    ) -> dict[str, np.ndarray]:
        try:
            return model.batcher.infer(inputs, deadline)
        except HubError as exc:
            self._refused(model, exc)
            raise

    def _refused(self, model: LoadedModel, exc: HubError) -> None:
        reason = status_for(exc).reason
        if reason not in ("deadline", "failed"):  # the batcher counted those itself
            model.metrics.reject(reason)

    def _record(
        self,
        caller: Caller,
        model: LoadedModel,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        edge: dict[str, Any] | None,
        received: datetime,
    ) -> None:
        assert self.sink is not None
        example = OffloadedInput(
            device_id=caller.device_id,
            model=model.name,
            version=model.version,
            inputs=inputs,
            outputs=outputs,
            edge_answer=edge,
            received_at=received,
        )
        try:
            self.sink.submit(example)
        except Exception:  # the sink's trouble never fails an answered request
            _LOG.exception("hard-example sink refused an input from %s", caller.device_id)


def edge_answer(parameters: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the agent answered itself, from the ``edgeloop_edge_*`` request parameters."""
    found: dict[str, Any] = {}
    for parameter, key in EDGE_PARAMETERS.items():
        if parameter not in parameters:
            continue
        value = parameters[parameter]
        kinds = _EDGE_TYPES[parameter]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise InvalidRequest(
                f"parameter {parameter!r}: expected {' or '.join(k.__name__ for k in kinds)}, "
                f"got {value!r}"
            )
        checked: Any = value  # of one of ``kinds`` now
        if key in _EDGE_LISTS:
            found[key] = _edge_list(parameter, checked, _EDGE_LISTS[key])
        elif key == "score":
            found[key] = float(checked)
        else:
            found[key] = checked
    return found or None


def _edge_list(parameter: str, text: str, kind: type[int] | type[float]) -> list[Any]:
    """``"3,7,1"`` as ``[3, 7, 1]`` (or floats); InvalidRequest naming the bad item."""
    if len(text) > MAX_EDGE_LIST_CHARS:
        raise InvalidRequest(f"parameter {parameter!r} is over {MAX_EDGE_LIST_CHARS} characters")
    values: list[Any] = []
    for index, item in enumerate(text.split(",")):
        try:
            values.append(kind(item.strip()))
        except ValueError:
            raise InvalidRequest(
                f"parameter {parameter!r}: item {index} ({item[:20]!r}) is not "
                f"{'an integer' if kind is int else 'a number'}; send comma-separated values"
            ) from None
    return values


def deadline_from(parameters: Mapping[str, Any], now: float) -> float | None:
    """The monotonic deadline a request's ``timeout`` parameter (microseconds) sets."""
    raw = parameters.get(TIMEOUT_PARAMETER)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise InvalidRequest(f"parameter 'timeout': microseconds as an integer, got {raw!r}")
    return now + raw / 1e6 if raw else None
