"""Calls on the incident: who is calling, which incident the call belongs to, what Twilio is told.

The client's call (or a device's, from its SIM) arrives on Twilio's voice webhook. It is put on
the person's active incident, or opens one, and the caller waits in that incident's Twilio queue
(`<Enqueue>`) until an operator presses "Answer": the centre rings the operator's own phone and,
when they pick up, takes the caller out of the queue (`<Dial><Queue>`). "Call" rings the operator
first and then dials the person (`<Dial><Number>`), showing the centre's number.

Everything Twilio reports (queue left, connected, dial result, status callbacks) is applied once:
repeats and late arrivals are recognised by the call's state, so a retried webhook writes no second
timeline entry. Caller id only finds the record to show; it never proves who is calling.
"""

from __future__ import annotations

import logging
from datetime import datetime
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alarmcentre import clock, metrics
from alarmcentre.clients.models import Client
from alarmcentre.config import Settings
from alarmcentre.devices.models import Device, DeviceStatus
from alarmcentre.dispatch import escalation
from alarmcentre.dispatch.actions import SUPERVISING, Conflict, Forbidden, Invalid, acknowledge, require_owner
from alarmcentre.dispatch.models import IncidentStep
from alarmcentre.incidents.models import Incident, IncidentKind, IncidentStatus, TimelineKind
from alarmcentre.incidents.service import active_key, alarm_priority, append_timeline
from alarmcentre.phone import masked, normalise_phone
from alarmcentre.users.models import User
from alarmcentre.voice.models import ENDED, STATUS_RANK, CallDirection, CallPurpose, VoiceCall
from alarmcentre.voice.provider import VoiceError, VoiceProvider

log = logging.getLogger(__name__)

WEBHOOKS = "/webhooks/twilio/voice"
# What the caller hears while waiting, in the client's language (Latvian for unknown callers).
GREETING = {
    "lv": "Jūs esat sazvanījis trauksmes centru. Lūdzu, palieciet pie tālruņa, operators tūlīt atbildēs.",
    "en": "You have reached the alarm centre. Please stay on the line, an operator will answer shortly.",
    "ru": "Вы позвонили в центр тревожной связи. Пожалуйста, оставайтесь на линии, оператор скоро ответит.",
}
OPERATOR_ANSWER = {"lv": "Zvans notikumam {id}. Savienojam ar zvanītāju.",
                   "en": "Call for incident {id}. Connecting you to the caller."}
OPERATOR_CALL = {"lv": "Notikums {id}. Zvanām: {label}.", "en": "Incident {id}. Calling {label}."}
TTS_LANGUAGE = {"lv": "lv-LV", "en": "en-GB", "ru": "ru-RU"}


def queue_name(incident_id: int) -> str:
    return f"incident-{incident_id}"


def webhook(base: str, path: str, **query: int) -> str:
    return f"{base.rstrip('/')}{WEBHOOKS}{path}" + (f"?{urlencode(query)}" if query else "")


# -- who is calling ---------------------------------------------------------------------


def caller_number(raw: str) -> str:
    """E.164 where it is a number; a withheld caller id ('anonymous', 'Restricted') stays as Twilio sent it."""
    try:
        return normalise_phone(raw)
    except ValueError:
        return raw.strip()[:32] or "unknown"


def identify_caller(session: Session, number: str) -> tuple[Client | None, Device | None]:
    """A device's SIM first (it is that device's wearer), then a client's own phone if only one has it."""
    device = session.scalar(select(Device).where(Device.sim_number == number,
                                                 Device.status != DeviceStatus.RETIRED).limit(1))
    if device is not None:
        return (session.get(Client, device.client_id) if device.client_id else None), device
    clients = session.scalars(select(Client).where(Client.phone == number).limit(2)).all()
    if len(clients) != 1:
        return None, None  # unknown, or two people share the number: the operator asks
    client = clients[0]
    device = session.scalar(select(Device).where(Device.client_id == client.id).order_by(Device.id).limit(1))
    return client, device


def _active_for_unknown(session: Session, number: str) -> Incident | None:
    """An unknown number calling again reaches the incident its first call opened."""
    return session.scalar(
        select(Incident).join(VoiceCall, VoiceCall.incident_id == Incident.id)
        .where(VoiceCall.from_number == number, VoiceCall.purpose == CallPurpose.INCOMING,
               Incident.client_id.is_(None), Incident.device_id.is_(None),
               Incident.status != IncidentStatus.RESOLVED)
        .order_by(Incident.id.desc()).limit(1))


