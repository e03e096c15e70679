"""Municipalities: read for all staff, created by admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import ConfigDict, Field
from sqlalchemy import select

from alarmcentre.api_deps import STAFF, SessionDep, require_roles
from alarmcentre.municipalities.models import Municipality
from alarmcentre.schemas import InputModel
from alarmcentre.users.models import Role, User

router = APIRouter(prefix="/api/v1/municipalities", tags=["municipalities"])


class MunicipalityIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=200)]
    social_service: Annotated[str, Field(max_length=200)] = ""
    phone: Annotated[str, Field(max_length=32)] | None = None


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
