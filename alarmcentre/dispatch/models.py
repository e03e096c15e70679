"""Response plans, their per-incident snapshots, escalation timers and SMS messages."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from alarmcentre import clock
from alarmcentre.clients.models import Language
from alarmcentre.db import Base
from alarmcentre.db_types import BigId, str_enum


class Channel(StrEnum):
    SMS = "sms"  # texted automatically, answered by SMS
    OPERATOR_TASK = "operator_task"  # the operator does it (e.g. phones 113) and records it
    VOICE = "voice"  # rung automatically: the contact hears the alarm and presses 1 (I go) or 2 (I cannot)


class ResourceKind(StrEnum):
    """Help shared by many clients, not one client's own contact."""

    KEYS_SERVICE = "keys_service"
    HOME_CARE_ON_DUTY = "home_care_on_duty"
    EMERGENCY_SERVICES = "emergency_services"
    FAMILY_DOCTOR = "family_doctor"
    OTHER = "other"


class SharedResource(Base):
    __tablename__ = "shared_resources"

    id: Mapped[int] = mapped_column(primary_key=True)
    municipality_id: Mapped[int | None] = mapped_column(ForeignKey("municipalities.id"), index=True)
    kind: Mapped[ResourceKind] = mapped_column(str_enum(ResourceKind))
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(32))  # E.164, or a short emergency number such as 113
    language: Mapped[Language] = mapped_column(str_enum(Language), default=Language.LV)
    active: Mapped[bool] = mapped_column(default=True)


class PlanStep(Base):
    """One step of a client's response plan: whom to reach, how, and how long to wait."""

    __tablename__ = "response_plan_steps"
    __table_args__ = (
        CheckConstraint("(contact_id IS NULL) <> (resource_id IS NULL)", name="one_target"),
        CheckConstraint("wait_seconds BETWEEN 30 AND 86400", name="wait_range"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    resource_id: Mapped[int | None] = mapped_column(ForeignKey("shared_resources.id"))
    channel: Mapped[Channel] = mapped_column(str_enum(Channel))
    wait_seconds: Mapped[int] = mapped_column(default=300)
    automatic: Mapped[bool] = mapped_column(default=True)  # the next step starts by itself on no answer
    instruction: Mapped[str] = mapped_column(String(300), default="")


class StepState(StrEnum):
    PENDING = "pending"  # not started
    WAITING = "waiting"  # SMS sent, waiting for an answer
    TASK = "task"  # an operator task, shown to the operator
    ACCEPTED = "accepted"
    ARRIVED = "arrived"
    DONE = "done"
    DECLINED = "declined"
    NO_ANSWER = "no_answer"
    FAILED = "failed"  # the SMS could not be delivered
    CANCELLED = "cancelled"  # the incident was resolved first


ACTIVE_STEP_STATES = frozenset({StepState.WAITING, StepState.TASK, StepState.ACCEPTED, StepState.ARRIVED})


class IncidentStep(Base):
    """A plan step copied onto an incident when it opens: later plan edits do not change it."""

    __tablename__ = "incident_steps"

    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    position: Mapped[int]
    kind: Mapped[str] = mapped_column(String(32))  # contact kind or resource kind
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(32), index=True)
    language: Mapped[Language] = mapped_column(str_enum(Language))
    has_key: Mapped[bool] = mapped_column(default=False)
    channel: Mapped[Channel] = mapped_column(str_enum(Channel))
    wait_seconds: Mapped[int]
    automatic: Mapped[bool]
    instruction: Mapped[str] = mapped_column(String(300), default="")
    state: Mapped[StepState] = mapped_column(str_enum(StepState), default=StepState.PENDING)
    # The code the step's SMS asks the reply to repeat ("1 482"): it binds an answer to this dispatch, not
    # to a sender number that can be forged. None for steps that sent no text.
    reply_code: Mapped[str | None] = mapped_column(String(8))
    started_at: Mapped[datetime | None]
    answered_at: Mapped[datetime | None]
    arrived_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class TimerKind(StrEnum):
    ACK_ALERT = "ack_alert"  # incident still unacknowledged: alert the supervisors
    STEP_TIMEOUT = "step_timeout"  # no answer to a dispatch within the step's wait


class Timer(Base):
    """Something that must happen at a time. Fired (or cancelled) exactly once, by the sweep."""

    __tablename__ = "timers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[TimerKind] = mapped_column(str_enum(TimerKind))
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    step_id: Mapped[int | None] = mapped_column(ForeignKey("incident_steps.id"))
    due_at: Mapped[datetime] = mapped_column(index=True)
    done_at: Mapped[datetime | None] = mapped_column(index=True)
    outcome: Mapped[str | None] = mapped_column(String(32))  # fired, cancelled
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class SmsDirection(StrEnum):
    OUT = "out"
    IN = "in"


class SmsStatus(StrEnum):
    QUEUED = "queued"  # waiting for the sender (throttle, retry)
    SENT = "sent"  # handed to the provider
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"  # not sent: the incident no longer needed it
    RECEIVED = "received"  # inbound


class SmsMessage(Base):
    """Every SMS in and out, with its status: the outbox and the audit of texting."""

    __tablename__ = "sms_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    direction: Mapped[SmsDirection] = mapped_column(str_enum(SmsDirection))
    to_number: Mapped[str] = mapped_column(String(32), index=True)
    from_number: Mapped[str] = mapped_column(String(32), index=True)
    body: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(32), default="")  # dispatch, inform, supervisor_alert, reply
    status: Mapped[SmsStatus] = mapped_column(str_enum(SmsStatus), index=True)
    provider: Mapped[str] = mapped_column(String(16), default="")
    provider_sid: Mapped[str | None] = mapped_column(String(64), unique=True)
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"), index=True)
    step_id: Mapped[int | None] = mapped_column(ForeignKey("incident_steps.id"))
    attempts: Mapped[int] = mapped_column(default=0)
    not_before: Mapped[datetime] = mapped_column(default=clock.now, index=True)
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    interpreted_as: Mapped[str | None] = mapped_column(String(16))  # inbound: accept, decline, ... or unknown
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
