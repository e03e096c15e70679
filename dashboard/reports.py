"""Supervisors' report pages: the monthly answer times, printable and as CSV."""

from __future__ import annotations

from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import Response

from alarmcentre.api_deps import SessionDep
from alarmcentre.reports.answer_times import MONTH_PATTERN, answer_times, month_of, report_csv
from alarmcentre.users.models import Role, User
from alarmcentre_dashboard.auth import roles
from alarmcentre_dashboard.render import render

router = APIRouter(include_in_schema=False)
Supervising = Annotated[User, Depends(roles(Role.SUPERVISOR, Role.ADMIN))]
Month = Annotated[str | None, Query(pattern=MONTH_PATTERN)]


def _report(request: Request, session: SessionDep, month: str | None) -> object:
    settings = request.app.state.settings
    zone = ZoneInfo(settings.local_timezone)
    try:
        first = month_of(month, zone)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"month: {exc}") from exc
    return answer_times(session, month=first, zone=zone, target_s=settings.answer_target_s,
                        limit_s=settings.answer_limit_s)


@router.get("/ui/reports/answer-times")
def answer_times_page(request: Request, session: SessionDep, _user: Supervising, month: Month = None) -> Response:
    return render(request, "report_answer_times.html", {"report": _report(request, session, month)})


@router.get("/ui/reports/answer-times.csv")
def answer_times_csv(request: Request, session: SessionDep, _user: Supervising,
                     month: Month = None) -> Response:
    report = _report(request, session, month)
    return Response(report_csv(report), media_type="text/csv; charset=utf-8",  # type: ignore[arg-type]
                    headers={"Content-Disposition":
                             f'attachment; filename="answer-times-{report.month}.csv"'})  # type: ignore[attr-defined]
