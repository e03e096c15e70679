"""Home-care visits: import from the home-care service, CSV with a per-line report, dispatch and device
linking, missed visits, and the integration key kept apart from staff logins.

Controlled clock, real databases (SQLite and PostgreSQL), the API through TestClient.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from alarmcentre import care, clock
from alarmcentre.db import transaction
from alarmcentre.incidents.models import Incident
from alarmcentre.ingest.processor import InboundMessage, process_message
from alarmcentre.ingest.protocol import events_topic
from alarmcentre.runtime import Database
from alarmcentre.tasks.models import OperatorTask, TaskKind, TaskStatus
from alarmcentre.users.service import create_integration_key
from alarmcentre.visits.models import HomeCareWorker, TimeSource, Visit, VisitSource, VisitStatus
from tests.factories import event_payload
from tests.test_dispatch_flow import WORKER, Centre, build_centre, press

WORKER_ID = "HC-W-7"


@pytest.fixture
def centre(any_db: Database) -> Centre:
    return build_centre(any_db)


def key_for(centre: Centre, name: str = "home-care") -> dict[str, str]:
    with transaction(centre.db.sessions) as session:
        return {"X-Api-Key": create_integration_key(session, name=name)}


def batch(client_id: int, *, start_in: timedelta = timedelta(hours=1), notes: str = "") -> dict:
    start = clock.now() + start_in
    return {
        "workers": [{"external_id": WORKER_ID, "name": "Ilze Kalniņa", "phone": "2000 0001", "area": "Centrs"}],
        "visits": [
            {"external_id": "V-1", "client_id": client_id, "worker_external_id": WORKER_ID,
             "planned_start": start.isoformat(), "planned_end": (start + timedelta(hours=1)).isoformat(),
             "tasks": ["meals", "hygiene"], "notes": notes},
            {"external_id": "V-2", "client_id": client_id, "worker_external_id": WORKER_ID,
             "planned_start": (start + timedelta(days=1)).isoformat(), "tasks": ["cleaning"]},
        ],
    }


def device_event(centre: Centre, seq: int, type_: str) -> None:
    now = clock.now()
    with transaction(centre.db.sessions) as session:
        process_message(session, message=InboundMessage(events_topic("FLOW-1"), event_payload(seq, type_, ts=now),
                                                        now), settings=centre.settings)


def visits(centre: Centre) -> list[Visit]:
    with centre.db.sessions() as session:
        return list(session.scalars(select(Visit).order_by(Visit.id)))


def missed_tasks(centre: Centre) -> list[OperatorTask]:
    with centre.db.sessions() as session:
        return list(session.scalars(select(OperatorTask).where(OperatorTask.kind == TaskKind.MISSED_VISIT)))


def test_the_same_batch_twice_stores_one_copy(centre: Centre) -> None:
    key = key_for(centre)
    body = batch(centre.client_id)
    first = centre.http.post("/api/v1/integration/batch", json=body, headers=key)
    assert first.status_code == 200, first.text
    assert first.json() == {"workers": {"created": 1, "updated": 0, "unchanged": 0},
                            "visits": {"created": 2, "updated": 0, "unchanged": 0}, "errors": []}
    again = centre.http.post("/api/v1/integration/batch", json=body, headers=key).json()
    assert again["workers"] == {"created": 0, "updated": 0, "unchanged": 1}
    assert again["visits"] == {"created": 0, "updated": 0, "unchanged": 2}
    stored = visits(centre)
    assert [(v.external_id, v.status, v.source) for v in stored] == [
        ("V-1", VisitStatus.PLANNED, VisitSource.SCHEDULE), ("V-2", VisitStatus.PLANNED, VisitSource.SCHEDULE)]
    assert stored[0].tasks == ["hygiene", "meals"] and stored[0].worker_name == "Ilze Kalniņa"
    with centre.db.sessions() as session:
        (worker,) = session.scalars(select(HomeCareWorker)).all()
        assert worker.phone == WORKER  # normalised to E.164: the dispatch matches it by phone

    body["visits"][0]["notes"] = "key under the mat"
    changed = centre.http.post("/api/v1/integration/batch", json=body, headers=key).json()
    assert changed["visits"] == {"created": 0, "updated": 1, "unchanged": 1}
    assert len(visits(centre)) == 2

    # The client record shows the last visits and the next planned one.
    centre.clock.advance(2 * 3600)
    record = centre.http.get(f"/api/v1/clients/{centre.client_id}/visits", headers=centre.as_("op-a")).json()
    assert [v["external_id"] for v in record["last"]] == ["V-1"]
    assert record["next_planned"]["external_id"] == "V-2"


def test_a_csv_week_stores_the_good_lines_and_reports_the_bad_ones_by_line(centre: Centre) -> None:
    key = key_for(centre)
    centre.http.post("/api/v1/integration/batch", json={"workers": batch(centre.client_id)["workers"]}, headers=key)
    rows = [
        "external_id,client_id,worker_external_id,planned_start,planned_end,tasks,notes",
        f"W-1,{centre.client_id},{WORKER_ID},2026-11-24T09:00,2026-11-24T10:00,meals;hygiene,",  # local time
        "W-2,999999,,2026-11-24T11:00,,meals,",  # no such client
        f"W-3,{centre.client_id},,tomorrow,,meals,",  # not a time
        f"W-4,{centre.client_id},,2026-11-24T12:00+02:00,,dancing,",  # not a task of the service's list
        f"W-5,{centre.client_id},NOBODY,2026-11-24T12:00+02:00,,,",  # unknown worker
        f"W-6,{centre.client_id},{WORKER_ID},2026-11-25T09:00+02:00,2026-11-25T08:00+02:00,,",  # ends first
        f"W-7,{centre.client_id},,2026-11-26T09:00Z,,heating;delivery,\"Bring wood, not coal\"",
    ]
    files = {"file": ("week.csv", "\n".join(rows).encode(), "text/csv")}
    response = centre.http.post("/api/v1/integration/visits.csv", files=files, headers=key)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["visits"] == {"created": 2, "updated": 0, "unchanged": 0}
    assert [(e["row"], e["external_id"]) for e in report["errors"]] == [
        (3, "W-2"), (4, "W-3"), (5, "W-4"), (6, "W-5"), (7, "W-6")]
    assert "client 999999 not found" in report["errors"][0]["error"]
    assert "tasks" in report["errors"][2]["error"]
    stored = {v.external_id: v for v in visits(centre)}
    assert set(stored) == {"W-1", "W-7"}
    assert stored["W-1"].planned_start.isoformat() == "2026-11-24T07:00:00+00:00"  # Riga winter time is UTC+2
    assert stored["W-7"].notes == "Bring wood, not coal" and stored["W-7"].tasks == ["delivery", "heating"]
    again = centre.http.post("/api/v1/integration/visits.csv", files=files, headers=key).json()
    assert again["visits"] == {"created": 0, "updated": 0, "unchanged": 2} and len(again["errors"]) == 5


def test_dispatch_accept_sms_arrival_and_device_departure_make_one_linked_visit(centre: Centre) -> None:
    key = key_for(centre)
    centre.http.post("/api/v1/integration/batch", json={"workers": batch(centre.client_id)["workers"]}, headers=key)
    incident_id = press(centre)
    centre.post("op-a", f"/api/v1/incidents/{incident_id}/acknowledge")
    steps = centre.http.get(f"/api/v1/incidents/{incident_id}/steps", headers=centre.as_("op-a")).json()
    centre.post("op-a", f"/api/v1/incidents/{incident_id}/steps/start", {"step_id": steps[0]["id"]})
    centre.tick(1)
    assert visits(centre) == []

    centre.tick(60)
    centre.reply("op-a", WORKER, "1")
    (visit,) = visits(centre)
    assert (visit.incident_id, visit.step_id, visit.source, visit.status) == (
        incident_id, steps[0]["id"], VisitSource.INCIDENT, VisitStatus.PLANNED)
    with centre.db.sessions() as session:
        worker = session.scalars(select(HomeCareWorker)).one()
    assert visit.worker_id == worker.id, "the step's contact is matched to the worker by phone"

    centre.tick(600)
    arrived = clock.now()
    centre.reply("op-a", WORKER, "IERADOS")
    detail = centre.http.get(f"/api/v1/incidents/{incident_id}", headers=centre.as_("op-a")).json()
    assert detail["carer_on_site_since"] is not None
    assert (detail["carer_on_site_name"], detail["carer_on_site_since"][:19]) == (
        "Ilze Kalniņa", arrived.isoformat()[:19])

    centre.tick(40 * 60)
    departed = clock.now()
    device_event(centre, 2, "carer_departed")
    centre.tick(60)
    centre.reply("op-a", WORKER, "PABEIGTS")  # later, by SMS
    (visit,) = visits(centre)
    assert visit.status == VisitStatus.DONE
    assert (visit.arrived_at, visit.arrived_source) == (arrived, TimeSource.SMS)
    assert (visit.departed_at, visit.departed_source) == (departed, TimeSource.DEVICE), "the device wins"
    detail = centre.http.get(f"/api/v1/incidents/{incident_id}", headers=centre.as_("op-a")).json()
    assert detail["carer_on_site_since"] is None

    # The social service's export: the visit made, in its municipality and period only.
    with centre.db.sessions() as session:
        incident = session.get(Incident, incident_id)
        assert incident is not None
    period = {"from": (arrived - timedelta(hours=1)).isoformat(), "to": (departed + timedelta(hours=1)).isoformat()}
    rows = centre.http.get("/api/v1/integration/visits/export", params=period, headers=key).json()
    assert [(r["incident_id"], r["duration_minutes"], r["worker_external_id"]) for r in rows] == [
        (incident_id, 40, WORKER_ID)]
    assert centre.http.get("/api/v1/integration/visits/export", headers=key,
                           params={**period, "municipality_id": 999}).json() == []
    later = {"from": (departed + timedelta(hours=1)).isoformat(), "to": (departed + timedelta(days=1)).isoformat()}
    assert centre.http.get("/api/v1/integration/visits/export", params=later, headers=key).json() == []
    exported = centre.http.get("/api/v1/integration/visits/export", params={**period, "format": "csv"}, headers=key)
    assert exported.headers["content-type"].startswith("text/csv")
    (row,) = list(csv.DictReader(io.StringIO(exported.text)))
    assert row["client_name"] == "Anna Bērziņa" and row["duration_minutes"] == "40"


def test_the_device_arrival_is_trusted_over_the_sms(centre: Centre) -> None:
    key = key_for(centre)
    centre.http.post("/api/v1/integration/batch", json={"workers": batch(centre.client_id)["workers"]}, headers=key)
    incident_id = press(centre)
    centre.post("op-a", f"/api/v1/incidents/{incident_id}/acknowledge")
    steps = centre.http.get(f"/api/v1/incidents/{incident_id}/steps", headers=centre.as_("op-a")).json()
    centre.post("op-a", f"/api/v1/incidents/{incident_id}/steps/start", {"step_id": steps[0]["id"]})
    centre.reply("op-a", WORKER, "1")
    centre.tick(300)
    device_arrival = clock.now()
    device_event(centre, 2, "carer_arrived")
    centre.tick(120)
    centre.reply("op-a", WORKER, "ARRIVED")
    (visit,) = visits(centre)
    assert (visit.arrived_at, visit.arrived_source, visit.status) == (
        device_arrival, TimeSource.DEVICE, VisitStatus.IN_PROGRESS)


def test_a_missed_planned_visit_raises_one_task_and_a_late_arrival_closes_it(centre: Centre) -> None:
    assert care.CARE_JOBS["missed_visits"] is not None  # the scheduler runs it

    def run() -> int:
        return care.run_job(centre.db.sessions, "missed_visits", care.CARE_JOBS["missed_visits"],
                            settings=centre.settings)

    key = key_for(centre)
    body = batch(centre.client_id, start_in=timedelta(hours=1))
    body["visits"] = body["visits"][:1]
    centre.http.post("/api/v1/integration/batch", json=body, headers=key)
    centre.clock.advance(3600 + 29 * 60)  # 29 minutes into the window
    assert run() == 0 and missed_tasks(centre) == []
    centre.clock.advance(2 * 60)  # 31 minutes
    assert run() == 1
    assert run() == 0, "one task per visit, however often the job runs"
    (task,) = missed_tasks(centre)
    assert task.status == TaskStatus.OPEN and task.client_id == centre.client_id
    assert task.details["worker_phone"] == WORKER and "call the worker" in task.details["instruction"]
    assert visits(centre)[0].status == VisitStatus.MISSED
    listed = centre.http.get("/api/v1/tasks", params={"kind": "missed_visit"}, headers=centre.as_("op-a"))
    assert [t["id"] for t in listed.json()] == [task.id]

    centre.clock.advance(15 * 60)
    late = clock.now()
    device_event(centre, 2, "carer_arrived")  # the worker came late after all
    (task,) = missed_tasks(centre)
    assert (task.status, task.outcome, task.active_key) == (TaskStatus.CLOSED, "carer_arrived", None)
    (visit,) = visits(centre)
    assert (visit.status, visit.arrived_at, visit.arrived_source) == (VisitStatus.IN_PROGRESS, late, TimeSource.DEVICE)
    assert run() == 0 and len(missed_tasks(centre)) == 1


def test_a_cancelled_visit_raises_no_task(centre: Centre) -> None:
    key = key_for(centre)
    body = batch(centre.client_id, start_in=timedelta(minutes=10))
    body["visits"] = body["visits"][:1]
    centre.http.post("/api/v1/integration/batch", json=body, headers=key)
    body["visits"][0]["status"] = "cancelled"
    assert centre.http.post("/api/v1/integration/batch", json=body, headers=key).json()["visits"]["updated"] == 1
    centre.clock.advance(3600)
    assert care.run_job(centre.db.sessions, "missed_visits", care.CARE_JOBS["missed_visits"],
                        settings=centre.settings) == 0
    assert visits(centre)[0].status == VisitStatus.CANCELLED


def test_the_integration_key_and_staff_tokens_each_open_only_their_own_routes(centre: Centre) -> None:
    key = key_for(centre)
    body = {"workers": batch(centre.client_id)["workers"]}
    assert centre.http.post("/api/v1/integration/batch", json=body, headers=key).status_code == 200
    # The key on operator routes: neither as X-Api-Key nor passed off as a bearer token.
    for headers in (key, {"Authorization": f"Bearer {key['X-Api-Key']}"}):
        for path in ("/api/v1/clients", f"/api/v1/clients/{centre.client_id}/visits", "/api/v1/tasks"):
            response = centre.http.get(path, headers=headers)
            assert response.status_code == 401, (path, headers.keys())
    # Staff tokens, even an admin's, on integration routes; and no credentials at all.
    for user in ("op-a", "sup", "admin"):
        response = centre.http.post("/api/v1/integration/batch", json=body, headers=centre.as_(user))
        assert response.status_code == 401 and "X-Api-Key" in response.json()["detail"]
        as_key = {"X-Api-Key": centre.tokens[user]}  # a bearer token is not a key either
        assert centre.http.post("/api/v1/integration/batch", json=body, headers=as_key).status_code == 401
    assert centre.http.get("/api/v1/integration/visits/export",
                           params={"from": "2026-01-01T00:00Z", "to": "2027-01-01T00:00Z"}).status_code == 401
    with centre.db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(HomeCareWorker)) == 1


def test_cli_creates_an_integration_key_printed_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "alarmcentre.cli", *args], capture_output=True, text=True,
                              timeout=60)

    assert cli("db", "upgrade", "--database-url", url).returncode == 0
    made = cli("integration", "create-key", "home-care", "--database-url", url)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("ack_") and len(key) > 40 and "not shown again" in made.stderr
    again = cli("integration", "create-key", "home-care", "--database-url", url)
    assert again.returncode == 2 and "exists already" in again.stderr
    from sqlalchemy import create_engine

    from alarmcentre.users.models import IntegrationKey
    with create_engine(url).connect() as conn:
        stored = conn.execute(select(IntegrationKey.key_hash)).scalar_one()
    assert key not in stored and len(stored) == 64


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_the_csv_export_never_hands_a_spreadsheet_a_formula(start: str) -> None:
    from alarmcentre.visits.service import csv_cell

    assert csv_cell(start + "HYPERLINK(\"http://x\")") == "'" + start + "HYPERLINK(\"http://x\")"
    assert csv_cell("Anna " + start) == "Anna " + start and csv_cell(40) == 40


def test_a_municipalitys_key_reaches_its_own_clients_workers_and_visits_only(centre: Centre) -> None:
    """A key made with --municipality cannot plan visits for another municipality's clients, take over
    its visits or change its workers (whose phones get dispatch texts), nor export its visits (gap 4)."""
    from alarmcentre.clients.models import Client
    from alarmcentre.municipalities.models import Municipality
    from tests.factories import make_client

    with transaction(centre.db.sessions) as session:
        own = session.get(Client, centre.client_id)
        assert own is not None
        other_town = Municipality(name="Citi novads")
        session.add(other_town)
        session.flush()
        stranger = make_client(session, name="Other Town Client")
        stranger.municipality_id = other_town.id
        own_town, stranger_id = own.municipality_id, stranger.id
        scoped = {"X-Api-Key": create_integration_key(session, name="own-town", municipality_id=own_town)}
    every = key_for(centre, "every-town")
    start = (clock.now() + timedelta(hours=1)).isoformat()
    theirs = centre.http.post("/api/v1/integration/batch", headers=every, json={
        "workers": [{"external_id": "W-THEIRS", "name": "Their Worker", "phone": "2000 0009"}],
        "visits": [{"external_id": "V-THEIRS", "client_id": stranger_id, "worker_external_id": "W-THEIRS",
                    "planned_start": start}]})
    assert theirs.status_code == 200 and not theirs.json()["errors"], theirs.text

    answer = centre.http.post("/api/v1/integration/batch", headers=scoped, json={
        "workers": [{"external_id": "W-THEIRS", "name": "Hijacked", "phone": "2999 9999"},
                    {"external_id": "W-OURS", "name": "Our Worker", "phone": "2000 0008"}],
        "visits": [{"external_id": "V-OURS", "client_id": centre.client_id, "worker_external_id": "W-OURS",
                    "planned_start": start},
                   {"external_id": "V-NEW-THEIRS", "client_id": stranger_id, "planned_start": start},
                   {"external_id": "V-THEIRS", "client_id": centre.client_id, "planned_start": start}]})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["workers"]["created"] == 1 and report["visits"]["created"] == 1, report
    errors = sorted(error["external_id"] + ": " + error["error"] for error in report["errors"])
    assert errors == [f"V-NEW-THEIRS: client {stranger_id} not found",
                      "V-THEIRS: visit 'V-THEIRS' belongs to another municipality",
                      "W-THEIRS: worker 'W-THEIRS' belongs to another municipality"], errors
    with centre.db.sessions() as session:
        workers = {w.external_id: (w.phone, w.municipality_id) for w in session.scalars(select(HomeCareWorker))}
        moved = session.scalar(select(Visit).where(Visit.external_id == "V-THEIRS"))
        assert moved is not None and moved.client_id == stranger_id
    assert workers["W-OURS"][1] == own_town and workers["W-THEIRS"][1] is None
    assert "9999" not in workers["W-THEIRS"][0], "another municipality's worker was changed"

    with transaction(centre.db.sessions) as session:
        for visit in session.scalars(select(Visit)):
            visit.status, visit.arrived_at = VisitStatus.DONE, clock.now()
    period = {"from": (clock.now() - timedelta(days=1)).isoformat(),
              "to": (clock.now() + timedelta(days=1)).isoformat()}
    mine = centre.http.get("/api/v1/integration/visits/export", headers=scoped, params=period)
    assert mine.status_code == 200 and {row["external_id"] for row in mine.json()} == {"V-OURS"}, mine.text
    all_of_them = centre.http.get("/api/v1/integration/visits/export", headers=every, params=period)
    assert {row["external_id"] for row in all_of_them.json()} == {"V-OURS", "V-THEIRS"}
    refused = centre.http.get("/api/v1/integration/visits/export", headers=scoped,
                              params={**period, "municipality_id": other_town.id})
    assert refused.status_code == 403


def test_a_key_for_a_municipality_that_does_not_exist_is_refused(centre: Centre) -> None:
    with transaction(centre.db.sessions) as session, pytest.raises(ValueError, match="municipality 999 not found"):
        create_integration_key(session, name="nowhere", municipality_id=999)
