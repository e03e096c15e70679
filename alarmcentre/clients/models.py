"""Clients: the people at home who wear the button."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from alarmcentre import clock
from alarmcentre.db import Base
from alarmcentre.db_types import str_enum


class ClientStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # e.g. in hospital: no welfare checks, alarms still handled
    ENDED = "ended"


class Language(StrEnum):
    LV = "lv"
    EN = "en"
    RU = "ru"


class Client(Base):
    __tablename__ = "clients"
    __table_args__ = (CheckConstraint("care_level BETWEEN 1 AND 4", name="care_level_range"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    municipality_id: Mapped[int] = mapped_column(ForeignKey("municipalities.id"), index=True)
    full_name: Mapped[str] = mapped_column(String(200))
    birth_date: Mapped[date | None]
    address: Mapped[str] = mapped_column(String(300))
    phone: Mapped[str | None] = mapped_column(String(32))
    language: Mapped[Language] = mapped_column(str_enum(Language), default=Language.LV)
    care_level: Mapped[int]
    status: Mapped[ClientStatus] = mapped_column(str_enum(ClientStatus), default=ClientStatus.ACTIVE)
    medical_notes: Mapped[str] = mapped_column(Text, default="")
    # Last time the person (not the device) was heard: a press, a test call, an operator call.
    last_contact_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now, onupdate=clock.now)
