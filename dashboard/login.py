"""Log in, log out, choose the language, and the front door that sends each role to its pages."""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from alarmcentre.api_deps import SessionDep, client_address
from alarmcentre.clients.models import Language
from alarmcentre.users import service as users
from alarmcentre.users.models import Role
from alarmcentre_dashboard.auth import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    WebUser,
    check_csrf,
    csrf_token,
    new_login_nonce,
    user_from_cookie,
)
from alarmcentre_dashboard.i18n import UI_LANGUAGES, ui_language
from alarmcentre_dashboard.render import LANGUAGE_COOKIE, render, translate

router = APIRouter(include_in_schema=False)


def home_for(role: Role) -> str:
    return "/ui/devices" if role == Role.TECHNICIAN else "/ui/queue"


def _safe_next(target: str | None) -> str | None:
    """Only a path of this site (no open redirect to another host)."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    return target


@router.get("/")
def front_door(request: Request, session: SessionDep) -> Response:
    user = user_from_cookie(session, request)
    return RedirectResponse(home_for(user.role) if user else "/login", status_code=303)


def _login_page(request: Request, *, error: str | None = None, status_code: int = 200,
                next_path: str | None = None) -> Response:
    nonce = new_login_nonce()
    response = render(request, "login.html", {"login_nonce": nonce, "error": error,
                                              "next": _safe_next(next_path) or ""}, status_code=status_code)
    response.set_cookie(LOGIN_CSRF_COOKIE, nonce, httponly=True, samesite="strict", path="/login",
                        secure=request.app.state.settings.secure_cookies)
    return response


@router.get("/login")
def login_form(request: Request, session: SessionDep, next: str | None = None) -> Response:
    if user_from_cookie(session, request) is not None and _safe_next(next) is None:
        user = user_from_cookie(session, request)
        assert user is not None
        return RedirectResponse(home_for(user.role), status_code=303)
    return _login_page(request, next_path=next)


@router.post("/login")
def login(request: Request, session: SessionDep, username: Annotated[str, Form(max_length=64)],
          password: Annotated[str, Form(max_length=256)], nonce: Annotated[str, Form(max_length=100)] = "",
          next: Annotated[str, Form(max_length=500)] = "") -> Response:
    if not nonce or nonce != request.cookies.get(LOGIN_CSRF_COOKIE):
        return _login_page(request, error=translate(request, "The login form expired. Please try again."),
                           status_code=400, next_path=next)
    user = users.check_login(session, username=username.strip(), password=password, address=client_address(request))
    if user is None:
        # One answer for a wrong password, an unknown user and a throttled attempt (users/throttle.py).
        # Answered, not raised: the attempt's count is committed with this request.
        return _login_page(request, error=translate(request, "Wrong username or password."), status_code=401,
                           next_path=next)
    settings = request.app.state.settings
    token = users.issue_token(session, user=user, ttl=timedelta(hours=settings.session_ttl_hours))
    response = RedirectResponse(_safe_next(next) or home_for(user.role), status_code=303)
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", path="/",
                        secure=settings.secure_cookies, max_age=int(settings.session_ttl_hours * 3600))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout", dependencies=[Depends(check_csrf)])
def logout(request: Request, session: SessionDep, _user: WebUser) -> Response:
    users.revoke_token(session, token=request.cookies[SESSION_COOKIE])
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.post("/language")
def choose_language(request: Request, session: SessionDep, language: Annotated[str, Form(max_length=8)],
                    csrf: Annotated[str, Form(max_length=100)] = "") -> Response:
    """Per user when logged in (kept in their account), else for the login page (a cookie)."""
    chosen = ui_language(language if language in UI_LANGUAGES else None)
    user = user_from_cookie(session, request)
    if user is not None:
        # A logged-in user's choice changes their account: it needs the CSRF token like any form.
        if not hmac.compare_digest(csrf, csrf_token(request.cookies[SESSION_COOKIE])):
            return Response("bad or missing CSRF token", status_code=403)
        user.language = Language(chosen)
    back = _safe_next(urlsplit(request.headers.get("referer", "")).path) or "/"
    response = RedirectResponse(back, status_code=303)
    response.set_cookie(LANGUAGE_COOKIE, chosen, samesite="strict", path="/", max_age=3600 * 24 * 365)
    return response
