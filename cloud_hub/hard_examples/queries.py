"""Reading hard examples back: list (newest first, paged by id), count, export as .npz.

Each function takes a session, like the registry's per-concept modules; the
:class:`~cloud_hub.registry.Registry` exposes them, each in a transaction of its own
(``registry.list_hard_examples(...)``). Filters are a fleet name (NotFound when there is no
such fleet) and a model name. ``before`` pages: pass the smallest id of one page to get the
next (older) one.

An export holds the newest ``limit`` examples that kept their inputs, oldest first, as an
uncompressed .npz (no pickles) with, for ``n`` examples:

    x_<input name>  the input, the examples stacked on the first axis
    id              int64, the examples' ids
    cloud_label     int64, the cloud's label (-1: none); cloud_score float32 (NaN: none)
    edge_label      int64, the edge's label (-1: none); edge_score float32 (NaN: none)
    agreed          int8, 1 when both labels agree, 0 when not, -1 when one is missing
    device_id, model_version, edge_version   strings ('' for none)
    received_at     float64, seconds since the Unix epoch (UTC)

Examples of one model only, with the same input names and shapes: anything else is
refused with InvalidRequest (filter by model). An example whose inputs are not one
sample each (a batched request the hub could not split) is left out and counted.
"""

from __future__ import annotations

import dataclasses
import io
import math
import zipfile
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db import models as orm
from ..errors import InvalidRequest, NotFound
from .answers import decode_inputs

MAX_LIST = 1000
MAX_EXPORT = 100_000
_BATCH = 256


