"""What the voice routes take and give (the pretend line of the outbox)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from alarmcentre.schemas import InputModel, Phone


class SimulatedCallIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    from_number: Phone


class SimulatedCallOut(BaseModel):
    call_id: int
    incident_id: int | None
    from_number: str
    status: str
