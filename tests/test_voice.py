"""Voice calls on the incident, with real parts: the real `twilio` library placing calls on a local fake
of Twilio's REST API (tests/fake_twilio.py), Twilio's webhooks posted and signed as Twilio does, the
dashboard's forms through TestClient, a real database (SQLite and PostgreSQL).

Each test plays Twilio's side of the conversation from the TwiML the centre answered: the queue it
put the caller in, the URL it gave for the moment an operator takes the caller, the Dial action.
Covered: who is calling (device SIM, client's phone, unknown), one incident per person, answering,
calling a person, every report applied once (retries, out-of-order), a bad signature, Twilio down.
"""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from alarmcentre.app import create_app
from alarmcentre.clients.models import Client, Language
from alarmcentre.config import Settings
from alarmcentre.contacts.models import Contact, ContactKind
from alarmcentre.db import transaction
from alarmcentre.dispatch import actions
from alarmcentre.dispatch.models import Channel, IncidentStep, PlanStep, SmsMessage, StepState, Timer
from alarmcentre.incidents.models import Incident, IncidentKind, IncidentStatus, TimelineEntry, TimelineKind
from alarmcentre.ingest.processor import process_message
from alarmcentre.runtime import Database
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User
from alarmcentre.voice import service as voice
from alarmcentre.voice.dispatch import VoiceDialer
from alarmcentre.voice.models import CallPurpose, VoiceCall
from alarmcentre.voice.provider import build_voice
from tests.factories import make_client, make_device, message
from tests.fake_twilio import Callback, FakeTwilio
from tests.test_dashboard import PASSWORD, PASSWORD_HASH, Browser

ACCOUNT_SID = "AC" + "0ce1ca11" * 4
AUTH_TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
CENTRE_NUMBER = "+37167000000"
PUBLIC_URL = "https://alarms.example.lv"
CLIENT_PHONE, DEVICE_SIM, OPERATOR_PHONE, NEIGHBOUR = "+37126000001", "+37126000002", "+37129000001", "+37126000003"
STRANGER = "+37126999999"
VOICE = "/webhooks/twilio/voice"


@dataclass
class Line:
    """The centre with Twilio configured (pointing at the fake), one client with a device and a plan."""

    db: Database
    settings: Settings
    http: TestClient
    fake: FakeTwilio
    client_id: int
    operator_id: int

    # -- Twilio's side -----------------------------------------------------------------------

    def post(self, callback: Callback) -> httpx.Response:
        parts = urllib.parse.urlsplit(callback.url)
        assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL, callback.url
        return self.http.post(parts.path + (f"?{parts.query}" if parts.query else ""), data=callback.form,
                              headers=callback.headers)

    def call_in(self, from_: str, *, sid: str | None = None) -> tuple[str, ET.Element]:
        """Someone calls the centre's number; returns the call's sid and the TwiML the centre answered."""
        form = self.fake.incoming_call(from_=from_, sid=sid)
        response = self.post(self.fake.signed(PUBLIC_URL + VOICE, form))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/xml")
        return form["CallSid"], ET.fromstring(response.text)

    def caller_leaves_queue(self, enqueue: ET.Element, sid: str, result: str, waited: int = 12) -> None:
        form = {"AccountSid": ACCOUNT_SID, "CallSid": sid, "QueueResult": result, "QueueTime": str(waited),
                "QueueSid": "QU" + "0" * 32}
        assert self.post(self.fake.signed(enqueue.attrib["action"], form)).status_code == 200

    def operator_picks_up(self, leg_sid: str, caller_sid: str, waited: int = 9) -> ET.Element:
        """The operator answers their phone; Twilio runs the call's TwiML and dequeues the caller."""
        call = self.fake.calls[leg_sid]
        for status in ("initiated", "ringing", "in-progress"):
            assert self.post(self.fake.call_status(leg_sid, status)).status_code == 204
        queue = ET.fromstring(call.twiml).find("Dial/Queue")
        assert queue is not None, call.twiml
        form = {"AccountSid": ACCOUNT_SID, "CallSid": caller_sid, "QueueTime": str(waited),
                "DequeueingCallSid": leg_sid, "QueueSid": "QU" + "0" * 32}
        response = self.post(self.fake.signed(queue.attrib["url"], form))
        assert response.status_code == 200 and ET.fromstring(response.text).tag == "Response"
        return queue

    def incoming_status(self, sid: str, status: str, duration: int | None = None) -> int:
        """The status callback of the number (configured in Twilio's console, no query string)."""
        form = {"AccountSid": ACCOUNT_SID, "CallSid": sid, "CallStatus": status, "Direction": "inbound"}
        if duration is not None:
            form["CallDuration"] = str(duration)
        return self.post(self.fake.signed(PUBLIC_URL + VOICE + "/status", form)).status_code

    # -- the centre's side -------------------------------------------------------------------

    def act(self, do: Any, incident_id: int, user_id: int | None = None) -> VoiceCall:
        with transaction(self.db.sessions) as session:
            incident, user = session.get_one(Incident, incident_id), session.get_one(User, user_id or self.operator_id)
            return do(session, provider=build_voice(self.settings), base=PUBLIC_URL, incident=incident,
                      user=user)

    def incident_of(self, sid: str) -> Incident:
        with self.db.sessions() as session:
            call = session.scalar(select(VoiceCall).where(VoiceCall.call_sid == sid))
            assert call is not None and call.incident_id is not None
            return session.get_one(Incident, call.incident_id)

    def timeline(self, incident_id: int) -> list[tuple[TimelineKind, dict[str, Any]]]:
        with self.db.sessions() as session:
            return [(e.kind, e.details) for e in session.scalars(
                select(TimelineEntry).where(TimelineEntry.incident_id == incident_id).order_by(TimelineEntry.id))]

    def kinds(self, incident_id: int) -> list[TimelineKind]:
        return [kind for kind, _ in self.timeline(incident_id)]

    def count(self, model: type) -> int:
        with self.db.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)


