"""Logs carry no personal data and no secret: a realistic night through the real code, logged as production logs
(JSON, here at DEBUG so every library speaks), and every line checked.

The flow: a client's alarm through Mosquitto and the ingest into PostgreSQL, a bad payload that
quotes a phone number dead-lettered, the unacknowledged alarm alerting the supervisor, a failed
and a good login, acknowledge, the SMS dispatch through the outbox, the helper's replies (one
understood, one free text), the care jobs and the metrics, a resolve with notes; then texts
through Twilio's API (a local fake) failing with errors that quote the number, as Twilio's do.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from alarmcentre import care, clock
from alarmcentre.app import create_app
from alarmcentre.config import Settings
from alarmcentre.contacts.models import Contact, ContactKind
from alarmcentre.db import transaction
from alarmcentre.dispatch.escalation import step_failed, sweep
from alarmcentre.dispatch.models import SmsMessage, SmsStatus
from alarmcentre.dispatch.sms import OutboxProvider, SmsSender, TwilioProvider, queue_sms
from alarmcentre.incidents.models import Incident
from alarmcentre.ingest.consumer import IngestConsumer
from alarmcentre.ingest.protocol import events_topic
from alarmcentre.runtime import Database, configure_logging
from alarmcentre.scheduler import refresh_fleet_gauges
from alarmcentre.users.models import Role
from alarmcentre.users.service import create_user
from tests.conftest import MosquittoProcess
from tests.factories import Clock, event_payload, make_client, make_device
from tests.fake_twilio import FakeTwilio
from tests.test_pipeline import Publisher, wait_until

NAME, ADDRESS = "Skaidrīte Ozoliņa", "Kalnciema iela 15-7, Rīga"
CLIENT_PHONE, HELPER_PHONE, SUPERVISOR_PHONE = "+37126123456", "+37129876543", "+37122445566"
HELPER_NAME = "Jānis Bērziņš"
DOOR_CODE = "58#2941"
REPLY = "Būšu pēc desmit minūtēm, durvis atvērtas"
OPERATOR_NOTE = "Skaidrītei kāja salauzta, kaimiņš palīdzēja"
PASSWORD = "night-shift-password"
ACCOUNT_SID, AUTH_TOKEN, TWILIO_NUMBER = "AC" + "0123abcd" * 4, "f" * 32, "+37166000000"


def phone_forms(e164: str) -> list[str]:
    """+371 2612 3456 written every common way: +371..., 371..., 8 digits, grouped."""
    national = e164.removeprefix("+371")
    return [e164, e164[1:], national, f"{national[:3]} {national[3:5]} {national[5:]}",
            f"{national[:4]} {national[4:]}", f"+371 {national}", f"00371{national}"]


def forbidden() -> list[str]:
    words = [NAME, *NAME.split(), "Skaidrite", "Ozolina", ADDRESS, "Kalnciema", HELPER_NAME, *HELPER_NAME.split(),
             "Janis", "Berzins", DOOR_CODE, REPLY, "desmit minūtēm", OPERATOR_NOTE, "salauzta"]
    for phone in (CLIENT_PHONE, HELPER_PHONE, SUPERVISOR_PHONE):
        words += phone_forms(phone)
    return words


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Production logging (configure_logging, JSON) at DEBUG into a buffer; logging restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_levels = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
                    if isinstance(logger, logging.Logger)}
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure_logging(Settings(log_json=True, log_level="DEBUG"))
    yield buffer
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def test_a_night_of_work_logs_no_personal_data(
    json_logs: io.StringIO, postgres_db: Database, mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    db = postgres_db
    settings = Settings(data_dir=tmp_path, ack_alert_after_s=60, sms_min_interval_s=0)
    with transaction(db.sessions) as s:
        client = make_client(s, name=NAME)
        client.address, client.phone = ADDRESS, CLIENT_PHONE
        client.medical_notes = f"Diabēts. Durvju kods {DOOR_CODE}."
        make_device(s, "LOG-1", client=client)
        helper = Contact(client_id=client.id, position=1, kind=ContactKind.NEIGHBOUR, name=HELPER_NAME,
                         phone=HELPER_PHONE)
        s.add(helper)
        create_user(s, username="op", password=PASSWORD, role=Role.OPERATOR)
        supervisor = create_user(s, username="sup", password=PASSWORD, role=Role.SUPERVISOR)
        supervisor.phone, supervisor.on_call = SUPERVISOR_PHONE, True
        s.flush()
        client_id, helper_id = client.id, helper.id

    http = TestClient(create_app(settings=settings, session_factory=db.sessions), raise_server_exceptions=False)
    sup_token = http.post("/api/v1/auth/token", data={"username": "sup", "password": PASSWORD}).json()["access_token"]
    plan = {"steps": [{"contact_id": helper_id, "channel": "sms", "wait_seconds": 300}]}
    response = http.put(f"/api/v1/clients/{client_id}/plan", json=plan,
                        headers={"Authorization": f"Bearer {sup_token}"})
    assert response.status_code == 200, response.text

    # The alarm, and a payload the ingest refuses, through the broker.
    consumer = IngestConsumer(mqtt_url=mosquitto.url, session_factory=db.sessions, settings=settings)
    consumer.start()
    publisher = Publisher(mosquitto.url)
    try:
        assert consumer.wait_connected(10)
        publisher.publish(events_topic("LOG-1"), event_payload(1, "button_press"))
        publisher.publish(events_topic("LOG-1"), json.dumps(
            {"seq": "two", "type": "config_ack", "alarm_numbers": [CLIENT_PHONE], "note": NAME}).encode())
        publisher.publish(events_topic("LOG-1"), f"ALARM {NAME} {CLIENT_PHONE}".encode())
        wait_until(lambda: consumer.last_commit_at is not None and consumer.pending == 0, timeout=10)
        wait_until(lambda: _count_incidents(db) == 1, timeout=10)
    finally:
        publisher.close()
        consumer.stop()
    with db.sessions() as s:
        incident_id = s.scalars(select(Incident.id)).one()

    # Nobody answers for a minute: the supervisor is texted.
    moment = Clock(clock.now())
    outbox = SmsSender(factory=db.sessions, provider=OutboxProvider(), settings=settings, on_failed=step_failed)
    moment.advance(61)
    sweep(db.sessions, settings=settings)
    outbox.send_due()

    # The operator: a wrong password, then in; acknowledges and texts the neighbour.
    assert http.post("/api/v1/auth/token", data={"username": "op", "password": "wrong"}).status_code == 401
    token = http.post("/api/v1/auth/token", data={"username": "op", "password": PASSWORD}).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}

    def post(path: str, body: dict[str, Any] | None = None) -> Any:
        answer = http.post(path, json=body or {}, headers=auth)
        assert answer.status_code < 300, (path, answer.status_code, answer.text)
        return answer.json()

    post(f"/api/v1/incidents/{incident_id}/acknowledge")
    post(f"/api/v1/incidents/{incident_id}/calls", {"answered": True, "client_said": "needs_help",
                                                    "notes": OPERATOR_NOTE})
    steps = http.get(f"/api/v1/incidents/{incident_id}/steps", headers=auth).json()
    post(f"/api/v1/incidents/{incident_id}/steps/start", {"step_id": steps[0]["id"]})
    moment.advance(1)
    outbox.send_due()
    code = http.get(f"/api/v1/incidents/{incident_id}/steps", headers=auth).json()[0]["reply_code"]
    post("/api/v1/sms/simulate-reply", {"from_number": HELPER_PHONE, "body": f"1 {code}"})
    post("/api/v1/sms/simulate-reply", {"from_number": HELPER_PHONE, "body": REPLY})
    post("/api/v1/sms/simulate-reply", {"from_number": "+37120009999", "body": REPLY})  # nobody's dispatch
    moment.advance(1)
    outbox.send_due()
    assert http.get("/metrics").status_code == 200
    refresh_fleet_gauges(db.sessions)
    for name, job in {"supervision": care.supervise_devices, **care.CARE_JOBS}.items():
        care.run_job(db.sessions, name, job, settings=settings)
    post(f"/api/v1/incidents/{incident_id}/resolve", {"outcome": "relative_attended", "notes": OPERATOR_NOTE})

    # Twilio's errors quote the number they refuse.
    with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=TWILIO_NUMBER) as fake:
        twilio = SmsSender(factory=db.sessions, settings=settings, on_failed=step_failed, provider=TwilioProvider(
            account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=TWILIO_NUMBER, api_base=fake.url))
        with transaction(db.sessions) as s:
            queue_sms(s, to=HELPER_PHONE, body=f"{NAME}, {ADDRESS}: pārbaude", purpose="inform")
            queue_sms(s, to=CLIENT_PHONE, body=f"{NAME}, {ADDRESS}: pārbaude", purpose="inform")
        fake.fail_next(status=503, message=f"Service unavailable while sending to {HELPER_PHONE}")
        fake.fail_next(status=400, code=21614, message=f"'To' number {CLIENT_PHONE} is not a valid mobile number")
        twilio.send_due()
        moment.advance(10)
        twilio.send_due()
        assert [r.status for r in fake.requests] == [503, 400, 201]

    with db.sessions() as s:
        texts = list(s.scalars(select(SmsMessage).order_by(SmsMessage.id)))
    assert {SmsStatus.SENT, SmsStatus.FAILED} <= {t.status for t in texts}
    bodies = [t.body for t in texts if t.body]
    assert any(NAME in body for body in bodies), "the dispatch text names the client (so the check means something)"

    lines = json_logs.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(r, dict) and {"time", "level", "logger", "message"} <= set(r) for r in records)
    messages = "\n".join(r["message"] for r in records)
    # The flow went through the code that logs (so silence is not what passes the test).
    for expected in [r"ingest: incident \d+ opened", "ingest: rejected a message", r"incident \d+ unacknowledged",
                     r"inbound SMS \d+ not matched", r"sms \d+: twilio error 20503",
                     r"sms \d+ failed for good: twilio error 21614"]:
        assert re.search(expected, messages), expected
    assert any(r["level"] == "DEBUG" for r in records), "DEBUG was on"

    texts_of_every_line = [line + "\n" + json.dumps(record, ensure_ascii=False)
                           for line, record in zip(lines, records, strict=True)]
    secrets = [PASSWORD, sup_token, token, AUTH_TOKEN]  # passwords, bearer tokens, the Twilio credential
    leaks = [(word, text) for text in texts_of_every_line
             for word in forbidden() + secrets + [body for body in bodies if len(body) > 3] if word in text]
    assert leaks == [], f"personal data or a secret in the logs: {leaks[:5]}"
    print(f"{len(lines)} log lines checked against {len(forbidden()) + len(bodies)} personal strings")


def _count_incidents(db: Database) -> int:
    with db.sessions() as s:
        return len(s.scalars(select(Incident.id)).all())


def test_the_json_formatter_keeps_one_line_per_record_with_a_traceback(json_logs: io.StringIO) -> None:
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        logging.getLogger("alarmcentre.test").exception("failed\nacross lines")
    (line,) = json_logs.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "failed\nacross lines" and "line two" in record["exc"]
    assert record["time"] and time.strptime(record["time"][:19], "%Y-%m-%d %H:%M:%S")