def _incident_for_call(session: Session, *, settings: Settings, client: Client | None, device: Device | None,
                       number: str, at: datetime) -> tuple[Incident, bool]:
    """The caller's active incident, or a new one (a call is an alarm: plan and acknowledgement clock)."""
    for _attempt in range(3):
        if client is None and device is None:
            incident = _active_for_unknown(session, number)
            key = None
        else:
            assert device is not None or client is not None
            key = f"client:{client.id}" if client is not None else active_key(client=None, device=device)  # type: ignore[arg-type]
            incident = session.scalar(select(Incident).where(Incident.active_key == key))
        if incident is not None:
            return incident, False
        care_level = client.care_level if client is not None else None
        incident = Incident(client_id=client.id if client else None, device_id=device.id if device else None,
                            kind=IncidentKind.VOICE_CALL, priority=alarm_priority(IncidentKind.VOICE_CALL, care_level),
                            status=IncidentStatus.OPEN, active_key=key, opened_at=at, last_signal_at=at,
                            signal_count=1)
        try:
            with session.begin_nested():
                session.add(incident)
                session.flush()
        except IntegrityError:
            continue  # the person's alarm or another call opened it a moment ago: join that one
        if key is None:
            incident.active_key = f"incident:{incident.id}"  # nobody to key it by: one incident per call
        append_timeline(session, incident, kind=TimelineKind.OPENED, actor="caller",
                        details={"type": IncidentKind.VOICE_CALL.value, "from": number}, at=at)
        escalation.on_incident_opened(session, incident=incident, client=client, settings=settings)
        metrics.INCIDENTS_RAISED.labels(kind=IncidentKind.VOICE_CALL.value).inc()
        return incident, True
    raise RuntimeError("could not open or find the caller's incident after 3 attempts")


# -- the call comes in ------------------------------------------------------------------


def incoming_call(session: Session, *, settings: Settings, base: str, call_sid: str, from_number: str,
                  to_number: str, status: str) -> str:
    """Record the call on its incident (once, whatever Twilio retries) and answer with TwiML that queues it."""
    call = session.scalar(select(VoiceCall).where(VoiceCall.call_sid == call_sid))
    client: Client | None = None
    if call is None:
        now = clock.now()
        number = caller_number(from_number)
        client, device = identify_caller(session, number)
        incident, opened = _incident_for_call(session, settings=settings, client=client, device=device,
                                              number=number, at=now)
        call = VoiceCall(call_sid=call_sid, direction=CallDirection.INBOUND, purpose=CallPurpose.INCOMING,
                         incident_id=incident.id, client_id=client.id if client else None,
                         device_id=device.id if device else None, from_number=number, to_number=to_number[:32],
                         status=status if status in STATUS_RANK else "ringing", created_at=now)
        session.add(call)
        session.flush()
        if not opened:
            incident.signal_count += 1
            incident.last_signal_at = max(incident.last_signal_at, now)
        if client is not None:
            client.last_contact_at = max(client.last_contact_at, now) if client.last_contact_at else now
        caller = "device" if device is not None and device.sim_number == number else "client" if client else "unknown"
        append_timeline(session, incident, kind=TimelineKind.CALL_INCOMING, actor="caller", at=now,
                        details={"call_id": call.id, "from": number, "caller": caller,
                                 "device": device.serial if device else None})
        metrics.VOICE_CALLS.labels(purpose=CallPurpose.INCOMING.value, caller=caller).inc()
        log.info("call %s from %s (%s) on incident %s%s", call.id, masked(number), caller, incident.id,
                 " (opened)" if opened else "")
    elif call.client_id is not None:
        client = session.get(Client, call.client_id)
    language = client.language.value if client is not None and client.language.value in GREETING else "lv"
    return incoming_twiml(call, language=language, base=base)


def incoming_twiml(call: VoiceCall, *, language: str, base: str) -> str:
    from twilio.twiml.voice_response import VoiceResponse

    assert call.incident_id is not None
    response = VoiceResponse()
    response.say(GREETING[language], language=TTS_LANGUAGE[language])
    response.enqueue(queue_name(call.incident_id), action=webhook(base, "/left", call=call.id), method="POST")
    return str(response)


