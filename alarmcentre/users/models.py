"""Staff accounts, roles and API tokens."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from alarmcentre import clock
from alarmcentre.clients.models import Language
from alarmcentre.db import Base
from alarmcentre.db_types import str_enum


class Role(StrEnum):
    OPERATOR = "operator"
    SUPERVISOR = "supervisor"
    TECHNICIAN = "technician"
    ADMIN = "admin"
    # The home-care service's system: integration routes only, with an IntegrationKey (never a User).
    INTEGRATION = "integration"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(200))  # argon2id
    role: Mapped[Role] = mapped_column(str_enum(Role))
    language: Mapped[Language] = mapped_column(str_enum(Language), default=Language.LV)
    active: Mapped[bool] = mapped_column(default=True)
    phone: Mapped[str | None] = mapped_column(String(32))  # for supervisor alerts by SMS
    on_call: Mapped[bool] = mapped_column(default=False)  # the supervisor alerted when an alarm waits
    created_at: Mapped[datetime] = mapped_column(default=clock.now)


class ApiToken(Base):
    """Opaque bearer tokens; only their SHA-256 is stored, so a database leak grants nothing."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class IntegrationKey(Base):
    """An API key of another system (role integration), sent as X-Api-Key; only its SHA-256 is stored.

    Deliberately not a User and not an ApiToken: operator routes never accept it, and integration
    routes accept nothing else."""

    __tablename__ = "integration_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(str_enum(Role), default=Role.INTEGRATION)
    # The one municipality whose clients, workers and visits this key may touch; NULL: every one.
    municipality_id: Mapped[int | None] = mapped_column(ForeignKey("municipalities.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    revoked_at: Mapped[datetime | None]
