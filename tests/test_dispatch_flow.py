"""Dispatch end to end: alarm → supervisor alert → acknowledge → dispatch → escalation → replies → resolve.

Controlled clock, real database, the API through TestClient, SMS through the outbox provider
(the SMS provider itself is tested against a fake Twilio in test_dispatch_sms.py).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from alarmcentre.app import create_app
from alarmcentre.config import Settings
from alarmcentre.contacts.models import Contact, ContactKind
from alarmcentre.db import transaction
from alarmcentre.devices.models import Device
from alarmcentre.dispatch.escalation import step_failed, sweep
from alarmcentre.dispatch.models import (
    IncidentStep,
    ResourceKind,
    SharedResource,
    SmsMessage,
    SmsStatus,
    StepState,
    Timer,
    TimerKind,
)
from alarmcentre.dispatch.sms import OutboxProvider, SmsSender
from alarmcentre.incidents.models import Incident, IncidentStatus, TimelineEntry
from alarmcentre.ingest.processor import process_message
from alarmcentre.runtime import Database
from alarmcentre.users.models import Role
from alarmcentre.users.service import create_user
from tests.conftest import start_alarmcentre
from tests.factories import Clock, make_client, make_device, message, reply_code, stage_escalations

T0 = datetime(2026, 11, 23, 22, 0, tzinfo=UTC)
WORKER, NEIGHBOUR, SUPERVISOR_PHONE = "+37120000001", "+37120000002", "+37129999999"
PASSWORD = "night-shift-1"


@dataclass
class Centre:
    db: Database
    settings: Settings
    http: TestClient
    sender: SmsSender
    clock: Clock | None  # None: the real clock
    client_id: int
    tokens: dict[str, str]

    def as_(self, user: str) -> dict[str, str]:
        if user not in self.tokens:
            response = self.http.post("/api/v1/auth/token", data={"username": user, "password": PASSWORD})
            assert response.status_code == 200, response.text
            self.tokens[user] = response.json()["access_token"]
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def post(self, user: str, path: str, json: dict | None = None) -> dict:
        response = self.http.post(path, json=json or {}, headers=self.as_(user))
        assert response.status_code < 300, (path, response.status_code, response.text)
        return response.json()

    def reply(self, user: str, phone: str, word: str) -> dict:
        """The person at that phone answers their last dispatch text (in the outbox) with the word and its code,
        through the simulate-reply route as a tester does."""
        (last, *_) = reversed(self.texts(purpose="dispatch", to_number=phone))
        return self.post(user, "/api/v1/sms/simulate-reply",
                         {"from_number": phone, "body": f"{word} {reply_code(last.body)}"})

    def tick(self, seconds: float) -> None:
        """Time passes; the scheduler's jobs run."""
        assert self.clock is not None, "tick() needs the controlled clock"
        self.clock.advance(seconds)
        sweep(self.db.sessions, settings=self.settings)
        self.sender.send_due()

    def timeline(self, incident_id: int) -> list[str]:
        with self.db.sessions() as session:
            return [e.kind.value for e in session.scalars(
                select(TimelineEntry).where(TimelineEntry.incident_id == incident_id).order_by(TimelineEntry.id))]

    def texts(self, **where: object) -> list[SmsMessage]:
        with self.db.sessions() as session:
            query = select(SmsMessage).order_by(SmsMessage.id)
            for name, value in where.items():
                query = query.where(getattr(SmsMessage, name) == value)
            return list(session.scalars(query))


