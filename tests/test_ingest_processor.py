"""What each message does to the database, on SQLite and PostgreSQL (no broker here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from alarmcentre import clock
from alarmcentre.clients.models import Client
from alarmcentre.db import transaction
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import Device, DeviceEvent, DeviceStatus
from alarmcentre.incidents.models import Incident, IncidentStatus, TimelineEntry, TimelineKind
from alarmcentre.ingest.processor import InboundMessage, Outcome, process_message
from alarmcentre.ingest.protocol import status_topic
from alarmcentre.runtime import Database
from tests.factories import make_client, make_device, message

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def run(db: Database, *messages: InboundMessage) -> list:
    with transaction(db.sessions) as session:
        return [process_message(session, message=m) for m in messages]


def count_rows(db: Database, model: type) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_press_opens_one_incident_and_redelivery_changes_nothing(any_db: Database) -> None:
    with transaction(any_db.sessions) as s:
        make_device(s, "D1", client=make_client(s, care_level=2))
    press = message("D1", 10)
    first, again = run(any_db, press, press)
    (third,) = run(any_db, press)
    assert first.outcome is Outcome.ACCEPTED and first.incident_opened is not None
    assert again.outcome is Outcome.DUPLICATE and third.outcome is Outcome.DUPLICATE
    assert count_rows(any_db, DeviceEvent) == 1
    assert count_rows(any_db, Incident) == 1
    with any_db.sessions() as s:
        incident = s.scalars(select(Incident)).one()
        assert (incident.status, incident.kind, incident.priority) == (IncidentStatus.OPEN, "button_press", 2)
        assert s.scalars(select(DeviceEvent)).one().incident_id == incident.id


def test_second_alarm_joins_the_open_incident_and_raises_priority(any_db: Database) -> None:
    with transaction(any_db.sessions) as s:
        make_device(s, "D1", client=make_client(s, care_level=1))
    run(any_db, message("D1", 1), message("D1", 2, "pull_cord"), message("D1", 3, "fall_detected"),
        message("D1", 4, "cancel"))
    with any_db.sessions() as s:
        incident = s.scalars(select(Incident)).one()
        kinds = [e.kind for e in s.scalars(select(TimelineEntry).order_by(TimelineEntry.id))]
    assert incident.signal_count == 3 and incident.priority == 1
    assert kinds == [TimelineKind.OPENED, TimelineKind.SIGNAL, TimelineKind.SIGNAL, TimelineKind.CANCEL]


def test_a_resolved_incident_lets_the_next_press_open_a_new_one(any_db: Database) -> None:
    with transaction(any_db.sessions) as s:
        make_device(s, "D1", client=make_client(s))
    run(any_db, message("D1", 1))
    with transaction(any_db.sessions) as s:
        incident = s.scalars(select(Incident)).one()
        incident.status, incident.active_key = IncidentStatus.RESOLVED, None
    (result,) = run(any_db, message("D1", 2))
    assert result.incident_opened is not None and count_rows(any_db, Incident) == 2


def test_care_level_and_falls_set_priority(any_db: Database) -> None:
    with transaction(any_db.sessions) as s:
        make_device(s, "LOW", client=make_client(s, care_level=1))
        make_device(s, "HIGH", client=make_client(s, care_level=4))
        make_device(s, "FALL", client=make_client(s, care_level=1))
    run(any_db, message("LOW", 1), message("HIGH", 1), message("FALL", 1, "fall_detected"))
    with any_db.sessions() as s:
        by_device = {i.device_id: i.priority for i in s.scalars(select(Incident))}
        serials = {d.id: d.serial for d in s.scalars(select(Device))}
    assert {serials[k]: v for k, v in by_device.items()} == {"LOW": 2, "HIGH": 1, "FALL": 1}


def test_an_unassigned_device_still_raises_an_incident(any_db: Database) -> None:
    with transaction(any_db.sessions) as s:
        make_device(s, "SPARE")
    (result,) = run(any_db, message("SPARE", 1))
    assert result.incident_opened is not None
    with any_db.sessions() as s:
        assert s.scalars(select(Incident)).one().client_id is None


def test_person_initiated_events_update_last_contact_heartbeats_do_not(any_db: Database) -> None:
    clock.set_clock(lambda: T0)
    with transaction(any_db.sessions) as s:
        client_id = make_device(s, "D1", client=make_client(s)).client_id
    run(any_db, message("D1", 1, "heartbeat", ts=T0))
    with any_db.sessions() as s:
        assert s.get(Client, client_id).last_contact_at is None
    run(any_db, message("D1", 2, "test_call", ts=T0 - timedelta(minutes=1)))
    with any_db.sessions() as s:
        assert s.get(Client, client_id).last_contact_at == T0 - timedelta(minutes=1)


def test_device_state_from_signals_and_old_events_do_not_overwrite_newer(any_db: Database) -> None:
    clock.set_clock(lambda: T0)
    with transaction(any_db.sessions) as s:
        make_device(s, "D1", client=make_client(s))
    run(any_db,
        message("D1", 1, "battery", level=15, ts=T0),
        message("D1", 2, "battery", level=90, ts=T0 - timedelta(hours=1)),  # buffered, older
        message("D1", 3, "power_lost", ts=T0),
        message("D1", 4, "config_applied", version=7, ts=T0),
        message("D1", 5, "heartbeat", rssi=-70, ts=T0))
    with any_db.sessions() as s:
        d = s.scalars(select(Device)).one()
    assert (d.battery_level, d.battery_low, d.battery_at) == (15, True, T0)
    assert d.mains_power is False and d.reported_config_version == 7 and d.rssi == -70
    assert d.online and d.last_seen_at == T0
    run(any_db, InboundMessage(status_topic("D1"), b"offline", T0), message("D1", 6, "power_restored", ts=T0),
        message("D1", 7, "config_failed", version=8, reason="volume out of range", ts=T0))
    with any_db.sessions() as s:
        d = s.scalars(select(Device)).one()
    assert d.mains_power is True and d.config_error == "version 8: volume out of range"


def test_status_messages_set_online(any_db: Database) -> None:
    with transaction(any_db.sessions) as s:
        make_device(s, "D1")
    run(any_db, InboundMessage(status_topic("D1"), b"online", T0))
    with any_db.sessions() as s:
        assert s.scalars(select(Device)).one().online
    run(any_db, InboundMessage(status_topic("D1"), b"offline", T0))
    with any_db.sessions() as s:
        assert not s.scalars(select(Device)).one().online


def test_rejections_become_dead_letters_and_the_batch_goes_on(any_db: Database) -> None:
    with transaction(any_db.sessions) as s:
        make_device(s, "D1", client=make_client(s))
        make_device(s, "OLD", status=DeviceStatus.RETIRED)
    results = run(any_db,
                  InboundMessage("alarmcentre/v1/devices/D1/events", b"\x00\xff junk", T0),
                  message("GHOST", 1),
                  message("OLD", 1),
                  message("D1", 1))
    assert [r.reason for r in results[:3]] == ["not_utf8", "unknown_device", "inactive_device"]
    assert results[3].outcome is Outcome.ACCEPTED
    with any_db.sessions() as s:
        letters = s.scalars(select(DeadLetter).order_by(DeadLetter.id)).all()
    assert [dl.reason for dl in letters] == ["not_utf8", "unknown_device", "inactive_device"]
    assert letters[0].payload == b"\x00\xff junk" and letters[1].device_serial == "GHOST"
    assert count_rows(any_db, Incident) == 1
