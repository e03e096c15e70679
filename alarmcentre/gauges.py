"""Gauges read from the database. The API refreshes them at every scrape of its /metrics and the
scheduler's fleet_gauges job every 15 s, so they exist whichever process Prometheus scrapes."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import clock, metrics
from alarmcentre.incidents.models import Incident, IncidentKind, IncidentStatus


def refresh_incident_gauges(factory: sessionmaker[Session]) -> None:
    """Open incidents by status, and how long the oldest unacknowledged alarm has waited."""
    with factory() as session:
        rows = session.execute(
            select(Incident.status, func.count()).where(Incident.status != IncidentStatus.RESOLVED)
            .group_by(Incident.status)
        ).all()
        # Technical incidents (a silent device) get no acknowledgement alert either (dispatch.escalation).
        oldest = session.scalar(select(func.min(Incident.opened_at)).where(
            Incident.status == IncidentStatus.OPEN, Incident.kind != IncidentKind.DEVICE_SILENT))
    counts = {status: number for status, number in rows}
    for status in (IncidentStatus.OPEN, IncidentStatus.ACKNOWLEDGED):
        metrics.OPEN_INCIDENTS.labels(status.value).set(counts.get(status, 0))
    metrics.OLDEST_UNACKNOWLEDGED.set(0 if oldest is None else max((clock.now() - oldest).total_seconds(), 0.0))
