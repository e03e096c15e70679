"""Plan steps that call: the contact's phone rings, a voice says who needs help and where, and the
contact presses 1 (I am going) or 2 (I cannot). Easy on a basic phone, and heard at 3 a.m. when a
text is not.

Like texts, a call is decided inside the transaction that starts the step (a `requested` row in
`voice_calls`) and placed afterwards by the scheduler's dialer, so a decision is never lost and a
Twilio outage never holds the escalation sweep. The step waits with its usual timeout; a call
nobody answers, or answers without a key, moves the plan on at once.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import clock, metrics
from alarmcentre.clients.models import Client, Language
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.dispatch import escalation, texts
from alarmcentre.dispatch.models import IncidentStep, StepState
from alarmcentre.incidents.models import Incident, IncidentStatus, TimelineKind
from alarmcentre.incidents.service import append_timeline
from alarmcentre.phone import masked
from alarmcentre.voice.models import CallDirection, CallPurpose, VoiceCall
from alarmcentre.voice.provider import VoiceError, VoiceProvider
from alarmcentre.voice.service import TTS_LANGUAGE, webhook

log = logging.getLogger(__name__)

ASK = {
    "lv": "Trauksmes centrs. {name}, {address}: {what}. Ja varat doties palīgā, nospiediet 1. "
          "Ja nevarat, nospiediet 2.",
    "en": "This is the alarm centre. {name}, {address}: {what}. If you can go and help, press 1. "
          "If you cannot, press 2.",
}
SAID = {
    ("lv", "accept"): "Paldies. Jūs dodaties palīgā. Operators jums piezvanīs, ja vajadzēs.",
    ("en", "accept"): "Thank you. You are going to help. The operator will call you if needed.",
    ("lv", "decline"): "Paldies. Mēs zvanām nākamajam.",
    ("en", "decline"): "Thank you. We are calling the next person.",
    ("lv", "again"): "Nesapratām.",
    ("en", "again"): "We did not understand.",
    ("lv", "over"): "Palīdzība vairs nav vajadzīga. Paldies.",
    ("en", "over"): "Help is no longer needed. Thank you.",
}
KEYS = {"1": texts.Reply.ACCEPT, "2": texts.Reply.DECLINE}
GATHER_TIMEOUT_S = 8


def _lang(language: str) -> str:
    return "lv" if language == Language.LV.value else "en"


def dispatch_twiml(step: IncidentStep, call: VoiceCall, *, client: Client | None, kind: str, base: str,
                   prefix: str = "") -> str:
    """Say who and where, then wait for one key; said twice, since the first words are often missed."""
    from twilio.twiml.voice_response import Gather, VoiceResponse

    lang = _lang(step.language)
    what = texts.ALARM_WHAT[Language(lang)].get(kind, texts.ALARM_WHAT[Language(lang)]["button_press"])
    ask = ASK[lang].format(name=client.full_name if client else "?", address=client.address if client else "?",
                           what=what)
    response = VoiceResponse()
    gather = Gather(num_digits=1, action=webhook(base, "/gather", call=call.id), method="POST",
                    timeout=GATHER_TIMEOUT_S)
    if prefix:
        gather.say(prefix, language=TTS_LANGUAGE[lang])
    gather.say(ask, language=TTS_LANGUAGE[lang])
    gather.pause(length=1)
    gather.say(ask, language=TTS_LANGUAGE[lang])
    response.append(gather)
    return str(response)  # no key pressed: the call ends, and its status moves the plan on


def request_call(session: Session, *, incident: Incident, step: IncidentStep) -> VoiceCall:
    """Decide to ring the step's person (placed by the dialer job)."""
    call = VoiceCall(direction=CallDirection.OUTBOUND, purpose=CallPurpose.DISPATCH, incident_id=incident.id,
                     client_id=incident.client_id, step_id=step.id, from_number="", to_number=step.phone[:32],
                     callee_number=step.phone[:32], callee_label=step.name[:200], callee_kind="step",
                     status="requested")
    session.add(call)
    session.flush()
    return call


def cancel_requested(session: Session, *, step: IncidentStep) -> None:
    """On resolve: a call not placed yet is never placed."""
    for call in session.scalars(select(VoiceCall).where(VoiceCall.step_id == step.id,
                                                        VoiceCall.status == "requested")):
        call.status, call.ended_at = "canceled", clock.now()


