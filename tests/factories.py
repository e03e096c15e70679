"""Small builders of test data and device messages."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from itertools import count

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import clock
from alarmcentre.clients.models import Client
from alarmcentre.db import transaction
from alarmcentre.devices.models import Device, DeviceStatus
from alarmcentre.dispatch.models import IncidentStep, StepState, Timer, TimerKind
from alarmcentre.incidents.models import Incident, IncidentStatus
from alarmcentre.ingest.processor import InboundMessage
from alarmcentre.ingest.protocol import events_topic
from alarmcentre.municipalities.models import Municipality
from alarmcentre.runtime import Database

_names = count(1)


class Clock:
    """A controlled clock: installs itself as alarmcentre's clock; the conftest restores the real one."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        clock.set_clock(lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_client(session: Session, *, care_level: int = 2, name: str | None = None) -> Client:
    municipality = session.query(Municipality).first()
    if municipality is None:
        municipality = Municipality(name="Testa novads")
        session.add(municipality)
        session.flush()
    client = Client(municipality_id=municipality.id, full_name=name or f"Client {next(_names)}",
                    address="Testa iela 1", care_level=care_level)
    session.add(client)
    session.flush()
    return client


def make_device(session: Session, serial: str, *, client: Client | None = None,
                status: DeviceStatus | None = None) -> Device:
    device = Device(serial=serial, client_id=client.id if client else None,
                    status=status or (DeviceStatus.INSTALLED if client else DeviceStatus.IN_STOCK))
    session.add(device)
    session.flush()
    return device


def setup_devices(factory: sessionmaker[Session], serials: list[str], *, care_level: int = 2) -> None:
    """One client per device, each device installed. Takes SQLite's write lock first: a centre running
    beside the test commits at any moment, which would fail a transaction that read before it writes."""
    with transaction(factory, writes=True) as session:
        for serial in serials:
            make_device(session, serial, client=make_client(session, care_level=care_level))


def event_payload(seq: int, type_: str = "button_press", *, ts: datetime | None = None, **fields: object) -> bytes:
    return json.dumps({"seq": seq, "ts": (ts or datetime.now(UTC)).isoformat(), "type": type_, **fields}).encode()


def message(serial: str, seq: int, type_: str = "button_press", **fields: object) -> InboundMessage:
    return InboundMessage(events_topic(serial), event_payload(seq, type_, **fields), clock.now())


def count_rows(db: Database, model: type, *where: object) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def stage_escalations(session: Session, count: int, first_due: datetime, spread_s: float) -> list[int]:
    """`count` acknowledged incidents, each of its own client, with step 1 (SMS) waiting for an answer and
    its timeout due between first_due and first_due + spread_s; step 2 (SMS, automatic) is next.

    Phones: step 1 +3712100NNNN, step 2 +3712200NNNN (NNNN = the incident's index). Returns the incident ids."""
    ids = []
    for i in range(count):
        incident = Incident(client_id=make_client(session).id, device_id=None, kind="button_press", priority=2,
                            status=IncidentStatus.ACKNOWLEDGED, active_key=f"stage:{i}", opened_at=first_due,
                            last_signal_at=first_due)
        session.add(incident)
        session.flush()
        for position, phone in ((1, f"+3712100{i:04d}"), (2, f"+3712200{i:04d}")):
            step = IncidentStep(incident_id=incident.id, position=position, kind="relative", name=f"c{position}",
                                phone=phone, language="lv", channel="sms", wait_seconds=300, automatic=True,
                                state=StepState.WAITING if position == 1 else StepState.PENDING)
            session.add(step)
            session.flush()
            if position == 1:
                session.add(Timer(kind=TimerKind.STEP_TIMEOUT, incident_id=incident.id, step_id=step.id,
                                  due_at=first_due + timedelta(seconds=spread_s * i / count)))
        ids.append(incident.id)
    return ids


def reply_code(dispatch_text: str) -> str:
    """The code a dispatch text asks its answers to repeat ("Atbildiet 1 482 - pieņemu" → "482")."""
    match = re.search(r"\b1 (\d{3})\b", dispatch_text)
    assert match, f"no reply code in the dispatch text {dispatch_text!r}"
    return match[1]
