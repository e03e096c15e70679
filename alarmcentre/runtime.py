"""Putting the parts together: database, broker, ingest, scheduler, API, in one process or several."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import migrate
from alarmcentre.config import Settings
from alarmcentre.db import make_engine, make_sessionmaker, transaction
from alarmcentre.health import HealthChecks, database_check, ingest_checks
from alarmcentre.users import service as users

log = logging.getLogger("alarmcentre")

CENTRE_MQTT_USER = "alarmcentre"


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Routine chatter (every job run, every HTTP request, ten lines per text sent) would bury what
    # operators must see. SQLAlchemy keeps its own loggers at WARNING: at INFO it would print rows,
    # that is names, phone numbers and addresses (no log line may carry personal data: tests/test_logs.py).
    for noisy in ("apscheduler", "uvicorn.access", "twilio.http_client", "pika"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


@dataclass
class Database:
    engine: Engine
    sessions: sessionmaker[Session]

    @classmethod
    def open(cls, settings: Settings, *, upgrade: bool = True) -> Database:
        url = settings.resolved_database_url()
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only from the first byte: names, addresses and medical notes live here. SQLite
            # gives its -wal and -shm files the database file's permissions.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        engine = make_engine(url)
        if upgrade:
            migrate.upgrade(engine)
        db = cls(engine, make_sessionmaker(engine))
        if settings.admin_user and settings.admin_password:
            with transaction(db.sessions) as session:
                users.ensure_admin(session, username=settings.admin_user, password=settings.admin_password)
        return db


@dataclass
class BrokerCredentials:
    """Passwords of the embedded broker's users, kept in the data directory across restarts: the
    centre's login and one per device (username = serial; the simulator reads the same file with
    `--credentials`)."""

    passwords: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def path(data_dir: Path) -> Path:
        return data_dir / "broker" / "credentials.json"

    @classmethod
    def load_or_create(cls, data_dir: Path, *, also: tuple[str, ...] = ()) -> BrokerCredentials:
        """`also`: device logins (the canary, simulated devices) added to an existing file when missing."""
        path = cls.path(data_dir)
        passwords = json.loads(path.read_text()) if path.exists() else {}
        wanted = (CENTRE_MQTT_USER, *also)
        if any(user not in passwords for user in wanted):
            for user in wanted:
                passwords.setdefault(user, secrets.token_urlsafe(18))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(passwords))
            path.chmod(0o600)
        return cls(passwords)

    def url(self, user: str, host: str, port: int) -> str:
        return f"mqtt://{quote(user)}:{quote(self.passwords[user])}@{host}:{port}"

    def devices(self) -> dict[str, str]:
        """Every device login: serial -> password."""
        return {user: pw for user, pw in self.passwords.items() if user != CENTRE_MQTT_USER}


def start_metrics_server(settings: Settings, checks: HealthChecks) -> None:
    """/metrics, /healthz and /readyz for a process that has no API of its own (standalone ingest or
    scheduler), on settings.metrics_port (0: none)."""
    if settings.metrics_port:
        from alarmcentre.health import start_http_server

        start_http_server(settings.api_host, settings.metrics_port, checks)
        log.info("metrics, /healthz and /readyz on http://%s:%d", settings.api_host, settings.metrics_port)


class Centre:
    """Every part in one process (what `alarmcentre up` runs): broker unless external, ingest,
    scheduler, and the API app (served by the caller). start() and stop() are safe to call once each."""

    def __init__(self, settings: Settings, *, device_logins: tuple[str, ...] = ()) -> None:
        """`device_logins`: serials that get a broker login of their own on the embedded broker
        (the demo's simulated devices)."""
        self.settings = settings
        self.db: Database | None = None
        self.mqtt_url: str | None = settings.mqtt_url
        self.device_logins = device_logins
        # On the embedded broker: where devices connect, and their passwords by serial. Each device
        # logs in as its serial, and the broker binds its client id to that name.
        self.device_address: str | None = None
        self.device_passwords: dict[str, str] = {}
        self.broker: Any = None
        self.consumer: Any = None
        self.app: Any = None
        self.publisher: Any = None
        self.dc09: Any = None  # the SIA DC-09 receiver (docs/dc09.md); .port is where panels connect
        self.scaip: Any = None  # the SCAIP receiver (docs/scaip.md); .port is where devices send
        # Readiness checks of every part; a part added later (the canary) adds its own with one call.
        self.health = HealthChecks()
        self._stack: list[tuple[str, Any]] = []

    def start(self) -> Centre:
        from alarmcentre.app import create_app
        from alarmcentre.devices.publisher import ConfigPublisher
        from alarmcentre.ingest.consumer import build_ingest
        from alarmcentre.scheduler import build_scheduler, readiness_check

        settings = self.settings
        self.db = db = Database.open(settings)
        self._stack.append(("database", db.engine.dispose))
        if not self.mqtt_url:
            from alarmcentre.broker import BrokerUser, start_embedded_broker

            creds = BrokerCredentials.load_or_create(settings.data_dir,
                                                     also=(settings.canary_serial, *self.device_logins))
            self.broker = start_embedded_broker(
                kind=settings.broker, data_dir=(settings.data_dir / "broker").resolve(), port=settings.broker_port,
                users=[BrokerUser(name, password) for name, password in creds.passwords.items()],
            )
            self._stack.append(("broker", self.broker.stop))
            # The centre on its own listener, which no device login opens (docs/brokers.md).
            self.mqtt_url = creds.url(CENTRE_MQTT_USER, self.broker.host, self.broker.centre_port)
            self.device_address = f"mqtt://{self.broker.host}:{self.broker.port}"
            self.device_passwords = creds.devices()
            if not settings.canary_mqtt_url:  # the canary device logs in like any device
                canary_url = creds.url(settings.canary_serial, self.broker.host, self.broker.port)
                self.settings = settings = settings.model_copy(update={"canary_mqtt_url": canary_url})

        self.consumer = consumer = build_ingest(settings, db.sessions, mqtt_url=self.mqtt_url)
        consumer.start()
        self._stack.append(("ingest", consumer.stop))
        # The centre's own login publishes device configurations (retained, QoS 1).
        self.publisher = publisher = ConfigPublisher(self.mqtt_url, timeout_s=settings.config_publish_timeout_s)
        self._stack.append(("config publisher", publisher.close))
        scheduler = build_scheduler(db.sessions, settings=settings, publisher=publisher)
        scheduler.start()
        self._stack.append(("scheduler", lambda: scheduler.shutdown(wait=False)))
        self._start_receivers(db)
        self.health.add("database", database_check(db.sessions))
        for name, check in ingest_checks(consumer, max_lag_s=settings.readiness_ingest_lag_s).items():
            self.health.add(name, check)
        self.health.add("scheduler", readiness_check(scheduler, max_age_s=settings.readiness_scheduler_lag_s))
        self.app = create_app(settings=settings, session_factory=db.sessions, config_publisher=publisher,
                              health_checks=self.health)
        return self

    def _start_receivers(self, db: Database) -> None:
        """The DC-09 and SCAIP receivers on their configured ports, or on free ones when another process holds
        those (the banner says which)."""
        from alarmcentre.clients.access import AccessCipher
        from alarmcentre.receivers.dc09 import Dc09Receiver
        from alarmcentre.receivers.dc09_server import dc09_server
        from alarmcentre.receivers.scaip import ScaipReceiver
        from alarmcentre.receivers.scaip_server import scaip_server
        from alarmcentre.receivers.server import BackgroundReceiver, port_is_free

        settings = self.settings
        cipher = AccessCipher(settings).get

        def start(name: str, host: str, port: int, make: Any) -> BackgroundReceiver:
            if port and not port_is_free(host, port):
                log.warning("%s: port %d is taken; the receiver takes a free port (see the banner)", name, port)
                port = 0
            receiver = BackgroundReceiver(make(host=host, port=port)).start()
            self._stack.append((f"{name} receiver", receiver.stop))
            return receiver

        self.dc09 = start("dc09", settings.dc09_host, settings.dc09_port, lambda **where: dc09_server(
            Dc09Receiver(db.sessions, settings=settings, cipher=cipher), **where))
        self.scaip = start("scaip", settings.scaip_host, settings.scaip_port, lambda **where: scaip_server(
            ScaipReceiver(db.sessions, settings=settings, cipher=cipher), **where))

    def device_url(self, serial: str) -> str:
        """The embedded broker's URL with one device's own login."""
        assert self.broker is not None, "device logins exist on the embedded broker only"
        password = self.device_passwords[serial]
        return f"mqtt://{quote(serial)}:{quote(password)}@{self.broker.host}:{self.broker.port}"

    def on_stop(self, name: str, stop: Any) -> None:
        self._stack.append((name, stop))

    def stop(self) -> None:
        while self._stack:
            name, stop = self._stack.pop()
            try:
                stop()
            except Exception:
                log.exception("stopping %s failed", name)


def installed_command(name: str) -> str:
    """How to type one of the package's commands: its path beside this interpreter (a virtualenv's bin/,
    not on PATH unless activated), or the bare name when it is not there."""
    beside = Path(sys.executable).parent / name
    if beside.exists() and shutil.which(name) != str(beside):
        return str(beside)
    return name


def run_all_in_one(settings: Settings, *, demo: bool = False, demo_devices: int = 0, press_rate: float = 0.0) -> int:
    """`alarmcentre up` / `demo`: every part in this process, stopped together on Ctrl-C."""
    import uvicorn

    serials: list[str] = []
    if demo:
        # Seeded before the ingest and scheduler start: on SQLite their commits could otherwise
        # collide with the seeding transaction ("database is locked").
        from alarmcentre.clients.access import load_cipher
        from alarmcentre.demo import seed_demo

        seeding = Database.open(settings)
        try:
            serials = seed_demo(seeding.sessions, devices=demo_devices, access_cipher=load_cipher(settings))
        finally:
            seeding.engine.dispose()
    centre = Centre(settings, device_logins=tuple(serials) if not settings.mqtt_url else ())
    try:
        centre.start()
        assert centre.db is not None and centre.mqtt_url is not None
        if demo and centre.device_address is None:
            log.warning("the demo's simulated devices run only on the embedded broker; with ALARMCENTRE_MQTT_URL "
                        "provision them (`alarmcentre devices provision`) and run alarmcentre-sim")
        elif demo:
            from alarmcentre.demo import start_demo_fleet

            if not centre.consumer.wait_connected(15):
                log.error("the ingest did not connect to the broker within 15 s; the simulator starts anyway")
            fleet = start_demo_fleet(centre.device_address, centre.device_passwords, serials, press_rate=press_rate)
            centre.on_stop("simulator", fleet.stop)
        base = f"http://{settings.api_host}:{settings.api_port}"
        sim = installed_command("alarmcentre-sim")
        lines = [f"alarmcentre {'demo ' if demo else ''}is starting",
                 f"  dashboard:  {base}/", f"  API docs:   {base}/docs", f"  metrics:    {base}/metrics",
                 f"  health:     {base}/healthz (alive), {base}/readyz (every part working)",
                 f"  database:   {make_url(settings.resolved_database_url()).render_as_string(hide_password=True)}"]
        if centre.dc09 is not None:
            lines.append(f"  DC-09 panels: tcp and udp {settings.dc09_host}:{centre.dc09.port} "
                         "(accounts: alarmcentre devices dc09)")
            if demo:
                from alarmcentre.demo import DEMO_DC09_ACCOUNT

                lines.append(f"    a DC-09 alarm: {sim} dc09 {DEMO_DC09_ACCOUNT} --port {centre.dc09.port}")
        if centre.scaip is not None:
            lines.append(f"  SCAIP devices: SIP over tcp and udp {settings.scaip_host}:{centre.scaip.port} "
                         "(identities: alarmcentre devices scaip)")
            if demo:
                from alarmcentre.demo import DEMO_SCAIP_CID

                lines.append(f"    a SCAIP alarm: {sim} scaip {DEMO_SCAIP_CID} --port {centre.scaip.port}")
        if centre.device_address:
            creds = BrokerCredentials.path(settings.data_dir)
            lines.append(f"  devices connect to: {centre.device_address}, each as its serial "
                         f"(passwords in {creds})")
            lines.append(f"  simulator:  {sim} press DEMO-0001 --url {centre.device_address} "
                         f"--credentials {creds}")
        if demo:
            from alarmcentre.demo import DEMO_USERS

            lines.append("  demo logins: " + ", ".join(f"{u} / {p}" for u, p, _ in DEMO_USERS))
        elif not (settings.admin_user and settings.admin_password):
            lines.append("  no admin configured: set ALARMCENTRE_ADMIN_USER and ALARMCENTRE_ADMIN_PASSWORD, "
                         "or run `alarmcentre users create NAME --role admin`")
        print("\n".join(lines), flush=True)
        uvicorn.run(centre.app, host=settings.api_host, port=settings.api_port, log_config=None)
    finally:
        centre.stop()
    return 0
