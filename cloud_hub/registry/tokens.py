"""Enrollment tokens: expiring, counted, revocable tickets that enroll devices in a fleet.

A token is shown once, as ``elt_<id>_<secret>``; the hub stores the id and the secret's
hash. Redeeming one counts a use with a single conditional UPDATE (``... WHERE uses_count
< uses_allowed AND revoked_at IS NULL AND expires_at > now``), so devices enrolling at the
same moment can never use a token more often than it allows, on SQLite or PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from ..db import models as orm
from ..errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from . import _checks
from ._secret import (
    compose_token,
    hash_secret,
    new_id,
    new_secret,
    secret_matches,
    split_token,
    token_id_of,
)
from ._view import View
from .fleets import fleet_row

PREFIX = "elt"
MAX_TTL = timedelta(days=365)
MAX_USES = 1_000_000
_INVALID = "enrollment token is not valid (unknown, mistyped or not an enrollment token)"


@dataclass(frozen=True)
class EnrollmentToken(View):
    """What the hub knows about a token; never the secret."""

    id: str
    fleet: str
    expires_at: datetime
    uses_allowed: int
    uses_count: int
    revoked_at: datetime | None
    created_at: datetime

    def state(self, now: datetime) -> str:
        """``revoked``, ``expired``, ``used-up`` or ``active``, the first that applies."""
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if self.uses_count >= self.uses_allowed:
            return "used-up"
        return "active"


@dataclass(frozen=True)
class IssuedToken:
    """A token just made: ``token`` is the only time its secret is ever available."""

    token: str
    info: EnrollmentToken


def create_enrollment_token(
    session: Session, fleet: str, *, ttl: timedelta, uses: int, now: datetime
) -> IssuedToken:
    if not timedelta(0) < ttl <= MAX_TTL:
        raise InvalidRequest(f"ttl {ttl} must be more than 0s and at most {MAX_TTL.days} days")
    _checks.positive("uses", uses, MAX_USES)
    secret = new_secret()
    row = orm.EnrollmentToken(
        id=new_id(),
        fleet=fleet_row(session, fleet),
        token_hash=hash_secret(secret),
        expires_at=now + ttl,
        uses_allowed=uses,
        uses_count=0,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return IssuedToken(token=compose_token(PREFIX, row.id, secret), info=view(row))


def list_enrollment_tokens(session: Session, *, fleet: str | None = None) -> list[EnrollmentToken]:
    query = select(orm.EnrollmentToken).order_by(orm.EnrollmentToken.created_at)
    if fleet is not None:
        query = query.where(orm.EnrollmentToken.fleet_id == fleet_row(session, fleet).id)
    return [view(row) for row in session.scalars(query)]


def revoke_enrollment_token(session: Session, token_id: str, *, now: datetime) -> EnrollmentToken:
    """Revoke by id (or by the whole token); revoking twice keeps the first time."""
    row = _row(session, token_id)
    if row.revoked_at is None:
        row.revoked_at = now
        session.flush()
    return view(row)


def claim_enrollment_token(session: Session, token: str, *, now: datetime) -> orm.EnrollmentToken:
    """Check ``token`` and count one use of it, atomically; returns the token's row.

    Unknown and wrong tokens are :class:`Unauthorized`; revoked, expired and used-up ones
    are :class:`Forbidden` and say which. The use counts only if the caller's transaction
    commits, so a failed enrollment gives its use back.
    """
    parts = split_token(token, PREFIX) if isinstance(token, str) else None
    row = session.get(orm.EnrollmentToken, parts[0]) if parts else None
    if parts is None or row is None or not secret_matches(parts[1], row.token_hash):
        raise Unauthorized(_INVALID)
    _refuse_unless_active(view(row), now)
    claimed: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(orm.EnrollmentToken)
        .where(orm.EnrollmentToken.id == row.id)
        .where(orm.EnrollmentToken.revoked_at.is_(None))
        .where(orm.EnrollmentToken.expires_at > now)
        .where(orm.EnrollmentToken.uses_count < orm.EnrollmentToken.uses_allowed)
        .values(uses_count=orm.EnrollmentToken.uses_count + 1)
        .execution_options(synchronize_session=False)
    )
    session.refresh(row)
    if claimed.rowcount != 1:  # another enrollment took the last use (or a revoke landed)
        _refuse_unless_active(view(row), now)
        raise Forbidden(f"enrollment token {row.id} changed while it was being redeemed")
    return row


def _refuse_unless_active(info: EnrollmentToken, now: datetime) -> None:
    state = info.state(now)
    if state == "revoked":
        assert info.revoked_at is not None
        raise Forbidden(f"enrollment token {info.id} was revoked at {_when(info.revoked_at)}")
    if state == "expired":
        raise Forbidden(f"enrollment token {info.id} expired at {_when(info.expires_at)}")
    if state == "used-up":
        raise Forbidden(
            f"enrollment token {info.id} is used up ({info.uses_count} of {info.uses_allowed} uses)"
        )


def _row(session: Session, token_id: str) -> orm.EnrollmentToken:
    key = token_id_of(token_id, PREFIX)
    row = session.get(orm.EnrollmentToken, key)
    if row is None:
        raise NotFound(f"enrollment token {key!r} does not exist")
    return row


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def view(row: orm.EnrollmentToken) -> EnrollmentToken:
    return EnrollmentToken(
        id=row.id,
        fleet=row.fleet.name,
        expires_at=row.expires_at,
        uses_allowed=row.uses_allowed,
        uses_count=row.uses_count,
        revoked_at=row.revoked_at,
        created_at=row.created_at,
    )
