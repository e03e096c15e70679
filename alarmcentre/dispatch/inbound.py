"""Texts from contacts: understood replies move their dispatch on; anything else is shown and answered.

The answers the centre sends by itself (a confirmation, the help text, the late-reply thanks) are
what an auto-responder talks back to, so they are bounded: no automatic answer to a text that looks
automatic (an auto-reply marker, an echo of the centre's own text, a burst), and to a text not
understood no help text or late-reply thanks if the number had one within AUTO_REPLY_WINDOW (a
confirmation answers a person's reply word and does not count). The text is still stored, shown and
applied; only the answer is left out, with a log line and a metric.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Row, exists, func, or_, select
from sqlalchemy.orm import Session

from alarmcentre import clock, metrics
from alarmcentre.clients.models import Client, Language
from alarmcentre.contacts.models import Contact
from alarmcentre.dispatch import texts
from alarmcentre.dispatch.escalation import record_answer
from alarmcentre.dispatch.models import (
    ACTIVE_STEP_STATES,
    Channel,
    IncidentStep,
    SharedResource,
    SmsDirection,
    SmsMessage,
    StepState,
)
from alarmcentre.dispatch.sms import queue_sms, record_inbound
from alarmcentre.incidents.models import Incident, IncidentStatus, TimelineKind
from alarmcentre.incidents.service import append_timeline
from alarmcentre.municipalities.models import Municipality
from alarmcentre.phone import masked, normalise_phone

log = logging.getLogger(__name__)

# A reply this long after the incident was resolved is still recognised as an answer to it.
LATE_REPLY_WINDOW = timedelta(hours=24)

# Loop bounds of the automatic answers (see the module's docstring; docs/dispatch.md "What texts cost: bounds").
AUTO_REPLY_WINDOW = timedelta(minutes=30)  # texts not understood: one help or late-reply text a number in this
BURST_WINDOW, BURST_TEXTS = timedelta(minutes=1), 5  # more texts than this within the window: a machine
ECHO_LOOKBACK = timedelta(hours=24)  # a text repeating one the centre sent the number within this: an echo
# How auto-responders start their texts (case and leading brackets or "Re:" ignored).
AUTO_REPLY_MARKERS = (
    "auto-reply", "autoreply", "auto reply", "automatic reply", "automated reply", "auto-response",
    "autoresponse", "auto response", "automatic message", "automated message", "this is an automatic",
    "this is an automated", "out of office", "out of the office", "away message", "automātiskā atbilde",
    "automātiska atbilde", "automātiskā ziņa", "automātiskais ziņojums", "автоответ", "автоматический ответ",
    "автоматическое сообщение", "abwesenheitsnotiz", "automatische antwort",
)

_HELP_TEXTS = sorted({texts.help_text(language) for language in Language})

# A number that sent this many codes matching none of its dispatches has its texted answers no longer applied (the
# operator sees them and decides): with three-digit codes a forger guessing blind wins 3 times in 900.
WRONG_CODES_ALLOWED = 3
APPLIED = ("ok", "plain")

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
    reply, code = texts.parse_reply(body)
    message.interpreted_as = reply.value if reply else "unknown"
    candidates = session.execute(
        select(IncidentStep, Incident).join(Incident, Incident.id == IncidentStep.incident_id)
        .where(IncidentStep.phone == sender, IncidentStep.state.in_(ACTIVE_STEP_STATES),
               Incident.status != IncidentStatus.RESOLVED)
        .order_by(IncidentStep.started_at.desc(), IncidentStep.id.desc())
    ).all()
    step = incident = None
    binding = Binding(None)
    if reply is not None and candidates:
        binding = _bind(session, candidates, reply, code, sender=sender)
        if binding.check in APPLIED:
            step, incident = binding.step, binding.incident
        else:
            incident = binding.incident
    if binding.check is not None:
        message.details = {**(message.details or {}), "reply_code": binding.check}
    if incident is None and candidates:
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
                                 "sms_id": message.id, "step_id": step.id if step else None,
                                 "code_check": binding.check})
    language = step.language if step else (candidates[0][0].language if candidates else
                                           late[0].language if late else "lv")
    if step is not None and incident is not None and reply is not None:
        message.step_id = step.id
        record_answer(session, incident=incident, step=step, answer=reply, actor=f"sms:{sender}", via="sms")
        if _may_answer(session, message, sender=sender, understood=True):
            queue_sms(session, to=sender, body=texts.reply_confirmation(language, reply, step.reply_code or ""),
                      purpose="reply", incident_id=incident.id)
        return InboundResult(message, reply, step)
    if binding.check in ("missing", "wrong") and binding.step is not None and binding.step.reply_code:
        # A reply word without its dispatch's code (or with another): not applied; the number's owner is told how
        # to send it. The text goes to the number itself, so a forger never sees the code.
        log.info("inbound SMS %d: %s without the dispatch code (%s): not applied", message.id, reply, binding.check)
        if _may_answer(session, message, sender=sender, understood=True):
            assert reply is not None and incident is not None
            queue_sms(session, to=sender, body=texts.code_missing_text(binding.step.language, reply,
                                                                     binding.step.reply_code),
                      purpose="reply", incident_id=incident.id)
        return InboundResult(message, reply, None)
    if binding.check == "locked":
        log.warning("inbound SMS %d: too many wrong dispatch codes from %s: answers by text are no longer applied",
                    message.id, masked(sender))
        return InboundResult(message, reply, None)
    if late is not None and incident is not None:
        if _may_answer(session, message, sender=sender, understood=reply is not None):
            queue_sms(session, to=sender, body=texts.late_reply_text(language), purpose="late_reply",
                      incident_id=incident.id)
        return InboundResult(message, reply, None)
    if incident is None and not _known_number(session, sender):
        # Nobody the centre knows: kept for the operators, never answered. Answering any number would let
        # anyone make the centre pay for texts (to premium numbers, or an auto-responder ping-pong).
        log.info("inbound SMS %d from a number the centre does not know: stored, not answered", message.id)
        return InboundResult(message, reply, None)
    # Unknown text, or a reply with nothing open to apply to: answer with help, keep it for the operator.
    if not _may_answer(session, message, sender=sender, understood=reply is not None):
        return InboundResult(message, reply, None)
    queue_sms(session, to=sender, body=texts.help_text(language), purpose="reply",
              incident_id=incident.id if incident else None)
    log.info("inbound SMS %d not matched to a dispatch (understood as %s)", message.id, message.interpreted_as)
    return InboundResult(message, reply, None)


@dataclass
class Binding:
    """How a reply word was bound to a dispatch. `check`: "ok" (its code), "plain" (no code, and plain replies
    count there), "missing" or "wrong" (not applied; `step` is the dispatch it most likely answers), "locked" (too
    many wrong codes), "not_fitting" (the code's dispatch is in a state the word does not apply to), None (no
    open dispatch of the number)."""

    check: str | None
    step: IncidentStep | None = None
    incident: Incident | None = None


def _bind(session: Session, candidates: Sequence[Row[tuple[IncidentStep, Incident]]], reply: texts.Reply,
          code: str | None, *, sender: str) -> Binding:
    fitting = [(s, i) for state in _APPLIES_TO[reply] for s, i in candidates if s.state == state]
    likely = fitting[0] if fitting else tuple(candidates[0])
    if _wrong_codes(session, sender, candidates) >= WRONG_CODES_ALLOWED:
        return Binding("locked", *likely)
    if code is not None:
        coded = next(((s, i) for s, i in candidates if s.reply_code == code), None)
        if coded is None:
            return Binding("wrong", *likely)
        return Binding("ok" if coded in fitting else "not_fitting", *coded)
    if not fitting:
        return Binding("not_fitting", *likely)
    step, incident = fitting[0]
    if _plain_replies_count(session, step, incident):
        return Binding("plain", step, incident)
    return Binding("missing", step, incident)


def _plain_replies_count(session: Session, step: IncidentStep, incident: Incident) -> bool:
    """A reply without a code applies where the client's municipality opted in, and to a text sent before texts
    carried codes (its step has none)."""
    if step.reply_code is None and step.channel == Channel.SMS:
        return True
    client = session.get(Client, incident.client_id) if incident.client_id else None
    municipality = session.get(Municipality, client.municipality_id) if client else None
    return bool(municipality and municipality.plain_sms_replies)


def _wrong_codes(session: Session, sender: str, candidates: Sequence[Row[tuple[IncidentStep, Incident]]]) -> int:
    """Texts from the number with a code that matched none of its dispatches, since the oldest open one began."""
    since = min((s.started_at for s, _ in candidates if s.started_at), default=None)
    if since is None:
        return 0
    details = session.scalars(select(SmsMessage.details).where(
        SmsMessage.from_number == sender, SmsMessage.direction == SmsDirection.IN, SmsMessage.created_at >= since))
    return sum(1 for d in details if d and d.get("reply_code") == "wrong")


def _known_number(session: Session, phone: str) -> bool:
    """Someone the centre has dealings with: a contact, a client, a staff member, a home-care worker, or
    anyone it ever texted for a dispatch."""
    from alarmcentre.users.models import User
    from alarmcentre.visits.models import HomeCareWorker

    return any(session.scalar(select(exists().where(column == phone))) for column in (
        Contact.phone, Client.phone, User.phone, HomeCareWorker.phone, SharedResource.phone, IncidentStep.phone))


def _may_answer(session: Session, message: SmsMessage, *, sender: str, understood: bool) -> bool:
    """Whether the centre may answer this text by itself; when not, the decision is logged, counted
    and kept on the inbound message (details["auto_reply"])."""
    reason = _automatic_text(session, message, sender=sender)
    if reason is None and not understood:
        # Not understood: one help (or late-reply) text a window. An understood reply word is a person's,
        # and answered; its confirmation does not count here.
        recent = session.scalar(select(func.count()).select_from(SmsMessage).where(
            SmsMessage.to_number == sender, SmsMessage.direction == SmsDirection.OUT,
            or_(SmsMessage.purpose == "late_reply",
                (SmsMessage.purpose == "reply") & SmsMessage.body.in_(_HELP_TEXTS)),
            SmsMessage.created_at >= clock.now() - AUTO_REPLY_WINDOW))
        if recent:
            reason = "replied_recently"
    if reason is None:
        return True
    message.details = {**(message.details or {}), "auto_reply": f"suppressed: {reason}"}
    metrics.SMS_AUTO_REPLIES_SUPPRESSED.labels(reason).inc()
    log.info("inbound SMS %d: no automatic answer (%s)", message.id, reason)
    return False


def _automatic_text(session: Session, message: SmsMessage, *, sender: str) -> str | None:
    """Why this text looks sent by a machine, or None."""
    body = _folded(message.body)
    opening = body.lstrip("[(<*-_ ").removeprefix("re:").lstrip("[(<*-_ ")
    if opening.startswith(AUTO_REPLY_MARKERS):
        return "auto_reply_marker"
    if body:
        ours = session.scalars(select(SmsMessage.body).where(
            SmsMessage.to_number == sender, SmsMessage.direction == SmsDirection.OUT,
            SmsMessage.created_at >= clock.now() - ECHO_LOOKBACK).order_by(SmsMessage.id.desc()).limit(20))
        for sent in map(_folded, ours):
            if sent and (sent in body or (len(body) >= 20 and body in sent)):
                return "echo"
    texts_in_burst = session.scalar(select(func.count()).select_from(SmsMessage).where(
        SmsMessage.from_number == sender, SmsMessage.direction == SmsDirection.IN,
        SmsMessage.created_at >= clock.now() - BURST_WINDOW))
    if (texts_in_burst or 0) > BURST_TEXTS:
        return "burst"
    return None


def _folded(body: str) -> str:
    """Lower case, one space between words: how two texts are compared."""
    return " ".join(unicodedata.normalize("NFC", body).casefold().split())
