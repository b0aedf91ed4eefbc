"""The model registry: named models, their versions per format, each with artifact and card.

A version is identified by (model name, version, format), e.g. ``("digits-edge", "3",
"onnx-int8")``; its artifact is content-addressed (:mod:`.artifacts`) and its model card
(:mod:`edge_agent.model_card`) is kept as JSON. Registering the same name, version and
format again with the same bytes returns the existing version; with other bytes it is a
:class:`~cloud_hub.errors.Conflict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import models as orm
from ..errors import Conflict, InvalidRequest, NotFound
from . import _checks
from ._view import View
from .artifacts import StoredFile, record_artifact

MAX_CARD_BYTES = 256 * 1024


@dataclass(frozen=True)
class ModelVersion(View):
    id: int
    model: str
    version: str
    format: str
    sha256: str
    size: int
    filename: str
    card: dict[str, Any] | None
    created_at: datetime


def register_model_version(
    session: Session,
    name: str,
    *,
    version: str,
    format: str,
    stored: StoredFile,
    filename: str,
    card: Mapping[str, Any] | None,
    now: datetime,
) -> ModelVersion:
    """Record a version whose artifact is already in the store as ``stored``."""
    _checks.name("model name", name, 128)
    _checks.version(version)
    _checks.model_format(format)
    _checks.text("filename", filename, 255, required=True)
    checked_card = _check_card(card, stored) if card is not None else None
    model = session.scalar(select(orm.Model).where(orm.Model.name == name))
    if model is None:
        model = orm.Model(name=name, created_at=now)
        session.add(model)
    else:
        existing = session.scalar(
            select(orm.ModelVersion).where(
                orm.ModelVersion.model_id == model.id,
                orm.ModelVersion.version == version,
                orm.ModelVersion.format == format,
            )
        )
        if existing is not None:
            if existing.artifact_sha256 == stored.sha256:
                return view(existing)
            raise Conflict(
                f"model {name} version {version} ({format}) is already registered with "
                f"other bytes (sha256 {existing.artifact_sha256}); give it a new version"
            )
    artifact = record_artifact(session, stored, now=now)
    row = orm.ModelVersion(
        model=model,
        version=version,
        format=format,
        artifact=artifact,
        artifact_sha256=artifact.sha256,
        filename=filename,
        card=checked_card,
        created_at=now,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:  # the same version registered at the same moment
        raise Conflict(
            f"model {name} version {version} ({format}) was registered concurrently; try again"
        ) from exc
    return view(row)


def list_model_versions(session: Session, *, name: str | None = None) -> list[ModelVersion]:
    """Every registered version, by model name then registration time."""
    query = (
        select(orm.ModelVersion)
        .join(orm.ModelVersion.model)
        .order_by(orm.Model.name, orm.ModelVersion.created_at, orm.ModelVersion.id)
    )
    if name is not None:
        if session.scalar(select(orm.Model.id).where(orm.Model.name == name)) is None:
            raise NotFound(f"model {name!r} does not exist")
        query = query.where(orm.Model.name == name)
    return [view(row) for row in session.scalars(query)]


def get_model_version(session: Session, name: str, version: str, format: str) -> ModelVersion:
    row = session.scalar(
        select(orm.ModelVersion)
        .join(orm.ModelVersion.model)
        .where(
            orm.Model.name == name,
            orm.ModelVersion.version == version,
            orm.ModelVersion.format == format,
        )
    )
    if row is None:
        raise NotFound(f"model {name} version {version} ({format}) does not exist")
    return view(row)


def _check_card(card: Mapping[str, Any], stored: StoredFile) -> dict[str, Any]:
    checked = _checks.json_object("model card", card, MAX_CARD_BYTES)
    claimed = checked.get("sha256")
    if claimed is not None and claimed != stored.sha256:
        raise InvalidRequest(
            f"the model card is for sha256 {claimed}, but the artifact's is {stored.sha256} "
            "(wrong card, or the file changed after the card was written)"
        )
    size = checked.get("bytes")
    if isinstance(size, int) and size != stored.size:
        raise InvalidRequest(
            f"the model card says {size} bytes, but the artifact has {stored.size}"
        )
    return checked


def view(row: orm.ModelVersion) -> ModelVersion:
    return ModelVersion(
        id=row.id,
        model=row.model.name,
        version=row.version,
        format=row.format,
        sha256=row.artifact_sha256,
        size=row.artifact.size,
        filename=row.filename,
        card=dict(row.card) if row.card is not None else None,
        created_at=row.created_at,
    )
