"""Apply one device message to the database: validate, deduplicate, record, act.

No MQTT here: the consumer hands messages in, commits the batch, and only then
acknowledges them to the broker. Each message runs in its own SAVEPOINT so one bad
message never takes the rest of its batch down with it.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from alarmcentre.canary import is_canary, record_beat
from alarmcentre.clients.models import Client
from alarmcentre.config import Settings, get_settings
from alarmcentre.deadletters.models import MAX_STORED_PAYLOAD, DeadLetter
from alarmcentre.devices.models import (
    BatteryReading,
    Device,
    DeviceConfigVersion,
    DeviceEvent,
    DeviceStatus,
    SignalReading,
)
from alarmcentre.dispatch import escalation
from alarmcentre.incidents import service as incidents
from alarmcentre.ingest.protocol import (
    ALARM_TYPES,
    PERSON_INITIATED_TYPES,
    EventType,
    ParsedEvent,
    ParsedStatus,
    Rejection,
    RejectReason,
    event_details,
    event_time,
    parse_message,
)
from alarmcentre.visits import service as visits

log = logging.getLogger(__name__)

RSSI_HISTORY_STEP = 3  # dB; smaller changes are noise and would write a row per heartbeat
INTERNAL_ERROR = "internal_error"  # our bug, not the device's: dead-lettered and counted, never dropped


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    DEFERRED = "deferred"  # past its device's budget: stored as it came, applied later (ingest/deferral.py)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    received_at: datetime


@dataclass(slots=True)
class Result:
    outcome: Outcome
    kind: str  # event type, "status", or "unknown"
    reason: str | None = None
    incident_opened: int | None = None  # id of a newly opened incident
    incident_id: int | None = None
    clock_skewed: bool = False
    occurred_at: datetime | None = None


def process_message(session: Session, *, message: InboundMessage, settings: Settings | None = None) -> Result:
    """Record the effect of one message in `session` (not committed here)."""
    parsed = parse_message(message.topic, message.payload, received_at=message.received_at)
    if isinstance(parsed, Rejection):
        return dead_letter(session, message=message, reason=parsed.reason, detail=parsed.detail,
                           device_serial=parsed.device_id)
    return process_parsed(session, message=message, parsed=parsed, settings=settings)


def process_parsed(session: Session, *, message: InboundMessage, parsed: ParsedEvent | ParsedStatus,
                   settings: Settings | None = None) -> Result:
    """Record the effect of one valid message, in its own SAVEPOINT (the batch's other messages stay)."""
    settings = settings or get_settings()
    try:
        with session.begin_nested():
            device = session.scalar(select(Device).where(Device.serial == parsed.device_id))
            if device is None:
                rejection = RejectReason.UNKNOWN_DEVICE, "no device registered with this serial"
            elif device.status == DeviceStatus.RETIRED:
                rejection = RejectReason.INACTIVE_DEVICE, "device is retired"
            else:
                rejection = None
                if isinstance(parsed, ParsedStatus):
                    return _apply_status(device, parsed, message.received_at)
                result = _apply_event(session, device, parsed, message.received_at, settings)
    except _Duplicate:
        return Result(Outcome.DUPLICATE, str(parsed.type) if isinstance(parsed, ParsedEvent) else "status")
    except (OperationalError, InterfaceError):
        raise  # the database is unreachable, locked or failing: the whole batch is retried
    except Exception as exc:  # noqa: BLE001  (principle: never raise out of the consumer)
        return _internal_error(session, message, exc)
    if rejection is not None:
        return dead_letter(session, message=message, reason=rejection[0], detail=rejection[1],
                            device_serial=parsed.device_id)
    return result


class _Duplicate(Exception):
    """The (device, seq) pair was already recorded: a redelivery."""


def _apply_status(device: Device, parsed: ParsedStatus, received_at: datetime) -> Result:
    if device.online != parsed.online:
        device.online = parsed.online
        device.online_changed_at = received_at
    if parsed.online:
        device.last_seen_at = _later(device.last_seen_at, received_at)
        device.connected_at = _later(device.connected_at, received_at)
    return Result(Outcome.ACCEPTED, "status")


def _apply_event(
    session: Session, device: Device, parsed: ParsedEvent, received_at: datetime, settings: Settings
) -> Result:
    occurred_at = event_time(parsed, received_at)
    row = DeviceEvent(
        device_id=device.id,
        seq=parsed.event.seq,
        type=parsed.type.value,
        occurred_at=occurred_at,
        received_at=received_at,
        clock_skewed=parsed.clock_skewed,
        details=event_details(parsed),
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError as exc:
        # Only the (device, seq) key makes it a redelivery; any other refusal is a fault to dead-letter.
        if session.scalar(select(DeviceEvent.id).where(DeviceEvent.device_id == device.id,
                                                       DeviceEvent.seq == parsed.event.seq)) is None:
            raise
        raise _Duplicate() from exc

    result = Result(Outcome.ACCEPTED, parsed.type.value, clock_skewed=parsed.clock_skewed,
                    occurred_at=occurred_at)
    device.last_seen_at = _later(device.last_seen_at, received_at)
    if not device.online:
        device.online = True
        device.online_changed_at = received_at

    if is_canary(device):
        # The synthetic test alarm went through broker and ingest: recorded, never an incident.
        if parsed.type in ALARM_TYPES:
            record_beat(session, device=device, seq=parsed.event.seq, sent_at=occurred_at)
        return result

    # The client is loaded only for signals about the person: most traffic is heartbeats.
    needs_client = parsed.type in PERSON_INITIATED_TYPES or parsed.type in ALARM_TYPES
    client = session.get(Client, device.client_id) if needs_client and device.client_id is not None else None
    if parsed.type in PERSON_INITIATED_TYPES and client is not None:
        client.last_contact_at = _later(client.last_contact_at, occurred_at)

    if parsed.type in ALARM_TYPES:
        incident, opened = incidents.raise_alarm(
            session, device=device, client=client, event=row, clock_skewed=parsed.clock_skewed
        )
        row.incident_id = incident.id
        result.incident_id = incident.id
        if opened:
            result.incident_opened = incident.id
            escalation.on_incident_opened(session, incident=incident, client=client, settings=settings)
    elif parsed.type == EventType.CANCEL:
        incident = incidents.record_cancel(session, device=device, client=client, event=row)
        if incident is not None:
            row.incident_id = result.incident_id = incident.id
    else:
        _update_device_state(session, device, parsed, occurred_at, settings)
    return result


def _update_device_state(
    session: Session, device: Device, parsed: ParsedEvent, occurred_at: datetime, settings: Settings
) -> None:
    """Device-side signals. A buffered old event never overwrites newer state."""
    event = parsed.event
    low_below = settings.battery_low_percent
    match parsed.type:
        case EventType.HEARTBEAT:
            if getattr(event, "battery", None) is not None and _newer(occurred_at, device.battery_at):
                _set_battery(session, device, event.battery, None, occurred_at, low_below)  # type: ignore[attr-defined]
            if getattr(event, "rssi", None) is not None:
                rssi = event.rssi  # type: ignore[attr-defined]
                if device.rssi is None or abs(rssi - device.rssi) >= RSSI_HISTORY_STEP:
                    session.add(SignalReading(device_id=device.id, at=occurred_at, rssi=rssi))
                device.rssi = rssi
            mains = getattr(event, "mains", None)
            if mains is not None and mains != device.mains_power and _newer(occurred_at, device.mains_changed_at):
                device.mains_power = mains
                device.mains_changed_at = occurred_at
        case EventType.BATTERY:
            if _newer(occurred_at, device.battery_at):
                _set_battery(session, device, event.level, event.low, occurred_at, low_below)  # type: ignore[attr-defined]
        case EventType.POWER_LOST | EventType.POWER_RESTORED:
            if _newer(occurred_at, device.mains_changed_at):
                device.mains_power = parsed.type == EventType.POWER_RESTORED
                device.mains_changed_at = occurred_at
        case EventType.CONFIG_APPLIED:
            version = event.version  # type: ignore[attr-defined]
            if device.reported_config_version is None or version >= device.reported_config_version:
                device.reported_config_version = version
                device.config_error = None
                if device.config_failed_version is not None and version >= device.config_failed_version:
                    device.config_failed_version = None
                # The device now heartbeats at the applied interval: supervise it by that one.
                applied = session.scalar(select(DeviceConfigVersion.config).where(
                    DeviceConfigVersion.device_id == device.id, DeviceConfigVersion.version == version))
                if applied and applied.get("heartbeat_interval"):
                    device.heartbeat_interval_s = int(applied["heartbeat_interval"])
        case EventType.CONFIG_FAILED:
            device.config_error = f"version {event.version}: {event.reason}"[:500]  # type: ignore[attr-defined]
            device.config_failed_version = event.version  # type: ignore[attr-defined]
        case EventType.TAMPER:
            if _newer(occurred_at, device.tamper_at):
                device.tamper_at = occurred_at
        case EventType.TEST_CALL:
            device.last_test_call_at = _later(device.last_test_call_at, occurred_at)
        case EventType.CARER_ARRIVED | EventType.CARER_DEPARTED:
            if device.client_id is not None:  # the client's visit (docs/visits.md); the event log keeps the rest
                visits.device_carer_event(session, client_id=device.client_id, at=occurred_at,
                                          arrived=parsed.type == EventType.CARER_ARRIVED)
        case _:
            pass


def _set_battery(session: Session, device: Device, level: int, low_flag: bool | None, at: datetime,
                 low_below: int) -> None:
    low = bool(low_flag) or level < low_below
    # History keeps changes only: a heartbeat a minute must not write a row a minute.
    if level != device.battery_level or low != device.battery_low:
        session.add(BatteryReading(device_id=device.id, at=at, level=level, low=low))
    device.battery_level = level
    device.battery_low = low
    device.battery_at = at


def dead_letter(
    session: Session, *, message: InboundMessage, reason: str, detail: str, device_serial: str | None
) -> Result:
    session.add(
        DeadLetter(
            received_at=message.received_at,
            topic=message.topic[:300],
            device_serial=device_serial,
            reason=reason,
            detail=detail[:1000],
            payload=message.payload[:MAX_STORED_PAYLOAD],
            payload_size=len(message.payload),
        )
    )
    return Result(Outcome.REJECTED, "unknown", reason=reason)


def _internal_error(session: Session, message: InboundMessage, exc: BaseException) -> Result:
    log.error("ingest: could not apply a message on %s: %r", message.topic[:120], exc, exc_info=exc)
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return dead_letter(session, message=message, reason=INTERNAL_ERROR, detail=detail, device_serial=None)


def _later(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None or candidate > current else current


def _newer(candidate: datetime, current: datetime | None) -> bool:
    return current is None or candidate >= current


__all__ = ["InboundMessage", "Outcome", "Result", "dead_letter", "process_message", "process_parsed"]
