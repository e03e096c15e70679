"""Client and contact logic. Functions take the session first and never commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from alarmcentre.clients.models import Client, ClientStatus
from alarmcentre.clients.schemas import ClientIn, ClientPatch
from alarmcentre.contacts.models import Contact
from alarmcentre.contacts.schemas import ContactIn, ContactPatch
from alarmcentre.db import LIKE_ESCAPE, contains_pattern
from alarmcentre.municipalities.models import Municipality
from alarmcentre.schemas import MAX_ID


class NotFound(LookupError):
    pass


def _check_municipality(session: Session, municipality_id: int) -> None:
    if session.get(Municipality, municipality_id) is None:
        raise NotFound(f"municipality {municipality_id} does not exist")


def create_client(session: Session, *, data: ClientIn) -> Client:
    _check_municipality(session, data.municipality_id)
    client = Client(**data.model_dump())
    session.add(client)
    session.flush()
    return client


def update_client(session: Session, *, client: Client, patch: ClientPatch) -> Client:
    changes = patch.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if value is None and name in {"municipality_id", "full_name", "address", "language", "care_level", "status"}:
            raise ValueError(f"{name} cannot be empty")
    if "municipality_id" in changes:
        _check_municipality(session, changes["municipality_id"])
    for name, value in changes.items():
        setattr(client, name, "" if name == "medical_notes" and value is None else value)
    session.flush()
    return client


def list_clients(
    session: Session, *, municipality_id: int | None = None, status: ClientStatus | None = None,
    search: str | None = None, limit: int = 100, offset: int = 0,
) -> Sequence[Client]:
    query = select(Client).order_by(Client.full_name, Client.id).limit(limit).offset(offset)
    if municipality_id is not None:
        query = query.where(Client.municipality_id == municipality_id)
    if status is not None:
        query = query.where(Client.status == status)
    if search:
        query = query.where(Client.full_name.ilike(contains_pattern(search), escape=LIKE_ESCAPE))
    return session.scalars(query).all()


def list_contacts(session: Session, *, client_id: int) -> Sequence[Contact]:
    return session.scalars(
        select(Contact).where(Contact.client_id == client_id).order_by(Contact.position, Contact.id)
    ).all()


def add_contact(session: Session, *, client: Client, data: ContactIn) -> Contact:
    contact = Contact(client_id=client.id, **data.model_dump())
    session.add(contact)
    session.flush()
    return contact


def update_contact(session: Session, *, contact: Contact, patch: ContactPatch) -> Contact:
    for name, value in patch.model_dump(exclude_unset=True).items():
        if value is None and name != "notes":
            raise ValueError(f"{name} cannot be empty")
        setattr(contact, name, "" if value is None else value)  # null notes are cleared
    session.flush()
    return contact


def get_client(session: Session, client_id: int) -> Client | None:
    return session.get(Client, client_id) if 0 < client_id <= MAX_ID else None


def client_names(session: Session, client_ids: Iterable[int | None]) -> dict[int, str]:
    wanted = {i for i in client_ids if i is not None}
    if not wanted:
        return {}
    return {cid: name for cid, name in
            session.execute(select(Client.id, Client.full_name).where(Client.id.in_(wanted))).all()}
