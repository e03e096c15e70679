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


def test_a_device_provisioned_for_the_embedded_broker_logs_in_and_is_heard(tmp_path: Path) -> None:
    import json
    import re
    import time
    from datetime import UTC, datetime

    import paho.mqtt.client as mqtt

    from alarmcentre.config import Settings
    from alarmcentre.devices.models import Device, DeviceEvent
    from alarmcentre.runtime import Centre
    from tests.conftest import free_port

    data = tmp_path / "data"
    made = cli("devices", "provision", "PROV-1", "--embedded", "--data-dir", str(data),
               "--password-file", str(tmp_path / "passwords"), "--acl-file", str(tmp_path / "acl"))
    assert made.returncode == 0, made.stderr
    password = re.search(r"^password: (\S+)$", made.stdout, re.M)
    assert password is not None
    centre = Centre(Settings(data_dir=data, broker="mosquitto", broker_port=free_port(), mqtt_url=None,
                             metrics_port=0)).start()
    try:
        assert centre.db is not None and centre.consumer.wait_connected(15)
        device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="PROV-1")
        device.username_pw_set("PROV-1", password.group(1))
        device.connect("127.0.0.1", centre.broker.port)
        device.loop_start()
        try:
            payload = json.dumps({"seq": 1, "ts": datetime.now(UTC).isoformat(), "type": "heartbeat"})
            info = device.publish("alarmcentre/v1/devices/PROV-1/events", payload, qos=1)
            info.wait_for_publish(timeout=10)
            assert info.is_published(), "the embedded broker did not take the provisioned device's message"
        finally:
            device.loop_stop()
            device.disconnect()
        deadline = time.monotonic() + 10
        while True:
            with centre.db.sessions() as session:
                heard = session.scalar(select(DeviceEvent).join(Device, Device.id == DeviceEvent.device_id)
                                       .where(Device.serial == "PROV-1"))
            if heard is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert heard is not None, "the provisioned device's heartbeat never reached the database"
    finally:
        centre.stop()


def test_the_start_banner_shows_no_password(tmp_path: Path, postgres_url: str) -> None:
    """`alarmcentre up` prints where everything is, never a password: not the database's, not a broker login's."""
    import json
    import time

    from tests.conftest import free_port

    url = postgres_url.replace("postgres@", "postgres:db-secret-pw@", 1)  # trust auth ignores it
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "alarmcentre.cli", "up", "--data-dir", str(data),
                             "--database-url", url, "--broker-port", str(free_port()), "--port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        banner: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("simulator:" in line for line in banner):
            line = proc.stdout.readline()
            if not line:
                break
            banner.append(line)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    text = "".join(banner)
    assert "database:" in text and "***" in text, text + err
    secrets = ["db-secret-pw", *json.loads((data / "broker" / "credentials.json").read_text()).values()]
    for secret in secrets:
        assert secret not in text and secret not in err


def test_production_refuses_settings_that_are_only_safe_for_a_demo(tmp_path: Path) -> None:
    import os

    from cryptography.fernet import Fernet

    from alarmcentre.config import Settings

    env = {**os.environ, "ALARMCENTRE_ENV": "production"}
    for name in [k for k in env if k.startswith("ALARMCENTRE_") and k != "ALARMCENTRE_ENV"]:
        del env[name]
    for command in ("up", "demo", "api", "scheduler"):
        refused = subprocess.run([sys.executable, "-m", "alarmcentre.cli", command, "--data-dir", str(tmp_path)],
                                 capture_output=True, text=True, timeout=60, env=env)
        assert refused.returncode == 2, (command, refused.stderr)
        for words in ("PostgreSQL", "ALARMCENTRE_ACCESS_KEY", "SECURE_COOKIES"):
            assert words in refused.stderr, (command, refused.stderr)
        assert ("embedded broker" in refused.stderr) == (command in ("up", "demo"))
        assert ("seeds known passwords" in refused.stderr) == (command == "demo")
    assert not (tmp_path / "access.key").exists() and not list(tmp_path.glob("*.sqlite3")), "refused before anything"

    safe = Settings(env="production", database_url="postgresql://alarmcentre:long-and-random@db/alarmcentre",
                    mqtt_url="mqtt://alarmcentre:pw@broker:1884", access_key=Fernet.generate_key().decode(),
                    secure_cookies=True)
    assert safe.production_problems(command="up") == []
    default_pw = safe.model_copy(update={"database_url": "postgresql://alarmcentre:alarmcentre@db/alarmcentre"})
    assert any("default" in p for p in default_pw.production_problems(command="api"))
    assert Settings(env="development").production_problems(command="demo") == []


def test_revoking_a_device_removes_its_login_from_the_password_file_and_the_embedded_broker(tmp_path: Path) -> None:
    import json

    data, passwords = tmp_path / "data", tmp_path / "passwords"
    for serial in ("LOST-1", "KEPT-1"):
        made = cli("devices", "provision", serial, "--embedded", "--data-dir", str(data),
                   "--password-file", str(passwords), "--acl-file", str(tmp_path / "acl"))
        assert made.returncode == 0, made.stderr
    revoked = cli("devices", "revoke", "LOST-1", "--embedded", "--data-dir", str(data),
                  "--password-file", str(passwords))
    assert revoked.returncode == 0, revoked.stderr
    assert "SIGHUP" in revoked.stdout and "retired" in revoked.stdout
    assert [line.split(":")[0] for line in passwords.read_text().splitlines()] == ["KEPT-1"]
    logins = json.loads((data / "broker" / "credentials.json").read_text())
    assert "LOST-1" not in logins and "KEPT-1" in logins
    assert (passwords.stat().st_mode & 0o077) == 0, "the password file must stay owner-only"
