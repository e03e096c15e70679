"""The escalation engine: plan snapshots, steps, timers in the database, and the sweep that fires them.

A timer is a row with a due time. The sweep claims a due timer with a conditional UPDATE
(`done_at IS NULL`), so of several sweeping processes exactly one fires it, on SQLite and
PostgreSQL alike; on PostgreSQL, SKIP LOCKED keeps them from waiting on each other. After a
restart, whatever came due while the process was down is simply due: it fires at once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import clock, metrics
from alarmcentre.clients.models import Client
from alarmcentre.config import Settings
from alarmcentre.contacts.models import Contact
from alarmcentre.db import transaction
from alarmcentre.dispatch import texts
from alarmcentre.dispatch.models import (
    ACTIVE_STEP_STATES,
    Channel,
    IncidentStep,
    PlanStep,
    SharedResource,
    SmsMessage,
    SmsStatus,
    StepState,
    Timer,
    TimerKind,
)
from alarmcentre.dispatch.sms import queue_sms
from alarmcentre.incidents.models import Incident, IncidentStatus, TimelineKind
from alarmcentre.incidents.service import append_timeline
from alarmcentre.users.models import Role, User
from alarmcentre.visits import service as visits

log = logging.getLogger(__name__)


# -- when an incident opens --------------------------------------------------------------


def on_incident_opened(session: Session, *, incident: Incident, client: Client | None, settings: Settings) -> None:
    """Copy the client's plan onto the incident and start the acknowledgement clock."""
    if client is not None:
        snapshot_plan(session, incident=incident, client=client)
    add_timer(session, kind=TimerKind.ACK_ALERT, incident_id=incident.id,
              due_at=incident.opened_at + timedelta(seconds=settings.ack_alert_after_s))


def snapshot_plan(session: Session, *, incident: Incident, client: Client) -> list[IncidentStep]:
    steps = []
    plan = session.scalars(select(PlanStep).where(PlanStep.client_id == client.id)
                           .order_by(PlanStep.position, PlanStep.id)).all()
    for position, plan_step in enumerate(plan, start=1):
        if plan_step.contact_id is not None:
            contact = session.get(Contact, plan_step.contact_id)
            if contact is None:
                continue
            target = dict(kind=contact.kind.value, name=contact.name, phone=contact.phone,
                          language=contact.language, has_key=contact.has_key)
        else:
            resource = session.get(SharedResource, plan_step.resource_id)
            if resource is None or not resource.active:
                continue
            target = dict(kind=resource.kind.value, name=resource.name, phone=resource.phone,
                          language=resource.language, has_key=resource.kind == "keys_service")
        step = IncidentStep(incident_id=incident.id, position=position, channel=plan_step.channel,
                            wait_seconds=plan_step.wait_seconds, automatic=plan_step.automatic,
                            instruction=plan_step.instruction, state=StepState.PENDING, **target)
        session.add(step)
        steps.append(step)
    session.flush()
    return steps


def add_timer(session: Session, *, kind: TimerKind, incident_id: int, due_at: datetime,
              step_id: int | None = None) -> Timer:
    timer = Timer(kind=kind, incident_id=incident_id, step_id=step_id, due_at=due_at)
    session.add(timer)
    return timer


def cancel_timers(session: Session, *, incident_id: int, kind: TimerKind | None = None,
                  step_id: int | None = None) -> None:
    query = update(Timer).where(Timer.incident_id == incident_id, Timer.done_at.is_(None))
    if kind is not None:
        query = query.where(Timer.kind == kind)
    if step_id is not None:
        query = query.where(Timer.step_id == step_id)
    session.execute(query.values(done_at=clock.now(), outcome="cancelled"))


# -- steps -------------------------------------------------------------------------------


def start_step(session: Session, *, incident: Incident, step: IncidentStep, actor: str,
               user_id: int | None = None, client: Client | None = None) -> None:
    """Begin a step: text the contact and wait for an answer, or put the task before the operator."""
    now = clock.now()
    step.started_at = now
    if step.channel == Channel.SMS:
        client = client or (session.get(Client, incident.client_id) if incident.client_id else None)
        # Unique among the number's open dispatches, so the code alone says which one an answer is for.
        taken = set(session.scalars(select(IncidentStep.reply_code).where(
            IncidentStep.phone == step.phone, IncidentStep.state.in_(ACTIVE_STEP_STATES),
            IncidentStep.reply_code.is_not(None))))
        step.reply_code = texts.new_reply_code(taken)
        body = texts.dispatch_text(step.language, client_name=client.full_name if client else "?",
                                   address=client.address if client else "?", alarm=incident.kind.value,
                                   code=step.reply_code)
        queue_sms(session, to=step.phone, body=body, purpose="dispatch", incident_id=incident.id, step_id=step.id)
        step.state = StepState.WAITING
        add_timer(session, kind=TimerKind.STEP_TIMEOUT, incident_id=incident.id, step_id=step.id,
                  due_at=now + timedelta(seconds=step.wait_seconds))
    elif step.channel == Channel.VOICE:
        from alarmcentre.voice.dispatch import request_call  # voice builds on escalation: imported when used

        request_call(session, incident=incident, step=step)
        step.state = StepState.WAITING
        add_timer(session, kind=TimerKind.STEP_TIMEOUT, incident_id=incident.id, step_id=step.id,
                  due_at=now + timedelta(seconds=step.wait_seconds))
    else:
        step.state = StepState.TASK
    append_timeline(session, incident, kind=TimelineKind.STEP_STARTED, actor=actor, user_id=user_id,
                    details=_step_details(step))


