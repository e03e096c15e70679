"""Device care and welfare jobs: what the scheduler runs to open (and close) tasks, work orders and
technical incidents. docs/device-care.md explains the rules.

Every job is one transaction that reads the state, opens what is missing and closes what is no
longer needed. Running it twice, or in two processes at once, changes nothing more:
- opening goes through a unique `active_key` (a SAVEPOINT insert; the loser of a race gets None),
- closing is a conditional UPDATE (`... AND status is still active`), so it happens once,
- on PostgreSQL a transaction-level advisory lock per job lets only one process run a job at a
  time, so the others do not even do the work (the unique keys stay the guarantee).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import clock, metrics
from alarmcentre.clients.models import Client, ClientStatus
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.devices import service as devices
from alarmcentre.devices.catalogue import supervision_window_s
from alarmcentre.devices.models import Device, DeviceAssignment, DeviceStatus
from alarmcentre.devices.publisher import ConfigPublisher
from alarmcentre.incidents.models import TECHNICAL_PRIORITY, Incident, IncidentKind, IncidentStatus, TimelineKind
from alarmcentre.incidents.service import append_timeline, silent_key
from alarmcentre.ingest.sessions import listening_since
from alarmcentre.tasks import service as tasks
from alarmcentre.tasks.models import OperatorTask, TaskKind
from alarmcentre.visits import service as visits
from alarmcentre.workorders import service as workorders
from alarmcentre.workorders.models import WorkOrder, WorkOrderKind

log = logging.getLogger(__name__)

Job = Callable[[Session, Settings, datetime], int]


def run_job(factory: sessionmaker[Session], name: str, job: Job, *, settings: Settings) -> int:
    """Run one job in one transaction, unless another process is running it right now (PostgreSQL)."""
    with transaction(factory, writes=True) as session:
        if session.get_bind().dialect.name == "postgresql":
            got = session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                 {"k": zlib.crc32(f"alarmcentre:{name}".encode())})
            if not got:
                return 0
        return job(session, settings, clock.now())


def local_time(at: datetime, settings: Settings) -> datetime:
    """A UTC time as staff read it (Europe/Riga by default: EET/EEST)."""
    return at.astimezone(ZoneInfo(settings.local_timezone))


def _assigned_since(session: Session, device_ids: list[int]) -> dict[int, datetime]:
    if not device_ids:
        return {}
    rows = session.execute(select(DeviceAssignment.device_id, func.max(DeviceAssignment.assigned_at))
                           .where(DeviceAssignment.unassigned_at.is_(None),
                                  DeviceAssignment.device_id.in_(device_ids))
                           .group_by(DeviceAssignment.device_id)).all()
    return {device_id: at for device_id, at in rows}


# -- welfare checks ----------------------------------------------------------------------


def welfare_due_at(client: Client, settings: Settings) -> datetime:
    """Two weeks after the last contact (or the start of the service), as an exact UTC duration:
    a DST change in between moves the local wall-clock time by an hour, never the interval."""
    return (client.last_contact_at or client.created_at) + timedelta(days=settings.welfare_check_days)


def welfare_checks(session: Session, settings: Settings, now: datetime) -> int:
    opened = 0
    cutoff = now - timedelta(days=settings.welfare_check_days)
    reference = func.coalesce(Client.last_contact_at, Client.created_at)
    for client in session.scalars(select(Client).where(Client.status == ClientStatus.ACTIVE, reference <= cutoff)
                                  .order_by(Client.id)):
        due = welfare_due_at(client, settings)
        task = tasks.open_task(session, kind=TaskKind.WELFARE_CHECK, client_id=client.id, due_at=due,
                               details={"last_contact_at": client.last_contact_at.isoformat()
                                        if client.last_contact_at else None})
        if task is not None:
            opened += 1
            metrics.TASKS_OPENED.labels(TaskKind.WELFARE_CHECK.value).inc()
    # Close checks that are no longer needed: the person was heard, or the service paused or ended.
    for task in _active_tasks(session, TaskKind.WELFARE_CHECK):
        client = session.get(Client, task.client_id) if task.client_id else None
        reason = None
        if client is None or client.status != ClientStatus.ACTIVE:
            reason = f"client_{client.status.value}" if client else "client_gone"
        elif welfare_due_at(client, settings) > now:
            reason = "contact_received"
        if reason and task.active_key:
            tasks.close_active(session, key=task.active_key, reason=reason)
    return opened


def _active_tasks(session: Session, kind: TaskKind) -> list[OperatorTask]:
    return list(session.scalars(select(OperatorTask).where(OperatorTask.kind == kind,
                                                           OperatorTask.status.in_(tasks.ACTIVE))))


def _active_orders(session: Session, kind: WorkOrderKind) -> list[WorkOrder]:
    return list(session.scalars(select(WorkOrder).where(WorkOrder.kind == kind,
                                                        WorkOrder.status.in_(workorders.ACTIVE))))


# -- supervision -------------------------------------------------------------------------


def supervise_devices(session: Session, settings: Settings, now: datetime) -> int:
    """Open one device_silent incident per silence (or offline status); close it when heard again."""
    # A device is silent only if it was not heard for a whole window while the centre was listening:
    # after the centre itself was away (a restart, an ingest outage) it waits a window before judging.
    listening = listening_since(session, now)
    installed = list(session.scalars(select(Device).where(Device.status == DeviceStatus.INSTALLED)))
    since = _assigned_since(session, [d.id for d in installed])
    active = {i.device_id: i for i in session.scalars(select(Incident).where(
        Incident.kind == IncidentKind.DEVICE_SILENT, Incident.status != IncidentStatus.RESOLVED))}
    opened = 0
    for device in installed:
        window = supervision_window_s(model=device.model, heartbeat_interval_s=device.heartbeat_interval_s,
                                      tolerance=settings.supervision_tolerance)
        reference = device.last_seen_at or since.get(device.id) or device.created_at
        # No ingest alive: nobody hears the devices. That is one system fault (IngestNotRunning), not
        # thousands of silent devices; nothing new is opened until an ingest is back.
        silent = listening is not None and now - max(reference, listening) > timedelta(seconds=window)
        # The last will (or a clean "offline"): flagged at once, not after the window.
        offline = not device.online and device.online_changed_at is not None
        incident = active.pop(device.id, None)
        if silent or offline:
            if incident is None:
                problem_since = reference if silent else device.online_changed_at
                assert problem_since is not None
                if _open_silent(session, device, now=now, window=window, reason="silent" if silent else "offline",
                                since=problem_since):
                    opened += 1
        elif incident is not None:
            _restore(session, incident, now=now, details={"last_seen_at": _iso(device.last_seen_at)})
    for incident in active.values():  # devices no longer installed: nothing left to supervise
        _restore(session, incident, now=now, details={"reason": "device no longer installed"}, outcome="withdrawn")
    metrics.DEVICES_SILENT.set(session.scalar(select(func.count()).select_from(Incident).where(
        Incident.kind == IncidentKind.DEVICE_SILENT, Incident.status != IncidentStatus.RESOLVED)) or 0)
    return opened


def _open_silent(session: Session, device: Device, *, now: datetime, window: float, reason: str,
                 since: datetime) -> bool:
    # An operator resolved this silence already (e.g. "the client is in hospital"): not again
    # until the device is heard and falls silent anew.
    handled = session.scalar(select(Incident.id).where(
        Incident.device_id == device.id, Incident.kind == IncidentKind.DEVICE_SILENT, Incident.opened_at > since))
    if handled is not None:
        return False
    incident = Incident(client_id=device.client_id, device_id=device.id, kind=IncidentKind.DEVICE_SILENT,
                        priority=TECHNICAL_PRIORITY, status=IncidentStatus.OPEN, active_key=silent_key(device.id),
                        opened_at=now, last_signal_at=now, signal_count=1)
    try:
        with session.begin_nested():
            session.add(incident)
            session.flush()
    except IntegrityError:
        return False  # another scheduler opened it a moment ago
    append_timeline(session, incident, kind=TimelineKind.OPENED, actor="system", at=now, details={
        "reason": reason, "device": device.serial, "last_seen_at": _iso(device.last_seen_at),
        "window_s": window, "since": since.isoformat()})
    metrics.INCIDENTS_RAISED.labels(IncidentKind.DEVICE_SILENT.value).inc()
    log.warning("device %s %s (window %.0f s): incident %d", device.serial, reason, window, incident.id)
    return True


def _restore(session: Session, incident: Incident, *, now: datetime, details: dict[str, object],
             outcome: str = "restored") -> None:
    closed = session.execute(
        update(Incident).where(Incident.id == incident.id, Incident.status != IncidentStatus.RESOLVED)
        .values(status=IncidentStatus.RESOLVED, resolved_at=now, outcome=outcome, active_key=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if closed == 1:
        append_timeline(session, incident, kind=TimelineKind.RESTORED, actor="system", at=now, details=details)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


# -- batteries ---------------------------------------------------------------------------


def batteries(session: Session, settings: Settings, now: datetime) -> int:
    """Low battery: one free replacement work order and a notice in the operators' queue.
    A new battery (level back at battery_ok_percent) closes both."""
    opened = 0
    for device in session.scalars(select(Device).where(Device.status == DeviceStatus.INSTALLED,
                                                       Device.battery_low.is_(True))):
        order = workorders.open_order(
            session, kind=WorkOrderKind.BATTERY_REPLACEMENT, device=device,
            summary=f"replace the battery of {device.serial} (free of charge)",
            details={"battery_level": device.battery_level, "reported_at": _iso(device.battery_at)})
        if order is not None:
            opened += 1
            metrics.WORK_ORDERS_OPENED.labels(WorkOrderKind.BATTERY_REPLACEMENT.value).inc()
            if device.client_id is not None and tasks.open_task(
                    session, kind=TaskKind.BATTERY_NOTICE, client_id=device.client_id, device_id=device.id,
                    key_device=True, due_at=now, details={"work_order_id": order.id,
                                                          "battery_level": device.battery_level}):
                metrics.TASKS_OPENED.labels(TaskKind.BATTERY_NOTICE.value).inc()
    for order in _active_orders(session, WorkOrderKind.BATTERY_REPLACEMENT):
        device = session.get(Device, order.device_id)
        if device is not None and not device.battery_low and (device.battery_level or 0) >= settings.battery_ok_percent:
            workorders.close_active(session, kind=WorkOrderKind.BATTERY_REPLACEMENT, device_id=device.id,
                                    resolution=f"new battery reported: {device.battery_level} %")
            tasks.close_active(session, key=tasks.task_key(TaskKind.BATTERY_NOTICE, device_id=device.id),
                               reason="battery_replaced")
    return opened


# -- mains power -------------------------------------------------------------------------


def mains_power(session: Session, settings: Settings, now: datetime) -> int:
    """Mains lost for longer than the grace: phone the client (the service must inform and help)."""
    opened = 0
    grace = timedelta(seconds=settings.power_loss_grace_s)
    for device in session.scalars(select(Device).where(
            Device.status == DeviceStatus.INSTALLED, Device.mains_power.is_(False),
            Device.mains_changed_at <= now - grace)):
        assert device.mains_changed_at is not None
        if tasks.open_task(session, kind=TaskKind.POWER_LOSS, client_id=device.client_id, device_id=device.id,
                           key_device=True, due_at=device.mains_changed_at + grace,
                           details={"power_lost_at": device.mains_changed_at.isoformat(), "device": device.serial}):
            opened += 1
            metrics.TASKS_OPENED.labels(TaskKind.POWER_LOSS.value).inc()
    for task in _active_tasks(session, TaskKind.POWER_LOSS):
        device = session.get(Device, task.device_id) if task.device_id else None
        if task.active_key and (device is None or device.mains_power is not False
                                or device.status != DeviceStatus.INSTALLED):
            tasks.close_active(session, key=task.active_key, reason="power_restored")
    return opened


# -- programming -------------------------------------------------------------------------


def config_state(session: Session, settings: Settings, now: datetime) -> int:
    """A configuration refused, or not applied within config_pending_hours: a work order; in sync closes it."""
    opened = 0
    cutoff = now - timedelta(hours=settings.config_pending_hours)
    behind = (func.coalesce(Device.reported_config_version, 0) < Device.desired_config_version)
    for device in session.scalars(select(Device).where(Device.status != DeviceStatus.RETIRED, behind)):
        state = devices.config_state(device)
        late = device.config_changed_at is not None and device.config_changed_at <= cutoff
        if state == devices.ConfigState.FAILED or late:
            order = workorders.open_order(
                session, kind=WorkOrderKind.CONFIG_PENDING, device=device,
                summary=f"configuration v{device.desired_config_version} of {device.serial} is {state.value}",
                details={"state": state.value, "desired_version": device.desired_config_version,
                         "reported_version": device.reported_config_version, "error": device.config_error,
                         "changed_at": _iso(device.config_changed_at)})
            if order is not None:
                opened += 1
                metrics.WORK_ORDERS_OPENED.labels(WorkOrderKind.CONFIG_PENDING.value).inc()
    for order in _active_orders(session, WorkOrderKind.CONFIG_PENDING):
        device = session.get(Device, order.device_id)
        if device is not None and devices.config_state(device) == devices.ConfigState.IN_SYNC:
            workorders.close_active(session, kind=WorkOrderKind.CONFIG_PENDING, device_id=device.id,
                                    resolution=f"device applied configuration v{device.reported_config_version}")
    return opened


def republish_configs(factory: sessionmaker[Session], publisher: ConfigPublisher, *, limit: int = 500) -> int:
    """Publish desired configurations the broker does not hold yet (the broker was down at save time), and
    again to a device that reconnected since with the configuration still pending: a retained message is
    kept per node on a RabbitMQ cluster, so a device that comes back through another node would not get it
    (docs/brokers.md). A device that refused the version is not sent it again."""
    pending_since_reconnect = and_(
        Device.desired_config_version > 0,
        func.coalesce(Device.reported_config_version, 0) < Device.desired_config_version,
        func.coalesce(Device.config_failed_version, 0) != Device.desired_config_version,
        Device.config_published_at.is_not(None), Device.connected_at > Device.config_published_at)
    with factory() as session:
        due = session.execute(select(Device.id, Device.serial, Device.desired_config_version, Device.desired_config)
                              .where(or_(Device.config_published_version < Device.desired_config_version,
                                         pending_since_reconnect),
                                     Device.status != DeviceStatus.RETIRED)
                              .order_by(Device.id).limit(limit)).all()
    metrics.CONFIGS_UNPUBLISHED.set(len(due))
    published = 0
    for device_id, serial, version, config in due:
        if not publisher.publish_config(serial, version, config):
            break  # the broker is away: try again next run
        with transaction(factory, writes=True) as session:
            devices.mark_published(session, device_id=device_id, version=version)
        published += 1
    return published


# -- monthly test ------------------------------------------------------------------------


def monthly_test_due(session: Session, settings: Settings, now: datetime) -> list[tuple[Device, datetime]]:
    """Installed devices with no test call for monthly_test_days (counted from installation if never)."""
    installed = list(session.scalars(select(Device).where(Device.status == DeviceStatus.INSTALLED)
                                     .order_by(Device.serial)))
    since = _assigned_since(session, [d.id for d in installed])
    cutoff = now - timedelta(days=settings.monthly_test_days)
    due = []
    for device in installed:
        reference = device.last_test_call_at or since.get(device.id) or device.created_at
        if reference <= cutoff:
            due.append((device, reference))
    return due


def monthly_test_reminders(session: Session, settings: Settings, now: datetime) -> int:
    opened = 0
    due = monthly_test_due(session, settings, now)
    due_ids = {device.id for device, _ in due}
    for device, reference in due:
        if tasks.open_task(session, kind=TaskKind.MONTHLY_TEST_REMINDER, client_id=device.client_id,
                           device_id=device.id, key_device=True,
                           due_at=reference + timedelta(days=settings.monthly_test_days),
                           details={"last_test_call_at": _iso(device.last_test_call_at), "device": device.serial}):
            opened += 1
            metrics.TASKS_OPENED.labels(TaskKind.MONTHLY_TEST_REMINDER.value).inc()
    for task in _active_tasks(session, TaskKind.MONTHLY_TEST_REMINDER):
        if task.active_key and task.device_id not in due_ids:
            tasks.close_active(session, key=task.active_key, reason="test_call_received")
    return opened


def refresh_gauges(session: Session, settings: Settings, now: datetime) -> int:
    task_counts = dict(session.execute(select(OperatorTask.kind, func.count()).where(
        OperatorTask.status.in_(tasks.ACTIVE)).group_by(OperatorTask.kind)).all())
    for kind in TaskKind:
        metrics.TASKS_ACTIVE.labels(kind.value).set(task_counts.get(kind, 0))
    order_counts = dict(session.execute(select(WorkOrder.kind, func.count()).where(
        WorkOrder.status.in_(workorders.ACTIVE)).group_by(WorkOrder.kind)).all())
    for order_kind in WorkOrderKind:
        metrics.WORK_ORDERS_ACTIVE.labels(order_kind.value).set(order_counts.get(order_kind, 0))
    return 0


CARE_JOBS: dict[str, Job] = {
    "welfare_checks": welfare_checks,
    "batteries": batteries,
    "mains_power": mains_power,
    "config_state": config_state,
    "monthly_test_reminders": monthly_test_reminders,
    "care_gauges": refresh_gauges,
    "missed_visits": visits.missed_visits,
}