def voice_settings(fake: FakeTwilio, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
                    twilio_from_number=CENTRE_NUMBER, twilio_api_base=fake.url, public_url=PUBLIC_URL)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=CENTRE_NUMBER) as server:
        yield server


@pytest.fixture
def line(any_db: Database, fake: FakeTwilio, tmp_path: Path) -> Iterator[Line]:
    settings = voice_settings(fake, tmp_path)
    with transaction(any_db.sessions) as session:
        client = make_client(session, care_level=3, name="Marta Kalniņa")
        client.phone, client.language = CLIENT_PHONE, Language.LV
        device = make_device(session, "VOICE-1", client=client)
        device.sim_number = DEVICE_SIM
        neighbour = Contact(client_id=client.id, position=1, kind=ContactKind.NEIGHBOUR, name="Kārlis Ozols",
                            phone=NEIGHBOUR, language=Language.LV)
        session.add(neighbour)
        session.flush()
        session.add(PlanStep(client_id=client.id, position=1, contact_id=neighbour.id, channel=Channel.SMS,
                             wait_seconds=300))
        operator = User(username="op", full_name="Ilze Kalna", password_hash=PASSWORD_HASH, role=Role.OPERATOR,
                        phone=OPERATOR_PHONE)
        other = User(username="op2", full_name="Jānis Liepa", password_hash=PASSWORD_HASH, role=Role.OPERATOR)
        session.add_all([operator, other])
        session.flush()
        client_id, operator_id = client.id, operator.id
    with TestClient(create_app(settings=settings, session_factory=any_db.sessions)) as http:
        yield Line(any_db, settings, http, fake, client_id, operator_id)


# -- the call comes in -----------------------------------------------------------------------


def test_a_call_from_the_device_sim_opens_an_incident_and_waits_in_its_queue(line: Line) -> None:
    sid, twiml = line.call_in(DEVICE_SIM)
    incident = line.incident_of(sid)
    assert incident.kind == IncidentKind.VOICE_CALL and incident.client_id == line.client_id
    assert incident.status == IncidentStatus.OPEN and incident.priority == 1  # care level 3
    say, enqueue = twiml.find("Say"), twiml.find("Enqueue")
    assert say is not None and say.attrib["language"] == "lv-LV" and "trauksmes centru" in (say.text or "")
    assert enqueue is not None and enqueue.text == f"incident-{incident.id}"
    assert enqueue.attrib["action"].startswith(f"{PUBLIC_URL}{VOICE}/left?call=")
    timeline = line.timeline(incident.id)
    assert [kind for kind, _ in timeline] == [TimelineKind.OPENED, TimelineKind.CALL_INCOMING]
    assert timeline[1][1]["caller"] == "device" and timeline[1][1]["from"] == DEVICE_SIM
    with line.db.sessions() as session:  # a call is an alarm: the plan is copied, the acknowledgement clock runs
        assert session.scalar(select(func.count()).select_from(IncidentStep)
                              .where(IncidentStep.incident_id == incident.id)) == 1
        assert session.get_one(Client, line.client_id).last_contact_at is not None

    # Twilio retries the webhook (a timeout on its side): the same call, the same answer, nothing twice.
    again_sid, again = line.call_in(DEVICE_SIM, sid=sid)
    assert again_sid == sid and ET.tostring(again) == ET.tostring(twiml)
    assert line.kinds(incident.id) == [TimelineKind.OPENED, TimelineKind.CALL_INCOMING]
    assert line.count(VoiceCall) == 1 and line.count(Incident) == 1


