"""Periodic jobs (APScheduler). Jobs keep no state in memory: whatever must happen is in the database.

Jobs: the escalation sweep (due timers), the SMS sender (queued texts), fleet gauges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import metrics
from alarmcentre.config import Settings
from alarmcentre.devices.models import Device, DeviceStatus
from alarmcentre.dispatch.escalation import step_failed, sweep
from alarmcentre.dispatch.sms import SmsSender, build_provider

log = logging.getLogger(__name__)


def refresh_fleet_gauges(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        online = session.scalar(
            select(func.count()).select_from(Device)
            .where(Device.online.is_(True), Device.status != DeviceStatus.RETIRED)
        )
    metrics.DEVICES_ONLINE.set(online or 0)


def _guarded(name: str, job: Callable[[], None]) -> Callable[[], None]:
    """A failing job logs and tries again next time; it never kills the scheduler."""

    def run() -> None:
        try:
            job()
        except Exception:
            log.exception("scheduler: job %s failed", name)
            return
        metrics.SCHEDULER_LAST_RUN.labels(name).set(time.time())

    return run


def build_scheduler(
    factory: sessionmaker[Session], *, settings: Settings, sender: SmsSender | None = None
) -> BackgroundScheduler:
    """The jobs. Several scheduler processes may run: every job is safe to run concurrently."""
    scheduler = BackgroundScheduler(timezone="UTC")
    sender = sender or SmsSender(factory=factory, provider=build_provider(settings), settings=settings,
                                 on_failed=step_failed)
    every = settings.sweep_interval_s
    scheduler.add_job(_guarded("escalation_sweep", lambda: sweep(factory, settings=settings)),
                      "interval", seconds=every, id="escalation_sweep", max_instances=1, coalesce=True,
                      next_run_time=datetime.now(UTC))
    scheduler.add_job(_guarded("sms_sender", lambda: sender.send_due()),
                      "interval", seconds=every, id="sms_sender", max_instances=1, coalesce=True,
                      next_run_time=datetime.now(UTC))
    scheduler.add_job(
        _guarded("fleet_gauges", lambda: refresh_fleet_gauges(factory)),
        "interval", seconds=15, id="fleet_gauges", max_instances=1, coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    return scheduler
