"""Messages the ingest refused, kept with the reason so nothing vanishes unseen."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from alarmcentre import clock
from alarmcentre.db import Base
from alarmcentre.db_types import BigId

MAX_STORED_PAYLOAD = 8192  # an oversized payload is kept truncated; its full size is recorded


class DeadLetter(Base):
    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=clock.now, index=True)
    topic: Mapped[str] = mapped_column(String(300))
    device_serial: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(32), index=True)
    detail: Mapped[str] = mapped_column(String(1000))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    payload_size: Mapped[int]
