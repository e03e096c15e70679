"""The ingest's memory of its broker sessions, so that a session the broker lost is noticed.

The ingest connects with a persistent session: while it is away the broker queues every device
message for it. If it comes back and the broker says "session present: false" although this
client id had a session before, the broker has discarded it, and with it whatever was queued:
a broker that lost its state, or someone who connected with the ingest's client id and a clean
session. That is a possible loss of alarms and must be said out loud, not papered over by the
fresh subscription. The record lives in the database so that it survives the ingest's restart.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, Session, mapped_column

from alarmcentre import clock
from alarmcentre.db import Base


class IngestSession(Base):
    """One broker client id of the ingest that has held a persistent session."""

    __tablename__ = "ingest_sessions"

    client_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    established_at: Mapped[datetime] = mapped_column(default=clock.now)
    lost_count: Mapped[int] = mapped_column(default=0)
    last_lost_at: Mapped[datetime | None]


def record_connect(session: Session, *, client_id: str, session_present: bool) -> bool:
    """Note a connection to the broker; True when the broker lost a session it had for this client id."""
    now = clock.now()
    known = session.get(IngestSession, client_id)
    if known is None:
        session.add(IngestSession(client_id=client_id, established_at=now))
        return False
    if session_present:
        return False  # nothing written: the usual reconnect costs one read
    known.lost_count += 1
    known.last_lost_at = now
    known.established_at = now
    return True
