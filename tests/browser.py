"""Fixtures for the dashboard's real-browser tests: the whole centre (embedded broker, ingest,
scheduler) with its API served by a real uvicorn on a real port, simulated devices pressing
through the broker, and Debian's Chromium driven by Playwright.

Chromium is required in CI (CI=true or ALARMCENTRE_REQUIRE_SERVICES=1): there a missing or
broken Chromium fails the tests; elsewhere they skip, saying why.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre.app import create_app
from alarmcentre.clients.access import load_cipher
from alarmcentre.clients.models import Client
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.demo import DEMO_USERS, seed_demo
from alarmcentre.devices.models import Device
from alarmcentre.dispatch.models import Channel, IncidentStep
from alarmcentre.incidents.models import Incident, IncidentStatus
from alarmcentre.runtime import Centre, Database
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User
from alarmcentre_dashboard.auth import SESSION_COOKIE
from alarmcentre_sim.connection import BrokerAddress
from alarmcentre_sim.fleet import Fleet
from tests.conftest import free_port, missing_service, wait_for_port

if TYPE_CHECKING:  # imported where used: without playwright these tests skip (or fail in CI), not error
    from playwright.sync_api import Browser, BrowserContext, Page

CHROMIUM = os.environ.get("ALARMCENTRE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking"]
SECOND_OPERATOR = ("operator2", "operator2-demo", Role.OPERATOR)
STAFF = [*DEMO_USERS, SECOND_OPERATOR]
PASSWORDS = {name: password for name, password, _ in STAFF}
# People's names, as a centre has them (and none of them a word of the dashboard's own texts).
FULL_NAMES = {"operator": "Ilze Kalna", "operator2": "Dace Egle", "supervisor": "Māris Vilks",
              "technician": "Raivis Ozols", "admin": "Inese Sproģe"}
DEVICES = 4  # demo clients with a device each: DEMO-0001 ...
VIEWPORT = {"width": 1440, "height": 900}
HANG_MS = 10_000  # Playwright's default wait: long enough never to be the cause of a failure, only of a hang


@cache
def _password_hash(password: str) -> str:
    """argon2 is slow on purpose: hash each demo password once per test run, not once per test."""
    return users._hasher.hash(password)


class LiveServer:
    """uvicorn serving an app in a background thread, on a port that stays the same across restarts.

    Each start() builds a fresh app (as a restarted API process would) and runs a fresh uvicorn
    Server; stop() waits for it. The dashboard's SSE streams never end by themselves, so the
    graceful shutdown is short: after it uvicorn cancels them, as a stopping process would."""

    def __init__(self, make_app: Callable[[], FastAPI], port: int) -> None:
        self.make_app = make_app
        self.port = port
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        assert self.server is None, "already running"
        config = uvicorn.Config(self.make_app(), host="127.0.0.1", port=self.port, lifespan="on",
                                log_config=None, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=1)
        self.server = server = uvicorn.Server(config)
        self.thread = threading.Thread(target=server.run, name=f"uvicorn-{self.port}", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self, timeout: float = 15.0) -> None:
        if self.server is None or self.thread is None:
            return
        self.server.should_exit = True
        self.thread.join(timeout)
        alive = self.thread.is_alive()
        self.server = self.thread = None
        if alive:
            raise RuntimeError(f"uvicorn on port {self.port} did not stop within {timeout} s")


@dataclass
class Stack:
    """Everything a browser test talks to."""

    centre: Centre
    server: LiveServer
    fleet: Fleet
    serials: list[str]
    staff: dict[str, User]  # detached: for their ids

    @property
    def user_ids(self) -> dict[str, int]:
        return {name: user.id for name, user in self.staff.items()}

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def sessions(self) -> sessionmaker[Session]:
        assert self.centre.db is not None
        return self.centre.db.sessions

    def press(self, serial: str, kind: str = "button_press") -> None:
        """The device's button, through the broker; returns once the broker acknowledged it."""
        assert self.fleet.press(serial, kind), f"{serial}: the broker did not acknowledge the press"

    def open_incidents(self) -> list[Incident]:
        with self.sessions() as session:
            return list(session.scalars(select(Incident).where(Incident.status != IncidentStatus.RESOLVED)
                                        .order_by(Incident.id)))

    def wait_for_incident(self, serial: str, timeout: float = 10.0) -> int:
        """The id of the unresolved incident of a device (the ingest commits it a moment after the press)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.sessions() as session:
                found = session.scalar(select(Incident.id).join(Device, Device.id == Incident.device_id)
                                       .where(Device.serial == serial, Incident.status != IncidentStatus.RESOLVED))
            if found is not None:
                return found
            time.sleep(0.05)
        pytest.fail(f"no incident for {serial} within {timeout} s")

    def client_id(self, serial: str) -> int:
        with self.sessions() as session:
            found = session.scalar(select(Device.client_id).where(Device.serial == serial))
        assert found is not None, serial
        return found

    def session_token(self, username: str) -> str:
        """A dashboard session, as a login makes one. Written without reading first: on SQLite a
        transaction that reads, then writes, fails if another part committed in between."""
        with transaction(self.sessions) as session:
            return users.issue_token(session, user=self.staff[username], ttl=timedelta(hours=1))

    def client_name(self, client_id: int) -> str:
        with self.sessions() as session:
            client = session.get(Client, client_id)
            assert client is not None, client_id
            return client.full_name

    def first_sms_step(self, incident_id: int) -> tuple[int, str]:
        """(step id, phone) of the incident's first plan step that texts someone."""
        with self.sessions() as session:
            step = session.scalars(select(IncidentStep).where(IncidentStep.incident_id == incident_id,
                                                              IncidentStep.channel == Channel.SMS)
                                   .order_by(IncidentStep.position)).first()
        assert step is not None, f"incident {incident_id} has no SMS step in its plan"
        return step.id, step.phone


