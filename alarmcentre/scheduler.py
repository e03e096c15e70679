"""Periodic jobs (APScheduler). Jobs keep no state in memory: whatever must happen is in the database.

Jobs: the escalation sweep (due timers), the SMS sender (queued texts), fleet gauges, and device
care (alarmcentre/care.py): supervision, welfare checks, batteries, mains power, programming
state, configuration republishing, monthly test reminders, missed home-care visits (alarmcentre/visits).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import care, metrics
from alarmcentre.config import Settings
from alarmcentre.devices.models import Device, DeviceStatus
from alarmcentre.devices.publisher import ConfigPublisher
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


def _guarded(name: str, job: Callable[[], object]) -> Callable[[], None]:
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
    factory: sessionmaker[Session], *, settings: Settings, sender: SmsSender | None = None,
    publisher: ConfigPublisher | None = None,
) -> BackgroundScheduler:
    """The jobs. Several scheduler processes may run: every job is safe to run concurrently.

    `publisher` republishes configurations the broker missed; without one (and without
    settings.mqtt_url) that job does not run, and the unpublished count shows in metrics."""
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

    def care_job(name: str, job: care.Job) -> Callable[[], None]:
        return _guarded(name, lambda: care.run_job(factory, name, job, settings=settings))

    scheduler.add_job(care_job("supervision", care.supervise_devices), "interval",
                      seconds=settings.supervision_interval_s, id="supervision", max_instances=1, coalesce=True,
                      next_run_time=datetime.now(UTC))
    for name, job in care.CARE_JOBS.items():
        scheduler.add_job(care_job(name, job), "interval", seconds=settings.care_interval_s, id=name,
                          max_instances=1, coalesce=True, next_run_time=datetime.now(UTC))
    if publisher is None and settings.mqtt_url:
        publisher = ConfigPublisher(settings.mqtt_url, timeout_s=settings.config_publish_timeout_s)
    if publisher is not None:
        config_publisher = publisher
        scheduler.add_job(_guarded("config_republish", lambda: care.republish_configs(factory, config_publisher)),
                          "interval", seconds=settings.care_interval_s, id="config_republish", max_instances=1,
                          coalesce=True, next_run_time=datetime.now(UTC))
    else:
        log.warning("scheduler: no broker configured (ALARMCENTRE_MQTT_URL): configurations that could not be "
                    "published at save time are not republished by this process")
    return scheduler
