"""The monthly answer-time report for the social service: how fast alarms were taken and callers
spoken to, against the targets (the UK TEC code's 60 s / 180 s by default), per municipality.

A month is a calendar month in the centre's zone (`ALARMCENTRE_LOCAL_TIMEZONE`). Alarms are the
incidents a person started (button, pull cord, fall, a call to the centre), not technical ones.
"Taken" is the operator acknowledging it; "spoken to" is an operator connected with the caller
(`incidents.spoken_at`, docs/voice.md), counted over the alarms that had a call.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from alarmcentre import clock
from alarmcentre.clients.models import Client
from alarmcentre.incidents.models import ALARM_KINDS, Incident
from alarmcentre.municipalities.models import Municipality
from alarmcentre.visits.service import csv_cell
from alarmcentre.voice.models import CallPurpose, VoiceCall

NO_MUNICIPALITY = "—"  # unknown callers and unassigned devices
MONTH_PATTERN = r"^\d{4}-(0[1-9]|1[0-2])$"  # how a month is asked for: YYYY-MM


@dataclass
class Figures:
    """One row of the report: a municipality, or the whole centre."""

    municipality: str
    alarms: int = 0
    taken_within_target: int = 0
    taken_within_limit: int = 0
    never_taken: int = 0
    median_taken_s: float | None = None
    calls: int = 0
    spoken_within_target: int = 0
    spoken_within_limit: int = 0
    median_spoken_s: float | None = None
    outcomes: dict[str, int] = field(default_factory=dict)

    def share(self, count: int, of: int) -> float | None:
        return round(100 * count / of, 1) if of else None

    @property
    def taken_within_target_pct(self) -> float | None:
        return self.share(self.taken_within_target, self.alarms)

    @property
    def taken_within_limit_pct(self) -> float | None:
        return self.share(self.taken_within_limit, self.alarms)

    @property
    def spoken_within_target_pct(self) -> float | None:
        return self.share(self.spoken_within_target, self.calls)

    @property
    def spoken_within_limit_pct(self) -> float | None:
        return self.share(self.spoken_within_limit, self.calls)


@dataclass
class Report:
    month: str  # YYYY-MM
    timezone: str
    target_s: int
    limit_s: int
    rows: list[Figures]
    total: Figures


def month_of(text: str | None, zone: ZoneInfo) -> date:
    """The first day of the month asked for ("YYYY-MM", MONTH_PATTERN), or of this month in `zone`.
    ValueError for a year outside 2000-2100."""
    if not text:
        return clock.now().astimezone(zone).date().replace(day=1)
    year, month = (int(part) for part in text.split("-"))
    if not 2000 <= year <= 2100:
        raise ValueError("a year between 2000 and 2100")
    return date(year, month, 1)


def month_bounds(month: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    start = datetime(month.year, month.month, 1, tzinfo=zone)
    end = datetime(month.year + (month.month == 12), month.month % 12 + 1, 1, tzinfo=zone)
    return start, end


def answer_times(session: Session, *, month: date, zone: ZoneInfo, target_s: int, limit_s: int) -> Report:
    start, end = month_bounds(month, zone)
    had_call = exists().where(VoiceCall.incident_id == Incident.id, VoiceCall.purpose == CallPurpose.INCOMING)
    found = session.execute(
        select(Municipality.name, Incident.opened_at, Incident.acknowledged_at, Incident.spoken_at,
               Incident.outcome, had_call)
        .select_from(Incident)
        .outerjoin(Client, Client.id == Incident.client_id)
        .outerjoin(Municipality, Municipality.id == Client.municipality_id)
        .where(Incident.kind.in_(ALARM_KINDS), Incident.opened_at >= start, Incident.opened_at < end)
    ).all()
    groups: dict[str, list[tuple[datetime, datetime | None, datetime | None, str | None, bool]]] = {}
    for name, opened, taken, spoken, outcome, called in found:
        groups.setdefault(name or NO_MUNICIPALITY, []).append((opened, taken, spoken, outcome, bool(called)))
    rows = [_figures(name, groups[name], target_s, limit_s) for name in sorted(groups)]
    total = _figures("", [item for name in groups for item in groups[name]], target_s, limit_s)
    return Report(month=f"{month.year:04d}-{month.month:02d}", timezone=zone.key, target_s=target_s,
                  limit_s=limit_s, rows=rows, total=total)


def _figures(name: str, items: list[tuple[datetime, datetime | None, datetime | None, str | None, bool]],
             target_s: int, limit_s: int) -> Figures:
    taken = [(t - o).total_seconds() for o, t, _s, _out, _c in items if t is not None]
    spoken = [(s - o).total_seconds() for o, _t, s, _out, called in items if called and s is not None]
    calls = sum(1 for *_rest, called in items if called)
    return Figures(
        municipality=name, alarms=len(items),
        taken_within_target=sum(1 for s in taken if s <= target_s),
        taken_within_limit=sum(1 for s in taken if s <= limit_s),
        never_taken=len(items) - len(taken),
        median_taken_s=round(statistics.median(taken), 1) if taken else None,
        calls=calls,
        spoken_within_target=sum(1 for s in spoken if s <= target_s),
        spoken_within_limit=sum(1 for s in spoken if s <= limit_s),
        median_spoken_s=round(statistics.median(spoken), 1) if spoken else None,
        outcomes=dict(sorted(Counter(out or "unresolved" for _o, _t, _s, out, _c in items).items())),
    )


CSV_FIELDS = ["month", "municipality", "alarms", "taken_within_target", "taken_within_target_pct",
              "taken_within_limit", "taken_within_limit_pct", "never_taken", "median_taken_s", "calls",
              "spoken_within_target", "spoken_within_target_pct", "spoken_within_limit",
              "spoken_within_limit_pct", "median_spoken_s", "outcomes"]


def report_csv(report: Report) -> str:
    """One line per municipality and a last line 'total'; outcomes as 'outcome=count;…'."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for row in [*report.rows, report.total]:
        values = {name: getattr(row, name) for name in CSV_FIELDS if name not in ("month", "outcomes")}
        values["municipality"] = row.municipality or "total"
        values["month"] = report.month
        values["outcomes"] = ";".join(f"{k}={v}" for k, v in row.outcomes.items())
        writer.writerow([csv_cell(values[name]) for name in CSV_FIELDS])
    return out.getvalue()