class VoiceDialer:
    """Places requested dispatch calls, oldest first; a call no longer wanted is cancelled instead."""

    def __init__(self, *, factory: sessionmaker[Session], provider: VoiceProvider, settings: Settings) -> None:
        self.factory, self.provider, self.settings = factory, provider, settings

    def place_due(self, limit: int = 20) -> int:
        placed = 0
        for _ in range(limit):
            with transaction(self.factory, writes=True) as session:
                call = session.scalar(select(VoiceCall).where(VoiceCall.status == "requested",
                                                              VoiceCall.purpose == CallPurpose.DISPATCH)
                                      .order_by(VoiceCall.id).limit(1).with_for_update(skip_locked=True))
                if call is None:
                    return placed
                self._place(session, call)
                placed += 1
        return placed

    def _place(self, session: Session, call: VoiceCall) -> None:
        step = session.get(IncidentStep, call.step_id) if call.step_id else None
        incident = session.get(Incident, call.incident_id) if call.incident_id else None
        if step is None or incident is None or step.state != StepState.WAITING \
                or incident.status == IncidentStatus.RESOLVED:
            call.status, call.ended_at = "canceled", clock.now()
            return
        base = self.settings.public_url or ""
        if self.provider.name == "twilio" and not base:
            self._failed(session, call, step, incident, "ALARMCENTRE_PUBLIC_URL is not set: Twilio cannot "
                                                        "report the answer")
            return
        client = session.get(Client, incident.client_id) if incident.client_id else None
        twiml = dispatch_twiml(step, call, client=client, kind=incident.kind.value, base=base)
        call.from_number = self.provider.from_number
        try:
            call.call_sid = self.provider.place_call(to=call.to_number, twiml=twiml,
                                                     status_callback=webhook(base, "/status", call=call.id))
        except VoiceError as exc:
            self._failed(session, call, step, incident, str(exc))
            return
        call.status = "queued"
        metrics.VOICE_CALLS.labels(purpose=CallPurpose.DISPATCH.value, caller="centre").inc()
        log.info("dispatch call %s for step %s placed to %s", call.id, step.id, masked(call.to_number))

    def _failed(self, session: Session, call: VoiceCall, step: IncidentStep, incident: Incident, error: str) -> None:
        call.status, call.ended_at, call.error = "failed", clock.now(), error[:500]
        log.warning("dispatch call %s for step %s not placed: %s", call.id, step.id, error)
        step_not_reached(session, call, how="failed")


def step_not_reached(session: Session, call: VoiceCall, *, how: str) -> None:
    """The call ended without a key pressed: the step did not help, and the plan moves on now."""
    step = session.get(IncidentStep, call.step_id) if call.step_id else None
    incident = session.get(Incident, call.incident_id) if call.incident_id else None
    if step is None or incident is None or step.state != StepState.WAITING:
        return  # answered already, or closed with the incident
    now = clock.now()
    failed = how in ("failed", "busy", "canceled")
    step.state, step.finished_at = (StepState.FAILED if failed else StepState.NO_ANSWER), now
    escalation.cancel_timers(session, incident_id=incident.id, step_id=step.id)
    append_timeline(session, incident, kind=TimelineKind.CALL_ENDED, actor="centre",
                    details={"call_id": call.id, "to": step.name, "how": how, "error": call.error})
    if incident.status != IncidentStatus.RESOLVED:
        escalation.advance(session, incident=incident, after=step, reason="call_" + how.replace("-", "_"))


def gathered(session: Session, *, call_id: int, call_sid: str, digits: str, base: str) -> str:
    """The key the contact pressed (Gather's action): answer the step, and tell them what it means."""
    from twilio.twiml.voice_response import VoiceResponse

    call = session.get(VoiceCall, call_id)
    if call is None or call.call_sid != call_sid or call.purpose != CallPurpose.DISPATCH:
        log.warning("a key for a call the centre does not match (%s)", call_id)
        return str(VoiceResponse())
    step = session.get(IncidentStep, call.step_id) if call.step_id else None
    incident = session.get(Incident, call.incident_id) if call.incident_id else None
    assert step is not None and incident is not None
    lang = _lang(step.language)
    response = VoiceResponse()
    if incident.status == IncidentStatus.RESOLVED:
        response.say(SAID[(lang, "over")], language=TTS_LANGUAGE[lang])
        return str(response)
    answer = KEYS.get(digits.strip()[:1])
    if answer is None:  # another key: ask once more
        client = session.get(Client, incident.client_id) if incident.client_id else None
        return dispatch_twiml(step, call, client=client, kind=incident.kind.value, base=base,
                              prefix=SAID[(lang, "again")])
    if call.digits is None and step.state == StepState.WAITING:  # a retried webhook answers nothing twice
        call.digits = digits.strip()[:8]
        escalation.record_answer(session, incident=incident, step=step, answer=answer, actor=f"phone:{step.name}",
                                 via="voice")
    response.say(SAID[(lang, answer.value)], language=TTS_LANGUAGE[lang])
    return str(response)


def dispatch_call_ended(session: Session, call: VoiceCall, status: str) -> None:
    """Status callback of a dispatch call: ended without a key means nobody is going."""
    if call.digits is None:
        step_not_reached(session, call, how="no_key" if status == "completed" else status)
