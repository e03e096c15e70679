"""Shared fixtures: real databases (SQLite file, PostgreSQL) and a real Mosquitto per test.

PostgreSQL and Mosquitto are required in CI (CI=true or ALARMCENTRE_REQUIRE_SERVICES=1): a test
that needs one fails there when it is missing. On a laptop without them those tests skip,
saying what is missing.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import time_machine

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


_missing: dict[str, int] = {}  # what was missing, and how many tests skipped for it


def missing_service(what: str) -> None:
    """Fail in CI, skip elsewhere, always saying what is missing."""
    if services_required():
        pytest.fail(f"{what} (required in CI)", pytrace=False)
    _missing[what] = _missing.get(what, 0) + 1
    pytest.skip(f"{what}; set up PostgreSQL/Mosquitto or see README 'Tests'")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per missing service at the end, where nobody can miss it: a green run that skipped the
    database tested much less than it seems."""
    for what, skipped in _missing.items():
        terminalreporter.write_line(f"NOT TESTED: {skipped} tests skipped because {what} "
                                    "(README 'Tests' says how to get it)", red=True, bold=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.02,
               explain: Callable[[], str] | None = None) -> float:
    """Seconds it took, or fail after `timeout` (a bound that catches hangs, not a speed test), saying
    what `explain` finds."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s" + (f": {explain()}" if explain else ""))
        time.sleep(step)
    return time.monotonic() - start


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


# -- the day the tests run on ----------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clock-at", metavar="TIME",
        help="run with this process's system clock moved to TIME (ISO 8601 with a zone; it then ticks on), "
             "so that a test depending on the day it runs fails today rather than later. Processes the tests "
             "start keep the true clock: tests marked needs_true_clock are left out.")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_true_clock: runs alarmcentre processes beside the test, whose clocks --clock-at cannot move")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--clock-at"):
        keep = [item for item in items if item.get_closest_marker("needs_true_clock") is None]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.fixture(autouse=True, scope="session")
def _moved_system_clock(request: pytest.FixtureRequest) -> Iterator[None]:
    at = request.config.getoption("--clock-at")
    if not at:
        yield
        return
    moment = datetime.fromisoformat(at)
    if moment.tzinfo is None:
        raise pytest.UsageError("--clock-at needs a time zone, e.g. 2028-03-26T00:55:00+00:00")
    with time_machine.travel(moment, tick=True):
        yield


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


def migrated_database(url: str) -> Database:
    """The schema applied to the PostgreSQL database at `url` (dispose its engine when done)."""
    engine = make_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    upgrade(engine)
    return Database(engine, make_sessionmaker(engine))


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[Database]:
    db = migrated_database(postgres_url)
    yield db
    db.engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest) -> Database:
    """The same test on both databases the project supports."""
    return request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "postgres_db")


# -- Mosquitto, with the repository's own configuration ----------------------------------

# Lines of the shipped config that a test broker replaces: its listeners and logins (one anonymous
# listener instead; `sealed_mosquitto` keeps them), ports, paths.
_TEST_OVERRIDES = ("listener", "port", "persistence_location", "password_file", "acl_file", "log_dest",
                   "allow_anonymous", "pid_file", "user", "per_listener_settings", "use_username_as_clientid")


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


def _mosquitto_workdir(tmp_path: Path, name: str) -> Path:
    if shutil.which("mosquitto") is None:
        missing_service("no mosquitto binary on PATH (Debian: apt-get install mosquitto)")
    workdir = tmp_path / name
    workdir.mkdir()
    return workdir


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    workdir = _mosquitto_workdir(tmp_path, "mosquitto")
    port = free_port()
    broker = MosquittoProcess(port, mosquitto_config(workdir, port), workdir)
    broker.start()
    yield broker
    broker.stop()


@dataclass
class SealedMosquitto:
    """The shipped configuration as it is (both listeners, logins, ACLs, bound client ids), on free
    ports: `device_port` for devices, `centre_port` for the centre's login."""

    process: MosquittoProcess
    device_port: int
    centre_port: int
    centre_password: str
    device_passwords: dict[str, str]

    def centre_url(self) -> str:
        return f"mqtt://alarmcentre:{self.centre_password}@127.0.0.1:{self.centre_port}"


SEALED_DEVICES = ("SEAL-1", "SEAL-2", "HOSTILE-1")


