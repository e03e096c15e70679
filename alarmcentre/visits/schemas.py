"""API shapes of home-care workers and visits (integration import and export, the client record)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from alarmcentre.clients.models import Language
from alarmcentre.schemas import Id, InputModel, Phone
from alarmcentre.visits.models import CareTask, TimeSource, VisitSource, VisitStatus

ExternalId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00\s]+$")]
MAX_BATCH = 5000


class WorkerIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    external_id: ExternalId
    name: Annotated[str, Field(min_length=1, max_length=200)]
    phone: Phone
    language: Language = Language.LV
    area: Annotated[str, Field(max_length=200)] = ""
    active: bool = True


class VisitIn(InputModel):
    """A planned visit as the home-care service knows it. `client_id` is the centre's client number."""

    model_config = ConfigDict(extra="forbid")
    external_id: ExternalId
    client_id: Id
    worker_external_id: ExternalId | None = None
    planned_start: AwareDatetime
    planned_end: AwareDatetime | None = None
    tasks: Annotated[list[CareTask], Field(max_length=len(CareTask))] = []
    notes: Annotated[str, Field(max_length=4000)] = ""
    status: Literal["planned", "cancelled"] = "planned"

    @model_validator(mode="after")
    def _window(self) -> VisitIn:
        if self.planned_end is not None and self.planned_end < self.planned_start:
            raise ValueError("planned_end is before planned_start")
        self.tasks = sorted(set(self.tasks), key=list(CareTask).index)
        return self


class BatchIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    workers: Annotated[list[WorkerIn], Field(max_length=MAX_BATCH)] = []
    visits: Annotated[list[VisitIn], Field(max_length=MAX_BATCH)] = []


class Counts(BaseModel):
    created: int = 0
    updated: int = 0
    unchanged: int = 0


class RowError(BaseModel):
    row: int = Field(description="CSV: the line number (the header is line 1); JSON: the index in `visits`")
    external_id: str | None = None
    error: str


class ImportReport(BaseModel):
    workers: Counts = Counts()
    visits: Counts = Counts()
    errors: list[RowError] = []


class WorkerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    external_id: str
    name: str
    phone: str
    language: Language
    area: str
    active: bool


class VisitOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    external_id: str | None
    client_id: int
    worker_id: int | None
    worker_name: str
    source: VisitSource
    status: VisitStatus
    planned_start: datetime
    planned_end: datetime | None
    arrived_at: datetime | None
    arrived_source: TimeSource | None
    departed_at: datetime | None
    departed_source: TimeSource | None
    tasks: list[str]
    notes: str
    incident_id: int | None


class ClientVisitsOut(BaseModel):
    client_id: int
    last: list[VisitOut] = Field(description="visits whose window has opened, newest first")
    next_planned: VisitOut | None


class ExportRow(BaseModel):
    visit_id: int
    external_id: str | None
    client_id: int
    client_name: str
    municipality: str
    worker_external_id: str | None
    worker_name: str
    source: VisitSource
    planned_start: datetime
    planned_end: datetime | None
    arrived_at: datetime | None
    departed_at: datetime | None
    duration_minutes: int | None
    tasks: list[str]
    notes: str
    incident_id: int | None
