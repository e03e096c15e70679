"""Engine, sessions and the declarative base shared by every domain's models."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so Alembic migrations read the same on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite (which keeps no zone) too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database: times are UTC and aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime}


# Execution option for a transaction that will write (Session.connection(execution_options=...)):
# on SQLite it takes the write lock when it begins; elsewhere it changes nothing.
SQLITE_IMMEDIATE = "sqlite_immediate"


def make_engine(url: str, **kwargs: Any) -> Engine:
    # Database errors are logged; their bound values would carry names, phone numbers and addresses.
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Python's sqlite3 opens transactions only before INSERT/UPDATE/DELETE, not before a
            # SAVEPOINT, so a batch of savepoints would commit message by message. Take over: no
            # implicit transactions, and an explicit BEGIN below (SQLAlchemy's documented recipe).
            dbapi_conn.isolation_level = None
            # WAL lets the API read while the ingest writes; FULL makes a commit survive power loss
            # (an acknowledged alarm must be on disk); foreign keys are off by default.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # A deferred transaction that read, then writes, fails at once ("database is locked", no
            # waiting) if another connection committed in between; one begun IMMEDIATE waits its turn.
            immediate = conn.get_execution_options().get(SQLITE_IMMEDIATE)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


LIKE_ESCAPE = "\\"


def contains_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, literally: its % and _ are no wildcards (use with
    `escape=LIKE_ESCAPE`). Serials often contain "_", and a search for "%" must not list everyone."""
    return "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"


@contextmanager
def transaction(factory: sessionmaker[Session], *, writes: bool = False) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error. `writes`: it reads, then writes;
    on SQLite it then takes the write lock first (BEGIN IMMEDIATE), so that a commit of another
    process part in between makes it wait instead of failing."""
    with factory() as session, session.begin():
        if writes:
            session.connection(execution_options={SQLITE_IMMEDIATE: True})
        yield session


def error_reason(exc: DBAPIError) -> str:
    """The database's own words for an error, first line only ("database is locked", "connection
    refused"), for a log line that says why. SQLAlchemy's text would add the statement."""
    text = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
