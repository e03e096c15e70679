"""Municipalities: read for all staff, created and changed by admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import ConfigDict, Field
from sqlalchemy import select

from alarmcentre.api_deps import STAFF, SessionDep, require_roles
from alarmcentre.municipalities.models import Municipality
from alarmcentre.schemas import Id, InputModel
from alarmcentre.users.models import Role, User

router = APIRouter(prefix="/api/v1/municipalities", tags=["municipalities"])


PLAIN_REPLIES = ("texted answers without the dispatch code (`1` instead of `1 482`) count for this municipality's "
                 "clients; off by default, since a sender number can be forged (docs/dispatch.md)")


class MunicipalityIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=200)]
    social_service: Annotated[str, Field(max_length=200)] = ""
    phone: Annotated[str, Field(max_length=32)] | None = None
    plain_sms_replies: bool = Field(False, description=PLAIN_REPLIES)


class MunicipalityPatch(InputModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    social_service: Annotated[str, Field(max_length=200)] | None = None
    phone: Annotated[str, Field(max_length=32)] | None = None
    plain_sms_replies: bool | None = Field(None, description=PLAIN_REPLIES)


class MunicipalityOut(MunicipalityIn):
    model_config = ConfigDict(from_attributes=True)
    id: int


@router.get("", response_model=list[MunicipalityOut])
def list_municipalities(session: SessionDep, _u: Annotated[User, Depends(require_roles(*STAFF))]) -> list:
    return list(session.scalars(select(Municipality).order_by(Municipality.name)))


@router.post("", response_model=MunicipalityOut, status_code=status.HTTP_201_CREATED)
def create_municipality(
    body: MunicipalityIn, session: SessionDep, _u: Annotated[User, Depends(require_roles(Role.ADMIN))]
) -> Municipality:
    if session.scalar(select(Municipality).where(Municipality.name == body.name)) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="a municipality of that name exists")
    row = Municipality(**body.model_dump())
    session.add(row)
    session.flush()
    return row


@router.patch("/{municipality_id}", response_model=MunicipalityOut)
def change_municipality(
    municipality_id: Id, body: MunicipalityPatch, session: SessionDep,
    _u: Annotated[User, Depends(require_roles(Role.ADMIN))],
) -> Municipality:
    row = session.get(Municipality, municipality_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such municipality")
    # Only the phone can be cleared (null); a null for the others leaves them as they are.
    changes = {field: value for field, value in body.model_dump(exclude_unset=True).items()
               if value is not None or field == "phone"}
    if "name" in changes and session.scalar(select(Municipality).where(
            Municipality.name == changes["name"], Municipality.id != municipality_id)) is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="a municipality of that name exists")
    for field, value in changes.items():
        setattr(row, field, value)
    session.flush()
    return row