def build_centre(db: Database, *, start: datetime | None = T0) -> Centre:
    """A centre on one clock for the whole test: the controlled clock from `start`, or with
    start=None the real clock (tests with threads or a scheduler process beside them). Never both:
    a token issued at T0 is judged by the real clock as expired."""
    fake = Clock(start) if start is not None else None
    settings = Settings(ack_alert_after_s=60, ack_alert_repeat_s=120, sms_min_interval_s=0)
    with transaction(db.sessions) as s:
        client = make_client(s, care_level=2, name="Anna Bērziņa")
        client.medical_notes = "DIABETES-SECRET-NOTE"
        make_device(s, "FLOW-1", client=client)
        worker = Contact(client_id=client.id, position=1, kind=ContactKind.HOME_CARE_WORKER, name="Ilze",
                         phone=WORKER)
        neighbour = Contact(client_id=client.id, position=2, kind=ContactKind.NEIGHBOUR, name="Kārlis",
                            phone=NEIGHBOUR, language="en")
        ambulance = SharedResource(kind=ResourceKind.EMERGENCY_SERVICES, name="NMPD", phone="113")
        s.add_all([worker, neighbour, ambulance])
        s.flush()
        for name, role in [("op-a", Role.OPERATOR), ("op-b", Role.OPERATOR), ("sup", Role.SUPERVISOR),
                           ("admin", Role.ADMIN), ("tech", Role.TECHNICIAN)]:
            user = create_user(s, username=name, password=PASSWORD, role=role)
            if role == Role.SUPERVISOR:
                user.phone, user.on_call = SUPERVISOR_PHONE, True
        ids = (client.id, worker.id, neighbour.id, ambulance.id)
    app = create_app(settings=settings, session_factory=db.sessions)
    centre = Centre(db, settings, TestClient(app, raise_server_exceptions=False),
                    SmsSender(factory=db.sessions, provider=OutboxProvider(), settings=settings,
                              on_failed=step_failed),
                    fake, ids[0], {})
    plan = {"steps": [
        {"contact_id": ids[1], "channel": "sms", "wait_seconds": 300},
        {"contact_id": ids[2], "channel": "sms", "wait_seconds": 300},
        {"resource_id": ids[3], "channel": "operator_task", "instruction": "call 113", "automatic": False},
    ]}
    response = centre.http.put(f"/api/v1/clients/{ids[0]}/plan", json=plan, headers=centre.as_("sup"))
    assert response.status_code == 200, response.text
    return centre


def press(centre: Centre, seq: int = 1) -> int:
    with transaction(centre.db.sessions) as session:
        result = process_message(session, message=message("FLOW-1", seq), settings=centre.settings)
    assert result.incident_id is not None
    return result.incident_id


@pytest.fixture
def centre(any_db: Database) -> Centre:
    return build_centre(any_db)


def test_the_whole_night(centre: Centre) -> None:
    incident_id = press(centre)
    # The plan was copied onto the incident; editing the plan now changes nothing for it.
    centre.http.put(f"/api/v1/clients/{centre.client_id}/plan", json={"steps": []}, headers=centre.as_("sup"))
    detail = centre.http.get(f"/api/v1/incidents/{incident_id}", headers=centre.as_("op-a")).json()
    assert [(s["name"], s["state"]) for s in detail["steps"]] == [
        ("Ilze", "pending"), ("Kārlis", "pending"), ("NMPD", "pending")]
    step_ids = [s["id"] for s in detail["steps"]]

    centre.tick(59)
    assert centre.texts(purpose="supervisor_alert") == []
    centre.tick(2)  # 61 s unacknowledged
    assert [t.to_number for t in centre.texts(purpose="supervisor_alert")] == [SUPERVISOR_PHONE]
    centre.tick(120)  # still nobody: the alert repeats
    assert len(centre.texts(purpose="supervisor_alert")) == 2

    assert centre.post("op-a", f"/api/v1/incidents/{incident_id}/acknowledge")["owner_id"] is not None
    second = centre.http.post(f"/api/v1/incidents/{incident_id}/acknowledge", headers=centre.as_("op-b"))
    assert second.status_code == 409 and "op-a" in second.json()["detail"]
    centre.tick(600)
    assert len(centre.texts(purpose="supervisor_alert")) == 2, "no alert after acknowledgement"

    centre.post("op-a", f"/api/v1/incidents/{incident_id}/calls",
                {"answered": True, "client_said": "needs_help", "notes": "fell in the kitchen"})
    centre.post("op-a", f"/api/v1/incidents/{incident_id}/steps/start", {"step_id": step_ids[0]})
    centre.tick(1)
    (to_worker,) = centre.texts(purpose="dispatch")
    assert to_worker.to_number == WORKER and to_worker.status == SmsStatus.SENT
    assert "Anna Bērziņa" in to_worker.body and f"1 {reply_code(to_worker.body)} - pieņemu" in to_worker.body

    centre.tick(298)
    assert len(centre.texts(purpose="dispatch")) == 1
    centre.tick(2)  # the worker did not answer within 300 s: the neighbour is texted by itself
    dispatches = centre.texts(purpose="dispatch")
    assert [t.to_number for t in dispatches] == [WORKER, NEIGHBOUR]
    # the neighbour's language is English
    assert f"Reply 1 {reply_code(dispatches[1].body)} = accept" in dispatches[1].body

    centre.reply("op-a", NEIGHBOUR, "1")
    centre.reply("op-a", NEIGHBOUR, "arrived")
    centre.tick(1)
    with centre.db.sessions() as session:
        states = [s.state for s in session.scalars(select(IncidentStep).order_by(IncidentStep.position))]
    assert states == [StepState.NO_ANSWER, StepState.ARRIVED, StepState.PENDING]
    centre.tick(1000)  # an accepted step never times out
    assert len(centre.texts(purpose="dispatch")) == 2

    resolved = centre.post("op-a", f"/api/v1/incidents/{incident_id}/resolve",
                           {"outcome": "relative_attended", "notes": "neighbour helped her up"})
    assert resolved["status"] == "resolved" and resolved["outcome"] == "relative_attended"
    centre.reply("op-a", NEIGHBOUR, "DONE")
    centre.tick(3600)
    ended = resolved_at(centre, incident_id)
    sent_after = [t for t in centre.texts(incident_id=incident_id)
                  if t.sent_at is not None and t.sent_at > ended and t.purpose != "reply"]
    assert sent_after == [], "nothing is sent for the incident after resolve"

    assert centre.timeline(incident_id) == [
        "opened", "supervisor_alert", "supervisor_alert", "acknowledged", "call",
        "step_started", "step_timeout", "step_started",
        "sms_reply", "step_answer", "sms_reply", "step_answer",
        "resolved",
    ]
    with centre.db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Timer).where(Timer.done_at.is_(None))) == 0
        bodies = [m.body for m in session.scalars(select(SmsMessage))]
    assert not [b for b in bodies if "DIABETES" in b], "medical notes never go into a text"


