"""Login (OAuth2 password form → bearer token), logout, who am I."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from alarmcentre.api_deps import CurrentUser, SessionDep, oauth2_scheme
from alarmcentre.users import service
from alarmcentre.users.models import Language, Role

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


@router.post("/token", response_model=TokenOut, responses={401: {"description": "wrong login, or locked"}})
def login(request: Request, session: SessionDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenOut:
    result = service.check_login(session, username=form.username, password=form.password)
    user = result.user
    if user is None:
        # Answered, not raised: the failure count must be committed with this request.
        detail = "wrong username or password"
        if result.locked_until is not None:
            detail = f"too many failed logins: locked until {result.locked_until.isoformat()}"
        return JSONResponse({"detail": detail}, status_code=status.HTTP_401_UNAUTHORIZED,  # type: ignore[return-value]
                            headers={"WWW-Authenticate": "Bearer"})
    ttl = timedelta(hours=request.app.state.settings.token_ttl_hours)
    return TokenOut(access_token=service.issue_token(session, user=user, ttl=ttl),
                    expires_in=int(ttl.total_seconds()))


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(session: SessionDep, _user: CurrentUser, token: Annotated[str, Depends(oauth2_scheme)]) -> None:
    service.revoke_token(session, token=token)


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user, from_attributes=True)
