"""API shapes of work orders."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from alarmcentre.devices.schemas import Serial
from alarmcentre.schemas import Id, InputModel
from alarmcentre.workorders.models import WorkOrderKind, WorkOrderStatus

Text = Annotated[str, Field(min_length=1, max_length=4000)]


class WorkOrderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: WorkOrderKind
    status: WorkOrderStatus
    device_id: int
    client_id: int | None
    free_of_charge: bool
    summary: str
    details: dict[str, Any]
    created_at: datetime
    created_by: str
    assigned_to: int | None
    assigned_at: datetime | None
    done_at: datetime | None
    done_by: str | None
    resolution: str | None


class WorkOrderNoteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: datetime
    author: str
    text: str


class WorkOrderDetailOut(WorkOrderOut):
    notes: list[WorkOrderNoteOut]


class WorkOrderIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    serial: Serial
    kind: WorkOrderKind = WorkOrderKind.REPAIR
    summary: Annotated[str, Field(min_length=1, max_length=300)]
    free_of_charge: bool = True


class AssignOrderIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Id | None = Field(None, description="the technician; default: yourself")


class NoteIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    text: Text


class DoneIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    resolution: Text
