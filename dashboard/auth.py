"""Dashboard logins: a server-side session in a cookie, CSRF tokens, role checks (throttling: users/throttle.py).

The cookie holds an opaque token stored hashed in api_tokens (the same rows as API tokens), so
logging out or disabling a user ends the session at once. Forms carry a CSRF token derived from
the session token: a page of another site can neither read it nor compute it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from alarmcentre.api_deps import SessionDep
from alarmcentre.clients.models import Language
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

SESSION_COOKIE = "ac_session"
LOGIN_CSRF_COOKIE = "ac_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class Viewer:
    """Who is looking, as plain values: error pages render after the request's session is closed."""

    id: int
    username: str
    full_name: str
    role: Role
    language: Language

    @classmethod
    def of(cls, user: User) -> Viewer:
        return cls(user.id, user.username, user.full_name, user.role, user.language)


class LoginRequired(Exception):
    """No valid session: pages redirect to the login, fragments and the feed answer 401."""


class NotAllowed(Exception):
    """Logged in, but this role may not see this page (403)."""


class BadCsrf(Exception):
    """A form without the right CSRF token (403): never acted upon."""


def csrf_token(session_token: str) -> str:
    return hashlib.sha256(b"csrf:" + session_token.encode()).hexdigest()[:40]


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


def user_from_cookie(session: Session, request: Request) -> User | None:
    token = request.cookies.get(SESSION_COOKIE)
    return users.user_for_token(session, token=token) if token else None


def web_user(request: Request, session: SessionDep) -> User:
    user = user_from_cookie(session, request)
    if user is None:
        raise LoginRequired()
    request.state.user = Viewer.of(user)
    request.state.csrf = csrf_token(request.cookies[SESSION_COOKIE])
    return user


WebUser = Annotated[User, Depends(web_user)]


def roles(*allowed: Role) -> Callable[[User], User]:
    def check(user: WebUser) -> User:
        if user.role not in allowed:
            raise NotAllowed()
        return user

    return check


async def check_csrf(request: Request) -> None:
    """For every state-changing request of the dashboard (a dependency of those routes)."""
    token = request.cookies.get(SESSION_COOKIE)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        sent = str((await request.form()).get(CSRF_FIELD, ""))
    if not token or not sent or not hmac.compare_digest(sent, csrf_token(token)):
        raise BadCsrf()
