"""The HTTP API through a real app and a real database: authentication, roles, every domain's routes.

Most tests run on SQLite; the ones whose behaviour depends on the database (ids, text, JSON,
binary payloads) run on PostgreSQL too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from alarmcentre import __version__, clock
from alarmcentre.app import create_app
from alarmcentre.clients.models import Client
from alarmcentre.config import Settings
from alarmcentre.db import make_engine, make_sessionmaker, transaction
from alarmcentre.incidents.models import Incident, IncidentStatus
from alarmcentre.ingest.processor import InboundMessage, Outcome, process_message
from alarmcentre.ingest.protocol import events_topic
from alarmcentre.runtime import Database
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User
from tests.factories import event_payload, make_client, make_device

PASSWORD = "correct horse battery"
# argon2 is slow on purpose: hash once, give every test user the same hash.
PASSWORD_HASH = users._hasher.hash(PASSWORD)
TOKEN_TTL_HOURS = 12

# Routes anyone may call; everything else must demand a valid token.
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/api/v1/auth/token"}
# Called by Twilio, authenticated by its X-Twilio-Signature instead of a token (tests/test_dispatch_sms.py).
WEBHOOK_PATHS = {"/webhooks/twilio/sms", "/webhooks/twilio/status"}


def protected_routes() -> list[tuple[str, str]]:
    """Every (method, path) the app serves that is not public, read from the app itself."""
    app = create_app(settings=Settings(), session_factory=sessionmaker())
    # Newer FastAPI keeps included routers nested in app.routes and flattens them with iter_route_contexts.
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    routes: Iterable[Any] = flatten(app.routes) if flatten is not None else app.routes
    return sorted(
        (method, route.path)
        for route in routes
        if isinstance(getattr(route, "original_route", route), APIRoute)
        and route.path not in PUBLIC_PATHS | WEBHOOK_PATHS
        # The dashboard's pages use a session cookie, not a token: tests/test_dashboard.py.
        and route.path.startswith("/api/")
        for method in route.methods
    )


# The home-care service's system: its own API key (X-Api-Key), never a staff token (tests/test_visits.py).
INTEGRATION_PREFIX = "/api/v1/integration/"
INTEGRATION_ROUTES = [(m, p) for m, p in protected_routes() if p.startswith(INTEGRATION_PREFIX)]
PROTECTED_ROUTES = [(m, p) for m, p in protected_routes() if not p.startswith(INTEGRATION_PREFIX)]


# -- the test harness ----------------------------------------------------------------------------


@dataclass
class Api:
    """The app over one database, with one user per role."""

    db: Database
    http: TestClient
    lenient: TestClient  # answers 500 instead of raising, for tests that assert no 500 happens
    user_ids: dict[Role, int] = field(default_factory=dict)
    _tokens: dict[Role, str] = field(default_factory=dict)

    def token(self, role: Role = Role.ADMIN, *, fresh: bool = False) -> str:
        if fresh or role not in self._tokens:
            with transaction(self.db.sessions) as session:
                user = session.get(User, self.user_ids[role])
                assert user is not None
                token = users.issue_token(session, user=user, ttl=timedelta(hours=TOKEN_TTL_HOURS))
            if fresh:
                return token
            self._tokens[role] = token
        return self._tokens[role]

    def auth(self, role: Role = Role.ADMIN) -> dict[str, str]:
        return bearer(self.token(role))

    def get(self, url: str, role: Role = Role.ADMIN, **kwargs: Any) -> httpx.Response:
        return self.http.get(url, headers=self.auth(role), **kwargs)

    def post(self, url: str, body: Any = None, role: Role = Role.ADMIN) -> httpx.Response:
        return self.http.post(url, json=body, headers=self.auth(role))

    def patch(self, url: str, body: Any, role: Role = Role.ADMIN) -> httpx.Response:
        return self.http.patch(url, json=body, headers=self.auth(role))

    def delete(self, url: str, role: Role = Role.ADMIN) -> httpx.Response:
        return self.http.delete(url, headers=self.auth(role))

    # Builders through the API itself.

    def municipality(self, name: str = "Ogres novads") -> int:
        response = self.post("/api/v1/municipalities", {"name": name})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def client(self, municipality_id: int, **fields: Any) -> dict[str, Any]:
        body = {"municipality_id": municipality_id, "full_name": "Anna Bērziņa", "address": "Brīvības iela 1",
                "care_level": 2, **fields}
        response = self.post("/api/v1/clients", body, role=Role.SUPERVISOR)
        assert response.status_code == 201, response.text
        return response.json()

    def device(self, serial: str, **fields: Any) -> dict[str, Any]:
        response = self.post("/api/v1/devices", {"serial": serial, **fields}, role=Role.TECHNICIAN)
        assert response.status_code == 201, response.text
        return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_api(db: Database, tmp_path: Path, **app_kwargs: Any) -> Iterator[Api]:
    with transaction(db.sessions) as session:
        ids = {}
        for role in Role:
            user = User(username=role.value, full_name=f"Test {role.value}", password_hash=PASSWORD_HASH, role=role)
            session.add(user)
            session.flush()
            ids[role] = user.id
    settings = Settings(data_dir=tmp_path, token_ttl_hours=TOKEN_TTL_HOURS)
    app = create_app(settings=settings, session_factory=db.sessions, **app_kwargs)
    with TestClient(app) as http, TestClient(app, raise_server_exceptions=False) as lenient:
        yield Api(db, http, lenient, ids)


@pytest.fixture
def api(sqlite_db: Database, tmp_path: Path) -> Iterator[Api]:
    yield from make_api(sqlite_db, tmp_path)


@pytest.fixture
def any_api(any_db: Database, tmp_path: Path) -> Iterator[Api]:
    yield from make_api(any_db, tmp_path)


def feed(db: Database, *messages: InboundMessage) -> list[Any]:
    with transaction(db.sessions) as session:
        return [process_message(session, message=m) for m in messages]


def signal(serial: str, seq: int, type_: str = "button_press", *, at: datetime | None = None,
           **fields: object) -> InboundMessage:
    at = at or clock.now()
    return InboundMessage(events_topic(serial), event_payload(seq, type_, ts=at, **fields), at)


def validation_fields(response: httpx.Response) -> set[str]:
    """The field names a 422 from validation points at."""
    assert response.status_code == 422, response.text
    # loc is ("body", field, ...), ("query", name) or ("query", name, index) for a repeated parameter.
    return {str(error["loc"][1] if len(error["loc"]) > 1 else error["loc"][0]) for error in response.json()["detail"]}


def validation_messages(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    return " | ".join(error["msg"] for error in response.json()["detail"])


# -- authentication on every route ---------------------------------------------------------------


def test_the_route_list_is_complete_and_matches_the_published_schema() -> None:
    # Guards the enumeration below: if it found nothing, every per-route test would pass vacuously.
    assert len(PROTECTED_ROUTES) >= 15
    for expected in [("GET", "/api/v1/clients"), ("POST", "/api/v1/devices/{serial}/assign"),
                     ("GET", "/api/v1/incidents/{incident_id}"), ("DELETE", "/api/v1/contacts/{contact_id}"),
                     ("GET", "/api/v1/dead-letters"), ("POST", "/api/v1/auth/logout")]:
        assert expected in PROTECTED_ROUTES
    app = create_app(settings=Settings(), session_factory=sessionmaker())
    schema = TestClient(app).get("/openapi.json").json()
    published = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    assert (published - {(m, p) for m, p in published if p in PUBLIC_PATHS}
            == set(PROTECTED_ROUTES) | set(INTEGRATION_ROUTES))
    for method, path in PROTECTED_ROUTES:  # the schema tells clients to send the bearer token
        assert schema["paths"][path][method.lower()].get("security") == [{"OAuth2PasswordBearer": []}], path
    assert len(INTEGRATION_ROUTES) >= 3
    for method, path in INTEGRATION_ROUTES:  # ... and the other system its API key
        assert schema["paths"][path][method.lower()].get("security") == [{"APIKeyHeader": []}], path


@pytest.mark.parametrize(("method", "path"), PROTECTED_ROUTES, ids=[f"{m} {p}" for m, p in PROTECTED_ROUTES])
def test_every_protected_route_refuses_requests_without_a_valid_token(api: Api, method: str, path: str) -> None:
    # Ids that name nothing: a route must not say "not found" (or validate anything) before it knows who asks.
    url = re.sub(r"\{[^}]+\}", "1", path)

    def call(headers: dict[str, str]) -> httpx.Response:
        return api.lenient.request(method, url, headers=headers)

    # A valid token gets past authentication (whatever the route then answers), so the 401s below are about the token.
    assert call(bearer(api.token(Role.ADMIN, fresh=True))).status_code not in (401, 500)

    refused = {
        "no token": call({}),
        "garbage token": call(bearer("not-a-token")),
        "empty bearer": call({"Authorization": "Bearer "}),
        "basic auth": call({"Authorization": "Basic YWRtaW46c2VjcmV0"}),
    }
    revoked = api.token(Role.ADMIN, fresh=True)
    assert api.http.post("/api/v1/auth/logout", headers=bearer(revoked)).status_code == 204
    refused["revoked token"] = call(bearer(revoked))

    expiring = api.token(Role.ADMIN, fresh=True)
    issued = clock.now()
    clock.set_clock(lambda: issued + timedelta(hours=TOKEN_TTL_HOURS, seconds=1))
    refused["expired token"] = call(bearer(expiring))
    clock.set_clock(None)

    wrong = {name: (r.status_code, r.text) for name, r in refused.items() if r.status_code != 401}
    assert wrong == {}
    for response in refused.values():
        assert response.json() == {"detail": "missing, expired or invalid token"}
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_public_routes_need_no_token(api: Api) -> None:
    assert api.http.get("/healthz").status_code == 200
    assert api.http.get("/readyz").status_code == 200
    assert api.http.get("/metrics").status_code == 200
    # The login route answers a wrong password with 401 of its own, not "missing token".
    response = api.http.post("/api/v1/auth/token", data={"username": "admin", "password": "wrong password"})
    assert response.json() == {"detail": "wrong username or password"}


def test_a_token_works_until_just_before_it_expires(api: Api) -> None:
    token = api.token(Role.OPERATOR, fresh=True)
    issued = clock.now()
    clock.set_clock(lambda: issued + timedelta(hours=TOKEN_TTL_HOURS, minutes=-1))
    assert api.http.get("/api/v1/auth/me", headers=bearer(token)).status_code == 200
    clock.set_clock(lambda: issued + timedelta(hours=TOKEN_TTL_HOURS, minutes=1))
    assert api.http.get("/api/v1/auth/me", headers=bearer(token)).status_code == 401


def test_a_deactivated_users_token_stops_working(api: Api) -> None:
    token = api.token(Role.OPERATOR, fresh=True)
    assert api.http.get("/api/v1/auth/me", headers=bearer(token)).status_code == 200
    with transaction(api.db.sessions) as session:
        session.get(User, api.user_ids[Role.OPERATOR]).active = False
    assert api.http.get("/api/v1/auth/me", headers=bearer(token)).status_code == 401


# -- login and logout ----------------------------------------------------------------------------


def test_login_gives_a_bearer_token_and_logout_revokes_only_that_token(any_api: Api) -> None:
    def login() -> dict[str, Any]:
        response = any_api.http.post("/api/v1/auth/token", data={"username": "supervisor", "password": PASSWORD})
        assert response.status_code == 200, response.text
        return response.json()

    first, second = login(), login()
    assert first["token_type"] == "bearer" and first["expires_in"] == TOKEN_TTL_HOURS * 3600
    assert first["access_token"] != second["access_token"]
    me = any_api.http.get("/api/v1/auth/me", headers=bearer(first["access_token"]))
    assert me.status_code == 200
    assert me.json() == {"id": any_api.user_ids[Role.SUPERVISOR], "username": "supervisor",
                         "full_name": "Test supervisor", "role": "supervisor", "language": "lv"}

    assert any_api.http.post("/api/v1/auth/logout", headers=bearer(first["access_token"])).status_code == 204
    assert any_api.http.get("/api/v1/auth/me", headers=bearer(first["access_token"])).status_code == 401
    assert any_api.http.post("/api/v1/auth/logout", headers=bearer(first["access_token"])).status_code == 401
    assert any_api.http.get("/api/v1/auth/me", headers=bearer(second["access_token"])).status_code == 200


def test_wrong_password_and_unknown_user_get_the_same_answer(api: Api) -> None:
    wrong_password = api.http.post("/api/v1/auth/token", data={"username": "admin", "password": "not it at all"})
    unknown_user = api.http.post("/api/v1/auth/token", data={"username": "nobody", "password": PASSWORD})
    for response in (wrong_password, unknown_user):
        assert response.status_code == 401
        assert response.json() == {"detail": "wrong username or password"}
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "access_token" not in response.text


def test_an_inactive_user_cannot_log_in(api: Api) -> None:
    with transaction(api.db.sessions) as session:
        session.get(User, api.user_ids[Role.OPERATOR]).active = False
    response = api.http.post("/api/v1/auth/token", data={"username": "operator", "password": PASSWORD})
    assert response.status_code == 401
    assert response.json() == {"detail": "wrong username or password"}


def test_login_takes_a_form_not_json(api: Api) -> None:
    response = api.lenient.post("/api/v1/auth/token", json={"username": "admin", "password": PASSWORD})
    assert response.status_code == 422
    assert {"username", "password"} <= validation_fields(response)


# -- roles ---------------------------------------------------------------------------------------


def count(api: Api, model: type) -> int:
    with api.db.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_operator_reads_incidents_but_edits_neither_clients_nor_devices(api: Api) -> None:
    municipality_id = api.municipality()
    assert api.get("/api/v1/incidents", Role.OPERATOR).status_code == 200
    assert api.get("/api/v1/clients", Role.OPERATOR).status_code == 200
    assert api.get("/api/v1/devices", Role.OPERATOR).status_code == 200
    body = {"municipality_id": municipality_id, "full_name": "X", "address": "Y", "care_level": 1}
    refused = api.post("/api/v1/clients", body, role=Role.OPERATOR)
    assert refused.status_code == 403 and "supervisor or admin" in refused.json()["detail"]
    assert api.post("/api/v1/devices", {"serial": "OP1"}, role=Role.OPERATOR).status_code == 403
    assert api.get("/api/v1/dead-letters", Role.OPERATOR).status_code == 403
    assert count(api, Client) == 0
    assert api.get("/api/v1/devices/OP1").status_code == 404


def test_technician_registers_and_assigns_devices_but_cannot_read_incidents(api: Api) -> None:
    client = api.client(api.municipality())
    assert api.post("/api/v1/devices", {"serial": "T1"}, role=Role.TECHNICIAN).status_code == 201
    assigned = api.post("/api/v1/devices/T1/assign", {"client_id": client["id"]}, role=Role.TECHNICIAN)
    assert assigned.status_code == 200 and assigned.json()["status"] == "installed"
    assert api.patch("/api/v1/devices/T1", {"firmware": "2.1"}, role=Role.TECHNICIAN).status_code == 200
    assert api.get("/api/v1/incidents", Role.TECHNICIAN).status_code == 403
    assert api.get("/api/v1/incidents/1", Role.TECHNICIAN).status_code == 403
    assert api.get("/api/v1/dead-letters", Role.TECHNICIAN).status_code == 200
    body = {"municipality_id": client["municipality_id"], "full_name": "X", "address": "Y", "care_level": 1}
    assert api.post("/api/v1/clients", body, role=Role.TECHNICIAN).status_code == 403
    assert api.patch(f"/api/v1/clients/{client['id']}", {"full_name": "Z"}, role=Role.TECHNICIAN).status_code == 403
    # The role is checked before the lookup: a missing id tells a wrong role nothing.
    assert api.patch("/api/v1/clients/999", {"full_name": "Z"}, role=Role.TECHNICIAN).status_code == 403
    assert api.delete("/api/v1/contacts/999", Role.TECHNICIAN).status_code == 403
    assert api.post("/api/v1/devices/NOPE/assign", {"client_id": None}, role=Role.OPERATOR).status_code == 403


@pytest.mark.parametrize("role", [Role.SUPERVISOR, Role.ADMIN])
def test_supervisor_and_admin_create_clients(api: Api, role: Role) -> None:
    body = {"municipality_id": api.municipality(), "full_name": "X", "address": "Y", "care_level": 1}
    assert api.post("/api/v1/clients", body, role=role).status_code == 201
    assert count(api, Client) == 1
    assert api.post("/api/v1/devices", {"serial": "S1"}, role=Role.SUPERVISOR).status_code == 403


def test_only_admin_creates_municipalities(api: Api) -> None:
    for role in (Role.OPERATOR, Role.SUPERVISOR, Role.TECHNICIAN):
        response = api.post("/api/v1/municipalities", {"name": f"By {role}"}, role=role)
        assert response.status_code == 403, role
    created = api.post("/api/v1/municipalities", {"name": "Rīga", "social_service": "Rīgas sociālais dienests"})
    assert created.status_code == 201
    assert api.post("/api/v1/municipalities", {"name": "Rīga"}).status_code == 409
    listed = api.get("/api/v1/municipalities", Role.OPERATOR).json()
    assert [m["name"] for m in listed] == ["Rīga"]


def test_an_admin_lets_a_municipality_take_plain_texted_answers(api: Api) -> None:
    created = api.post("/api/v1/municipalities", {"name": "Ogre", "phone": "6500 0000"}).json()
    assert created["plain_sms_replies"] is False, "answers must carry the dispatch code unless chosen otherwise"
    path = f"/api/v1/municipalities/{created['id']}"
    for role in (Role.OPERATOR, Role.SUPERVISOR, Role.TECHNICIAN):
        assert api.patch(path, {"plain_sms_replies": True}, role=role).status_code == 403, role
    changed = api.patch(path, {"plain_sms_replies": True, "social_service": "Ogres sociālais dienests"})
    assert changed.status_code == 200, changed.text
    assert changed.json() == {**created, "plain_sms_replies": True, "social_service": "Ogres sociālais dienests"}
    assert api.patch(path, {"phone": None}).json()["phone"] is None
    assert api.patch(path, {"plain_sms_replies": "sometimes"}).status_code == 422
    api.post("/api/v1/municipalities", {"name": "Rīga"})
    assert api.patch(path, {"name": "Rīga"}).status_code == 409
    assert api.patch("/api/v1/municipalities/999999", {"name": "X"}).status_code == 404
    assert api.get("/api/v1/municipalities", Role.OPERATOR).json()[0]["plain_sms_replies"] is True


# -- clients -------------------------------------------------------------------------------------


def test_client_create_get_and_list(any_api: Api) -> None:
    municipality_id = any_api.municipality()
    created = any_api.client(municipality_id, phone="2000 0000", birth_date="1941-03-09", care_level=3,
                             medical_notes="Diabēts; atslēga pie kaimiņa")
    assert created["phone"] == "+37120000000"
    assert created["birth_date"] == "1941-03-09" and created["status"] == "active" and created["language"] == "lv"
    assert created["last_contact_at"] is None and created["created_at"]
    fetched = any_api.get(f"/api/v1/clients/{created['id']}", Role.OPERATOR)
    assert fetched.status_code == 200 and fetched.json() == created
    # A technician installs and repairs: the client's record without the medical notes (as on the dashboard).
    assert any_api.get("/api/v1/clients", Role.TECHNICIAN).json() == [{**created, "medical_notes": None}]
    assert any_api.get(f"/api/v1/clients/{created['id']}", Role.TECHNICIAN).json()["medical_notes"] is None
    assert any_api.get("/api/v1/clients", Role.SUPERVISOR).json() == [created]


@pytest.mark.parametrize(("raw", "e164"), [
    ("2000 0000", "+37120000000"),
    ("00371 20000000", "+37120000000"),
    ("+371 2000-0000", "+37120000000"),
    ("(+44) 20 7946 0958", "+442079460958"),
])
def test_client_phone_is_normalised_to_e164(api: Api, raw: str, e164: str) -> None:
    assert api.client(api.municipality(), phone=raw)["phone"] == e164


@pytest.mark.parametrize("raw", ["2000 000", "12345", "call me", "+0123456789", "+371 2000 0000 0000 0000", ""])
def test_an_invalid_phone_is_refused_with_a_clear_message(api: Api, raw: str) -> None:
    body = {"municipality_id": api.municipality(), "full_name": "X", "address": "Y", "care_level": 1, "phone": raw}
    response = api.post("/api/v1/clients", body)
    assert validation_fields(response) == {"phone"}
    assert "not a phone number in international form" in validation_messages(response)
    assert count(api, Client) == 0


@pytest.mark.parametrize("care_level", [0, 5, -1, "high", None])
def test_care_level_must_be_1_to_4(api: Api, care_level: object) -> None:
    body = {"municipality_id": api.municipality(), "full_name": "X", "address": "Y", "care_level": care_level}
    assert validation_fields(api.post("/api/v1/clients", body)) == {"care_level"}


def test_client_in_an_unknown_municipality_is_refused(api: Api) -> None:
    body = {"municipality_id": 999, "full_name": "X", "address": "Y", "care_level": 1}
    response = api.post("/api/v1/clients", body)
    assert response.status_code == 422
    assert response.json() == {"detail": "municipality 999 does not exist"}


def test_client_list_filters(any_api: Api) -> None:
    ogre, riga = any_api.municipality("Ogre"), any_api.municipality("Rīga")
    anna = any_api.client(ogre, full_name="Anna Bērziņa")
    janis = any_api.client(ogre, full_name="Jānis Kalniņš", status="paused")
    ozola = any_api.client(riga, full_name="Anna Ozola", status="ended")

    def names(**params: Any) -> list[str]:
        response = any_api.get("/api/v1/clients", Role.OPERATOR, params=params)
        assert response.status_code == 200, response.text
        return [c["full_name"] for c in response.json()]

    assert names() == ["Anna Bērziņa", "Anna Ozola", "Jānis Kalniņš"]
    assert names(status="paused") == [janis["full_name"]]
    assert names(q="anna") == [anna["full_name"], ozola["full_name"]]
    assert names(q="KALN") == [janis["full_name"]]
    assert names(municipality_id=riga) == [ozola["full_name"]]
    assert names(municipality_id=ogre, q="anna") == [anna["full_name"]]
    assert names(municipality_id=ogre, status="ended") == []
    assert names(q="100%") == []  # a LIKE wildcard in the search text matches nothing here
    assert names(q="%") == [] and names(q="_") == [] and names(q="Anna_") == []  # wildcards are literal
    assert names(limit=1, offset=1) == ["Anna Ozola"]
    assert validation_fields(any_api.get("/api/v1/clients", params={"status": "asleep"})) == {"status"}


def test_client_patch(any_api: Api) -> None:
    ogre, riga = any_api.municipality("Ogre"), any_api.municipality("Rīga")
    client = any_api.client(ogre, phone="20000000", birth_date="1940-01-01")
    url = f"/api/v1/clients/{client['id']}"

    response = any_api.patch(url, {"full_name": "Anna Ozola", "phone": "00371 29999999", "birth_date": None,
                                   "municipality_id": riga, "care_level": 4}, role=Role.SUPERVISOR)
    assert response.status_code == 200, response.text
    patched = response.json()
    assert (patched["full_name"], patched["phone"], patched["birth_date"]) == ("Anna Ozola", "+37129999999", None)
    assert (patched["municipality_id"], patched["care_level"]) == (riga, 4)
    assert patched["address"] == client["address"]  # untouched fields stay
    assert any_api.get(url).json() == patched

    # Free text may be cleared with null.
    cleared = any_api.patch(url, {"medical_notes": None, "phone": None})
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["medical_notes"], cleared.json()["phone"]) == ("", None)


@pytest.mark.parametrize("name", ["municipality_id", "full_name", "address", "language", "care_level", "status"])
def test_client_patch_cannot_empty_a_required_field(api: Api, name: str) -> None:
    client = api.client(api.municipality())
    url = f"/api/v1/clients/{client['id']}"
    response = api.lenient.patch(url, json={"full_name": "Changed", name: None}, headers=api.auth())
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": f"{name} cannot be empty"}
    assert api.get(url).json() == client  # nothing of the refused patch was kept


def test_client_patch_refuses_bad_values(api: Api) -> None:
    client = api.client(api.municipality())
    url = f"/api/v1/clients/{client['id']}"
    assert api.patch(url, {"municipality_id": 999}).json() == {"detail": "municipality 999 does not exist"}
    assert validation_fields(api.patch(url, {"care_level": 5})) == {"care_level"}
    assert validation_fields(api.patch(url, {"phone": "123"})) == {"phone"}
    assert validation_fields(api.patch(url, {"full_name": ""})) == {"full_name"}
    assert validation_fields(api.patch(url, {"id": 7})) == {"id"}
    assert validation_fields(api.patch(url, {"last_contact_at": "2026-01-01T00:00:00Z"})) == {"last_contact_at"}
    assert api.get(url).json() == client


def test_missing_clients_and_contacts_are_404(api: Api) -> None:
    api.client(api.municipality())
    for method, url, body in [
        ("GET", "/api/v1/clients/999", None),
        ("PATCH", "/api/v1/clients/999", {"full_name": "X"}),
        ("GET", "/api/v1/clients/999/contacts", None),
        ("POST", "/api/v1/clients/999/contacts", {"kind": "relative", "name": "N", "phone": "20000000"}),
        ("GET", "/api/v1/contacts/999", None),
        ("PATCH", "/api/v1/contacts/999", {"name": "X"}),
        ("DELETE", "/api/v1/contacts/999", None),
    ]:
        response = api.http.request(method, url, json=body, headers=api.auth())
        assert response.status_code == 404, (method, url, response.text)
        assert "999 not found" in response.json()["detail"]


# -- contacts ------------------------------------------------------------------------------------


def test_contacts_add_list_patch_delete(any_api: Api) -> None:
    client = any_api.client(any_api.municipality())
    base = f"/api/v1/clients/{client['id']}/contacts"
    son = any_api.post(base, {"kind": "relative", "name": "Dēls Pēteris", "phone": "2111 1111", "position": 2,
                              "has_key": True, "notes": "strādā Rīgā"}, role=Role.SUPERVISOR)
    assert son.status_code == 201, son.text
    neighbour = any_api.post(base, {"kind": "neighbour", "name": "Kaimiņiene", "phone": "00371 22222222",
                                    "position": 1})
    assert neighbour.status_code == 201
    son_id, neighbour_id = son.json()["id"], neighbour.json()["id"]
    assert son.json()["phone"] == "+37121111111" and son.json()["client_id"] == client["id"]

    listed = any_api.get(base, Role.OPERATOR).json()
    assert [c["id"] for c in listed] == [neighbour_id, son_id]  # in calling order
    assert any_api.get(f"/api/v1/contacts/{son_id}", Role.OPERATOR).json() == son.json()

    patched = any_api.patch(f"/api/v1/contacts/{son_id}", {"position": 0, "phone": "+371 23333333"})
    assert patched.status_code == 200
    assert (patched.json()["position"], patched.json()["phone"], patched.json()["name"]) == (
        0, "+37123333333", "Dēls Pēteris")
    assert [c["id"] for c in any_api.get(base).json()] == [son_id, neighbour_id]
    cleared = any_api.patch(f"/api/v1/contacts/{son_id}", {"notes": None})
    assert cleared.status_code == 200 and cleared.json()["notes"] == ""

    assert any_api.delete(f"/api/v1/contacts/{son_id}", Role.OPERATOR).status_code == 403
    deleted = any_api.delete(f"/api/v1/contacts/{son_id}", Role.SUPERVISOR)
    assert deleted.status_code == 204 and deleted.content == b""
    assert any_api.get(f"/api/v1/contacts/{son_id}").status_code == 404
    assert any_api.delete(f"/api/v1/contacts/{son_id}").status_code == 404
    assert [c["id"] for c in any_api.get(base).json()] == [neighbour_id]


def test_contact_validation(api: Api) -> None:
    client = api.client(api.municipality())
    base = f"/api/v1/clients/{client['id']}/contacts"
    assert validation_fields(api.post(base, {"kind": "cousin", "name": "N", "phone": "20000000"})) == {"kind"}
    assert validation_fields(api.post(base, {"kind": "relative", "name": "N"})) == {"phone"}
    assert validation_fields(api.post(base, {"kind": "relative", "name": "N", "phone": "x"})) == {"phone"}
    assert validation_fields(api.post(base, {"kind": "relative", "name": "", "phone": "20000000"})) == {"name"}
    contact = api.post(base, {"kind": "relative", "name": "N", "phone": "20000000"}).json()
    url = f"/api/v1/contacts/{contact['id']}"
    for name in ("kind", "name", "phone", "position", "language", "has_key"):
        response = api.lenient.patch(url, json={name: None}, headers=api.auth())
        assert response.status_code == 422, (name, response.text)
    assert validation_fields(api.patch(url, {"position": 1001})) == {"position"}
    assert validation_fields(api.patch(url, {"client_id": 5})) == {"client_id"}
    assert api.get(url).json() == contact


# -- devices -------------------------------------------------------------------------------------


def test_device_register_assign_unassign(any_api: Api) -> None:
    client = any_api.client(any_api.municipality())
    registered = any_api.device("LV-0001", model="Tunstall Lifeline", heartbeat_interval_s=300)
    assert (registered["status"], registered["client_id"], registered["online"]) == ("in_stock", None, False)
    assert registered["heartbeat_interval_s"] == 300

    assigned = any_api.post("/api/v1/devices/LV-0001/assign", {"client_id": client["id"]}, role=Role.TECHNICIAN)
    assert assigned.status_code == 200
    assert (assigned.json()["status"], assigned.json()["client_id"]) == ("installed", client["id"])
    listed = any_api.get("/api/v1/devices", Role.OPERATOR, params={"client_id": client["id"]}).json()
    assert [d["serial"] for d in listed] == ["LV-0001"]

    back = any_api.post("/api/v1/devices/LV-0001/assign", {"client_id": None})
    assert back.status_code == 200
    assert (back.json()["status"], back.json()["client_id"]) == ("in_stock", None)
    assert any_api.get("/api/v1/devices/LV-0001").json() == back.json()


def test_device_registered_straight_to_a_client_is_installed(api: Api) -> None:
    client = api.client(api.municipality())
    device = api.device("D_1", client_id=client["id"])
    assert (device["status"], device["client_id"]) == ("installed", client["id"])
    missing = api.post("/api/v1/devices", {"serial": "D_2", "client_id": 999})
    assert missing.status_code == 422 and missing.json() == {"detail": "client 999 does not exist"}
    assert api.get("/api/v1/devices/D_2").status_code == 404  # nothing half-registered


def test_device_registration_refuses_duplicates_and_bad_serials(api: Api) -> None:
    api.device("ABC-1")
    duplicate = api.post("/api/v1/devices", {"serial": "ABC-1"})
    assert duplicate.status_code == 409 and "registered already" in duplicate.json()["detail"]
    for serial in ["a/b", "a+b", "a#b", "", "x" * 65, "ēē", "a b"]:
        assert validation_fields(api.post("/api/v1/devices", {"serial": serial})) == {"serial"}, serial
    assert validation_fields(api.post("/api/v1/devices", {"serial": "OK", "heartbeat_interval_s": 5})) == {
        "heartbeat_interval_s"}
    assert [d["serial"] for d in api.get("/api/v1/devices").json()] == ["ABC-1"]


def test_device_assignment_errors_and_retiring(api: Api) -> None:
    client = api.client(api.municipality())
    api.device("R1")
    missing = api.post("/api/v1/devices/R1/assign", {"client_id": 999})
    assert missing.status_code == 422 and missing.json() == {"detail": "client 999 does not exist"}
    assert api.get("/api/v1/devices/R1").json()["status"] == "in_stock"
    assert validation_fields(api.post("/api/v1/devices/R1/assign", {})) == {"client_id"}

    assert api.post("/api/v1/devices/R1/assign", {"client_id": client["id"]}).status_code == 200
    retire = api.patch("/api/v1/devices/R1", {"status": "retired"})
    assert retire.status_code == 409 and "take the device back" in retire.json()["detail"]
    assert api.get("/api/v1/devices/R1").json()["status"] == "installed"

    assert api.post("/api/v1/devices/R1/assign", {"client_id": None}).status_code == 200
    assert api.patch("/api/v1/devices/R1", {"status": "retired"}).json()["status"] == "retired"
    again = api.post("/api/v1/devices/R1/assign", {"client_id": client["id"]})
    assert again.status_code == 409 and again.json() == {"detail": "a retired device cannot be assigned"}
    assert [d["serial"] for d in api.get("/api/v1/devices", params={"status": "retired"}).json()] == ["R1"]
    assert api.get("/api/v1/devices", params={"status": "installed"}).json() == []


def test_device_patch(api: Api) -> None:
    api.device("P1", firmware="1.0")
    patched = api.patch("/api/v1/devices/P1", {"firmware": None, "model": "X2", "heartbeat_interval_s": 120})
    assert patched.status_code == 200
    assert (patched.json()["firmware"], patched.json()["model"], patched.json()["heartbeat_interval_s"]) == (
        None, "X2", 120)
    for name in ("model", "heartbeat_interval_s", "status"):
        response = api.lenient.patch("/api/v1/devices/P1", json={name: None}, headers=api.auth())
        assert response.status_code == 422 and response.json() == {"detail": f"{name} cannot be empty"}, name
    assert validation_fields(api.patch("/api/v1/devices/P1", {"serial": "P2"})) == {"serial"}
    assert api.get("/api/v1/devices/P1").json() == patched.json()


def test_missing_devices_are_404(api: Api) -> None:
    api.device("HERE")
    for method, url, body in [("GET", "/api/v1/devices/NOPE", None), ("GET", "/api/v1/devices/NOPE/events", None),
                              ("PATCH", "/api/v1/devices/NOPE", {"model": "x"}),
                              ("POST", "/api/v1/devices/NOPE/assign", {"client_id": None})]:
        response = api.http.request(method, url, json=body, headers=api.auth())
        assert response.status_code == 404 and response.json() == {"detail": "device NOPE not found"}, url


def test_device_events_show_what_the_device_sent(any_api: Api) -> None:
    client = any_api.client(any_api.municipality())
    any_api.device("EV1", client_id=client["id"])
    any_api.device("EV2")
    t0 = clock.now()
    results = feed(any_api.db,
                   signal("EV1", 1, "heartbeat", at=t0, rssi=-60),
                   signal("EV1", 2, "battery", at=t0 + timedelta(seconds=1), level=55),
                   signal("EV2", 1, "heartbeat", at=t0 + timedelta(seconds=2)),
                   signal("EV1", 3, "button_press", at=t0 + timedelta(seconds=3)),
                   signal("EV1", 3, "button_press", at=t0 + timedelta(seconds=3)))  # redelivered
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 4 + [Outcome.DUPLICATE]

    response = any_api.get("/api/v1/devices/EV1/events", Role.OPERATOR)
    assert response.status_code == 200
    events = response.json()
    assert [(e["seq"], e["type"]) for e in events] == [(3, "button_press"), (2, "battery"), (1, "heartbeat")]
    assert results[3].incident_id is not None and events[0]["incident_id"] == results[3].incident_id
    assert events[1]["incident_id"] is None and events[1]["details"].get("level") == 55
    assert datetime.fromisoformat(events[2]["occurred_at"]) == t0
    assert [e["seq"] for e in any_api.get("/api/v1/devices/EV1/events", params={"limit": 2}).json()] == [3, 2]
    assert [e["seq"] for e in any_api.get("/api/v1/devices/EV2/events").json()] == [1]

    device = any_api.get("/api/v1/devices/EV1").json()
    assert (device["battery_level"], device["rssi"], device["online"]) == (55, -60, True)


# -- incidents -----------------------------------------------------------------------------------


def test_open_incidents_are_listed_most_urgent_first_with_a_timeline(any_api: Api) -> None:
    with transaction(any_api.db.sessions) as s:
        make_device(s, "PRESS", client=make_client(s, care_level=2))
        make_device(s, "FALL", client=make_client(s, care_level=1))
    t0 = clock.now()
    # The press comes first; the fall, later, is still listed first.
    feed(any_api.db, signal("PRESS", 1, at=t0), signal("FALL", 1, "fall_detected", at=t0 + timedelta(seconds=5)),
         signal("PRESS", 2, at=t0 + timedelta(seconds=10)), signal("PRESS", 3, "cancel", at=t0 + timedelta(seconds=11)))

    response = any_api.get("/api/v1/incidents", Role.OPERATOR, params={"status": "open"})
    assert response.status_code == 200
    listed = response.json()
    assert [(i["kind"], i["priority"], i["status"]) for i in listed] == [
        ("fall_detected", 1, "open"), ("button_press", 2, "open")]
    press = listed[1]
    assert press["signal_count"] == 2 and datetime.fromisoformat(press["opened_at"]) == t0
    assert "timeline" not in press

    response = any_api.get(f"/api/v1/incidents/{press['id']}", Role.SUPERVISOR)
    assert response.status_code == 200
    detail = response.json()
    timeline = detail.pop("timeline")
    assert detail.pop("steps") == []  # the client has no response plan
    assert (detail.pop("carer_on_site_since"), detail.pop("carer_on_site_name")) == (None, None)  # no visit
    assert detail == press
    assert [(e["kind"], e["actor"]) for e in timeline] == [
        ("opened", "device:PRESS"), ("signal", "device:PRESS"), ("cancel", "device:PRESS")]
    assert [e["details"].get("seq") for e in timeline] == [1, 2, 3]
    assert datetime.fromisoformat(timeline[1]["at"]) == t0 + timedelta(seconds=10)


def test_missing_incident_is_404(api: Api) -> None:
    response = api.get("/api/v1/incidents/12345", Role.OPERATOR)
    assert response.status_code == 404 and response.json() == {"detail": "incident 12345 not found"}


def test_incidents_filter_by_status(api: Api) -> None:
    with transaction(api.db.sessions) as s:
        for serial in ("A", "B", "C"):
            make_device(s, serial, client=make_client(s))
    t0 = clock.now()
    results = feed(api.db, *(signal(serial, 1, at=t0 + timedelta(seconds=i)) for i, serial in enumerate("ABC")))
    open_id, acked_id, resolved_id = (r.incident_opened for r in results)
    with transaction(api.db.sessions) as s:
        s.get(Incident, acked_id).status = IncidentStatus.ACKNOWLEDGED
        resolved = s.get(Incident, resolved_id)
        resolved.status, resolved.active_key = IncidentStatus.RESOLVED, None

    def ids(query: str) -> list[int]:
        response = api.get(f"/api/v1/incidents{query}", Role.OPERATOR)
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()]

    assert ids("") == [open_id, acked_id, resolved_id]
    assert ids("?status=open") == [open_id]
    assert ids("?status=resolved") == [resolved_id]
    assert ids("?status=open&status=acknowledged") == [open_id, acked_id]
    assert ids("?status=acknowledged&status=resolved&limit=1&offset=1") == [resolved_id]
    assert validation_fields(api.get("/api/v1/incidents?status=open&status=closed")) == {"status"}


# -- dead letters --------------------------------------------------------------------------------


def test_dead_letters_show_reason_and_payload_as_text(any_api: Api) -> None:
    with transaction(any_api.db.sessions) as s:
        make_device(s, "D1", client=make_client(s))
    t0 = clock.now()
    junk = b"\x00\xff\xfe junk \xe2\x82"
    feed(any_api.db,
         InboundMessage(events_topic("D1"), junk, t0),
         InboundMessage(events_topic("D1"), b'{"seq": 1, "type": "button_', t0),
         signal("GHOST", 7, at=t0),
         signal("D1", 1, at=t0))

    response = any_api.get("/api/v1/dead-letters", Role.SUPERVISOR)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    letters = response.json()
    assert [(d["reason"], d["device_serial"]) for d in letters] == [
        ("unknown_device", "GHOST"), ("bad_json", "D1"), ("not_utf8", "D1")]  # newest first
    ghost, bad_json, not_utf8 = letters
    assert json.loads(ghost["payload"])["seq"] == 7 and ghost["topic"] == events_topic("GHOST")
    assert bad_json["payload"] == '{"seq": 1, "type": "button_' and bad_json["detail"]
    assert not_utf8["payload"] == "\x00\\xff\\xfe junk \\xe2\\x82"
    assert not_utf8["payload_size"] == len(junk)

    def ids(**params: Any) -> list[int]:
        response = any_api.get("/api/v1/dead-letters", Role.TECHNICIAN, params=params)
        assert response.status_code == 200, response.text
        return [d["id"] for d in response.json()]

    assert ids(reason="not_utf8") == [not_utf8["id"]]
    assert ids(reason="bad_json", device_serial="D1") == [bad_json["id"]]
    assert ids(device_serial="GHOST") == [ghost["id"]]
    assert ids(reason="clock_skew") == []
    assert ids(limit=1) == [ghost["id"]]
    assert any_api.get("/api/v1/dead-letters", Role.OPERATOR).status_code == 403


# -- health and metrics --------------------------------------------------------------------------


def test_healthz_is_liveness_and_readyz_checks_the_database(api: Api) -> None:
    response = api.http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}
    response = api.http.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}


def test_readyz_names_a_failing_check(sqlite_db: Database, tmp_path: Path) -> None:
    checks = {"broker": lambda: "down", "scheduler": lambda: None}
    app = create_app(settings=Settings(data_dir=tmp_path), session_factory=sqlite_db.sessions, health_checks=checks)
    response = TestClient(app).get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "failing", "checks": {"database": "ok", "broker": "down", "scheduler": "ok"}}
    assert TestClient(app).get("/healthz").status_code == 200  # alive all the same


def test_readyz_reports_an_unreachable_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'no such dir' / 'db.sqlite3'}")
    app = create_app(settings=Settings(data_dir=tmp_path), session_factory=make_sessionmaker(engine))
    response = TestClient(app).get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("unreachable:")
    assert TestClient(app).get("/healthz").status_code == 200
    assert TestClient(app).get("/metrics").status_code == 200  # metrics still answer
    engine.dispose()


def test_a_readiness_check_added_later_is_reported(api: Api) -> None:
    # How a part joins (the canary does): one call on the app's registry.
    api.http.app.state.health.add("later-part", lambda: "last test alarm 400 s ago")  # type: ignore[attr-defined]
    response = api.http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "later-part": "last test alarm 400 s ago"}


def test_metrics_are_prometheus_text(api: Api) -> None:
    response = api.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert "# TYPE alarmcentre_open_incidents gauge" in response.text
    assert "# TYPE alarmcentre_ingest_messages_received_total counter" in response.text


def test_metrics_count_open_incidents(api: Api) -> None:
    with transaction(api.db.sessions) as s:
        make_device(s, "M1", client=make_client(s))
        make_device(s, "M2", client=make_client(s))
    feed(api.db, signal("M1", 1), signal("M2", 1))

    def gauge(status: str) -> float:
        response = api.http.get("/metrics")
        match = re.search(rf'^alarmcentre_open_incidents{{status="{status}"}} (\S+)$', response.text, re.MULTILINE)
        assert match is not None, response.text
        return float(match.group(1))

    assert (gauge("open"), gauge("acknowledged")) == (2.0, 0.0)
    with transaction(api.db.sessions) as s:
        incident = s.scalars(select(Incident).order_by(Incident.id)).first()
        incident.status = IncidentStatus.ACKNOWLEDGED
    assert (gauge("open"), gauge("acknowledged")) == (1.0, 1.0)


def test_the_oldest_unacknowledged_alarm_is_measured_by_the_api_and_the_scheduler(api: Api) -> None:
    from prometheus_client import REGISTRY

    from alarmcentre.incidents.models import IncidentKind
    from alarmcentre.scheduler import refresh_fleet_gauges
    from tests.factories import Clock

    moment = Clock(clock.now())
    with transaction(api.db.sessions) as s:
        make_device(s, "OLD-1", client=make_client(s))
        make_device(s, "OLD-2", client=make_client(s))
    feed(api.db, signal("OLD-1", 1))
    moment.advance(60)
    feed(api.db, signal("OLD-2", 1))
    moment.advance(30)

    def age() -> float:
        response = api.http.get("/metrics")
        match = re.search(r"^alarmcentre_oldest_unacknowledged_incident_age_seconds (\S+)$", response.text,
                          re.MULTILINE)
        assert match is not None, response.text
        return float(match.group(1))

    assert age() == 90.0
    with transaction(api.db.sessions) as s:
        first, second = s.scalars(select(Incident).order_by(Incident.id)).all()
        first.status = IncidentStatus.ACKNOWLEDGED
        second.kind = IncidentKind.DEVICE_SILENT  # technical: no operator must answer it within the minute
    assert age() == 0.0
    with transaction(api.db.sessions) as s:
        s.scalars(select(Incident).order_by(Incident.id)).all()[1].kind = IncidentKind.BUTTON_PRESS
    metrics_before = age()  # the scrape refreshed it: 30 s
    moment.advance(15)
    refresh_fleet_gauges(api.db.sessions)  # the scheduler's job, without a scrape
    assert (metrics_before, REGISTRY.get_sample_value("alarmcentre_oldest_unacknowledged_incident_age_seconds")) == (
        30.0, 45.0)


# -- malformed requests: 422 (or 404/401), never 500 ---------------------------------------------


HUGE_INT = 10**30
BIG_ID = 2**40  # fits 64 bits, not the 32-bit id columns of PostgreSQL


def test_malformed_bodies_are_422_never_500(any_api: Api) -> None:
    municipality_id = any_api.municipality()
    client = any_api.client(municipality_id)
    contact = any_api.post(f"/api/v1/clients/{client['id']}/contacts",
                           {"kind": "relative", "name": "N", "phone": "20000000"}).json()
    any_api.device("M-1")
    good = {"municipality_id": municipality_id, "full_name": "X", "address": "Y", "care_level": 1}
    cases: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/clients", []),
        ("POST", "/api/v1/clients", "a string"),
        ("POST", "/api/v1/clients", None),
        ("POST", "/api/v1/clients", {**good, "care_level": "two"}),
        ("POST", "/api/v1/clients", {**good, "care_level": 2.5}),
        ("POST", "/api/v1/clients", {**good, "full_name": ["X"]}),
        ("POST", "/api/v1/clients", {**good, "full_name": {"first": "X"}}),
        ("POST", "/api/v1/clients", {**good, "birth_date": "yesterday"}),
        ("POST", "/api/v1/clients", {**good, "language": "de"}),
        ("POST", "/api/v1/clients", {**good, "is_admin": True}),
        ("POST", "/api/v1/clients", {**good, "id": 77}),
        ("POST", "/api/v1/clients", {**good, "full_name": "x" * 1_000_000}),
        ("POST", "/api/v1/clients", {**good, "medical_notes": "x" * 5001}),
        ("POST", "/api/v1/clients", {**good, "phone": "2" * 10_000}),
        ("POST", "/api/v1/clients", {**good, "full_name": "Anna\x00Bērziņa"}),
        ("POST", "/api/v1/clients", {**good, "address": "iela\x00"}),
        ("POST", "/api/v1/clients", {**good, "municipality_id": HUGE_INT}),
        ("POST", "/api/v1/clients", {**good, "municipality_id": BIG_ID}),
        ("POST", "/api/v1/clients", {**good, "municipality_id": -1}),
        ("POST", "/api/v1/clients", {**good, "care_level": HUGE_INT}),
        ("PATCH", f"/api/v1/clients/{client['id']}", {"municipality_id": BIG_ID}),
        ("PATCH", f"/api/v1/clients/{client['id']}", {"medical_notes": "\x00"}),
        ("PATCH", f"/api/v1/clients/{client['id']}", ["full_name", "X"]),
        ("POST", f"/api/v1/clients/{client['id']}/contacts", {"kind": "relative", "name": "\x00", "phone": "20000000"}),
        ("POST", f"/api/v1/clients/{client['id']}/contacts",
         {"kind": "relative", "name": "N", "phone": "20000000", "position": HUGE_INT}),
        ("PATCH", f"/api/v1/contacts/{contact['id']}", {"notes": "a\x00b"}),
        ("PATCH", f"/api/v1/contacts/{contact['id']}", {"has_key": "maybe"}),
        ("POST", "/api/v1/devices", {"serial": "OK-1", "client_id": HUGE_INT}),
        ("POST", "/api/v1/devices", {"serial": "OK-1", "client_id": BIG_ID}),
        ("POST", "/api/v1/devices", {"serial": "OK-1", "model": "m\x00"}),
        ("POST", "/api/v1/devices", {"serial": "OK-1", "heartbeat_interval_s": HUGE_INT}),
        ("POST", "/api/v1/devices", {"serial": "OK-1", "status": "lost"}),
        ("POST", "/api/v1/devices", {"serial": 12345}),
        ("PATCH", "/api/v1/devices/M-1", {"firmware": "1.0\x00"}),
        ("PATCH", "/api/v1/devices/M-1", {"firmware": "f" * 65}),
        ("POST", "/api/v1/devices/M-1/assign", {"client_id": "abc"}),
        ("POST", "/api/v1/devices/M-1/assign", {"client_id": HUGE_INT}),
        ("POST", "/api/v1/devices/M-1/assign", {"client_id": BIG_ID}),
        ("POST", "/api/v1/devices/M-1/assign", {"client_id": client["id"], "force": True}),
        ("POST", "/api/v1/municipalities", {"name": "Nul\x00novads"}),
        ("POST", "/api/v1/municipalities", {"name": ""}),
        ("POST", "/api/v1/municipalities", {"name": "N", "phone": "\x00"}),
        ("POST", "/api/v1/municipalities", {"name": "N", "id": 5}),
    ]
    failures = []
    for method, url, body in cases:
        response = any_api.lenient.request(method, url, json=body, headers=any_api.auth())
        if response.status_code != 422:
            failures.append((method, url, repr(body)[:80], response.status_code, response.text[:200]))
    not_json = any_api.lenient.post("/api/v1/clients", content=b'{"full_name": ', headers={
        **any_api.auth(), "Content-Type": "application/json"})
    if not_json.status_code != 422:
        failures.append(("POST", "/api/v1/clients", "truncated JSON", not_json.status_code, not_json.text[:200]))
    assert failures == []
    # Nothing was written by any refused request.
    assert [c["id"] for c in any_api.get("/api/v1/clients").json()] == [client["id"]]
    assert [d["serial"] for d in any_api.get("/api/v1/devices").json()] == ["M-1"]
    assert len(any_api.get("/api/v1/municipalities").json()) == 1


def test_malformed_paths_and_queries_are_never_500(any_api: Api) -> None:
    cases: list[tuple[str, int]] = [
        (f"/api/v1/clients/{HUGE_INT}", 422),
        (f"/api/v1/clients/{BIG_ID}", 422),
        ("/api/v1/clients/abc", 422),
        (f"/api/v1/clients/{BIG_ID}/contacts", 422),
        (f"/api/v1/contacts/{HUGE_INT}", 422),
        (f"/api/v1/incidents/{HUGE_INT}", 422),
        (f"/api/v1/incidents/{BIG_ID}", 422),
        (f"/api/v1/clients?municipality_id={HUGE_INT}", 422),
        (f"/api/v1/clients?municipality_id={BIG_ID}", 422),
        (f"/api/v1/clients?offset={HUGE_INT}", 422),
        (f"/api/v1/incidents?offset={HUGE_INT}", 422),
        (f"/api/v1/devices?offset={HUGE_INT}", 422),
        (f"/api/v1/devices?client_id={HUGE_INT}", 422),
        (f"/api/v1/devices?client_id={BIG_ID}", 422),
        ("/api/v1/clients?limit=0", 422),
        ("/api/v1/clients?limit=100000", 422),
        ("/api/v1/clients?q=" + "a" * 101, 422),
        ("/api/v1/clients?q=an%00na", 422),
        ("/api/v1/dead-letters?reason=x%00", 422),
        ("/api/v1/dead-letters?device_serial=D%001", 422),
        ("/api/v1/dead-letters?reason=" + "r" * 10_000, 422),
        ("/api/v1/devices/a%00b", 404),
        ("/api/v1/devices/a%00b/events", 404),
        ("/api/v1/devices/" + "S" * 10_000, 404),
        ("/api/v1/devices/a+b", 404),
    ]
    failures = []
    for url, expected in cases:
        response = any_api.lenient.get(url, headers=any_api.auth())
        if response.status_code != expected:
            failures.append((url[:80], expected, response.status_code, response.text[:200]))
    assert failures == []


def test_odd_logins_are_refused_not_crashed(any_api: Api) -> None:
    for username, password in [("admin\x00", PASSWORD), ("x" * 10_000, PASSWORD), ("", PASSWORD),
                               ("admin", "p" * 10_000)]:
        response = any_api.lenient.post("/api/v1/auth/token", data={"username": username, "password": password})
        assert response.status_code in (401, 422), (username[:20], response.status_code, response.text)
    assert any_api.lenient.get("/api/v1/auth/me", headers=bearer("t" * 100_000)).status_code == 401


def test_the_api_docs_load_their_scripts_from_the_centre_not_from_a_cdn(api: Api) -> None:
    """Alarm centres often run without internet: /docs and /redoc must work there."""
    for page in ("/docs", "/redoc"):
        response = api.http.get(page)
        assert response.status_code == 200, page
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', response.text)
        assert assets, f"{page} names no scripts or styles"
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
            assert api.http.get(asset).status_code == 200, asset
