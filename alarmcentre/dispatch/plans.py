"""Response plans: each client's ordered steps, edited as a whole and validated."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from alarmcentre.clients.models import Client
from alarmcentre.contacts.models import Contact
from alarmcentre.dispatch.models import Channel, PlanStep, ResourceKind, SharedResource
from alarmcentre.dispatch.schemas import PlanStepIn, PlanStepOut


class PlanError(ValueError):
    pass


def get_plan(session: Session, *, client: Client) -> list[PlanStepOut]:
    steps = session.scalars(select(PlanStep).where(PlanStep.client_id == client.id)
                            .order_by(PlanStep.position, PlanStep.id)).all()
    return [_out(session, step) for step in steps]


def replace_plan(session: Session, *, client: Client, steps: Sequence[PlanStepIn]) -> list[PlanStepOut]:
    """Validate every step first, then replace the plan. Running incidents keep their snapshot."""
    for number, step in enumerate(steps, start=1):
        _validate(session, client=client, step=step, number=number)
    session.execute(delete(PlanStep).where(PlanStep.client_id == client.id))
    for position, step in enumerate(steps, start=1):
        session.add(PlanStep(client_id=client.id, position=position, **step.model_dump()))
    session.flush()
    return get_plan(session, client=client)


def _validate(session: Session, *, client: Client, step: PlanStepIn, number: int) -> None:
    if step.contact_id is not None:
        contact = session.get(Contact, step.contact_id)
        if contact is None or contact.client_id != client.id:
            raise PlanError(f"step {number}: contact {step.contact_id} is not one of this client's contacts")
        if step.channel == Channel.SMS and not contact.phone.startswith("+"):
            raise PlanError(f"step {number}: {contact.name} has no mobile number to text")
        return
    resource = session.get(SharedResource, step.resource_id)
    if resource is None or not resource.active:
        raise PlanError(f"step {number}: shared resource {step.resource_id} does not exist or is inactive")
    if resource.municipality_id not in (None, client.municipality_id):
        raise PlanError(f"step {number}: {resource.name} serves another municipality")
    if step.channel == Channel.SMS and (resource.kind == ResourceKind.EMERGENCY_SERVICES
                                        or not resource.phone.startswith("+")):
        raise PlanError(f"step {number}: {resource.name} is phoned by the operator: use channel operator_task")


def _out(session: Session, step: PlanStep) -> PlanStepOut:
    out = PlanStepOut.model_validate(step, from_attributes=True)
    target = session.get(Contact, step.contact_id) if step.contact_id else session.get(SharedResource, step.resource_id)
    if target is not None:
        out.target_name, out.target_phone = target.name, target.phone
    return out


def list_resources(session: Session, *, municipality_id: int | None = None) -> Sequence[SharedResource]:
    query = select(SharedResource).order_by(SharedResource.kind, SharedResource.name)
    if municipality_id is not None:
        query = query.where(SharedResource.municipality_id.in_([municipality_id]) |
                            SharedResource.municipality_id.is_(None))
    return session.scalars(query).all()
