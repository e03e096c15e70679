"""Shared fixtures: real databases (SQLite file, PostgreSQL) and a real Mosquitto per test.

PostgreSQL and Mosquitto are required in CI (CI=true or ALARMCENTRE_REQUIRE_SERVICES=1): a test
that needs one fails there when it is missing. On a laptop without them those tests skip,
saying what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from alarmcentre import clock
from alarmcentre.db import make_engine, make_sessionmaker
from alarmcentre.migrate import upgrade
from alarmcentre.runtime import Database

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO_CONF = Path(
    os.environ.get("ALARMCENTRE_TEST_MOSQUITTO_CONF", REPO / "config" / "mosquitto" / "mosquitto.conf")
)
POSTGRES_ADMIN_URL = os.environ.get("ALARMCENTRE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def services_required() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("ALARMCENTRE_REQUIRE_SERVICES") == "1"


def missing_service(what: str) -> None:
    """Fail in CI, skip elsewhere, always saying what is missing."""
    if services_required():
        pytest.fail(f"{what} (required in CI)", pytrace=False)
    pytest.skip(f"{what}; set up PostgreSQL/Mosquitto or see README 'Tests'")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture(autouse=True)
def _system_clock() -> Iterator[None]:
    yield
    clock.set_clock(None)


# -- databases ---------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    engine = make_engine(f"sqlite:///{tmp_path / 'test.sqlite3'}")
    upgrade(engine)
    yield Database(engine, make_sessionmaker(engine))
    engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    name = f"alarmcentre_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        missing_service(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}".strip())
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[Database]:
    engine = make_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    upgrade(engine)
    yield Database(engine, make_sessionmaker(engine))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest) -> Database:
    """The same test on both databases the project supports."""
    return request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "postgres_db")


# -- Mosquitto, with the repository's own configuration ----------------------------------

# Lines of the shipped config that a test broker replaces (ports, paths, auth files).
_TEST_OVERRIDES = ("listener", "port", "persistence_location", "password_file", "acl_file", "log_dest",
                   "allow_anonymous", "pid_file", "user")


@dataclass
class MosquittoProcess:
    port: int
    conf: Path
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=open(self.workdir / "mosquitto.log", "ab"))  # noqa: SIM115
        if not wait_for_port(self.port):
            self.stop()
            raise RuntimeError("mosquitto did not start: " + (self.workdir / "mosquitto.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def mosquitto_config(workdir: Path, port: int) -> Path:
    """The shipped config, with this test's port and directories (anonymous: tests skip the ACL)."""
    shipped = MOSQUITTO_CONF.read_text()
    kept = [line for line in shipped.splitlines()
            if not re.match(rf"^\s*({'|'.join(_TEST_OVERRIDES)})\b", line)]
    kept += [f"listener {port} 127.0.0.1", "allow_anonymous true",
             f"persistence_location {workdir}/", "log_dest stderr",
             "user root"]  # as root, mosquitto would switch to its own user and lose the tmp dir
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(kept) + "\n")
    return conf


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    if shutil.which("mosquitto") is None:
        missing_service("no mosquitto binary on PATH (Debian: apt-get install mosquitto)")
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    port = free_port()
    broker = MosquittoProcess(port, mosquitto_config(workdir, port), workdir)
    broker.start()
    yield broker
    broker.stop()
