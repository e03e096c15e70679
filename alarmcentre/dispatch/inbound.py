"""Texts from contacts: understood replies move their dispatch on; anything else is shown and answered."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from alarmcentre import clock
from alarmcentre.clients.models import Client
from alarmcentre.contacts.models import Contact
from alarmcentre.dispatch import texts
from alarmcentre.dispatch.escalation import record_answer
from alarmcentre.dispatch.models import ACTIVE_STEP_STATES, IncidentStep, SharedResource, SmsMessage, StepState
from alarmcentre.dispatch.sms import queue_sms, record_inbound
from alarmcentre.incidents.models import Incident, IncidentStatus, TimelineKind
from alarmcentre.incidents.service import append_timeline
from alarmcentre.phone import normalise_phone

log = logging.getLogger(__name__)

# A reply this long after the incident was resolved is still recognised as an answer to it.
LATE_REPLY_WINDOW = timedelta(hours=24)

# Which step states a reply can apply to, most fitting first.
_APPLIES_TO = {
    texts.Reply.ACCEPT: (StepState.WAITING,),
    texts.Reply.DECLINE: (StepState.WAITING, StepState.ACCEPTED),
    texts.Reply.ARRIVED: (StepState.ACCEPTED, StepState.WAITING),
    texts.Reply.DONE: (StepState.ARRIVED, StepState.ACCEPTED),
}


@dataclass
class InboundResult:
    message: SmsMessage | None  # None: a retried webhook, already handled
    reply: texts.Reply | None = None
    step: IncidentStep | None = None


def handle_inbound(session: Session, *, from_number: str, to_number: str, body: str, provider: str,
                   provider_sid: str | None) -> InboundResult:
    try:
        sender = normalise_phone(from_number)
    except ValueError:
        sender = from_number[:32]
    message = record_inbound(session, from_number=sender, to_number=to_number[:32], body=body, provider=provider,
                             provider_sid=provider_sid)
    if message is None:
        return InboundResult(None)
    reply = texts.interpret_reply(body)
    message.interpreted_as = reply.value if reply else "unknown"
    candidates = session.execute(
        select(IncidentStep, Incident).join(Incident, Incident.id == IncidentStep.incident_id)
        .where(IncidentStep.phone == sender, IncidentStep.state.in_(ACTIVE_STEP_STATES),
               Incident.status != IncidentStatus.RESOLVED)
        .order_by(IncidentStep.started_at.desc(), IncidentStep.id.desc())
    ).all()
    step = incident = None
    if reply is not None:
        for state in _APPLIES_TO[reply]:
            match = next(((s, i) for s, i in candidates if s.state == state), None)
            if match:
                step, incident = match
                break
    if step is None and candidates:
        _, incident = candidates[0]  # not understood, or not fitting: still show it on their incident
    late = None
    if not candidates:
        late = session.execute(
            select(IncidentStep, Incident).join(Incident, Incident.id == IncidentStep.incident_id)
            .where(IncidentStep.phone == sender, IncidentStep.state == StepState.CANCELLED,
                   Incident.status == IncidentStatus.RESOLVED, Incident.resolved_at >= clock.now() - LATE_REPLY_WINDOW)
            .order_by(Incident.resolved_at.desc()).limit(1)).first()
        if late is not None:
            incident = late[1]  # an answer to a dispatch that ended before it came: on that incident
    if incident is not None:
        message.incident_id = incident.id
        append_timeline(session, incident, kind=TimelineKind.SMS_REPLY, actor=f"sms:{sender}",
                        details={"body": body[:500], "understood_as": reply.value if reply and step else None,
                                 "sms_id": message.id, "step_id": step.id if step else None})
    language = step.language if step else (candidates[0][0].language if candidates else
                                           late[0].language if late else "lv")
    if step is not None and incident is not None and reply is not None:
        message.step_id = step.id
        record_answer(session, incident=incident, step=step, answer=reply, actor=f"sms:{sender}", via="sms")
        queue_sms(session, to=sender, body=texts.reply_confirmation(language, reply), purpose="reply",
                  incident_id=incident.id)
        return InboundResult(message, reply, step)
    if late is not None and incident is not None:
        queue_sms(session, to=sender, body=texts.late_reply_text(language), purpose="late_reply",
                  incident_id=incident.id)
        return InboundResult(message, reply, None)
    if incident is None and not _known_number(session, sender):
        # Nobody the centre knows: kept for the operators, never answered. Answering any number would let
        # anyone make the centre pay for texts (to premium numbers, or an auto-responder ping-pong).
        log.info("inbound SMS %d from a number the centre does not know: stored, not answered", message.id)
        return InboundResult(message, reply, None)
    # Unknown text, or a reply with nothing open to apply to: answer with help, keep it for the operator.
    queue_sms(session, to=sender, body=texts.help_text(language), purpose="reply",
              incident_id=incident.id if incident else None)
    log.info("inbound SMS %d not matched to a dispatch (understood as %s)", message.id, message.interpreted_as)
    return InboundResult(message, reply, None)


def _known_number(session: Session, phone: str) -> bool:
    """Someone the centre has dealings with: a contact, a client, a staff member, a home-care worker, or
    anyone it ever texted for a dispatch."""
    from alarmcentre.users.models import User
    from alarmcentre.visits.models import HomeCareWorker

    return any(session.scalar(select(exists().where(column == phone))) for column in (
        Contact.phone, Client.phone, User.phone, HomeCareWorker.phone, SharedResource.phone, IncidentStep.phone))