# -- the operator answers, or calls someone ---------------------------------------------


def waiting_calls(session: Session, incident_id: int) -> list[VoiceCall]:
    calls = session.scalars(select(VoiceCall).where(VoiceCall.incident_id == incident_id,
                                                    VoiceCall.purpose == CallPurpose.INCOMING)
                            .order_by(VoiceCall.created_at, VoiceCall.id)).all()
    return [call for call in calls if call.waiting]


def incidents_with_waiting_callers(session: Session, incident_ids: list[int]) -> set[int]:
    """Of these incidents, those with a caller in the queue (the operator's queue marks them)."""
    if not incident_ids:
        return set()
    return set(session.scalars(select(VoiceCall.incident_id).where(
        VoiceCall.incident_id.in_(incident_ids), VoiceCall.purpose == CallPurpose.INCOMING,
        VoiceCall.connected_at.is_(None), VoiceCall.left_queue.is_(None), VoiceCall.status.not_in(ENDED))))


def incident_calls(session: Session, incident_id: int) -> list[VoiceCall]:
    return list(session.scalars(select(VoiceCall).where(VoiceCall.incident_id == incident_id)
                                .order_by(VoiceCall.created_at.desc(), VoiceCall.id.desc())))


def _operator_phone(user: User) -> str:
    if not user.phone:
        raise Conflict("your user has no phone number for the centre to ring: an administrator adds it")
    return user.phone


def answer(session: Session, *, provider: VoiceProvider, base: str, incident: Incident, user: User) -> VoiceCall:
    """Ring the operator's phone; when they pick up, Twilio connects them to the caller waiting longest."""
    waiting = waiting_calls(session, incident.id)
    if not waiting:
        raise Conflict("no caller is waiting on this incident")
    caller = waiting[0]
    ringing = session.scalar(select(VoiceCall).where(VoiceCall.answers_call_id == caller.id,
                                                     VoiceCall.status.not_in(ENDED)))
    if ringing is not None:
        raise Conflict("the centre is already ringing an operator's phone for this caller")
    phone = _operator_phone(user)
    if incident.status == IncidentStatus.OPEN:
        acknowledge(session, incident=incident, user=user)  # answering the caller is taking the incident
    elif incident.owner_id != user.id and user.role not in SUPERVISING:
        raise Forbidden("another operator owns this incident; ask for a handover")
    leg = VoiceCall(direction=CallDirection.OUTBOUND, purpose=CallPurpose.ANSWER, incident_id=incident.id,
                    client_id=incident.client_id, user_id=user.id, from_number=provider.from_number,
                    to_number=phone, answers_call_id=caller.id, status="requested")
    session.add(leg)
    session.flush()
    from twilio.twiml.voice_response import Dial, VoiceResponse

    language = user.language.value if user.language.value in OPERATOR_ANSWER else "lv"
    twiml = VoiceResponse()
    twiml.say(OPERATOR_ANSWER[language].format(id=incident.id), language=TTS_LANGUAGE[language])
    dial = Dial()
    dial.queue(queue_name(incident.id), url=webhook(base, "/connected", call=caller.id, leg=leg.id), method="POST")
    twiml.append(dial)
    _place(leg, provider=provider, twiml=str(twiml), base=base)
    return leg


def call_targets(session: Session, incident: Incident) -> list[dict[str, str]]:
    """Whom the operator can ring from this incident: the client, the device's SIM, each plan step's person."""
    targets = []
    client = session.get(Client, incident.client_id) if incident.client_id else None
    device = session.get(Device, incident.device_id) if incident.device_id else None
    if client is not None and client.phone:
        targets.append({"target": "client", "label": client.full_name, "number": client.phone})
    if device is not None and device.sim_number:
        targets.append({"target": "device", "label": f"{device.serial} (SIM)", "number": device.sim_number})
    for step in session.scalars(select(IncidentStep).where(IncidentStep.incident_id == incident.id)
                                .order_by(IncidentStep.position)):
        targets.append({"target": f"step:{step.id}", "label": step.name, "number": step.phone})
    return targets


