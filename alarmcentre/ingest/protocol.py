"""Device protocol v1: topics, event schemas and the parser the ingest runs on every message.

The parser is pure (no database, no broker): it turns (topic, payload bytes) into a
typed message or a `Rejection` with a named reason. docs/protocol.md is the
human-readable definition of the same contract.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

TOPIC_PREFIX = "alarmcentre/v1/devices"
EVENTS_SUBSCRIPTION = f"{TOPIC_PREFIX}/+/events"
STATUS_SUBSCRIPTION = f"{TOPIC_PREFIX}/+/status"
# The alarm lane: the same events, for the types below only. The broker keeps it in a queue of its own
# and the ingest reads it on a connection of its own, so an alarm never waits behind heartbeats.
ALARMS_SUBSCRIPTION = f"{TOPIC_PREFIX}/+/alarms"

MAX_PAYLOAD_BYTES = 4096
MAX_FUTURE_SKEW = timedelta(minutes=5)
# Serials: letters, digits, '-', '_' (no MQTT wildcards or separators).
DEVICE_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
_TOPIC_RE = re.compile(rf"^{re.escape(TOPIC_PREFIX)}/({DEVICE_ID_PATTERN})/(events|alarms|status)$")


def topic_device(topic: str) -> str | None:
    """The serial in a device topic, None for anything else (a cheap look, before the payload is read)."""
    match = _TOPIC_RE.match(topic)
    return match.group(1) if match else None


def events_topic(device_id: str) -> str:
    return f"{TOPIC_PREFIX}/{device_id}/events"


def alarms_topic(device_id: str) -> str:
    return f"{TOPIC_PREFIX}/{device_id}/alarms"


def status_topic(device_id: str) -> str:
    return f"{TOPIC_PREFIX}/{device_id}/status"


def config_topic(device_id: str) -> str:
    return f"{TOPIC_PREFIX}/{device_id}/config"


def commands_topic(device_id: str) -> str:
    return f"{TOPIC_PREFIX}/{device_id}/commands"


class EventType(StrEnum):
    BUTTON_PRESS = "button_press"
    PULL_CORD = "pull_cord"
    FALL_DETECTED = "fall_detected"
    CANCEL = "cancel"
    TEST_CALL = "test_call"
    HEARTBEAT = "heartbeat"
    BATTERY = "battery"
    POWER_LOST = "power_lost"
    POWER_RESTORED = "power_restored"
    TAMPER = "tamper"
    CONFIG_APPLIED = "config_applied"
    CONFIG_FAILED = "config_failed"
    CARER_ARRIVED = "carer_arrived"
    CARER_DEPARTED = "carer_departed"


ALARM_TYPES = frozenset({EventType.BUTTON_PRESS, EventType.PULL_CORD, EventType.FALL_DETECTED})
# Signals that show the person (not just the device) is there: they count as contact
# for the two-week welfare check. Heartbeats and fall sensors do not.
PERSON_INITIATED_TYPES = frozenset(
    {EventType.BUTTON_PRESS, EventType.PULL_CORD, EventType.CANCEL, EventType.TEST_CALL}
)


# What the alarm lane carries: everything that raises or changes an incident, and mains power (a device
# on its battery has hours left). On the events topic these are accepted too (devices of protocol 1.0).
ALARM_LANE_TYPES = ALARM_TYPES | frozenset({EventType.CANCEL, EventType.POWER_LOST, EventType.POWER_RESTORED})


class RejectReason(StrEnum):
    """Every way a message can be refused; each is a dead letter and a metric label."""

    BAD_TOPIC = "bad_topic"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    BAD_JSON = "bad_json"
    NOT_OBJECT = "not_object"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_SCHEMA = "invalid_schema"
    NOT_AN_ALARM = "not_an_alarm"  # a heartbeat or report on the alarm lane, which only alarms may use
    DEVICE_MISMATCH = "device_mismatch"
    CLOCK_SKEW = "clock_skew"
    BAD_STATUS = "bad_status"
    UNKNOWN_DEVICE = "unknown_device"
    INACTIVE_DEVICE = "inactive_device"


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    seq: Annotated[int, Field(ge=0, le=2**63 - 1)]
    ts: datetime
    # Optional echo of the serial; when present it must equal the topic's.
    device_id: Annotated[str, Field(pattern=f"^{DEVICE_ID_PATTERN}$")] | None = None


class _PlainEvent(_Event):
    type: Literal[
        "button_press", "pull_cord", "cancel", "test_call",
        "power_lost", "power_restored", "tamper", "carer_arrived", "carer_departed",
    ]


class FallDetected(_Event):
    type: Literal["fall_detected"]
    confidence: Annotated[float, Field(ge=0, le=1)] | None = None


class Heartbeat(_Event):
    type: Literal["heartbeat"]
    battery: Annotated[int, Field(ge=0, le=100)] | None = None
    rssi: Annotated[int, Field(ge=-150, le=0)] | None = None
    mains: bool | None = None


class Battery(_Event):
    type: Literal["battery"]
    level: Annotated[int, Field(ge=0, le=100)]
    low: bool | None = None


class ConfigApplied(_Event):
    type: Literal["config_applied"]
    version: Annotated[int, Field(ge=0)]


class ConfigFailed(_Event):
    type: Literal["config_failed"]
    version: Annotated[int, Field(ge=0)]
    reason: Annotated[str, Field(max_length=500)]


DeviceEvent = Annotated[
    _PlainEvent | FallDetected | Heartbeat | Battery | ConfigApplied | ConfigFailed,
    Field(discriminator="type"),
]
_EVENT_ADAPTER: TypeAdapter[DeviceEvent] = TypeAdapter(DeviceEvent)


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    device_id: str
    event: _Event
    type: EventType
    clock_skewed: bool  # device clock too far ahead; time of receipt used instead


@dataclass(frozen=True, slots=True)
class ParsedStatus:
    device_id: str
    online: bool


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str
    device_id: str | None = None


ParseResult = ParsedEvent | ParsedStatus | Rejection


def parse_message(topic: str, payload: bytes, *, received_at: datetime) -> ParseResult:
    """Validate one MQTT message; never raises on bad input."""
    match = _TOPIC_RE.match(topic)
    if match is None:
        return Rejection(RejectReason.BAD_TOPIC, f"topic {topic[:200]!r} is not a v1 device topic")
    device_id, kind = match.group(1), match.group(2)
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(
            RejectReason.TOO_LARGE, f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}", device_id
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(RejectReason.NOT_UTF8, str(exc), device_id)

    if kind == "status":
        value = text.strip()
        if value not in ("online", "offline"):
            return Rejection(RejectReason.BAD_STATUS, f"status {value[:50]!r}", device_id)
        return ParsedStatus(device_id, value == "online")

    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return Rejection(RejectReason.BAD_JSON, str(exc)[:300], device_id)
    if not isinstance(data, dict):
        return Rejection(RejectReason.NOT_OBJECT, f"JSON {type(data).__name__}, not an object", device_id)
    event_type = data.get("type")
    if not isinstance(event_type, str) or event_type not in EventType.__members__.values():
        return Rejection(RejectReason.UNKNOWN_TYPE, f"type {str(event_type)[:50]!r}", device_id)
    # Datetimes arrive as strings in JSON: validate in JSON mode, strict on everything else.
    try:
        event = _EVENT_ADAPTER.validate_json(text)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or '(root)'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        return Rejection(RejectReason.INVALID_SCHEMA, detail[:500], device_id)
    if event.ts.tzinfo is None:
        return Rejection(RejectReason.INVALID_SCHEMA, "ts: needs a UTC offset (RFC 3339)", device_id)
    if event.device_id is not None and event.device_id != device_id:
        return Rejection(
            RejectReason.DEVICE_MISMATCH,
            f"payload device_id {event.device_id!r} on the topic of {device_id!r}",
            device_id,
        )
    etype = EventType(event.type)
    if kind == "alarms" and etype not in ALARM_LANE_TYPES:
        return Rejection(RejectReason.NOT_AN_ALARM,
                         f"type {etype.value!r} belongs on {events_topic(device_id)}, not on the alarm lane", device_id)
    skewed = event.ts - received_at > MAX_FUTURE_SKEW
    if skewed and etype not in ALARM_TYPES:
        return Rejection(
            RejectReason.CLOCK_SKEW,
            f"ts {event.ts.isoformat()} is more than {MAX_FUTURE_SKEW} ahead of the centre",
            device_id,
        )
    # An alarm is never refused for a wrong device clock: it is accepted, flagged,
    # and timed by the centre's clock.
    return ParsedEvent(device_id, event, etype, skewed)


def event_time(parsed: ParsedEvent, received_at: datetime) -> datetime:
    """The time to record for an event: the device's, unless its clock ran ahead."""
    return received_at if parsed.clock_skewed else parsed.event.ts.astimezone(UTC)


def event_details(parsed: ParsedEvent) -> dict[str, object]:
    """The type-specific fields of an event, for the event log."""
    return parsed.event.model_dump(mode="json", exclude={"seq", "ts", "type", "device_id"}, exclude_none=True)
