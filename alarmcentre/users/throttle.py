"""Login throttling that no stranger can turn into a lockout (OWASP ASVS 2.2.1, NIST 800-63B 5.2.2).

Every login attempt is counted, before its password is checked, under up to three keys:

- `pair`: this username from this address. After 5 failures each further attempt must wait,
  2 s, 4 s, 8 s ... up to 15 min: guessing one account from one place is hopeless;
- `address`: any username from this address. After 20 failures: a password spray;
- `user`: this username from any address. After 100 failures: a guess spread over many addresses.

A username that has logged in from an address before is *trusted* there: only its `pair` key
applies to it, so strangers who hammer an operator's name, or share an operator's NAT or proxy,
cannot keep that operator out of the console. Waits grow and end by themselves; nothing locks.
A throttled attempt gets the same answer as a wrong password, after the same password hashing
work, so a throttle tells nothing about the account. The state is in the database, shared by
every process; supervisors list and clear it (`GET`/`DELETE /api/v1/login-throttles`).

The counting happens in the login request's transaction, on rows locked until it commits (on
SQLite the request holds the write lock from its start): parallel attempts at one key are counted
one after another, so a burst of guesses cannot all be checked before any of them is counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import String, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from alarmcentre import clock
from alarmcentre.db import Base


class ThrottleKind(StrEnum):
    PAIR = "pair"
    ADDRESS = "address"
    USER = "user"
    TRUSTED = "trusted"  # not a throttle: this username has logged in from this address


FREE_FAILURES = {ThrottleKind.PAIR: 5, ThrottleKind.ADDRESS: 20, ThrottleKind.USER: 100}
MAX_WAIT = timedelta(minutes=15)
FORGET_AFTER = timedelta(hours=24)  # failures this old no longer count
TRUST_FOR = timedelta(days=90)


class LoginThrottle(Base):
    __tablename__ = "login_throttles"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    kind: Mapped[ThrottleKind] = mapped_column(String(16), index=True)
    username: Mapped[str | None] = mapped_column(String(64), index=True)
    address: Mapped[str | None] = mapped_column(String(64))
    failures: Mapped[int] = mapped_column(default=0)
    last_at: Mapped[datetime] = mapped_column(default=clock.now)
    wait_until: Mapped[datetime | None]


@dataclass(frozen=True)
class _Key:
    kind: ThrottleKind
    username: str | None
    address: str | None

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.username or ''}|{self.address or ''}"


def _keys(username: str, address: str) -> dict[ThrottleKind, _Key]:
    # Counted by what was sent, but storable: PostgreSQL refuses a NUL in text.
    username, address = username[:64].replace("\x00", "\ufffd"), address[:64].replace("\x00", "\ufffd")
    return {ThrottleKind.PAIR: _Key(ThrottleKind.PAIR, username, address),
            ThrottleKind.ADDRESS: _Key(ThrottleKind.ADDRESS, None, address),
            ThrottleKind.USER: _Key(ThrottleKind.USER, username, None),
            ThrottleKind.TRUSTED: _Key(ThrottleKind.TRUSTED, username, address)}


def wait_after(kind: ThrottleKind, failures: int) -> timedelta | None:
    """How long the next attempt must wait after `failures` failures under a key of this kind."""
    over = failures - FREE_FAILURES[kind]
    if over <= 0:
        return None
    return min(timedelta(seconds=2 ** min(over, 20)), MAX_WAIT)


def _locked_rows(session: Session, keys: Iterable[_Key], now: datetime) -> dict[str, LoginThrottle]:
    """The keys' rows, created when missing, locked until the transaction ends."""
    wanted = {key.text: key for key in keys}
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(LoginThrottle).values([
        {"key": text, "kind": key.kind, "username": key.username, "address": key.address, "failures": 0,
         "last_at": now} for text, key in wanted.items()]).on_conflict_do_nothing(index_elements=["key"]))
    # In key order, so that two attempts never wait for each other's rows crosswise.
    return {row.key: row for row in session.scalars(
        select(LoginThrottle).where(LoginThrottle.key.in_(wanted)).order_by(LoginThrottle.key)
        .with_for_update().execution_options(populate_existing=True))}


@dataclass(frozen=True)
class Attempt:
    """One counted login attempt: whether its password may be checked, and under which keys it counted."""

    allowed: bool
    username: str
    address: str
    counted: tuple[ThrottleKind, ...]


def count_attempt(session: Session, *, username: str, address: str) -> Attempt:
    """Count one attempt as failed, before its password is checked. A successful login takes its
    count back (`succeeded`)."""
    now = clock.now()
    keys = _keys(username, address)
    trusted = session.scalar(select(LoginThrottle.last_at).where(LoginThrottle.key == keys[ThrottleKind.TRUSTED].text))
    applies = (ThrottleKind.PAIR,) if trusted is not None and now - trusted < TRUST_FOR else tuple(FREE_FAILURES)
    rows = _locked_rows(session, (keys[kind] for kind in applies), now)
    allowed = True
    for kind in applies:
        row = rows[keys[kind].text]
        if now - row.last_at > FORGET_AFTER:
            row.failures, row.wait_until = 0, None
        if row.wait_until is not None and row.wait_until > now:
            allowed = False
        row.failures += 1
        row.last_at = now
        wait = wait_after(kind, row.failures)
        row.wait_until = now + wait if wait is not None else None
    return Attempt(allowed, username, address, applies)


def succeeded(session: Session, attempt: Attempt) -> None:
    """The password was right: this pair's failures are forgotten, the attempt is taken back from
    the other counts it went into, and the username is trusted at this address from now on."""
    now = clock.now()
    keys = _keys(attempt.username, attempt.address)
    session.execute(delete(LoginThrottle).where(LoginThrottle.key == keys[ThrottleKind.PAIR].text))
    others = [kind for kind in attempt.counted if kind != ThrottleKind.PAIR]
    rows = _locked_rows(session, [keys[kind] for kind in others] + [keys[ThrottleKind.TRUSTED]], now)
    for kind in others:
        row = rows[keys[kind].text]
        row.failures = max(row.failures - 1, 0)
        wait = wait_after(kind, row.failures)
        row.wait_until = row.last_at + wait if wait is not None else None
    rows[keys[ThrottleKind.TRUSTED].text].last_at = now


def active(session: Session) -> list[LoginThrottle]:
    """Throttles that count failures now (the trust records are not listed)."""
    since = clock.now() - FORGET_AFTER
    return list(session.scalars(
        select(LoginThrottle).where(LoginThrottle.kind != ThrottleKind.TRUSTED, LoginThrottle.failures > 0,
                                    LoginThrottle.last_at > since)
        .order_by(LoginThrottle.wait_until.desc(), LoginThrottle.last_at.desc())))


def clear(session: Session, *, username: str | None = None, address: str | None = None) -> int:
    """Forget the failures under every key naming this username, this address, or (both given) this
    username at this address; returns how many keys were cleared."""
    if username is None and address is None:
        raise ValueError("name a username, an address or both")
    query = delete(LoginThrottle).where(LoginThrottle.kind != ThrottleKind.TRUSTED)
    if username is not None:
        query = query.where(LoginThrottle.username == username[:64])
    if address is not None:
        query = query.where(LoginThrottle.address == address[:64])
    return int(getattr(session.execute(query), "rowcount", 0) or 0)