@dataclass(frozen=True)
class HardExample:
    """One stored hard example, without its inputs (a frozen view, like the registry's)."""

    id: int
    fleet: str
    device_id: str
    model: str
    model_version: str
    received_at: datetime
    has_inputs: bool
    input_bytes: int
    cloud_label: int | None
    cloud_score: float | None
    edge_label: int | None
    edge_score: float | None
    edge_version: str | None
    agreed: bool | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``received_at`` as ISO 8601 with its UTC offset."""
        plain = dataclasses.asdict(self)
        plain["received_at"] = self.received_at.isoformat()
        return plain


@dataclass(frozen=True)
class Export:
    """An export: the .npz bytes and what they hold."""

    data: bytes
    count: int
    skipped: int  # examples left out: their inputs were not one sample each
    model: str | None
    input_names: tuple[str, ...]


def list_hard_examples(
    session: Session,
    *,
    fleet: str | None = None,
    model: str | None = None,
    limit: int = 100,
    before: int | None = None,
) -> list[HardExample]:
    """The newest ``limit`` examples matching the filters (ids below ``before``)."""
    _check_range("limit", limit, 1, MAX_LIST)
    t = orm.HardExample
    query = select(*(getattr(t, c) for c in _COLUMNS), orm.Fleet.name, t.inputs.is_not(None)).join(
        orm.Fleet, orm.Fleet.id == t.fleet_id
    )
    query = _filtered(session, query, fleet, model, before)
    rows = session.execute(query.order_by(t.id.desc()).limit(limit)).all()
    return [_view(row) for row in rows]


def count_hard_examples(
    session: Session, *, fleet: str | None = None, model: str | None = None
) -> int:
    query = _filtered(session, select(func.count()).select_from(orm.HardExample), fleet, model)
    return int(session.scalar(query) or 0)


def export_npz(
    session: Session,
    *,
    fleet: str | None = None,
    model: str | None = None,
    limit: int = 10_000,
    before: int | None = None,
) -> Export:
    """The newest ``limit`` examples with inputs as an .npz (see the module docstring)."""
    _check_range("limit", limit, 1, MAX_EXPORT)
    t = orm.HardExample
    columns = (t.id, t.model, t.device_id, t.model_version, t.received_at, t.inputs)
    answers = (t.cloud_label, t.cloud_score, t.edge_label, t.edge_score, t.edge_version, t.agreed)
    stack = _Stack()
    query = _filtered(session, select(*columns, *answers), fleet, model, before)
    query = query.where(t.inputs.is_not(None)).order_by(t.id.desc()).limit(limit)
    for row in session.execute(query).yield_per(_BATCH):
        stack.add(row)
    return stack.export()


_COLUMNS = (
    "id",
    "device_id",
    "model",
    "model_version",
    "received_at",
    "input_bytes",
    "cloud_label",
    "cloud_score",
    "edge_label",
    "edge_score",
    "edge_version",
    "agreed",
)


class _Stack:
    """Rows (newest first) gathered into the export's arrays."""

    def __init__(self) -> None:
        self.model: str | None = None
        self.names: tuple[str, ...] = ()
        self.shapes: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
        self.x: dict[str, list[np.ndarray]] = {}
        self.columns: dict[str, list[Any]] = {key: [] for key in _EXPORT_COLUMNS}
        self.skipped = 0

    def add(self, row: Any) -> None:
        if self.model is None:
            self.model = row.model
        elif row.model != self.model:
            raise InvalidRequest(
                f"the examples are of more than one model ({self.model}, {row.model}): "
                "export one model at a time"
            )
        inputs = decode_inputs(row.inputs)
        if not inputs or any(a.ndim == 0 or a.shape[0] != 1 for a in inputs.values()):
            self.skipped += 1
            return
        shapes = {name: (a.shape[1:], a.dtype) for name, a in inputs.items()}
        if not self.names:
            self.names, self.shapes = tuple(sorted(inputs)), shapes
            self.x = {name: [] for name in self.names}
        elif shapes != self.shapes:
            raise InvalidRequest(
                f"example {row.id} has inputs {_describe(shapes)}, unlike the newer ones "
                f"{_describe(self.shapes)}: export one model version at a time"
            )
        for name in self.names:
            self.x[name].append(inputs[name])
        c = self.columns
        c["id"].append(row.id)
        c["device_id"].append(row.device_id)
        c["model_version"].append(row.model_version)
        c["edge_version"].append(row.edge_version or "")
        c["received_at"].append(row.received_at.timestamp())
        c["cloud_label"].append(-1 if row.cloud_label is None else row.cloud_label)
        c["cloud_score"].append(math.nan if row.cloud_score is None else row.cloud_score)
        c["edge_label"].append(-1 if row.edge_label is None else row.edge_label)
        c["edge_score"].append(math.nan if row.edge_score is None else row.edge_score)
        c["agreed"].append(-1 if row.agreed is None else int(row.agreed))

    def export(self) -> Export:
        arrays: dict[str, np.ndarray] = {}
        for name in self.names:
            arrays[f"x_{name}"] = np.concatenate(self.x[name][::-1], axis=0)
        for key, dtype in _EXPORT_COLUMNS.items():
            values = self.columns[key][::-1]
            arrays[key] = np.asarray(values, dtype=dtype) if values else np.zeros(0, dtype)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for key, value in arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, value, allow_pickle=False)
        count = len(self.columns["id"])
        return Export(buffer.getvalue(), count, self.skipped, self.model, self.names)


_EXPORT_COLUMNS: dict[str, Any] = {
    "id": np.int64,
    "cloud_label": np.int64,
    "cloud_score": np.float32,
    "edge_label": np.int64,
    "edge_score": np.float32,
    "agreed": np.int8,
    "device_id": np.str_,
    "model_version": np.str_,
    "edge_version": np.str_,
    "received_at": np.float64,
}


def _filtered(
    session: Session,
    query: Any,
    fleet: str | None,
    model: str | None,
    before: int | None = None,
) -> Any:
    t = orm.HardExample
    if fleet is not None:
        fleet_id = session.scalar(select(orm.Fleet.id).where(orm.Fleet.name == fleet))
        if fleet_id is None:
            raise NotFound(f"fleet {fleet!r} does not exist")
        query = query.where(t.fleet_id == fleet_id)
    if model is not None:
        query = query.where(t.model == model)
    if before is not None:
        _check_range("before", before, 1, 2**63 - 1)
        query = query.where(t.id < before)
    return query


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be from {low} to {high}, not {value}")


def _describe(shapes: dict[str, tuple[tuple[int, ...], Any]]) -> str:
    return ", ".join(f"{n}{list(s)}:{d}" for n, (s, d) in sorted(shapes.items())) or "none"


def _view(row: Any) -> HardExample:
    values = dict(zip(_COLUMNS, row[: len(_COLUMNS)], strict=True))
    return HardExample(fleet=row[len(_COLUMNS)], has_inputs=bool(row[-1]), **values)
