"""Putting the parts together: database, broker, ingest, scheduler, API, in one process or several."""

from __future__ import annotations

import json
import logging
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import migrate
from alarmcentre.config import Settings
from alarmcentre.db import make_engine, make_sessionmaker, transaction
from alarmcentre.users import service as users

log = logging.getLogger("alarmcentre")

CENTRE_MQTT_USER = "alarmcentre"
DEMO_DEVICE_MQTT_USER = "device"  # the embedded broker's shared login for simulated devices


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Routine chatter (every job run, every HTTP request) would bury what operators must see.
    for noisy in ("apscheduler", "uvicorn.access"):
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
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
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
    """Passwords of the embedded broker's users, kept in the data directory across restarts."""

    passwords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> BrokerCredentials:
        path = data_dir / "broker" / "credentials.json"
        if path.exists():
            return cls(json.loads(path.read_text()))
        path.parent.mkdir(parents=True, exist_ok=True)
        creds = cls({CENTRE_MQTT_USER: secrets.token_urlsafe(18), DEMO_DEVICE_MQTT_USER: secrets.token_urlsafe(18)})
        path.write_text(json.dumps(creds.passwords))
        path.chmod(0o600)
        return creds

    def url(self, user: str, host: str, port: int) -> str:
        return f"mqtt://{quote(user)}:{quote(self.passwords[user])}@{host}:{port}"


def start_metrics_server(settings: Settings) -> None:
    """/metrics for a process that has no API of its own (standalone ingest or scheduler)."""
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.api_host)
        log.info("metrics on http://%s:%d/metrics", settings.api_host, settings.metrics_port)


class Centre:
    """Every part in one process (what `alarmcentre up` runs): broker unless external, ingest,
    scheduler, and the API app (served by the caller). start() and stop() are safe to call once each."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db: Database | None = None
        self.mqtt_url: str | None = settings.mqtt_url
        self.device_url: str | None = None  # login for simulated devices on the embedded broker
        self.broker: Any = None
        self.consumer: Any = None
        self.app: Any = None
        self.publisher: Any = None
        self._stack: list[tuple[str, Any]] = []

    def start(self) -> Centre:
        from alarmcentre.app import create_app
        from alarmcentre.devices.publisher import ConfigPublisher
        from alarmcentre.ingest.consumer import IngestConsumer
        from alarmcentre.scheduler import build_scheduler

        settings = self.settings
        self.db = db = Database.open(settings)
        self._stack.append(("database", db.engine.dispose))
        if not self.mqtt_url:
            from alarmcentre.broker import BrokerUser, start_embedded_broker

            creds = BrokerCredentials.load_or_create(settings.data_dir)
            self.broker = start_embedded_broker(
                kind=settings.broker, data_dir=(settings.data_dir / "broker").resolve(), port=settings.broker_port,
                users=[BrokerUser(name, password) for name, password in creds.passwords.items()],
            )
            self._stack.append(("broker", self.broker.stop))
            self.mqtt_url = creds.url(CENTRE_MQTT_USER, self.broker.host, self.broker.port)
            self.device_url = creds.url(DEMO_DEVICE_MQTT_USER, self.broker.host, self.broker.port)

        self.consumer = consumer = IngestConsumer(
            mqtt_url=self.mqtt_url, session_factory=db.sessions, client_id=settings.mqtt_client_id,
            batch_max=settings.ingest_batch_max, settings=settings,
        )
        consumer.start()
        self._stack.append(("ingest", consumer.stop))
        # The centre's own login publishes device configurations (retained, QoS 1).
        self.publisher = publisher = ConfigPublisher(self.mqtt_url, timeout_s=settings.config_publish_timeout_s)
        self._stack.append(("config publisher", publisher.close))
        scheduler = build_scheduler(db.sessions, settings=settings, publisher=publisher)
        scheduler.start()
        self._stack.append(("scheduler", lambda: scheduler.shutdown(wait=False)))
        checks = {
            "broker": lambda: None if consumer.connected else "ingest not connected to the broker",
            "ingest": lambda: None if consumer.database_ok else "ingest cannot commit to the database",
        }
        self.app = create_app(settings=settings, session_factory=db.sessions, config_publisher=publisher,
                              health_checks=checks)
        return self

    def on_stop(self, name: str, stop: Any) -> None:
        self._stack.append((name, stop))

    def stop(self) -> None:
        while self._stack:
            name, stop = self._stack.pop()
            try:
                stop()
            except Exception:
                log.exception("stopping %s failed", name)


def run_all_in_one(settings: Settings, *, demo: bool = False, demo_devices: int = 0, press_rate: float = 0.0) -> int:
    """`alarmcentre up` / `demo`: every part in this process, stopped together on Ctrl-C."""
    import uvicorn

    centre = Centre(settings)
    try:
        centre.start()
        assert centre.db is not None and centre.mqtt_url is not None
        if demo:
            from alarmcentre.demo import DEMO_USERS, seed_demo, start_demo_fleet

            serials = seed_demo(centre.db.sessions, devices=demo_devices)
            if not centre.consumer.wait_connected(15):
                log.error("the ingest did not connect to the broker within 15 s; the simulator starts anyway")
            fleet = start_demo_fleet(centre.device_url or centre.mqtt_url, serials, press_rate=press_rate)
            centre.on_stop("simulator", fleet.stop)
        base = f"http://{settings.api_host}:{settings.api_port}"
        lines = [f"alarmcentre {'demo ' if demo else ''}is starting",
                 f"  dashboard:  {base}/", f"  API docs:   {base}/docs", f"  metrics:    {base}/metrics",
                 f"  database:   {settings.resolved_database_url()}"]
        if centre.device_url:
            lines.append(f"  devices connect to: {centre.device_url}")
            lines.append(f"  simulator:  alarmcentre-sim run --url '{centre.device_url}' --prefix DEMO- --digits 4")
        if demo:
            lines.append("  demo logins: " + ", ".join(f"{u} / {p}" for u, p, _ in DEMO_USERS))
        elif not (settings.admin_user and settings.admin_password):
            lines.append("  no admin configured: set ALARMCENTRE_ADMIN_USER and ALARMCENTRE_ADMIN_PASSWORD, "
                         "or run `alarmcentre users create NAME --role admin`")
        print("\n".join(lines), flush=True)
        uvicorn.run(centre.app, host=settings.api_host, port=settings.api_port, log_config=None)
    finally:
        centre.stop()
    return 0
