"""The set-based batch (ingest/batch.py) against the message-by-message processor, on SQLite and PostgreSQL.

The processor applies one message at a time and is the reference: whatever the batch size and
wherever a batch is cut, a batch must leave exactly the rows the processor leaves.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from alarmcentre import clock
from alarmcentre.db import transaction
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import BatteryReading, Device, DeviceEvent, DeviceStatus, SignalReading
from alarmcentre.incidents.models import Incident
from alarmcentre.ingest.batch import process_batch
from alarmcentre.ingest.processor import INTERNAL_ERROR, InboundMessage, Outcome, Result, process_message
from alarmcentre.ingest.protocol import events_topic, status_topic
from alarmcentre.runtime import Database
from tests.conftest import migrated_database
from tests.factories import count_rows, make_client, make_device

STATE_COLUMNS = ("online", "online_changed_at", "last_seen_at", "battery_level", "battery_low", "battery_at",
                 "rssi", "mains_power", "mains_changed_at", "tamper_at", "last_test_call_at",
                 "reported_config_version")


def event(serial: str, seq: int, type_: str, at: datetime, received_at: datetime, **fields: object) -> InboundMessage:
    payload = json.dumps({"seq": seq, "ts": at.isoformat(), "type": type_, **fields}).encode()
    return InboundMessage(events_topic(serial), payload, received_at)


def install(db: Database, serials: list[str], *, retired: tuple[str, ...] = ()) -> None:
    with transaction(db.sessions) as session:
        for serial in serials:
            make_device(session, serial, client=make_client(session))
        for serial in retired:
            make_device(session, serial, status=DeviceStatus.RETIRED)


def apply_in_batches(db: Database, messages: list[InboundMessage], sizes: list[int]) -> list[Result]:
    results: list[Result] = []
    start = 0
    for size in sizes:
        with transaction(db.sessions) as session:
            results += process_batch(session, messages[start:start + size])
        start += size
    assert start >= len(messages)
    return results


def apply_one_by_one(db: Database, messages: list[InboundMessage]) -> list[Result]:
    results = []
    for message in messages:
        with transaction(db.sessions) as session:
            results.append(process_message(session, message=message))
    return results


def snapshot(db: Database) -> dict[str, Any]:
    """Everything a message can change, keyed by serial (ids differ between two databases)."""
    with db.sessions() as session:
        serial_of = dict(session.execute(select(Device.id, Device.serial)).all())
        return {
            "devices": {d.serial: tuple(getattr(d, c) for c in STATE_COLUMNS) for d in session.scalars(select(Device))},
            "events": sorted((serial_of[e.device_id], e.seq, e.type, e.occurred_at, e.clock_skewed,
                              json.dumps(e.details, sort_keys=True), e.incident_id is not None)
                             for e in session.scalars(select(DeviceEvent))),
            "battery": sorted((serial_of[r.device_id], r.at, r.level, r.low)
                              for r in session.scalars(select(BatteryReading))),
            "signal": sorted((serial_of[r.device_id], r.at, r.rssi) for r in session.scalars(select(SignalReading))),
            "dead_letters": Counter((d.reason, d.device_serial, d.topic) for d in session.scalars(select(DeadLetter))),
            "incidents": sorted((serial_of[i.device_id], i.kind, i.status, i.signal_count)
                                for i in session.scalars(select(Incident))),
        }


def realistic_stream(rng: random.Random, serials: list[str], count: int) -> list[InboundMessage]:
    """Mostly heartbeats; battery reports, statuses, power and tamper events, a few alarms and cancels;
    redeliveries of earlier messages; devices flushing old buffered events out of order; bad input."""
    start = clock.now() - timedelta(hours=3)
    seqs = dict.fromkeys(serials, 0)
    sent: list[InboundMessage] = []
    for n in range(count):
        received_at = start + timedelta(seconds=n)
        serial = rng.choice(serials)
        roll = rng.random()
        if sent and roll < 0.08:
            again = rng.choice(sent)  # a redelivery: same topic and payload, later receipt
            sent.append(InboundMessage(again.topic, again.payload, received_at))
            continue
        if roll < 0.13:
            online = rng.random() < 0.6
            sent.append(InboundMessage(status_topic(serial), b"online" if online else b"offline", received_at))
            continue
        if roll < 0.15:
            sent.append(InboundMessage(events_topic(serial), b"{broken", received_at))
            continue
        if roll < 0.16:
            sent.append(event("NOBODY-1", n, "heartbeat", received_at, received_at))
            continue
        if roll < 0.17:
            sent.append(event("OLD-1", n, "heartbeat", received_at, received_at, battery=50))
            continue
        seqs[serial] += 1
        # A tenth of the events were buffered on the device and are older than what came before.
        at = received_at - timedelta(minutes=rng.randint(1, 90)) if rng.random() < 0.1 else received_at
        kind = rng.random()
        if kind < 0.70:
            fields: dict[str, object] = {"battery": rng.choice([100, 99, 80, 30, 15, 5]),
                                         "rssi": rng.randint(-110, -50)}
            if rng.random() < 0.3:
                fields["mains"] = rng.random() < 0.8
            sent.append(event(serial, seqs[serial], "heartbeat", at, received_at, **fields))
        elif kind < 0.78:
            sent.append(event(serial, seqs[serial], "battery", at, received_at, level=rng.randint(0, 100),
                              **({"low": True} if rng.random() < 0.2 else {})))
        elif kind < 0.84:
            sent.append(event(serial, seqs[serial], rng.choice(["power_lost", "power_restored"]), at, received_at))
        elif kind < 0.86:
            sent.append(event(serial, seqs[serial], "tamper", at, received_at))
        elif kind < 0.90:
            sent.append(event(serial, seqs[serial], "test_call", at, received_at))
        elif kind < 0.95:
            sent.append(event(serial, seqs[serial], rng.choice(["button_press", "fall_detected"]), at, received_at))
        else:
            sent.append(event(serial, seqs[serial], "cancel", at, received_at))
    return sent


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_batches_leave_exactly_what_one_message_at_a_time_leaves(any_db: Database, tmp_path: Path,
                                                                seed: int) -> None:
    rng = random.Random(seed)
    serials = [f"B{seed}-{n}" for n in range(12)]
    messages = realistic_stream(rng, serials, 900)
    reference = migrated_database(f"sqlite:///{tmp_path / 'reference.sqlite3'}")
    for db in (reference, any_db):
        install(db, serials, retired=("OLD-1",))
    expected = apply_one_by_one(reference, messages)
    sizes = [rng.choice([1, 2, 7, 50, 200, 500]) for _ in range(len(messages))]
    got = apply_in_batches(any_db, messages, sizes)
    assert [(r.outcome, r.kind, r.reason) for r in got] == [(r.outcome, r.kind, r.reason) for r in expected]
    want, have = snapshot(reference), snapshot(any_db)
    for part in want:
        assert have[part] == want[part], part
    assert Counter(r.outcome for r in got)[Outcome.DUPLICATE] > 20  # the stream did redeliver


def test_a_message_twice_in_one_batch_and_again_in_the_next_is_one_event(any_db: Database) -> None:
    install(any_db, ["DUP-1"])
    now = clock.now()
    beat = event("DUP-1", 5, "heartbeat", now, now, battery=70)
    first = apply_in_batches(any_db, [beat, beat, event("DUP-1", 6, "heartbeat", now, now), beat], [4])
    second = apply_in_batches(any_db, [beat], [1])
    assert [r.outcome for r in first + second] == [Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.ACCEPTED,
                                                   Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert count_rows(any_db, DeviceEvent) == 2
    assert count_rows(any_db, BatteryReading) == 1


def test_an_old_buffered_event_never_moves_device_state_back(any_db: Database) -> None:
    install(any_db, ["OOO-1"])
    now = clock.now()
    new, old = now - timedelta(minutes=1), now - timedelta(hours=2)
    apply_in_batches(any_db, [
        event("OOO-1", 10, "heartbeat", new, now, battery=40, mains=False),
        event("OOO-1", 3, "heartbeat", old, now, battery=95, mains=True),  # flushed late from the device's buffer
        event("OOO-1", 4, "battery", old, now, level=99),
        event("OOO-1", 5, "power_restored", old, now),
        event("OOO-1", 6, "tamper", new, now),
        event("OOO-1", 2, "tamper", old, now),
    ], [6])
    with any_db.sessions() as session:
        device = session.scalars(select(Device)).one()
        assert (device.battery_level, device.battery_at, device.mains_power, device.mains_changed_at,
                device.tamper_at) == (40, new, False, new, new)
    assert count_rows(any_db, DeviceEvent) == 6  # every event is in the log, in its own time


def test_an_offline_status_after_a_press_in_the_same_batch_leaves_the_device_offline(any_db: Database) -> None:
    install(any_db, ["LWT-1"])
    now = clock.now()
    results = apply_in_batches(any_db, [
        event("LWT-1", 1, "heartbeat", now, now),
        event("LWT-1", 2, "button_press", now, now),
        InboundMessage(status_topic("LWT-1"), b"offline", now + timedelta(seconds=1)),
    ], [3])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3 and results[1].incident_opened is not None
    with any_db.sessions() as session:
        assert session.scalars(select(Device)).one().online is False


def _install_poison(db: Database, seq: int) -> None:
    """A database that refuses one row: a trigger, as a stand-in for any fault a single row can meet."""
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "postgresql":
            conn.execute(text(f"""CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN
                IF NEW.seq = {seq} THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$
                LANGUAGE plpgsql"""))
            conn.execute(text("CREATE TRIGGER poison BEFORE INSERT ON device_events "
                              "FOR EACH ROW EXECUTE FUNCTION poison()"))
        else:
            conn.execute(text(f"CREATE TRIGGER poison BEFORE INSERT ON device_events WHEN NEW.seq = {seq} "
                              "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"))


def test_a_poison_message_in_a_large_batch_is_dead_lettered_alone(any_db: Database) -> None:
    serials = [f"P-{n}" for n in range(20)]
    install(any_db, serials)
    _install_poison(any_db, seq=666)
    now = clock.now()
    messages = [event(serials[n % 20], n + 1, "heartbeat", now, now, battery=90) for n in range(499)]
    messages.insert(250, event("P-7", 666, "heartbeat", now, now, battery=10))
    results = apply_in_batches(any_db, messages, [500])
    assert [r.outcome for r in results].count(Outcome.ACCEPTED) == 499
    assert results[250].outcome is Outcome.REJECTED and results[250].reason == INTERNAL_ERROR
    assert count_rows(any_db, DeviceEvent) == 499
    with any_db.sessions() as session:
        (letter,) = session.scalars(select(DeadLetter))
        assert letter.reason == INTERNAL_ERROR and b'"seq": 666' in letter.payload
        assert {d.battery_level for d in session.scalars(select(Device))} == {90}


def test_a_batch_uses_a_fixed_number_of_statements_whatever_its_size(any_db: Database) -> None:
    serials = [f"S-{n}" for n in range(100)]
    install(any_db, serials)
    statements: list[str] = []
    from sqlalchemy import event as sa_event

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement.split()[0])

    now = clock.now()
    sa_event.listen(any_db.engine, "before_cursor_execute", count)
    try:
        for size, first_seq in ((10, 1), (500, 1000)):
            statements.clear()
            batch = [event(serials[n % 100], first_seq + n, "heartbeat", now, now + timedelta(seconds=n),
                           battery=100 - n % 7, rssi=-60 - n % 30) for n in range(size)]
            batch += [InboundMessage(status_topic(serials[n]), b"online", now) for n in range(5)]
            with transaction(any_db.sessions) as session:
                assert {r.outcome for r in process_batch(session, batch)} == {Outcome.ACCEPTED}
            # BEGIN/SAVEPOINT/RELEASE/COMMIT, one SELECT, one INSERT of events, one UPDATE (executemany),
            # one INSERT each for battery and signal history.
            assert len(statements) <= 10, (size, statements)
    finally:
        sa_event.remove(any_db.engine, "before_cursor_execute", count)