def resolved_at(centre: Centre, incident_id: int) -> datetime:
    with centre.db.sessions() as session:
        incident = session.get(Incident, incident_id)
        assert incident is not None and incident.resolved_at is not None
        return incident.resolved_at


def test_a_decline_moves_on_at_once_and_an_exhausted_plan_goes_to_the_operator(centre: Centre) -> None:
    incident_id = press(centre)
    centre.post("op-a", f"/api/v1/incidents/{incident_id}/acknowledge")
    steps = centre.http.get(f"/api/v1/incidents/{incident_id}/steps", headers=centre.as_("op-a")).json()
    centre.post("op-a", f"/api/v1/incidents/{incident_id}/steps/start", {"step_id": steps[0]["id"]})
    centre.reply("op-a", WORKER, "Nē")
    assert [t.to_number for t in centre.texts(purpose="dispatch")] == [WORKER, NEIGHBOUR]
    centre.reply("op-a", NEIGHBOUR, "no")
    # The next step (call 113) is operator-driven: it waits for the operator, nothing is texted.
    assert len(centre.texts(purpose="dispatch")) == 2
    assert centre.timeline(incident_id)[-1] == "note"
    centre.post("op-a", f"/api/v1/incidents/{incident_id}/steps/start", {"step_id": steps[2]["id"]})
    centre.post("op-a", f"/api/v1/incidents/{incident_id}/emergency", {"number": "113", "reference": "A-77"})
    after = centre.http.get(f"/api/v1/incidents/{incident_id}/steps", headers=centre.as_("op-a")).json()
    assert [s["state"] for s in after] == ["declined", "declined", "done"]


