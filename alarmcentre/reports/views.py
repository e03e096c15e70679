"""The reports' API: read by supervisors and admins."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel

from alarmcentre.api_deps import SessionDep, require_roles
from alarmcentre.reports.answer_times import MONTH_PATTERN, answer_times, month_of, report_csv
from alarmcentre.users.models import Role, User

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])
Supervising = Annotated[User, Depends(require_roles(Role.SUPERVISOR, Role.ADMIN))]
Month = Annotated[str | None, Query(pattern=MONTH_PATTERN, description="YYYY-MM; default this month")]


class FiguresOut(BaseModel):
    municipality: str
    alarms: int
    taken_within_target: int
    taken_within_target_pct: float | None
    taken_within_limit: int
    taken_within_limit_pct: float | None
    never_taken: int
    median_taken_s: float | None
    calls: int
    spoken_within_target: int
    spoken_within_target_pct: float | None
    spoken_within_limit: int
    spoken_within_limit_pct: float | None
    median_spoken_s: float | None
    outcomes: dict[str, int]


class AnswerTimesOut(BaseModel):
    month: str
    timezone: str
    target_s: int
    limit_s: int
    rows: list[FiguresOut]
    total: FiguresOut


def parse_month(text: str | None, zone: ZoneInfo) -> date:
    try:
        return month_of(text, zone)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"month: {exc}") from exc


@router.get("/answer-times", response_model=AnswerTimesOut,
            responses={200: {"content": {"text/csv": {}}, "description": "JSON, or CSV with format=csv"}})
def answer_time_report(request: Request, session: SessionDep, _u: Supervising, month: Month = None,
                       format_: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
                       ) -> AnswerTimesOut | Response:
    """A month's alarms per municipality: share taken (acknowledged) and share of callers spoken to
    within the answer target and limit, medians, outcomes (docs/voice.md, "Answer time")."""
    settings = request.app.state.settings
    zone = ZoneInfo(settings.local_timezone)
    report = answer_times(session, month=parse_month(month, zone), zone=zone, target_s=settings.answer_target_s,
                          limit_s=settings.answer_limit_s)
    if format_ == "csv":
        return Response(report_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="answer-times-{report.month}.csv"'})
    return AnswerTimesOut.model_validate(
        {"month": report.month, "timezone": report.timezone, "target_s": report.target_s,
         "limit_s": report.limit_s, "rows": [_out(row) for row in report.rows], "total": _out(report.total)})


def _out(row: object) -> FiguresOut:
    fields = FiguresOut.model_fields
    return FiguresOut.model_validate({name: getattr(row, name) for name in fields})