def advance(session: Session, *, incident: Incident, after: IncidentStep, reason: str) -> IncidentStep | None:
    """Move past a step that will not help: start the next one if it is automatic, else ask the operator."""
    next_step = session.scalar(
        select(IncidentStep).where(IncidentStep.incident_id == incident.id, IncidentStep.position > after.position,
                                   IncidentStep.state == StepState.PENDING)
        .order_by(IncidentStep.position).limit(1)
    )
    metrics.ESCALATIONS.labels(reason).inc()
    if next_step is None:
        append_timeline(session, incident, kind=TimelineKind.NOTE, actor="system",
                        details={"text": "the response plan has no further step: the operator decides",
                                 "after_step": after.id, "reason": reason})
        return None
    if next_step.automatic:
        start_step(session, incident=incident, step=next_step, actor="system")
    else:
        append_timeline(session, incident, kind=TimelineKind.NOTE, actor="system",
                        details={"text": "next step waits for the operator", "step": _step_details(next_step),
                                 "reason": reason})
    return next_step


def record_answer(session: Session, *, incident: Incident, step: IncidentStep, answer: texts.Reply | str,
                  actor: str, user_id: int | None = None, via: str) -> None:
    """accept / decline / arrived / done, from an SMS or an operator's phone call."""
    answer = texts.Reply(answer)
    now = clock.now()
    if answer == texts.Reply.ACCEPT:
        step.state, step.answered_at = StepState.ACCEPTED, now
        cancel_timers(session, incident_id=incident.id, step_id=step.id)
    elif answer == texts.Reply.DECLINE:
        step.state, step.answered_at, step.finished_at = StepState.DECLINED, now, now
        cancel_timers(session, incident_id=incident.id, step_id=step.id)
    elif answer == texts.Reply.ARRIVED:
        step.state, step.arrived_at = StepState.ARRIVED, now
        step.answered_at = step.answered_at or now
        cancel_timers(session, incident_id=incident.id, step_id=step.id)
    else:
        step.state, step.finished_at = StepState.DONE, now
        step.answered_at = step.answered_at or now
        cancel_timers(session, incident_id=incident.id, step_id=step.id)
    append_timeline(session, incident, kind=TimelineKind.STEP_ANSWER, actor=actor, user_id=user_id,
                    details={**_step_details(step), "answer": answer.value, "via": via})
    # A home-care worker's answer is also a visit (visits depends on dispatch.models only: no cycle).
    visit = visits.on_step_answer(session, incident_id=incident.id, client_id=incident.client_id, step=step,
                                  answer=answer.value)
    if visit is not None and answer == texts.Reply.ACCEPT:
        append_timeline(session, incident, kind=TimelineKind.NOTE, actor="system",
                        details={"text": f"home-care visit {visit.id} recorded", "visit_id": visit.id,
                                 "worker_id": visit.worker_id})
    if answer == texts.Reply.DECLINE:
        advance(session, incident=incident, after=step, reason="declined")


def step_failed(session: Session, message: SmsMessage) -> None:
    """The dispatch text could not be delivered: the step fails and the plan moves on at once."""
    if message.step_id is None or message.purpose != "dispatch":
        return
    step = session.get(IncidentStep, message.step_id)
    incident = session.get(Incident, message.incident_id) if message.incident_id else None
    if step is None or incident is None or step.state != StepState.WAITING:
        return  # answered already (by SMS or phone): whoever answered has the text, whatever the report says
    now = clock.now()
    step.state, step.finished_at = StepState.FAILED, now
    cancel_timers(session, incident_id=incident.id, step_id=step.id)
    append_timeline(session, incident, kind=TimelineKind.STEP_FAILED, actor="system",
                    details={**_step_details(step), "error": message.last_error})
    if incident.status != IncidentStatus.RESOLVED:
        advance(session, incident=incident, after=step, reason="sms_failed")