def test_a_call_joins_the_alarm_the_person_already_has(line: Line) -> None:
    with transaction(line.db.sessions) as session:
        pressed = process_message(session, message=message("VOICE-1", 1), settings=Settings())
        assert pressed.incident_opened is not None
        alarm = pressed.incident_opened
    sid, _ = line.call_in(CLIENT_PHONE)  # her own phone this time, not the device
    incident = line.incident_of(sid)
    assert incident.id == alarm and incident.kind == IncidentKind.BUTTON_PRESS and incident.signal_count == 2
    assert line.kinds(alarm)[-1] == TimelineKind.CALL_INCOMING
    assert line.count(Incident) == 1


def test_an_unknown_caller_is_queued_too_and_calls_again_on_the_same_incident(line: Line) -> None:
    first, twiml = line.call_in(STRANGER)
    incident = line.incident_of(first)
    assert incident.client_id is None and incident.device_id is None and incident.kind == IncidentKind.VOICE_CALL
    assert twiml.find("Enqueue") is not None  # never rejected
    withheld, _ = line.call_in("anonymous")  # a withheld number is another unknown caller
    assert line.incident_of(withheld).id != incident.id
    again, _ = line.call_in(STRANGER)
    assert line.incident_of(again).id == incident.id
    browser = Browser(line.http.app)
    browser.login("op")
    queue = browser.http.get("/ui/queue/rows").text
    assert "Nezināms zvanītājs" in queue and queue.count('data-testid="caller-waiting"') == 2


# -- answering -------------------------------------------------------------------------------


def test_answer_rings_the_operator_then_connects_the_caller_and_every_report_counts_once(line: Line) -> None:
    sid, twiml = line.call_in(CLIENT_PHONE)
    incident_id = line.incident_of(sid).id
    enqueue = twiml.find("Enqueue")
    assert enqueue is not None
    leg = line.act(voice.answer, incident_id)
    placed = line.fake.calls[str(leg.call_sid)]
    assert placed.to == OPERATOR_PHONE and placed.from_ == CENTRE_NUMBER
    assert placed.status_callback == f"{PUBLIC_URL}{VOICE}/status?call={leg.id}"
    assert set(placed.events) == {"initiated", "ringing", "answered", "completed"}
    assert line.incident_of(sid).status == IncidentStatus.ACKNOWLEDGED  # answering is taking it

    line.operator_picks_up(str(leg.call_sid), sid, waited=9)
    line.caller_leaves_queue(enqueue, sid, "bridged")
    incident = line.incident_of(sid)
    assert incident.spoken_at is not None and incident.owner_id == line.operator_id
    # They talk; then both hang up. Twilio reports, retries and sends one report late.
    assert line.post(line.fake.call_status(str(leg.call_sid), "completed", duration=95)).status_code == 204
    assert line.incoming_status(sid, "completed", duration=104) == 204
    assert line.incoming_status(sid, "completed", duration=104) == 204  # retried
    assert line.incoming_status(sid, "in-progress") == 204  # late: never moves the call back
    line.caller_leaves_queue(enqueue, sid, "bridged")  # retried
    line.operator_picks_up(str(leg.call_sid), sid)  # retried (its own callbacks are stale now)

    kinds = line.kinds(incident_id)
    assert kinds == [TimelineKind.OPENED, TimelineKind.CALL_INCOMING, TimelineKind.ACKNOWLEDGED,
                     TimelineKind.CALL_CONNECTED, TimelineKind.CALL_ENDED], kinds
    details = dict(line.timeline(incident_id))
    assert details[TimelineKind.CALL_CONNECTED]["operator"] == "Ilze Kalna"
    assert details[TimelineKind.CALL_CONNECTED]["waited_s"] == 9
    assert details[TimelineKind.CALL_ENDED] == {"call_id": details[TimelineKind.CALL_INCOMING]["call_id"],
                                                "how": "completed", "spoke": True, "duration_s": 104}
    with line.db.sessions() as session:
        caller = session.scalar(select(VoiceCall).where(VoiceCall.call_sid == sid))
        assert caller is not None and caller.status == "completed" and caller.user_id == line.operator_id
    supervisor = Browser(line.http.app)  # the queue's figures: this call was spoken to at once
    supervisor.login("op")
    figures = supervisor.http.get("/ui/queue/rows").text
    assert 'data-testid="fig-calls"' in figures and "100%</span> no 1 zvaniem sarunā 60 s laikā" in figures
    api = line.http.get(f"/api/v1/incidents/{incident_id}", headers=_bearer(line))
    assert api.status_code == 200 and api.json()["spoken_at"] is not None


