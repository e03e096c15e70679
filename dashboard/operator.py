"""The operators' pages: the live queue, incidents with their plan and timeline, the actions,
and revealing access information."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError

from alarmcentre import clock
from alarmcentre.api_deps import INCIDENT_ROLES, SessionDep
from alarmcentre.clients import access
from alarmcentre.clients import service as clients
from alarmcentre.devices import service as devices
from alarmcentre.dispatch import actions
from alarmcentre.dispatch.schemas import CallIn, EmergencyIn, HandoverIn, NoteIn, ReopenIn, ResolveIn, StepAnswerIn
from alarmcentre.incidents import service as incidents
from alarmcentre.incidents.models import ALARM_KINDS, Incident, IncidentStatus
from alarmcentre.reports import today
from alarmcentre.schemas import MAX_ID
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User
from alarmcentre.visits import service as visits
from alarmcentre.voice import service as voice
from alarmcentre.voice import simulated
from alarmcentre.voice.provider import public_base, voice_provider
from alarmcentre_dashboard.auth import check_csrf, roles
from alarmcentre_dashboard.render import SECURITY_HEADERS, render, render_text, request_language, translate

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

router = APIRouter(include_in_schema=False)
Operator = Annotated[User, Depends(roles(*INCIDENT_ROLES))]


# -- the queue ---------------------------------------------------------------------------


def queue_rows(session: Session) -> list[dict[str, Any]]:
    """Every incident not resolved, most urgent first, with what the queue shows of each."""
    rows = incidents.queue(session)
    calling = voice.incidents_with_waiting_callers(session, [row.incident.id for row in rows])
    return [{"incident": row.incident, "client": row.client, "owner": row.owner, "serial": row.serial,
             "alerts": row.alerts, "cancelled": row.cancelled, "technical": row.incident.kind not in ALARM_KINDS,
             "caller_waiting": row.incident.id in calling}
            for row in rows]


def _queue_context(request: Request, session: Session) -> dict[str, Any]:
    settings = request.app.state.settings
    return {"rows": queue_rows(session),
            "figures": today.todays_figures(session, ZoneInfo(settings.local_timezone),
                                            target_s=settings.answer_target_s, limit_s=settings.answer_limit_s)}


@router.get("/ui/queue")
def queue_page(request: Request, session: SessionDep, _user: Operator) -> Response:
    return render(request, "queue.html", _queue_context(request, session))


CSRF_PLACEHOLDER = "__csrf__"


@router.get("/ui/queue/rows")
def queue_fragment(request: Request, session: SessionDep, _user: Operator) -> Response:
    """The same for every operator but for the CSRF token: rendered once per change, then shared."""

    def make() -> str:
        context = _queue_context(request, session)
        context["csrf"] = CSRF_PLACEHOLDER
        return render_text(request, "_queue_rows.html", context)

    html = request.app.state.shared_rendering.get(("queue", request_language(request)), request.app.state.live_feed,
                                                  make)
    return HTMLResponse(html.replace(CSRF_PLACEHOLDER, request.state.csrf), headers=SECURITY_HEADERS)


@router.get("/ui/alarms")
def waiting_alarms(session: SessionDep, _user: Operator) -> JSONResponse:
    """Alarms nobody has taken yet: every page of an operator alerts (sound, title) while there are any."""
    rows = incidents.waiting_alarms(session)
    return JSONResponse({"waiting": [{"id": i, "opened": int(at.timestamp() * 1000)} for i, at in rows]},
                        headers={"Cache-Control": "no-store"})


# -- incidents: search and view -----------------------------------------------------------


@router.get("/ui/incidents")
def incident_list(request: Request, session: SessionDep, _user: Operator, q: str = "", state: str = "all",
                  days: int = 7) -> Response:
    days = min(max(days, 1), 366)
    since = clock.now() - timedelta(days=days)
    chosen = incidents.SearchState(state) if state in {s.value for s in incidents.SearchState} else \
        incidents.SearchState.ALL
    text = q.strip()[:100].replace("\x00", "")
    rows = incidents.search(session, text=text, state=chosen, since=since)
    return render(request, "incidents.html", {"rows": rows, "q": text, "state": chosen.value, "days": days})


def _load(session: Session, incident_id: int, *, lock: bool = False) -> Incident:
    incident = None
    if 0 < incident_id <= MAX_ID:
        incident = incidents.get_incident_for_update(session, incident_id=incident_id) if lock else \
            incidents.get_incident(session, incident_id=incident_id)
    if incident is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such incident")
    return incident


def _incident_context(request: Request, session: Session, incident: Incident, user: User) -> dict[str, Any]:
    client = clients.get_client(session, incident.client_id) if incident.client_id else None
    device = devices.get_device(session, incident.device_id) if incident.device_id else None
    recent: list[Incident] = []
    last_visits: list[Any] = []
    next_visit = None
    if client is not None:
        recent = list(incidents.for_client(session, client_id=client.id, excluding=incident.id, limit=5))
        found, next_visit = visits.client_visits(session, client_id=client.id, limit=5)
        last_visits = list(found)
    staff = users.display_names(session, (incident.owner_id, incident.acknowledged_by, incident.resolved_by))
    colleagues = users.active_users(session, roles=(Role.OPERATOR, Role.SUPERVISOR), excluding=user.id)
    settings = request.app.state.settings
    reopen_until = (incident.resolved_at + timedelta(minutes=settings.reopen_window_minutes)
                    if incident.resolved_at else None)
    return {
        "incident": incident, "client": client, "device": device, "recent": recent,
        "last_visits": last_visits, "next_visit": next_visit, "staff": staff, "colleagues": colleagues,
        "timeline": list(reversed(incident.timeline)), "steps": incident.steps,
        "has_access": client is not None and access.has_access_info(session, client_id=client.id),
        "can_reveal": access.may_reveal(incident, user),
        "mine": incident.owner_id == user.id,
        "can_reopen": reopen_until is not None and clock.now() <= reopen_until,
        "outcomes": list(actions.Outcome), "client_said": list(actions.ClientSaid),
        "technical": incident.kind not in ALARM_KINDS,
        "calls": voice.incident_calls(session, incident.id),
        "waiting_calls": voice.waiting_calls(session, incident.id),
        "call_targets": voice.call_targets(session, incident) if incident.status != IncidentStatus.RESOLVED else [],
    }


@router.get("/ui/incidents/{incident_id}")
def incident_page(request: Request, session: SessionDep, user: Operator, incident_id: int) -> Response:
    incident = _load(session, incident_id)
    return render(request, "incident.html", _incident_context(request, session, incident, user))


@router.get("/ui/incidents/{incident_id}/live")
def incident_fragment(request: Request, session: SessionDep, user: Operator, incident_id: int) -> Response:
    incident = _load(session, incident_id)
    return render(request, "_incident_live.html", _incident_context(request, session, incident, user))


# -- actions (forms) ---------------------------------------------------------------------


class ActionRefused(Exception):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


@contextmanager
def _refusals(session: Session) -> Iterator[None]:
    """An action that is refused changes nothing (savepoint) and is explained on the page."""
    try:
        with session.begin_nested():
            yield
    except actions.Conflict as exc:
        raise ActionRefused(str(exc), status.HTTP_409_CONFLICT) from exc
    except (actions.Forbidden, access.RevealRefused) as exc:
        raise ActionRefused(str(exc), status.HTTP_403_FORBIDDEN) from exc
    except actions.Invalid as exc:
        raise ActionRefused(str(exc), status.HTTP_422_UNPROCESSABLE_CONTENT) from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ActionRefused(problems, status.HTTP_422_UNPROCESSABLE_CONTENT) from exc


def _act(request: Request, session: Session, user: User, incident_id: int,
         do: Callable[[Incident], None]) -> Response:
    incident = _load(session, incident_id, lock=True)
    try:
        with _refusals(session):
            do(incident)
    except ActionRefused as refused:
        return _refused_page(request, session, user, incident_id, refused)
    return RedirectResponse(f"/ui/incidents/{incident_id}", status_code=303)


def _refused_page(request: Request, session: Session, user: User, incident_id: int,
                  refused: ActionRefused) -> Response:
    """The incident as it is now (the refused action rolled back), with the reason."""
    session.expire_all()
    context = _incident_context(request, session, _load(session, incident_id), user)
    context["error"] = translate(request, "Not done: %(reason)s", reason=str(refused))
    return render(request, "incident.html", context, status_code=refused.status_code)


Csrf = Depends(check_csrf)
Text = Annotated[str, Form(max_length=5000)]


@router.post("/ui/incidents/{incident_id}/acknowledge", dependencies=[Csrf])
def acknowledge(request: Request, session: SessionDep, user: Operator, incident_id: int) -> Response:
    return _act(request, session, user, incident_id, lambda i: actions.acknowledge(session, incident=i, user=user))


@router.post("/ui/incidents/{incident_id}/call", dependencies=[Csrf])
def call(request: Request, session: SessionDep, user: Operator, incident_id: int,
         answered: Annotated[str, Form()] = "yes", client_said: Annotated[str, Form()] = "other",
         notes: Text = "") -> Response:
    def do(incident: Incident) -> None:
        body = CallIn(answered=answered == "yes", client_said=client_said if answered == "yes" else "no_answer",
                      notes=notes)
        actions.record_call(session, incident=incident, user=user, answered=body.answered,
                            client_said=body.client_said, notes=body.notes)
    return _act(request, session, user, incident_id, do)


@router.post("/ui/incidents/{incident_id}/voice/answer", dependencies=[Csrf])
def answer_call(request: Request, session: SessionDep, user: Operator, incident_id: int) -> Response:
    provider, base = voice_provider(request), public_base(request)

    def do(incident: Incident) -> None:
        leg = voice.answer(session, provider=provider, base=base, incident=incident, user=user)
        if provider.name == "outbox":  # no telephone network: the pretend line connects at once
            simulated.answered_on_the_outbox(session, leg)
    return _act(request, session, user, incident_id, do)


@router.post("/ui/incidents/{incident_id}/voice/call", dependencies=[Csrf])
def call_person(request: Request, session: SessionDep, user: Operator, incident_id: int,
                target: Annotated[str, Form(max_length=40)]) -> Response:
    provider, base = voice_provider(request), public_base(request)
    return _act(request, session, user, incident_id,
                lambda i: voice.call_person(session, provider=provider, base=base, incident=i, user=user,
                                            target=target))


@router.post("/ui/incidents/{incident_id}/steps/{step_id}/start", dependencies=[Csrf])
def start_step(request: Request, session: SessionDep, user: Operator, incident_id: int, step_id: int) -> Response:
    return _act(request, session, user, incident_id,
                lambda i: actions.start_step(session, incident=i, user=user, step_id=step_id))


@router.post("/ui/incidents/{incident_id}/steps/{step_id}/notify", dependencies=[Csrf])
def notify(request: Request, session: SessionDep, user: Operator, incident_id: int, step_id: int) -> Response:
    return _act(request, session, user, incident_id,
                lambda i: actions.notify_contact(session, incident=i, user=user, step_id=step_id))


@router.post("/ui/incidents/{incident_id}/steps/{step_id}/answer", dependencies=[Csrf])
def answer_step(request: Request, session: SessionDep, user: Operator, incident_id: int, step_id: int,
                answer: Annotated[str, Form()]) -> Response:
    def do(incident: Incident) -> None:
        body = StepAnswerIn(answer=answer)  # type: ignore[arg-type]
        actions.answer_step(session, incident=incident, user=user, step_id=step_id, answer=body.answer)
    return _act(request, session, user, incident_id, do)


@router.post("/ui/incidents/{incident_id}/emergency", dependencies=[Csrf])
def emergency(request: Request, session: SessionDep, user: Operator, incident_id: int,
              number: Annotated[str, Form()] = "113", reference: Annotated[str, Form(max_length=100)] = "",
              notes: Text = "") -> Response:
    def do(incident: Incident) -> None:
        body = EmergencyIn(number=number, reference=reference, notes=notes)  # type: ignore[arg-type]
        actions.record_emergency_call(session, incident=incident, user=user, number=body.number,
                                      reference=body.reference, notes=body.notes)
    return _act(request, session, user, incident_id, do)


@router.post("/ui/incidents/{incident_id}/note", dependencies=[Csrf])
def note(request: Request, session: SessionDep, user: Operator, incident_id: int, text: Text = "") -> Response:
    def do(incident: Incident) -> None:
        actions.add_note(session, incident=incident, user=user, text=NoteIn(text=text).text)
    return _act(request, session, user, incident_id, do)


@router.post("/ui/incidents/{incident_id}/handover", dependencies=[Csrf])
def handover(request: Request, session: SessionDep, user: Operator, incident_id: int,
             to_user_id: Annotated[int, Form()], notes: Text = "") -> Response:
    def do(incident: Incident) -> None:
        body = HandoverIn(to_user_id=to_user_id, notes=notes)
        actions.hand_over(session, incident=incident, user=user, to_user_id=body.to_user_id, notes=body.notes)
    return _act(request, session, user, incident_id, do)


@router.post("/ui/incidents/{incident_id}/resolve", dependencies=[Csrf])
def resolve(request: Request, session: SessionDep, user: Operator, incident_id: int,
            outcome: Annotated[str, Form()] = "", notes: Text = "") -> Response:
    def do(incident: Incident) -> None:
        body = ResolveIn(outcome=outcome, notes=notes)  # type: ignore[arg-type]
        actions.resolve(session, incident=incident, user=user, outcome=body.outcome, notes=body.notes)
    return _act(request, session, user, incident_id, do)


@router.post("/ui/incidents/{incident_id}/reopen", dependencies=[Csrf])
def reopen(request: Request, session: SessionDep, user: Operator, incident_id: int,
           reason: Annotated[str, Form(max_length=500)] = "") -> Response:
    def do(incident: Incident) -> None:
        actions.reopen(session, incident=incident, user=user, reason=ReopenIn(reason=reason).reason,
                       settings=request.app.state.settings)
    return _act(request, session, user, incident_id, do)


@router.post("/ui/incidents/{incident_id}/reveal", dependencies=[Csrf])
def reveal(request: Request, session: SessionDep, user: Operator, incident_id: int) -> Response:
    """Shows the access information in this one answer (never cached), and audits it."""
    incident = _load(session, incident_id, lock=True)
    cipher = request.app.state.access_cipher.get()
    revealed = ""
    try:
        with _refusals(session):
            revealed = access.reveal(session, cipher, incident=incident, user=user)
    except ActionRefused as refused:
        return _refused_page(request, session, user, incident_id, refused)
    session.flush()
    session.expire_all()
    context = _incident_context(request, session, _load(session, incident_id), user)
    context["revealed"] = revealed
    return render(request, "incident.html", context)
