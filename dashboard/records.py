"""Pages beside the queue: clients (read; edit for admins), the SMS outbox, the reveal audit."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from alarmcentre.api_deps import INCIDENT_ROLES, SessionDep
from alarmcentre.clients import access
from alarmcentre.clients import service as clients
from alarmcentre.clients.models import Client, ClientStatus
from alarmcentre.clients.schemas import ClientPatch
from alarmcentre.devices import service as devices
from alarmcentre.dispatch.inbound import handle_inbound
from alarmcentre.dispatch.schemas import SimulatedReplyIn
from alarmcentre.dispatch.sms import OUTBOX_NUMBER, recent_messages
from alarmcentre.incidents import service as incidents
from alarmcentre.users.models import Role, User
from alarmcentre.voice import simulated
from alarmcentre.voice.provider import public_base
from alarmcentre.voice.schemas import SimulatedCallIn
from alarmcentre_dashboard.auth import check_csrf, roles
from alarmcentre_dashboard.render import render, translate

router = APIRouter(include_in_schema=False)
Reader = Annotated[User, Depends(roles(*INCIDENT_ROLES))]
Admin = Annotated[User, Depends(roles(Role.ADMIN))]
Supervising = Annotated[User, Depends(roles(Role.SUPERVISOR, Role.ADMIN))]
Csrf = Depends(check_csrf)


@router.get("/ui/clients")
def client_list(request: Request, session: SessionDep, _user: Reader, q: str = "", state: str = "") -> Response:
    text = q.strip()[:100].replace("\x00", "")
    chosen = ClientStatus(state) if state in {s.value for s in ClientStatus} else None
    rows = clients.list_clients(session, search=text or None, status=chosen, limit=300)
    return render(request, "clients.html", {"rows": rows, "q": text, "state": state})


def _client(session: SessionDep, client_id: int) -> Client:
    client = clients.get_client(session, client_id)
    if client is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such client")
    return client


def _client_context(session: SessionDep, client: Client) -> dict[str, Any]:
    return {
        "client": client,
        "contacts": clients.list_contacts(session, client_id=client.id),
        "devices": devices.list_devices(session, client_id=client.id, limit=100),
        "incidents": incidents.for_client(session, client_id=client.id, limit=20),
        "has_access": access.has_access_info(session, client_id=client.id),
        "statuses": list(ClientStatus),
    }


@router.get("/ui/clients/{client_id}")
def client_page(request: Request, session: SessionDep, _user: Reader, client_id: int) -> Response:
    return render(request, "client.html", _client_context(session, _client(session, client_id)))


@router.post("/ui/clients/{client_id}", dependencies=[Csrf])
def edit_client(request: Request, session: SessionDep, user: Admin, client_id: int,
                full_name: Annotated[str, Form(max_length=200)], address: Annotated[str, Form(max_length=300)],
                phone: Annotated[str, Form(max_length=32)] = "", birth_date: Annotated[str, Form(max_length=10)] = "",
                care_level: Annotated[int, Form()] = 1, language: Annotated[str, Form()] = "lv",
                client_status: Annotated[str, Form()] = "active",
                medical_notes: Annotated[str, Form(max_length=5000)] = "",
                access_info: Annotated[str, Form(max_length=access.MAX_ACCESS_TEXT)] = "",
                clear_access: Annotated[str, Form()] = "") -> Response:
    client = _client(session, client_id)
    try:
        patch = ClientPatch(full_name=full_name, address=address, phone=phone or None,
                            birth_date=date.fromisoformat(birth_date) if birth_date else None,
                            care_level=care_level, language=language, status=client_status,  # type: ignore[arg-type]
                            medical_notes=medical_notes)
    except (ValidationError, ValueError) as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()) \
            if isinstance(exc, ValidationError) else str(exc)
        context = _client_context(session, client)
        context["error"] = translate(request, "Not saved: %(reason)s", reason=problems)
        return render(request, "client.html", context, status_code=422)
    clients.update_client(session, client=client, patch=patch)
    # The access text is write-only here: an empty field keeps what is stored, unless cleared.
    if access_info.strip() or clear_access:
        access.set_access_info(session, request.app.state.access_cipher.get(), client=client,
                               text="" if clear_access else access_info, user=user)
    return RedirectResponse(f"/ui/clients/{client.id}", status_code=303)


@router.get("/ui/sms")
def sms_page(request: Request, session: SessionDep, _user: Reader) -> Response:
    rows = recent_messages(session, limit=200)
    return render(request, "sms.html", {"rows": rows})


@router.post("/ui/sms/simulate-reply", dependencies=[Csrf])
def simulate_reply(request: Request, session: SessionDep, _user: Reader,
                   from_number: Annotated[str, Form(max_length=32)], body: Annotated[str, Form(max_length=1600)],
                   back: Annotated[str, Form(max_length=200)] = "") -> Response:
    """For testers and demos: a text 'from' a phone, as if it came from the network (outbox only)."""
    error, code = None, status.HTTP_422_UNPROCESSABLE_CONTENT
    if request.app.state.settings.twilio_configured:
        error = translate(request, "Real SMS is configured: reply from a phone.")
        code = status.HTTP_409_CONFLICT
    else:
        try:
            reply = SimulatedReplyIn(from_number=from_number, body=body)
        except ValidationError as exc:
            reason = "; ".join(e["msg"] for e in exc.errors())
            error = translate(request, "Not sent: %(reason)s", reason=reason)
        else:
            handle_inbound(session, from_number=reply.from_number, to_number=OUTBOX_NUMBER, body=reply.body,
                           provider="outbox", provider_sid=None)
    if error is not None:
        rows = recent_messages(session, limit=200)
        return render(request, "sms.html", {"rows": rows, "error": error}, status_code=code)
    target = back if back.startswith("/ui/") else "/ui/sms"
    return RedirectResponse(target, status_code=303)


@router.post("/ui/voice/simulate-call", dependencies=[Csrf])
def simulate_call(request: Request, session: SessionDep, _user: Reader,
                  from_number: Annotated[str, Form(max_length=32)]) -> Response:
    """For testers and demos: a call to the centre, as if the network brought it (outbox only); to its incident."""
    settings = request.app.state.settings
    error, code = None, status.HTTP_422_UNPROCESSABLE_CONTENT
    if settings.twilio_configured:
        error, code = translate(request, "Real calls are configured: call from a phone."), status.HTTP_409_CONFLICT
    else:
        try:
            call = SimulatedCallIn(from_number=from_number)
        except ValidationError as exc:
            error = translate(request, "Not sent: %(reason)s", reason="; ".join(e["msg"] for e in exc.errors()))
        else:
            made = simulated.simulate_incoming(session, settings=settings, base=public_base(request),
                                               from_number=call.from_number)
            return RedirectResponse(f"/ui/incidents/{made.incident_id}", status_code=303)
    rows = recent_messages(session, limit=200)
    return render(request, "sms.html", {"rows": rows, "error": error}, status_code=code)


@router.get("/ui/audit/reveals")
def reveal_audit(request: Request, session: SessionDep, _user: Supervising) -> Response:
    return render(request, "reveals.html", {"rows": access.reveals(session)})
