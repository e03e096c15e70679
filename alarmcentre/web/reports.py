"""Supervisors' report pages: the monthly answer times, printable and as CSV."""

from __future__ import annotations

from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from alarmcentre.api_deps import SessionDep
from alarmcentre.reports.answer_times import answer_times, report_csv
from alarmcentre.reports.views import Month, parse_month
from alarmcentre.users.models import Role, User
from alarmcentre.web.auth import roles
from alarmcentre.web.render import render

router = APIRouter(include_in_schema=False)
Supervising = Annotated[User, Depends(roles(Role.SUPERVISOR, Role.ADMIN))]


def _report(request: Request, session: SessionDep, month: str | None) -> object:
    settings = request.app.state.settings
    zone = ZoneInfo(settings.local_timezone)
    return answer_times(session, month=parse_month(month, zone), zone=zone, target_s=settings.answer_target_s,
                        limit_s=settings.answer_limit_s)


@router.get("/ui/reports/answer-times")
def answer_times_page(request: Request, session: SessionDep, _user: Supervising, month: Month = None) -> Response:
    return render(request, "report_answer_times.html", {"report": _report(request, session, month)})


@router.get("/ui/reports/answer-times.csv")
def answer_times_csv(request: Request, session: SessionDep, _user: Supervising,
                     month: Annotated[str | None, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")] = None) -> Response:
    report = _report(request, session, month)
    return Response(report_csv(report), media_type="text/csv; charset=utf-8",  # type: ignore[arg-type]
                    headers={"Content-Disposition":
                             f'attachment; filename="answer-times-{report.month}.csv"'})  # type: ignore[attr-defined]
