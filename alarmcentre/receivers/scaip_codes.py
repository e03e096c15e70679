"""What a SCAIP `<mrq>` means to the centre: its message type (`mty`) and status code (`stc`) mapped to the
centre's event types (docs/scaip.md has the same table for installers).

The table holds what published device traces and receivers show (Essence, Possum, Telealarm, Doro); the text
of CLC/TS 50134-9's code list was not at hand. What it does not know is never dropped: an unknown code in an
alarm message (`ME`) still raises an alarm, shown with its raw code, and in an information message (`IN`) it
counts as a sign of life; both open an operator task to find out what the code means.
"""

from __future__ import annotations

from dataclasses import dataclass

from alarmcentre.ingest.protocol import EventType


class MessageType:
    ALARM = "ME"  # "message": an alarm (the default when a device leaves mty out, as Possum's units do)
    RESET = "RE"  # the alarm withdrawn at the device
    INFORMATION = "IN"  # more about an alarm already sent
    HEARTBEAT = "PI"  # "ping": the periodic sign of life, supervision's heartbeat


# stc of an alarm message -> (what it is, the centre's event type)
ALARM_CODES: dict[int, tuple[str, EventType]] = {
    10: ("alarm (trigger pressed)", EventType.BUTTON_PRESS),
    19: ("alarm cancelled at the device", EventType.CANCEL),
}


class NotUnderstood(ValueError):
    """An `<mrq>` of a message type the receiver does not know."""


@dataclass(frozen=True, slots=True)
class Signal:
    type: EventType
    code: str  # "ME/0010", "PI", … as the device sent them
    description: str
    mapped: bool  # False: the code is not in the table (an operator task finds out what it is)


def _status_code(tags: dict[str, str]) -> int | None:
    value = tags.get("stc", "").strip()
    return int(value) if value.isdigit() else None  # "010", "10" and "0010" are all 10


def signal(tags: dict[str, str]) -> Signal:
    mty = (tags.get("mty") or MessageType.ALARM).strip().upper()
    stc = _status_code(tags)
    code = f"{mty}/{tags['stc'].strip()}" if tags.get("stc") else mty
    if mty == MessageType.HEARTBEAT:
        return Signal(EventType.HEARTBEAT, code, "heartbeat", True)
    if mty == MessageType.RESET:
        return Signal(EventType.CANCEL, code, "alarm reset at the device", True)
    if mty == MessageType.ALARM:
        if stc is not None and stc in ALARM_CODES:
            description, event_type = ALARM_CODES[stc]
            return Signal(event_type, code, description, True)
        return Signal(EventType.BUTTON_PRESS, code, "alarm of a status code the centre does not know", False)
    if mty == MessageType.INFORMATION:
        return Signal(EventType.HEARTBEAT, code, "information the centre does not map", False)
    raise NotUnderstood(f"message type {mty!r} is none of ME, RE, IN, PI")
