"""A :class:`Database`: one engine, its session factory and the hub's transaction pattern.

Sessions are made with ``expire_on_commit=False``: objects read in a transaction keep
their loaded values after it commits, so services can hand them (or views built from them)
back to callers without a second round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import Unavailable
from .engine import create_engine, describe_url


class Database:
    """The hub's handle on its database. Thread-safe; one per process is the norm.

    ``with db.transaction() as session:`` commits when the block ends and rolls back when
    it raises. :meth:`close` releases every pooled connection.
    """

    def __init__(self, url: str | URL, *, echo: bool = False) -> None:
        self.engine: Engine = create_engine(url, echo=echo)
        self.url = self.engine.url
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def backend(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    def describe(self) -> str:
        """The URL with its password hidden."""
        return describe_url(self.url)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: commit on success, roll back on error."""
        with self.sessions.begin() as session:
            yield session

    def check_connection(self) -> None:
        """Raise :class:`~cloud_hub.errors.Unavailable` unless the database answers."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise Unavailable(f"cannot reach the database {self.describe()}: {reason}") from exc

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
