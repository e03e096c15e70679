"""Today's figures on the operators' queue: alarms since local midnight, how fast they were taken
(acknowledged) and, of those with a call, how fast an operator was speaking with the caller; what is
open now. The same definitions as the monthly report (answer_times.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from alarmcentre import clock
from alarmcentre.incidents import service as incidents
from alarmcentre.incidents.models import ALARM_KINDS, Incident
from alarmcentre.tasks import service as tasks
from alarmcentre.voice.models import CallPurpose, VoiceCall


def todays_figures(session: Session, zone: ZoneInfo, *, target_s: int, limit_s: int) -> dict[str, Any]:
    """Counts, and percentages as shown ("–" when there is nothing to count)."""
    now = clock.now()
    midnight = datetime.combine(now.astimezone(zone).date(), datetime.min.time(), tzinfo=zone)
    opened = session.execute(
        select(Incident.opened_at, Incident.acknowledged_at)
        .where(Incident.opened_at >= midnight, Incident.kind.in_(ALARM_KINDS))).all()
    total = len(opened)
    called = session.execute(
        select(Incident.opened_at, Incident.spoken_at).where(
            Incident.opened_at >= midnight, Incident.kind.in_(ALARM_KINDS),
            Incident.id.in_(select(VoiceCall.incident_id).where(VoiceCall.purpose == CallPurpose.INCOMING)))).all()

    def within(seconds: int, rows: Sequence[Any] = opened) -> int:
        return sum(1 for start, end in rows if end is not None and (end - start).total_seconds() <= seconds)

    def percent(count: int, of: int = total) -> str:
        return f"{100 * count / of:.0f}" if of else "–"

    return {"alarms": total, "within_target": percent(within(target_s)), "within_limit": percent(within(limit_s)),
            "open": incidents.count_unresolved(session), "tasks": tasks.count_active(session), "calls": len(called),
            "spoken_within_target": percent(within(target_s, called), len(called)),
            "spoken_within_limit": percent(within(limit_s, called), len(called))}
