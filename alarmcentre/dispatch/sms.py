"""Texting, in two layers: rules (queue, throttle, retries, log) above a provider that only sends.

Messages are queued as rows in the same transaction as the decision to send them (an
escalation step, an alert), so a decision is never lost and never made twice. The sender
job picks due rows one at a time, checks they are still wanted (no text for a resolved
incident; no supervisor alert once acknowledged), refuses numbers outside the allowed
countries, applies the per-number throttle and the hourly caps, hands the text to the
provider and records the result. A crash between the provider's answer and the commit can
send one text twice; it can never lose one.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import clock, metrics
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.dispatch.models import SmsDirection, SmsMessage, SmsStatus
from alarmcentre.incidents.models import Incident, IncidentStatus
from alarmcentre.phone import DEFAULT_COUNTRY_CODE, masked

log = logging.getLogger(__name__)

OUTBOX_NUMBER = "outbox"
RETRY_BACKOFF_S = (5, 30, 120, 600)


class SmsError(Exception):
    """The provider refused or failed. `transient` errors are retried."""

    def __init__(self, message: str, *, transient: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.code = code


class SmsProvider(Protocol):
    name: str
    from_number: str

    def send(self, *, to: str, body: str, status_callback: str | None) -> str:
        """Send one text; return the provider's id for it, or raise SmsError."""
        ...


class OutboxProvider:
    """No telephone network: the text stays in the database (the outbox) for people and tests to read."""

    name = "outbox"
    from_number = OUTBOX_NUMBER

    def send(self, *, to: str, body: str, status_callback: str | None) -> str:
        return f"outbox-{uuid.uuid4().hex}"


class TwilioProvider:
    """Twilio's Messages API through the official library."""

    name = "twilio"

    def __init__(self, *, account_sid: str, auth_token: str, from_number: str, api_base: str | None = None,
                 timeout_s: float = 30.0) -> None:
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        self.from_number = from_number
        # The library waits forever by default: one hung request would stop every text after it.
        http_client = _RebasedHttpClient(api_base, timeout_s) if api_base else TwilioHttpClient(timeout=timeout_s)
        self._client = Client(account_sid, auth_token, http_client=http_client)

    def send(self, *, to: str, body: str, status_callback: str | None) -> str:
        from twilio.base.exceptions import TwilioException, TwilioRestException

        kwargs: dict[str, Any] = {"to": to, "from_": self.from_number, "body": body}
        if status_callback:
            kwargs["status_callback"] = status_callback
        try:
            message = self._client.messages.create(**kwargs)
        except TwilioRestException as exc:
            # 401/403 mean our account or credentials are wrong, not the recipient: people fix that,
            # so the text waits and is retried rather than failing every dispatch of the night at once.
            transient = exc.status in (401, 403, 429) or exc.status >= 500
            raise SmsError(f"Twilio {exc.status} {exc.code}: {exc.msg}", transient=transient,
                           code=str(exc.code)) from exc
        except (TwilioException, OSError) as exc:  # network trouble: try again later
            raise SmsError(f"Twilio unreachable: {exc}", transient=True) from exc
        return str(message.sid)


def _RebasedHttpClient(api_base: str, timeout_s: float) -> Any:  # noqa: N802  (a class factory: lazy import)
    """Twilio's own HTTP client, sending to another base URL (a local test server, a gateway)."""
    from twilio.http.http_client import TwilioHttpClient

    class Rebased(TwilioHttpClient):
        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            # Any Twilio host: with TWILIO_EDGE/TWILIO_REGION set the library calls api.<edge>.<region>.twilio.com.
            parts = urlsplit(url)
            if parts.hostname and (parts.hostname == "twilio.com" or parts.hostname.endswith(".twilio.com")):
                url = api_base.rstrip("/") + url[len(f"{parts.scheme}://{parts.netloc}"):]
            return super().request(method, url, *args, **kwargs)

    return Rebased(timeout=timeout_s)


def build_provider(settings: Settings) -> SmsProvider:
    if settings.twilio_configured:
        assert settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_from_number
        return TwilioProvider(account_sid=settings.twilio_account_sid, auth_token=settings.twilio_auth_token,
                              from_number=settings.twilio_from_number, api_base=settings.twilio_api_base)
    return OutboxProvider()


# Texts whose whole point is that the incident is over: never held back because it is resolved.
AFTER_RESOLUTION = frozenset({"stand_down", "late_reply"})

# Texts of an alarm's handling, decided by the escalation or an operator, never by a text from outside:
# the hourly caps count them but never hold them (a cap must never stop help for a real alarm). The
# caps hold everything else: the replies the centre sends by itself to inbound texts ("reply",
# "late_reply"), which someone outside could pump.
ALARM_PURPOSES = frozenset({"dispatch", "supervisor_alert", "inform", "stand_down"})


