"""Response-plan contacts of a client, in the order they are called."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from alarmcentre import clock
from alarmcentre.clients.models import Language
from alarmcentre.db import Base
from alarmcentre.db_types import str_enum


class ContactKind(StrEnum):
    RELATIVE = "relative"
    NEIGHBOUR = "neighbour"
    HOME_CARE_WORKER = "home_care_worker"
    KEYS_SERVICE = "keys_service"
    FAMILY_DOCTOR = "family_doctor"
    EMERGENCY = "emergency"


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(default=0)  # lower is called first
    kind: Mapped[ContactKind] = mapped_column(str_enum(ContactKind))
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(32))
    language: Mapped[Language] = mapped_column(str_enum(Language), default=Language.LV)
    has_key: Mapped[bool] = mapped_column(default=False)
    notes: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