def call_person(session: Session, *, provider: VoiceProvider, base: str, incident: Incident, user: User,
                target: str) -> VoiceCall:
    """Ring the operator, then dial `target` (see `call_targets`) with the centre's number as caller id."""
    require_owner(incident, user)
    chosen = next((t for t in call_targets(session, incident) if t["target"] == target), None)
    if chosen is None:
        raise Invalid(f"nobody to call as {target!r} on this incident")
    try:
        number = normalise_phone(chosen["number"])
    except ValueError:
        # Twilio numbers cannot reach 112/113: the operator dials them from the desk phone and records it.
        raise Invalid(f"{chosen['number']} cannot be dialled through the centre's line; "
                      "dial it from the desk phone and record the call") from None
    phone = _operator_phone(user)
    leg = VoiceCall(direction=CallDirection.OUTBOUND, purpose=CallPurpose.CALL_PERSON, incident_id=incident.id,
                    client_id=incident.client_id, user_id=user.id, from_number=provider.from_number,
                    to_number=phone, callee_number=number, callee_label=chosen["label"][:200],
                    callee_kind=target.split(":")[0], status="requested")
    session.add(leg)
    session.flush()
    from twilio.twiml.voice_response import Dial, VoiceResponse

    language = user.language.value if user.language.value in OPERATOR_CALL else "lv"
    twiml = VoiceResponse()
    twiml.say(OPERATOR_CALL[language].format(id=incident.id, label=chosen["label"]), language=TTS_LANGUAGE[language])
    dial = Dial(caller_id=provider.from_number if provider.name == "twilio" else None,
                action=webhook(base, "/dialed", call=leg.id), method="POST", timeout=30)
    dial.number(number)
    twiml.append(dial)
    _place(leg, provider=provider, twiml=str(twiml), base=base)
    append_timeline(session, incident, kind=TimelineKind.CALL_PLACED, actor=f"user:{user.username}", user_id=user.id,
                    details={"call_id": leg.id, "to": chosen["label"], "number": number,
                             "provider": provider.name})
    return leg


def _place(leg: VoiceCall, *, provider: VoiceProvider, twiml: str, base: str) -> None:
    try:
        sid = provider.place_call(to=leg.to_number, twiml=twiml, status_callback=webhook(base, "/status", call=leg.id))
    except VoiceError as exc:
        log.warning("call %s to the operator's phone not placed: %s", leg.id, exc)
        raise Conflict(f"the call was not placed: {exc}") from exc
    leg.call_sid, leg.status = sid, ("queued" if provider.name != "outbox" else "completed")
    metrics.VOICE_CALLS.labels(purpose=leg.purpose.value, caller="operator").inc()


# -- what Twilio reports ----------------------------------------------------------------


def _find(session: Session, *, call_id: int | None, call_sid: str) -> VoiceCall | None:
    call = session.scalar(select(VoiceCall).where(VoiceCall.call_sid == call_sid)) if call_sid else None
    if call is None and call_id is not None:
        candidate = session.get(VoiceCall, call_id)
        # A call placed just before a crash has no sid yet: the first callback names it.
        if candidate is not None and candidate.call_sid in (None, call_sid):
            call = candidate
            call.call_sid = call_sid or call.call_sid
    return call


def _incident(session: Session, call: VoiceCall) -> Incident | None:
    return session.get(Incident, call.incident_id) if call.incident_id else None


def _operator(session: Session, call: VoiceCall) -> str | None:
    user = session.get(User, call.user_id) if call.user_id else None
    return (user.full_name or user.username) if user else None


def _end_incoming(session: Session, call: VoiceCall, *, how: str, waited_s: float | None = None) -> None:
    """The caller's call is over: said once on the timeline, however many reports Twilio sends."""
    if call.ended_at is not None:
        return
    now = clock.now()
    call.ended_at = now
    incident = _incident(session, call)
    if incident is not None:
        details: dict[str, object] = {"call_id": call.id, "how": how, "spoke": call.connected_at is not None}
        if waited_s is not None:
            details["waited_s"] = round(waited_s, 1)
        if call.duration_s is not None:
            details["duration_s"] = call.duration_s
        append_timeline(session, incident, kind=TimelineKind.CALL_ENDED, actor="caller", details=details, at=now)


