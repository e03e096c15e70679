"""Access information (door code, key-safe code, where the spare key is): encrypted, revealed only
to the operator who owns an open incident of the client, and every reveal audited."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import ForeignKey, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from alarmcentre import clock
from alarmcentre.clients.models import Client
from alarmcentre.config import Settings
from alarmcentre.db import Base
from alarmcentre.incidents.models import Incident, IncidentKind, IncidentStatus, TimelineKind
from alarmcentre.incidents.service import append_timeline
from alarmcentre.users.models import Role, User

# Who may reveal: the owner of the open incident, when they answer alarms. Technicians never;
# admins administer the system and do not answer alarms, so they never reveal either.
REVEALING_ROLES = (Role.OPERATOR, Role.SUPERVISOR)
MAX_ACCESS_TEXT = 1000


class ClientAccess(Base):
    """One row per client; the text is only ever stored encrypted (Fernet: AES-128-CBC + HMAC)."""

    __tablename__ = "client_access"

    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True)
    ciphertext: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=clock.now)
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class AccessReveal(Base):
    """The audit of reveals: append-only."""

    __tablename__ = "access_reveals"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), index=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=clock.now, index=True)


class RevealRefused(Exception):
    """Why this user may not see this client's access information now."""


class AccessKeyError(RuntimeError):
    pass


def _parse_keys(text: str, where: str) -> MultiFernet:
    keys = [k.strip() for k in text.replace("\n", ",").split(",") if k.strip()]
    try:
        return MultiFernet([Fernet(k.encode()) for k in keys])
    except ValueError as exc:  # also an empty list
        raise AccessKeyError(f"{where} is not a valid key, or list of keys newest first (each 32 url-safe "
                             "base64 bytes); make one with `alarmcentre access-key`") from exc


def key_file(settings: Settings) -> Path:
    return Path(settings.data_dir) / "access.key"


def load_cipher(settings: Settings) -> MultiFernet:
    """The keys from the setting (comma-separated, newest first), else from (or newly into)
    data_dir/access.key (one per line), readable by the owner only. The first key encrypts; every
    key decrypts, which is how a key is rotated (`rotate_key`).

    Losing the key makes the stored codes unreadable (they must be entered again): back it up
    with the database, but never in the same place."""
    if settings.access_key:
        return _parse_keys(settings.access_key, "ALARMCENTRE_ACCESS_KEY")
    path = key_file(settings)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(Fernet.generate_key())
    return _parse_keys(path.read_text(), str(path))


def rotate_key(session: Session, cipher: MultiFernet) -> int:
    """Encrypt every client's access information again with the cipher's first key (each was
    readable with one of its keys); returns how many. Commit, then retire the old keys."""
    rows = list(session.scalars(select(ClientAccess).with_for_update()))
    for row in rows:
        try:
            row.ciphertext = cipher.rotate(row.ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise AccessKeyError(f"the access information of client {row.client_id} cannot be decrypted with "
                                 "any of the keys given: nothing was changed") from exc
    from alarmcentre.devices.models import Device  # DC-09 keys and SCAIP passwords share the access key

    secrets = ((Device.dc09_key_ciphertext, "the DC-09 key"), (Device.scaip_password_ciphertext, "the SCAIP password"))
    for column, what in secrets:
        for device in session.scalars(select(Device).where(column.is_not(None)).with_for_update()):
            try:
                setattr(device, column.key, cipher.rotate(getattr(device, column.key).encode()).decode())
            except InvalidToken as exc:
                raise AccessKeyError(f"{what} of device {device.serial} cannot be decrypted with any of the keys "
                                     "given: nothing was changed") from exc
    return len(rows)


class AccessCipher:
    """The key, loaded (or created) on first use: an app that never touches access codes (tests,
    tools) must not create a key file as a side effect. A key file that changed (a rotation) is
    read again, so a running centre keeps up without a restart."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._cipher: MultiFernet | None = None
        self._loaded_stamp: int | None = None

    def get(self) -> MultiFernet:
        stamp = self._key_file_stamp()
        if self._cipher is None or stamp != self._loaded_stamp:
            self._cipher = load_cipher(self._settings)
            self._loaded_stamp = self._key_file_stamp()
        return self._cipher

    def _key_file_stamp(self) -> int | None:
        path = key_file(self._settings)
        return None if self._settings.access_key or not path.exists() else path.stat().st_mtime_ns


def has_access_info(session: Session, *, client_id: int) -> bool:
    return session.get(ClientAccess, client_id) is not None


def set_access_info(session: Session, cipher: MultiFernet, *, client: Client, text: str, user: User) -> None:
    """Replace the text; an empty text removes it."""
    text = text.strip()
    if len(text) > MAX_ACCESS_TEXT:
        raise ValueError(f"access information is limited to {MAX_ACCESS_TEXT} characters")
    row = session.get(ClientAccess, client.id)
    if not text:
        if row is not None:
            session.delete(row)
        return
    token = cipher.encrypt(text.encode()).decode()
    if row is None:
        session.add(ClientAccess(client_id=client.id, ciphertext=token, updated_by=user.id))
    else:
        row.ciphertext, row.updated_at, row.updated_by = token, clock.now(), user.id


def may_reveal(incident: Incident, user: User) -> bool:
    """The rule, for showing the button; `reveal` applies it and says which part failed."""
    return (user.role in REVEALING_ROLES and incident.status == IncidentStatus.ACKNOWLEDGED
            and incident.owner_id == user.id and incident.kind != IncidentKind.DEVICE_SILENT
            and incident.client_id is not None)


def reveal(session: Session, cipher: MultiFernet, *, incident: Incident, user: User) -> str:
    """Decrypt for the owner of this open alarm incident, and audit it (reveal row + timeline entry)."""
    if user.role not in REVEALING_ROLES:
        raise RevealRefused("only the operator handling the incident can reveal access information")
    if incident.status == IncidentStatus.RESOLVED:
        raise RevealRefused("the incident is resolved: access information is no longer shown")
    if incident.status != IncidentStatus.ACKNOWLEDGED or incident.owner_id != user.id:
        raise RevealRefused("take the incident first: only its owner can reveal access information")
    if incident.kind == IncidentKind.DEVICE_SILENT or incident.client_id is None:
        raise RevealRefused("not an alarm of a client")
    row = session.get(ClientAccess, incident.client_id)
    if row is None:
        raise RevealRefused("no access information is recorded for this client")
    try:
        text = cipher.decrypt(row.ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise AccessKeyError("the access information cannot be decrypted with this key") from exc
    session.add(AccessReveal(client_id=incident.client_id, incident_id=incident.id, user_id=user.id))
    append_timeline(session, incident, kind=TimelineKind.ACCESS_REVEALED, actor=f"user:{user.username}",
                    user_id=user.id)
    return text


def reveals(session: Session, *, limit: int = 200) -> list[tuple[AccessReveal, User, Client]]:
    """Newest first, for supervisors."""
    rows = session.execute(
        select(AccessReveal, User, Client).join(User, User.id == AccessReveal.user_id)
        .join(Client, Client.id == AccessReveal.client_id).order_by(AccessReveal.id.desc()).limit(limit)
    ).all()
    return [(r, u, c) for r, u, c in rows]
