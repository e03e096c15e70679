"""Dead letters: what the ingest refused, for supervisors, technicians and admins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, field_serializer
from sqlalchemy import select

from alarmcentre.api_deps import SessionDep, require_roles
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.ingest.protocol import DEVICE_ID_PATTERN
from alarmcentre.users.models import Role, User

router = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"])


class DeadLetterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    received_at: datetime
    topic: str
    device_serial: str | None
    reason: str
    detail: str
    payload: bytes
    payload_size: int

    @field_serializer("payload")
    def _payload_text(self, value: bytes) -> str:
        # Shown as text where possible; undecodable bytes as \x escapes, never lost.
        return value.decode("utf-8", errors="backslashreplace")


@router.get("", response_model=list[DeadLetterOut])
def list_dead_letters(
    session: SessionDep,
    _u: Annotated[User, Depends(require_roles(Role.SUPERVISOR, Role.TECHNICIAN, Role.ADMIN))],
    reason: Annotated[str | None, Query(max_length=32, pattern=r"^[a-z0-9_]+$")] = None,
    device_serial: Annotated[str | None, Query(pattern=f"^{DEVICE_ID_PATTERN}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetter]:
    # Newest received first: one batch stores its dead letters in the order its stages find them.
    query = select(DeadLetter).order_by(DeadLetter.received_at.desc(), DeadLetter.id.desc()).limit(limit)
    if reason:
        query = query.where(DeadLetter.reason == reason)
    if device_serial:
        query = query.where(DeadLetter.device_serial == device_serial)
    return list(session.scalars(query))
