"""Operator tokens: the bearer tokens people and scripts use with the REST API.

Shown once as ``eop_<id>_<secret>``, stored as the id and the secret's hash; revocable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import models as orm
from ..errors import Forbidden, NotFound, Unauthorized
from . import _checks
from ._secret import compose_token, hash_secret, new_id, new_secret, secret_matches, split_token
from ._view import View

PREFIX = "eop"
_INVALID = "operator token is not valid (unknown, mistyped or not an operator token)"


@dataclass(frozen=True)
class OperatorToken(View):
    id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class IssuedOperatorToken:
    """A token just made: ``token`` is the only time its secret is ever available."""

    token: str
    info: OperatorToken


def create_operator_token(session: Session, name: str, *, now: datetime) -> IssuedOperatorToken:
    checked = _checks.text("operator token name", name, 128, required=True)
    assert checked is not None
    secret = new_secret()
    row = orm.OperatorToken(
        id=new_id(), name=checked, token_hash=hash_secret(secret), created_at=now
    )
    session.add(row)
    session.flush()
    return IssuedOperatorToken(token=compose_token(PREFIX, row.id, secret), info=view(row))


def list_operator_tokens(session: Session) -> list[OperatorToken]:
    query = select(orm.OperatorToken).order_by(orm.OperatorToken.created_at)
    return [view(row) for row in session.scalars(query)]


def revoke_operator_token(session: Session, token_id: str, *, now: datetime) -> OperatorToken:
    """Revoke by id (or by the whole token); revoking twice keeps the first time."""
    parts = split_token(token_id, PREFIX)
    key = parts[0] if parts else token_id.strip()
    row = session.get(orm.OperatorToken, key)
    if row is None:
        raise NotFound(f"operator token {key!r} does not exist")
    if row.revoked_at is None:
        row.revoked_at = now
        session.flush()
    return view(row)


def authenticate_operator(session: Session, token: str) -> OperatorToken:
    """The operator token ``token`` is.

    :class:`Unauthorized` if it is unknown or wrong; :class:`Forbidden` if it was revoked.
    """
    parts = split_token(token, PREFIX) if isinstance(token, str) else None
    row = session.get(orm.OperatorToken, parts[0]) if parts else None
    if parts is None or row is None or not secret_matches(parts[1], row.token_hash):
        raise Unauthorized(_INVALID)
    if row.revoked_at is not None:  # the right secret, but no longer allowed: Forbidden
        raise Forbidden(
            f"operator token {row.id} was revoked at {row.revoked_at.isoformat(timespec='seconds')}"
        )
    return view(row)


def view(row: orm.OperatorToken) -> OperatorToken:
    return OperatorToken(
        id=row.id, name=row.name, created_at=row.created_at, revoked_at=row.revoked_at
    )