def _seed(sessions: sessionmaker[Session], settings: Settings) -> tuple[list[str], dict[str, User]]:
    """The demo's data (clients with plans, door codes, devices) with the staff of tests/browser.py."""
    staff: dict[str, User] = {}
    with transaction(sessions) as session:
        for username, password, role in STAFF:  # before seed_demo, which then keeps them
            staff[username] = User(username=username, password_hash=_password_hash(password), role=role,
                                   full_name=FULL_NAMES[username])
        session.add_all(staff.values())
    return seed_demo(sessions, devices=DEVICES, access_cipher=load_cipher(settings)), staff


def _start_stack(tmp_path: Path, database_url: str | None,
                 more_settings: Callable[[str], dict[str, Any]] | None = None) -> Stack:
    api_port = free_port()
    # more_settings(the server's base URL) -> more Settings fields, e.g. Twilio's against a fake and
    # public_url = that base URL (so that webhook signatures match the URL the server sees).
    extra = more_settings(f"http://127.0.0.1:{api_port}") if more_settings is not None else {}
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, mqtt_url=None,
                        broker_port=free_port(), api_port=api_port, metrics_port=0,
                        admin_user=None, admin_password=None,
                        # The canary beats fast so that a stalled pipeline shows within seconds.
                        canary_interval_s=1, canary_bound_s=3, **extra)
    # Seeded before the centre runs: on SQLite a transaction that reads, then writes, fails at once
    # when another process part committed in between (the scheduler's first jobs at start-up).
    database = Database.open(settings)
    try:
        serials, staff = _seed(database.sessions, settings)
    finally:
        database.engine.dispose()
    centre = Centre(settings, device_logins=tuple(serials)).start()
    fleet: Fleet | None = None
    try:
        assert centre.db is not None and centre.device_address is not None
        assert centre.consumer.wait_connected(15), "the ingest did not connect to the embedded broker"
        sessions = centre.db.sessions
        # Simulated pendants, connected like the demo's (no heartbeats: a test is shorter than a window).
        fleet = Fleet(BrokerAddress.from_url(centre.device_address, passwords=centre.device_passwords), serials,
                      heartbeat_interval=None)
        fleet.start_in_thread()
        assert fleet.wait_connected(15), "the simulated devices did not connect"
        # Our own server rather than the centre's: it can stop and start again on the same port.
        # centre.settings: with the embedded broker's canary login, so the canary is watched here too.
        server = LiveServer(lambda: create_app(settings=centre.settings, session_factory=sessions,
                                               health_checks=centre.health, config_publisher=centre.publisher),
                            settings.api_port)
        server.start()
        assert wait_for_port(settings.api_port)
        return Stack(centre, server, fleet, serials, staff)
    except BaseException:
        if fleet is not None:
            fleet.stop(15)
        centre.stop()
        raise


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """The whole centre on SQLite; parametrise indirectly with "postgresql" for a fresh PostgreSQL database."""
    database_url = None
    if getattr(request, "param", "sqlite") == "postgresql":
        database_url = request.getfixturevalue("postgres_url")
    with running_stack(tmp_path, database_url) as running:
        yield running


@contextmanager
def running_stack(tmp_path: Path, database_url: str | None = None, *,
                  more_settings: Callable[[str], dict[str, Any]] | None = None) -> Iterator[Stack]:
    """The whole centre, stopped on leaving; a test module overriding `stack` can build it with more_settings."""
    running = _start_stack(tmp_path, database_url, more_settings)
    try:
        yield running
    finally:
        running.server.stop()
        running.fleet.stop(15)
        running.centre.stop()


# -- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium (never a downloaded browser), one per test module."""
    if not Path(CHROMIUM).exists():
        missing_service(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; "
                        "or set ALARMCENTRE_TEST_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_service("the playwright package is not installed (pip install -e '.[test]')")
    playwright = sync_playwright().start()
    try:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:
            missing_service(f"Chromium at {CHROMIUM} does not start: {str(exc).splitlines()[0]}")
        yield browser
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def open_browser(chromium: Browser, stack: Stack) -> Iterator[Callable[..., Page]]:
    """open_browser("operator") -> a page of a new browser context (its own cookies), logged in as that
    user, on its home page.

    The session cookie is issued directly unless via_form: argon2 is slow on purpose, and a dozen
    logins through the form would double the run (the form is tested once, and in test_dashboard.py)."""
    contexts: list[BrowserContext] = []

    def open_as(username: str, *, via_form: bool = False) -> Page:
        context = chromium.new_context(base_url=stack.url, viewport=VIEWPORT, locale="lv-LV",
                                       timezone_id="Europe/Riga")
        context.set_default_timeout(HANG_MS)
        contexts.append(context)
        page = context.new_page()
        if via_form:
            log_in(page, username)
        else:
            context.add_cookies([{"name": SESSION_COOKIE, "value": stack.session_token(username), "url": stack.url,
                                  "httpOnly": True, "sameSite": "Strict"}])
            page.goto("/")
        return page

    yield open_as
    for context in contexts:
        context.close()


def log_in(page: Page, username: str) -> None:
    """Through the login form, as a person does."""
    page.goto("/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORDS[username])
    page.click("[data-testid=login-submit]")
    page.wait_for_url(lambda url: "/login" not in url)