def apply_status(session: Session, *, call_id: int | None, call_sid: str, status: str, duration: str | None) -> None:
    """A status callback: for the caller's call (the number's status URL) or an operator's leg."""
    call = _find(session, call_id=call_id, call_sid=call_sid)
    if call is None:
        log.warning("status %r for a call the centre does not know", status[:20])
        return
    rank = STATUS_RANK.get(status)
    if rank is None or rank <= STATUS_RANK.get(call.status, 0):
        return  # a repeat, or overtaken by a later report
    call.status = status
    if status not in ENDED:
        return
    if duration and duration.isdigit():
        call.duration_s = int(duration)
    incident = _incident(session, call)
    if call.purpose == CallPurpose.INCOMING:
        _end_incoming(session, call, how=status)
        return
    if call.purpose == CallPurpose.DISPATCH:
        from alarmcentre.voice.dispatch import dispatch_call_ended  # it builds on this module

        call.ended_at = clock.now()
        dispatch_call_ended(session, call, status)
        return
    call.ended_at = clock.now()
    if incident is None:
        return
    reached = call.purpose == CallPurpose.CALL_PERSON or _answered_caller(session, call)
    if status != "completed" or not reached:
        why = status if status != "completed" else "caller_gone"
        append_timeline(session, incident, kind=TimelineKind.CALL_FAILED, actor="centre",
                        details={"call_id": call.id, "operator": _operator(session, call), "status": why})
        metrics.VOICE_OPERATOR_NOT_REACHED.inc()


def _answered_caller(session: Session, leg: VoiceCall) -> bool:
    caller = session.get(VoiceCall, leg.answers_call_id) if leg.answers_call_id else None
    return caller is not None and caller.connected_at is not None and caller.user_id == leg.user_id


def connected(session: Session, *, call_id: int, leg_id: int, call_sid: str, queue_time: str | None) -> None:
    """Twilio takes the caller out of the queue for the operator: the answer time of the incident."""
    call = session.get(VoiceCall, call_id)
    leg = session.get(VoiceCall, leg_id)
    if call is None or leg is None or call.call_sid != call_sid or leg.answers_call_id != call.id:
        log.warning("a connection for calls the centre does not match (%s, %s)", call_id, leg_id)
        return
    if call.connected_at is not None:
        return
    now = clock.now()
    call.connected_at, call.user_id = now, leg.user_id
    incident = _incident(session, call)
    if incident is None:
        return
    waited = float(queue_time) if queue_time and queue_time.isdigit() else (now - call.created_at).total_seconds()
    if incident.spoken_at is None:
        incident.spoken_at = now
        metrics.VOICE_ANSWER_SECONDS.observe(max(0.0, (now - incident.opened_at).total_seconds()))
    operator = session.get(User, leg.user_id) if leg.user_id else None
    append_timeline(session, incident, kind=TimelineKind.CALL_CONNECTED,
                    actor=f"user:{operator.username}" if operator else "centre",
                    user_id=leg.user_id, at=now,
                    details={"call_id": call.id, "operator": _operator(session, leg), "waited_s": round(waited)})


def left_queue(session: Session, *, call_id: int, call_sid: str, result: str, queue_time: str | None) -> None:
    """The caller left the queue (Enqueue's action): connected to an operator, or hung up waiting."""
    call = session.get(VoiceCall, call_id)
    if call is None or call.call_sid != call_sid or call.left_queue is not None:
        return
    call.left_queue = result[:16] or "unknown"
    if result != "bridged" and call.connected_at is None:
        waited = float(queue_time) if queue_time and queue_time.isdigit() else None
        _end_incoming(session, call, how="hung_up_waiting" if result == "hangup" else result[:16], waited_s=waited)


def dialed(session: Session, *, call_id: int, call_sid: str, result: str, duration: str | None) -> None:
    """The person the operator called answered or not (Dial's action)."""
    leg = session.get(VoiceCall, call_id)
    if leg is None or leg.call_sid != call_sid or leg.callee_result is not None:
        return
    leg.callee_result = result[:16] or "unknown"
    now = clock.now()
    talked = result in ("completed", "answered")
    if talked:
        leg.connected_at = now
    incident = _incident(session, leg)
    if incident is None:
        return
    if talked and leg.callee_kind in ("client", "device") and incident.spoken_at is None:
        incident.spoken_at = now
        metrics.VOICE_ANSWER_SECONDS.observe(max(0.0, (now - incident.opened_at).total_seconds()))
    details: dict[str, object] = {"call_id": leg.id, "to": leg.callee_label, "how": leg.callee_result}
    if duration and duration.isdigit():
        details["duration_s"] = int(duration)
    append_timeline(session, incident, kind=TimelineKind.CALL_ENDED, actor="centre", details=details, at=now)


EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
