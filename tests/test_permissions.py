"""One permission model for the API and the dashboard: every route, called as every caller, against
the one table of alarmcentre/permissions.py.

The callers: no login, each staff role (operator, supervisor, technician, admin) and the home-care
service's integration key. API routes are called with a fresh bearer token of the role (the
integration key as `X-Api-Key` and as a bearer token); dashboard routes with the role's session
cookie (logged in through the form, `tests/test_dashboard.py` `Browser`) and, for POSTs, a valid
CSRF token. Path parameters point at rows that exist; an incident acted on is made fresh for each
call and owned by the caller, so that only the role (not "another operator owns it") decides.
Bodies are small and mostly valid: a 404, 409 or 422 still means the caller got past the role check.

Refused is 401, 403, or (dashboard pages) a redirect to the login; anything else is allowed.
A 5xx fails the test (the client raises).

Not walked, and why:
- `/webhooks/twilio/*` (SMS and voice): signed by Twilio, not a login (tests/test_dispatch_sms.py,
  tests/test_voice.py);
- `/healthz`, `/readyz`, `/metrics`: public on purpose (docs/security.md, gap 14;
  tests/test_api.py::test_public_routes_need_no_token);
- `/docs`, `/docs/oauth2-redirect`, `/redoc`, `/openapi.json`, `/static`, `/static-offline-docs`:
  documentation and files, no data;
- `/login`, `/logout`, `/language`: the dashboard's login itself (tests/test_dashboard.py).
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import count
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import clock, permissions
from alarmcentre.app import create_app
from alarmcentre.clients import access
from alarmcentre.config import Settings
from alarmcentre.contacts.models import Contact, ContactKind
from alarmcentre.db import transaction
from alarmcentre.devices.models import Device, DeviceStatus
from alarmcentre.dispatch.models import IncidentStep, ResourceKind, SharedResource, StepState
from alarmcentre.incidents.models import Incident, IncidentStatus
from alarmcentre.runtime import Database
from alarmcentre.tasks.models import OperatorTask, TaskKind
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User
from alarmcentre.workorders import service as workorders
from alarmcentre.workorders.models import WorkOrderKind
from alarmcentre_dashboard.auth import SESSION_COOKIE, csrf_token
from tests.factories import make_client, make_device
from tests.test_dashboard import PASSWORD, PASSWORD_HASH, Browser

REPO = Path(__file__).resolve().parent.parent
SKIPPED_PREFIXES = ("/webhooks/twilio/", "/static")
SKIPPED_PATHS = {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                 "/login", "/logout", "/language"}
ROLES = (Role.OPERATOR, Role.SUPERVISOR, Role.TECHNICIAN, Role.ADMIN)


def skipped(path: str) -> bool:
    return path in SKIPPED_PATHS or path.startswith(SKIPPED_PREFIXES)


def app_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, read from the app (included routers flattened)."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = flatten(app.routes) if flatten is not None else app.routes
    return sorted({(method, route.path) for route in routes
                   if isinstance(getattr(route, "original_route", route), APIRoute)
                   for method in route.methods})


def walked_routes(app: FastAPI) -> list[tuple[str, str]]:
    return [(method, path) for method, path in app_routes(app) if not skipped(path)]


# -- the table itself ------------------------------------------------------------------------------


def test_every_route_has_a_capability_and_the_table_names_no_route_that_is_gone() -> None:
    app = create_app(settings=Settings(), session_factory=sessionmaker())
    walked = set(walked_routes(app))
    unmapped = sorted(walked - permissions.ROUTES.keys())
    assert not unmapped, f"give these routes a capability in alarmcentre/permissions.py ROUTES: {unmapped}"
    assert not sorted(permissions.ROUTES.keys() - walked), "ROUTES names routes the app no longer has"
    assert set(permissions.ROUTES.values()) <= permissions.CAPABILITIES.keys()
    assert not permissions.CAPABILITIES.keys() - set(permissions.ROUTES.values()), "a capability without routes"
    # The API part of the walk is the OpenAPI schema, all of it.
    schema = TestClient(app).get("/openapi.json").json()
    in_schema = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    assert {route for route in in_schema if not skipped(route[1])} == {r for r in walked if r[1].startswith("/api/")}


def test_the_table_in_docs_security_is_the_table_the_test_uses() -> None:
    text = (REPO / "docs" / "security.md").read_text()
    assert permissions.markdown_table() in text, (
        "docs/security.md 'Who may do what' differs from alarmcentre/permissions.py: "
        "paste the output of `python -m alarmcentre.permissions`")


# -- the walk ----------------------------------------------------------------------------------


@dataclass
class Centre:
    """Rows for the path parameters, one user per role, their logged-in browsers, an integration key."""

    db: Database
    app: FastAPI
    http: TestClient
    user_ids: dict[str, int] = field(default_factory=dict)
    browsers: dict[str, Browser] = field(default_factory=dict)
    key: str = ""
    client_id: int = 0
    serial: str = ""
    resource_id: int = 0
    _n: Any = field(default_factory=lambda: count(1))

    def n(self) -> int:
        return next(self._n)

    def write(self, work: Callable[[Session], Any]) -> Any:
        with transaction(self.db.sessions, writes=True) as session:
            return work(session)

    # Rows made for one call: acting on them may change or delete them.

    def incident(self, caller: str, *, state: IncidentStatus = IncidentStatus.ACKNOWLEDGED) -> tuple[int, int]:
        """An alarm incident of a client of its own (with access information), acknowledged by and owned by
        the caller (an operator for callers without a user), or just resolved by them, or still open;
        and its first step."""
        resolved, waiting = state == IncidentStatus.RESOLVED, state == IncidentStatus.OPEN
        owner_id = self.user_ids.get(caller, self.user_ids["operator"])
        cipher = self.app.state.access_cipher.get()

        def make(session: Session) -> tuple[int, int]:
            client = make_client(session)
            user = session.get(User, owner_id)
            assert user is not None
            access.set_access_info(session, cipher, client=client, text="Door 1234", user=user)
            now = clock.now()
            taken = None if waiting else owner_id
            incident = Incident(client_id=client.id, kind="button_press", priority=1, opened_at=now,
                                last_signal_at=now, acknowledged_at=None if waiting else now, acknowledged_by=taken,
                                owner_id=taken, status=state,
                                active_key=None if resolved else f"perm:{self.n()}",
                                resolved_at=now if resolved else None, resolved_by=owner_id if resolved else None,
                                outcome="test" if resolved else None)
            session.add(incident)
            session.flush()
            step = IncidentStep(incident_id=incident.id, position=1, kind="relative", name="Dēls",
                                phone="+37120000001", language="lv", channel="sms", wait_seconds=300,
                                automatic=False, state=StepState.PENDING)
            session.add(step)
            session.flush()
            return incident.id, step.id

        return self.write(make)

    def contact(self) -> int:
        def make(session: Session) -> int:
            contact = Contact(client_id=self.client_id, kind=ContactKind.RELATIVE, name="Meita", phone="+37120000002")
            session.add(contact)
            session.flush()
            return contact.id

        return self.write(make)

    def device(self, *, installed: bool = True) -> str:
        serial = f"PERM-{self.n()}"

        def make(session: Session) -> None:
            make_device(session, serial, client=make_client(session) if installed else None)

        self.write(make)
        return serial

    def task(self) -> int:
        def make(session: Session) -> int:
            task = OperatorTask(kind=TaskKind.WELFARE_CHECK, client_id=self.client_id, due_at=clock.now(),
                                active_key=f"perm-task:{self.n()}")
            session.add(task)
            session.flush()
            return task.id

        return self.write(make)

    def order(self) -> int:
        serial = self.device()

        def make(session: Session) -> int:
            device = session.query(Device).filter_by(serial=serial).one()
            order = workorders.open_order(session, kind=WorkOrderKind.REPAIR, device=device, summary="broken",
                                          created_by="system")
            assert order is not None
            return order.id

        return self.write(make)


@pytest.fixture
def centre(any_db: Database, tmp_path: Path) -> Centre:
    settings = Settings(data_dir=tmp_path)
    app = create_app(settings=settings, session_factory=any_db.sessions)
    found = Centre(any_db, app, TestClient(app, raise_server_exceptions=True))

    def seed(session: Session) -> None:
        for role in ROLES:
            user = User(username=role.value, password_hash=PASSWORD_HASH, role=role, full_name=role.value.upper())
            session.add(user)
            session.flush()
            found.user_ids[role.value] = user.id
        colleague = User(username="op-b", password_hash=PASSWORD_HASH, role=Role.OPERATOR)
        session.add(colleague)
        session.flush()
        found.user_ids["colleague"] = colleague.id
        client = make_client(session, care_level=3, name="Marta Kalniņa")
        client.medical_notes = "Diabēts"
        found.client_id = client.id
        found.serial = "PERM-0"
        make_device(session, found.serial, client=client)
        resource = SharedResource(kind=ResourceKind.KEYS_SERVICE, name="Atslēgas", phone="+37167000000")
        session.add(resource)
        session.flush()
        found.resource_id = resource.id
        found.key = users.create_integration_key(session, name="Home care")

    found.write(seed)
    for role in ROLES:
        browser = Browser(app)
        assert browser.login(role.value).status_code == 303
        browser.csrf = browser.csrf or csrf_token(browser.http.cookies[SESSION_COOKIE])
        found.browsers[role.value] = browser
    return found


def path_values(centre: Centre, method: str, path: str, caller: str) -> dict[str, Any]:
    values: dict[str, Any] = {"client_id": centre.client_id, "resource_id": centre.resource_id,
                              "serial": centre.serial, "municipality_id": 1}
    if "{incident_id}" in path:
        state = (IncidentStatus.RESOLVED if path.endswith("/reopen") else
                 IncidentStatus.OPEN if path.endswith("/acknowledge") else IncidentStatus.ACKNOWLEDGED)
        values["incident_id"], values["step_id"] = centre.incident(caller, state=state)
    if "{contact_id}" in path:
        values["contact_id"] = centre.contact()
    if "{serial}" in path and method != "GET":
        values["serial"] = centre.device()
    if "{task_id}" in path:
        values["task_id"] = centre.task()
    if "{order_id}" in path:
        values["order_id"] = centre.order()
    return values


def api_request(centre: Centre, method: str, path: str, values: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of one API call with a small, mostly valid body."""
    n = centre.n()
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/api/v1/municipalities"): {"name": f"Novads {n}"},
        ("PATCH", "/api/v1/municipalities/{municipality_id}"): {"social_service": f"Dienests {n}"},
        ("POST", "/api/v1/clients"): {"municipality_id": 1, "full_name": "X", "address": "Y", "care_level": 1},
        ("PATCH", "/api/v1/clients/{client_id}"): {"full_name": "Marta K."},
        ("POST", "/api/v1/clients/{client_id}/contacts"): {"kind": "relative", "name": "Dēls", "phone": "+37120000003"},
        ("PATCH", "/api/v1/contacts/{contact_id}"): {"name": "Meita K."},
        ("PUT", "/api/v1/clients/{client_id}/plan"): {"steps": []},
        ("POST", "/api/v1/resources"): {"kind": "keys_service", "name": f"R{n}", "phone": "+37167000001"},
        ("PUT", "/api/v1/resources/{resource_id}"): {"kind": "keys_service", "name": "R", "phone": "+37167000001"},
        ("POST", "/api/v1/devices"): {"serial": f"NEW-{n}"},
        ("PATCH", "/api/v1/devices/{serial}"): {"firmware": "2.1"},
        ("POST", "/api/v1/devices/{serial}/assign"): {"client_id": None},
        ("POST", "/api/v1/devices/{serial}/swap"): {"replacement_serial": centre.device(installed=False),
                                                    "reason": "faulty"},
        ("PUT", "/api/v1/devices/{serial}/config"): {"config": {}},
        ("POST", "/api/v1/work-orders"): {"serial": centre.serial, "summary": "battery", "kind": "battery"},
        ("POST", "/api/v1/work-orders/{order_id}/assign"): {},
        ("POST", "/api/v1/work-orders/{order_id}/notes"): {"text": "on the way"},
        ("POST", "/api/v1/work-orders/{order_id}/done"): {"resolution": "replaced"},
        ("POST", "/api/v1/incidents/{incident_id}/calls"): {"answered": True, "client_said": "accidental_press"},
        ("POST", "/api/v1/incidents/{incident_id}/steps/start"): {"step_id": values.get("step_id")},
        ("POST", "/api/v1/incidents/{incident_id}/notify"): {"step_id": values.get("step_id")},
        ("POST", "/api/v1/incidents/{incident_id}/emergency"): {"number": "113"},
        ("POST", "/api/v1/incidents/{incident_id}/notes"): {"text": "note"},
        ("POST", "/api/v1/incidents/{incident_id}/handover"): {"to_user_id": centre.user_ids["colleague"]},
        ("POST", "/api/v1/incidents/{incident_id}/resolve"): {"outcome": "test"},
        ("POST", "/api/v1/incidents/{incident_id}/steps/{step_id}/answer"): {"answer": "accepted"},
        ("POST", "/api/v1/incidents/{incident_id}/reopen"): {"reason": "pressed again"},
        ("POST", "/api/v1/sms/simulate-reply"): {"from_number": "+37120000001", "body": "1"},
        ("POST", "/api/v1/voice/simulate-call"): {"from_number": "+37120000001"},
        ("POST", "/api/v1/tasks/{task_id}/complete"): {"outcome": "reached"},
        ("POST", "/api/v1/integration/batch"): {"workers": [], "visits": []},
    }
    kwargs: dict[str, Any] = {}
    if (method, path) in bodies:
        kwargs["json"] = bodies[(method, path)]
    if path == "/api/v1/auth/token":
        kwargs["data"] = {"username": "operator", "password": PASSWORD}
    if path == "/api/v1/integration/visits.csv":
        kwargs["files"] = {"file": ("visits.csv", b"external_id\n", "text/csv")}
    if path == "/api/v1/integration/visits/export":
        kwargs["params"] = {"from": "2026-01-01T00:00:00+00:00", "to": "2026-02-01T00:00:00+00:00"}
    if method == "DELETE" and path == "/api/v1/login-throttles":
        kwargs["params"] = {"username": "nobody"}
    return kwargs


