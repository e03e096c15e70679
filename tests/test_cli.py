"""The `alarmcentre` command as a user meets it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session

from alarmcentre.users.models import Role, User
from alarmcentre.users.service import authenticate


def cli(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alarmcentre.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_help_lists_every_command() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("up", "demo", "api", "ingest", "scheduler", "db", "users"):
        assert command in result.stdout


def test_db_upgrade_and_users_create(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    assert cli("db", "upgrade", "--database-url", url).returncode == 0
    assert cli("db", "upgrade", "--database-url", url).returncode == 0, "upgrade must be safe to repeat"
    assert {"clients", "devices", "incidents", "device_events"} <= set(inspect(create_engine(url)).get_table_names())

    made = cli("users", "create", "night-op", "--role", "operator", "--password-stdin", "--database-url", url,
               stdin="correct horse battery\n")
    assert made.returncode == 0, made.stderr
    with Session(create_engine(url)) as session:
        user = session.scalars(select(User)).one()
        assert user.role == Role.OPERATOR and user.password_hash.startswith("$argon2id$")
        assert authenticate(session, username="night-op", password="correct horse battery") is not None

    again = cli("users", "create", "night-op", "--role", "admin", "--password-stdin", "--database-url", url,
                stdin="another password\n")
    assert again.returncode == 2 and "exists already" in again.stderr
    short = cli("users", "create", "x", "--role", "admin", "--password-stdin", "--database-url", url, stdin="short\n")
    assert short.returncode == 2 and "at least" in short.stderr


def test_ingest_without_a_broker_says_what_is_missing(tmp_path: Path) -> None:
    result = cli("ingest", "--database-url", f"sqlite:///{tmp_path / 'x.sqlite3'}", "--metrics-port", "0")
    assert result.returncode == 2 and "--mqtt-url" in result.stderr


def test_embedded_broker_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("up", "--data-dir", str(tmp_path / "data"), "--broker-port", str(port), "--port", "0")
    assert result.returncode != 0
    assert str(port) in result.stderr and "Traceback" not in result.stderr
