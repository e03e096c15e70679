"""The v1 parser: every bad input is refused with its named reason, never an exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarmcentre.ingest.protocol import (
    MAX_PAYLOAD_BYTES,
    EventType,
    ParsedEvent,
    ParsedStatus,
    Rejection,
    RejectReason,
    events_topic,
    parse_message,
    status_topic,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TOPIC = events_topic("DEV-1")


def payload(**fields: object) -> bytes:
    base: dict[str, object] = {"seq": 1, "ts": NOW.isoformat(), "type": "button_press"}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def parse(data: bytes, topic: str = TOPIC) -> object:
    return parse_message(topic, data, received_at=NOW)


@pytest.mark.parametrize("event_type", [t.value for t in EventType])
def test_every_event_type_has_a_valid_form(event_type: str) -> None:
    extra: dict[str, object] = {
        "battery": {"level": 55}, "config_applied": {"version": 3},
        "config_failed": {"version": 3, "reason": "bad volume"},
    }.get(event_type, {})
    result = parse(payload(type=event_type, **extra))
    assert isinstance(result, ParsedEvent), result
    assert result.type == event_type and result.device_id == "DEV-1" and not result.clock_skewed


BAD_CORPUS = [
    ("not json", b"press!", RejectReason.BAD_JSON),
    ("empty", b"", RejectReason.BAD_JSON),
    ("binary junk", bytes(range(256)), RejectReason.NOT_UTF8),
    ("json array", b"[1, 2]", RejectReason.NOT_OBJECT),
    ("json string", b'"button_press"', RejectReason.NOT_OBJECT),
    ("oversized", payload(pad=None) + b" " * MAX_PAYLOAD_BYTES, RejectReason.TOO_LARGE),
    ("unknown type", payload(type="explode"), RejectReason.UNKNOWN_TYPE),
    ("type missing", json.dumps({"seq": 1, "ts": NOW.isoformat()}).encode(), RejectReason.UNKNOWN_TYPE),
    ("seq as string", payload(seq="1"), RejectReason.INVALID_SCHEMA),
    ("seq float", payload(seq=1.5), RejectReason.INVALID_SCHEMA),
    ("seq negative", payload(seq=-1), RejectReason.INVALID_SCHEMA),
    ("seq missing", json.dumps({"ts": NOW.isoformat(), "type": "button_press"}).encode(), RejectReason.INVALID_SCHEMA),
    ("ts not a time", payload(ts="yesterday"), RejectReason.INVALID_SCHEMA),
    ("ts without zone", payload(ts="2026-11-23T12:00:00"), RejectReason.INVALID_SCHEMA),
    ("battery level too high", payload(type="battery", level=150), RejectReason.INVALID_SCHEMA),
    ("battery level as text", payload(type="battery", level="50"), RejectReason.INVALID_SCHEMA),
    ("extra field", payload(colour="red"), RejectReason.INVALID_SCHEMA),
    ("topic/device mismatch", payload(device_id="DEV-2"), RejectReason.DEVICE_MISMATCH),
    ("future heartbeat", payload(type="heartbeat", ts=(NOW + timedelta(hours=2)).isoformat()), RejectReason.CLOCK_SKEW),
    ("deeply nested", b"[" * 100_000, RejectReason.TOO_LARGE),
    ("nested past the recursion limit", b"[" * 2000 + b"]" * 2000, RejectReason.BAD_JSON),
]


@pytest.mark.parametrize(("name", "data", "reason"), BAD_CORPUS, ids=[c[0] for c in BAD_CORPUS])
def test_bad_payloads_are_rejected_with_their_reason(name: str, data: bytes, reason: RejectReason) -> None:
    result = parse(data)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, (name, result)
    assert result.detail


@pytest.mark.parametrize("topic", ["alarmcentre/v1/devices/DEV-1", "alarmcentre/v2/devices/DEV-1/events",
                                   "alarmcentre/v1/devices/+/events", "alarmcentre/v1/devices/a b/events", "x"])
def test_foreign_topics_are_rejected(topic: str) -> None:
    result = parse(payload(), topic)
    assert isinstance(result, Rejection) and result.reason == RejectReason.BAD_TOPIC


def test_an_alarm_from_a_device_with_a_fast_clock_is_accepted_and_flagged() -> None:
    result = parse(payload(ts=(NOW + timedelta(hours=3)).isoformat()))
    assert isinstance(result, ParsedEvent) and result.clock_skewed


def test_old_events_are_accepted() -> None:
    """A device that was offline sends what it buffered: old is not wrong."""
    assert isinstance(parse(payload(ts=(NOW - timedelta(days=3)).isoformat())), ParsedEvent)


def test_status_topic() -> None:
    assert parse(b"online", status_topic("DEV-1")) == ParsedStatus("DEV-1", True)
    assert parse(b"offline", status_topic("DEV-1")) == ParsedStatus("DEV-1", False)
    bad = parse(b"maybe", status_topic("DEV-1"))
    assert isinstance(bad, Rejection) and bad.reason == RejectReason.BAD_STATUS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_parser_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    assert isinstance(parse(data), Rejection | ParsedEvent)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["seq", "ts", "type", "level", "version", "reason", "device_id", "x"]),
                       json_values | st.sampled_from([t.value for t in EventType]), max_size=6))
def test_parser_never_raises_on_arbitrary_objects(obj: dict[str, object]) -> None:
    result = parse(json.dumps(obj).encode())
    assert isinstance(result, Rejection | ParsedEvent)
    if isinstance(result, Rejection):
        assert result.reason in set(RejectReason)


@settings(max_examples=200, deadline=None)
@given(seq=st.integers(min_value=0, max_value=2**63 - 1), level=st.integers(min_value=0, max_value=100),
       offset=st.integers(min_value=-10**6, max_value=299))
def test_valid_battery_reports_always_parse(seq: int, level: int, offset: int) -> None:
    ts = (NOW + timedelta(seconds=offset)).isoformat()
    result = parse(payload(type="battery", seq=seq, level=level, ts=ts))
    assert isinstance(result, ParsedEvent) and result.event.seq == seq
