"""Incident routes: read for operators, supervisors and admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from alarmcentre.api_deps import INCIDENT_ROLES, SessionDep, require_roles
from alarmcentre.incidents import service
from alarmcentre.incidents.models import Incident, IncidentStatus
from alarmcentre.incidents.schemas import IncidentDetailOut, IncidentOut
from alarmcentre.schemas import MAX_ID, Id
from alarmcentre.users.models import User
from alarmcentre.visits import service as visits

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])
Reader = Annotated[User, Depends(require_roles(*INCIDENT_ROLES))]


@router.get("", response_model=list[IncidentOut])
def list_incidents(
    session: SessionDep, _u: Reader,
    status_: Annotated[list[IncidentStatus] | None, Query(alias="status", description="repeatable")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[Incident]:
    """Most urgent first (priority, then waiting time)."""
    return list(service.list_incidents(session, status=status_, limit=limit, offset=offset))


@router.get("/{incident_id}", response_model=IncidentDetailOut)
def get_incident(incident_id: Id, session: SessionDep, _u: Reader) -> IncidentDetailOut:
    incident = service.get_incident(session, incident_id=incident_id)
    if incident is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"incident {incident_id} not found")
    out = IncidentDetailOut.model_validate(incident)
    visit = visits.carer_on_site(session, incident_id=incident.id)
    if visit is not None:
        out.carer_on_site_since, out.carer_on_site_name = visit.arrived_at, visit.worker_name
    return out
