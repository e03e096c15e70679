"""SMS in dispatch, with real parts: the real `twilio` library talking HTTP to a local fake Twilio
(tests/fake_twilio.py), a real database, the app's webhooks through TestClient, a controlled clock.

Covered: the provider (what reaches Twilio, how its errors are classified), the sender's rules
(retries with backoff, give-up, throttle, per-hour cap, texts no longer wanted), inbound texts
and delivery reports (signatures, retries, every reply spelling, unknown texts), the outbox, and
the texts themselves (length, content, and never a medical note).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select

from alarmcentre import clock
from alarmcentre.app import create_app
from alarmcentre.clients.models import Client, Language
from alarmcentre.config import Settings
from alarmcentre.contacts.models import Contact, ContactKind
from alarmcentre.db import transaction
from alarmcentre.dispatch import actions, escalation, texts
from alarmcentre.dispatch.models import (
    Channel,
    IncidentStep,
    PlanStep,
    SmsDirection,
    SmsMessage,
    SmsStatus,
    StepState,
    Timer,
)
from alarmcentre.dispatch.sms import SmsError, SmsSender, TwilioProvider, build_provider, queue_sms
from alarmcentre.incidents.models import Incident, IncidentKind, IncidentStatus, TimelineEntry, TimelineKind
from alarmcentre.municipalities.models import Municipality
from alarmcentre.runtime import Database
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User
from tests import fake_twilio
from tests.factories import Clock, make_client
from tests.fake_twilio import Callback, FakeTwilio

ACCOUNT_SID = "AC" + "5ea15ea1" * 4
AUTH_TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
TWILIO_NUMBER = "+37166000000"
PUBLIC_URL = "https://alarms.example.lv"
STATUS_URL = f"{PUBLIC_URL}/webhooks/twilio/status"
INBOUND_PATH = "/webhooks/twilio/sms"
T0 = datetime(2026, 1, 12, 3, 0, tzinfo=UTC)
WORKER, NEIGHBOUR, RELATIVE, SUPERVISOR, STRANGER = (
    "+37120000001", "+37120000002", "+447700900123", "+37129999999", "+37120009999")
SECRET = "INSULĪNS-7Q-SLEPENS"  # in the client's medical notes: must never be texted
CLIENT_NAME, CLIENT_ADDRESS = "Anna Bērziņa", "Brīvības iela 12-3, Ogre"
LV, EN = Language.LV, Language.EN

PlanEntry = tuple[ContactKind, str, str, Language]
PLAN: list[PlanEntry] = [
    (ContactKind.HOME_CARE_WORKER, "Ilze Kalniņa", WORKER, LV),
    (ContactKind.NEIGHBOUR, "Kārlis Ozols", NEIGHBOUR, LV),
    (ContactKind.RELATIVE, "John Bērziņš", RELATIVE, EN),
]


@dataclass
class Case:
    incident: int
    steps: list[int]  # by position


@dataclass
class Centre:
    """The app and the SMS sender over one database, with one operator and, when configured, a fake Twilio."""

    db: Database
    settings: Settings
    http: TestClient
    sender: SmsSender
    clock: Clock
    fake: FakeTwilio | None
    operator_id: int
    token: str

    # -- building ----------------------------------------------------------------------------

    def open_incident(self, plan: Sequence[PlanEntry] = PLAN, *, name: str = CLIENT_NAME,
                      address: str = CLIENT_ADDRESS) -> Case:
        """A client with a response plan and an open incident whose plan snapshot is taken."""
        with transaction(self.db.sessions) as session:
            client = make_client(session, name=name)
            client.address, client.medical_notes = address, f"Diabēts, insulīns vakarā. {SECRET}. Durvju kods 1234."
            for position, (kind, contact_name, phone, language) in enumerate(plan, start=1):
                contact = Contact(client_id=client.id, position=position, kind=kind, name=contact_name, phone=phone,
                                  language=language)
                session.add(contact)
                session.flush()
                session.add(PlanStep(client_id=client.id, position=position, contact_id=contact.id,
                                     channel=Channel.SMS, wait_seconds=300))
            session.flush()
            now = clock.now()
            incident = Incident(client_id=client.id, kind=IncidentKind.BUTTON_PRESS, priority=2,
                                status=IncidentStatus.OPEN, active_key=f"client:{client.id}", opened_at=now,
                                last_signal_at=now)
            session.add(incident)
            session.flush()
            escalation.on_incident_opened(session, incident=incident, client=client, settings=self.settings)
            steps = session.scalars(select(IncidentStep.id).where(IncidentStep.incident_id == incident.id)
                                    .order_by(IncidentStep.position)).all()
            return Case(incident.id, list(steps))

    def start(self, case: Case, position: int = 1) -> None:
        with transaction(self.db.sessions) as session:
            incident, step = session.get(Incident, case.incident), session.get(IncidentStep, case.steps[position - 1])
            assert incident is not None and step is not None
            escalation.start_step(session, incident=incident, step=step, actor="system")

    def dispatched(self, plan: Sequence[PlanEntry] = PLAN) -> Case:
        """An incident whose first step's text has gone out."""
        case = self.open_incident(plan)
        self.start(case)
        self.sender.send_due()
        assert [m.status for m in self.texts(purpose="dispatch")] == [SmsStatus.SENT]
        return case

    def act(self, case: Case, do: Any) -> None:
        """Run an operator action (actions.*) as the operator."""
        with transaction(self.db.sessions) as session:
            incident, user = session.get(Incident, case.incident), session.get(User, self.operator_id)
            do(session, incident=incident, user=user)

    def queue(self, to: str = WORKER, body: str = "Pārbaude", **fields: Any) -> int:
        with transaction(self.db.sessions) as session:
            return queue_sms(session, to=to, body=body, purpose=fields.pop("purpose", "inform"), **fields).id

    def tick(self, seconds: float = 0) -> int:
        """Time passes; the scheduler's two jobs run."""
        self.clock.advance(seconds)
        escalation.sweep(self.db.sessions, settings=self.settings)
        return self.sender.send_due()

    # -- Twilio's side -----------------------------------------------------------------------

    def text_in(self, from_: str, body: str, *, sid: str | None = None) -> httpx.Response:
        """A text from a phone, as Twilio POSTs it to the messaging webhook, correctly signed."""
        assert self.fake is not None
        form = self.fake.inbound(from_=from_, body=body, sid=sid)
        signature = self.fake.sign(PUBLIC_URL + INBOUND_PATH, form)
        return self.http.post(INBOUND_PATH, data=form, headers={"X-Twilio-Signature": signature})

    def reply(self, from_: str, body: str) -> None:
        response = self.text_in(from_, body)
        assert response.status_code == 200, response.text

    def code(self, phone: str) -> str:
        """The code in the last dispatch text to that phone, read as its owner reads it."""
        (body, *_) = [m.body for m in reversed(self.texts(purpose="dispatch", to_number=phone))]
        match = re.search(r"\b1 (\d{3})\b", body)
        assert match, f"no reply code in the dispatch text {body!r}"
        return match[1]

    def coded(self, phone: str, word: str) -> str:
        """A reply word as the dispatch text asks for it: with its code."""
        return f"{word} {self.code(phone)}"

    def answer(self, phone: str, word: str) -> None:
        """The person at that phone answers their last dispatch text with the word and its code."""
        self.reply(phone, self.coded(phone, word))

    def report(self, sid: str, status: str, error_code: str | None = None) -> int:
        """Twilio's delivery report for a sent text, through the status webhook."""
        assert self.fake is not None
        return self.fake.deliver(sid, status, error_code=error_code, post=self._post_callback)

    def _post_callback(self, callback: Callback) -> int:
        return self.http.post(callback.path, data=callback.form, headers=callback.headers).status_code

    # -- reading -----------------------------------------------------------------------------

    def texts(self, **where: Any) -> list[SmsMessage]:
        with self.db.sessions() as session:
            query = select(SmsMessage).order_by(SmsMessage.id)
            for name, value in where.items():
                query = query.where(getattr(SmsMessage, name) == value)
            return list(session.scalars(query))

    def text(self, sms_id: int) -> SmsMessage:
        with self.db.sessions() as session:
            message = session.get(SmsMessage, sms_id)
            assert message is not None
            return message

    def states(self, case: Case) -> list[StepState]:
        with self.db.sessions() as session:
            return [session.get_one(IncidentStep, step_id).state for step_id in case.steps]

    def timeline(self, case: Case) -> list[TimelineEntry]:
        with self.db.sessions() as session:
            return list(session.scalars(select(TimelineEntry).where(TimelineEntry.incident_id == case.incident)
                                        .order_by(TimelineEntry.id)))


