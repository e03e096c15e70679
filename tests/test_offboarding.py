"""Someone leaves, a password leaks, a key leaks: `users disable|enable|set-password` and
`integration revoke-key` take effect at once, for the dashboard session and the API token alike
(security gap 5). The commands run as an administrator runs them, against the same database."""

from __future__ import annotations

import subprocess
import sys

from fastapi.testclient import TestClient

from alarmcentre.db import transaction
from alarmcentre.runtime import Database
from alarmcentre.users.service import create_integration_key
from tests.test_dashboard import PASSWORD, Browser, centre  # noqa: F401  (the fixture)


def command(db: Database, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    url = db.engine.url.render_as_string(hide_password=False)
    return subprocess.run([sys.executable, "-m", "alarmcentre.cli", *args, "--database-url", url],
                          input=stdin, capture_output=True, text=True, timeout=120)


def api_token(app: object, username: str, password: str) -> int | str:
    answer = TestClient(app).post("/api/v1/auth/token", data={"username": username, "password": password})  # type: ignore[arg-type]
    return answer.json()["access_token"] if answer.status_code == 200 else answer.status_code


def reads_incidents(app: object, token: str) -> int:
    return TestClient(app).get("/api/v1/incidents", headers={"Authorization": f"Bearer {token}"}).status_code  # type: ignore[arg-type]


def test_a_disabled_login_loses_its_sessions_at_once_and_comes_back_when_enabled(centre: tuple) -> None:  # noqa: F811
    db, _settings, app, _client_id, incident_id = centre
    browser = Browser(app)
    assert browser.login("op-a").status_code == 303
    assert browser.post(f"/ui/incidents/{incident_id}/acknowledge").status_code == 303  # op-a owns it now
    token = api_token(app, "op-a", PASSWORD)
    assert isinstance(token, str) and reads_incidents(app, token) == 200

    disabled = command(db, "users", "disable", "op-a")
    assert disabled.returncode == 0, disabled.stderr
    assert "disabled; 2 open session(s) ended" in disabled.stdout and "owns 1 open incident" in disabled.stdout
    assert browser.http.get("/ui/queue", follow_redirects=False).status_code == 303  # back to the login
    assert reads_incidents(app, token) == 401
    assert api_token(app, "op-a", PASSWORD) == 401
    assert Browser(app).login("op-a").status_code != 303
    assert api_token(app, "op-b", PASSWORD) != 401, "another login was touched"

    enabled = command(db, "users", "enable", "op-a")
    assert enabled.returncode == 0 and "enabled" in enabled.stdout, enabled.stderr
    assert isinstance(api_token(app, "op-a", PASSWORD), str)
    assert command(db, "users", "disable", "nobody").returncode == 2


def test_a_new_password_ends_the_sessions_opened_with_the_old_one(centre: tuple) -> None:  # noqa: F811
    db, _settings, app, _client_id, _incident_id = centre
    token = api_token(app, "sup", PASSWORD)
    assert isinstance(token, str)
    short = command(db, "users", "set-password", "sup", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    assert reads_incidents(app, token) == 200, "a refused password changed nothing"
    changed = command(db, "users", "set-password", "sup", "--password-stdin", stdin="a-new-long-one\n")
    assert changed.returncode == 0 and "1 open session(s) ended" in changed.stdout, changed.stderr
    assert reads_incidents(app, token) == 401
    assert api_token(app, "sup", PASSWORD) == 401
    assert isinstance(api_token(app, "sup", "a-new-long-one"), str)


def test_a_revoked_integration_key_is_refused_at_once(centre: tuple) -> None:  # noqa: F811
    db, _settings, app, _client_id, _incident_id = centre
    with transaction(db.sessions) as session:
        key = {"X-Api-Key": create_integration_key(session, name="home-care")}
    http = TestClient(app)  # type: ignore[arg-type]
    export = "/api/v1/integration/visits/export?from=2026-01-01T00:00:00%2B00:00&to=2026-02-01T00:00:00%2B00:00"
    assert http.get(export, headers=key).status_code == 200
    revoked = command(db, "integration", "revoke-key", "home-care")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
    assert http.get(export, headers=key).status_code == 401
    assert command(db, "integration", "revoke-key", "home-care").returncode == 2
