"""Apply a batch of device messages with a fixed number of statements, whatever its size.

Most traffic is heartbeats, battery reports and online/offline statuses: they change a device's
state and add history, nothing else. Those go the set-based way, in this order:

1. every message is validated in Python first; a bad one becomes a dead letter, its neighbours go on;
2. one SELECT loads the batch's devices (locked on PostgreSQL, in id order, so that concurrent
   ingest workers wait for each other instead of overwriting each other's state);
3. one INSERT … ON CONFLICT DO NOTHING RETURNING records the events and tells which (device, seq)
   pairs are new; the rest are redeliveries, inside this batch or from an earlier one;
4. the devices' new state is worked out in Python, message by message in arrival order, keeping the
   newest value of each field (an old buffered event never moves state backwards); then one UPDATE
   (executed for every changed device) and one INSERT each for battery and signal history.

Everything that needs the domain (an alarm raising or cancelling an incident, a test call counting as
contact, a configuration report, a carer visit) goes through `processor.process_parsed`, one message
at a time, after the set-based part and in the same transaction.

A database error in the set-based part that is about the data, not the database (a constraint, a
value out of range), rolls back to a savepoint and the same messages are applied one at a time, each
in its own savepoint, so the one that fails is dead-lettered alone. An error of the database itself
(connection lost, locked, deadlock) is raised: the consumer retries the whole batch, acknowledging
nothing meanwhile.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Insert, Select, String, Table, Text, any_, bindparam, cast, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from alarmcentre import clock
from alarmcentre.config import Settings, get_settings
from alarmcentre.devices.models import BatteryReading, Device, DeviceEvent, DeviceStatus, SignalReading
from alarmcentre.ingest.deferral import DeviceBudget, deferring, set_aside, take_round
from alarmcentre.ingest.processor import (
    RSSI_HISTORY_STEP,
    InboundMessage,
    Outcome,
    Result,
    dead_letter,
    process_parsed,
)
from alarmcentre.ingest.protocol import (
    EventType,
    ParsedEvent,
    ParsedStatus,
    Rejection,
    RejectReason,
    event_details,
    event_time,
    parse_message,
    topic_device,
)

log = logging.getLogger(__name__)

# Event types that only change device state and history: the set-based path takes them.
STATE_ONLY_TYPES = frozenset(
    {EventType.HEARTBEAT, EventType.BATTERY, EventType.POWER_LOST, EventType.POWER_RESTORED, EventType.TAMPER}
)

_DEVICES: Table = Device.__table__  # type: ignore[assignment]
_EVENTS: Table = DeviceEvent.__table__  # type: ignore[assignment]
_BATTERY: Table = BatteryReading.__table__  # type: ignore[assignment]
_SIGNAL: Table = SignalReading.__table__  # type: ignore[assignment]

# The device columns the set-based path reads and may write.
_STATE_COLUMNS = ("online", "online_changed_at", "connected_at", "last_seen_at", "battery_level", "battery_low",
                  "battery_at", "rssi", "mains_power", "mains_changed_at", "tamper_at")


def process_batch(session: Session, messages: Sequence[InboundMessage], *,
                  settings: Settings | None = None, budget: DeviceBudget | None = None) -> list[Result]:
    """Record the effect of `messages` in `session` (not committed here); one Result per message, in order.

    With a `budget`, the messages of a device past it are set aside (ingest/deferral.py), not applied."""
    settings = settings or get_settings()
    results: list[Result | None] = [None] * len(messages)
    # Past the budget a message is set aside before its payload is even read: a flood costs one INSERT.
    now = range(len(messages)) if budget is None else _set_aside_past_budget(session, messages, results, budget)
    valid: list[tuple[int, ParsedEvent | ParsedStatus]] = []
    for index in now:
        message = messages[index]
        parsed = parse_message(message.topic, message.payload, received_at=message.received_at)
        if isinstance(parsed, Rejection):
            results[index] = dead_letter(session, message=message, reason=parsed.reason, detail=parsed.detail,
                                         device_serial=parsed.device_id)
        else:
            valid.append((index, parsed))
    # A device with anything for the domain in this batch keeps its messages from the first of those to the last
    # in arrival order, one by one: its "offline" status after its button press must leave it offline. What it
    # sent before the first goes with the set applied first; its state messages after the last go with a second
    # set, applied after the domain's (the order holds: state, domain one by one, state).
    first_domain: dict[str, int] = {}
    last_domain: dict[str, int] = {}
    for index, parsed in valid:
        if not _state_only(parsed):
            first_domain.setdefault(parsed.device_id, index)
            last_domain[parsed.device_id] = index
    needs_domain = set(first_domain)
    if needs_domain and session.get_bind().dialect.name == "postgresql":
        # Several ingest workers: take every device of the batch in one order (id) before anything else,
        # so that two batches sharing devices wait for each other instead of deadlocking.
        serials = sorted({parsed.device_id for _, parsed in valid})
        session.execute(select(_DEVICES.c.id).where(_DEVICES.c.serial == any_(
            bindparam("serials", serials, type_=postgresql.ARRAY(String)))).order_by(_DEVICES.c.id).with_for_update())
    set_before: list[tuple[int, ParsedEvent | ParsedStatus]] = []
    one_by_one: list[tuple[int, ParsedEvent | ParsedStatus]] = []
    set_after: list[tuple[int, ParsedEvent | ParsedStatus]] = []
    for index, parsed in valid:
        first = first_domain.get(parsed.device_id)
        if first is None or index < first:
            set_before.append((index, parsed))
        elif index > last_domain[parsed.device_id]:
            set_after.append((index, parsed))  # state only: the last domain message is behind it
        else:
            one_by_one.append((index, parsed))

    leftover = _apply_as_set(session, messages, set_before, results, settings)
    for index, parsed in sorted(one_by_one + leftover, key=lambda item: item[0]):
        results[index] = process_parsed(session, message=messages[index], parsed=parsed, settings=settings)
    if set_after:
        # The domain's devices were changed through the ORM; the set reads and writes their rows directly.
        session.flush()
        for index, parsed in _apply_as_set(session, messages, set_after, results, settings):
            results[index] = process_parsed(session, message=messages[index], parsed=parsed, settings=settings)
        for instance in list(session.identity_map.values()):
            if isinstance(instance, Device):
                session.expire(instance)  # its row may have been written by the set since it was loaded
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]


def _apply_as_set(session: Session, messages: Sequence[InboundMessage],
                  items: list[tuple[int, ParsedEvent | ParsedStatus]], results: list[Result | None],
                  settings: Settings) -> list[tuple[int, ParsedEvent | ParsedStatus]]:
    """Apply state messages as one set, in a savepoint; what has to go one by one instead is returned
    (all of them, if the set failed on a message's data)."""
    if not items:
        return []
    try:
        with session.begin_nested():
            for index, result in _apply_set_based(session, messages, items, settings).items():
                results[index] = result
    except (OperationalError, InterfaceError):
        raise  # the database itself: the whole batch is retried
    except Exception as exc:  # noqa: BLE001  (a message's data or our bug: find the message)
        log.warning("ingest: %d state messages failed as a set (%s); applying them one by one",
                    len(items), type(getattr(exc, "orig", None) or exc).__name__)
        return items
    return []


def apply_deferred_round(session: Session, *, settings: Settings | None = None
                         ) -> tuple[list[InboundMessage], list[Result]]:
    """Apply one round of set-aside messages (the oldest of each device first) as one batch: the messages, and
    their results."""
    messages = [InboundMessage(topic=row.topic, payload=row.payload, received_at=row.received_at)
                for row in take_round(session)]
    return messages, process_batch(session, messages, settings=settings) if messages else []


def _set_aside_past_budget(session: Session, messages: Sequence[InboundMessage], results: list[Result | None],
                           budget: DeviceBudget) -> list[int]:
    """Set aside the messages of devices past their budget, and of devices with messages set aside already (their
    order holds); the indexes of the rest, to apply now. Only the topic is read: a message that is not a device's
    goes on to be refused as usual."""
    serials = [topic_device(message.topic) for message in messages]
    known = {serial for serial in serials if serial is not None}
    behind = deferring(session, known) if budget.maybe_set_aside else set()
    now: list[int] = []
    aside: list[dict[str, object]] = []
    for index, (message, serial) in enumerate(zip(messages, serials, strict=True)):
        if serial is None or (serial not in behind and budget.take(serial)):
            now.append(index)
            continue
        behind.add(serial)  # the rest of this batch of the device waits behind this one
        aside.append({"device_serial": serial, "topic": message.topic, "payload": message.payload,
                      "received_at": message.received_at})
        results[index] = Result(Outcome.DEFERRED, "deferred")
    if aside:
        set_aside(session, aside)
        budget.noted_set_aside()  # before the commit: a drain running now must not conclude the table is empty
    return now


def _state_only(parsed: ParsedEvent | ParsedStatus) -> bool:
    return isinstance(parsed, ParsedStatus) or parsed.type in STATE_ONLY_TYPES


@dataclass(slots=True)
class _DeviceState:
    """One device's row as loaded, and as it will be written."""

    id: int
    status: str
    values: dict[str, Any]
    changed: bool = False
    battery_rows: list[dict[str, Any]] = field(default_factory=list)
    signal_rows: list[dict[str, Any]] = field(default_factory=list)

    def set(self, column: str, value: Any) -> None:
        if self.values[column] != value:
            self.values[column] = value
            self.changed = True

    def seen(self, at: datetime) -> None:
        if _newer(at, self.values["last_seen_at"]):
            self.set("last_seen_at", at)


def _apply_set_based(session: Session, messages: Sequence[InboundMessage],
                     items: list[tuple[int, ParsedEvent | ParsedStatus]], settings: Settings) -> dict[int, Result]:
    postgres = session.get_bind().dialect.name == "postgresql"
    serials = sorted({parsed.device_id for _, parsed in items})
    query = select(_DEVICES.c.id, _DEVICES.c.serial, _DEVICES.c.status, *(_DEVICES.c[c] for c in _STATE_COLUMNS))
    if postgres:  # one array parameter: a short statement whatever the batch size
        query = (query.where(_DEVICES.c.serial == any_(bindparam("serials", serials, type_=postgresql.ARRAY(String))))
                 .order_by(_DEVICES.c.id).with_for_update())
    else:
        query = query.where(_DEVICES.c.serial.in_(serials)).order_by(_DEVICES.c.id)
    devices: dict[str, _DeviceState] = {}
    for row in session.execute(query).mappings():
        devices[row["serial"]] = _DeviceState(row["id"], row["status"], {c: row[c] for c in _STATE_COLUMNS})

    results: dict[int, Result] = {}
    accepted: list[tuple[int, _DeviceState, ParsedEvent | ParsedStatus]] = []
    new_events: dict[tuple[int, int], tuple[int, dict[str, Any]]] = {}
    for index, parsed in items:
        message = messages[index]
        device = devices.get(parsed.device_id)
        if device is None or device.status == DeviceStatus.RETIRED:
            reason, detail = ((RejectReason.UNKNOWN_DEVICE, "no device registered with this serial") if device is None
                              else (RejectReason.INACTIVE_DEVICE, "device is retired"))
            results[index] = dead_letter(session, message=message, reason=reason, detail=detail,
                                         device_serial=parsed.device_id)
            continue
        if isinstance(parsed, ParsedEvent):
            key = (device.id, parsed.event.seq)
            if key in new_events:  # the same message twice in one batch
                results[index] = Result(Outcome.DUPLICATE, parsed.type.value)
                continue
            new_events[key] = (index, {
                "device_id": device.id, "seq": parsed.event.seq, "type": parsed.type.value,
                "occurred_at": event_time(parsed, message.received_at), "received_at": message.received_at,
                "clock_skewed": parsed.clock_skewed, "details": event_details(parsed),
            })
        accepted.append((index, device, parsed))

    inserted = _insert_new_events(session, [row for _, row in new_events.values()], postgres=postgres)
    for index, device, parsed in accepted:
        message = messages[index]
        if isinstance(parsed, ParsedStatus):
            _apply_status(device, parsed, message.received_at)
            results[index] = Result(Outcome.ACCEPTED, "status")
        elif (device.id, parsed.event.seq) not in inserted:
            results[index] = Result(Outcome.DUPLICATE, parsed.type.value)
        else:
            occurred_at = new_events[(device.id, parsed.event.seq)][1]["occurred_at"]
            device.seen(message.received_at)
            if not device.values["online"]:
                device.set("online", True)
                device.set("online_changed_at", message.received_at)
            _apply_state(device, parsed, occurred_at, settings)
            results[index] = Result(Outcome.ACCEPTED, parsed.type.value, clock_skewed=parsed.clock_skewed,
                                    occurred_at=occurred_at)

    changed = [device for device in devices.values() if device.changed]
    if changed:
        _update_devices(session, changed, postgres=postgres)
    for table, rows in ((_BATTERY, [row for device in devices.values() for row in device.battery_rows]),
                        (_SIGNAL, [row for device in devices.values() for row in device.signal_rows])):
        if rows:
            if postgres:
                session.execute(table.insert().from_select(list(rows[0]), _unnest(table, rows)))
            else:
                session.execute(table.insert(), rows)
    return results


def _unnest(table: Table, rows: list[dict[str, Any]], *, json_columns: tuple[str, ...] = ()) -> Select[Any]:
    """PostgreSQL: `rows` as one array parameter per column, unnested side by side into rows. The
    statement stays short and cached whatever the batch size (a multi-row VALUES grows with it, and
    psycopg re-parses a long statement on every execution). JSON goes as text and is cast back."""
    columns = []
    for name in rows[0]:
        if name in json_columns:
            values: list[Any] = [json.dumps(row[name]) for row in rows]
            columns.append(cast(func.unnest(bindparam(f"a_{name}", values, type_=postgresql.ARRAY(Text))), JSON)
                           .label(name))
        else:
            values = [row[name] for row in rows]
            array = postgresql.ARRAY(table.c[name].type)
            columns.append(func.unnest(bindparam(f"a_{name}", values, type_=array)).label(name))
    return select(*columns)


def _update_devices(session: Session, changed: list[_DeviceState], *, postgres: bool) -> None:
    if postgres:  # UPDATE … FROM (SELECT unnest(…), …): one statement, whatever the number of devices
        rows = [{"id": d.id, **{c: d.values[c] for c in _STATE_COLUMNS}} for d in changed]
        source = _unnest(_DEVICES, rows).subquery()
        session.execute(update(_DEVICES).where(_DEVICES.c.id == source.c.id)
                        .values({c: source.c[c] for c in _STATE_COLUMNS}))
        return
    # SQLite: one UPDATE executed per device, in-process, no round trips to save.
    statement = (update(_DEVICES).where(_DEVICES.c.id == bindparam("device_pk"))
                 .values({c: bindparam(f"new_{c}") for c in _STATE_COLUMNS}))
    session.execute(statement, [{"device_pk": d.id, **{f"new_{c}": d.values[c] for c in _STATE_COLUMNS}}
                                for d in changed])


def _insert_new_events(session: Session, rows: list[dict[str, Any]], *, postgres: bool) -> set[tuple[int, int]]:
    """Insert what is new; returns the (device_id, seq) pairs that were."""
    if not rows:
        return set()
    returning = (_EVENTS.c.device_id, _EVENTS.c.seq)
    if postgres:
        committed_at = clock.now()  # a column default, which INSERT … SELECT does not apply
        rows = [{**row, "committed_at": committed_at} for row in rows]
        source = _unnest(_EVENTS, rows, json_columns=("details",))
        statement = (postgresql.insert(_EVENTS).from_select(list(rows[0]), source)
                     .on_conflict_do_nothing(index_elements=["device_id", "seq"]).returning(*returning))
        return {(device_id, seq) for device_id, seq in session.execute(statement)}
    insert: Insert = sqlite.insert(_EVENTS)  # type: ignore[assignment]
    statement = insert.on_conflict_do_nothing(index_elements=["device_id", "seq"]).returning(*returning)  # type: ignore[attr-defined]
    # Executed with a list of rows, SQLAlchemy sends one multi-row INSERT per page of rows
    # ("insertmanyvalues") and compiles the statement once; .values(rows) would compile every batch.
    return {(device_id, seq) for device_id, seq in session.execute(statement, rows)}


def _apply_status(device: _DeviceState, parsed: ParsedStatus, received_at: datetime) -> None:
    if device.values["online"] != parsed.online:
        device.set("online", parsed.online)
        device.set("online_changed_at", received_at)
    if parsed.online:
        device.seen(received_at)
        if _newer(received_at, device.values["connected_at"]):
            device.set("connected_at", received_at)


def _apply_state(device: _DeviceState, parsed: ParsedEvent, occurred_at: datetime, settings: Settings) -> None:
    """The same rules as processor._update_device_state, on the loaded row: newest value wins."""
    event: Any = parsed.event
    values = device.values
    match parsed.type:
        case EventType.HEARTBEAT:
            if event.battery is not None and _newer(occurred_at, values["battery_at"]):
                _set_battery(device, event.battery, None, occurred_at, settings.battery_low_percent)
            if event.rssi is not None:
                if values["rssi"] is None or abs(event.rssi - values["rssi"]) >= RSSI_HISTORY_STEP:
                    device.signal_rows.append({"device_id": device.id, "at": occurred_at, "rssi": event.rssi})
                device.set("rssi", event.rssi)
            if (event.mains is not None and event.mains != values["mains_power"]
                    and _newer(occurred_at, values["mains_changed_at"])):
                device.set("mains_power", event.mains)
                device.set("mains_changed_at", occurred_at)
        case EventType.BATTERY:
            if _newer(occurred_at, values["battery_at"]):
                _set_battery(device, event.level, event.low, occurred_at, settings.battery_low_percent)
        case EventType.POWER_LOST | EventType.POWER_RESTORED:
            if _newer(occurred_at, values["mains_changed_at"]):
                device.set("mains_power", parsed.type == EventType.POWER_RESTORED)
                device.set("mains_changed_at", occurred_at)
        case EventType.TAMPER:
            if _newer(occurred_at, values["tamper_at"]):
                device.set("tamper_at", occurred_at)


def _set_battery(device: _DeviceState, level: int, low_flag: bool | None, at: datetime, low_below: int) -> None:
    low = bool(low_flag) or level < low_below
    # History keeps changes only: a heartbeat a minute must not write a row a minute.
    if level != device.values["battery_level"] or low != device.values["battery_low"]:
        device.battery_rows.append({"device_id": device.id, "at": at, "level": level, "low": low})
    device.set("battery_level", level)
    device.set("battery_low", low)
    device.set("battery_at", at)


def _newer(candidate: datetime, current: datetime | None) -> bool:
    return current is None or candidate >= current


__all__ = ["STATE_ONLY_TYPES", "apply_deferred_round", "process_batch"]
