"""Rendering pages: the user's language, times in the centre's zone, and headers that keep
personal data out of caches and the pages out of other sites' frames."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse

from alarmcentre import clock
from alarmcentre_dashboard.i18n import environment, translations, ui_language
from alarmcentre_dashboard.labels import label

LANGUAGE_COOKIE = "ac_lang"  # the login page's language, before anyone is logged in
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
}


def request_language(request: Request) -> str:
    user = getattr(request.state, "user", None)
    return ui_language(user.language.value if user is not None else request.cookies.get(LANGUAGE_COOKIE))


def translate(request: Request, message: str, **values: object) -> str:
    """A message in the request's language, for texts made in Python (errors shown on a page)."""
    text = translations(request_language(request)).gettext(message)
    return text % values if values else text


def render(request: Request, template: str, context: dict[str, Any] | None = None, *,
           status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(render_text(request, template, context), status_code=status_code, headers=SECURITY_HEADERS)


def render_text(request: Request, template: str, context: dict[str, Any] | None = None) -> str:
    settings = request.app.state.settings
    zone = ZoneInfo(settings.local_timezone)

    def local(moment: datetime | None, fmt: str = "%d.%m.%Y %H:%M") -> str:
        return moment.astimezone(zone).strftime(fmt) if moment is not None else "–"

    def local_time(moment: datetime | None) -> str:
        """HH:MM:SS today, else with the date: the timeline reads like a log."""
        if moment is None:
            return "–"
        here = moment.astimezone(zone)
        today = clock.now().astimezone(zone).date()
        return here.strftime("%H:%M:%S" if here.date() == today else "%d.%m. %H:%M:%S")

    def age(born: date | None) -> str:
        if born is None:
            return "–"
        today = clock.now().astimezone(zone).date()
        return str(today.year - born.year - ((today.month, today.day) < (born.month, born.day)))

    def epoch_ms(moment: datetime | None) -> int:
        return int(moment.timestamp() * 1000) if moment is not None else 0

    values: dict[str, Any] = {
        "request": request,
        "user": getattr(request.state, "user", None),
        "csrf": getattr(request.state, "csrf", ""),
        "label": label,
        "local": local,
        "local_time": local_time,
        "age": age,
        "epoch_ms": epoch_ms,
        "answer_target_s": settings.answer_target_s,
        "answer_limit_s": settings.answer_limit_s,
        "outbox": not settings.twilio_configured,
    }
    values.update(context or {})
    return environment(request_language(request)).get_template(template).render(values)
