"""`alarmcentre keys rotate`: every door code encrypted again with a new key, nothing lost, the old
key kept apart for old backups; with ALARMCENTRE_ACCESS_KEY, the NEW,OLD roll."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select

from alarmcentre.clients.access import AccessCipher, ClientAccess, load_cipher, set_access_info
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.runtime import Database
from alarmcentre.users.models import Role
from alarmcentre.users.service import create_user
from tests.factories import make_client

CODES = ["Door 4711", "Key safe 0815 behind the mailbox", "Spare key with the neighbour, flat 3"]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alarmcentre.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def _store_codes(db: Database, cipher: MultiFernet) -> None:
    with transaction(db.sessions) as session:
        user = create_user(session, username="sup", password="night-shift-1", role=Role.SUPERVISOR)
        for code in CODES:
            set_access_info(session, cipher, client=make_client(session), text=code, user=user)


def _decrypt_all(db: Database, cipher: MultiFernet) -> list[str]:
    with db.sessions() as session:
        rows = session.scalars(select(ClientAccess).order_by(ClientAccess.client_id))
        return [cipher.decrypt(row.ciphertext.encode()).decode() for row in rows]


def test_rotating_the_key_file_keeps_every_code_and_retires_the_old_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'a.sqlite3'}")
    db = Database.open(settings)
    running = AccessCipher(settings)  # a centre that is running during the rotation
    _store_codes(db, running.get())
    old_key = (tmp_path / "access.key").read_text().strip()

    done = _cli("keys", "rotate", "--data-dir", str(tmp_path), "--database-url", settings.database_url or "")
    assert done.returncode == 0, done.stderr
    assert "3 access records" in done.stdout and old_key not in done.stdout + done.stderr

    new_key = (tmp_path / "access.key").read_text().strip()
    assert new_key != old_key and "\n" not in new_key
    assert stat.S_IMODE((tmp_path / "access.key").stat().st_mode) == 0o600
    (retired,) = tmp_path.glob("access.key.retired-*")
    assert retired.read_text().strip() == old_key and stat.S_IMODE(retired.stat().st_mode) == 0o600
    assert _decrypt_all(db, load_cipher(settings)) == CODES
    try:
        _decrypt_all(db, MultiFernet([Fernet(old_key.encode())]))
        raise AssertionError("the old key still reads the records")
    except InvalidToken:
        pass
    assert _decrypt_all(db, running.get()) == CODES, "a running centre must follow the new key file"
    db.engine.dispose()


def test_rotating_with_the_setting_needs_new_then_old_and_keeps_every_code(tmp_path: Path) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    url = f"sqlite:///{tmp_path / 'b.sqlite3'}"
    db = Database.open(Settings(data_dir=tmp_path, database_url=url))
    _store_codes(db, load_cipher(Settings(access_key=old)))

    where = ("--data-dir", str(tmp_path), "--database-url", url)
    refused = _cli("keys", "rotate", *where, env={"ALARMCENTRE_ACCESS_KEY": new})
    assert refused.returncode == 2 and "NEW,OLD" in refused.stderr
    wrong = _cli("keys", "rotate", *where,
                 env={"ALARMCENTRE_ACCESS_KEY": f"{new},{Fernet.generate_key().decode()}"})
    assert wrong.returncode == 2 and "nothing was changed" in wrong.stderr
    assert _decrypt_all(db, load_cipher(Settings(access_key=old))) == CODES

    done = _cli("keys", "rotate", *where, env={"ALARMCENTRE_ACCESS_KEY": f"{new},{old}"})
    assert done.returncode == 0, done.stderr
    assert _decrypt_all(db, load_cipher(Settings(access_key=new))) == CODES
    assert not (tmp_path / "access.key").exists(), "with the setting, no key file is written"
    db.engine.dispose()
