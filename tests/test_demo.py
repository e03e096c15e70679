"""`alarmcentre demo` seeds known passwords: only into a database of its own (security gap 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.demo import DEMO_USERS, NotADemoDatabase, seed_demo
from alarmcentre.runtime import Database
from alarmcentre.users.models import User
from tests.factories import count_rows, make_client


def test_the_demo_seeds_a_new_database_and_its_own_again(sqlite_db: Database) -> None:
    assert seed_demo(sqlite_db.sessions, devices=2) == ["DEMO-0001", "DEMO-0002"]
    assert seed_demo(sqlite_db.sessions, devices=3) == ["DEMO-0001", "DEMO-0002", "DEMO-0003"]
    assert count_rows(sqlite_db, User) == len(DEMO_USERS)


def test_the_demo_refuses_a_database_with_clients_it_did_not_make_and_writes_nothing(sqlite_db: Database) -> None:
    with transaction(sqlite_db.sessions) as session:
        make_client(session, name="Real Person")
    with pytest.raises(NotADemoDatabase, match="holds clients that the demo did not make"):
        seed_demo(sqlite_db.sessions, devices=2)
    with sqlite_db.sessions() as session:
        assert session.scalars(select(User.username)).all() == [], "no demo login may be left behind"


def test_alarmcentre_demo_on_a_real_data_directory_stops_before_starting_anything(tmp_path: Path) -> None:
    db = Database.open(Settings(data_dir=tmp_path))
    with transaction(db.sessions) as session:
        make_client(session, name="Real Person")
    db.engine.dispose()
    env = {**os.environ, "ALARMCENTRE_DATA_DIR": str(tmp_path)}
    env.pop("ALARMCENTRE_DATABASE_URL", None)
    run = subprocess.run([sys.executable, "-m", "alarmcentre.cli", "demo"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "holds clients that the demo did not make" in run.stderr
    assert not (tmp_path / "broker").exists() or not any((tmp_path / "broker").iterdir()), "a broker was started"


def test_the_banner_names_the_simulator_by_a_path_that_works_without_an_activated_virtualenv(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from alarmcentre.runtime import installed_command

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the virtualenv's bin/ not on PATH, as after scripts/demo
    command = installed_command("alarmcentre-sim")
    assert Path(command).is_absolute() and Path(command).exists()
    monkeypatch.setenv("PATH", f"{Path(command).parent}:/usr/bin")  # activated: the bare name works
    assert installed_command("alarmcentre-sim") == "alarmcentre-sim"
    assert installed_command("no-such-command") == "no-such-command"
