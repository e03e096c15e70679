"""Accounts, argon2 password hashing and opaque bearer tokens."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from alarmcentre import clock
from alarmcentre.municipalities.models import Municipality
from alarmcentre.schemas import MAX_ID
from alarmcentre.users import throttle
from alarmcentre.users.models import ApiToken, IntegrationKey, Role, User

_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong username costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("no such user")
MIN_PASSWORD_LENGTH = 8


class UserExists(ValueError):
    pass


def create_user(session: Session, *, username: str, password: str, role: Role, full_name: str = "") -> User:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise UserExists(f"user {username!r} exists already")
    user = User(username=username, password_hash=_hasher.hash(password), role=role, full_name=full_name)
    session.add(user)
    session.flush()
    return user


def ensure_admin(session: Session, *, username: str, password: str) -> User:
    """The first admin from the environment; an existing user of that name is left as it is."""
    existing = session.scalar(select(User).where(User.username == username))
    if existing is not None:
        return existing
    return create_user(session, username=username, password=password, role=Role.ADMIN, full_name="Administrator")


def check_login(session: Session, *, username: str, password: str, address: str) -> User | None:
    """A login attempt from `address`, throttled (users/throttle.py): the user, or None for a wrong,
    unknown or throttled login alike, after the same hashing work. Counts in `session`: the caller
    commits it also when the login fails (an HTTP route answers 401 rather than raising)."""
    attempt = throttle.count_attempt(session, username=username, address=address)
    if not attempt.allowed:
        _verify(_DUMMY_HASH, password)  # the same time as any other refusal
        return None
    user = authenticate(session, username=username, password=password)
    if user is not None:
        throttle.succeeded(session, attempt)
    return user


def clear_throttles(session: Session, *, username: str) -> int:
    """`alarmcentre users unlock NAME`: forget this username's failed logins from everywhere."""
    return throttle.clear(session, username=username)


def authenticate(session: Session, *, username: str, password: str) -> User | None:
    # A NUL cannot be in a username (and PostgreSQL refuses it in a query).
    user = None if "\x00" in username else session.scalar(select(User).where(User.username == username))
    if not _verify(user.password_hash if user else _DUMMY_HASH, password):
        return None
    if user is None or not user.active:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def _verify(password_hash: str, password: str) -> bool:
    try:
        return bool(_hasher.verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def issue_token(session: Session, *, user: User, ttl: timedelta) -> str:
    token = secrets.token_urlsafe(32)
    session.add(ApiToken(token_hash=_digest(token), user_id=user.id, expires_at=clock.now() + ttl))
    return token


def user_for_token(session: Session, *, token: str) -> User | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(token)))
    if row is None or row.revoked_at is not None or row.expires_at <= clock.now():
        return None
    user = session.get(User, row.user_id)
    return user if user is not None and user.active else None


def find_user(session: Session, username: str) -> User | None:
    return None if "\x00" in username else session.scalar(select(User).where(User.username == username))


def end_sessions(session: Session, *, user: User) -> int:
    """Revoke every dashboard session and API token of the user; how many were live."""
    now = clock.now()
    result = session.execute(update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None),
                                                    ApiToken.expires_at > now).values(revoked_at=now))
    return result.rowcount or 0  # type: ignore[attr-defined]


def set_active(session: Session, *, user: User, active: bool) -> int:
    """Enable or disable a login; disabling ends its sessions at once (how many it had is returned)."""
    user.active = active
    return 0 if active else end_sessions(session, user=user)


def set_password(session: Session, *, user: User, password: str) -> int:
    """A new password; the sessions opened with the old one end (how many is returned)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    user.password_hash = _hasher.hash(password)
    return end_sessions(session, user=user)


def revoke_token(session: Session, *, token: str) -> bool:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _digest(token)))
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = clock.now()
    return True


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


INTEGRATION_KEY_PREFIX = "ack_"  # tells a key from a bearer token at a glance (logs, support)


def create_integration_key(session: Session, *, name: str, municipality_id: int | None = None) -> str:
    """A new key for another system; returned once, stored only as its digest. With `municipality_id`
    it reaches that municipality's clients, workers and visits only."""
    if session.scalar(select(IntegrationKey).where(IntegrationKey.name == name)) is not None:
        raise UserExists(f"integration key {name!r} exists already")
    if municipality_id is not None and session.get(Municipality, municipality_id) is None:
        raise ValueError(f"municipality {municipality_id} not found")
    key = INTEGRATION_KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(IntegrationKey(name=name, key_hash=_digest(key), role=Role.INTEGRATION,
                               municipality_id=municipality_id))
    session.flush()
    return key


def revoke_integration_key(session: Session, *, name: str) -> bool:
    """The key named so stops working at once; False if there is no such live key."""
    row = session.scalar(select(IntegrationKey).where(IntegrationKey.name == name))
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = clock.now()
    return True


def integration_key_for(session: Session, *, key: str) -> IntegrationKey | None:
    row = session.scalar(select(IntegrationKey).where(IntegrationKey.key_hash == _digest(key)))
    return row if row is not None and row.revoked_at is None and row.role == Role.INTEGRATION else None


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id) if 0 < user_id <= MAX_ID else None


def display_names(session: Session, user_ids: Iterable[int | None]) -> dict[int, str]:
    """Each user's full name, else the username: how staff are named on a page."""
    wanted = {i for i in user_ids if i is not None}
    if not wanted:
        return {}
    return {uid: (full or name) for uid, name, full in
            session.execute(select(User.id, User.username, User.full_name).where(User.id.in_(wanted))).all()}


def active_users(session: Session, *, roles: Iterable[Role], excluding: int | None = None) -> Sequence[User]:
    """Active accounts of these roles, by username: whom work can be handed to."""
    query = select(User).where(User.active, User.role.in_(tuple(roles)))
    if excluding is not None:
        query = query.where(User.id != excluding)
    return session.scalars(query.order_by(User.username)).all()
