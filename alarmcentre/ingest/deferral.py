"""A budget per device: a device that floods is set aside, losing nothing, so that it delays only itself.

The ingest applies a device's messages as they come while the device keeps within its budget (a
token bucket: `DEVICE_BURST` messages at once, `DEVICE_RATE` a second after that; a real device sends
a heartbeat a minute, and an outbox of a few dozen events after a night away). Messages past the budget
are stored as they arrived, in `deferred_messages`, with one INSERT for the batch, and acknowledged: the
broker's window moves on and another device's alarm is not stuck behind them. So are all later messages
of a device that has messages set aside, so that its order holds (a cancel never overtakes its press).

`drain()` applies the set-aside messages later, the oldest first and at most `DRAIN_PER_DEVICE` of each
device a round, so a device that flushed its outbox is applied within a round or two whatever another
device has piled up. The ingest drains a round whenever its lane has nothing else to do.

Measured before this existed: a stolen login flooding valid presses (17,200 in 7.1 s) stalled every
other device's alarm for minutes (tests/test_device_flood.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import BigInteger, LargeBinary, String, delete, func, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from alarmcentre.db import Base

DEVICE_BURST = 120  # messages a device may send at once (an outbox after a night away) before it waits
DEVICE_RATE = 2.0  # and a second after that: 120 times a heartbeat a minute
DRAIN_PER_DEVICE = 50  # set-aside messages of one device applied in one round
DRAIN_ROUND = 500  # at most this many in one round (one transaction)


class DeferredMessage(Base):
    """A device message received past its device's budget: stored as it came, applied later."""

    __tablename__ = "deferred_messages"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(BigInteger, "postgresql"), primary_key=True,
                                    autoincrement=True)
    device_serial: Mapped[str] = mapped_column(String(64), index=True)
    topic: Mapped[str] = mapped_column(String(300))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime]


class DeviceBudget:
    """Token buckets by serial, shared by the lanes of one ingest process (thread-safe)."""

    def __init__(self, *, burst: float = DEVICE_BURST, rate: float = DEVICE_RATE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.rate, self._clock = burst, rate, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # serial -> (tokens, when counted)
        self._lock = threading.Lock()
        # Whether deferred_messages may hold rows (True at first: rows may be left from before a restart), and how
        # many times this process set messages aside: the drain clears the flag only if none came meanwhile.
        self.maybe_set_aside = True
        self.set_aside_count = 0

    def noted_set_aside(self) -> None:
        with self._lock:
            self.set_aside_count += 1
            self.maybe_set_aside = True

    def found_none_set_aside(self, count_before: int) -> None:
        """The drain found the table empty in a transaction begun when `set_aside_count` was `count_before`."""
        with self._lock:
            if self.set_aside_count == count_before:
                self.maybe_set_aside = False

    def take(self, serial: str) -> bool:
        """One message of this device: True if within its budget."""
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(serial, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens < 1.0:
                self._buckets[serial] = (tokens, now)
                return False
            self._buckets[serial] = (tokens - 1.0, now)
            if len(self._buckets) > 200_000:  # forget devices whose bucket is full again: they owe nothing
                full = [s for s, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
                for s in full:
                    del self._buckets[s]
            return True


def deferring(session: Session, serials: set[str]) -> set[str]:
    """Which of these devices have messages set aside (their new ones must wait behind them)."""
    if not serials:
        return set()
    return set(session.scalars(select(DeferredMessage.device_serial).distinct()
                               .where(DeferredMessage.device_serial.in_(sorted(serials)))))


def set_aside(session: Session, rows: Sequence[dict[str, object]]) -> None:
    """Store messages past their budget: one INSERT for all of them."""
    if rows:
        session.execute(insert(DeferredMessage), list(rows))


def pending(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(DeferredMessage)) or 0


def take_round(session: Session) -> list[DeferredMessage]:
    """The next round: the oldest DRAIN_PER_DEVICE of each device, at most DRAIN_ROUND, oldest first; removed
    from the table in this transaction (so that two ingest processes never apply one twice; on PostgreSQL the
    rows are locked, SKIP LOCKED)."""
    ranked = select(DeferredMessage.id, func.row_number().over(
        partition_by=DeferredMessage.device_serial, order_by=DeferredMessage.id).label("rank")).subquery()
    ids = select(ranked.c.id).where(ranked.c.rank <= DRAIN_PER_DEVICE).order_by(ranked.c.id).limit(DRAIN_ROUND)
    query = select(DeferredMessage).where(DeferredMessage.id.in_(ids)).order_by(DeferredMessage.id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(session.scalars(query))
    if rows:
        session.execute(delete(DeferredMessage).where(DeferredMessage.id.in_([row.id for row in rows])))
    return rows
