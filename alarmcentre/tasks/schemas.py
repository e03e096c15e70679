"""API shapes of operator tasks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from alarmcentre.schemas import InputModel
from alarmcentre.tasks.models import TaskKind, TaskOutcome, TaskStatus


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    kind: TaskKind
    status: TaskStatus
    client_id: int | None
    device_id: int | None
    due_at: datetime
    due_local: str = Field("", description="due time in the centre's zone (ALARMCENTRE_LOCAL_TIMEZONE)")
    created_at: datetime
    claimed_by: int | None
    claimed_at: datetime | None
    completed_by: int | None
    completed_at: datetime | None
    outcome: str | None
    notes: str
    details: dict[str, Any]


class CompleteIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    outcome: TaskOutcome
    notes: Annotated[str, Field(max_length=4000)] = ""


class WelfareOut(BaseModel):
    client_id: int
    status: str
    last_contact_at: datetime | None
    next_check_due_at: datetime | None = Field(description="null while the service is paused or ended")
    next_check_due_local: str | None
    open_task_id: int | None