def test_invalid_actions_are_refused_clearly(centre: Centre) -> None:
    incident_id = press(centre)
    base = f"/api/v1/incidents/{incident_id}"

    def status(user: str, path: str, body: dict | None = None) -> int:
        return centre.http.post(base + path, json=body or {}, headers=centre.as_(user)).status_code

    assert status("op-a", "/resolve", {"outcome": "test"}) == 409  # acknowledge first
    assert status("tech", "/acknowledge") == 403
    assert status("op-a", "/acknowledge") == 200
    assert status("op-b", "/notes", {"text": "I saw it too"}) == 200  # anyone may add a note
    assert status("op-b", "/resolve", {"outcome": "test"}) == 403  # not the owner
    assert status("op-a", "/resolve", {"outcome": "made_up"}) == 422
    assert status("op-a", "/steps/start", {"step_id": 999999}) == 422
    assert status("op-a", "/handover", {"to_user_id": 999999}) == 422
    users = {u: centre.http.get("/api/v1/auth/me", headers=centre.as_(u)).json()["id"] for u in ("op-b", "tech")}
    assert status("op-a", "/handover", {"to_user_id": users["tech"]}) == 422
    assert status("op-a", "/handover", {"to_user_id": users["op-b"]}) == 200
    assert status("op-a", "/resolve", {"outcome": "test"}) == 403  # handed over
    assert status("sup", "/resolve", {"outcome": "accidental_press"}) == 200  # supervisors may
    assert status("op-b", "/resolve", {"outcome": "test"}) == 409
    assert status("op-b", "/reopen", {"reason": "she pressed again by phone"}) == 200
    assert status("op-b", "/reopen", {"reason": "again"}) == 409
    assert status("op-b", "/resolve", {"outcome": "test"}) == 200
    centre.clock.advance(31 * 60)
    assert status("op-b", "/reopen", {"reason": "too late"}) == 409  # past the window, operators cannot
    assert status("sup", "/reopen", {"reason": "supervisor may"}) == 200
    assert centre.http.post("/api/v1/incidents/999999/acknowledge", headers=centre.as_("op-a")).status_code == 404


def test_reopen_is_refused_while_the_client_has_another_active_incident(centre: Centre) -> None:
    first = press(centre, 1)
    centre.post("op-a", f"/api/v1/incidents/{first}/acknowledge")
    centre.post("op-a", f"/api/v1/incidents/{first}/resolve", {"outcome": "accidental_press"})
    second = press(centre, 2)
    assert second != first
    response = centre.http.post(f"/api/v1/incidents/{first}/reopen", json={"reason": "x"},
                                headers=centre.as_("op-a"))
    assert response.status_code == 409 and "another active incident" in response.json()["detail"]


def test_plan_validation(centre: Centre) -> None:
    url = f"/api/v1/clients/{centre.client_id}/plan"
    headers = centre.as_("sup")
    with centre.db.sessions() as session:
        other = session.scalars(select(Contact).where(Contact.client_id == centre.client_id)).first()
        resource = session.scalars(select(SharedResource)).first()
        assert other is not None and resource is not None
    bad = [
        ({"steps": [{"channel": "sms"}]}, "exactly one"),
        ({"steps": [{"contact_id": other.id, "resource_id": resource.id}]}, "exactly one"),
        ({"steps": [{"contact_id": 999999}]}, "not one of this client's contacts"),
        ({"steps": [{"resource_id": resource.id, "channel": "sms"}]}, "operator_task"),
        ({"steps": [{"contact_id": other.id, "wait_seconds": 5}]}, "greater than or equal"),
    ]
    for body, expected in bad:
        response = centre.http.put(url, json=body, headers=headers)
        assert response.status_code == 422, body
        assert expected in response.text, (body, response.text)
    assert centre.http.put(url, json={"steps": []}, headers=centre.as_("op-a")).status_code == 403
    assert len(centre.http.get(url, headers=centre.as_("op-a")).json()) == 3, "a refused edit changes nothing"


# -- PostgreSQL: concurrency and restarts ------------------------------------------------


