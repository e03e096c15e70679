"""Texts from contacts: understood replies move their dispatch on; anything else is shown and answered."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from alarmcentre.dispatch import texts
from alarmcentre.dispatch.escalation import record_answer
from alarmcentre.dispatch.models import ACTIVE_STEP_STATES, IncidentStep, SmsMessage, StepState
from alarmcentre.dispatch.sms import queue_sms, record_inbound
from alarmcentre.incidents.models import Incident, IncidentStatus, TimelineKind
from alarmcentre.incidents.service import append_timeline
from alarmcentre.phone import normalise_phone

log = logging.getLogger(__name__)

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
    if incident is not None:
        message.incident_id = incident.id
        append_timeline(session, incident, kind=TimelineKind.SMS_REPLY, actor=f"sms:{sender}",
                        details={"body": body[:500], "understood_as": reply.value if reply and step else None,
                                 "sms_id": message.id, "step_id": step.id if step else None})
    language = step.language if step else (candidates[0][0].language if candidates else "lv")
    if step is not None and incident is not None and reply is not None:
        message.step_id = step.id
        record_answer(session, incident=incident, step=step, answer=reply, actor=f"sms:{sender}", via="sms")
        queue_sms(session, to=sender, body=texts.reply_confirmation(language, reply), purpose="reply",
                  incident_id=incident.id)
        return InboundResult(message, reply, step)
    # Unknown text, or a reply with nothing open to apply to: answer with help, keep it for the operator.
    queue_sms(session, to=sender, body=texts.help_text(language), purpose="reply",
              incident_id=incident.id if incident else None)
    log.info("inbound SMS %d not matched to a dispatch (understood as %s)", message.id, message.interpreted_as)
    return InboundResult(message, reply, None)
