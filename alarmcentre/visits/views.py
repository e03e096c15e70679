"""Visit routes: the integration API of the home-care service (X-Api-Key) and the client record (staff)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, Response, UploadFile, status

from alarmcentre.api_deps import STAFF, IntegrationCaller, SessionDep, require_roles
from alarmcentre.clients.models import Client
from alarmcentre.config import Settings
from alarmcentre.schemas import Id
from alarmcentre.users.models import User
from alarmcentre.visits import service
from alarmcentre.visits.schemas import BatchIn, ClientVisitsOut, ExportRow, ImportReport, VisitOut

integration_router = APIRouter(prefix="/api/v1/integration", tags=["integration"])
router = APIRouter(prefix="/api/v1", tags=["visits"])
Staff = Annotated[User, Depends(require_roles(*STAFF))]
MAX_CSV_BYTES = 2_000_000


@integration_router.post("/batch", response_model=ImportReport)
def import_batch(body: BatchIn, session: SessionDep, key: IntegrationCaller) -> ImportReport:
    """Upsert workers and planned visits by their external ids; the same batch twice changes nothing.
    A row that cannot be stored (unknown client or worker) is reported; the others are stored.
    A key of one municipality sees only that municipality's clients, workers and visits."""
    return service.import_batch(session, body, scope=key.municipality_id)


@integration_router.post("/visits.csv", response_model=ImportReport)
def import_csv(
    request: Request, session: SessionDep, key: IntegrationCaller,
    file: Annotated[UploadFile, File(description="a week's schedule, UTF-8 CSV with a header")],
) -> ImportReport:
    """Each bad line is reported with its line number; the good lines are stored (docs/visits.md)."""
    data = file.file.read(MAX_CSV_BYTES + 1)
    if len(data) > MAX_CSV_BYTES:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, detail=f"at most {MAX_CSV_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=f"not UTF-8: {exc}") from exc
    settings: Settings = request.app.state.settings
    return service.import_csv(session, text, settings=settings, scope=key.municipality_id)


@integration_router.get("/visits/export", response_model=list[ExportRow],
                        responses={403: {"description": "a key of one municipality asked for another's visits"}})
def export_visits(
    session: SessionDep, key: IntegrationCaller,
    start: Annotated[datetime, Query(alias="from", description="inclusive, ISO 8601 with offset")],
    end: Annotated[datetime, Query(alias="to", description="exclusive, ISO 8601 with offset")],
    municipality_id: Id | None = None,
    format_: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> list[ExportRow] | Response:
    """Visits made (done) in the period, for the social service's records. A key of one municipality
    exports that municipality's visits only; asking for another is refused (403)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail="from and to need a UTC offset")
    if key.municipality_id is not None:
        if municipality_id not in (None, key.municipality_id):
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                detail=f"this key covers municipality {key.municipality_id} only")
        municipality_id = key.municipality_id
    rows = service.export_made(session, start=start, end=end, municipality_id=municipality_id)
    if format_ == "csv":
        return Response(service.export_csv(rows), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="visits.csv"'})
    return rows


@router.get("/clients/{client_id}/visits", response_model=ClientVisitsOut)
def client_visits(client_id: Id, session: SessionDep, _u: Staff,
                  limit: Annotated[int, Query(ge=1, le=100)] = 10) -> ClientVisitsOut:
    if session.get(Client, client_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"client {client_id} not found")
    last, upcoming = service.client_visits(session, client_id=client_id, limit=limit)
    return ClientVisitsOut(client_id=client_id, last=[VisitOut.model_validate(v) for v in last],
                           next_planned=VisitOut.model_validate(upcoming) if upcoming else None)