def test_a_caller_who_hangs_up_while_waiting_is_shown_once_and_answer_is_refused(line: Line) -> None:
    sid, twiml = line.call_in(CLIENT_PHONE)
    incident_id = line.incident_of(sid).id
    enqueue = twiml.find("Enqueue")
    assert enqueue is not None
    line.caller_leaves_queue(enqueue, sid, "hangup", waited=40)
    assert line.incoming_status(sid, "completed", duration=41) == 204
    ended = [d for kind, d in line.timeline(incident_id) if kind == TimelineKind.CALL_ENDED]
    assert ended == [{"call_id": ended[0]["call_id"], "how": "hung_up_waiting", "spoke": False, "waited_s": 40}]
    with pytest.raises(actions.Conflict, match="no caller is waiting"):
        line.act(voice.answer, incident_id)
    assert line.fake.calls == {}


def test_an_operator_phone_that_does_not_answer_is_said_on_the_incident_and_the_caller_still_waits(
        line: Line) -> None:
    sid, _ = line.call_in(CLIENT_PHONE)
    incident_id = line.incident_of(sid).id
    leg = line.act(voice.answer, incident_id)
    with pytest.raises(actions.Conflict, match="already ringing"):  # a second click rings nobody twice
        line.act(voice.answer, incident_id)
    for status in ("initiated", "ringing", "no-answer"):
        assert line.post(line.fake.call_status(str(leg.call_sid), status)).status_code == 204
    failed = [d for kind, d in line.timeline(incident_id) if kind == TimelineKind.CALL_FAILED]
    assert len(failed) == 1 and failed[0]["status"] == "no-answer" and failed[0]["operator"] == "Ilze Kalna"
    with line.db.sessions() as session:
        assert [c.call_sid for c in voice.waiting_calls(session, incident_id)] == [sid]
    second = line.act(voice.answer, incident_id)  # try again: the caller is still in the queue
    assert second.call_sid in line.fake.calls and len(line.fake.calls) == 2


def test_answer_needs_the_operator_phone_and_the_incident_taken_by_someone_else_is_refused(line: Line) -> None:
    sid, _ = line.call_in(CLIENT_PHONE)
    incident_id = line.incident_of(sid).id
    with line.db.sessions() as session:
        other = session.scalar(select(User.id).where(User.username == "op2"))
    with pytest.raises(actions.Conflict, match="no phone number"):
        line.act(voice.answer, incident_id, user_id=other)
    line.act(voice.answer, incident_id)
    with transaction(line.db.sessions) as session:  # op2 gets a phone, but op has the incident
        session.get_one(User, other).phone = "+37129000002"
        ringing = session.scalar(select(VoiceCall).where(VoiceCall.purpose == CallPurpose.ANSWER))
        assert ringing is not None
        ringing.status = "busy"
    with pytest.raises(actions.Forbidden):
        line.act(voice.answer, incident_id, user_id=other)
    assert len(line.fake.calls) == 1


# -- calling a person ------------------------------------------------------------------------


def test_call_rings_the_operator_then_dials_the_neighbour_with_the_centre_number(line: Line) -> None:
    incident_id = _taken_alarm(line)
    with line.db.sessions() as session:
        step = session.scalar(select(IncidentStep.id).where(IncidentStep.incident_id == incident_id))
    leg = line.act(lambda session, **kw: voice.call_person(session, target=f"step:{step}", **kw), incident_id)
    placed = line.fake.calls[str(leg.call_sid)]
    assert placed.to == OPERATOR_PHONE
    dial = ET.fromstring(placed.twiml).find("Dial")
    assert dial is not None and dial.attrib["callerId"] == CENTRE_NUMBER
    number = dial.find("Number")
    assert number is not None and number.text == NEIGHBOUR
    assert dial.attrib["action"] == f"{PUBLIC_URL}{VOICE}/dialed?call={leg.id}"
    placed_entry = [d for kind, d in line.timeline(incident_id) if kind == TimelineKind.CALL_PLACED]
    assert placed_entry == [{"call_id": leg.id, "to": "Kārlis Ozols", "number": NEIGHBOUR, "provider": "twilio"}]

    result = {"AccountSid": ACCOUNT_SID, "CallSid": str(leg.call_sid), "DialCallStatus": "no-answer",
              "DialCallSid": "CA" + "1" * 32}
    for _ in range(2):  # retried by Twilio: one entry
        assert line.post(line.fake.signed(dial.attrib["action"], result)).status_code == 200
    ended = [d for kind, d in line.timeline(incident_id) if kind == TimelineKind.CALL_ENDED]
    assert ended == [{"call_id": leg.id, "to": "Kārlis Ozols", "how": "no-answer"}]
    assert line.incident_of(str(leg.call_sid)).spoken_at is None  # the neighbour is not the client


