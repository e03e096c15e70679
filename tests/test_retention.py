"""Retention: old dead letters and raw device events go, in chunks; what happened to people stays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alarmcentre import retention
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import DeviceEvent
from alarmcentre.incidents.models import Incident
from alarmcentre.ingest.processor import InboundMessage, process_message
from alarmcentre.runtime import Database
from tests.factories import Clock, count_rows, message, setup_devices


def test_old_dead_letters_and_device_events_go_and_incidents_stay(
        any_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "CHUNK", 3)  # several chunks
    settings = Settings(dead_letter_retention_days=90, device_event_retention_days=400)
    setup_devices(any_db.sessions, ["RET-1"])
    clock = Clock(datetime(2025, 1, 10, 12, 0, tzinfo=UTC))
    with transaction(any_db.sessions) as session:
        for seq in range(1, 8):  # a press, then heartbeats, a year and more ago
            process_message(session, message=message("RET-1", seq, "button_press" if seq == 1 else "heartbeat",
                                                     ts=clock.now), settings=settings)
        for _ in range(5):
            process_message(session, message=InboundMessage("alarmcentre/v1/devices/RET-1/events", b"junk",
                                                            clock.now), settings=settings)
    clock.now = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)  # 387 days later: events stay, dead letters go
    with transaction(any_db.sessions) as session:
        process_message(session, message=InboundMessage("alarmcentre/v1/devices/RET-1/events", b"junk", clock.now),
                        settings=settings)
    assert retention.purge_expired(any_db.sessions, settings=settings) == {"dead_letters": 5, "device_events": 0}
    clock.advance(timedelta(days=20).total_seconds())  # now 407 days after the first events
    with transaction(any_db.sessions) as session:
        process_message(session, message=message("RET-1", 8, "heartbeat", ts=clock.now), settings=settings)
    assert retention.purge_expired(any_db.sessions, settings=settings) == {"dead_letters": 0, "device_events": 7}
    assert count_rows(any_db, DeviceEvent) == 1 and count_rows(any_db, DeadLetter) == 1
    assert count_rows(any_db, Incident) == 1, "the incident of the old press is part of the record"
