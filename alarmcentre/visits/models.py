"""Home-care workers and their visits to clients: planned by the home-care service, or made on an alarm."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from alarmcentre import clock
from alarmcentre.clients.models import Language
from alarmcentre.db import Base
from alarmcentre.db_types import str_enum


class CareTask(StrEnum):
    """The home-care service's list of basic needs met on a visit."""

    HYGIENE = "hygiene"
    DRESSING = "dressing"  # dressing and bed linen
    MOVING = "moving"  # getting into and out of bed, positioning, moving
    MEALS = "meals"  # cooking and help eating
    DELIVERY = "delivery"  # food, medicines, small goods
    CLEANING = "cleaning"
    MEDICAL = "medical"  # calling a medical person, supporting medication
    INSTITUTIONS = "institutions"  # paying bills, appointments
    HEATING = "heating"  # fuel, heating the stove
    OTHER = "other"


class VisitSource(StrEnum):
    SCHEDULE = "schedule"  # planned by the home-care service, imported
    INCIDENT = "incident"  # a worker accepted an alarm dispatch
    WALK_IN = "walk_in"  # the device saw a carer arrive with no visit planned


class VisitStatus(StrEnum):
    PLANNED = "planned"
    IN_PROGRESS = "in_progress"  # arrived, not yet departed
    DONE = "done"
    MISSED = "missed"  # no arrival missed_visit_after_minutes after the window opened (a late arrival revives it)
    CANCELLED = "cancelled"


class TimeSource(StrEnum):
    """Who told us the actual time. The device is trusted over an SMS."""

    SMS = "sms"
    DEVICE = "device"
    OPERATOR = "operator"
    IMPORT = "import"


class HomeCareWorker(Base):
    __tablename__ = "home_care_workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(String(64), unique=True)  # the home-care service's id
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(32), index=True)
    language: Mapped[Language] = mapped_column(str_enum(Language), default=Language.LV)
    area: Mapped[str] = mapped_column(String(200), default="")
    # Set by a municipality's integration key: only that key's municipality may change the worker
    # (its phone receives dispatch texts). NULL: made by a key for every municipality.
    municipality_id: Mapped[int | None] = mapped_column(ForeignKey("municipalities.id"), index=True)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)


class Visit(Base):
    __tablename__ = "visits"

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(64), unique=True)  # null for visits made on an alarm
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), index=True)
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("home_care_workers.id"), index=True)
    worker_name: Mapped[str] = mapped_column(String(200), default="")  # as known when the visit was recorded
    source: Mapped[VisitSource] = mapped_column(str_enum(VisitSource))
    status: Mapped[VisitStatus] = mapped_column(str_enum(VisitStatus), default=VisitStatus.PLANNED, index=True)
    planned_start: Mapped[datetime] = mapped_column(index=True)
    planned_end: Mapped[datetime | None]
    arrived_at: Mapped[datetime | None]
    arrived_source: Mapped[TimeSource | None] = mapped_column(str_enum(TimeSource))
    departed_at: Mapped[datetime | None]
    departed_source: Mapped[TimeSource | None] = mapped_column(str_enum(TimeSource))
    tasks: Mapped[list[str]] = mapped_column(JSON, default=list)  # CareTask values
    notes: Mapped[str] = mapped_column(Text, default="")
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"), index=True)
    step_id: Mapped[int | None] = mapped_column(ForeignKey("incident_steps.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)
