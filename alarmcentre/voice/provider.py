"""Placing calls: Twilio's Calls API through the official library, or no telephone line at all.

The seam is the same as for texts (`dispatch/sms.py`): the domain decides what to say and whom to
ring, the provider only places the call. Without Twilio (the demo, most tests) the outbox provider
records the call and rings nobody.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Protocol

from alarmcentre.config import Settings
from alarmcentre.dispatch.sms import _RebasedHttpClient as rebased_http_client

if TYPE_CHECKING:
    from starlette.requests import Request

# Status callbacks for the operator's leg: every step, so a phone that never rang is told at once.
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
RING_TIMEOUT_S = 25  # the operator's own phone: then no-answer, and the incident says so


class VoiceError(Exception):
    """Twilio refused or could not be reached; the operator is told and nothing was placed."""


class VoiceProvider(Protocol):
    name: str
    from_number: str

    def place_call(self, *, to: str, twiml: str, status_callback: str | None) -> str:
        """Ring `to` and run `twiml` when answered; return the call's id, or raise VoiceError."""
        ...


class OutboxVoice:
    """No telephone network: the call is recorded on the incident; no phone rings."""

    name = "outbox"
    from_number = "outbox"

    def place_call(self, *, to: str, twiml: str, status_callback: str | None) -> str:
        return f"outbox-{uuid.uuid4().hex}"


class TwilioVoice:
    name = "twilio"

    def __init__(self, *, account_sid: str, auth_token: str, from_number: str, api_base: str | None = None,
                 timeout_s: float = 15.0) -> None:
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        self.from_number = from_number
        http_client = rebased_http_client(api_base, timeout_s) if api_base else TwilioHttpClient(timeout=timeout_s)
        self._client = Client(account_sid, auth_token, http_client=http_client)

    def place_call(self, *, to: str, twiml: str, status_callback: str | None) -> str:
        from twilio.base.exceptions import TwilioException, TwilioRestException

        kwargs: dict[str, Any] = {"to": to, "from_": self.from_number, "twiml": twiml, "timeout": RING_TIMEOUT_S}
        if status_callback:
            kwargs.update(status_callback=status_callback, status_callback_event=STATUS_EVENTS,
                          status_callback_method="POST")
        try:
            call = self._client.calls.create(**kwargs)
        except TwilioRestException as exc:
            raise VoiceError(f"Twilio {exc.status} {exc.code}: {exc.msg}") from exc
        except (TwilioException, OSError) as exc:
            raise VoiceError(f"Twilio unreachable: {exc}") from exc
        return str(call.sid)


def build_voice(settings: Settings) -> VoiceProvider:
    if settings.twilio_configured:
        assert settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_from_number
        return TwilioVoice(account_sid=settings.twilio_account_sid, auth_token=settings.twilio_auth_token,
                           from_number=settings.twilio_from_number, api_base=settings.twilio_api_base)
    return OutboxVoice()


def public_base(request: Request) -> str:
    """Where Twilio reaches the centre: the configured public URL, else the address this request came to."""
    return (request.app.state.settings.public_url or str(request.base_url)).rstrip("/")


def voice_provider(request: Request) -> VoiceProvider:
    state = request.app.state
    if getattr(state, "voice", None) is None:
        state.voice = build_voice(state.settings)
    return state.voice  # type: ignore[no-any-return]