def test_calling_the_client_back_who_answers_is_the_answer_time(line: Line) -> None:
    incident_id = _taken_alarm(line)
    leg = line.act(lambda session, **kw: voice.call_person(session, target="client", **kw), incident_id)
    dial = ET.fromstring(line.fake.calls[str(leg.call_sid)].twiml).find("Dial")
    assert dial is not None
    result = {"AccountSid": ACCOUNT_SID, "CallSid": str(leg.call_sid), "DialCallStatus": "completed",
              "DialCallDuration": "63"}
    assert line.post(line.fake.signed(dial.attrib["action"], result)).status_code == 200
    assert line.incident_of(str(leg.call_sid)).spoken_at is not None
    ended = [d for kind, d in line.timeline(incident_id) if kind == TimelineKind.CALL_ENDED]
    assert ended == [{"call_id": leg.id, "to": "Marta Kalniņa", "how": "completed", "duration_s": 63}]


def test_what_cannot_be_called_is_refused_and_places_nothing(line: Line) -> None:
    incident_id = _taken_alarm(line)
    with transaction(line.db.sessions) as session:
        step = session.scalar(select(IncidentStep).where(IncidentStep.incident_id == incident_id))
        assert step is not None
        step.phone = "113"  # the ambulance: not through a Twilio number
        step_id = step.id
    with pytest.raises(actions.Invalid, match="desk phone"):
        line.act(lambda session, **kw: voice.call_person(session, target=f"step:{step_id}", **kw), incident_id)
    with pytest.raises(actions.Invalid, match="nobody to call"):
        line.act(lambda session, **kw: voice.call_person(session, target="step:999999", **kw), incident_id)
    line.fake.fail_next(status=500)
    with pytest.raises(actions.Conflict, match="not placed"):
        line.act(lambda session, **kw: voice.call_person(session, target="client", **kw), incident_id)
    assert line.fake.calls == {}


def test_the_dashboard_answers_and_calls_from_the_incident_page(line: Line) -> None:
    sid, _ = line.call_in(CLIENT_PHONE)
    incident_id = line.incident_of(sid).id
    operator = Browser(line.http.app)
    operator.login("op")
    page = operator.http.get(f"/ui/incidents/{incident_id}").text
    assert 'data-testid="voice-waiting"' in page and CLIENT_PHONE in page
    assert "Atbildēt: zvanīt uz manu tālruni" in page  # Latvian first
    answered = operator.post(f"/ui/incidents/{incident_id}/voice/answer")
    assert answered.status_code == 303  # type: ignore[attr-defined]
    assert [c.to for c in line.fake.calls.values()] == [OPERATOR_PHONE]
    page = operator.http.get(f"/ui/incidents/{incident_id}").text
    assert 'data-testid="voice-call-form"' in page and 'value="client"' in page and 'value="device"' in page
    called = operator.post(f"/ui/incidents/{incident_id}/voice/call", {"target": "device"})
    assert called.status_code == 303  # type: ignore[attr-defined]
    dialled = [ET.fromstring(c.twiml).findtext("Dial/Number") for c in line.fake.calls.values()]
    assert dialled == [None, DEVICE_SIM]
    refused = operator.post(f"/ui/incidents/{incident_id}/voice/call", {"target": "step:0"})
    assert refused.status_code == 422 and "nobody to call" in refused.text  # type: ignore[attr-defined]
    assert operator.post(f"/ui/incidents/{incident_id}/voice/answer", csrf="forged").status_code == 403  # type: ignore[attr-defined]


# -- the webhooks' door ----------------------------------------------------------------------