def twilio_settings(fake: FakeTwilio, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path, twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
        twilio_from_number=TWILIO_NUMBER, twilio_api_base=fake.url, public_url=PUBLIC_URL, sms_min_interval_s=5,
        sms_max_per_hour=30, sms_max_attempts=4, ack_alert_after_s=60)
    values.update(overrides)
    return Settings(**values)


@contextmanager
def make_centre(db: Database, settings: Settings, fake: FakeTwilio | None) -> Iterator[Centre]:
    moment = Clock(T0)
    with transaction(db.sessions) as session:
        operator = User(username="op", full_name="Night operator", password_hash="-", role=Role.OPERATOR)
        supervisor = User(username="sup", full_name="Supervisor", password_hash="-", role=Role.SUPERVISOR,
                          phone=SUPERVISOR, on_call=True)
        session.add_all([operator, supervisor])
        session.flush()
        token = users.issue_token(session, user=operator, ttl=timedelta(days=2))
        operator_id = operator.id
    sender = SmsSender(factory=db.sessions, provider=build_provider(settings), settings=settings,
                       on_failed=escalation.step_failed)
    with TestClient(create_app(settings=settings, session_factory=db.sessions)) as http:
        http.headers["Authorization"] = f"Bearer {token}"  # the webhooks ignore it; the API needs it
        yield Centre(db, settings, http, sender, moment, fake, operator_id, token)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=TWILIO_NUMBER) as server:
        yield server


@pytest.fixture
def centre(sqlite_db: Database, fake: FakeTwilio, tmp_path: Path) -> Iterator[Centre]:
    with make_centre(sqlite_db, twilio_settings(fake, tmp_path), fake) as built:
        yield built


@pytest.fixture
def any_centre(any_db: Database, fake: FakeTwilio, tmp_path: Path) -> Iterator[Centre]:
    with make_centre(any_db, twilio_settings(fake, tmp_path), fake) as built:
        yield built


@pytest.fixture
def outbox_centre(sqlite_db: Database, tmp_path: Path) -> Iterator[Centre]:
    """Twilio not configured: texts stay in the outbox."""
    with make_centre(sqlite_db, Settings(data_dir=tmp_path, public_url=PUBLIC_URL), None) as built:
        yield built


@pytest.fixture
def any_outbox_centre(any_db: Database, tmp_path: Path) -> Iterator[Centre]:
    with make_centre(any_db, Settings(data_dir=tmp_path, public_url=PUBLIC_URL), None) as built:
        yield built


# -- the provider: what reaches Twilio -------------------------------------------------------


def test_the_provider_sends_through_the_twilio_library(fake: FakeTwilio, tmp_path: Path) -> None:
    provider = build_provider(twilio_settings(fake, tmp_path))
    assert isinstance(provider, TwilioProvider) and provider.from_number == TWILIO_NUMBER
    body = "Trauksme: Anna Bērziņa, Brīvības iela 12 - nospieda drošības pogu."
    sid = provider.send(to=WORKER, body=body, status_callback=STATUS_URL)

    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")
    assert request.auth == (ACCOUNT_SID, AUTH_TOKEN)
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.form == {"To": [WORKER], "From": [TWILIO_NUMBER], "Body": [body], "StatusCallback": [STATUS_URL]}
    assert request.status == 201 and sid == request.answer["sid"] and sid in fake.messages
    assert sid.startswith("SM") and len(sid) == 34 and int(sid[2:], 16) >= 0


@pytest.mark.parametrize(("status", "code", "transient"), [
    (500, 20500, True), (503, 20503, True), (429, 20429, True),
    (401, 20003, True), (400, 21211, False), (400, 21610, False), (404, 20404, False),
])
def test_provider_errors_are_classified(fake: FakeTwilio, tmp_path: Path, status: int, code: int,
                                        transient: bool) -> None:
    provider = build_provider(twilio_settings(fake, tmp_path))
    fake.fail_next(status=status, code=code)
    with pytest.raises(SmsError) as caught:
        provider.send(to=WORKER, body="x", status_callback=None)
    assert (caught.value.transient, caught.value.code) == (transient, str(code))
    assert str(status) in str(caught.value)


@pytest.mark.parametrize(("change", "code"), [
    ({"to": "20000001"}, fake_twilio.INVALID_TO),  # not E.164
    ({"body": ""}, fake_twilio.BODY_REQUIRED),
    ({"body": "ā" * 1601}, fake_twilio.BODY_TOO_LONG),
    ({"status_callback": "alarms.example.lv/status"}, fake_twilio.INVALID_STATUS_CALLBACK),
    ({"from_number": "+37166000001"}, fake_twilio.FROM_NOT_OURS),
    ({"auth_token": "f" * 32}, fake_twilio.AUTHENTICATE),
])
def test_the_fake_refuses_what_twilio_refuses(fake: FakeTwilio, change: dict[str, str], code: int) -> None:
    """The fake is only worth its tests if it is as strict as Twilio: each check, through the real library."""
    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=change.get("auth_token", AUTH_TOKEN),
                              from_number=change.get("from_number", TWILIO_NUMBER), api_base=fake.url)
    with pytest.raises(SmsError) as caught:
        provider.send(to=change.get("to", WORKER), body=change.get("body", "Sveiki"),
                      status_callback=change.get("status_callback", STATUS_URL))
    # Credentials are the centre's to fix (retried); everything else is wrong with the text itself.
    assert caught.value.code == str(code) and caught.value.transient == (code == fake_twilio.AUTHENTICATE)
    assert fake.messages == {}
    # and the same request, put right, is accepted
    TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=TWILIO_NUMBER,
                   api_base=fake.url).send(to=WORKER, body="Sveiki", status_callback=STATUS_URL)
    assert len(fake.messages) == 1


