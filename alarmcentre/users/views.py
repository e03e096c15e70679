"""Login (OAuth2 password form → bearer token), logout, who am I."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from alarmcentre.api_deps import CurrentUser, SessionDep, client_address, oauth2_scheme, require_roles
from alarmcentre.users import service, throttle
from alarmcentre.users.models import Language, Role, User

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class UserOut(BaseModel):
    id: int
    username: str
    full_name: str
    role: Role
    language: Language


@router.post("/token", response_model=TokenOut,
             responses={401: {"description": "wrong, unknown or throttled login: one answer for all"}})
def login(request: Request, session: SessionDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
    user = service.check_login(session, username=form.username, password=form.password,
                               address=client_address(request))
    if user is None:
        # Answered, not raised: the attempt's count must be committed with this request. The same
        # words for a wrong password, an unknown user and a throttled attempt (users/throttle.py).
        return JSONResponse({"detail": "wrong username or password"},  # type: ignore[return-value]
                            status_code=status.HTTP_401_UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    ttl = timedelta(hours=request.app.state.settings.token_ttl_hours)
    return TokenOut(access_token=service.issue_token(session, user=user, ttl=ttl),
                    expires_in=int(ttl.total_seconds()))


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(session: SessionDep, _user: CurrentUser, token: Annotated[str, Depends(oauth2_scheme)]) -> None:
    service.revoke_token(session, token=token)


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user, from_attributes=True)


class ThrottleOut(BaseModel):
    kind: str
    username: str | None
    address: str | None
    failures: int
    last_at: datetime
    wait_until: datetime | None


throttles = APIRouter(prefix="/api/v1/login-throttles", tags=["auth"])
SupervisorOrAdmin = Annotated[User, Depends(require_roles(Role.SUPERVISOR, Role.ADMIN))]


@throttles.get("", response_model=list[ThrottleOut])
def list_throttles(session: SessionDep, _user: SupervisorOrAdmin) -> list[ThrottleOut]:
    """Failed logins counted in the last 24 h, by username, address or both (users/throttle.py)."""
    return [ThrottleOut.model_validate(row, from_attributes=True) for row in throttle.active(session)]


NO_NUL = r"^[^\x00]*$"  # PostgreSQL refuses NUL in text: a 422, not a database error


class ClearedOut(BaseModel):
    cleared: int


@throttles.delete("", response_model=ClearedOut)
def clear_throttles(session: SessionDep, _user: SupervisorOrAdmin,
                    username: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
                    address: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None) -> ClearedOut:
    """Forget the failed logins of a username, an address, or a username at an address."""
    if username is None and address is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="give username, address or both")
    return ClearedOut(cleared=throttle.clear(session, username=username, address=address))