def dashboard_form(centre: Centre, path: str) -> dict[str, str]:
    forms = {
        "/ui/incidents/{incident_id}/call": {"answered": "yes", "client_said": "accidental_press"},
        "/ui/incidents/{incident_id}/voice/call": {"number": "+37120000001"},
        "/ui/incidents/{incident_id}/steps/{step_id}/answer": {"answer": "accepted"},
        "/ui/incidents/{incident_id}/emergency": {"number": "113"},
        "/ui/incidents/{incident_id}/note": {"text": "note"},
        "/ui/incidents/{incident_id}/handover": {"to_user_id": str(centre.user_ids["colleague"])},
        "/ui/incidents/{incident_id}/resolve": {"outcome": "test"},
        "/ui/incidents/{incident_id}/reopen": {"reason": "pressed again"},
        "/ui/clients/{client_id}": {"full_name": "Marta Kalniņa", "address": "Testa iela 1"},
        "/ui/sms/simulate-reply": {"from_number": "+37120000001", "body": "1"},
        "/ui/voice/simulate-call": {"from_number": "+37120000001"},
        "/ui/devices/{serial}/assign": {"client_id": str(centre.client_id)},
        "/ui/devices/{serial}/swap": {"replacement": centre.device(installed=False), "reason": "faulty"},
        "/ui/devices/{serial}/status": {"status": DeviceStatus.IN_REPAIR.value},
        "/ui/devices/{serial}/workorders": {"kind": "repair", "summary": "broken"},
        "/ui/workorders/{order_id}/notes": {"text": "on the way"},
        "/ui/workorders/{order_id}/done": {"resolution": "replaced"},
    }
    return forms.get(path, {})