def test_a_twilio_that_does_not_answer_does_not_hold_up_the_sender(sqlite_db: Database, fake: FakeTwilio,
                                                                   tmp_path: Path) -> None:
    """A hung request would stop every text (the sender job runs one at a time): it must time out and retry."""
    settings = twilio_settings(fake, tmp_path)
    configured = build_provider(settings)
    assert isinstance(configured, TwilioProvider)
    timeout = configured._client.http_client.timeout
    assert timeout is not None and 0 < timeout <= 60, "the Twilio client must not wait forever"

    provider = TwilioProvider(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=TWILIO_NUMBER,
                              api_base=fake.url, timeout_s=0.5)
    sender = SmsSender(factory=sqlite_db.sessions, provider=provider, settings=settings)
    moment = Clock(T0)
    with transaction(sqlite_db.sessions) as session:
        sms_id = queue_sms(session, to=WORKER, body="Pārbaude", purpose="inform").id
    fake.stall_next()
    assert sender.send_due() == 1
    with sqlite_db.sessions() as session:
        message = session.get_one(SmsMessage, sms_id)
        assert (message.status, message.attempts) == (SmsStatus.QUEUED, 1)
        assert message.not_before == T0 + timedelta(seconds=5) and "unreachable" in (message.last_error or "")
    fake.release()
    moment.advance(5)
    assert sender.send_due() == 1
    with sqlite_db.sessions() as session:
        assert session.get_one(SmsMessage, sms_id).status == SmsStatus.SENT


