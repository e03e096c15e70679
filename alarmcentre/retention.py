"""Retention: what the ingest refused, and the raw device events, are kept for a configured time.

Dead letters hold untrusted payloads (up to 8 KiB each) and raw events are the bulk of the
database; kept for ever they grow without bound and hold personal data longer than the service
needs. The record of what happened to a person stays: incidents, their timelines, visits,
battery and signal histories are not touched here. Deleted in bounded chunks, so that the
purge never holds a long lock in front of the ingest. Run by the scheduler (`retention` job).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import clock
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import DeviceEvent

log = logging.getLogger(__name__)

CHUNK = 5000


def _purge(factory: sessionmaker[Session], model: type[DeadLetter] | type[DeviceEvent], keep_days: int) -> int:
    cutoff = clock.now() - timedelta(days=keep_days)
    removed = 0
    while True:
        with factory() as session:  # a look first: the write lock only when there is something to delete
            ids = list(session.scalars(select(model.id).where(model.received_at < cutoff).limit(CHUNK)))
        if ids:
            with transaction(factory, writes=True) as session:
                session.execute(delete(model).where(model.id.in_(ids)))
        removed += len(ids)
        if len(ids) < CHUNK:
            return removed


def purge_expired(factory: sessionmaker[Session], *, settings: Settings) -> dict[str, int]:
    """Delete dead letters and device events older than their retention; returns how many of each."""
    removed = {"dead_letters": _purge(factory, DeadLetter, settings.dead_letter_retention_days),
               "device_events": _purge(factory, DeviceEvent, settings.device_event_retention_days)}
    if any(removed.values()):
        log.info("retention: removed %(dead_letters)d dead letters and %(device_events)d device events", removed)
    return removed
