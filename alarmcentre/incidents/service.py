"""Incident logic: raising alarms, grouping repeated signals, reading incidents."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from alarmcentre import clock
from alarmcentre.clients.models import Client
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.incidents.models import (
    Incident,
    IncidentKind,
    IncidentStatus,
    TimelineEntry,
    TimelineKind,
)


def alarm_priority(kind: IncidentKind, care_level: int | None) -> int:
    """1 = most urgent. A fall is always top; a press is top for clients needing most care."""
    if kind == IncidentKind.FALL_DETECTED:
        return 1
    if care_level is not None and care_level >= 3:
        return 1
    return 2


def active_key(*, client: Client | None, device: Device) -> str:
    # One active alarm incident per person; a device not yet assigned stands for its wearer.
    return f"client:{client.id}" if client is not None else f"device:{device.id}"


def silent_key(device_id: int) -> str:
    # Not "client:<id>": a silent device must never swallow a real alarm of the same person.
    return f"silent:{device_id}"


def active_key_for(incident: Incident) -> str:
    """The key an incident holds while active: one alarm incident per person, one silence per device."""
    if incident.kind == IncidentKind.DEVICE_SILENT:
        assert incident.device_id is not None
        return silent_key(incident.device_id)
    return f"client:{incident.client_id}" if incident.client_id is not None else f"device:{incident.device_id}"


def find_active(session: Session, *, client: Client | None, device: Device) -> Incident | None:
    return session.scalar(select(Incident).where(Incident.active_key == active_key(client=client, device=device)))


def raise_alarm(
    session: Session, *, device: Device, client: Client | None, event: DeviceEvent, clock_skewed: bool = False
) -> tuple[Incident, bool]:
    """Open an incident for an alarm signal, or add it to the person's active one.

    Returns (incident, opened). Safe against a concurrent worker opening the same
    incident: the unique active_key makes one of them fail, and that one appends.
    """
    kind = IncidentKind(event.type)
    details = {"event_id": event.id, "seq": event.seq, "type": event.type, "device": device.serial,
               "occurred_at": event.occurred_at.isoformat()}
    if clock_skewed:
        details["clock_skewed"] = True
    for _attempt in range(3):
        incident = find_active(session, client=client, device=device)
        if incident is not None:
            _add_signal(session, incident, kind=kind, care_level=client.care_level if client else None,
                        event=event, details=details)
            return incident, False
        incident = Incident(
            client_id=client.id if client else None,
            device_id=device.id,
            kind=kind,
            priority=alarm_priority(kind, client.care_level if client else None),
            status=IncidentStatus.OPEN,
            active_key=active_key(client=client, device=device),
            opened_at=event.received_at,
            last_signal_at=event.received_at,
            signal_count=1,
        )
        try:
            with session.begin_nested():
                session.add(incident)
                session.flush()
        except IntegrityError:
            continue  # another worker opened it a moment ago: append to theirs
        append_timeline(session, incident, kind=TimelineKind.OPENED, actor=f"device:{device.serial}",
                        details=details, at=event.received_at)
        return incident, True
    raise RuntimeError("could not open or find the active incident after 3 attempts")


def _add_signal(
    session: Session, incident: Incident, *, kind: IncidentKind, care_level: int | None,
    event: DeviceEvent, details: dict[str, object],
) -> None:
    incident.signal_count += 1
    incident.last_signal_at = max(incident.last_signal_at, event.received_at)
    priority = alarm_priority(kind, care_level)
    if priority < incident.priority:
        details = {**details, "priority_raised": {"from": incident.priority, "to": priority}}
        incident.priority = priority
    append_timeline(session, incident, kind=TimelineKind.SIGNAL, actor=f"device:{details['device']}",
                    details=details, at=event.received_at)


def record_cancel(session: Session, *, device: Device, client: Client | None, event: DeviceEvent) -> Incident | None:
    """A cancel press is recorded on the active incident; it does not close it (an operator does)."""
    incident = find_active(session, client=client, device=device)
    if incident is None:
        return None
    append_timeline(session, incident, kind=TimelineKind.CANCEL, actor=f"device:{device.serial}",
                    details={"event_id": event.id, "seq": event.seq, "device": device.serial},
                    at=event.received_at)
    return incident


def append_timeline(
    session: Session, incident: Incident, *, kind: TimelineKind, actor: str,
    details: dict[str, object] | None = None, user_id: int | None = None, at: datetime | None = None,
) -> TimelineEntry:
    entry = TimelineEntry(incident_id=incident.id, kind=kind, actor=actor, user_id=user_id,
                          details=details or {}, at=at or clock.now())
    session.add(entry)
    return entry


def list_incidents(
    session: Session, *, status: Sequence[IncidentStatus] | None = None, limit: int = 100, offset: int = 0
) -> Sequence[Incident]:
    query = select(Incident).order_by(Incident.priority, Incident.opened_at).limit(limit).offset(offset)
    if status:
        query = query.where(Incident.status.in_(status))
    return session.scalars(query).all()


def get_incident(session: Session, *, incident_id: int) -> Incident | None:
    return session.scalar(
        select(Incident).where(Incident.id == incident_id)
        .options(selectinload(Incident.timeline), selectinload(Incident.steps))
    )
