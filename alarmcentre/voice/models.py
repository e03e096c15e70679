"""Telephone calls of an incident: the client's call into the centre and the calls operators place.

One row per call leg Twilio knows (its CallSid). Rows change only forward: a status callback
that arrives late or twice never moves a call back (see `STATUS_RANK`), and what the operator
reads is the incident's append-only timeline, written on each real change.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from alarmcentre import clock
from alarmcentre.db import Base
from alarmcentre.db_types import str_enum


class CallDirection(StrEnum):
    INBOUND = "inbound"  # someone called the centre's number
    OUTBOUND = "outbound"  # the centre rang a phone (always the operator's first)


class CallPurpose(StrEnum):
    INCOMING = "incoming"  # a client, a device or an unknown caller; waits in the incident's queue
    ANSWER = "answer"  # rings the operator, then takes the waiting caller out of the queue
    CALL_PERSON = "call_person"  # rings the operator, then dials the client, a contact or a service
    DISPATCH = "dispatch"  # a plan step's automatic call: the contact answers with a key (1 go, 2 cannot)


# Twilio's call statuses in the order a call goes through them; the last five end a call.
STATUS_RANK: dict[str, int] = {
    "requested": 0, "queued": 1, "initiated": 2, "ringing": 3, "in-progress": 4,
    "completed": 5, "busy": 5, "no-answer": 5, "failed": 5, "canceled": 5,
}
ENDED = frozenset(status for status, rank in STATUS_RANK.items() if rank == 5)


class VoiceCall(Base):
    __tablename__ = "voice_calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_sid: Mapped[str | None] = mapped_column(String(64), unique=True)  # None until Twilio answered the request
    direction: Mapped[CallDirection] = mapped_column(str_enum(CallDirection))
    purpose: Mapped[CallPurpose] = mapped_column(str_enum(CallPurpose))
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"), index=True)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id"), index=True)
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # the operator on the call
    from_number: Mapped[str] = mapped_column(String(32))
    to_number: Mapped[str] = mapped_column(String(32))  # for an outbound call: the operator's phone
    # Whom an operator's call is for (CALL_PERSON): the number dialled after the operator answers.
    callee_number: Mapped[str | None] = mapped_column(String(32))
    callee_label: Mapped[str | None] = mapped_column(String(200))
    callee_kind: Mapped[str | None] = mapped_column(String(16))  # client, device (its SIM) or step
    callee_result: Mapped[str | None] = mapped_column(String(16))  # Twilio's DialCallStatus
    # For DISPATCH: the plan step it asks, and the key the contact pressed.
    step_id: Mapped[int | None] = mapped_column(ForeignKey("incident_steps.id"), index=True)
    digits: Mapped[str | None] = mapped_column(String(8))
    error: Mapped[str | None] = mapped_column(String(500))  # why Twilio did not place it
    # For ANSWER: the incoming call it takes out of the queue.
    answers_call_id: Mapped[int | None] = mapped_column(ForeignKey("voice_calls.id"))
    status: Mapped[str] = mapped_column(String(16), default="requested")
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    connected_at: Mapped[datetime | None]  # INCOMING: an operator took it; CALL_PERSON: the callee answered
    ended_at: Mapped[datetime | None]
    duration_s: Mapped[int | None]
    left_queue: Mapped[str | None] = mapped_column(String(16))  # INCOMING: Twilio's QueueResult (e.g. hangup)

    @property
    def waiting(self) -> bool:
        """An incoming call still in the queue: nobody took it and the caller has not hung up."""
        return (self.purpose == CallPurpose.INCOMING and self.connected_at is None and self.left_queue is None
                and self.status not in ENDED)
