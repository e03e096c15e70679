"""Operator task routes: the operators' queue of welfare checks, power-loss calls and notices."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel
from sqlalchemy import select

from alarmcentre import care, clock
from alarmcentre.api_deps import INCIDENT_ROLES, STAFF, SessionDep, require_roles
from alarmcentre.clients.models import Client, ClientStatus
from alarmcentre.config import Settings
from alarmcentre.schemas import MAX_ID, Id
from alarmcentre.tasks import service
from alarmcentre.tasks.models import OperatorTask, TaskKind, TaskStatus
from alarmcentre.tasks.schemas import CompleteIn, TaskOut, WelfareOut
from alarmcentre.users.models import User

router = APIRouter(prefix="/api/v1", tags=["tasks"])
Operator = Annotated[User, Depends(require_roles(*INCIDENT_ROLES))]
Staff = Annotated[User, Depends(require_roles(*STAFF))]


def _out(task: OperatorTask, settings: Settings) -> TaskOut:
    out = TaskOut.model_validate(task)
    out.due_local = care.local_time(task.due_at, settings).isoformat()
    return out


def _load(session: SessionDep, task_id: int) -> OperatorTask:
    task = session.get(OperatorTask, task_id)
    if task is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"task {task_id} not found")
    return task


@router.get("/tasks", response_model=list[TaskOut])
def list_tasks(
    request: Request, session: SessionDep, _u: Operator,
    status_: Annotated[list[TaskStatus] | None, Query(alias="status", description="repeatable; default open+claimed")]
    = None,
    kind: TaskKind | None = None, client_id: Id | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[TaskOut]:
    """Earliest due first."""
    rows = service.list_tasks(session, status=status_ or list(service.ACTIVE), kind=kind, client_id=client_id,
                              limit=limit, offset=offset)
    return [_out(t, request.app.state.settings) for t in rows]


@router.post("/tasks/{task_id}/claim", response_model=TaskOut)
def claim_task(task_id: Id, request: Request, session: SessionDep, user: Operator) -> TaskOut:
    try:
        task = service.claim(session, task=_load(session, task_id), user=user)
    except service.Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    return _out(task, request.app.state.settings)


@router.post("/tasks/{task_id}/complete", response_model=TaskOut)
def complete_task(task_id: Id, body: CompleteIn, request: Request, session: SessionDep, user: Operator) -> TaskOut:
    """Record the call and its outcome; reaching the client restarts the two-week welfare clock."""
    try:
        task = service.complete(session, task=_load(session, task_id), user=user, outcome=body.outcome,
                                notes=body.notes)
    except service.Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    return _out(task, request.app.state.settings)


@router.get("/clients/{client_id}/welfare", response_model=WelfareOut)
def client_welfare(client_id: Id, request: Request, session: SessionDep, _u: Operator) -> WelfareOut:
    """When the next welfare check falls due (two weeks after the last contact)."""
    settings: Settings = request.app.state.settings
    client = session.get(Client, client_id)
    if client is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"client {client_id} not found")
    due = care.welfare_due_at(client, settings) if client.status == ClientStatus.ACTIVE else None
    task_id = session.scalar(select(OperatorTask.id).where(
        OperatorTask.active_key == service.task_key(TaskKind.WELFARE_CHECK, client_id=client.id)))
    return WelfareOut(client_id=client.id, status=client.status.value, last_contact_at=client.last_contact_at,
                      next_check_due_at=due, next_check_due_local=care.local_time(due, settings).isoformat()
                      if due else None, open_task_id=task_id)


class MonthlyTestDueOut(BaseModel):
    serial: str
    client_id: int | None
    last_test_call_at: datetime | None
    counted_from: datetime


@router.get("/monthly-test-due", response_model=list[MonthlyTestDueOut])
def monthly_test_due(request: Request, session: SessionDep, _u: Staff) -> list[MonthlyTestDueOut]:
    """Installed devices with no test call for ALARMCENTRE_MONTHLY_TEST_DAYS (30): remind the client."""
    settings: Settings = request.app.state.settings
    return [MonthlyTestDueOut(serial=d.serial, client_id=d.client_id, last_test_call_at=d.last_test_call_at,
                              counted_from=since)
            for d, since in care.monthly_test_due(session, settings, clock.now())]