def test_two_operators_acknowledging_at_once_one_wins(postgres_db: Database) -> None:
    centre = build_centre(postgres_db, start=None)
    results: list[int] = []
    for round_ in range(5):
        incident_id = press(centre, seq=round_ + 1)
        barrier = threading.Barrier(2)
        statuses: list[int] = []

        def claim(user: str, incident_id: int = incident_id, barrier: threading.Barrier = barrier,
                  statuses: list[int] = statuses) -> None:
            headers = centre.as_(user)
            barrier.wait()
            statuses.append(centre.http.post(f"/api/v1/incidents/{incident_id}/acknowledge",
                                             headers=headers).status_code)

        threads = [threading.Thread(target=claim, args=(u,)) for u in ("op-a", "op-b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(statuses) == [200, 409], statuses
        results.append(len(centre.timeline(incident_id)))
        centre.post("sup", f"/api/v1/incidents/{incident_id}/resolve", {"outcome": "test"})
    assert all(count >= 2 for count in results)


def _scheduler(database_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {"ALARMCENTRE_DATABASE_URL": database_url, "ALARMCENTRE_METRICS_PORT": "0",
           "ALARMCENTRE_SWEEP_INTERVAL_S": "0.1", "ALARMCENTRE_SMS_MIN_INTERVAL_S": "0",
           "ALARMCENTRE_ACK_ALERT_AFTER_S": "3600"}
    return start_alarmcentre("scheduler", env, log)


def _stage_escalations(db: Database, count: int, first_due: datetime, spread_s: float) -> None:
    """`count` incidents, each with step 1 waiting and its timeout due between first_due and +spread."""
    build_centre(db, start=None)
    with transaction(db.sessions) as session:
        stage_escalations(session, count, first_due, spread_s)


def _count(db: Database, model: type, *where: object) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def _assert_each_step_exactly_once(db: Database, count: int) -> None:
    assert _count(db, Timer, Timer.kind == TimerKind.STEP_TIMEOUT, Timer.outcome == "fired") == count
    assert _count(db, TimelineEntry, TimelineEntry.kind == "step_timeout") == count
    assert _count(db, TimelineEntry, TimelineEntry.kind == "step_started") == count
    assert _count(db, IncidentStep, IncidentStep.state == StepState.NO_ANSWER) == count
    assert _count(db, SmsMessage, SmsMessage.purpose == "dispatch") == count
    with db.sessions() as session:
        duplicates = session.execute(select(SmsMessage.to_number, func.count()).group_by(SmsMessage.to_number)
                                     .having(func.count() > 1)).all()
    assert duplicates == []


@pytest.mark.needs_true_clock
def test_sigkill_of_the_scheduler_mid_escalation_fires_each_step_exactly_once(
    postgres_db: Database, postgres_url: str, tmp_path: Path
) -> None:
    count = 60
    first_due = datetime.now(UTC) + timedelta(seconds=2)
    _stage_escalations(postgres_db, count, first_due, spread_s=4.0)  # half come due while it is down
    log = tmp_path / "scheduler.log"
    scheduler = _scheduler(postgres_url, log)
    try:
        deadline = time.monotonic() + 30
        while _count(postgres_db, Timer, Timer.outcome == "fired") < 10:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.02)
        scheduler.send_signal(signal.SIGKILL)
        scheduler.wait(10)
        fired_at_kill = _count(postgres_db, Timer, Timer.outcome == "fired")
        assert fired_at_kill < count, "everything fired before the kill: not a mid-escalation test"
        time.sleep(4)  # the rest come due while no scheduler runs
        scheduler = _scheduler(postgres_url, log)
        deadline = time.monotonic() + 30
        while _count(postgres_db, TimelineEntry, TimelineEntry.kind == "step_started") < count:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(1)
    finally:
        scheduler.send_signal(signal.SIGTERM)
        scheduler.wait(15)
    _assert_each_step_exactly_once(postgres_db, count)


@pytest.mark.needs_true_clock
def test_two_schedulers_at_once_fire_each_step_exactly_once(
    postgres_db: Database, postgres_url: str, tmp_path: Path
) -> None:
    count = 60
    _stage_escalations(postgres_db, count, datetime.now(UTC) + timedelta(seconds=2), spread_s=2.0)
    schedulers = [_scheduler(postgres_url, tmp_path / f"s{i}.log") for i in range(2)]
    try:
        deadline = time.monotonic() + 40
        while _count(postgres_db, TimelineEntry, TimelineEntry.kind == "step_started") < count:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.5)
    finally:
        for process in schedulers:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
    _assert_each_step_exactly_once(postgres_db, count)


def test_a_reopened_technical_incident_does_not_take_the_persons_alarm_slot(centre: Centre) -> None:
    """Reopening a 'device silent' incident must not make the client's next alarm join it."""
    with transaction(centre.db.sessions) as session:
        device = session.scalars(select(Device).where(Device.serial == "FLOW-1")).one()
        silent = Incident(client_id=centre.client_id, device_id=device.id, kind="device_silent", priority=3,
                          status=IncidentStatus.RESOLVED, active_key=None, opened_at=T0, last_signal_at=T0,
                          resolved_at=T0, outcome="restored")
        session.add(silent)
        session.flush()
        silent_id = silent.id
    centre.post("sup", f"/api/v1/incidents/{silent_id}/reopen", {"reason": "still silent"})
    alarm = press(centre)
    assert alarm != silent_id, "a real alarm opens its own incident"