def test_the_api_base_also_catches_regional_twilio_hosts(fake: FakeTwilio, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With TWILIO_EDGE/TWILIO_REGION set the library calls api.<edge>.<region>.twilio.com: still the base."""
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    provider = build_provider(twilio_settings(fake, tmp_path))
    assert isinstance(provider, TwilioProvider)
    provider._client.http_client.timeout = 2  # if it leaks, fail fast rather than wait for the internet
    sid = provider.send(to=WORKER, body="Sveiki", status_callback=None)
    assert sid in fake.messages


# -- the sender: sending, retrying, giving up ---------------------------------------------------


def test_a_queued_text_is_sent_and_recorded(any_centre: Centre) -> None:
    assert any_centre.fake is not None
    sms_id = any_centre.queue(WORKER, "Pārbaudes īsziņa ā č ē")
    assert any_centre.sender.send_due() == 1
    message = any_centre.text(sms_id)
    (accepted,) = any_centre.fake.accepted
    assert message.status == SmsStatus.SENT and message.provider == "twilio" and message.attempts == 1
    assert message.provider_sid == accepted.answer["sid"] and message.from_number == TWILIO_NUMBER
    assert message.sent_at == T0 and message.last_error is None
    assert (accepted.field("To"), accepted.field("Body")) == (WORKER, "Pārbaudes īsziņa ā č ē")
    assert accepted.field("StatusCallback") == STATUS_URL
    assert any_centre.sender.send_due() == 0, "sent once only"


@pytest.mark.parametrize("public_url", [PUBLIC_URL + "/", None])
def test_the_status_callback_is_asked_for_only_with_a_public_url(sqlite_db: Database, fake: FakeTwilio,
                                                                 tmp_path: Path, public_url: str | None) -> None:
    with make_centre(sqlite_db, twilio_settings(fake, tmp_path, public_url=public_url), fake) as centre:
        centre.queue()
        centre.sender.send_due()
    (request,) = fake.accepted
    assert request.field("StatusCallback") == (STATUS_URL if public_url else None)


def test_a_wrong_auth_token_is_retried_not_blamed_on_the_recipient(sqlite_db: Database, fake: FakeTwilio,
                                                                    tmp_path: Path) -> None:
    """Bad credentials are the centre's fault: the text waits for the fix instead of failing the step."""
    with make_centre(sqlite_db, twilio_settings(fake, tmp_path, twilio_auth_token="0" * 32), fake) as centre:
        sms_id = centre.queue()
        centre.sender.send_due()
        message = centre.text(sms_id)
        assert (message.status, message.attempts) == (SmsStatus.QUEUED, 1)
        assert "401" in (message.last_error or "") and "20003" in (message.last_error or "")
        assert [r.status for r in fake.requests] == [401] and fake.messages == {}
        for _ in range(10):
            centre.tick(3600)
        message = centre.text(sms_id)
        assert message.status == SmsStatus.FAILED, "given up after sms_max_attempts"
        assert len(fake.requests) == centre.settings.sms_max_attempts


@pytest.mark.parametrize("status", [500, 429])
def test_a_transient_error_is_retried_with_backoff(centre: Centre, fake: FakeTwilio, status: int) -> None:
    sms_id = centre.queue()
    fake.fail_next(2, status=status)
    centre.tick()
    message = centre.text(sms_id)
    assert (message.status, message.attempts, message.not_before) == (SmsStatus.QUEUED, 1, T0 + timedelta(seconds=5))
    assert str(status) in (message.last_error or "")
    centre.tick(4.9)
    assert len(fake.requests) == 1, "not before the backoff"
    centre.tick(0.1)
    message = centre.text(sms_id)
    assert (message.status, message.attempts, message.not_before) == (SmsStatus.QUEUED, 2, T0 + timedelta(seconds=35))
    centre.tick(29)
    assert len(fake.requests) == 2
    centre.tick(1)
    message = centre.text(sms_id)
    assert (message.status, message.attempts, message.sent_at) == (SmsStatus.SENT, 3, T0 + timedelta(seconds=35))
    assert [r.status for r in fake.requests] == [status, status, 201]


def test_after_max_attempts_a_dispatch_fails_and_the_plan_moves_on(any_centre: Centre) -> None:
    fake = any_centre.fake
    assert fake is not None
    case = any_centre.open_incident()
    any_centre.start(case)
    fake.fail_next(4, status=503)
    for wait in (0, 5, 30, 120):  # RETRY_BACKOFF_S, 4 attempts
        assert any_centre.states(case)[0] == StepState.WAITING
        any_centre.tick(wait)
    first, second = any_centre.texts(purpose="dispatch")
    assert (first.status, first.attempts, first.to_number) == (SmsStatus.FAILED, 4, WORKER)
    assert any_centre.states(case) == [StepState.FAILED, StepState.WAITING, StepState.PENDING]
    assert (second.status, second.to_number) == (SmsStatus.SENT, NEIGHBOUR), "the next step went out at once"
    to_contacts = [(r.status, r.field("To")) for r in fake.requests if r.field("To") != SUPERVISOR]
    assert to_contacts == [(503, WORKER)] * 4 + [(201, NEIGHBOUR)]
    any_centre.tick(3600)
    assert [r.field("To") for r in fake.requests if r.field("To") != SUPERVISOR][5:] == [RELATIVE], (
        "no more tries for the failed text; only step 2's timeout texted step 3")


def test_a_permanent_error_fails_a_dispatch_at_once_and_starts_the_next_step(any_centre: Centre) -> None:
    fake = any_centre.fake
    assert fake is not None
    case = any_centre.open_incident()
    any_centre.start(case)
    fake.fail_next(status=400, code=fake_twilio.INVALID_TO, message="The 'To' number is not a valid phone number.")
    any_centre.tick()
    first, second = any_centre.texts(purpose="dispatch")
    assert (first.status, first.attempts) == (SmsStatus.FAILED, 1) and "21211" in (first.last_error or "")
    assert any_centre.states(case) == [StepState.FAILED, StepState.WAITING, StepState.PENDING]
    assert (second.status, second.to_number, second.step_id) == (SmsStatus.SENT, NEIGHBOUR, case.steps[1])
    assert [(r.status, r.field("To")) for r in fake.requests] == [(400, WORKER), (201, NEIGHBOUR)]
    kinds = [e.kind for e in any_centre.timeline(case)]
    assert kinds[-3:] == [TimelineKind.STEP_STARTED, TimelineKind.STEP_FAILED, TimelineKind.STEP_STARTED]
    failed = [e for e in any_centre.timeline(case) if e.kind == TimelineKind.STEP_FAILED][0]
    assert failed.details["step_id"] == case.steps[0] and "21211" in failed.details["error"]
    with any_centre.db.sessions() as session:
        timer = session.scalar(select(Timer).where(Timer.step_id == case.steps[0]))
        assert timer is not None and timer.outcome == "cancelled", "the failed step's timeout will not fire"


def test_a_failed_inform_text_moves_no_step(centre: Centre, fake: FakeTwilio) -> None:
    case = centre.dispatched()
    centre.queue(RELATIVE, "Drošības poga", purpose="inform", incident_id=case.incident, step_id=case.steps[2])
    fake.fail_next(status=400, code=fake_twilio.INVALID_TO)
    centre.tick()
    assert centre.texts(purpose="inform")[0].status == SmsStatus.FAILED
    assert centre.states(case) == [StepState.WAITING, StepState.PENDING, StepState.PENDING]


# -- the sender: throttle and cap ---------------------------------------------------------------


def test_texts_to_one_number_are_spaced_and_other_numbers_are_not_held_up(any_centre: Centre) -> None:
    fake = any_centre.fake
    assert fake is not None
    first, second, other = any_centre.queue(WORKER, "A"), any_centre.queue(WORKER, "B"), any_centre.queue(NEIGHBOUR)
    any_centre.tick()
    assert [any_centre.text(i).status for i in (first, second, other)] == [
        SmsStatus.SENT, SmsStatus.QUEUED, SmsStatus.SENT]
    assert any_centre.text(second).not_before == T0 + timedelta(seconds=5)
    any_centre.tick(4.5)
    assert any_centre.text(second).status == SmsStatus.QUEUED
    any_centre.tick(0.5)
    assert any_centre.text(second).sent_at == T0 + timedelta(seconds=5)
    assert [(r.field("To"), r.field("Body")) for r in fake.accepted] == [
        (WORKER, "A"), (NEIGHBOUR, "Pārbaude"), (WORKER, "B")]


def test_texts_to_one_number_keep_their_order_when_the_sender_was_held_up(centre: Centre, fake: FakeTwilio) -> None:
    """A text put back by the throttle keeps its place: later texts to that number do not overtake it."""
    centre.queue(WORKER, "first")
    centre.queue(WORKER, "second")
    centre.tick()  # "first" goes, "second" waits until T0+5
    centre.clock.advance(2)
    centre.queue(WORKER, "third")  # queued at T0+2; the sender next runs at T0+30
    centre.tick(28)
    centre.tick(30)
    centre.tick(30)
    assert [r.field("Body") for r in fake.accepted] == ["first", "second", "third"]


def test_the_hourly_cap_defers_the_excess(sqlite_db: Database, fake: FakeTwilio, tmp_path: Path) -> None:
    settings = twilio_settings(fake, tmp_path, sms_min_interval_s=0, sms_max_per_hour=3)
    with make_centre(sqlite_db, settings, fake) as centre:
        capped = [centre.queue(WORKER, f"#{n}") for n in range(5)]
        centre.queue(NEIGHBOUR, "other number")
        centre.tick()
        assert [centre.text(i).status for i in capped] == [SmsStatus.SENT] * 3 + [SmsStatus.QUEUED] * 2
        assert {centre.text(i).not_before for i in capped[3:]} == {T0 + timedelta(hours=1)}
        assert sorted(str(r.field("To")) for r in fake.accepted) == sorted([WORKER] * 3 + [NEIGHBOUR])
        centre.tick(3599)
        assert len(fake.accepted) == 4
        centre.tick(1)
        assert [centre.text(i).status for i in capped] == [SmsStatus.SENT] * 5
        assert [r.field("Body") for r in fake.accepted if r.field("To") == WORKER] == [f"#{n}" for n in range(5)]


# -- the sender: texts no longer wanted ---------------------------------------------------------


def test_nothing_is_sent_for_a_resolved_incident(any_centre: Centre) -> None:
    case = any_centre.open_incident()
    any_centre.start(case)
    any_centre.act(case, actions.acknowledge)
    any_centre.act(case, lambda session, incident, user: actions.resolve(
        session, incident=incident, user=user, outcome=actions.Outcome.ACCIDENTAL_PRESS, notes=""))
    any_centre.tick()
    (dispatch,) = any_centre.texts(purpose="dispatch")
    assert (dispatch.status, dispatch.last_error, dispatch.attempts) == (SmsStatus.CANCELLED, "incident resolved", 0)
    assert any_centre.fake is not None and any_centre.fake.requests == []


@pytest.mark.parametrize("acknowledged", [False, True])
def test_a_supervisor_alert_is_not_sent_once_the_incident_is_acknowledged(centre: Centre, fake: FakeTwilio,
                                                                         acknowledged: bool) -> None:
    case = centre.open_incident()
    centre.clock.advance(60)
    escalation.sweep(centre.db.sessions, settings=centre.settings)
    (alert,) = centre.texts(purpose="supervisor_alert")
    assert alert.to_number == SUPERVISOR and f"#{case.incident}" in alert.body
    if acknowledged:
        centre.act(case, actions.acknowledge)
    centre.sender.send_due()
    alert = centre.text(alert.id)
    if acknowledged:
        assert (alert.status, alert.last_error) == (SmsStatus.CANCELLED, "incident acknowledged")
        assert fake.requests == []
    else:
        assert alert.status == SmsStatus.SENT
        assert [(r.field("To"), r.field("Body")) for r in fake.accepted] == [(SUPERVISOR, alert.body)]


# -- inbound texts: the webhook ---------------------------------------------------------------


def test_a_signed_inbound_text_is_accepted_and_stored(any_centre: Centre) -> None:
    response = any_centre.text_in(STRANGER, "Labdien", sid="SM" + "ab" * 16)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    assert ET.fromstring(response.text).tag == "Response"
    (stored,) = any_centre.texts(direction=SmsDirection.IN)
    assert (stored.from_number, stored.to_number, stored.body) == (STRANGER, TWILIO_NUMBER, "Labdien")
    assert (stored.status, stored.provider, stored.provider_sid) == (SmsStatus.RECEIVED, "twilio", "SM" + "ab" * 16)


def _tamper(how: str, fake: FakeTwilio, form: dict[str, str]) -> dict[str, str]:
    if how == "missing":
        return {}
    if how == "other token":
        return {"X-Twilio-Signature": fake.sign(PUBLIC_URL + INBOUND_PATH, form, token="e" * 32)}
    if how == "other url":  # what the app sees behind the proxy is not what Twilio called
        return {"X-Twilio-Signature": fake.sign("http://testserver" + INBOUND_PATH, form)}
    signature = fake.sign(PUBLIC_URL + INBOUND_PATH, form)
    form["Body"] = "2"  # changed after signing
    return {"X-Twilio-Signature": signature}


@pytest.mark.parametrize("how", ["missing", "other token", "other url", "changed body"])
def test_an_unsigned_or_badly_signed_inbound_text_is_refused(centre: Centre, fake: FakeTwilio, how: str) -> None:
    case = centre.dispatched()
    form = fake.inbound(from_=WORKER, body="1")
    headers = _tamper(how, fake, form)
    response = centre.http.post(INBOUND_PATH, data=form, headers=headers)
    assert response.status_code == 403, response.text
    assert centre.texts(direction=SmsDirection.IN) == []
    assert centre.states(case)[0] == StepState.WAITING


def test_the_webhooks_are_off_without_twilio(outbox_centre: Centre) -> None:
    form = {"From": WORKER, "To": TWILIO_NUMBER, "Body": "1", "MessageSid": fake_twilio.new_sid()}
    for path in (INBOUND_PATH, "/webhooks/twilio/status"):
        response = outbox_centre.http.post(path, data=form, headers={"X-Twilio-Signature": "anything"})
        assert response.status_code == 404, (path, response.text)
    assert outbox_centre.texts() == []


def test_a_retried_webhook_is_handled_once(centre: Centre) -> None:
    case = centre.dispatched()
    sid = fake_twilio.new_sid()
    for _ in range(2):
        response = centre.text_in(WORKER, centre.coded(WORKER, "1"), sid=sid)
        assert response.status_code == 200
    assert len(centre.texts(direction=SmsDirection.IN)) == 1
    assert len(centre.texts(purpose="reply")) == 1
    assert [e.kind for e in centre.timeline(case)].count(TimelineKind.STEP_ANSWER) == 1


# -- inbound texts: what they do ---------------------------------------------------------------

_BEFORE = {texts.Reply.ACCEPT: [], texts.Reply.DECLINE: [], texts.Reply.ARRIVED: ["1"],
           texts.Reply.DONE: ["1", "IERADOS"]}
_AFTER = {texts.Reply.ACCEPT: StepState.ACCEPTED, texts.Reply.DECLINE: StepState.DECLINED,
          texts.Reply.ARRIVED: StepState.ARRIVED, texts.Reply.DONE: StepState.DONE}


@pytest.mark.parametrize(("body", "language", "meaning"), [
    ("1", LV, texts.Reply.ACCEPT), ("Jā", LV, texts.Reply.ACCEPT), ("YES", EN, texts.Reply.ACCEPT),
    (" jā! ", LV, texts.Reply.ACCEPT), ("2", EN, texts.Reply.DECLINE), ("NĒ", LV, texts.Reply.DECLINE),
    ("no", EN, texts.Reply.DECLINE), ("IERADOS", LV, texts.Reply.ARRIVED), ("arrived", EN, texts.Reply.ARRIVED),
    ("PABEIGTS", LV, texts.Reply.DONE), ("Done.", EN, texts.Reply.DONE),
])
def test_a_reply_moves_the_senders_step_and_is_confirmed(centre: Centre, fake: FakeTwilio, body: str,
                                                         language: Language, meaning: texts.Reply) -> None:
    plan = [(kind, name, phone, language if phone == WORKER else lang) for kind, name, phone, lang in PLAN]
    case = centre.dispatched(plan)
    for earlier in _BEFORE[meaning]:
        centre.answer(WORKER, earlier)
    replies_before = len(centre.texts(purpose="reply"))

    code = centre.code(WORKER)
    centre.reply(WORKER, f"{body} {code}")
    received = centre.texts(direction=SmsDirection.IN)[-1]
    assert (received.body, received.interpreted_as) == (f"{body} {code}", meaning.value)
    assert (received.incident_id, received.step_id) == (case.incident, case.steps[0])
    states = centre.states(case)
    assert states[0] == _AFTER[meaning]
    if meaning == texts.Reply.DECLINE:
        assert states[1:] == [StepState.WAITING, StepState.PENDING], "declined: the next step starts at once"
        assert [m.to_number for m in centre.texts(purpose="dispatch")] == [WORKER, NEIGHBOUR]
    else:
        assert states[1:] == [StepState.PENDING, StepState.PENDING]
    answers = [e for e in centre.timeline(case) if e.kind == TimelineKind.STEP_ANSWER]
    assert (answers[-1].details["answer"], answers[-1].details["via"]) == (meaning.value, "sms")

    confirmations = centre.texts(purpose="reply")
    assert len(confirmations) == replies_before + 1
    confirmation = confirmations[-1]
    assert (confirmation.to_number, confirmation.body) == (WORKER, texts.reply_confirmation(language, meaning, code))
    for _ in range(4):
        centre.tick(5)  # past the per-number spacing of the confirmations
    assert (WORKER, confirmation.body) in [(r.field("To"), r.field("Body")) for r in fake.accepted]


@pytest.mark.parametrize("language", [LV, EN])
def test_an_unknown_text_is_shown_on_the_incident_and_answered_with_help(any_centre: Centre,
                                                                        language: Language) -> None:
    plan = [(kind, name, phone, language if phone == WORKER else lang) for kind, name, phone, lang in PLAN]
    case = any_centre.dispatched(plan)
    any_centre.reply(WORKER, "kas notiek?")
    (received,) = any_centre.texts(direction=SmsDirection.IN)
    assert (received.interpreted_as, received.incident_id, received.step_id) == ("unknown", case.incident, None)
    assert any_centre.states(case) == [StepState.WAITING, StepState.PENDING, StepState.PENDING]

    detail = any_centre.http.get(f"/api/v1/incidents/{case.incident}")
    assert detail.status_code == 200, detail.text
    (shown,) = [e for e in detail.json()["timeline"] if e["kind"] == "sms_reply"]
    assert shown["actor"] == f"sms:{WORKER}"
    assert (shown["details"]["body"], shown["details"]["understood_as"]) == ("kas notiek?", None)

    (answer,) = any_centre.texts(purpose="reply")
    assert (answer.to_number, answer.body, answer.incident_id) == (WORKER, texts.help_text(language), case.incident)
    any_centre.tick(60)
    assert any_centre.text(answer.id).status == SmsStatus.SENT


# -- answers bound to the dispatch: the reply repeats the dispatch text's code -------------------


def _sms_reply(centre: Centre, case: Case) -> dict[str, Any]:
    (entry, *_) = [e for e in reversed(centre.timeline(case)) if e.kind == TimelineKind.SMS_REPLY]
    return entry.details


def test_a_forged_yes_without_the_code_changes_nothing_and_the_plan_moves_on(any_centre: Centre) -> None:
    """A sender number can be forged: "1" from the worker's number neither accepts nor stops the timer."""
    case = any_centre.dispatched()
    code = any_centre.code(WORKER)
    any_centre.reply(WORKER, "1")
    received = any_centre.texts(direction=SmsDirection.IN)[-1]
    assert (received.interpreted_as, received.step_id, received.details) == ("accept", None, {"reply_code": "missing"})
    assert any_centre.states(case) == [StepState.WAITING, StepState.PENDING, StepState.PENDING]
    shown = _sms_reply(any_centre, case)
    assert (shown["understood_as"], shown["code_check"], shown["body"]) == (None, "missing", "1")
    # The number's owner (only they get texts to it) is told how to answer so that it counts.
    (hint,) = any_centre.texts(purpose="reply")
    assert (hint.to_number, hint.body) == (WORKER, texts.code_missing_text(LV, texts.Reply.ACCEPT, code))
    assert hint.body.endswith(f"1 {code}")
    any_centre.tick(301)  # the step's wait: nobody accepted, so the next person is asked
    assert any_centre.states(case)[:2] == [StepState.NO_ANSWER, StepState.WAITING]
    assert [m.to_number for m in any_centre.texts(purpose="dispatch")] == [WORKER, NEIGHBOUR]


def test_wrong_codes_are_not_applied_and_after_three_no_texted_answer_counts(centre: Centre) -> None:
    case = centre.dispatched()
    code = centre.code(WORKER)
    wrong = [c for c in ("101", "555", "999", "102") if c != code][:3]
    for guess in wrong:
        centre.reply(WORKER, f"1 {guess}")
        assert centre.texts(direction=SmsDirection.IN)[-1].details == {"reply_code": "wrong"}
        assert _sms_reply(centre, case)["code_check"] == "wrong"
    centre.reply(WORKER, f"1 {code}")  # right at last, but a fourth try: the operator decides
    assert centre.texts(direction=SmsDirection.IN)[-1].details == {"reply_code": "locked"}
    assert _sms_reply(centre, case)["code_check"] == "locked"
    assert centre.states(case)[0] == StepState.WAITING
    assert TimelineKind.STEP_ANSWER not in [e.kind for e in centre.timeline(case)]


def test_the_code_says_which_of_a_workers_dispatches_a_reply_answers(any_centre: Centre) -> None:
    first, second = any_centre.dispatched(), any_centre.open_incident()
    any_centre.start(second)
    any_centre.tick(6)  # past the spacing of texts to one number
    codes = [re.search(r"\b1 (\d{3})\b", m.body)[1]  # type: ignore[index]
             for m in any_centre.texts(purpose="dispatch", to_number=WORKER)]
    assert len(set(codes)) == 2, "one number's open dispatches have different codes"
    any_centre.reply(WORKER, f"{codes[0]} jā")  # the older one; without the code the newer would be taken
    assert any_centre.states(first)[0] == StepState.ACCEPTED
    assert any_centre.states(second)[0] == StepState.WAITING
    assert any_centre.texts(direction=SmsDirection.IN)[-1].incident_id == first.incident


def test_a_municipality_that_opted_in_takes_plain_replies(any_centre: Centre) -> None:
    case = any_centre.dispatched()
    with transaction(any_centre.db.sessions) as session:
        incident = session.get_one(Incident, case.incident)
        client = session.get_one(Client, incident.client_id)
        session.get_one(Municipality, client.municipality_id).plain_sms_replies = True
    any_centre.reply(WORKER, "1")
    assert any_centre.states(case)[0] == StepState.ACCEPTED
    assert _sms_reply(any_centre, case)["code_check"] == "plain", "the operator sees it was taken without the code"


def test_a_text_sent_before_texts_carried_codes_takes_a_plain_reply(centre: Centre) -> None:
    case = centre.dispatched()
    with transaction(centre.db.sessions) as session:
        session.get_one(IncidentStep, case.steps[0]).reply_code = None  # as migrated from an older centre
    centre.reply(WORKER, "Jā")
    assert centre.states(case)[0] == StepState.ACCEPTED


@pytest.mark.parametrize(("body", "parsed"), [
    ("1 482", (texts.Reply.ACCEPT, "482")), ("482 1", (texts.Reply.ACCEPT, "482")),
    ("1482", (texts.Reply.ACCEPT, "482")), (" Jā, 482! ", (texts.Reply.ACCEPT, "482")),
    ("jā482", (texts.Reply.ACCEPT, "482")), ("2 482", (texts.Reply.DECLINE, "482")),
    ("ierados 482", (texts.Reply.ARRIVED, "482")), ("ESMU KLĀT 482", (texts.Reply.ARRIVED, "482")),
    ("Esmu klāt482", (texts.Reply.ARRIVED, "482")), ("PABEIGTS 482", (texts.Reply.DONE, "482")),
    ("1", (texts.Reply.ACCEPT, None)), ("Nē", (texts.Reply.DECLINE, None)),
    ("482", (None, "482")), ("kas notiek? 482", (None, "482")), ("1 48", (None, None)),
    ("1 4821", (None, None)), ("Brīvības iela 12-3", (None, None)), ("", (None, None)),
])
def test_a_reply_word_and_its_code_are_read_in_the_ways_people_type_them(
        body: str, parsed: tuple[texts.Reply | None, str | None]) -> None:
    assert texts.parse_reply(body) == parsed


@pytest.mark.parametrize("language", [LV, EN, Language.RU])
def test_every_text_that_asks_for_an_answer_names_the_code_and_fits_one_segment_or_two(language: Language) -> None:
    for reply in texts.Reply:
        hint = texts.code_missing_text(language, reply, CODE)
        assert texts.parse_reply(hint.rsplit(": ", 1)[1]) == (reply, CODE), hint
        assert fake_twilio.segments(hint) <= 2
    confirmation = texts.reply_confirmation(language, texts.Reply.ACCEPT, CODE)
    assert confirmation.count(CODE) == 2 and fake_twilio.segments(confirmation) <= 2


def test_a_reply_from_a_known_number_with_no_open_dispatch_gets_help_and_changes_nothing(centre: Centre) -> None:
    case = centre.dispatched()
    timeline_before = len(centre.timeline(case))
    centre.reply(NEIGHBOUR, "1")  # a contact of the client, whose step has not started
    (received,) = centre.texts(direction=SmsDirection.IN)
    assert (received.interpreted_as, received.incident_id, received.step_id) == ("accept", None, None)
    (answer,) = centre.texts(purpose="reply")
    assert (answer.to_number, answer.body, answer.incident_id) == (NEIGHBOUR, texts.help_text(LV), None)
    assert centre.states(case) == [StepState.WAITING, StepState.PENDING, StepState.PENDING]
    assert len(centre.timeline(case)) == timeline_before


def test_a_text_from_a_number_the_centre_does_not_know_is_kept_and_never_answered(centre: Centre) -> None:
    """Answering anyone would let anyone make the centre pay for texts (premium numbers, auto-responders)."""
    centre.dispatched()
    for n in range(20):
        centre.reply(f"+4477009{n:05d}", "hello")
    centre.reply(STRANGER, "1")
    assert len(centre.texts(direction=SmsDirection.IN)) == 21
    assert centre.texts(purpose="reply") == []


def test_when_the_incident_is_resolved_those_still_asked_are_told_and_a_late_yes_is_thanked(
    any_centre: Centre, fake: FakeTwilio
) -> None:
    case = any_centre.dispatched()  # the home-care worker was asked and has not answered
    any_centre.act(case, actions.acknowledge)
    any_centre.act(case, lambda session, incident, user: actions.resolve(
        session, incident=incident, user=user, outcome=actions.Outcome.ACCIDENTAL_PRESS, notes=""))
    any_centre.tick(60)
    (stand_down,) = any_centre.texts(purpose="stand_down")
    assert (stand_down.to_number, stand_down.status) == (WORKER, SmsStatus.SENT)
    assert stand_down.body == texts.stand_down_text(LV)
    assert any_centre.states(case) == [StepState.CANCELLED] * 3  # the others were never asked: nothing to them
    any_centre.tick(600)
    any_centre.reply(WORKER, "1")  # she reads the first text only now
    any_centre.tick(60)
    (late,) = any_centre.texts(purpose="late_reply")
    assert (late.to_number, late.status, late.incident_id) == (WORKER, SmsStatus.SENT, case.incident)
    assert late.body == texts.late_reply_text(LV) and "Neizpratām" not in late.body
    assert any_centre.texts(purpose="reply") == []
    assert any_centre.timeline(case)[-1].kind == TimelineKind.SMS_REPLY  # the operator sees she answered
    assert any_centre.states(case) == [StepState.CANCELLED] * 3


# -- delivery reports ---------------------------------------------------------------------------


def test_a_delivery_report_marks_the_text_delivered(any_centre: Centre) -> None:
    case = any_centre.dispatched()
    (dispatch,) = any_centre.texts(purpose="dispatch")
    assert dispatch.provider_sid is not None
    assert any_centre.report(dispatch.provider_sid, "sent") == 204
    assert any_centre.text(dispatch.id).status == SmsStatus.SENT
    assert any_centre.report(dispatch.provider_sid, "delivered") == 204
    assert any_centre.text(dispatch.id).status == SmsStatus.DELIVERED
    assert any_centre.states(case)[0] == StepState.WAITING


@pytest.mark.parametrize(("status", "error_code"), [("undelivered", "30003"), ("failed", "30008")])
def test_an_undelivered_dispatch_fails_its_step_and_starts_the_next(any_centre: Centre, status: str,
                                                                    error_code: str) -> None:
    case = any_centre.dispatched()
    (dispatch,) = any_centre.texts(purpose="dispatch")
    assert dispatch.provider_sid is not None
    assert any_centre.report(dispatch.provider_sid, status, error_code) == 204
    failed = any_centre.text(dispatch.id)
    assert failed.status == SmsStatus.FAILED and error_code in (failed.last_error or "")
    assert any_centre.states(case) == [StepState.FAILED, StepState.WAITING, StepState.PENDING]
    entries = any_centre.timeline(case)
    assert [e.kind for e in entries][-2:] == [TimelineKind.STEP_FAILED, TimelineKind.STEP_STARTED]
    assert entries[-2].details["step_id"] == case.steps[0]
    any_centre.tick()
    assert [(m.to_number, m.status) for m in any_centre.texts(purpose="dispatch")] == [
        (WORKER, SmsStatus.FAILED), (NEIGHBOUR, SmsStatus.SENT)]
    assert any_centre.report(dispatch.provider_sid, status, error_code) == 204  # Twilio retries: no second move
    assert any_centre.states(case) == [StepState.FAILED, StepState.WAITING, StepState.PENDING]


def test_a_late_failure_report_does_not_undo_an_answer(centre: Centre) -> None:
    """Who has answered has the text: a delivery report saying otherwise must not fail their step."""
    case = centre.dispatched()
    (dispatch,) = centre.texts(purpose="dispatch")
    assert dispatch.provider_sid is not None
    centre.answer(WORKER, "1")
    assert centre.report(dispatch.provider_sid, "undelivered", "30005") == 204
    assert centre.states(case) == [StepState.ACCEPTED, StepState.PENDING, StepState.PENDING]
    assert TimelineKind.STEP_FAILED not in [e.kind for e in centre.timeline(case)]


def test_a_report_for_a_text_we_never_sent_changes_nothing(centre: Centre, fake: FakeTwilio) -> None:
    case = centre.dispatched()
    form = {"AccountSid": ACCOUNT_SID, "MessageSid": fake_twilio.new_sid(), "MessageStatus": "failed",
            "ErrorCode": "30008", "To": WORKER, "From": TWILIO_NUMBER}
    response = centre.http.post("/webhooks/twilio/status", data=form,
                                headers={"X-Twilio-Signature": fake.sign(STATUS_URL, form)})
    assert response.status_code == 204, response.text
    assert [m.status for m in centre.texts()] == [SmsStatus.SENT]
    assert centre.states(case)[0] == StepState.WAITING


def test_a_badly_signed_delivery_report_is_refused(centre: Centre, fake: FakeTwilio) -> None:
    case = centre.dispatched()
    (dispatch,) = centre.texts(purpose="dispatch")
    assert dispatch.provider_sid is not None

    def forged(callback: Callback) -> int:
        callback.form["MessageStatus"] = "failed"
        return centre.http.post(callback.path, data=callback.form, headers=callback.headers).status_code

    assert fake.deliver(dispatch.provider_sid, "delivered", post=forged) == 403
    assert centre.text(dispatch.id).status == SmsStatus.SENT
    assert centre.states(case)[0] == StepState.WAITING


# -- the outbox ----------------------------------------------------------------------------------


def test_without_twilio_simulated_replies_drive_the_same_logic(any_outbox_centre: Centre) -> None:
    outbox_centre = any_outbox_centre
    case = outbox_centre.dispatched()
    (dispatch,) = outbox_centre.texts(purpose="dispatch")
    assert (dispatch.provider, dispatch.from_number) == ("outbox", "outbox")
    assert dispatch.provider_sid is not None and dispatch.provider_sid.startswith("outbox-")

    code = outbox_centre.code(WORKER)
    response = outbox_centre.http.post("/api/v1/sms/simulate-reply",
                                       json={"from_number": "2000 0001", "body": f"Jā {code}"})
    assert response.status_code == 201, response.text
    assert (response.json()["from_number"], response.json()["interpreted_as"]) == (WORKER, "accept")
    assert outbox_centre.states(case)[0] == StepState.ACCEPTED
    response = outbox_centre.http.post("/api/v1/sms/simulate-reply", json={"from_number": WORKER, "body": "kas?"})
    assert response.status_code == 201 and response.json()["interpreted_as"] == "unknown"
    assert [m.body for m in outbox_centre.texts(purpose="reply")] == [
        texts.reply_confirmation(LV, texts.Reply.ACCEPT, code), texts.help_text(LV)]
    outbox_centre.tick(60)
    outbox_centre.tick(5)
    assert {m.status for m in outbox_centre.texts(direction=SmsDirection.OUT)} == {SmsStatus.SENT}


def test_simulated_replies_are_refused_when_twilio_is_configured(centre: Centre) -> None:
    case = centre.dispatched()
    response = centre.http.post("/api/v1/sms/simulate-reply", json={"from_number": WORKER, "body": "1"})
    assert response.status_code == 409, response.text
    assert centre.texts(direction=SmsDirection.IN) == []
    assert centre.states(case)[0] == StepState.WAITING


# -- the texts -----------------------------------------------------------------------------------

LATVIAN = "AaĀāBbCcČčDdEeĒēFfGgĢģHhIiĪīJjKkĶķLlĻļMmNnŅņOoPpRrSsŠšTtUuŪūVvZzŽž"


def _text(alphabet: str, longest: int) -> st.SearchStrategy[str]:
    """Any length up to the column's, with the long ones (which need shortening) well represented."""
    return st.one_of(st.text(alphabet, min_size=1, max_size=40), st.text(alphabet, min_size=40, max_size=longest),
                     st.text(alphabet, min_size=longest - 10, max_size=longest)).filter(str.strip)


ASCII = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
names, ascii_names = _text(LATVIAN + " -'", 200), _text(ASCII + " -'", 200)  # clients.full_name: 200
addresses, ascii_addresses = _text(LATVIAN + "0123456789 -.,/", 300), _text(ASCII + "0123456789 -.,/", 300)
ALARMS = sorted(texts.ALARM_WHAT[LV])  # the alarms a helper is texted about
alarms = st.sampled_from(ALARMS)
languages = st.sampled_from([LV, EN, Language.RU])
CODE = "482"
HOW_TO_ANSWER = {LV: ("1 482 - pieņemu", "2 482 - nevaru"), EN: ("1 482 = accept", "2 482 = can't")}
REALISTIC = [  # the first three fit whole; the others are cut
    ("Anna Bērziņa", "Brīvības iela 12-3, Ogre"),
    ("Mary O'Brien", "12 High Street, Riga"),
    ("Ēriks Līcis", "Skolas iela 4, Koknese"),
    ("Jānis Ozoliņš-Kalniņš", "Rīgas gatve 123 k-2 dz. 45, Ādaži"),
    ("Ļubova Žukovska", "Ziemeļu iela 7, Ķegums, Ķeguma novads, LV-5020"),
]
TEXT_SETTINGS = hypothesis_settings(max_examples=100, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _lang(language: Language) -> Language:
    return LV if language == LV else EN


def _uncut(language: Language, *, name: str, address: str, alarm: str) -> str:
    """The dispatch text as it would be with no length limit."""
    with patch.object(texts, "MAX_SEGMENTS", 10**6):
        return texts.dispatch_text(language, client_name=name, address=address, alarm=alarm, code=CODE)


@pytest.mark.parametrize("language", [LV, EN])
@pytest.mark.parametrize(("name", "address"), REALISTIC)
def test_a_realistic_dispatch_text_is_whole_and_short(language: Language, name: str, address: str) -> None:
    for alarm in ALARMS:
        text = texts.dispatch_text(language, client_name=name, address=address, alarm=alarm, code=CODE)
        assert fake_twilio.segments(text) <= 2, text
        uncut = _uncut(language, name=name, address=address, alarm=alarm)
        if fake_twilio.segments(uncut) <= 2:
            assert text == uncut
            assert name in text, text
        else:
            # Where to go matters most: the name is shortened first ("Ļubova Ž."), then the address.
            assert address[:15] in text, "a cut address still says where"
            assert name.split()[0] in text, text
        assert texts.ALARM_WHAT[language][alarm] in text
        assert all(part in text for part in HOW_TO_ANSWER[language])
        inform = texts.inform_text(language, client_name=name, alarm=alarm)
        assert fake_twilio.segments(inform) <= 2 and name in inform, inform


@TEXT_SETTINGS
@given(language=languages, name=names, address=addresses, alarm=alarms)
def test_any_dispatch_text_fits_two_segments_and_says_where_and_how_to_answer(
        language: Language, name: str, address: str, alarm: str) -> None:
    text = texts.dispatch_text(language, client_name=name, address=address, alarm=alarm, code=CODE)
    assert fake_twilio.segments(text) <= texts.MAX_SEGMENTS, (len(text), text)
    assert texts.sms_segments(text) == fake_twilio.segments(text)
    uncut = _uncut(language, name=name, address=address, alarm=alarm)
    if fake_twilio.segments(uncut) <= texts.MAX_SEGMENTS:
        assert text == uncut, "nothing is cut from a text that fits"
    assert address[:8].rstrip() in text, "at least the start of the address is kept"
    # The name gives way first ("Anna Bērziņa" → "Anna B."), but its first word's start stays.
    assert name.split()[0][:7] in text, "at least the start of the name is kept"
    assert texts.ALARM_WHAT[_lang(language)][alarm] in text
    assert all(part in text for part in HOW_TO_ANSWER[_lang(language)])


@TEXT_SETTINGS
@given(name=ascii_names, address=ascii_addresses, alarm=alarms)
def test_an_english_text_for_plain_names_stays_in_the_gsm_alphabet(name: str, address: str, alarm: str) -> None:
    """One character outside GSM-7 (an ellipsis when shortening) would halve the room: 306 → 134."""
    text = texts.dispatch_text(EN, client_name=name, address=address, alarm=alarm, code=CODE)
    assert fake_twilio.segments(text) <= 2
    assert text.isascii(), text
    if len(name) + len(address) <= 150:
        assert name in text and address in text


@TEXT_SETTINGS
@given(language=languages, name=names, alarm=alarms, incident_id=st.integers(1, 2**31 - 1),
       waited_s=st.integers(0, 7 * 86400))
def test_the_other_texts_fit_two_segments(language: Language, name: str, alarm: str, incident_id: int,
                                          waited_s: int) -> None:
    inform = texts.inform_text(language, client_name=name, alarm=alarm)
    assert fake_twilio.segments(inform) <= 2 and name[:12].rstrip() in inform, inform
    alert = texts.supervisor_alert_text(language, incident_id=incident_id, waited_s=waited_s)
    assert fake_twilio.segments(alert) <= 2 and f"#{incident_id}" in alert
    assert fake_twilio.segments(texts.help_text(language)) <= 2
    for reply in texts.Reply:
        assert fake_twilio.segments(texts.reply_confirmation(language, reply)) <= 2


@pytest.mark.parametrize("language", [LV, EN])
def test_the_help_text_says_how_to_answer_in_words_we_understand(language: Language) -> None:
    help_text = texts.help_text(language)
    words = {"1", "2", "IERADOS", "PABEIGTS"} if language == LV else {"1", "2", "ARRIVED", "DONE"}
    assert all(word in help_text for word in words), help_text
    for word in words - {"1", "2"}:
        assert texts.interpret_reply(word) is not None
    assert texts.interpret_reply(texts.reply_confirmation(language, texts.Reply.ACCEPT)) is None


def test_medical_notes_are_never_texted_across_a_whole_dispatch(any_centre: Centre) -> None:
    fake = any_centre.fake
    assert fake is not None
    case = any_centre.open_incident()
    any_centre.tick(61)  # unacknowledged: the supervisor is alerted
    any_centre.act(case, actions.acknowledge)
    any_centre.start(case)
    any_centre.tick()
    any_centre.answer(WORKER, "2")  # declined: the neighbour is texted
    any_centre.tick(10)
    any_centre.reply(NEIGHBOUR, "kas notiek?")
    any_centre.answer(NEIGHBOUR, "Jā")
    any_centre.act(case, lambda session, incident, user: actions.notify_contact(
        session, incident=incident, user=user, step_id=case.steps[2]))
    any_centre.tick(10)
    for message in any_centre.texts(direction=SmsDirection.OUT):
        if message.provider_sid:
            any_centre.report(message.provider_sid, "delivered")
    any_centre.answer(NEIGHBOUR, "IERADOS")
    any_centre.tick(10)
    any_centre.answer(NEIGHBOUR, "PABEIGTS")
    any_centre.tick(60)
    any_centre.tick(60)  # the last confirmations go out before the operator resolves
    any_centre.act(case, lambda session, incident, user: actions.resolve(
        session, incident=incident, user=user, outcome=actions.Outcome.NEIGHBOUR_ATTENDED, notes=""))
    any_centre.tick(3600)

    sent = any_centre.texts(direction=SmsDirection.OUT)
    assert {m.purpose for m in sent} == {"supervisor_alert", "dispatch", "reply", "inform"}
    assert all(m.status in (SmsStatus.SENT, SmsStatus.DELIVERED) for m in sent), [(m.purpose, m.status) for m in sent]
    assert len(fake.accepted) == len(sent) >= 9
    assert any_centre.states(case) == [StepState.DECLINED, StepState.DONE, StepState.CANCELLED]
    bodies = [m.body for m in sent] + [str(r.field("Body")) for r in fake.requests]
    assert any(CLIENT_ADDRESS in body for body in bodies)
    for body in bodies:
        assert SECRET not in body and "insulīns" not in body.lower() and "1234" not in body, body
