"""Routes of dispatch: response plans, shared resources, operator actions, texts and Twilio's webhooks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from sqlalchemy import select

from alarmcentre.api_deps import CLIENT_EDITORS, INCIDENT_ROLES, PLAN_READERS, SessionDep, require_roles
from alarmcentre.clients.models import Client
from alarmcentre.db import transaction
from alarmcentre.dispatch import actions, plans
from alarmcentre.dispatch.escalation import step_failed
from alarmcentre.dispatch.inbound import handle_inbound
from alarmcentre.dispatch.models import IncidentStep, SharedResource, SmsMessage
from alarmcentre.dispatch.schemas import (
    CallIn,
    EmergencyIn,
    HandoverIn,
    IncidentStepOut,
    NoteIn,
    PlanIn,
    PlanStepOut,
    ReopenIn,
    ResolveIn,
    ResourceIn,
    ResourceOut,
    SimulatedReplyIn,
    SmsOut,
    StepAnswerIn,
    StepRef,
)
from alarmcentre.dispatch.sms import OUTBOX_NUMBER, apply_status_callback, recent_messages
from alarmcentre.incidents.models import Incident
from alarmcentre.incidents.schemas import IncidentOut
from alarmcentre.schemas import MAX_ID, Id
from alarmcentre.users.models import Role, User

router = APIRouter(tags=["dispatch"])
PlanReader = Annotated[User, Depends(require_roles(*PLAN_READERS))]
PlanEditor = Annotated[User, Depends(require_roles(*CLIENT_EDITORS))]
Operator = Annotated[User, Depends(require_roles(*INCIDENT_ROLES))]
Admin = Annotated[User, Depends(require_roles(Role.ADMIN))]


@contextmanager
def _http_errors() -> Iterator[None]:
    """Business errors as HTTP answers: never a 500 for a request that merely makes no sense now."""
    try:
        yield
    except actions.Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except actions.Forbidden as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from exc
    except (actions.Invalid, plans.PlanError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc


def _client(session: SessionDep, client_id: int) -> Client:
    client = session.get(Client, client_id) if 0 < client_id <= MAX_ID else None
    if client is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"client {client_id} not found")
    return client


def _incident(session: SessionDep, incident_id: int) -> Incident:
    # with_for_update: two operators acting at once on one incident are serialised (PostgreSQL).
    incident = session.get(Incident, incident_id, with_for_update=True) if 0 < incident_id <= MAX_ID else None
    if incident is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"incident {incident_id} not found")
    return incident


# -- plans and resources -----------------------------------------------------------------


@router.get("/api/v1/clients/{client_id}/plan", response_model=list[PlanStepOut])
def get_plan(_u: PlanReader, session: SessionDep, client_id: int) -> list[PlanStepOut]:
    return plans.get_plan(session, client=_client(session, client_id))


@router.put("/api/v1/clients/{client_id}/plan", response_model=list[PlanStepOut])
def replace_plan(_u: PlanEditor, body: PlanIn, session: SessionDep, client_id: int) -> list[PlanStepOut]:
    """Replace the whole ordered plan. Incidents already open keep the plan they started with."""
    with _http_errors():
        return plans.replace_plan(session, client=_client(session, client_id), steps=body.steps)


@router.get("/api/v1/resources", response_model=list[ResourceOut])
def list_resources(_u: PlanReader, session: SessionDep, municipality_id: Id | None = None) -> list[SharedResource]:
    return list(plans.list_resources(session, municipality_id=municipality_id))


@router.post("/api/v1/resources", response_model=ResourceOut, status_code=status.HTTP_201_CREATED)
def create_resource(_u: Admin, body: ResourceIn, session: SessionDep) -> SharedResource:
    resource = SharedResource(**body.model_dump())
    session.add(resource)
    session.flush()
    return resource


@router.put("/api/v1/resources/{resource_id}", response_model=ResourceOut)
def update_resource(_u: Admin, body: ResourceIn, session: SessionDep, resource_id: int) -> SharedResource:
    resource = session.get(SharedResource, resource_id) if 0 < resource_id <= MAX_ID else None
    if resource is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"resource {resource_id} not found")
    for name, value in body.model_dump().items():
        setattr(resource, name, value)
    return resource


@router.get("/api/v1/outcomes", response_model=list[str])
def outcome_catalogue(_u: Operator) -> list[str]:
    """The outcome codes an incident can be resolved with."""
    return [outcome.value for outcome in actions.Outcome]


# -- operator actions --------------------------------------------------------------------


@router.get("/api/v1/incidents/{incident_id}/steps", response_model=list[IncidentStepOut])
def incident_steps(_u: Operator, session: SessionDep, incident_id: int) -> list[IncidentStep]:
    incident = _incident(session, incident_id)
    return list(session.scalars(select(IncidentStep).where(IncidentStep.incident_id == incident.id)
                                .order_by(IncidentStep.position)))


def _action(path: str, body_type: type | None, do: Callable[..., object], summary: str) -> None:
    """Register POST /api/v1/incidents/{id}/{path}: load (locked), act, answer with the incident."""

    def run(user: User, session: SessionDep, incident_id: int, body: object) -> Incident:
        incident = _incident(session, incident_id)
        with _http_errors():
            do(session, incident, user, body)
        session.flush()
        return incident

    if body_type is None:
        def endpoint(user: User, session: SessionDep, incident_id: int) -> Incident:
            return run(user, session, incident_id, None)

        endpoint.__annotations__ = {"user": Operator, "session": SessionDep, "incident_id": int}
    else:
        def endpoint(user: User, session: SessionDep, incident_id: int, body: object) -> Incident:  # type: ignore[misc]
            return run(user, session, incident_id, body)

        # This module postpones annotations; FastAPI reads these real types instead.
        endpoint.__annotations__ = {"user": Operator, "session": SessionDep, "incident_id": int, "body": body_type}
    endpoint.__name__ = f"incident_{path.replace('/', '_')}"
    router.add_api_route(f"/api/v1/incidents/{{incident_id}}/{path}", endpoint, methods=["POST"],
                         response_model=IncidentOut, summary=summary)


_action("acknowledge", None, lambda s, i, u, b: actions.acknowledge(s, incident=i, user=u),
        "Claim the incident (409 if someone else has)")
_action("calls", CallIn, lambda s, i, u, b: actions.record_call(
    s, incident=i, user=u, answered=b.answered, client_said=b.client_said, notes=b.notes),
    "Record a call to the client")
_action("steps/start", StepRef, lambda s, i, u, b: actions.start_step(s, incident=i, user=u, step_id=b.step_id),
        "Start a plan step: dispatch by SMS, request the keys service, or take on a task")
_action("notify", StepRef, lambda s, i, u, b: actions.notify_contact(s, incident=i, user=u, step_id=b.step_id),
        "Inform a contact by SMS (no answer expected)")
_action("emergency", EmergencyIn, lambda s, i, u, b: actions.record_emergency_call(
    s, incident=i, user=u, number=b.number, reference=b.reference, notes=b.notes),
    "Record that emergency services were called")
_action("notes", NoteIn, lambda s, i, u, b: actions.add_note(s, incident=i, user=u, text=b.text), "Add a note")
_action("handover", HandoverIn, lambda s, i, u, b: actions.hand_over(
    s, incident=i, user=u, to_user_id=b.to_user_id, notes=b.notes), "Hand the incident to another operator")
_action("resolve", ResolveIn, lambda s, i, u, b: actions.resolve(
    s, incident=i, user=u, outcome=b.outcome, notes=b.notes), "Resolve with an outcome code")


@router.post("/api/v1/incidents/{incident_id}/steps/{step_id}/answer", response_model=IncidentOut)
def answer_step(user: Operator, body: StepAnswerIn, session: SessionDep, incident_id: int,
                step_id: Id) -> Incident:
    """Record an answer received by phone, or that an operator task is done (answer: done)."""
    incident = _incident(session, incident_id)
    with _http_errors():
        actions.answer_step(session, incident=incident, user=user, step_id=step_id, answer=body.answer)
    return incident


@router.post("/api/v1/incidents/{incident_id}/reopen", response_model=IncidentOut)
def reopen(user: Operator, body: ReopenIn, request: Request, session: SessionDep, incident_id: int) -> Incident:
    incident = _incident(session, incident_id)
    with _http_errors():
        actions.reopen(session, incident=incident, user=user, reason=body.reason,
                       settings=request.app.state.settings)
    return incident


# -- texts -------------------------------------------------------------------------------


@router.get("/api/v1/sms", response_model=list[SmsOut])
def list_sms(_u: Operator, session: SessionDep, incident_id: Id | None = None,
             limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[SmsMessage]:
    """Texts in and out, newest first: the outbox when Twilio is not configured."""
    return recent_messages(session, incident_id=incident_id, limit=limit)


@router.post("/api/v1/sms/simulate-reply", response_model=SmsOut, status_code=status.HTTP_201_CREATED)
def simulate_reply(_u: Operator, body: SimulatedReplyIn, request: Request, session: SessionDep) -> SmsMessage:
    """For testers and the demo: a text 'from' a phone, as if it came from the network. Outbox only."""
    if request.app.state.settings.twilio_configured:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="real SMS is configured: reply from a phone")
    result = handle_inbound(session, from_number=body.from_number, to_number=OUTBOX_NUMBER, body=body.body,
                            provider="outbox", provider_sid=None)
    assert result.message is not None
    return result.message


# -- Twilio webhooks (authenticated by Twilio's signature, not a token) -------------------

TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


async def _verified_form(request: Request) -> dict[str, str]:
    settings = request.app.state.settings
    if not settings.twilio_configured:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="Twilio webhooks are off: Twilio is not configured")
    from twilio.request_validator import RequestValidator

    form = {key: str(value) for key, value in (await request.form()).items()}
    # Twilio signs the URL it called: behind a proxy that is the public URL, not what we see.
    base = (settings.public_url or str(request.base_url)).rstrip("/")
    url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    signature = request.headers.get("X-Twilio-Signature", "")
    if not RequestValidator(settings.twilio_auth_token).validate(url, form, signature):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="bad or missing X-Twilio-Signature")
    return form


@router.post("/webhooks/twilio/sms", include_in_schema=False)
async def twilio_inbound(request: Request) -> Response:
    form = await _verified_form(request)
    factory = request.app.state.session_factory

    def store() -> None:
        with transaction(factory, writes=True) as session:  # reads, then writes: the SQLite lock first
            handle_inbound(session, from_number=form.get("From", ""), to_number=form.get("To", ""),
                           body=form.get("Body", ""), provider="twilio", provider_sid=form.get("MessageSid"))

    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(store)
    return Response(TWIML_EMPTY, media_type="application/xml")


@router.post("/webhooks/twilio/status", include_in_schema=False)
async def twilio_status(request: Request) -> Response:
    form = await _verified_form(request)
    factory = request.app.state.session_factory

    def store() -> None:
        with transaction(factory, writes=True) as session:  # reads, then writes: the SQLite lock first
            failed = apply_status_callback(session, provider_sid=form.get("MessageSid", ""),
                                           status=form.get("MessageStatus", ""), error_code=form.get("ErrorCode"))
            if failed is not None:
                step_failed(session, failed)

    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(store)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
