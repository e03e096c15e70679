"""Routes for one contact; listing and adding live under the client."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status

from alarmcentre.api_deps import CLIENT_EDITORS, PLAN_READERS, SessionDep, require_roles
from alarmcentre.clients import service
from alarmcentre.contacts.models import Contact
from alarmcentre.contacts.schemas import ContactOut, ContactPatch
from alarmcentre.schemas import Id
from alarmcentre.users.models import User

router = APIRouter(prefix="/api/v1/contacts", tags=["contacts"])
Editor = Annotated[User, Depends(require_roles(*CLIENT_EDITORS))]


def load_contact(session: SessionDep, contact_id: Id) -> Contact:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"contact {contact_id} not found")
    return contact


@router.get("/{contact_id}", response_model=ContactOut)
def get_contact(_u: Annotated[User, Depends(require_roles(*PLAN_READERS))],
                contact: Annotated[Contact, Depends(load_contact)]) -> Contact:
    return contact


@router.patch("/{contact_id}", response_model=ContactOut)
def update_contact(
    body: ContactPatch, session: SessionDep, _u: Editor, contact: Annotated[Contact, Depends(load_contact)]
) -> Contact:
    try:
        return service.update_contact(session, contact=contact, patch=body)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc


@router.delete("/{contact_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_contact(session: SessionDep, _u: Editor, contact: Annotated[Contact, Depends(load_contact)]) -> None:
    session.delete(contact)