def test_a_bad_signature_is_refused_and_stores_nothing(line: Line) -> None:
    form = line.fake.incoming_call(from_=CLIENT_PHONE)
    forged = Callback(PUBLIC_URL + VOICE, form, line.fake.sign(PUBLIC_URL + VOICE, form, token="0" * 32))
    assert line.post(forged).status_code == 403
    unsigned = line.http.post(VOICE, data=form)
    assert unsigned.status_code == 403
    tampered = line.fake.signed(PUBLIC_URL + VOICE, form)
    tampered.form["From"] = STRANGER  # signed for another caller
    assert line.post(tampered).status_code == 403
    for path in ("/status", "/connected?call=1&leg=2", "/left?call=1", "/dialed?call=1"):
        assert line.http.post(VOICE + path, data={"CallSid": "CA1", "CallStatus": "completed"}).status_code == 403
    assert line.count(VoiceCall) == 0 and line.count(Incident) == 0


def test_without_twilio_the_voice_webhooks_are_off_and_calls_are_only_recorded(any_db: Database,
                                                                               tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, public_url=PUBLIC_URL)
    with TestClient(create_app(settings=settings, session_factory=any_db.sessions)) as http:
        assert http.post(VOICE, data={"CallSid": "CA1", "From": CLIENT_PHONE}).status_code == 404
    with transaction(any_db.sessions) as session:
        client = make_client(session)
        client.phone = CLIENT_PHONE
        user = User(username="op", full_name="Op", password_hash="-", role=Role.OPERATOR, phone=OPERATOR_PHONE)
        session.add(user)
        session.flush()
        incident = Incident(client_id=client.id, kind=IncidentKind.BUTTON_PRESS, priority=2,
                            status=IncidentStatus.OPEN, active_key=f"client:{client.id}")
        session.add(incident)
        session.flush()
        actions.acknowledge(session, incident=incident, user=user)
        leg = voice.call_person(session, provider=build_voice(settings), base=PUBLIC_URL, incident=incident,
                                user=user, target="client")
        assert leg.call_sid is not None and leg.call_sid.startswith("outbox-")
        placed = session.scalars(select(TimelineEntry).where(TimelineEntry.kind == TimelineKind.CALL_PLACED)).all()
        assert [e.details["provider"] for e in placed] == ["outbox"]


