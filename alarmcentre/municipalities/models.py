"""Municipalities and their social services: who the clients belong to."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, false
from sqlalchemy.orm import Mapped, mapped_column

from alarmcentre import clock
from alarmcentre.db import Base


class Municipality(Base):
    __tablename__ = "municipalities"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    social_service: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str | None] = mapped_column(String(32))
    # Texted answers without the dispatch's code ("1" instead of "1 482") still count for this
    # municipality's clients. Off by default: a sender number can be forged (docs/dispatch.md).
    plain_sms_replies: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
