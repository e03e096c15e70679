"""Work order routes for technicians and admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from alarmcentre.api_deps import DEVICE_EDITORS, SessionDep, require_roles
from alarmcentre.devices import service as devices
from alarmcentre.schemas import MAX_ID, Id
from alarmcentre.users.models import User
from alarmcentre.workorders import service
from alarmcentre.workorders.models import WorkOrder, WorkOrderKind, WorkOrderStatus
from alarmcentre.workorders.schemas import (
    AssignOrderIn,
    DoneIn,
    NoteIn,
    WorkOrderDetailOut,
    WorkOrderIn,
    WorkOrderNoteOut,
    WorkOrderOut,
)

router = APIRouter(prefix="/api/v1/work-orders", tags=["work orders"])
Technician = Annotated[User, Depends(require_roles(*DEVICE_EDITORS))]


def _load(session: SessionDep, order_id: int) -> WorkOrder:
    order = session.get(WorkOrder, order_id)
    if order is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"work order {order_id} not found")
    return order


def _detail(session: SessionDep, order: WorkOrder) -> WorkOrderDetailOut:
    return WorkOrderDetailOut(**WorkOrderOut.model_validate(order).model_dump(), notes=[
        WorkOrderNoteOut.model_validate(n) for n in service.notes(session, order=order)])


@router.get("", response_model=list[WorkOrderOut])
def list_orders(
    session: SessionDep, _u: Technician,
    status_: Annotated[list[WorkOrderStatus] | None, Query(alias="status", description="repeatable")] = None,
    kind: WorkOrderKind | None = None, assigned_to: Id | None = None, serial: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[WorkOrder]:
    device_id = None
    if serial is not None:
        device = devices.get_by_serial(session, serial)
        if device is None:
            return []
        device_id = device.id
    return list(service.list_orders(session, status=status_, kind=kind, device_id=device_id,
                                    assigned_to=assigned_to, limit=limit, offset=offset))


@router.post("", response_model=WorkOrderDetailOut, status_code=status.HTTP_201_CREATED)
def create_order(body: WorkOrderIn, session: SessionDep, user: Technician) -> WorkOrderDetailOut:
    device = devices.get_by_serial(session, body.serial)
    if device is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"device {body.serial} not found")
    order = service.open_order(session, kind=body.kind, device=device, summary=body.summary,
                               created_by=f"user:{user.username}", free_of_charge=body.free_of_charge)
    if order is None:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"device {body.serial} has an open {body.kind.value} work order already")
    return _detail(session, order)


@router.get("/{order_id}", response_model=WorkOrderDetailOut)
def get_order(order_id: Id, session: SessionDep, _u: Technician) -> WorkOrderDetailOut:
    return _detail(session, _load(session, order_id))


@router.post("/{order_id}/assign", response_model=WorkOrderDetailOut)
def assign_order(order_id: Id, body: AssignOrderIn, session: SessionDep, user: Technician) -> WorkOrderDetailOut:
    order = _load(session, order_id)
    to = session.get(User, body.user_id) if body.user_id is not None else user
    if to is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"user {body.user_id} not found")
    try:
        service.assign(session, order=order, to=to, by=user)
    except service.Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    return _detail(session, order)


@router.post("/{order_id}/notes", response_model=WorkOrderDetailOut)
def add_note(order_id: Id, body: NoteIn, session: SessionDep, user: Technician) -> WorkOrderDetailOut:
    order = _load(session, order_id)
    service.add_note(session, order=order, author=f"user:{user.username}", text=body.text)
    return _detail(session, order)


@router.post("/{order_id}/done", response_model=WorkOrderDetailOut)
def finish_order(order_id: Id, body: DoneIn, session: SessionDep, user: Technician) -> WorkOrderDetailOut:
    order = _load(session, order_id)
    try:
        service.finish(session, order=order, user=user, resolution=body.resolution)
    except service.Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    return _detail(session, order)
