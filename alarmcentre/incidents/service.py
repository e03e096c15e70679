"""Incident logic: raising alarms, grouping repeated signals, reading incidents."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, selectinload

from alarmcentre import clock
from alarmcentre.clients.models import Client
from alarmcentre.db import LIKE_ESCAPE, contains_pattern
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.incidents.models import (
    ALARM_KINDS,
    Incident,
    IncidentKind,
    IncidentStatus,
    TimelineEntry,
    TimelineKind,
)
from alarmcentre.schemas import MAX_ID
from alarmcentre.users.models import User


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


def get_incident_for_update(session: Session, *, incident_id: int) -> Incident | None:
    """The incident, locked for the rest of the transaction: an action on it waits for another's."""
    return session.get(Incident, incident_id, with_for_update=True)


@dataclass(frozen=True)
class QueueRow:
    """One line of the operators' queue."""

    incident: Incident
    client: Client | None
    owner: str | None  # the owner's full name, else the username
    serial: str | None
    alerts: int  # supervisor alerts on it so far
    cancelled: bool = False  # the person pressed cancel on the device since (the incident stays open)


def queue(session: Session) -> list[QueueRow]:
    """Every incident not resolved, most urgent first: priority, then how long it has waited."""
    owner = aliased(User)
    rows = session.execute(
        select(Incident, Client, owner.username, owner.full_name, Device.serial)
        .outerjoin(Client, Client.id == Incident.client_id)
        .outerjoin(owner, owner.id == Incident.owner_id)
        .outerjoin(Device, Device.id == Incident.device_id)
        .where(Incident.status != IncidentStatus.RESOLVED)
        .order_by(Incident.priority, Incident.opened_at, Incident.id)
    ).all()
    ids = [incident.id for incident, *_ in rows]
    counts: dict[tuple[int, TimelineKind], int] = {}
    if ids:
        counts = {(incident_id, kind): count for incident_id, kind, count in session.execute(
            select(TimelineEntry.incident_id, TimelineEntry.kind, func.count()).where(
                TimelineEntry.incident_id.in_(ids),
                TimelineEntry.kind.in_((TimelineKind.SUPERVISOR_ALERT, TimelineKind.CANCEL)))
            .group_by(TimelineEntry.incident_id, TimelineEntry.kind)).all()}
    return [QueueRow(incident, client, owner_full or owner_name, serial,
                     counts.get((incident.id, TimelineKind.SUPERVISOR_ALERT), 0),
                     (incident.id, TimelineKind.CANCEL) in counts)
            for incident, client, owner_name, owner_full, serial in rows]


def waiting_alarms(session: Session) -> list[tuple[int, datetime]]:
    """Alarms nobody has taken yet (id, opened), most urgent first."""
    return [(incident_id, opened) for incident_id, opened in session.execute(
        select(Incident.id, Incident.opened_at).where(
            Incident.status == IncidentStatus.OPEN, Incident.kind.in_(ALARM_KINDS))
        .order_by(Incident.priority, Incident.opened_at)).all()]


def count_unresolved(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Incident)
                          .where(Incident.status != IncidentStatus.RESOLVED)) or 0


class SearchState(StrEnum):
    ALL = "all"
    OPEN = "open"
    RESOLVED = "resolved"


def search(session: Session, *, text: str = "", state: SearchState = SearchState.ALL, since: datetime,
           limit: int = 300) -> list[tuple[Incident, Client | None]]:
    """Incidents opened since `since` or still unresolved, newest first; `text` matches the client's
    name or address, or an incident's or client's number."""
    query = (select(Incident, Client).outerjoin(Client, Client.id == Incident.client_id)
             .where(or_(Incident.opened_at >= since, Incident.status != IncidentStatus.RESOLVED))
             .order_by(Incident.opened_at.desc()).limit(limit))
    if state is SearchState.OPEN:
        query = query.where(Incident.status != IncidentStatus.RESOLVED)
    elif state is SearchState.RESOLVED:
        query = query.where(Incident.status == IncidentStatus.RESOLVED)
    if text:
        pattern = contains_pattern(text)
        conditions = [Client.full_name.ilike(pattern, escape=LIKE_ESCAPE),
                      Client.address.ilike(pattern, escape=LIKE_ESCAPE)]
        if text.isdigit() and int(text) <= MAX_ID:
            conditions += [Incident.id == int(text), Client.id == int(text)]
        query = query.where(or_(*conditions))
    return [(incident, client) for incident, client in session.execute(query).all()]


def for_client(session: Session, *, client_id: int, excluding: int | None = None,
               limit: int = 20) -> Sequence[Incident]:
    """A client's incidents, newest first."""
    query = select(Incident).where(Incident.client_id == client_id)
    if excluding is not None:
        query = query.where(Incident.id != excluding)
    return session.scalars(query.order_by(Incident.opened_at.desc()).limit(limit)).all()


def timeline_entries_after(session: Session, entry_id: int) -> list[tuple[int, int]]:
    """(entry id, incident id) of every timeline entry with a larger id: what changed (the live feed)."""
    return [(entry, incident) for entry, incident in session.execute(
        select(TimelineEntry.id, TimelineEntry.incident_id).where(TimelineEntry.id > entry_id)).all()]


def count_owned_open(session: Session, *, user_id: int) -> int:
    """Unresolved incidents a user owns (someone leaving must hand them over)."""
    return session.scalar(select(func.count()).select_from(Incident).where(
        Incident.owner_id == user_id, Incident.status != IncidentStatus.RESOLVED)) or 0