@pytest.fixture
def sealed_mosquitto(tmp_path: Path) -> Iterator[SealedMosquitto]:
    from alarmcentre.broker import BrokerUser
    from alarmcentre.broker.mosquitto import write_password_file

    workdir = _mosquitto_workdir(tmp_path, "sealed-mosquitto")
    device_port, centre_port = free_port(), free_port()
    devices = {serial: f"pw-{serial.lower()}" for serial in SEALED_DEVICES}
    write_password_file(workdir / "passwords", [BrokerUser(u, p) for u, p in devices.items()], mosquitto_passwd=None)
    write_password_file(workdir / "centre-passwords", [BrokerUser("alarmcentre", "centre-pw")], mosquitto_passwd=None)
    for name in ("acl", "centre-acl"):
        shutil.copy(MOSQUITTO_CONF.parent / name, workdir / name)
    text = MOSQUITTO_CONF.read_text()
    ports = {"1883": device_port, "1884": centre_port}
    text = re.sub(r"^listener (1883|1884)\s*$", lambda m: f"listener {ports[m[1]]} 127.0.0.1", text, flags=re.M)
    assert text.count("127.0.0.1") == 2, "the shipped configuration no longer has listeners 1883 and 1884"
    text = text.replace("/mosquitto/config/", f"{workdir}/").replace("/mosquitto/data/", f"{workdir}/")
    text = re.sub(r"^log_dest .*$", "log_dest stderr", text, flags=re.M) + "\nuser root\n"
    conf = workdir / "mosquitto.conf"
    conf.write_text(text)
    broker = MosquittoProcess(device_port, conf, workdir)
    broker.start()
    assert wait_for_port(centre_port)
    yield SealedMosquitto(broker, device_port, centre_port, "centre-pw", devices)
    broker.stop()


# -- a PostgreSQL server of the test's own, to stop and start --------------------------


def _postgres_bin() -> Path:
    """Where initdb and pg_ctl are: ALARMCENTRE_TEST_PG_BIN, else Debian's newest, else the PATH's."""
    if os.environ.get("ALARMCENTRE_TEST_PG_BIN"):
        return Path(os.environ["ALARMCENTRE_TEST_PG_BIN"])
    debian = [path for path in Path("/usr/lib/postgresql").glob("*/bin") if path.parent.name.isdigit()]
    if debian:
        return max(debian, key=lambda path: int(path.parent.name))
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _postgres_bin()


@dataclass
class PostgresCluster:
    """A private PostgreSQL server (initdb into a temp dir) that a test may stop and start.

    Other tests run against the machine's shared server at the same time: never stop that one."""

    directory: Path  # owned by the user the server runs as; holds data, socket and log
    port: int
    user: str | None = None  # run the server as this user (we are root), else as ourselves

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if self.user is not None:
            command = (["runuser", "-u", self.user, "--", *argv] if shutil.which("runuser")
                       else ["su", self.user, "-s", "/bin/sh", "-c", shlex.join(argv)])
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"), *args)

    def initdb(self) -> None:
        result = self._run(str(PG_BIN / "initdb"), "-D", str(self.directory / "data"), "-U", "postgres",
                           "--auth=trust", "-E", "UTF8", "--no-sync")
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        result = self._pg_ctl("-w", "-t", "30", "-l", str(self.directory / "postgres.log"), "-o", options, "start")
        if result.returncode != 0:
            raise RuntimeError(f"private PostgreSQL did not start: {result.stderr}\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        result = self._pg_ctl("-w", "-t", "30", "-m", mode, "stop")
        if result.returncode != 0:
            raise RuntimeError(f"private PostgreSQL did not stop: {result.stderr}\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self._pg_ctl("status").returncode == 0

    def log_tail(self) -> str:
        log = self.directory / "postgres.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def create_database(self) -> str:
        name = f"alarmcentre_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    """A running private cluster for the session; a test that stops it must start it again."""
    if not (PG_BIN / "initdb").exists():
        missing_service(f"no PostgreSQL server binaries in {PG_BIN} (Debian: apt-get install postgresql; "
                        "or set ALARMCENTRE_TEST_PG_BIN)")
    as_root = os.geteuid() == 0
    if as_root:
        # initdb refuses to run as root: run the server as the postgres user, in a directory it owns
        # (pytest's temp dirs are private to root, so not under them).
        try:
            server_user = pwd.getpwnam("postgres")
        except KeyError:
            missing_service("running as root and there is no 'postgres' user to run a private PostgreSQL as")
        directory = Path(tempfile.mkdtemp(prefix="alarmcentre-pg-"))
        os.chown(directory, server_user.pw_uid, server_user.pw_gid)
    else:
        directory = tmp_path_factory.mktemp("private-postgres")
    cluster = PostgresCluster(directory, free_port(), "postgres" if as_root else None)
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        if cluster.running:
            cluster.stop("immediate")
        if as_root:
            shutil.rmtree(directory, ignore_errors=True)


# -- `alarmcentre` processes, as production runs them ------------------------------------


def start_alarmcentre(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`alarmcentre COMMAND` as its own process, with `env` over ours; its log appends to `log`."""
    return subprocess.Popen([sys.executable, "-m", "alarmcentre.cli", command], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))  # noqa: SIM115


def ingest_subscribed(log: Path) -> bool:
    """The ingest made its persistent sessions and subscriptions, both lanes (before a burst, or it misses it)."""
    return log.exists() and log.read_text().count("ingest: subscribed as") >= 2


@dataclass
class CentreProcess:
    """One `alarmcentre` process that a test starts, kills (SIGKILL) and starts again."""

    command: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> CentreProcess:
        self.process = start_alarmcentre(self.command, self.env, self.log)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        """SIGTERM and wait: the process finishes what it holds (SIGKILL if it hangs)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
