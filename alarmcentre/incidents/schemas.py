"""API shapes of incidents and their timelines."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from alarmcentre.dispatch.schemas import IncidentStepOut
from alarmcentre.incidents.models import IncidentKind, IncidentStatus, TimelineKind


class TimelineEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: datetime
    kind: TimelineKind
    actor: str
    user_id: int | None
    details: dict[str, Any]


class IncidentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    client_id: int | None
    device_id: int | None
    kind: IncidentKind
    priority: int
    status: IncidentStatus
    opened_at: datetime
    last_signal_at: datetime
    signal_count: int
    acknowledged_at: datetime | None
    acknowledged_by: int | None
    owner_id: int | None
    resolved_at: datetime | None
    resolved_by: int | None
    outcome: str | None
    spoken_at: datetime | None = Field(None, description="first time an operator spoke with the caller (voice)")


class IncidentDetailOut(IncidentOut):
    timeline: list[TimelineEntryOut]
    steps: list[IncidentStepOut]
    carer_on_site_since: datetime | None = Field(None, description="a home-care worker's visit for this incident "
                                                 "is in progress since (docs/visits.md)")
    carer_on_site_name: str | None = None
