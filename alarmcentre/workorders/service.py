"""Work orders: opened once per (device, kind) by the scheduler or a technician; open → assigned → done.

Functions take the session first and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from alarmcentre import clock
from alarmcentre.clients.models import Client
from alarmcentre.devices.models import Device
from alarmcentre.schemas import MAX_ID
from alarmcentre.users.models import Role, User
from alarmcentre.workorders.models import WorkOrder, WorkOrderKind, WorkOrderNote, WorkOrderStatus

ACTIVE = (WorkOrderStatus.OPEN, WorkOrderStatus.ASSIGNED)


class Conflict(ValueError):
    pass


def order_key(kind: WorkOrderKind, device_id: int) -> str:
    return f"{kind.value}:{device_id}"


def active_order(session: Session, *, kind: WorkOrderKind, device_id: int) -> WorkOrder | None:
    return session.scalar(select(WorkOrder).where(WorkOrder.active_key == order_key(kind, device_id)))


def open_order(
    session: Session, *, kind: WorkOrderKind, device: Device, summary: str, details: dict[str, Any] | None = None,
    created_by: str = "system", free_of_charge: bool = True,
) -> WorkOrder | None:
    """Open unless one is active for (device, kind); the unique key settles races. None if it existed."""
    key = order_key(kind, device.id)
    if session.scalar(select(WorkOrder.id).where(WorkOrder.active_key == key)) is not None:
        return None
    order = WorkOrder(kind=kind, status=WorkOrderStatus.OPEN, device_id=device.id, client_id=device.client_id,
                      active_key=key, summary=summary[:300], details=details or {}, created_at=clock.now(),
                      created_by=created_by, free_of_charge=free_of_charge)
    try:
        with session.begin_nested():
            session.add(order)
            session.flush()
    except IntegrityError:
        return None
    return order


def close_active(session: Session, *, kind: WorkOrderKind, device_id: int, resolution: str,
                 by: str = "system") -> int:
    """Done by the system (the reason went away); a conditional UPDATE, so at most once."""
    return session.execute(
        update(WorkOrder).where(WorkOrder.active_key == order_key(kind, device_id), WorkOrder.status.in_(ACTIVE))
        .values(status=WorkOrderStatus.DONE, active_key=None, done_at=clock.now(), done_by=by, resolution=resolution)
        .execution_options(synchronize_session=False)
    ).rowcount


def assign(session: Session, *, order: WorkOrder, to: User, by: User) -> WorkOrder:
    if order.status == WorkOrderStatus.DONE:
        raise Conflict("the work order is done")
    if to.role not in (Role.TECHNICIAN, Role.ADMIN) or not to.active:
        raise ValueError(f"{to.username} is not an active technician")
    order.status, order.assigned_to, order.assigned_at = WorkOrderStatus.ASSIGNED, to.id, clock.now()
    add_note(session, order=order, author=f"user:{by.username}", text=f"assigned to {to.username}")
    return order


def finish(session: Session, *, order: WorkOrder, user: User, resolution: str) -> WorkOrder:
    done = session.execute(
        update(WorkOrder).where(WorkOrder.id == order.id, WorkOrder.status.in_(ACTIVE))
        .values(status=WorkOrderStatus.DONE, active_key=None, done_at=clock.now(), done_by=f"user:{user.username}",
                resolution=resolution)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(order)
    if done != 1:
        raise Conflict("the work order is done")
    return order


def add_note(session: Session, *, order: WorkOrder, author: str, text: str) -> WorkOrderNote:
    note = WorkOrderNote(work_order_id=order.id, author=author, text=text, at=clock.now())
    session.add(note)
    session.flush()
    return note


def notes(session: Session, *, order: WorkOrder) -> Sequence[WorkOrderNote]:
    return session.scalars(select(WorkOrderNote).where(WorkOrderNote.work_order_id == order.id)
                           .order_by(WorkOrderNote.id)).all()


def list_orders(
    session: Session, *, status: Sequence[WorkOrderStatus] | None = None, kind: WorkOrderKind | None = None,
    device_id: int | None = None, assigned_to: int | None = None, limit: int = 100, offset: int = 0,
) -> Sequence[WorkOrder]:
    query = select(WorkOrder).order_by(WorkOrder.created_at, WorkOrder.id).limit(limit).offset(offset)
    if status:
        query = query.where(WorkOrder.status.in_(status))
    if kind is not None:
        query = query.where(WorkOrder.kind == kind)
    if device_id is not None:
        query = query.where(WorkOrder.device_id == device_id)
    if assigned_to is not None:
        query = query.where(WorkOrder.assigned_to == assigned_to)
    return session.scalars(query).all()


def get_order(session: Session, order_id: int, *, lock: bool = False) -> WorkOrder | None:
    """The work order; with `lock`, held for the rest of the transaction."""
    if not 0 < order_id <= MAX_ID:
        return None
    return session.get(WorkOrder, order_id, with_for_update=lock or None)


def orders_for_device(session: Session, *, device_id: int, limit: int = 20) -> Sequence[WorkOrder]:
    """A device's work orders, newest first."""
    return session.scalars(select(WorkOrder).where(WorkOrder.device_id == device_id)
                           .order_by(WorkOrder.created_at.desc(), WorkOrder.id.desc()).limit(limit)).all()


@dataclass(frozen=True)
class BoardRow:
    """One line of the technicians' list of work orders."""

    order: WorkOrder
    serial: str
    client: str | None  # the client's name
    assignee: str | None  # full name, else username


def board(session: Session, *, status: Sequence[WorkOrderStatus], assigned_to: int | None = None,
          newest_first: bool = False, limit: int = 300) -> list[BoardRow]:
    """Work orders in these states with their device, client and assignee; the oldest first (a queue of
    work still to do) unless `newest_first` (finished work)."""
    assignee = aliased(User)
    query = (select(WorkOrder, Device.serial, Client.full_name, assignee.full_name, assignee.username)
             .join(Device, Device.id == WorkOrder.device_id)
             .outerjoin(Client, Client.id == WorkOrder.client_id)
             .outerjoin(assignee, assignee.id == WorkOrder.assigned_to)
             .where(WorkOrder.status.in_(status)).limit(limit))
    if newest_first:
        query = query.order_by(WorkOrder.created_at.desc(), WorkOrder.id.desc())
    else:
        query = query.order_by(WorkOrder.created_at, WorkOrder.id)
    if assigned_to is not None:
        query = query.where(WorkOrder.assigned_to == assigned_to)
    return [BoardRow(order, serial, client_name, full or username)
            for order, serial, client_name, full, username in session.execute(query).all()]
