"""What a DC-09 frame's events mean to the centre: SIA DCS and Ademco Contact ID codes mapped to the
centre's event types (docs/dc09.md has the same table for installers).

A code not in these tables is *unmapped*: the receiver still commits it (the panel is alive) and
opens an operator task with the raw code, so nothing a panel says is dropped unseen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from alarmcentre.ingest.protocol import EventType

# DC-09 panels report no battery level, only "low" and "restored": the centre records these levels.
LOW_BATTERY_LEVEL = 0
RESTORED_BATTERY_LEVEL = 100


@dataclass(frozen=True, slots=True)
class Mapping:
    type: EventType
    fields: dict[str, Any] = field(default_factory=dict)


_HEARTBEAT = Mapping(EventType.HEARTBEAT)
_LOW_BATTERY = Mapping(EventType.BATTERY, {"level": LOW_BATTERY_LEVEL, "low": True})
_BATTERY_OK = Mapping(EventType.BATTERY, {"level": RESTORED_BATTERY_LEVEL, "low": False})

# SIA DCS event codes (SIA DC-03 / DC-07): code -> (what it is, mapping).
SIA_CODES: dict[str, tuple[str, Mapping]] = {
    "MA": ("medical alarm", Mapping(EventType.BUTTON_PRESS)),
    "PA": ("panic alarm", Mapping(EventType.BUTTON_PRESS)),
    "HA": ("holdup (duress) alarm", Mapping(EventType.BUTTON_PRESS)),
    "QA": ("emergency alarm", Mapping(EventType.BUTTON_PRESS)),
    "FA": ("fire alarm", Mapping(EventType.BUTTON_PRESS)),
    "GA": ("gas alarm", Mapping(EventType.BUTTON_PRESS)),
    "KA": ("heat alarm", Mapping(EventType.BUTTON_PRESS)),
    "WA": ("water alarm", Mapping(EventType.BUTTON_PRESS)),
    "BA": ("burglary alarm", Mapping(EventType.BUTTON_PRESS)),
    "MH": ("medical alarm restoral", _HEARTBEAT),
    "PH": ("panic alarm restoral", _HEARTBEAT),
    "PR": ("panic restoral", _HEARTBEAT),
    "QR": ("emergency restoral", _HEARTBEAT),
    "FH": ("fire alarm restoral", _HEARTBEAT),
    "BR": ("burglary restoral", _HEARTBEAT),
    "OC": ("cancel report", Mapping(EventType.CANCEL)),
    "BC": ("burglary cancel", Mapping(EventType.CANCEL)),
    "FC": ("fire cancel", Mapping(EventType.CANCEL)),
    "MC": ("medical cancel", Mapping(EventType.CANCEL)),
    "OP": ("opening report (disarmed)", _HEARTBEAT),
    "CL": ("closing report (armed)", _HEARTBEAT),
    "OR": ("disarm from alarm", _HEARTBEAT),
    "CG": ("close area", _HEARTBEAT),
    "OG": ("open area", _HEARTBEAT),
    "YT": ("system battery trouble", _LOW_BATTERY),
    "XT": ("transmitter battery trouble", _LOW_BATTERY),
    "YR": ("system battery restoral", _BATTERY_OK),
    "XR": ("transmitter battery restoral", _BATTERY_OK),
    "AT": ("AC trouble (mains lost)", Mapping(EventType.POWER_LOST)),
    "AR": ("AC restoral (mains back)", Mapping(EventType.POWER_RESTORED)),
    "TA": ("tamper alarm", Mapping(EventType.TAMPER)),
    "ES": ("expansion device tamper", Mapping(EventType.TAMPER)),
    "TR": ("tamper restoral", _HEARTBEAT),
    "RP": ("automatic test", _HEARTBEAT),
    "RX": ("manual test", Mapping(EventType.TEST_CALL)),
    "RY": ("exit from manual test", _HEARTBEAT),
}

# Contact ID event codes (Ademco SIA DC-05): code -> (what it is, new-event mapping, restore mapping).
# Qualifier 1 is a new event or opening, 3 a restore or closing, 6 a still-present status report.
_CID_ALARM = Mapping(EventType.BUTTON_PRESS)
CID_CODES: dict[str, tuple[str, Mapping, Mapping]] = {
    "100": ("medical alarm", _CID_ALARM, _HEARTBEAT),
    "101": ("personal emergency (pendant)", _CID_ALARM, _HEARTBEAT),
    "102": ("fail to report in", _CID_ALARM, _HEARTBEAT),
    "110": ("fire alarm", _CID_ALARM, _HEARTBEAT),
    "111": ("smoke alarm", _CID_ALARM, _HEARTBEAT),
    "114": ("heat alarm", _CID_ALARM, _HEARTBEAT),
    "120": ("panic alarm", _CID_ALARM, _HEARTBEAT),
    "121": ("duress", _CID_ALARM, _HEARTBEAT),
    "122": ("silent panic", _CID_ALARM, _HEARTBEAT),
    "123": ("audible panic", _CID_ALARM, _HEARTBEAT),
    "130": ("burglary alarm", _CID_ALARM, _HEARTBEAT),
    "151": ("gas detected", _CID_ALARM, _HEARTBEAT),
    "154": ("water leakage", _CID_ALARM, _HEARTBEAT),
    "137": ("tamper (burglary zone)", Mapping(EventType.TAMPER), _HEARTBEAT),
    "144": ("sensor tamper", Mapping(EventType.TAMPER), _HEARTBEAT),
    "145": ("expansion module tamper", Mapping(EventType.TAMPER), _HEARTBEAT),
    "383": ("sensor tamper", Mapping(EventType.TAMPER), _HEARTBEAT),
    "301": ("AC loss (mains lost)", Mapping(EventType.POWER_LOST), Mapping(EventType.POWER_RESTORED)),
    "302": ("low system battery", _LOW_BATTERY, _BATTERY_OK),
    "309": ("battery test failure", _LOW_BATTERY, _BATTERY_OK),
    "311": ("battery missing or dead", _LOW_BATTERY, _BATTERY_OK),
    "384": ("RF transmitter low battery", _LOW_BATTERY, _BATTERY_OK),
    "400": ("open/close", _HEARTBEAT, _HEARTBEAT),
    "401": ("open/close by user", _HEARTBEAT, _HEARTBEAT),
    "403": ("automatic open/close", _HEARTBEAT, _HEARTBEAT),
    "406": ("cancel by user", Mapping(EventType.CANCEL), Mapping(EventType.CANCEL)),
    "407": ("remote arm/disarm", _HEARTBEAT, _HEARTBEAT),
    "601": ("manual trigger test report", Mapping(EventType.TEST_CALL), Mapping(EventType.TEST_CALL)),
    "602": ("periodic test report", _HEARTBEAT, _HEARTBEAT),
    "603": ("periodic RF transmission", _HEARTBEAT, _HEARTBEAT),
}


@dataclass(frozen=True, slots=True)
class Signal:
    """One event of a frame: its raw code, and what it means here (`mapping` None: unmapped)."""

    code: str  # "MA", "E101", "NULL"
    description: str
    mapping: Mapping | None
    zone: str | None = None
    text: str | None = None

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "description": self.description}
        if self.zone:
            out["zone"] = self.zone
        if self.text:
            out["text"] = self.text
        return out


LINK_TEST = Signal("NULL", "link test", _HEARTBEAT)

# SIA DCS data: optional "N" (new event), then fields: ri<area> id<user> ti<hh:mm> pi<peripheral>, and
# event codes (two capitals, an optional address, an optional ^text^), with or without "/" between.
_SIA_TOKEN = re.compile(r"(?P<sep>/)|(?P<mod>ri|id|ti|pi|lp)(?P<value>[0-9:]*)|"
                        r"(?P<code>[A-Z]{2})(?P<address>[0-9]{0,5})(?:\^(?P<text>[^^]*)\^)?")
_CID_DATA = re.compile(r"^(?P<q>[136])(?P<event>[0-9A-F]{3}) ?(?P<group>[0-9A-F]{2}) ?(?P<zone>[0-9A-F]{3})$")


class NotUnderstood(ValueError):
    """The data of a correct frame cannot be read as SIA DCS or Contact ID: answered DUH."""


def _strip_account(data: str) -> str:
    """Data may repeat the account: '#1234|Nri1/MA1'."""
    match = re.match(r"^#[0-9A-Fa-f]{3,16}\|", data)
    return data[match.end():] if match else data.lstrip("|")


def signals(message_id: str, data: str) -> list[Signal]:
    """The events of a frame's data; raises NotUnderstood."""
    if message_id == "NULL":
        return [LINK_TEST]
    data = _strip_account(data)
    if message_id == "ADM-CID":
        return [contact_id(data)]
    if message_id == "SIA-DCS":
        return sia_dcs(data)
    raise NotUnderstood(f"message type {message_id!r} is not SIA-DCS, ADM-CID or NULL")


