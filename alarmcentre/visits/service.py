"""Home-care visits: import from the home-care service, linking to dispatches and device events, missed visits.

Functions take the session first and never commit. docs/visits.md explains the rules.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alarmcentre import clock, metrics
from alarmcentre.clients.models import Client
from alarmcentre.config import Settings
from alarmcentre.dispatch.models import IncidentStep
from alarmcentre.municipalities.models import Municipality
from alarmcentre.tasks import service as tasks
from alarmcentre.tasks.models import OperatorTask, TaskKind
from alarmcentre.visits.models import HomeCareWorker, TimeSource, Visit, VisitSource, VisitStatus
from alarmcentre.visits.schemas import BatchIn, Counts, ExportRow, ImportReport, RowError, VisitIn, WorkerIn

log = logging.getLogger(__name__)

# Incident steps whose acceptance is a home-care visit (a contact kind and a shared-resource kind).
HOME_CARE_STEP_KINDS = frozenset({"home_care_worker", "home_care_on_duty"})
# A carer_arrived event belongs to a planned visit whose window opens within this of the event.
DEVICE_MATCH_WINDOW = timedelta(hours=3)
# The missed-visit job looks back this far: an old schedule imported late raises no tasks.
MISSED_LOOKBACK = timedelta(days=1)
# Who is trusted over whom for an actual time: the device over an operator over an SMS or an import.
_TRUST = {TimeSource.IMPORT: 1, TimeSource.SMS: 1, TimeSource.OPERATOR: 2, TimeSource.DEVICE: 3}
CSV_COLUMNS = ("external_id", "client_id", "worker_external_id", "planned_start", "planned_end", "tasks", "notes",
               "status")
OPEN_STATUSES = (VisitStatus.PLANNED, VisitStatus.MISSED)


def missed_key(visit_id: int) -> str:
    return f"{TaskKind.MISSED_VISIT.value}:visit:{visit_id}"


# -- import ------------------------------------------------------------------------------


def upsert_worker(session: Session, row: WorkerIn, *, scope: int | None = None) -> str:
    """'created', 'updated' or 'unchanged': the same row twice changes nothing. With `scope` (the
    municipality of the caller's key) a new worker is that municipality's, and only its own workers
    may be changed: a worker's phone receives dispatch texts."""
    worker = session.scalar(select(HomeCareWorker).where(HomeCareWorker.external_id == row.external_id))
    values = row.model_dump(exclude={"external_id"})
    if worker is None:
        session.add(HomeCareWorker(external_id=row.external_id, municipality_id=scope, **values))
        session.flush()
        return "created"
    if scope is not None and worker.municipality_id != scope:
        raise ValueError(f"worker {row.external_id!r} belongs to another municipality")
    changed = {name: value for name, value in values.items() if getattr(worker, name) != value}
    for name, value in changed.items():
        setattr(worker, name, value)
    return "updated" if changed else "unchanged"


def upsert_visit(session: Session, row: VisitIn, *, scope: int | None = None) -> str:
    """'created', 'updated' or 'unchanged'; ValueError names what the row refers to that does not exist.
    With `scope` (the caller key's municipality) only that municipality's clients and workers exist.

    The service plans; the centre records what happened: an import changes the plan, the tasks and
    the notes, and cancels (or restores) a visit not yet begun, but never the actual times."""
    client = session.get(Client, row.client_id)
    if client is None or (scope is not None and client.municipality_id != scope):
        raise ValueError(f"client {row.client_id} not found")
    worker = None
    if row.worker_external_id is not None:
        worker = session.scalar(select(HomeCareWorker).where(HomeCareWorker.external_id == row.worker_external_id))
        if worker is None or (scope is not None and worker.municipality_id not in (scope, None)):
            raise ValueError(f"worker {row.worker_external_id!r} not found (send workers first)")
    values: dict[str, Any] = {
        "client_id": row.client_id, "worker_id": worker.id if worker else None,
        "worker_name": worker.name if worker else "", "planned_start": row.planned_start,
        "planned_end": row.planned_end, "tasks": [task.value for task in row.tasks], "notes": row.notes,
    }
    visit = session.scalar(select(Visit).where(Visit.external_id == row.external_id))
    if visit is not None and scope is not None and _municipality_of(session, visit.client_id) != scope:
        raise ValueError(f"visit {row.external_id!r} belongs to another municipality")
    if visit is None:
        status = VisitStatus.CANCELLED if row.status == "cancelled" else VisitStatus.PLANNED
        session.add(Visit(external_id=row.external_id, source=VisitSource.SCHEDULE, status=status, **values))
        session.flush()
        return "created"
    changed = {name: value for name, value in values.items() if getattr(visit, name) != value}
    if row.status == "cancelled" and visit.status in OPEN_STATUSES:
        changed["status"] = VisitStatus.CANCELLED
    elif row.status == "planned" and visit.status == VisitStatus.CANCELLED:
        changed["status"] = VisitStatus.PLANNED
    elif ("planned_start" in changed and visit.status == VisitStatus.MISSED and visit.arrived_at is None):
        changed["status"] = VisitStatus.PLANNED  # rescheduled: the missed-visit job judges it anew
    for name, value in changed.items():
        setattr(visit, name, value)
    if changed.get("status") in (VisitStatus.CANCELLED, VisitStatus.PLANNED):
        tasks.close_active(session, key=missed_key(visit.id), reason=f"visit_{changed['status'].value}")
    return "updated" if changed else "unchanged"


def _municipality_of(session: Session, client_id: int) -> int | None:
    return session.scalar(select(Client.municipality_id).where(Client.id == client_id))


def import_batch(session: Session, batch: BatchIn, *, scope: int | None = None) -> ImportReport:
    """Workers first, then visits; a row that cannot be stored is reported, the others are stored.
    `scope`: the municipality of the caller's key (None: every one)."""
    report = ImportReport()
    for index, worker in enumerate(batch.workers):
        _count(report.workers, _in_savepoint(session, report, index, worker.external_id,
                                             lambda w=worker: upsert_worker(session, w, scope=scope)))
    for index, visit in enumerate(batch.visits):
        _count(report.visits, _in_savepoint(session, report, index, visit.external_id,
                                            lambda v=visit: upsert_visit(session, v, scope=scope)))
    return report


def import_csv(session: Session, data: str, *, settings: Settings, scope: int | None = None) -> ImportReport:
    """A week's schedule as CSV (CSV_COLUMNS; tasks separated by ';'; times ISO 8601, local time if no
    offset). Each bad line is reported with its line number (the header is line 1); good lines are stored."""
    report = ImportReport()
    reader = csv.DictReader(io.StringIO(data))
    missing = [name for name in ("external_id", "client_id", "planned_start") if name not in (reader.fieldnames or [])]
    if missing:
        report.errors.append(RowError(row=1, error=f"header lacks column(s): {', '.join(missing)}"))
        return report
    zone = ZoneInfo(settings.local_timezone)
    for record in reader:
        line = reader.line_num
        external_id = (record.get("external_id") or "").strip() or None
        try:
            row = _csv_row(record, zone)
        except (ValidationError, ValueError) as exc:
            report.errors.append(RowError(row=line, external_id=external_id, error=_explain(exc)))
            continue
        _count(report.visits, _in_savepoint(session, report, line, external_id,
                                            lambda r=row: upsert_visit(session, r, scope=scope)))
    return report


def _csv_row(record: dict[str, str | None], zone: ZoneInfo) -> VisitIn:
    if None in record:
        raise ValueError("more fields than the header has columns")

    def cell(name: str) -> str:
        return (record.get(name) or "").strip()

    def when(name: str) -> datetime | None:
        text = cell(name)
        if not text:
            return None
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{name}: not an ISO 8601 time: {text!r}") from None
        return at.replace(tzinfo=zone) if at.tzinfo is None else at

    return VisitIn.model_validate({
        "external_id": cell("external_id"), "client_id": cell("client_id"),
        "worker_external_id": cell("worker_external_id") or None, "planned_start": when("planned_start"),
        "planned_end": when("planned_end"), "tasks": [t.strip() for t in cell("tasks").split(";") if t.strip()],
        "notes": cell("notes"), "status": cell("status") or "planned",
    })


def _in_savepoint(session: Session, report: ImportReport, row: int, external_id: str | None,
                  work: Any) -> str | None:
    try:
        with session.begin_nested():
            return str(work())
    except ValueError as exc:
        report.errors.append(RowError(row=row, external_id=external_id, error=str(exc)))
    except IntegrityError:
        report.errors.append(RowError(row=row, external_id=external_id,
                                      error="stored by another import at the same moment: send it again"))
    return None


def _count(counts: Counts, outcome: str | None) -> None:
    if outcome is not None:
        setattr(counts, outcome, getattr(counts, outcome) + 1)


def _explain(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in exc.errors())
    return str(exc)


# -- actual times ------------------------------------------------------------------------


def record_arrival(session: Session, visit: Visit, *, at: datetime, source: TimeSource) -> bool:
    """Set the arrival unless a more trusted source gave it already; a late arrival closes the missed task."""
    if not _trusted(visit.arrived_source, source):
        return False
    visit.arrived_at, visit.arrived_source = at, source
    if visit.status in (*OPEN_STATUSES, VisitStatus.CANCELLED):
        visit.status = VisitStatus.IN_PROGRESS
    tasks.close_active(session, key=missed_key(visit.id), reason="carer_arrived")
    return True


def record_departure(session: Session, visit: Visit, *, at: datetime, source: TimeSource) -> bool:
    if not _trusted(visit.departed_source, source):
        return False
    visit.departed_at, visit.departed_source = at, source
    visit.status = VisitStatus.DONE
    tasks.close_active(session, key=missed_key(visit.id), reason="visit_done")
    return True


def _trusted(current: TimeSource | None, new: TimeSource) -> bool:
    if current is None:
        return True
    return _TRUST[new] > _TRUST[current] or (new == TimeSource.DEVICE and current == TimeSource.DEVICE)


# -- dispatch ----------------------------------------------------------------------------


def on_step_answer(session: Session, *, incident_id: int, client_id: int | None, step: IncidentStep,
                   answer: str) -> Visit | None:
    """Called by dispatch.escalation.record_answer. A home-care step accepted (or answered 'arrived' or
    'done' without an accept) is a visit linked to the incident; 'arrived' and 'done' set its times."""
    if step.kind not in HOME_CARE_STEP_KINDS or client_id is None or answer == "decline":
        return None
    now = clock.now()
    visit = session.scalar(select(Visit).where(Visit.step_id == step.id))
    if visit is None:
        worker = session.scalar(select(HomeCareWorker).where(HomeCareWorker.phone == step.phone,
                                                             HomeCareWorker.active.is_(True))
                                .order_by(HomeCareWorker.id).limit(1))
        visit = Visit(client_id=client_id, worker_id=worker.id if worker else None,
                      worker_name=worker.name if worker else step.name, source=VisitSource.INCIDENT,
                      status=VisitStatus.PLANNED, planned_start=now, incident_id=incident_id, step_id=step.id,
                      tasks=[], notes="")
        session.add(visit)
        session.flush()
    if answer == "arrived":
        record_arrival(session, visit, at=now, source=TimeSource.SMS)
    elif answer == "done":
        if visit.arrived_at is None and step.arrived_at is not None:
            record_arrival(session, visit, at=step.arrived_at, source=TimeSource.SMS)
        record_departure(session, visit, at=now, source=TimeSource.SMS)
    return visit


def carer_on_site(session: Session, *, incident_id: int) -> Visit | None:
    """The incident's visit with a carer there now (arrived, not departed), earliest first."""
    return session.scalar(select(Visit).where(Visit.incident_id == incident_id,
                                              Visit.status == VisitStatus.IN_PROGRESS,
                                              Visit.arrived_at.is_not(None))
                          .order_by(Visit.arrived_at).limit(1))


# -- device events -----------------------------------------------------------------------


def device_carer_event(session: Session, *, client_id: int, arrived: bool, at: datetime) -> Visit | None:
    """carer_arrived / carer_departed from the client's device: the device is trusted over an SMS.

    Arrival: the client's visit in progress whose arrival only an SMS reported, else the accepted
    dispatch visit or the planned (or missed) visit nearest in time (within DEVICE_MATCH_WINDOW), else
    a new walk-in visit. Departure: the visit in progress, else the visit an SMS already closed."""
    if arrived:
        visit = session.scalar(select(Visit).where(
            Visit.client_id == client_id, Visit.status == VisitStatus.IN_PROGRESS,
            Visit.arrived_source != TimeSource.DEVICE).order_by(Visit.arrived_at.desc()).limit(1))
        if visit is None:
            if session.scalar(select(Visit.id).where(Visit.client_id == client_id,
                                                     Visit.status == VisitStatus.IN_PROGRESS,
                                                     Visit.arrived_at >= at - DEVICE_MATCH_WINDOW)) is not None:
                return None  # the device told us already (a repeated event)
            visit = _nearest_open(session, client_id=client_id, at=at)
        if visit is None:
            visit = Visit(client_id=client_id, source=VisitSource.WALK_IN, status=VisitStatus.PLANNED,
                          planned_start=at, tasks=[], notes="")
            session.add(visit)
            session.flush()
        record_arrival(session, visit, at=at, source=TimeSource.DEVICE)
        return visit
    visit = session.scalar(select(Visit).where(Visit.client_id == client_id, Visit.status == VisitStatus.IN_PROGRESS)
                           .order_by(Visit.arrived_at.desc()).limit(1))
    if visit is None:
        visit = session.scalar(select(Visit).where(
            Visit.client_id == client_id, Visit.status == VisitStatus.DONE, Visit.departed_source != TimeSource.DEVICE,
            Visit.departed_at >= at - DEVICE_MATCH_WINDOW).order_by(Visit.departed_at.desc()).limit(1))
    if visit is None:
        log.info("carer_departed for client %d with no visit in progress: kept in the event log only", client_id)
        return None
    record_departure(session, visit, at=at, source=TimeSource.DEVICE)
    return visit


def _nearest_open(session: Session, *, client_id: int, at: datetime) -> Visit | None:
    candidates = session.scalars(select(Visit).where(
        Visit.client_id == client_id, Visit.status.in_(OPEN_STATUSES),
        or_(Visit.source == VisitSource.INCIDENT,
            Visit.planned_start.between(at - DEVICE_MATCH_WINDOW, at + DEVICE_MATCH_WINDOW)))).all()
    if not candidates:
        return None
    # An accepted dispatch first (someone is on the way because of an alarm), then the nearest plan.
    return min(candidates, key=lambda v: (v.source != VisitSource.INCIDENT,
                                          abs((v.planned_start - at).total_seconds())))


# -- missed visits (a scheduler job, care.py style) --------------------------------------


def missed_visits(session: Session, settings: Settings, now: datetime) -> int:
    """A planned visit with no arrival missed_visit_after_minutes after its window opened: one operator
    task per visit (call the worker, then the client). An arrival, a cancellation or a new time closes it."""
    after = timedelta(minutes=settings.missed_visit_after_minutes)
    opened = 0
    late = session.scalars(select(Visit).where(
        Visit.status == VisitStatus.PLANNED, Visit.source == VisitSource.SCHEDULE, Visit.arrived_at.is_(None),
        Visit.planned_start <= now - after, Visit.planned_start > now - MISSED_LOOKBACK).order_by(Visit.id)).all()
    for visit in late:
        worker = session.get(HomeCareWorker, visit.worker_id) if visit.worker_id else None
        task = tasks.open_task(session, kind=TaskKind.MISSED_VISIT, client_id=visit.client_id,
                               due_at=visit.planned_start + after, key=missed_key(visit.id), details={
                                   "visit_id": visit.id, "external_id": visit.external_id,
                                   "planned_start": visit.planned_start.isoformat(),
                                   "worker": worker.name if worker else visit.worker_name,
                                   "worker_phone": worker.phone if worker else None,
                                   "instruction": "call the worker, then the client"})
        # Conditional: an arrival recorded by ingest meanwhile is not overwritten.
        session.execute(update(Visit).where(Visit.id == visit.id, Visit.status == VisitStatus.PLANNED,
                                            Visit.arrived_at.is_(None))
                        .values(status=VisitStatus.MISSED).execution_options(synchronize_session=False))
        session.expire(visit, ["status"])
        if task is not None:
            opened += 1
            metrics.TASKS_OPENED.labels(TaskKind.MISSED_VISIT.value).inc()
    # Tasks whose visit began, was cancelled or moved meanwhile (arrival closes at once; this is the backstop).
    for task in session.scalars(select(OperatorTask).where(OperatorTask.kind == TaskKind.MISSED_VISIT,
                                                           OperatorTask.status.in_(tasks.ACTIVE))):
        visit = session.get(Visit, task.details.get("visit_id")) if task.details.get("visit_id") else None
        if task.active_key and (visit is None or visit.status != VisitStatus.MISSED):
            tasks.close_active(session, key=task.active_key,
                               reason=f"visit_{visit.status.value}" if visit else "visit_gone")
    return opened


# -- reading -----------------------------------------------------------------------------


def client_visits(session: Session, *, client_id: int, limit: int = 10) -> tuple[Sequence[Visit], Visit | None]:
    """The last visits (window opened, newest first) and the next planned one."""
    now = clock.now()
    last = session.scalars(select(Visit).where(Visit.client_id == client_id, Visit.planned_start <= now)
                           .order_by(Visit.planned_start.desc(), Visit.id.desc()).limit(limit)).all()
    upcoming = session.scalar(select(Visit).where(Visit.client_id == client_id, Visit.status == VisitStatus.PLANNED,
                                                  Visit.planned_start > now)
                              .order_by(Visit.planned_start, Visit.id).limit(1))
    return last, upcoming


def export_made(session: Session, *, start: datetime, end: datetime, municipality_id: int | None = None,
                limit: int = 10000) -> list[ExportRow]:
    """Visits made (done) whose arrival (or planned start) falls in [start, end), for the social service."""
    when = func.coalesce(Visit.arrived_at, Visit.planned_start)
    query = (select(Visit, Client, Municipality, HomeCareWorker)
             .join(Client, Client.id == Visit.client_id)
             .join(Municipality, Municipality.id == Client.municipality_id)
             .outerjoin(HomeCareWorker, HomeCareWorker.id == Visit.worker_id)
             .where(Visit.status == VisitStatus.DONE, when >= start, when < end)
             .order_by(when, Visit.id).limit(limit))
    if municipality_id is not None:
        query = query.where(Client.municipality_id == municipality_id)
    rows = []
    for visit, client, municipality, worker in session.execute(query).all():
        minutes = (int((visit.departed_at - visit.arrived_at).total_seconds() // 60)
                   if visit.arrived_at and visit.departed_at else None)
        rows.append(ExportRow(
            visit_id=visit.id, external_id=visit.external_id, client_id=client.id, client_name=client.full_name,
            municipality=municipality.name, worker_external_id=worker.external_id if worker else None,
            worker_name=worker.name if worker else visit.worker_name, source=visit.source,
            planned_start=visit.planned_start, planned_end=visit.planned_end, arrived_at=visit.arrived_at,
            departed_at=visit.departed_at, duration_minutes=minutes, tasks=list(visit.tasks), notes=visit.notes,
            incident_id=visit.incident_id))
    return rows


# What makes a spreadsheet read a cell as a formula (OWASP CSV injection), tab and CR included.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(str(item) for item in value)
    if isinstance(value, str) and value[:1] in FORMULA_STARTS:
        return "'" + value  # a spreadsheet must not run a name or a note as a formula
    return value


def export_csv(rows: list[ExportRow]) -> str:
    out = io.StringIO()
    fields = list(ExportRow.model_fields)
    writer = csv.writer(out)
    writer.writerow(fields)
    for row in rows:
        data = row.model_dump(mode="json")
        writer.writerow([csv_cell(data[f]) for f in fields])
    return out.getvalue()