def close_steps(session: Session, *, incident: Incident) -> None:
    """On resolve: nothing more is sent, no timer fires, and whoever was asked by SMS and has not
    answered is told that help is no longer needed (someone who accepted may be on the way and hears
    from the operator, who knows whether to stop them)."""
    cancel_timers(session, incident_id=incident.id)
    now = clock.now()
    for step in session.scalars(select(IncidentStep).where(
            IncidentStep.incident_id == incident.id,
            IncidentStep.state.in_([StepState.PENDING, StepState.WAITING, StepState.TASK]))):
        if step.state == StepState.WAITING and step.channel == Channel.SMS and _request_went_out(session, step):
            queue_sms(session, to=step.phone, body=texts.stand_down_text(step.language), purpose="stand_down",
                      incident_id=incident.id, step_id=step.id)
        if step.channel == Channel.VOICE:
            from alarmcentre.voice.dispatch import cancel_requested

            cancel_requested(session, step=step)
        step.state, step.finished_at = StepState.CANCELLED, now


def _request_went_out(session: Session, step: IncidentStep) -> bool:
    """The step's request reached the phone company: only then is there someone to stand down."""
    return session.scalar(select(SmsMessage.id).where(
        SmsMessage.step_id == step.id, SmsMessage.purpose == "dispatch",
        SmsMessage.status.in_([SmsStatus.SENT, SmsStatus.DELIVERED])).limit(1)) is not None


def _step_details(step: IncidentStep) -> dict[str, object]:
    return {"step_id": step.id, "position": step.position, "kind": step.kind, "name": step.name,
            "channel": step.channel.value, "state": step.state.value, "instruction": step.instruction}


# -- the sweep ---------------------------------------------------------------------------


def sweep(factory: sessionmaker[Session], *, settings: Settings, limit: int = 200) -> int:
    """Fire every due timer once; returns how many fired. Called by the scheduler every second."""
    fired = 0
    while fired < limit:
        with transaction(factory, writes=True) as session:
            now = clock.now()
            due = session.scalars(
                select(Timer).where(Timer.done_at.is_(None), Timer.due_at <= now)
                .order_by(Timer.due_at, Timer.id).limit(20).with_for_update(skip_locked=True)
            ).all()
            if not due:
                return fired
            for timer in due:
                claimed = session.execute(
                    update(Timer).where(Timer.id == timer.id, Timer.done_at.is_(None))
                    .values(done_at=now, outcome="fired")
                ).rowcount
                if claimed != 1:
                    continue  # another process fired it
                with session.begin_nested():
                    _fire(session, timer, now=now, settings=settings)
                metrics.TIMERS_FIRED.labels(timer.kind.value).inc()
                fired += 1
    return fired


def _fire(session: Session, timer: Timer, *, now: datetime, settings: Settings) -> None:
    incident = session.get(Incident, timer.incident_id)
    if incident is None or incident.status == IncidentStatus.RESOLVED:
        return
    if timer.kind == TimerKind.ACK_ALERT:
        if incident.status != IncidentStatus.OPEN:
            return
        _alert_supervisors(session, incident=incident, now=now)
        add_timer(session, kind=TimerKind.ACK_ALERT, incident_id=incident.id,
                  due_at=now + timedelta(seconds=settings.ack_alert_repeat_s))
    elif timer.kind == TimerKind.STEP_TIMEOUT:
        step = session.get(IncidentStep, timer.step_id) if timer.step_id else None
        if step is None or step.state != StepState.WAITING:
            return
        step.state, step.finished_at = StepState.NO_ANSWER, now
        append_timeline(session, incident, kind=TimelineKind.STEP_TIMEOUT, actor="system",
                        details={**_step_details(step), "waited_s": step.wait_seconds})
        advance(session, incident=incident, after=step, reason="no_answer")


def _alert_supervisors(session: Session, *, incident: Incident, now: datetime) -> None:
    waited = int((now - incident.opened_at).total_seconds())
    supervisors = session.scalars(select(User).where(
        User.role == Role.SUPERVISOR, User.on_call.is_(True), User.active.is_(True), User.phone.is_not(None))).all()
    for supervisor in supervisors:
        assert supervisor.phone is not None
        queue_sms(session, to=supervisor.phone, purpose="supervisor_alert", incident_id=incident.id,
                  body=texts.supervisor_alert_text(supervisor.language, incident_id=incident.id, waited_s=waited))
    append_timeline(session, incident, kind=TimelineKind.SUPERVISOR_ALERT, actor="system",
                    details={"waited_s": waited, "texted": [s.username for s in supervisors]})
    metrics.SUPERVISOR_ALERTS.inc()
    log.warning("incident %d unacknowledged for %d s: supervisors alerted (%d texted)",
                incident.id, waited, len(supervisors))
