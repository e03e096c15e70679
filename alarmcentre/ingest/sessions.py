"""The ingest's memory of its broker sessions, so that a session the broker lost is noticed.

The ingest connects with a persistent session: while it is away the broker queues every device
message for it. If it comes back and the broker says "session present: false" although this
client id had a session before, the broker has discarded it, and with it whatever was queued:
a broker that lost its state, or someone who connected with the ingest's client id and a clean
session. That is a possible loss of alarms and must be said out loud, not papered over by the
fresh subscription. The record lives in the database so that it survives the ingest's restart.

It also tells device supervision (care.py) since when the centre has been listening: a device
cannot be judged silent for a time in which nobody was there to hear it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, select, update
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
    connected_at: Mapped[datetime | None]  # the last (re)connection to the broker
    alive_at: Mapped[datetime | None]  # the last sign of life while connected (every ALIVE_EVERY_S)


ALIVE_EVERY_S = 30.0
# An ingest not heard from for this long is taken to be gone: nobody hears the devices.
ALIVE_STALE_S = 120.0


def record_connect(session: Session, *, client_id: str, session_present: bool) -> bool:
    """Note a connection to the broker; True when the broker lost a session it had for this client id."""
    now = clock.now()
    known = session.get(IngestSession, client_id)
    if known is None:
        session.add(IngestSession(client_id=client_id, established_at=now, connected_at=now, alive_at=now))
        return False
    known.connected_at = known.alive_at = now
    if session_present:
        return False
    known.lost_count += 1
    known.last_lost_at = now
    known.established_at = now
    return True


def record_alive(session: Session, *, client_id: str) -> None:
    session.execute(update(IngestSession).where(IngestSession.client_id == client_id).values(alive_at=clock.now()))


def listening_since(session: Session, now: datetime) -> datetime | None:
    """Since when an ingest has been connected and alive without a break, judged by the bulk lane (the one
    heartbeats come by); None when none is alive now. With no ingest ever recorded (an ingest that predates
    the record, or none yet), the epoch: nothing to say, supervision judges as before."""
    rows = session.execute(select(IngestSession.client_id, IngestSession.connected_at, IngestSession.alive_at)).all()
    bulk = [(connected, alive) for client_id, connected, alive in rows
            if not client_id.endswith("-alarms") and alive is not None and connected is not None]
    if not bulk:
        return None if rows else datetime.min.replace(tzinfo=now.tzinfo)
    alive = [(connected, seen) for connected, seen in bulk if (now - seen).total_seconds() <= ALIVE_STALE_S]
    return min(connected for connected, _ in alive) if alive else None
