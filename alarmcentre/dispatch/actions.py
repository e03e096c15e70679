"""What operators do to an incident. Each action checks the state, changes it, and writes the timeline.

Errors: `Conflict` (the incident's state does not allow it; HTTP 409), `Forbidden` (not the
owner; 403), `Invalid` (the request makes no sense; 422).
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from alarmcentre import clock
from alarmcentre.clients.models import Client
from alarmcentre.config import Settings
from alarmcentre.dispatch import escalation, texts
from alarmcentre.dispatch.models import IncidentStep, StepState, TimerKind
from alarmcentre.dispatch.sms import queue_sms
from alarmcentre.incidents.models import Incident, IncidentStatus, TimelineKind
from alarmcentre.incidents.service import active_key_for, append_timeline
from alarmcentre.users.models import Role, User


class Conflict(Exception):
    pass


class Forbidden(Exception):
    pass


class Invalid(Exception):
    pass


class Outcome(StrEnum):
    """How an incident ended (the catalogue operators choose from)."""

    ACCIDENTAL_PRESS = "accidental_press"
    ASSISTANCE_AT_HOME = "assistance_at_home"  # the operator helped by talking
    CARER_VISIT = "carer_visit"
    RELATIVE_ATTENDED = "relative_attended"
    NEIGHBOUR_ATTENDED = "neighbour_attended"
    AMBULANCE = "ambulance"
    HOSPITALISED = "hospitalised"
    FALL_WITHOUT_INJURY = "fall_without_injury"
    POLICE_OR_RESCUE = "police_or_rescue"
    NO_RESPONSE = "no_response"
    TEST = "test"
    TECHNICAL_FAULT = "technical_fault"
    DECEASED = "deceased"
    OTHER = "other"


class ClientSaid(StrEnum):
    NEEDS_HELP = "needs_help"
    ACCIDENTAL_PRESS = "accidental_press"
    WANTS_TO_TALK = "wants_to_talk"
    ALL_WELL = "all_well"
    NO_ANSWER = "no_answer"
    OTHER = "other"


SUPERVISING = (Role.SUPERVISOR, Role.ADMIN)


def _actor(user: User) -> str:
    return f"user:{user.username}"


def _require_active(incident: Incident) -> None:
    if incident.status == IncidentStatus.RESOLVED:
        raise Conflict("the incident is resolved; reopen it first")


def require_owner(incident: Incident, user: User) -> None:
    """Raise unless `user` may act on the incident now (its owner, or a supervisor)."""
    _require_owner(incident, user)


def _require_owner(incident: Incident, user: User) -> None:
    """The owner acts; a supervisor or admin may act on any incident. Open incidents must be claimed first."""
    _require_active(incident)
    if incident.status == IncidentStatus.OPEN:
        raise Conflict("acknowledge the incident first")
    if incident.owner_id != user.id and user.role not in SUPERVISING:
        raise Forbidden("another operator owns this incident; ask for a handover")


def acknowledge(session: Session, *, incident: Incident, user: User) -> Incident:
    """Claim the incident. Atomic: of two operators at once, one wins and the other gets Conflict."""
    now = clock.now()
    claimed = session.execute(
        update(Incident).where(Incident.id == incident.id, Incident.status == IncidentStatus.OPEN)
        .values(status=IncidentStatus.ACKNOWLEDGED, acknowledged_at=now, acknowledged_by=user.id, owner_id=user.id)
    ).rowcount
    session.refresh(incident)
    if claimed != 1:
        if incident.status == IncidentStatus.RESOLVED:
            raise Conflict("the incident is resolved")
        owner = session.get(User, incident.owner_id) if incident.owner_id else None
        raise Conflict(f"already acknowledged by {owner.username if owner else 'someone else'}")
    escalation.cancel_timers(session, incident_id=incident.id, kind=TimerKind.ACK_ALERT)
    append_timeline(session, incident, kind=TimelineKind.ACKNOWLEDGED, actor=_actor(user), user_id=user.id,
                    details={"waited_s": round((now - incident.opened_at).total_seconds(), 1)})
    return incident


def record_call(session: Session, *, incident: Incident, user: User, answered: bool, client_said: ClientSaid,
                notes: str) -> None:
    _require_owner(incident, user)
    if answered and client_said == ClientSaid.NO_ANSWER:
        raise Invalid("an answered call cannot have the outcome no_answer")
    append_timeline(session, incident, kind=TimelineKind.CALL, actor=_actor(user), user_id=user.id,
                    details={"answered": answered, "client_said": client_said.value if answered else "no_answer",
                             "notes": notes})
    if answered and incident.client_id is not None:
        client = session.get(Client, incident.client_id)
        if client is not None:  # an operator call with the client counts as contact (welfare checks)
            now = clock.now()
            client.last_contact_at = max(client.last_contact_at or now, now)


def _step(session: Session, incident: Incident, step_id: int) -> IncidentStep:
    step = session.get(IncidentStep, step_id)
    if step is None or step.incident_id != incident.id:
        raise Invalid(f"step {step_id} is not part of incident {incident.id}")
    return step


def start_step(session: Session, *, incident: Incident, user: User, step_id: int) -> IncidentStep:
    """Dispatch by SMS, request the keys service, or take on an operator task: whatever the step is."""
    _require_owner(incident, user)
    step = _step(session, incident, step_id)
    if step.state != StepState.PENDING:
        raise Conflict(f"step {step.position} is already {step.state.value}")
    escalation.start_step(session, incident=incident, step=step, actor=_actor(user), user_id=user.id)
    return step


def answer_step(session: Session, *, incident: Incident, user: User, step_id: int, answer: str) -> IncidentStep:
    """The operator records an answer received another way (a phone call) or a finished task."""
    _require_owner(incident, user)
    step = _step(session, incident, step_id)
    if step.state in (StepState.PENDING, StepState.CANCELLED):
        raise Conflict(f"step {step.position} has not started")
    if answer == "no_answer":
        if step.state not in (StepState.WAITING, StepState.TASK):
            raise Conflict(f"step {step.position} is {step.state.value}")
        now = clock.now()
        step.state, step.finished_at = StepState.NO_ANSWER, now
        escalation.cancel_timers(session, incident_id=incident.id, step_id=step.id)
        append_timeline(session, incident, kind=TimelineKind.STEP_ANSWER, actor=_actor(user), user_id=user.id,
                        details={"step_id": step.id, "answer": "no_answer", "via": "operator"})
        escalation.advance(session, incident=incident, after=step, reason="no_answer")
        return step
    reply = texts.Reply(answer)
    if step.state in (StepState.DONE, StepState.DECLINED, StepState.NO_ANSWER, StepState.FAILED):
        raise Conflict(f"step {step.position} is already {step.state.value}")
    escalation.record_answer(session, incident=incident, step=step, answer=reply, actor=_actor(user),
                             user_id=user.id, via="operator")
    return step


def notify_contact(session: Session, *, incident: Incident, user: User, step_id: int) -> None:
    """Inform a contact (a relative, say) by SMS; no answer is expected."""
    _require_owner(incident, user)
    step = _step(session, incident, step_id)
    client = session.get(Client, incident.client_id) if incident.client_id else None
    body = texts.inform_text(step.language, client_name=client.full_name if client else "?",
                             alarm=incident.kind.value)
    queue_sms(session, to=step.phone, body=body, purpose="inform", incident_id=incident.id, step_id=step.id)
    append_timeline(session, incident, kind=TimelineKind.NOTIFIED, actor=_actor(user), user_id=user.id,
                    details={"step_id": step.id, "name": step.name, "kind": step.kind})


def record_emergency_call(session: Session, *, incident: Incident, user: User, number: str, reference: str,
                          notes: str) -> None:
    _require_owner(incident, user)
    append_timeline(session, incident, kind=TimelineKind.EMERGENCY_CALLED, actor=_actor(user), user_id=user.id,
                    details={"number": number, "reference": reference, "notes": notes})
    for step in session.scalars(select(IncidentStep).where(
            IncidentStep.incident_id == incident.id, IncidentStep.kind == "emergency_services",
            IncidentStep.state.in_([StepState.PENDING, StepState.TASK]))):
        step.state, step.finished_at = StepState.DONE, clock.now()


def add_note(session: Session, *, incident: Incident, user: User, text: str) -> None:
    """Notes are allowed on any incident, resolved ones too (things learnt afterwards)."""
    append_timeline(session, incident, kind=TimelineKind.NOTE, actor=_actor(user), user_id=user.id,
                    details={"text": text})


def hand_over(session: Session, *, incident: Incident, user: User, to_user_id: int, notes: str) -> None:
    _require_owner(incident, user)
    target = session.get(User, to_user_id)
    if target is None or not target.active or target.role not in (Role.OPERATOR, Role.SUPERVISOR, Role.ADMIN):
        raise Invalid("hand over to an active operator or supervisor")
    if target.id == incident.owner_id:
        raise Conflict(f"{target.username} owns it already")
    previous = incident.owner_id
    incident.owner_id = target.id
    append_timeline(session, incident, kind=TimelineKind.HANDOVER, actor=_actor(user), user_id=user.id,
                    details={"from_user_id": previous, "to_user_id": target.id, "to": target.username,
                             "notes": notes})


def resolve(session: Session, *, incident: Incident, user: User, outcome: Outcome, notes: str) -> None:
    _require_owner(incident, user)
    now = clock.now()
    incident.status, incident.resolved_at, incident.resolved_by = IncidentStatus.RESOLVED, now, user.id
    incident.outcome, incident.active_key = outcome.value, None
    escalation.close_steps(session, incident=incident)
    append_timeline(session, incident, kind=TimelineKind.RESOLVED, actor=_actor(user), user_id=user.id,
                    details={"outcome": outcome.value, "notes": notes})


def reopen(session: Session, *, incident: Incident, user: User, reason: str, settings: Settings) -> None:
    if incident.status != IncidentStatus.RESOLVED or incident.resolved_at is None:
        raise Conflict("only a resolved incident can be reopened")
    window = timedelta(minutes=settings.reopen_window_minutes)
    if clock.now() - incident.resolved_at > window and user.role not in SUPERVISING:
        raise Conflict(f"resolved more than {settings.reopen_window_minutes} min ago; a supervisor can reopen it")
    key = active_key_for(incident)
    if session.scalar(select(Incident.id).where(Incident.active_key == key)) is not None:
        raise Conflict("this client has another active incident; add to that one")
    incident.status, incident.owner_id, incident.active_key = IncidentStatus.ACKNOWLEDGED, user.id, key
    incident.resolved_at = incident.resolved_by = incident.outcome = None
    append_timeline(session, incident, kind=TimelineKind.REOPENED, actor=_actor(user), user_id=user.id,
                    details={"reason": reason})