def first_status(app: FastAPI, path: str, headers: dict[str, str]) -> int:
    """The status of a streaming answer (the live feed never ends): run the app until it starts answering."""
    async def run() -> int:
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def receive() -> dict[str, Any]:
            await started
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and not started.done():
                started.set_result(message["status"])

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                 "client": ("127.0.0.1", 1), "server": ("testserver", 80), "state": {}}
        task = asyncio.create_task(app(scope, receive, send))
        try:
            return await asyncio.wait_for(asyncio.shield(started), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return asyncio.run(run())


def call(centre: Centre, method: str, path: str, caller: str) -> httpx.Response | int:
    values = path_values(centre, method, path, caller)
    url = path.format(**{k: v for k, v in values.items() if "{" + k + "}" in path})
    staff = caller in permissions.STAFF_ROLES
    if not permissions.is_dashboard(path):
        headers: dict[str, str] = {}
        if staff:
            def token(session: Session) -> str:
                user = session.get(User, centre.user_ids[caller])
                assert user is not None
                return users.issue_token(session, user=user, ttl=timedelta(hours=1))
            headers["Authorization"] = f"Bearer {centre.write(token)}"
        elif caller == permissions.INTEGRATION:
            headers = {"X-Api-Key": centre.key, "Authorization": f"Bearer {centre.key}"}
        return centre.http.request(method, url, headers=headers, **api_request(centre, method, path, values))
    browser = centre.browsers.get(caller)
    http = browser.http if browser is not None else TestClient(centre.app, raise_server_exceptions=True)
    if caller == permissions.INTEGRATION:
        http.headers.update({"X-Api-Key": centre.key, "Authorization": f"Bearer {centre.key}"})
    if path == "/ui/events":
        cookie = http.cookies.get(SESSION_COOKIE)
        return first_status(centre.app, path, {"cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {})
    if method == "GET":
        return http.get(url, follow_redirects=False)
    form = {**dashboard_form(centre, path), "csrf": browser.csrf if browser is not None else ""}
    return http.post(url, data=form, follow_redirects=False)


def refused(answer: httpx.Response | int) -> bool:
    if isinstance(answer, int):
        return answer in (401, 403)
    if answer.status_code in (401, 403):
        return True
    # A page without a login sends to the login and back (`/login?next=…`); a form, to the login. The front
    # door's own redirect of a stranger to `/login` is its answer, not a refusal.
    location = answer.headers.get("location", "")
    is_form = answer.request.method == "POST"
    return answer.status_code == 303 and (location == "/login" if is_form else location.startswith("/login?next="))


def test_every_route_as_every_caller_answers_as_the_one_table_says(centre: Centre) -> None:
    observed: dict[tuple[str, str], frozenset[str]] = {}
    answers: dict[tuple[str, str, str], int] = {}
    for method, path in walked_routes(centre.app):
        if (method, path) not in permissions.ROUTES:
            continue  # reported by the test above
        let_in = set()
        for caller in permissions.CALLERS:
            answer = call(centre, method, path, caller)
            status = answer if isinstance(answer, int) else answer.status_code
            assert status < 500, (method, path, caller, status)
            answers[(method, path, caller)] = status
            if not refused(answer):
                let_in.add(caller)
        observed[(method, path)] = frozenset(let_in)

    # API and dashboard routes of one capability let the same callers in.
    by_capability: dict[str, dict[frozenset[str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for (method, path), callers in observed.items():
        by_capability[permissions.ROUTES[(method, path)]][callers].append(f"{method} {path}")
    split = {capability: {", ".join(sorted(callers)) or "nobody": routes for callers, routes in groups.items()}
             for capability, groups in by_capability.items() if len(groups) > 1}
    assert not split, f"routes of one capability let different callers in: {split}"

    # And those are the callers the table allows.
    wrong = {f"{method} {path}": {"allowed by the table": sorted(permissions.allowed(method, path)),
                                  "let in": sorted(callers),
                                  "answers": {c: answers[(method, path, c)] for c in permissions.CALLERS}}
             for (method, path), callers in observed.items() if callers != permissions.allowed(method, path)}
    assert not wrong, f"routes that differ from alarmcentre/permissions.py: {wrong}"


def test_a_technician_reads_client_records_without_medical_notes(centre: Centre) -> None:
    """The one documented difference inside a capability: the API's client record, redacted for technicians."""
    path = f"/api/v1/clients/{centre.client_id}"
    for role, notes in ((Role.TECHNICIAN, None), (Role.OPERATOR, "Diabēts")):
        answer = call(centre, "GET", "/api/v1/clients/{client_id}", role.value)
        assert isinstance(answer, httpx.Response) and answer.status_code == 200, path
        assert answer.json()["medical_notes"] == notes


def test_refusals_in_the_walk_are_role_refusals_not_csrf_or_ownership(centre: Centre) -> None:
    """The walk's dashboard POSTs carry a valid token, and its incidents belong to the caller."""
    incident_id, _step = centre.incident("operator")
    browser = centre.browsers["operator"]
    answer = browser.post(f"/ui/incidents/{incident_id}/note", {"text": "x"})
    assert answer.status_code == 303 and not answer.headers["location"].startswith("/login")
    assert re.fullmatch(r"[0-9a-f]{40}", browser.csrf)
    assert browser.post(f"/ui/incidents/{incident_id}/note", {"text": "x"}, csrf="forged").status_code == 403
