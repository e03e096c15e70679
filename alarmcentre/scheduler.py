"""Periodic jobs (APScheduler). Jobs keep no state in memory: whatever must happen is in the database.

Issue-by-issue more jobs arrive here (escalation sweep, welfare checks, device supervision);
for now the scheduler keeps the fleet gauges current for Prometheus.
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
from alarmcentre.devices.models import Device, DeviceStatus

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


def build_scheduler(factory: sessionmaker[Session]) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(
        _guarded("fleet_gauges", lambda: refresh_fleet_gauges(factory)),
        "interval", seconds=15, id="fleet_gauges", max_instances=1, coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    return scheduler
