"""Alembic environment: runs migrations on the connection or URL that alarmcentre.migrate gives it."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import alarmcentre.models  # noqa: F401  (registers every table on Base.metadata)
from alarmcentre.config import get_settings
from alarmcentre.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url()
    engine = make_engine(url)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported; run `alarmcentre db upgrade`")
run_migrations_online()
