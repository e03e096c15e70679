"""The monthly answer-time report (API JSON and CSV, the supervisors' page): which alarms count, in
which month (the centre's zone), per municipality, and who may read it. Real database, both kinds."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from alarmcentre.app import create_app
from alarmcentre.clients.models import Client
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.incidents.models import Incident, IncidentKind, IncidentStatus
from alarmcentre.municipalities.models import Municipality
from alarmcentre.runtime import Database
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User
from alarmcentre.voice.models import CallDirection, CallPurpose, VoiceCall
from tests.test_dashboard import PASSWORD_HASH, Browser

# 1 December 2026 00:00 in Riga is 30 November 22:00 UTC.
DECEMBER = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)


@dataclass
class Reports:
    http: TestClient
    tokens: dict[str, str]

    def get(self, path: str, role: str = "supervisor") -> object:
        return self.http.get(path, headers={"Authorization": f"Bearer {self.tokens[role]}"})


def _incident(session: Session, client: Client | None, *, opened: datetime, taken_s: float | None = None,
              spoken_s: float | None = None, kind: IncidentKind = IncidentKind.BUTTON_PRESS,
              call: bool = False, outcome: str | None = "accidental_press") -> None:
    incident = Incident(client_id=client.id if client else None, kind=kind, priority=2,
                        status=IncidentStatus.RESOLVED if outcome else IncidentStatus.OPEN, opened_at=opened,
                        last_signal_at=opened, outcome=outcome,
                        acknowledged_at=opened + timedelta(seconds=taken_s) if taken_s is not None else None,
                        spoken_at=opened + timedelta(seconds=spoken_s) if spoken_s is not None else None)
    session.add(incident)
    session.flush()
    if call:
        session.add(VoiceCall(call_sid=f"CA{incident.id:032d}", direction=CallDirection.INBOUND,
                              purpose=CallPurpose.INCOMING, incident_id=incident.id, from_number="+37126000001",
                              to_number="+37167000000", status="completed"))


@pytest.fixture
def reports(any_db: Database, tmp_path: Path) -> Iterator[Reports]:
    with transaction(any_db.sessions) as session:
        ogre, riga = Municipality(name="Ogres novads"), Municipality(name="=HYPERLINK(\"x\") Rīga")
        session.add_all([ogre, riga])
        session.flush()
        anna = Client(municipality_id=ogre.id, full_name="Anna", address="Ogre", care_level=2)
        juris = Client(municipality_id=riga.id, full_name="Juris", address="Rīga", care_level=2)
        session.add_all([anna, juris])
        session.flush()
        day = DECEMBER + timedelta(days=3)
        _incident(session, anna, opened=DECEMBER + timedelta(minutes=30), taken_s=30)  # 00:30 Riga, 1 December
        _incident(session, anna, opened=day, taken_s=100, spoken_s=45, call=True, kind=IncidentKind.VOICE_CALL)
        _incident(session, anna, opened=day, taken_s=400, spoken_s=200, call=True, outcome="ambulance")
        _incident(session, anna, opened=day, outcome=None)  # never taken, still open
        _incident(session, juris, opened=day, taken_s=20, kind=IncidentKind.FALL_DETECTED)
        _incident(session, None, opened=day, taken_s=50, call=True, kind=IncidentKind.VOICE_CALL)  # unknown caller
        # Not counted: technical, and the month before (23:30 Riga on 30 November).
        _incident(session, anna, opened=day, taken_s=5, kind=IncidentKind.DEVICE_SILENT)
        _incident(session, anna, opened=DECEMBER - timedelta(minutes=30), taken_s=10)
        tokens = {}
        for role in (Role.SUPERVISOR, Role.OPERATOR, Role.TECHNICIAN, Role.ADMIN):
            user = User(username=role.value, full_name=role.value, password_hash=PASSWORD_HASH, role=role)
            session.add(user)
            session.flush()
            tokens[role.value] = users.issue_token(session, user=user, ttl=timedelta(hours=1))
    settings = Settings(data_dir=tmp_path)
    with TestClient(create_app(settings=settings, session_factory=any_db.sessions)) as http:
        yield Reports(http, tokens)


def test_the_month_counts_alarms_taken_and_callers_spoken_to_per_municipality(reports: Reports) -> None:
    response = reports.get("/api/v1/reports/answer-times?month=2026-12")
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert (body["month"], body["timezone"], body["target_s"], body["limit_s"]) == ("2026-12", "Europe/Riga", 60, 180)
    rows = {row["municipality"]: row for row in body["rows"]}
    assert list(rows) == ["=HYPERLINK(\"x\") Rīga", "Ogres novads", "—"]
    ogre = rows["Ogres novads"]
    taken = (ogre["alarms"], ogre["taken_within_target"], ogre["taken_within_limit"], ogre["never_taken"])
    assert taken == (4, 1, 2, 1)
    assert ogre["taken_within_target_pct"] == 25.0 and ogre["median_taken_s"] == 100.0
    assert (ogre["calls"], ogre["spoken_within_target"], ogre["spoken_within_limit"]) == (2, 1, 1)
    assert ogre["spoken_within_target_pct"] == 50.0 and ogre["median_spoken_s"] == 122.5
    assert ogre["outcomes"] == {"accidental_press": 2, "ambulance": 1, "unresolved": 1}
    unknown = rows["—"]
    assert (unknown["alarms"], unknown["calls"], unknown["spoken_within_limit"]) == (1, 1, 0)
    total = body["total"]
    assert (total["alarms"], total["calls"], total["never_taken"]) == (6, 3, 1)
    assert total["taken_within_target"] == 3 and total["spoken_within_target_pct"] == 33.3

    november = reports.get("/api/v1/reports/answer-times?month=2026-11").json()  # type: ignore[attr-defined]
    assert november["total"]["alarms"] == 1 and november["total"]["spoken_within_target_pct"] is None


def test_the_csv_has_a_line_per_municipality_and_a_total_and_no_formula(reports: Reports) -> None:
    response = reports.get("/api/v1/reports/answer-times?month=2026-12&format=csv")
    assert response.status_code == 200  # type: ignore[attr-defined]
    assert response.headers["content-type"].startswith("text/csv")  # type: ignore[attr-defined]
    assert "answer-times-2026-12.csv" in response.headers["content-disposition"]  # type: ignore[attr-defined]
    lines = list(csv.DictReader(io.StringIO(response.text)))  # type: ignore[attr-defined]
    assert [line["municipality"] for line in lines] == ["'=HYPERLINK(\"x\") Rīga", "Ogres novads", "—", "total"]
    assert lines[1]["outcomes"] == "accidental_press=2;ambulance=1;unresolved=1"
    assert lines[3]["alarms"] == "6" and lines[3]["month"] == "2026-12"


def test_only_supervisors_and_admins_read_it_and_a_bad_month_is_refused(reports: Reports) -> None:
    path = "/api/v1/reports/answer-times?month=2026-12"
    assert [reports.get(path, role).status_code for role in ("operator", "technician", "admin")] == [  # type: ignore[attr-defined]
        403, 403, 200]
    assert reports.http.get(path).status_code == 401
    for month in ("2026-13", "26-12", "2026-1", "1999-12"):
        assert reports.get(f"/api/v1/reports/answer-times?month={month}").status_code == 422, month  # type: ignore[attr-defined]


def test_the_supervisors_page_shows_the_month_in_latvian_with_its_csv(reports: Reports) -> None:
    supervisor = Browser(reports.http.app)
    supervisor.login("supervisor")
    page = supervisor.http.get("/ui/reports/answer-times?month=2026-12")
    assert page.status_code == 200
    assert "Atbildes laiki · 2026-12" in page.text and 'data-municipality="Ogres novads"' in page.text
    assert "Sarunā 60 s laikā" in page.text and "Vēl nav atrisināts: 1" in page.text
    assert 'data-testid="nav-reports"' in page.text
    csv_page = supervisor.http.get("/ui/reports/answer-times.csv?month=2026-12")
    assert csv_page.status_code == 200 and csv_page.text.splitlines()[-1].startswith("2026-12,total,6,")
    operator = Browser(reports.http.app)
    operator.login("operator")
    assert operator.http.get("/ui/reports/answer-times").status_code == 403
    assert 'data-testid="nav-reports"' not in operator.http.get("/ui/queue").text
