"""Operator tasks: opened once per (subject, kind) by the scheduler, claimed and completed by operators.

Functions take the session first and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alarmcentre import clock
from alarmcentre.clients.models import Client
from alarmcentre.tasks.models import CONTACT_OUTCOMES, OperatorTask, TaskKind, TaskOutcome, TaskStatus
from alarmcentre.users.models import Role, User

ACTIVE = (TaskStatus.OPEN, TaskStatus.CLAIMED)


class Conflict(ValueError):
    pass


def task_key(kind: TaskKind, *, client_id: int | None = None, device_id: int | None = None) -> str:
    return f"{kind.value}:client:{client_id}" if client_id is not None else f"{kind.value}:device:{device_id}"


def open_task(
    session: Session, *, kind: TaskKind, due_at: datetime, client_id: int | None = None,
    device_id: int | None = None, key_device: bool = False, details: dict[str, Any] | None = None,
    key: str | None = None,
) -> OperatorTask | None:
    """Open the task unless one is active for the same subject; returns the new task or None.

    The unique active_key decides: of two schedulers racing here, one insert fails (inside a
    SAVEPOINT) and that one returns None.
    """
    key = key or task_key(kind, client_id=None if key_device else client_id, device_id=device_id)
    if session.scalar(select(OperatorTask.id).where(OperatorTask.active_key == key)) is not None:
        return None
    task = OperatorTask(kind=kind, status=TaskStatus.OPEN, client_id=client_id, device_id=device_id,
                        active_key=key, due_at=due_at, created_at=clock.now(), details=details or {})
    try:
        with session.begin_nested():
            session.add(task)
            session.flush()
    except IntegrityError:
        return None
    return task


def close_active(session: Session, *, key: str, reason: str) -> int:
    """The system closes an active task whose reason went away; a conditional UPDATE, so at most once."""
    now = clock.now()
    return session.execute(
        update(OperatorTask).where(OperatorTask.active_key == key, OperatorTask.status.in_(ACTIVE))
        .values(status=TaskStatus.CLOSED, active_key=None, completed_at=now, outcome=reason)
        .execution_options(synchronize_session=False)
    ).rowcount


def claim(session: Session, *, task: OperatorTask, user: User) -> OperatorTask:
    now = clock.now()
    claimed = session.execute(
        update(OperatorTask).where(OperatorTask.id == task.id, OperatorTask.status == TaskStatus.OPEN)
        .values(status=TaskStatus.CLAIMED, claimed_by=user.id, claimed_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.refresh(task)
    if claimed != 1:
        if task.status == TaskStatus.CLAIMED:
            owner = session.get(User, task.claimed_by) if task.claimed_by else None
            raise Conflict(f"already claimed by {owner.username if owner else 'someone else'}")
        raise Conflict(f"the task is {task.status.value}")
    return task


def complete(session: Session, *, task: OperatorTask, user: User, outcome: TaskOutcome, notes: str) -> OperatorTask:
    """Record the call and its outcome. A call that reached the client counts as contact."""
    if task.status not in ACTIVE:
        raise Conflict(f"the task is {task.status.value}")
    # Another operator's claimed task is theirs; a supervisor or admin may complete it for them.
    if task.status == TaskStatus.CLAIMED and task.claimed_by != user.id and user.role == Role.OPERATOR:
        raise Conflict("claimed by another operator")
    now = clock.now()
    done = session.execute(
        update(OperatorTask).where(OperatorTask.id == task.id, OperatorTask.status.in_(ACTIVE))
        .values(status=TaskStatus.DONE, active_key=None, completed_by=user.id, completed_at=now,
                outcome=outcome.value, notes=notes, claimed_by=task.claimed_by or user.id,
                claimed_at=task.claimed_at or now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if done != 1:
        raise Conflict("the task was closed meanwhile")
    session.refresh(task)
    if outcome in CONTACT_OUTCOMES and task.client_id is not None:
        client = session.get(Client, task.client_id)
        if client is not None:
            client.last_contact_at = max(client.last_contact_at or now, now)
    return task


def list_tasks(
    session: Session, *, status: Sequence[TaskStatus] | None = None, kind: TaskKind | None = None,
    client_id: int | None = None, limit: int = 100, offset: int = 0,
) -> Sequence[OperatorTask]:
    query = select(OperatorTask).order_by(OperatorTask.due_at, OperatorTask.id).limit(limit).offset(offset)
    if status:
        query = query.where(OperatorTask.status.in_(status))
    if kind is not None:
        query = query.where(OperatorTask.kind == kind)
    if client_id is not None:
        query = query.where(OperatorTask.client_id == client_id)
    return session.scalars(query).all()


def count_active(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(OperatorTask).where(OperatorTask.status.in_(ACTIVE))) or 0


def active_mark(session: Session) -> tuple[int | None, int]:
    """(newest id, count) of the open or claimed tasks: a change in either is a change (the live feed)."""
    newest, count = session.execute(select(func.max(OperatorTask.id), func.count(OperatorTask.id))
                                    .where(OperatorTask.status.in_(ACTIVE))).one()
    return newest, count
