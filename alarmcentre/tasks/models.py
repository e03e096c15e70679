"""Operator tasks: the non-alarm work of the operators' queue (welfare checks, power-loss calls ...)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from alarmcentre import clock
from alarmcentre.db import Base
from alarmcentre.db_types import str_enum


class TaskKind(StrEnum):
    WELFARE_CHECK = "welfare_check"  # no contact for two weeks: phone the client
    POWER_LOSS = "power_loss"  # mains lost: phone, inform and help the client
    BATTERY_NOTICE = "battery_notice"  # tell the client a technician will replace the battery
    MONTHLY_TEST_REMINDER = "monthly_test_reminder"
    MISSED_VISIT = "missed_visit"  # a planned home-care visit has no arrival: call the worker, then the client
    DC09_UNMAPPED_CODE = "dc09_unmapped_code"  # a DC-09 panel sent a code the centre does not map: find out why
    SCAIP_UNMAPPED_CODE = "scaip_unmapped_code"  # likewise a SCAIP device (docs/scaip.md)


class TaskStatus(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"  # an operator is on it
    DONE = "done"  # completed by an operator
    CLOSED = "closed"  # closed by the system: the reason went away (contact, power back ...)


class TaskOutcome(StrEnum):
    REACHED = "reached"  # talked to the client, all well
    REACHED_NEEDS_HELP = "reached_needs_help"  # talked to the client, help arranged (see notes)
    NOT_REACHED = "not_reached"  # no answer: a welfare check opens again at once
    INFORMED = "informed"  # the client (or a relative) was told
    OTHER = "other"


# Outcomes that count as contact with the person (the next welfare check counts from them).
CONTACT_OUTCOMES = frozenset({TaskOutcome.REACHED, TaskOutcome.REACHED_NEEDS_HELP, TaskOutcome.INFORMED})


class OperatorTask(Base):
    __tablename__ = "operator_tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[TaskKind] = mapped_column(str_enum(TaskKind), index=True)
    status: Mapped[TaskStatus] = mapped_column(str_enum(TaskStatus), default=TaskStatus.OPEN, index=True)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id"), index=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"), index=True)
    # "<kind>:client:<id>" / "<kind>:device:<id>" while open or claimed, else NULL: unique, so
    # two scheduler processes can never open the same task twice.
    active_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    due_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    claimed_at: Mapped[datetime | None]
    completed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    completed_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(64))
    notes: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