def allowed_calling_codes(settings: Settings) -> tuple[str, ...]:
    """The allowed destinations as E.164 prefixes without the '+', longest first ('1204' before '1')."""
    codes = {code.strip().lstrip("+") for code in settings.sms_allowed_countries.split(",") if code.strip()}
    return tuple(sorted(codes, key=lambda code: (-len(code), code)))


def destination_code(number: str, codes: tuple[str, ...]) -> str | None:
    """The allowed calling code a number falls under, or None: not an E.164 number in an allowed country."""
    if not number.startswith("+"):
        return None
    return next((code for code in codes if number[1:].startswith(code)), None)


def queue_sms(
    session: Session, *, to: str, body: str, purpose: str, incident_id: int | None = None,
    step_id: int | None = None, from_number: str = "",
) -> SmsMessage:
    message = SmsMessage(direction=SmsDirection.OUT, to_number=to, from_number=from_number, body=body,
                         purpose=purpose, status=SmsStatus.QUEUED, incident_id=incident_id, step_id=step_id,
                         not_before=clock.now())
    session.add(message)
    session.flush()
    return message


def record_inbound(session: Session, *, from_number: str, to_number: str, body: str, provider: str,
                   provider_sid: str | None) -> SmsMessage | None:
    """Store a received text; None if this provider id was stored already (a webhook retry)."""
    if provider_sid and session.scalar(select(SmsMessage.id).where(SmsMessage.provider_sid == provider_sid)):
        return None
    message = SmsMessage(direction=SmsDirection.IN, to_number=to_number, from_number=from_number, body=body[:1600],
                         status=SmsStatus.RECEIVED, provider=provider, provider_sid=provider_sid)
    session.add(message)
    session.flush()
    return message


