"""Periodic jobs (APScheduler). Jobs keep no state in memory: whatever must happen is in the database.

Jobs: the escalation sweep (due timers), the SMS sender (queued texts), the voice dialer (plan steps
that call), fleet gauges, and device
care (alarmcentre/care.py): supervision, welfare checks, batteries, mains power, programming
state, configuration republishing, monthly test reminders, missed home-care visits (alarmcentre/visits).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import care, gauges, metrics
from alarmcentre.config import Settings
from alarmcentre.devices.models import Device, DeviceStatus
from alarmcentre.devices.publisher import ConfigPublisher
from alarmcentre.dispatch.escalation import step_failed, sweep
from alarmcentre.dispatch.sms import SmsSender, build_provider
from alarmcentre.health import HealthCheck, freshness_check
from alarmcentre.voice.dispatch import VoiceDialer
from alarmcentre.voice.provider import build_voice

log = logging.getLogger(__name__)

# Unix time each job last finished without error in this process (as SCHEDULER_LAST_RUN), for readiness.
LAST_SUCCESS: dict[str, float] = {}


def refresh_fleet_gauges(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        online = session.scalar(
            select(func.count()).select_from(Device)
            .where(Device.online.is_(True), Device.status != DeviceStatus.RETIRED)
        )
    metrics.DEVICES_ONLINE.set(online or 0)
    # Also here, not only at the API's scrape: a deployment may scrape the scheduler alone.
    gauges.refresh_incident_gauges(factory)


def _guarded(name: str, job: Callable[[], object]) -> Callable[[], None]:
    """A failing job logs and tries again next time; it never kills the scheduler."""

    def run() -> None:
        try:
            job()
        except Exception:
            log.exception("scheduler: job %s failed", name)
            return
        LAST_SUCCESS[name] = finished = time.time()
        metrics.SCHEDULER_LAST_RUN.labels(name).set(finished)

    return run


def readiness_check(scheduler: BackgroundScheduler, *, max_age_s: float) -> HealthCheck:
    """The scheduler runs, and its escalation sweep (every timer: alerts, escalations) has finished
    within `max_age_s`. A sweep that keeps failing (e.g. the database is down) fails this too."""
    started = time.time()
    sweep_fresh = freshness_check(lambda: _since(LAST_SUCCESS.get("escalation_sweep"), started),
                                  max_age_s=max_age_s, what="escalation sweep", since=started)

    def check() -> str | None:
        return sweep_fresh() if scheduler.running else "scheduler is not running"

    return check


def _since(last: float | None, started: float) -> float | None:
    # A run of another scheduler that this process ran earlier (tests) does not count.
    return last if last is not None and last >= started else None


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
    dialer = VoiceDialer(factory=factory, provider=build_voice(settings), settings=settings)
    scheduler.add_job(_guarded("voice_dialer", lambda: dialer.place_due()),
                      "interval", seconds=every, id="voice_dialer", max_instances=1, coalesce=True,
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
    from alarmcentre.retention import purge_expired

    scheduler.add_job(_guarded("retention", lambda: purge_expired(factory, settings=settings)), "interval",
                      hours=1, id="retention", max_instances=1, coalesce=True, next_run_time=datetime.now(UTC))
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
    if settings.canary_mqtt_url:
        add_canary(scheduler, factory, settings)
    return scheduler


def add_canary(scheduler: BackgroundScheduler, factory: sessionmaker[Session], settings: Settings) -> None:
    """The end-to-end test alarm (alarmcentre/canary.py), sent from this process."""
    from alarmcentre.canary import CanaryPublisher, ensure_canary_device, prune_beats
    from alarmcentre.db import transaction

    with transaction(factory, writes=True) as session:
        ensure_canary_device(session, settings)
    assert settings.canary_mqtt_url is not None
    publisher = CanaryPublisher(settings.canary_mqtt_url, serial=settings.canary_serial,
                                timeout_s=min(settings.canary_bound_s, 10))

    def beat() -> None:
        publisher.beat()
        prune_beats(factory)

    scheduler.add_job(_guarded("canary", beat), "interval", seconds=settings.canary_interval_s, id="canary",
                      max_instances=1, coalesce=True, next_run_time=datetime.now(UTC))
    scheduler.add_listener(lambda event: publisher.close() if event.code == EVENT_SCHEDULER_SHUTDOWN else None,
                           EVENT_SCHEDULER_SHUTDOWN)
