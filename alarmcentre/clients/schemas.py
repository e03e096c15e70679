"""API shapes of clients and their contacts (validated at the edge)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from pydantic import ConfigDict, Field

from alarmcentre.clients.models import ClientStatus, Language
from alarmcentre.schemas import Id, InputModel, Phone

CareLevel = Annotated[int, Field(ge=1, le=4)]


class ClientIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    municipality_id: Id
    full_name: Annotated[str, Field(min_length=1, max_length=200)]
    birth_date: date | None = None
    address: Annotated[str, Field(min_length=1, max_length=300)]
    phone: Phone | None = None
    language: Language = Language.LV
    care_level: CareLevel
    status: ClientStatus = ClientStatus.ACTIVE
    medical_notes: Annotated[str, Field(max_length=5000)] = ""


class ClientPatch(InputModel):
    model_config = ConfigDict(extra="forbid")
    municipality_id: Id | None = None
    full_name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    birth_date: date | None = None
    address: Annotated[str, Field(min_length=1, max_length=300)] | None = None
    phone: Phone | None = None
    language: Language | None = None
    care_level: CareLevel | None = None
    status: ClientStatus | None = None
    medical_notes: Annotated[str, Field(max_length=5000)] | None = None


class ClientOut(ClientIn):
    model_config = ConfigDict(from_attributes=True)
    id: int
    phone: str | None = None
    medical_notes: str | None = Field(  # type: ignore[assignment]
        "", description="null for technicians: medical notes are for those who answer alarms and manage clients")
    last_contact_at: datetime | None
    created_at: datetime
