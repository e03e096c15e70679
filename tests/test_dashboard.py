"""The dashboard's server side: logins, CSRF, roles, access information, translations,
figures and the live feed's change detection. The browser tests are in test_dashboard_browser.py."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from alarmcentre.app import create_app
from alarmcentre.clients.access import AccessReveal, ClientAccess
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.incidents.models import Incident, IncidentStatus, TimelineEntry, TimelineKind
from alarmcentre.ingest.processor import process_message
from alarmcentre.runtime import Database
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User
from alarmcentre_dashboard.i18n import WEB_DIR, catalogue_path
from alarmcentre_dashboard.live import LiveFeed
from tests.factories import Clock, make_client, make_device, message

PASSWORD = "night-shift-1"
PASSWORD_HASH = users._hasher.hash(PASSWORD)  # argon2 is slow on purpose: hash once
DOOR_CODE = "Door code QZ4711, key safe 0815 behind the mailbox"
# What must never show: letters outside hex and base64 runs, so a random CSRF token or ciphertext
# cannot contain it by chance (a bare "4711" once matched a CSRF token).
SECRET = "code QZ4711"


class Browser:
    """A TestClient that logs in through the form, as a person does, and posts forms with the CSRF token."""

    def __init__(self, app: object) -> None:
        self.http = TestClient(app, raise_server_exceptions=True)  # type: ignore[arg-type]
        self.csrf = ""

    def login(self, username: str, password: str = PASSWORD, *, next_path: str = "") -> object:
        page = self.http.get("/login")
        nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
        assert nonce, page.text
        response = self.http.post("/login", data={"username": username, "password": password,
                                                  "nonce": nonce.group(1), "next": next_path},
                                  follow_redirects=False)
        if response.status_code == 303:
            self.csrf = self.token_from(self.http.get("/ui/incidents").text) or self.csrf
        return response

    @staticmethod
    def token_from(html: str) -> str:
        found = re.search(r'<meta name="csrf-token" content="([^"]*)"', html)
        return found.group(1) if found else ""

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf: str | None = None) -> object:
        form = dict(data or {})
        form["csrf"] = self.csrf if csrf is None else csrf
        return self.http.post(path, data=form, follow_redirects=False)


@pytest.fixture
def centre(any_db: Database, tmp_path: Path) -> tuple[Database, Settings, object, int, int]:
    settings = Settings(data_dir=tmp_path)
    with transaction(any_db.sessions) as session:
        client = make_client(session, care_level=3, name="Marta Kalniņa")
        make_device(session, "DASH-1", client=client)
        for name, role in [("op-a", Role.OPERATOR), ("op-b", Role.OPERATOR), ("sup", Role.SUPERVISOR),
                           ("tech", Role.TECHNICIAN), ("admin", Role.ADMIN)]:
            session.add(User(username=name, password_hash=PASSWORD_HASH, role=role, full_name=name.upper()))
        client_id = client.id
    with transaction(any_db.sessions) as session:
        incident_id = process_message(session, message=message("DASH-1", 1), settings=settings).incident_id
    assert incident_id is not None
    return any_db, settings, create_app(settings=settings, session_factory=any_db.sessions), client_id, incident_id


def status_of(db: Database, incident_id: int) -> IncidentStatus:
    with db.sessions() as session:
        incident = session.get(Incident, incident_id)
        assert incident is not None
        return incident.status


# -- logging in ----------------------------------------------------------------------------------


def test_login_sets_a_strict_http_only_session_and_logout_ends_it(centre: tuple) -> None:
    _db, _s, app, _c, _i = centre
    browser = Browser(app)
    response = browser.login("op-a")
    assert response.status_code == 303 and response.headers["location"] == "/ui/queue"
    cookie = response.headers["set-cookie"].lower()
    assert "ac_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    stolen = browser.http.cookies.get("ac_session")
    assert browser.http.get("/ui/queue").status_code == 200
    assert browser.post("/logout").status_code == 303
    # The old cookie is worthless once logged out (the session is revoked server-side).
    other = TestClient(app)
    other.cookies.set("ac_session", stolen)
    assert other.get("/ui/queue", follow_redirects=False).status_code == 303


def test_each_role_lands_on_its_own_page(centre: tuple) -> None:
    _db, _s, app, _c, _i = centre
    assert Browser(app).login("op-a").headers["location"] == "/ui/queue"
    assert Browser(app).login("tech").headers["location"] == "/ui/devices"
    assert Browser(app).login("sup", next_path="/ui/sms").headers["location"] == "/ui/sms"
    # Only paths of this site: no open redirect after login.
    assert Browser(app).login("op-a", next_path="//elsewhere.example/x").headers["location"] == "/ui/queue"
    assert Browser(app).login("op-a", next_path="https://elsewhere.example/").headers["location"] == "/ui/queue"


def test_a_wrong_password_is_answered_in_latvian_and_the_right_one_still_works(centre: tuple) -> None:
    browser = Browser(centre[2])
    wrong = browser.login("op-a", "wrong password")
    assert wrong.status_code == 401 and "Nepareizs" in wrong.text  # the login page is Latvian
    assert browser.login("op-a").status_code == 303  # throttling: tests/test_login_throttle.py


def test_an_old_login_form_is_refused(centre: tuple) -> None:
    _db, _s, app, _c, _i = centre
    http = TestClient(app)
    response = http.post("/login", data={"username": "op-a", "password": PASSWORD, "nonce": "forged"})
    assert response.status_code == 400 and "ac_session" not in http.cookies


def test_pages_need_a_login_and_fragments_say_401(centre: tuple) -> None:
    _db, _s, app, _c, incident_id = centre
    http = TestClient(app)
    page = http.get(f"/ui/incidents/{incident_id}", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == f"/login?next=/ui/incidents/{incident_id}"
    assert http.get("/ui/queue/rows", headers={"X-Requested-With": "fetch"}).status_code == 401
    assert http.get("/ui/events").status_code == 401
    assert http.get("/ui/alarms", headers={"X-Requested-With": "fetch"}).status_code == 401


def test_roles_see_what_they_need(centre: tuple) -> None:
    _db, _s, app, _c, incident_id = centre
    tech = Browser(app)
    tech.login("tech")
    for path in ("/ui/queue", f"/ui/incidents/{incident_id}", "/ui/sms", "/ui/clients", "/ui/audit/reveals"):
        response = tech.http.get(path)
        assert response.status_code == 403 and 'data-testid="error-page"' in response.text, path
    assert tech.post(f"/ui/incidents/{incident_id}/acknowledge").status_code == 403
    operator = Browser(app)
    operator.login("op-a")
    assert operator.http.get("/ui/audit/reveals").status_code == 403
    assert operator.http.get(f"/ui/incidents/{incident_id}").status_code == 200


# -- forms: CSRF and actions ----------------------------------------------------------------------


def test_a_form_without_the_csrf_token_changes_nothing(centre: tuple) -> None:
    db, _s, app, _c, incident_id = centre
    browser = Browser(app)
    browser.login("op-a")
    assert browser.csrf
    for token in ("", "0" * 40, Browser.token_from("")):
        assert browser.post(f"/ui/incidents/{incident_id}/acknowledge", csrf=token).status_code == 403
    assert status_of(db, incident_id) == IncidentStatus.OPEN
    assert browser.post(f"/ui/incidents/{incident_id}/acknowledge").status_code == 303
    assert status_of(db, incident_id) == IncidentStatus.ACKNOWLEDGED


def test_a_refused_action_is_explained_and_changes_nothing(centre: tuple) -> None:
    db, _s, app, _c, incident_id = centre
    first, second = Browser(app), Browser(app)
    first.login("op-a")
    second.login("op-b")
    assert first.post(f"/ui/incidents/{incident_id}/acknowledge").status_code == 303
    late = second.post(f"/ui/incidents/{incident_id}/acknowledge")
    assert late.status_code == 409 and 'data-testid="error"' in late.text
    bad_outcome = first.post(f"/ui/incidents/{incident_id}/resolve", {"outcome": "made-up"})
    assert bad_outcome.status_code == 422 and "outcome" in bad_outcome.text
    assert status_of(db, incident_id) == IncidentStatus.ACKNOWLEDGED
    with db.sessions() as session:
        incident = session.get(Incident, incident_id)
        assert incident is not None and incident.owner_id is not None
        owner = session.get(User, incident.owner_id)
        assert owner is not None and owner.username == "op-a"
    done = first.post(f"/ui/incidents/{incident_id}/resolve", {"outcome": "accidental_press", "notes": "ok"})
    assert done.status_code == 303 and status_of(db, incident_id) == IncidentStatus.RESOLVED
    assert "No open incidents" in first.http.get("/ui/queue/rows").text or \
        "Nav atvērtu notikumu" in first.http.get("/ui/queue/rows").text


# -- access information -----------------------------------------------------------------------------


def test_access_information_is_encrypted_revealed_only_to_the_owner_and_audited(centre: tuple) -> None:
    db, _s, app, client_id, incident_id = centre
    admin = Browser(app)
    admin.login("admin")
    client_page = admin.http.get(f"/ui/clients/{client_id}").text
    form = {"full_name": "Marta Kalniņa", "address": "Testa iela 1", "care_level": "3", "language": "lv",
            "client_status": "active", "access_info": DOOR_CODE}
    assert 'data-testid="client-edit"' in client_page
    assert admin.post(f"/ui/clients/{client_id}", form).status_code == 303
    with db.sessions() as session:
        stored = session.get(ClientAccess, client_id)
        assert stored is not None and SECRET not in stored.ciphertext and "mailbox" not in stored.ciphertext
    # The admin's own pages never show it back.
    assert SECRET not in admin.http.get(f"/ui/clients/{client_id}").text

    owner, other, tech = Browser(app), Browser(app), Browser(app)
    owner.login("op-a")
    other.login("op-b")
    tech.login("tech")
    before = owner.http.get(f"/ui/incidents/{incident_id}").text
    assert 'data-testid="access-hidden"' in before and SECRET not in before
    refused = owner.post(f"/ui/incidents/{incident_id}/reveal")
    assert refused.status_code == 403 and SECRET not in refused.text  # not taken yet
    assert owner.post(f"/ui/incidents/{incident_id}/acknowledge").status_code == 303
    page = owner.http.get(f"/ui/incidents/{incident_id}").text
    assert 'data-testid="reveal"' in page and SECRET not in page
    shown = owner.post(f"/ui/incidents/{incident_id}/reveal")
    assert shown.status_code == 200 and DOOR_CODE in shown.text
    assert shown.headers["cache-control"] == "no-store"
    for outsider in (other, tech, admin):
        response = outsider.post(f"/ui/incidents/{incident_id}/reveal")
        assert response.status_code == 403 and SECRET not in response.text
    assert owner.post(f"/ui/incidents/{incident_id}/resolve", {"outcome": "accidental_press"}).status_code == 303
    assert owner.post(f"/ui/incidents/{incident_id}/reveal").status_code == 403  # closed: no more

    with db.sessions() as session:
        audit = session.scalars(select(AccessReveal)).all()
        assert [(a.incident_id, a.client_id) for a in audit] == [(incident_id, client_id)]
        kinds = session.scalars(select(TimelineEntry.kind).where(TimelineEntry.incident_id == incident_id)).all()
        assert kinds.count(TimelineKind.ACCESS_REVEALED) == 1
    supervisor = Browser(app)
    supervisor.login("sup")
    audit_page = supervisor.http.get("/ui/audit/reveals").text
    assert audit_page.count('data-testid="reveal-row"') == 1 and "OP-A" in audit_page and "Marta" in audit_page


def test_the_access_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    from alarmcentre.clients.access import load_cipher

    settings = Settings(data_dir=tmp_path)
    token = load_cipher(settings).encrypt(b"1234")
    assert (tmp_path / "access.key").stat().st_mode & 0o777 == 0o600
    assert load_cipher(settings).decrypt(token) == b"1234"  # same key after a restart


# -- language, figures ---------------------------------------------------------------------------


def _template_messages() -> set[str]:
    found = set()
    method_map = [("**/templates/**.html", "jinja2"), ("**.py", "python")]
    options = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    for _file, _line, msg, _comments, _context in extract_from_dir(
            str(WEB_DIR), method_map=method_map, options_map=options,
            keywords={"_": None, "gettext": None, "N_": None, "translate": (2,)}):
        found.add(msg if isinstance(msg, str) else msg[0])
    return found


def test_every_dashboard_message_has_a_latvian_translation() -> None:
    with catalogue_path("lv").open("rb") as po:
        catalogue = read_po(po, locale="lv")
    translated = {m.id: m.string for m in catalogue if m.id and m.string and not m.fuzzy}
    used = _template_messages()
    assert len(used) > 100  # the extraction itself worked
    missing = sorted(used - translated.keys())
    assert not missing, f"run scripts/i18n and translate: {missing}"
    for msgid, text in translated.items():  # placeholders survive translation
        assert set(re.findall(r"%\(\w+\)s", msgid)) == set(re.findall(r"%\(\w+\)s", text)), msgid


def test_pages_speak_the_users_language(centre: tuple) -> None:
    _db, _s, app, _c, incident_id = centre
    browser = Browser(app)
    browser.login("op-a")
    latvian = browser.http.get("/ui/queue").text
    assert "Rinda" in latvian and "Pogas nospiešana" in latvian and ">Queue<" not in latvian
    assert browser.post("/language", {"language": "en"}).status_code == 303
    english = browser.http.get(f"/ui/incidents/{incident_id}").text
    assert "Button press" in english and "Take this incident" in english
    assert browser.post("/language", {"language": "lv"}, csrf="bad").status_code == 403  # kept as English
    assert "Take this incident" in browser.http.get(f"/ui/incidents/{incident_id}").text


def test_todays_figures_count_answers_within_the_targets(centre: tuple) -> None:
    db, settings, app, _c, first = centre
    clock = Clock(datetime.now(UTC))
    with transaction(db.sessions) as session:
        client = make_client(session, name="Second Client")
        make_device(session, "DASH-2", client=client)
    browser = Browser(app)
    browser.login("op-a")
    clock.advance(30)
    assert browser.post(f"/ui/incidents/{first}/acknowledge").status_code == 303  # 30 s: within both
    with transaction(db.sessions) as session:
        second = process_message(session, message=message("DASH-2", 1), settings=settings).incident_id
    clock.advance(120)
    assert browser.post(f"/ui/incidents/{second}/acknowledge").status_code == 303  # 120 s: only within 180
    figures = browser.http.get("/ui/queue/rows").text
    numbers = re.findall(r'class="figure"[^>]*>([^<]+)<', figures)
    assert numbers[:4] == ["2", "50%", "100%", "2"], numbers


# -- the live feed ---------------------------------------------------------------------------------


def test_the_feed_reports_new_entries_and_entries_that_commit_late(sqlite_db: Database) -> None:
    with transaction(sqlite_db.sessions) as session:
        client = make_client(session)
        incidents = [Incident(client_id=client.id, kind="button_press", priority=2, active_key=f"k{n}")
                     for n in range(3)]
        session.add_all(incidents)
        session.flush()
        ids = [i.id for i in incidents]
        session.add(TimelineEntry(id=10, incident_id=ids[0], kind=TimelineKind.OPENED, actor="t"))
    feed = LiveFeed(sqlite_db.sessions)
    assert not feed.poll()  # the first poll only learns where things are
    with transaction(sqlite_db.sessions) as session:
        session.add(TimelineEntry(id=12, incident_id=ids[1], kind=TimelineKind.OPENED, actor="t"))
    assert feed.poll().incidents == {ids[1]}
    assert not feed.poll()
    # An id handed out earlier but committed later (PostgreSQL sequences) is still reported.
    with transaction(sqlite_db.sessions) as session:
        session.add(TimelineEntry(id=11, incident_id=ids[2], kind=TimelineKind.NOTE, actor="t"))
    assert feed.poll().incidents == {ids[2]}
    assert not feed.poll()


def test_a_browser_too_far_behind_is_told_to_resync(sqlite_db: Database) -> None:
    async def scenario() -> list[dict]:
        feed = LiveFeed(sqlite_db.sessions, poll_s=60)
        queue = feed.subscribe()
        for n in range(200):
            feed.publish({"type": "change", "incidents": [n], "sms": False, "tasks": False})
        events = [queue.get_nowait() for _ in range(queue.qsize())]
        await feed.stop()
        return events

    events = asyncio.run(scenario())
    assert any(event.get("resync") for event in events)
    assert len(events) <= 50


def test_the_feed_says_when_the_database_is_down_and_back(sqlite_db: Database) -> None:
    import threading

    from sqlalchemy.exc import OperationalError

    down = threading.Event()

    def sessions() -> Session:
        # The database refuses connections while "down", as a stopped server does.
        if down.is_set():
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("database unreachable"))
        return sqlite_db.sessions()

    async def scenario() -> list[str]:
        feed = LiveFeed(sessions, poll_s=0.02)  # type: ignore[arg-type]
        queue = feed.subscribe()

        async def next_system_state() -> str:
            while True:  # generous: a loaded machine polls late, and only system events matter here
                event = await asyncio.wait_for(queue.get(), 20)
                if event["type"] == "system":
                    return str(event["database"])

        await asyncio.sleep(0.1)
        down.set()
        seen = [await next_system_state()]
        down.clear()
        seen.append(await next_system_state())
        await feed.stop()
        return seen

    assert asyncio.run(scenario()) == ["down", "ok"]


def test_waiting_alarms_are_listed_for_every_page(centre: tuple) -> None:
    _db, _s, app, _c, incident_id = centre
    browser = Browser(app)
    browser.login("op-a")
    waiting = browser.http.get("/ui/alarms").json()["waiting"]
    assert [w["id"] for w in waiting] == [incident_id]
    assert browser.post(f"/ui/incidents/{incident_id}/acknowledge").status_code == 303
    assert browser.http.get("/ui/alarms").json()["waiting"] == []


def test_the_queue_shows_that_the_person_cancelled_on_the_device(centre: tuple) -> None:
    db, settings, app, _c, incident_id = centre
    browser = Browser(app)
    browser.login("op-a")
    assert 'data-testid="cancelled-on-device"' not in browser.http.get("/ui/queue").text
    with transaction(db.sessions) as session:
        result = process_message(session, message=message("DASH-1", 2, "cancel"), settings=settings)
    assert result.incident_id == incident_id
    page = browser.http.get("/ui/queue").text
    row = page[page.index(f'data-id="{incident_id}"'):]
    assert 'data-testid="cancelled-on-device"' in row[:row.index("</tr>")]
    assert "Atcelts ierīcē" in row[:row.index("</tr>")]  # the operator's language (Latvian by default)
    assert status_of(db, incident_id) is IncidentStatus.OPEN  # a cancel does not close it


def test_a_shared_rendering_is_made_once_per_change(sqlite_db: Database) -> None:
    from alarmcentre_dashboard.live import SharedRendering

    async def scenario() -> tuple[list[str], int]:
        feed = LiveFeed(sqlite_db.sessions, poll_s=60)
        shared = SharedRendering()
        made = iter(range(100))
        assert shared.get(("q",), feed, lambda: f"v{next(made)}") == "v0"  # no feed running: never shared
        queue = feed.subscribe()  # now it runs
        seen = [shared.get(("q",), feed, lambda: f"v{next(made)}") for _ in range(5)]
        feed.publish({"type": "change", "incidents": [1], "sms": False, "tasks": False})
        seen.append(shared.get(("q",), feed, lambda: f"v{next(made)}"))
        feed.unsubscribe(queue)
        await feed.stop()
        return seen, shared.made

    seen, made = asyncio.run(scenario())
    assert seen == ["v1"] * 5 + ["v2"] and made == 2


def test_every_page_forbids_framing_sniffing_caching_and_foreign_scripts(centre: tuple) -> None:
    """The headers as written here, not as the code defines them: weakening one fails (security gap 15)."""
    _db, _s, app, client_id, incident_id = centre
    expected = {
        "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                   "form-action 'self'",
        "x-frame-options": "DENY", "x-content-type-options": "nosniff", "cache-control": "no-store",
        "referrer-policy": "same-origin",
    }
    anonymous = TestClient(app)
    pages = {"/login": anonymous.get("/login")}
    browser = Browser(app)
    browser.login("op-a")
    for path in ("/ui/queue", "/ui/queue/rows", f"/ui/incidents/{incident_id}", f"/ui/clients/{client_id}",
                 "/ui/incidents/999999", "/ui/devices", "/ui/sms"):
        pages[path] = browser.http.get(path, headers={"X-Requested-With": "fetch"} if path.endswith("rows") else {})
    technician = Browser(app)
    technician.login("tech")
    pages["/ui/queue as technician"] = technician.http.get("/ui/queue")
    statuses = {path: response.status_code for path, response in pages.items()}
    assert statuses["/ui/incidents/999999"] == 404 and statuses["/ui/queue as technician"] == 403, statuses
    for path, response in pages.items():
        got = {name: response.headers.get(name) for name in expected}
        assert got == expected, f"{path}: {got}"
