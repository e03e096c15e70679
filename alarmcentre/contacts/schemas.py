"""API shapes of response-plan contacts."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from alarmcentre.clients.models import Language
from alarmcentre.contacts.models import ContactKind
from alarmcentre.schemas import InputModel, Phone


class ContactIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    position: Annotated[int, Field(ge=0, le=1000)] = 0
    kind: ContactKind
    name: Annotated[str, Field(min_length=1, max_length=200)]
    phone: Phone
    language: Language = Language.LV
    has_key: bool = False
    notes: Annotated[str, Field(max_length=500)] = ""


class ContactPatch(InputModel):
    model_config = ConfigDict(extra="forbid")
    position: Annotated[int, Field(ge=0, le=1000)] | None = None
    kind: ContactKind | None = None
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    phone: Phone | None = None
    language: Language | None = None
    has_key: bool | None = None
    notes: Annotated[str, Field(max_length=500)] | None = None


class ContactOut(ContactIn):
    model_config = ConfigDict(from_attributes=True)
    id: int
    client_id: int
    phone: str
