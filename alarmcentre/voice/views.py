"""Twilio's voice webhooks (signed by Twilio, like the SMS ones): not part of the API schema; and the outbox's
pretend line for testers (`api`, in the schema)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request, Response, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from alarmcentre.api_deps import SessionDep
from alarmcentre.db import transaction
from alarmcentre.dispatch.views import Operator
from alarmcentre.dispatch.views import _verified_form as verified_form
from alarmcentre.voice import dispatch, service, simulated
from alarmcentre.voice.provider import public_base
from alarmcentre.voice.schemas import SimulatedCallIn, SimulatedCallOut

router = APIRouter(include_in_schema=False)
XML = "application/xml"


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() and len(value) < 12 else None


async def _in_transaction(request: Request, work: Callable[[Session], str | None]) -> str | None:
    factory = request.app.state.session_factory

    def run() -> str | None:
        # Every report reads, then writes: on SQLite take the write lock first, or a commit of the
        # scheduler or the ingest in between fails it ("database is locked", seen in the browser tests).
        with transaction(factory, writes=True) as session:
            return work(session)

    return await run_in_threadpool(run)


@router.post(service.WEBHOOKS)
async def incoming(request: Request) -> Response:
    """A call to the centre's number (the number's 'A call comes in' webhook)."""
    form = await verified_form(request)
    settings, base = request.app.state.settings, public_base(request)
    twiml = await _in_transaction(request, lambda session: service.incoming_call(
        session, settings=settings, base=base, call_sid=form.get("CallSid", ""), from_number=form.get("From", ""),
        to_number=form.get("To", ""), status=form.get("CallStatus", "ringing")))
    return Response(twiml, media_type=XML)


@router.post(service.WEBHOOKS + "/status")
async def call_status(request: Request) -> Response:
    """Status callbacks: of the operator's legs (with ?call=) and of incoming calls (the number's status URL)."""
    form = await verified_form(request)
    call_id = _int(request.query_params.get("call"))
    await _in_transaction(request, lambda session: service.apply_status(
        session, call_id=call_id, call_sid=form.get("CallSid", ""), status=form.get("CallStatus", ""),
        duration=form.get("CallDuration")))
    return Response(status_code=204)


@router.post(service.WEBHOOKS + "/connected")
async def caller_connected(request: Request) -> Response:
    """Fetched by Twilio for the caller as an operator takes them out of the queue."""
    form = await verified_form(request)
    call_id, leg_id = _int(request.query_params.get("call")), _int(request.query_params.get("leg"))
    if call_id is not None and leg_id is not None:
        await _in_transaction(request, lambda session: service.connected(
            session, call_id=call_id, leg_id=leg_id, call_sid=form.get("CallSid", ""),
            queue_time=form.get("QueueTime")))
    return Response(service.EMPTY_TWIML, media_type=XML)


@router.post(service.WEBHOOKS + "/left")
async def caller_left_queue(request: Request) -> Response:
    """Enqueue's action: the caller left the queue (bridged to an operator, or hung up)."""
    form = await verified_form(request)
    call_id = _int(request.query_params.get("call"))
    if call_id is not None:
        await _in_transaction(request, lambda session: service.left_queue(
            session, call_id=call_id, call_sid=form.get("CallSid", ""), result=form.get("QueueResult", ""),
            queue_time=form.get("QueueTime")))
    return Response(service.EMPTY_TWIML, media_type=XML)


@router.post(service.WEBHOOKS + "/dialed")
async def person_dialed(request: Request) -> Response:
    """Dial's action on an operator's call: whether the person answered, and for how long they spoke."""
    form = await verified_form(request)
    call_id = _int(request.query_params.get("call"))
    if call_id is not None:
        await _in_transaction(request, lambda session: service.dialed(
            session, call_id=call_id, call_sid=form.get("CallSid", ""), result=form.get("DialCallStatus", ""),
            duration=form.get("DialCallDuration")))
    return Response(service.EMPTY_TWIML, media_type=XML)


@router.post(service.WEBHOOKS + "/gather")
async def key_pressed(request: Request) -> Response:
    """Gather's action on a plan step's call: the key the contact pressed (1 going, 2 cannot)."""
    form = await verified_form(request)
    call_id, base = _int(request.query_params.get("call")), public_base(request)
    twiml = service.EMPTY_TWIML
    if call_id is not None:
        twiml = await _in_transaction(request, lambda session: dispatch.gathered(
            session, call_id=call_id, call_sid=form.get("CallSid", ""), digits=form.get("Digits", ""),
            base=base)) or twiml
    return Response(twiml, media_type=XML)


# -- the outbox's pretend line (in the API schema; off with Twilio) ---------------------------

api = APIRouter(tags=["voice"])


@api.post("/api/v1/voice/simulate-call", response_model=SimulatedCallOut, status_code=status.HTTP_201_CREATED)
def simulate_call(_u: Operator, body: SimulatedCallIn, request: Request, session: SessionDep) -> SimulatedCallOut:
    """For testers and the demo: a call to the centre from a phone, as if the network brought it. Outbox only;
    answering it on the dashboard then connects at once (docs/voice.md)."""
    settings = request.app.state.settings
    if settings.twilio_configured:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="real calls are configured: call from a phone")
    call = simulated.simulate_incoming(session, settings=settings, base=public_base(request),
                                       from_number=body.from_number)
    return SimulatedCallOut(call_id=call.id, incident_id=call.incident_id, from_number=call.from_number,
                            status=call.status)
