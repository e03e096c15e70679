"""Incidents and their append-only timelines."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

if TYPE_CHECKING:
    from alarmcentre.dispatch.models import IncidentStep

from alarmcentre import clock
from alarmcentre.db import Base
from alarmcentre.db_types import BigId, str_enum


class IncidentStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class IncidentKind(StrEnum):
    BUTTON_PRESS = "button_press"
    PULL_CORD = "pull_cord"
    FALL_DETECTED = "fall_detected"
    DEVICE_SILENT = "device_silent"  # technical: no message within the supervision window, or offline
    VOICE_CALL = "voice_call"  # a call to the centre's number while the caller had no active incident


# Incidents a person started (an alarm or a call), as against the device's own technical ones.
ALARM_KINDS = (IncidentKind.BUTTON_PRESS, IncidentKind.PULL_CORD, IncidentKind.FALL_DETECTED,
               IncidentKind.VOICE_CALL)


TECHNICAL_PRIORITY = 3  # below every alarm

class TimelineKind(StrEnum):
    OPENED = "opened"
    SIGNAL = "signal"  # a further alarm signal while the incident was active
    CANCEL = "cancel"  # the client pressed cancel on the device
    ACKNOWLEDGED = "acknowledged"
    SUPERVISOR_ALERT = "supervisor_alert"  # not acknowledged in time
    CALL = "call"  # the operator phoned the client
    NOTIFIED = "notified"  # a contact was informed by SMS
    STEP_STARTED = "step_started"  # a plan step began: SMS dispatch or operator task
    STEP_ANSWER = "step_answer"  # accepted, declined, arrived, done (by SMS or operator)
    STEP_TIMEOUT = "step_timeout"  # no answer within the step's wait
    STEP_FAILED = "step_failed"  # the SMS could not be delivered
    SMS_REPLY = "sms_reply"  # an SMS from a contact, understood or not
    EMERGENCY_CALLED = "emergency_called"
    HANDOVER = "handover"
    NOTE = "note"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    RESTORED = "restored"  # a technical incident closed by itself: the device is heard again
    ACCESS_REVEALED = "access_revealed"  # the owner looked at the door/key-safe codes (audited)
    CALL_INCOMING = "call_incoming"  # someone called the centre: waiting for an operator
    CALL_CONNECTED = "call_connected"  # an operator is speaking with the caller
    CALL_PLACED = "call_placed"  # an operator rings a person from the incident
    CALL_ENDED = "call_ended"  # how a call ended: duration, hung up while waiting, busy, no answer
    CALL_FAILED = "call_failed"  # the operator's own phone could not be reached


class Incident(Base):
    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id"), index=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"), index=True)
    kind: Mapped[IncidentKind] = mapped_column(str_enum(IncidentKind))
    priority: Mapped[int]  # 1 is the most urgent
    status: Mapped[IncidentStatus] = mapped_column(
        str_enum(IncidentStatus), default=IncidentStatus.OPEN, index=True
    )
    # "client:<id>" (or "device:<id>" for an unassigned device) while not resolved, else
    # NULL: a unique column, so two ingest workers can never open two incidents for one person.
    active_key: Mapped[str | None] = mapped_column(String(40), unique=True)
    opened_at: Mapped[datetime] = mapped_column(default=clock.now)
    last_signal_at: Mapped[datetime] = mapped_column(default=clock.now)
    signal_count: Mapped[int] = mapped_column(default=1)
    acknowledged_at: Mapped[datetime | None]
    spoken_at: Mapped[datetime | None]  # first time an operator was connected to the caller (answer time)
    acknowledged_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)  # changes on handover
    resolved_at: Mapped[datetime | None]
    resolved_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    outcome: Mapped[str | None] = mapped_column(String(64))

    timeline: Mapped[list[TimelineEntry]] = relationship(
        order_by="TimelineEntry.id", back_populates="incident", lazy="raise"
    )
    # The response plan as it was when the incident opened (alarmcentre.dispatch).
    steps: Mapped[list[IncidentStep]] = relationship(order_by="IncidentStep.position", lazy="raise")


class TimelineEntry(Base):
    """Append-only: entries are added, never changed or deleted."""

    __tablename__ = "incident_timeline"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=clock.now)
    kind: Mapped[TimelineKind] = mapped_column(str_enum(TimelineKind))
    actor: Mapped[str] = mapped_column(String(100))  # "device:SERIAL", "user:NAME", "system"
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    incident: Mapped[Incident] = relationship(back_populates="timeline")