def test_without_twilio_a_simulated_call_arrives_is_answered_and_ends_on_the_timeline(any_db: Database,
                                                                                       tmp_path: Path) -> None:
    """The outbox's pretend line: what testers and the demo see without a telephone line."""
    settings = Settings(data_dir=tmp_path, public_url=PUBLIC_URL)
    with transaction(any_db.sessions) as session:
        client = make_client(session)
        client.phone = CLIENT_PHONE
        session.add(User(username="op", full_name="Op", password_hash=PASSWORD_HASH, role=Role.OPERATOR,
                         phone=OPERATOR_PHONE))
    app = create_app(settings=settings, session_factory=any_db.sessions)
    operator = Browser(app)
    assert operator.login("op").status_code == 303  # type: ignore[attr-defined]
    assert operator.post("/ui/voice/simulate-call", {"from_number": "12345"}).status_code == 422  # type: ignore[attr-defined]
    made = operator.post("/ui/voice/simulate-call", {"from_number": CLIENT_PHONE})
    assert made.status_code == 303, made.text  # type: ignore[attr-defined]
    page = made.headers["location"]  # type: ignore[attr-defined]
    incident_id = int(page.rsplit("/", 1)[1])
    shown = operator.http.get(page)
    assert shown.status_code == 200 and 'data-testid="voice-answer"' in shown.text, "the caller waits to be answered"
    answered = operator.post(f"/ui/incidents/{incident_id}/voice/answer")
    assert answered.status_code == 303, answered.text  # type: ignore[attr-defined]
    with any_db.sessions() as session:
        incident = session.get_one(Incident, incident_id)
        assert (incident.kind, incident.status, incident.client_id) == (
            IncidentKind.VOICE_CALL, IncidentStatus.ACKNOWLEDGED, client.id)
        assert incident.spoken_at is not None, "the answer time is taken as for a real call"
        kinds = [e.kind for e in session.scalars(select(TimelineEntry).where(TimelineEntry.incident_id == incident_id)
                                                 .order_by(TimelineEntry.id))]
        (caller,) = session.scalars(select(VoiceCall).where(VoiceCall.purpose == CallPurpose.INCOMING)).all()
    calls = [k for k in kinds if k.value.startswith("call_")]
    assert calls == [TimelineKind.CALL_INCOMING, TimelineKind.CALL_CONNECTED, TimelineKind.CALL_ENDED], kinds
    assert caller.status == "completed" and caller.call_sid is not None and caller.call_sid.startswith("outbox-")
    # The API does the same for scripts; with Twilio configured, both are off.
    with TestClient(app) as http:
        token = http.post("/api/v1/auth/token", data={"username": "op", "password": PASSWORD}).json()["access_token"]
        response = http.post("/api/v1/voice/simulate-call", json={"from_number": "+37120000777"},
                             headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "ringing" and response.json()["incident_id"] != incident_id


def test_simulated_calls_are_refused_when_twilio_is_configured(line: Line) -> None:
    response = line.http.post("/api/v1/voice/simulate-call", json={"from_number": CLIENT_PHONE},
                              headers=_bearer(line))
    assert response.status_code == 409, response.text
    assert line.count(VoiceCall) == 0


def _bearer(line: Line) -> dict[str, str]:
    with transaction(line.db.sessions) as session:
        token = users.issue_token(session, user=session.get_one(User, line.operator_id), ttl=timedelta(hours=1))
    return {"Authorization": f"Bearer {token}"}


def _taken_alarm(line: Line) -> int:
    """A button press with its plan copied, acknowledged by the operator."""
    with transaction(line.db.sessions) as session:
        result = process_message(session, message=message("VOICE-1", 1), settings=Settings())
        assert result.incident_opened is not None
        incident = session.get_one(Incident, result.incident_opened)
        actions.acknowledge(session, incident=incident, user=session.get_one(User, line.operator_id))
        return incident.id


# -- plan steps that call --------------------------------------------------------------------

RELATIVE = "+37126000004"


def _voice_plan(line: Line) -> tuple[int, list[int]]:
    """The neighbour is rung (press 1 or 2), then a relative is texted; an alarm taken by the operator."""
    with transaction(line.db.sessions) as session:
        first = session.scalars(select(PlanStep).where(PlanStep.client_id == line.client_id)).one()
        first.channel = Channel.VOICE
        relative = Contact(client_id=line.client_id, position=2, kind=ContactKind.RELATIVE, name="Anna Kalniņa",
                           phone=RELATIVE, language=Language.LV)
        session.add(relative)
        session.flush()
        session.add(PlanStep(client_id=line.client_id, position=2, contact_id=relative.id, channel=Channel.SMS,
                             wait_seconds=300))
    incident_id = _taken_alarm(line)
    with line.db.sessions() as session:
        steps = list(session.scalars(select(IncidentStep.id).where(IncidentStep.incident_id == incident_id)
                                     .order_by(IncidentStep.position)))
    with transaction(line.db.sessions) as session:
        actions.start_step(session, incident=session.get_one(Incident, incident_id),
                           user=session.get_one(User, line.operator_id), step_id=steps[0])
    return incident_id, steps


def _dialer(line: Line) -> VoiceDialer:
    return VoiceDialer(factory=line.db.sessions, provider=build_voice(line.settings), settings=line.settings)


def _state(line: Line, step_id: int) -> StepState:
    with line.db.sessions() as session:
        return session.get_one(IncidentStep, step_id).state


def _press(line: Line, gather: ET.Element, sid: str, digits: str) -> ET.Element:
    form = {"AccountSid": ACCOUNT_SID, "CallSid": sid, "Digits": digits, "FinishedOnKey": ""}
    response = line.post(line.fake.signed(gather.attrib["action"], form))
    assert response.status_code == 200
    return ET.fromstring(response.text)


def test_a_voice_step_rings_the_contact_who_presses_1_to_go(line: Line) -> None:
    incident_id, steps = _voice_plan(line)
    assert _state(line, steps[0]) == StepState.WAITING and line.fake.calls == {}  # decided, not yet placed
    assert _dialer(line).place_due() == 1 and _dialer(line).place_due() == 0
    [(sid, call)] = line.fake.calls.items()
    assert call.to == NEIGHBOUR and call.from_ == CENTRE_NUMBER
    gather = ET.fromstring(call.twiml).find("Gather")
    assert gather is not None and gather.attrib["numDigits"] == "1"
    said = [say.text or "" for say in gather.iter("Say")]
    assert len(said) == 2 and "Marta Kalniņa" in said[0] and "nospiediet 1" in said[0]
    assert {say.attrib["language"] for say in gather.iter("Say")} == {"lv-LV"}

    again = _press(line, gather, sid, "7")  # another key: asked once more, nothing answered
    assert again.find("Gather") is not None and "Nesapratām" in "".join(s.text or "" for s in again.iter("Say"))
    assert _state(line, steps[0]) == StepState.WAITING
    thanked = _press(line, gather, sid, "1")
    assert "Paldies" in (thanked.findtext("Say") or "")
    _press(line, gather, sid, "1")  # retried by Twilio
    assert line.post(line.fake.call_status(sid, "completed", duration=31)).status_code == 204
    assert _state(line, steps[0]) == StepState.ACCEPTED and _state(line, steps[1]) == StepState.PENDING
    answers = [d for kind, d in line.timeline(incident_id) if kind == TimelineKind.STEP_ANSWER]
    assert [(d["answer"], d["via"]) for d in answers] == [("accept", "voice")]
    assert TimelineKind.CALL_ENDED not in line.kinds(incident_id)


def test_a_voice_step_nobody_answers_moves_the_plan_on_at_once(line: Line) -> None:
    incident_id, steps = _voice_plan(line)
    _dialer(line).place_due()
    [sid] = line.fake.calls
    for status in ("initiated", "ringing", "no-answer", "no-answer"):  # the last one retried
        assert line.post(line.fake.call_status(sid, status)).status_code == 204
    assert _state(line, steps[0]) == StepState.NO_ANSWER
    assert _state(line, steps[1]) == StepState.WAITING  # the relative is texted now, not in 5 minutes
    with line.db.sessions() as session:
        timers = session.scalars(select(Timer).where(Timer.step_id == steps[0])).all()
        assert [t.outcome for t in timers] == ["cancelled"]
        texts_out = session.scalars(select(SmsMessage.to_number).where(SmsMessage.incident_id == incident_id)).all()
        assert texts_out == [RELATIVE]
    ended = [d for kind, d in line.timeline(incident_id) if kind == TimelineKind.CALL_ENDED]
    assert [(d["to"], d["how"]) for d in ended] == [("Kārlis Ozols", "no-answer")]


def test_a_call_answered_without_a_key_and_a_call_twilio_refuses_both_move_the_plan_on(line: Line) -> None:
    _incident_id, steps = _voice_plan(line)
    _dialer(line).place_due()
    [sid] = line.fake.calls
    assert line.post(line.fake.call_status(sid, "completed", duration=20)).status_code == 204
    assert _state(line, steps[0]) == StepState.NO_ANSWER and _state(line, steps[1]) == StepState.WAITING

    second_id, second_steps = _second_alarm_with_voice_step(line)
    line.fake.fail_next(status=400, code=21215, message="Account not authorized to call this number")
    _dialer(line).place_due()
    assert _state(line, second_steps[0]) == StepState.FAILED
    with line.db.sessions() as session:
        call = session.scalar(select(VoiceCall).where(VoiceCall.step_id == second_steps[0]))
        assert call is not None and call.status == "failed" and "21215" in (call.error or "")
    assert len(line.fake.calls) == 1


def test_a_resolved_incident_rings_nobody(line: Line) -> None:
    incident_id, steps = _voice_plan(line)
    with transaction(line.db.sessions) as session:
        actions.resolve(session, incident=session.get_one(Incident, incident_id),
                        user=session.get_one(User, line.operator_id), outcome=actions.Outcome.ACCIDENTAL_PRESS,
                        notes="")
    assert _dialer(line).place_due() == 0 and line.fake.calls == {}
    with line.db.sessions() as session:
        assert session.scalars(select(VoiceCall.status).where(VoiceCall.step_id == steps[0])).all() == ["canceled"]


def _second_alarm_with_voice_step(line: Line) -> tuple[int, list[int]]:
    with transaction(line.db.sessions) as session:
        client = make_client(session, name="Jānis Bērziņš")
        device = make_device(session, "VOICE-2", client=client)
        contact = Contact(client_id=client.id, position=1, kind=ContactKind.NEIGHBOUR, name="Pēteris",
                          phone="+37126000005", language=Language.LV)
        session.add(contact)
        session.flush()
        session.add(PlanStep(client_id=client.id, position=1, contact_id=contact.id, channel=Channel.VOICE,
                             wait_seconds=300))
        result = process_message(session, message=message(device.serial, 1), settings=Settings())
        assert result.incident_opened is not None
        incident = session.get_one(Incident, result.incident_opened)
        user = session.get_one(User, line.operator_id)
        actions.acknowledge(session, incident=incident, user=user)
        steps = list(session.scalars(select(IncidentStep.id).where(IncidentStep.incident_id == incident.id)))
        actions.start_step(session, incident=incident, user=user, step_id=steps[0])
        return incident.id, steps