class SmsSender:
    """The rules layer. `send_due()` is called by the scheduler's sweep."""

    def __init__(self, *, factory: sessionmaker[Session], provider: SmsProvider, settings: Settings,
                 on_failed: Any = None) -> None:
        self._factory = factory
        self.provider = provider
        self._settings = settings
        self._on_failed = on_failed  # called with (session, message) when a text is given up on
        self._codes = allowed_calling_codes(settings)

    def send_due(self, *, limit: int = 100) -> int:
        """Send what is due, one message per transaction; returns how many were handled."""
        handled = 0
        while handled < limit:
            with transaction(self._factory, writes=True) as session:
                now = clock.now()
                message = session.scalar(
                    select(SmsMessage)
                    .where(SmsMessage.status == SmsStatus.QUEUED, SmsMessage.not_before <= now)
                    .order_by(SmsMessage.id)  # first queued, first sent: a throttled text keeps its place
                    .limit(1)
                    .with_for_update(skip_locked=True)
                )
                if message is None:
                    return handled
                self._handle(session, message, now)
            handled += 1
        return handled

    def _handle(self, session: Session, message: SmsMessage, now: datetime) -> None:
        reason = self._unwanted(session, message)
        if reason:
            message.status, message.last_error = SmsStatus.CANCELLED, reason
            log.info("sms %d not sent: %s", message.id, reason)
            return
        code = destination_code(message.to_number, self._codes)
        if code is None and message.purpose not in ALARM_PURPOSES:
            # Only what the centre sends by itself is bounded: a relative abroad is still told of an alarm.
            self._refuse_destination(session, message)
            return
        wait_until = self._throttled_until(session, message, now)
        if wait_until is None and message.purpose not in ALARM_PURPOSES and code is not None:
            wait_until = self._capped_until(session, message, now, code)
        if wait_until is not None:
            message.not_before = wait_until
            return
        message.attempts += 1
        message.provider = self.provider.name
        message.from_number = self.provider.from_number
        try:
            callback = (f"{self._settings.public_url.rstrip('/')}/webhooks/twilio/status"
                        if self._settings.public_url else None)
            message.provider_sid = self.provider.send(to=message.to_number, body=message.body,
                                                      status_callback=callback)
        except SmsError as exc:
            message.last_error = str(exc)[:500]
            metrics.SMS_ERRORS.labels("transient" if exc.transient else "permanent").inc()
            # The provider's message often quotes the number: it goes to last_error (shown to staff
            # through the API), the log gets the code only.
            error = f"{self.provider.name} error {exc.code}" if exc.code else f"{self.provider.name} unreachable"
            if exc.transient and message.attempts < self._settings.sms_max_attempts:
                backoff = RETRY_BACKOFF_S[min(message.attempts - 1, len(RETRY_BACKOFF_S) - 1)]
                message.not_before = now + timedelta(seconds=backoff)
                log.warning("sms %d: %s; retry %d in %d s", message.id, error, message.attempts, backoff)
                return
            message.status = SmsStatus.FAILED
            log.error("sms %d failed for good: %s", message.id, error)
            if self._on_failed is not None:
                self._on_failed(session, message)
            return
        message.status, message.sent_at = SmsStatus.SENT, now
        metrics.SMS_SENT.labels(message.purpose or "other").inc()

    @staticmethod
    def _unwanted(session: Session, message: SmsMessage) -> str | None:
        if message.incident_id is None or message.purpose in AFTER_RESOLUTION:
            return None
        status = session.scalar(select(Incident.status).where(Incident.id == message.incident_id))
        if status == IncidentStatus.RESOLVED:
            return "incident resolved"
        if message.purpose == "supervisor_alert" and status != IncidentStatus.OPEN:
            return "incident acknowledged"
        return None

    def _refuse_destination(self, session: Session, message: SmsMessage) -> None:
        """Never handed to the provider: texts abroad cost more, and premium-rate numbers are the fraud."""
        message.status = SmsStatus.FAILED
        message.last_error = ("not sent: the number is not in an allowed country (ALARMCENTRE_SMS_ALLOWED_COUNTRIES="
                              f"{','.join(sorted(self._codes))})")
        metrics.SMS_REFUSED_COUNTRY.labels(message.purpose or "other").inc()
        log.warning("sms %d (%s) to %s refused: not in an allowed country", message.id, message.purpose or "other",
                    masked(message.to_number))
        if self._on_failed is not None:
            self._on_failed(session, message)

    def _capped_until(self, session: Session, message: SmsMessage, now: datetime, code: str) -> datetime | None:
        """The hourly caps, counted from the texts sent (every purpose) in the last hour: None, or when
        enough of them are an hour old for this one to go."""
        hour_ago = now - timedelta(hours=1)
        sent = select(SmsMessage.sent_at).where(SmsMessage.sent_at > hour_ago, SmsMessage.id != message.id)
        caps = [("global", sent, self._settings.sms_global_max_per_hour)]
        if not code.startswith(DEFAULT_COUNTRY_CODE):  # the home country has the global cap only
            caps.append(("country", sent.where(SmsMessage.to_number.startswith(f"+{code}", autoescape=True)),
                         self._settings.sms_country_max_per_hour))
        for cap, query, limit in caps:
            count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            if count < limit:
                continue
            # The cap frees a place when the (count - limit + 1)th oldest of them turns an hour old.
            freed = session.scalar(query.order_by(SmsMessage.sent_at).offset(count - limit).limit(1))
            until = (freed or now) + timedelta(hours=1)
            metrics.SMS_HELD.labels(cap).inc()
            log.info("sms %d (%s) held by the %s cap (%d in the last hour) until %s", message.id,
                     message.purpose or "other", "global" if cap == "global" else f"+{code}", count,
                     until.isoformat(timespec="seconds"))
            return until
        return None

    def _throttled_until(self, session: Session, message: SmsMessage, now: datetime) -> datetime | None:
        """Carriers block numbers that get bursts: space texts to one number, cap them per hour."""
        sent_to_number = select(SmsMessage.sent_at).where(
            SmsMessage.to_number == message.to_number, SmsMessage.sent_at.is_not(None), SmsMessage.id != message.id,
        )
        last = session.scalar(sent_to_number.order_by(SmsMessage.sent_at.desc()).limit(1))
        gap = timedelta(seconds=self._settings.sms_min_interval_s)
        if last is not None and now - last < gap:
            return last + gap
        hour_ago = now - timedelta(hours=1)
        in_last_hour = session.scalar(select(func.count()).select_from(sent_to_number.where(
            SmsMessage.sent_at > hour_ago).subquery()))
        if in_last_hour and in_last_hour >= self._settings.sms_max_per_hour:
            oldest = session.scalar(sent_to_number.where(SmsMessage.sent_at > hour_ago)
                                    .order_by(SmsMessage.sent_at).limit(1))
            return (oldest or now) + timedelta(hours=1)
        return None


def apply_status_callback(
    session: Session, *, provider_sid: str, status: str, error_code: str | None
) -> SmsMessage | None:
    """Twilio's delivery report: returns the message if it just failed (so the step can move on)."""
    message = session.scalar(select(SmsMessage).where(SmsMessage.provider_sid == provider_sid))
    if message is None:
        return None
    if status == "delivered":
        message.status = SmsStatus.DELIVERED
    elif status in ("failed", "undelivered") and message.status != SmsStatus.FAILED:
        message.status = SmsStatus.FAILED
        message.last_error = f"delivery report: {status} (error {error_code})"
        return message
    return None


def recent_messages(session: Session, *, incident_id: int | None = None, limit: int = 200) -> list[SmsMessage]:
    """Texts in and out, the newest first (the outbox page, GET /api/v1/sms)."""
    query = select(SmsMessage).order_by(SmsMessage.id.desc()).limit(limit)
    if incident_id is not None:
        query = query.where(SmsMessage.incident_id == incident_id)
    return list(session.scalars(query))


def outbox_mark(session: Session) -> tuple[int | None, int]:
    """(newest id, count) of the texts: a change in either means a text came or went (the live feed)."""
    newest, count = session.execute(select(func.max(SmsMessage.id), func.count(SmsMessage.id))).one()
    return newest, count
