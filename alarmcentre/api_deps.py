"""Dependencies every HTTP route shares: the database session and the authenticated user."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from sqlalchemy.orm import Session

from alarmcentre.db import SQLITE_IMMEDIATE
from alarmcentre.users import service as users
from alarmcentre.users.models import IntegrationKey, Role, User

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)
api_key_scheme = APIKeyHeader(name="X-Api-Key", auto_error=False)


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request: committed when the route returns, rolled back on error."""
    factory = request.app.state.session_factory
    with factory() as session, session.begin():
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            # It will write: on SQLite, a concurrent commit (the ingest, the scheduler) must not fail it.
            session.connection(execution_options={SQLITE_IMMEDIATE: True})
        yield session


# scope="function": committed before the response is sent. The default ("request") commits after
# it, so a browser following a redirect (after logging in, after an action) could read the database
# before the change was there, and a failed commit would come after a success was reported.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def client_address(request: Request) -> str:
    """Who is asking, for login throttling: the connection's address, or, when that is a configured
    trusted proxy (ALARMCENTRE_TRUSTED_PROXIES), the nearest X-Forwarded-For entry that is not one.
    A header from anyone else is ignored: it would let a guesser pick a new address per attempt."""
    address = request.client.host if request.client else "unknown"
    trusted = {a.strip() for a in request.app.state.settings.trusted_proxies.split(",") if a.strip()}
    if address not in trusted:
        return address
    hops = [hop.strip() for hop in request.headers.get("x-forwarded-for", "").split(",") if hop.strip()]
    for hop in reversed(hops):
        if hop not in trusted:
            return hop[:64]
    return address


def current_user(session: SessionDep, token: Annotated[str | None, Depends(oauth2_scheme)]) -> User:
    # An integration key is never a bearer token (it is looked up in its own table anyway).
    is_key = token is not None and token.startswith(users.INTEGRATION_KEY_PREFIX)
    user = users.user_for_token(session, token=token) if token and not is_key else None
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing, expired or invalid token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def integration_key(session: SessionDep, key: Annotated[str | None, Depends(api_key_scheme)]) -> IntegrationKey:
    """Integration routes: an X-Api-Key of role integration, and nothing else (a staff token is refused)."""
    found = users.integration_key_for(session, key=key) if key else None
    if found is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, detail="missing or invalid X-Api-Key (no staff token here)",
            headers={"WWW-Authenticate": "ApiKey"},
        )
    return found


IntegrationCaller = Annotated[IntegrationKey, Depends(integration_key)]


def require_roles(*roles: Role) -> Callable[[User], User]:
    def check(user: CurrentUser) -> User:
        if user.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"needs role {' or '.join(roles)}")
        return user

    return check


STAFF = (Role.OPERATOR, Role.SUPERVISOR, Role.TECHNICIAN, Role.ADMIN)
INCIDENT_ROLES = (Role.OPERATOR, Role.SUPERVISOR, Role.ADMIN)
# Contacts, response plans and shared resources: who is phoned for a client. Read by the roles that handle
# incidents, as on the dashboard (client and incident pages); a technician gets the client record only.
PLAN_READERS = INCIDENT_ROLES
CLIENT_EDITORS = (Role.SUPERVISOR, Role.ADMIN)
DEVICE_EDITORS = (Role.TECHNICIAN, Role.ADMIN)
