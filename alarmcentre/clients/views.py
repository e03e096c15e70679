"""Client routes (thin: validation in schemas, logic in service)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from alarmcentre.api_deps import CLIENT_EDITORS, PLAN_READERS, STAFF, SessionDep, require_roles
from alarmcentre.clients import service
from alarmcentre.clients.models import Client, ClientStatus
from alarmcentre.clients.schemas import ClientIn, ClientOut, ClientPatch
from alarmcentre.contacts.models import Contact
from alarmcentre.contacts.schemas import ContactIn, ContactOut
from alarmcentre.schemas import MAX_ID, NO_NUL, Id
from alarmcentre.users.models import Role, User

router = APIRouter(prefix="/api/v1/clients", tags=["clients"])
Reader = Annotated[User, Depends(require_roles(*STAFF))]
Editor = Annotated[User, Depends(require_roles(*CLIENT_EDITORS))]
ContactReader = Annotated[User, Depends(require_roles(*PLAN_READERS))]


def for_reader(client: Client, user: User) -> ClientOut:
    """The client as this user may see it: a technician (installing, repairing) sees no medical notes,
    on the dashboard as here."""
    out = ClientOut.model_validate(client)
    if user.role == Role.TECHNICIAN:
        out.medical_notes = None
    return out


def load_client(session: SessionDep, client_id: Id) -> Client:
    client = session.get(Client, client_id)
    if client is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"client {client_id} not found")
    return client


@router.get("", response_model=list[ClientOut])
def list_clients(
    session: SessionDep, user: Reader,
    municipality_id: Id | None = None, status_: Annotated[ClientStatus | None, Query(alias="status")] = None,
    q: Annotated[str | None, Query(max_length=100, pattern=NO_NUL, description="part of the name")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[ClientOut]:
    return [for_reader(client, user) for client in service.list_clients(
        session, municipality_id=municipality_id, status=status_, search=q, limit=limit, offset=offset)]


@router.post("", response_model=ClientOut, status_code=status.HTTP_201_CREATED)
def create_client(body: ClientIn, session: SessionDep, _u: Editor) -> Client:
    try:
        return service.create_client(session, data=body)
    except service.NotFound as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc


@router.get("/{client_id}", response_model=ClientOut)
def get_client(user: Reader, client: Annotated[Client, Depends(load_client)]) -> ClientOut:
    return for_reader(client, user)


@router.patch("/{client_id}", response_model=ClientOut)
def update_client(
    body: ClientPatch, session: SessionDep, _u: Editor, client: Annotated[Client, Depends(load_client)]
) -> Client:
    try:
        return service.update_client(session, client=client, patch=body)
    except (service.NotFound, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc


@router.get("/{client_id}/contacts", response_model=list[ContactOut])
def list_contacts(session: SessionDep, _u: ContactReader, client: Annotated[Client, Depends(load_client)]) -> list:
    return list(service.list_contacts(session, client_id=client.id))


@router.post("/{client_id}/contacts", response_model=ContactOut, status_code=status.HTTP_201_CREATED)
def add_contact(
    body: ContactIn, session: SessionDep, _u: Editor, client: Annotated[Client, Depends(load_client)]
) -> Contact:
    return service.add_contact(session, client=client, data=body)
