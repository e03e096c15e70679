"""API shapes of plans, resources, steps, operator actions and texts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from alarmcentre.clients.models import Language
from alarmcentre.dispatch.actions import ClientSaid, Outcome
from alarmcentre.dispatch.models import Channel, ResourceKind, SmsDirection, SmsStatus, StepState
from alarmcentre.phone import normalise_phone
from alarmcentre.schemas import Id, InputModel, Phone

Text = Annotated[str, Field(max_length=2000)]


def _emergency_or_phone(raw: str) -> str:
    """Shared resources may have a short emergency number (112, 113, 110) instead of a full one."""
    stripped = raw.strip()
    if stripped.isdigit() and 2 <= len(stripped) <= 6:
        return stripped
    return normalise_phone(stripped)


ResourcePhone = Annotated[str, Field(max_length=32), AfterValidator(_emergency_or_phone)]


class ResourceIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    municipality_id: Id | None = None
    kind: ResourceKind
    name: Annotated[str, Field(min_length=1, max_length=200)]
    phone: ResourcePhone
    language: Language = Language.LV
    active: bool = True


class ResourceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    municipality_id: int | None
    kind: ResourceKind
    name: str
    phone: str
    language: Language
    active: bool


class PlanStepIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    contact_id: Id | None = None
    resource_id: Id | None = None
    channel: Channel = Channel.SMS
    wait_seconds: Annotated[int, Field(ge=30, le=86400)] = 300
    automatic: bool = True
    instruction: Annotated[str, Field(max_length=300)] = ""

    @model_validator(mode="after")
    def _one_target(self) -> PlanStepIn:
        if (self.contact_id is None) == (self.resource_id is None):
            raise ValueError("a step names exactly one of contact_id and resource_id")
        return self


class PlanIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    steps: Annotated[list[PlanStepIn], Field(max_length=20)]


class PlanStepOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    position: int
    contact_id: int | None
    resource_id: int | None
    channel: Channel
    wait_seconds: int
    automatic: bool
    instruction: str
    target_name: str = ""
    target_phone: str = ""


class IncidentStepOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    position: int
    kind: str
    name: str
    phone: str
    language: Language
    has_key: bool
    channel: Channel
    wait_seconds: int
    automatic: bool
    instruction: str
    state: StepState
    reply_code: str | None = Field(None, description="the code a texted answer must repeat (`1 482`); null when no "
                                   "text asked for an answer")
    started_at: datetime | None
    answered_at: datetime | None
    arrived_at: datetime | None
    finished_at: datetime | None


class CallIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    answered: bool
    client_said: ClientSaid = ClientSaid.OTHER
    notes: Text = ""


class StepRef(InputModel):
    model_config = ConfigDict(extra="forbid")
    step_id: Id


class StepAnswerIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    answer: Literal["accept", "decline", "arrived", "done", "no_answer"]


class EmergencyIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    number: Literal["112", "113", "110"] = "113"
    reference: Annotated[str, Field(max_length=100)] = ""
    notes: Text = ""


class NoteIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    text: Annotated[str, Field(min_length=1, max_length=2000)]


class HandoverIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    to_user_id: Id
    notes: Text = ""


class ResolveIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Outcome
    notes: Text = ""


class ReopenIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class SmsOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    direction: SmsDirection
    to_number: str
    from_number: str
    body: str
    purpose: str
    status: SmsStatus
    provider: str
    incident_id: int | None
    step_id: int | None
    attempts: int
    last_error: str | None
    interpreted_as: str | None
    created_at: datetime
    sent_at: datetime | None


class SimulatedReplyIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    from_number: Phone
    body: Annotated[str, Field(min_length=1, max_length=1600)]
