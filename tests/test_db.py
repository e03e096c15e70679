"""The database layer's promises, on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from alarmcentre.runtime import Database


def test_a_failed_transaction_with_savepoints_leaves_nothing(any_db: Database) -> None:
    """The ingest commits a batch as one transaction with a SAVEPOINT per message; on SQLite the
    driver's own transaction handling would commit each savepoint on its own."""
    with any_db.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch (x integer)")
    with pytest.raises(RuntimeError), any_db.sessions() as session, session.begin():
        for value in (1, 2):
            with session.begin_nested():
                session.execute(text("INSERT INTO scratch VALUES (:x)"), {"x": value})
        raise RuntimeError("the batch fails before its commit")
    with any_db.sessions() as session:
        assert session.execute(text("SELECT count(*) FROM scratch")).scalar() == 0


def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    import stat

    from alarmcentre.config import Settings
    from alarmcentre.runtime import Database

    db = Database.open(Settings(data_dir=tmp_path, database_url=None))
    try:
        with db.sessions() as session:
            session.execute(text("SELECT 1"))
        files = [p for p in tmp_path.iterdir() if p.name.startswith("alarmcentre.sqlite3")]
        assert files, list(tmp_path.iterdir())
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path.name, oct(path.stat().st_mode))
    finally:
        db.engine.dispose()