def contact_id(data: str) -> Signal:
    match = _CID_DATA.match(data.strip())
    if match is None:
        raise NotUnderstood(f"{data[:60]!r} is not Contact ID (Q EEE GG ZZZ)")
    qualifier, event, zone = match.group("q"), match.group("event"), match.group("zone")
    letter = {"1": "E", "3": "R", "6": "P"}[qualifier]
    entry = CID_CODES.get(event)
    if entry is None:
        return Signal(f"{letter}{event}", "Contact ID code not mapped", None, zone=zone)
    description, new, restore = entry
    if qualifier == "3":
        return Signal(f"{letter}{event}", f"{description}: restore", restore, zone=zone)
    if qualifier == "6":  # a status report of a condition still present: recorded, not raised again
        return Signal(f"{letter}{event}", f"{description}: status report", _HEARTBEAT, zone=zone)
    return Signal(f"{letter}{event}", description, new, zone=zone)


def sia_dcs(data: str) -> list[Signal]:
    text = data.strip()
    if text[:1] in ("N", "O"):  # the new-event (or old-event) field, unless it is the first letter of a code
        try:
            return _sia_events(text[1:], data)
        except NotUnderstood:
            pass
    return _sia_events(text, data)


def _sia_events(text: str, data: str) -> list[Signal]:
    position, zone, found = 0, None, []
    while position < len(text):
        match = _SIA_TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise NotUnderstood(f"SIA DCS data {data[:60]!r} unreadable at {text[position:position + 10]!r}")
        position = match.end()
        if match.group("mod") == "ri":
            zone = match.group("value") or None
        elif match.group("code"):
            code = match.group("code")
            address = match.group("address") or zone
            entry = SIA_CODES.get(code)
            if entry is None:
                found.append(Signal(code, "SIA code not mapped", None, zone=address, text=match.group("text")))
            else:
                found.append(Signal(code, entry[0], entry[1], zone=address, text=match.group("text")))
    if not found:
        raise NotUnderstood(f"SIA DCS data {data[:60]!r} has no event code")
    return found
