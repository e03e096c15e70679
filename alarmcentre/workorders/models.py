"""Work orders for technicians: battery replacement, a configuration that does not apply, repairs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from alarmcentre import clock
from alarmcentre.db import Base
from alarmcentre.db_types import BigId, str_enum


class WorkOrderKind(StrEnum):
    BATTERY_REPLACEMENT = "battery_replacement"  # free for the client (service rules)
    CONFIG_PENDING = "config_pending"  # the device has not applied its configuration (or refused it)
    DEVICE_SILENT = "device_silent"  # follow-up visit for a device that stays silent
    REPAIR = "repair"
    OTHER = "other"


class WorkOrderStatus(StrEnum):
    OPEN = "open"
    ASSIGNED = "assigned"
    DONE = "done"


class WorkOrder(Base):
    __tablename__ = "work_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[WorkOrderKind] = mapped_column(str_enum(WorkOrderKind), index=True)
    status: Mapped[WorkOrderStatus] = mapped_column(
        str_enum(WorkOrderStatus), default=WorkOrderStatus.OPEN, index=True
    )
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id"), index=True)
    # "<kind>:<device id>" while not done, else NULL: one open work order per (device, kind).
    active_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    free_of_charge: Mapped[bool] = mapped_column(default=True)
    summary: Mapped[str] = mapped_column(String(300), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    created_by: Mapped[str] = mapped_column(String(100), default="system")
    assigned_to: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    assigned_at: Mapped[datetime | None]
    done_at: Mapped[datetime | None]
    done_by: Mapped[str | None] = mapped_column(String(100))  # "user:NAME" or "system"
    resolution: Mapped[str | None] = mapped_column(Text)


class WorkOrderNote(Base):
    """Append-only notes of a work order."""

    __tablename__ = "work_order_notes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("work_orders.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=clock.now)
    author: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
