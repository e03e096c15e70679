"""The outbox's pretend telephone line, for testers and the demo: calls without Twilio.

`simulate_incoming` is a call to the centre's number as Twilio would report it, so the call arrives on
its incident, with its caller waiting, exactly as a real one. When an operator answers on the outbox,
`answered_on_the_outbox` plays the network's part at once: the operator's phone picks up, the caller is
connected (the incident's answer time is taken), and since nobody is on the other end the caller hangs up
straight away. Off (409) when Twilio is configured: a real line is tested with a real phone.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from alarmcentre.config import Settings
from alarmcentre.voice import service
from alarmcentre.voice.models import VoiceCall

OUTBOX_LINE = "outbox"


def simulate_incoming(session: Session, *, settings: Settings, base: str, from_number: str) -> VoiceCall:
    """A call from `from_number` to the centre, as if the telephone network had brought it."""
    sid = f"outbox-in-{secrets.token_hex(8)}"
    service.incoming_call(session, settings=settings, base=base, call_sid=sid, from_number=from_number,
                          to_number=OUTBOX_LINE, status="ringing")
    call = session.scalar(select(VoiceCall).where(VoiceCall.call_sid == sid))
    assert call is not None
    return call


def answered_on_the_outbox(session: Session, leg: VoiceCall) -> None:
    """The operator answered (`leg`, rung on the outbox): connect the waiting caller, who then hangs up."""
    caller = session.get(VoiceCall, leg.answers_call_id) if leg.answers_call_id else None
    if caller is None or caller.call_sid is None:
        return
    service.connected(session, call_id=caller.id, leg_id=leg.id, call_sid=caller.call_sid, queue_time=None)
    service.apply_status(session, call_id=caller.id, call_sid=caller.call_sid, status="completed", duration="0")
