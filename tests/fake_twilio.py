"""A local stand-in for Twilio's Messages and Calls APIs, checking requests the way Twilio does.

It serves `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` on 127.0.0.1 (a free port)
for the real `twilio` library, pointed at it with `Settings.twilio_api_base`:

- HTTP Basic auth must be AccountSid:AuthToken, else 401 (code 20003), and the AccountSid in
  the path must be that account's, else 404 (20404);
- form fields: `To` in E.164 (21604 missing, 21211 invalid), `From` the account's number
  (21603 missing, 21606 not ours), `To` unlike `From` (21266), `Body` non-empty (21602) and
  at most 1600 characters (21617), `StatusCallback` an absolute http(s) URL if given (21609);
- success: 201 with the message resource as JSON (sid "SM" + 32 hex, status "queued").

`POST /2010-04-01/Accounts/{AccountSid}/Calls.json` (voice) checks the same auth, then `To` in
E.164 (21211), `From` the account's number (21210), `Twiml` or `Url` (21205), TwiML that parses
as XML with a `Response` root (12100), `StatusCallback` absolute (21609) and `StatusCallbackEvent`
among initiated/ringing/answered/completed (21626); success: 201, sid "CA" + 32 hex, "queued".
Incoming calls and call status callbacks can be made and signed as Twilio sends them.

It records every request, can fail or stall the next requests on demand, and can deliver a
status callback signed as Twilio signs it (HMAC-SHA1 of URL + sorted fields, with the auth
token, computed by the library's own RequestValidator). Inbound texts can be signed the same way.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from twilio.request_validator import RequestValidator

API_VERSION = "2010-04-01"
_MESSAGES_PATH = re.compile(rf"^/{API_VERSION}/Accounts/([^/]+)/Messages\.json$")
_CALLS_PATH = re.compile(rf"^/{API_VERSION}/Accounts/([^/]+)/Calls\.json$")
CALL_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_BODY = 1600

# Twilio's error codes for the checks above (https://www.twilio.com/docs/errors/<code>).
AUTHENTICATE = 20003
NOT_FOUND = 20404
TOO_MANY_REQUESTS = 20429
INTERNAL_ERROR = 20500
SERVICE_UNAVAILABLE = 20503
INVALID_TO = 21211
TO_EQUALS_FROM = 21266
BODY_REQUIRED = 21602
FROM_REQUIRED = 21603
TO_REQUIRED = 21604
FROM_NOT_OURS = 21606
INVALID_STATUS_CALLBACK = 21609
BODY_TOO_LONG = 21617
URL_REQUIRED = 21205
CALL_FROM_NOT_OURS = 21210
INVALID_CALL_EVENT = 21626
TWIML_PARSE_FAILURE = 12100
_DEFAULT_CODE = {429: TOO_MANY_REQUESTS, 500: INTERNAL_ERROR, 503: SERVICE_UNAVAILABLE}

# GSM 03.38: the basic table (one septet each) and the extension table (an escape + one septet).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")


def segments(body: str) -> int:
    """SMS segments of a body as the network counts them: GSM-7 160/153, else UCS-2 70/67 (UTF-16 units)."""
    if all(ch in _GSM7_BASIC or ch in _GSM7_EXTENSION for ch in body):
        units = sum(2 if ch in _GSM7_EXTENSION else 1 for ch in body)
        single, part = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, part = 70, 67
    return 1 if units <= single else -(-units // part)


@dataclass
class Request:
    """One request as the fake received it, with what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]
    auth: tuple[str, str] | None
    status: int = 0
    answer: dict[str, Any] = field(default_factory=dict)

    def field(self, name: str) -> str | None:
        values = self.form.get(name)
        return values[-1] if values else None


@dataclass
class Message:
    """A message the fake accepted."""

    sid: str
    to: str
    from_: str
    body: str
    status_callback: str | None
    status: str = "queued"


@dataclass
class Call:
    """A call the fake accepted (the centre ringing a phone)."""

    sid: str
    to: str
    from_: str
    twiml: str
    status_callback: str | None
    events: list[str]
    status: str = "queued"
    sequence: int = 0


@dataclass
class Callback:
    """A status callback as Twilio would POST it: to `url`, the form `form`, signed by `signature`."""

    url: str
    form: dict[str, str]
    signature: str

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.url).path

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Twilio-Signature": self.signature}


@dataclass
class _Failure:
    status: int
    code: int
    message: str


class FakeTwilio:
    """Use as a context manager, or start()/stop(). `url` is the base to give Settings.twilio_api_base."""

    def __init__(self, *, account_sid: str, auth_token: str, from_number: str) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.from_number = from_number
        self.requests: list[Request] = []
        self.messages: dict[str, Message] = {}
        self.calls: dict[str, Call] = {}
        self._failures: list[_Failure] = []
        self._stalls = 0
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeTwilio:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802  (http.server's naming)
                fake._serve(self)

            def do_GET(self) -> None:  # noqa: N802
                fake._serve(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet)
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-twilio",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # let stalled requests finish
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests tell it ------------------------------------------------------------------

    def fail_next(self, count: int = 1, *, status: int = 500, code: int | None = None, message: str = "") -> None:
        """The next `count` well-authenticated requests get this error instead of being accepted."""
        code = code if code is not None else _DEFAULT_CODE.get(status, status)
        with self._lock:
            self._failures += [_Failure(status, code, message or f"Simulated error {code}")] * count

    def stall_next(self, count: int = 1) -> None:
        """The next `count` requests get no answer until `release()` (or stop)."""
        with self._lock:
            self._stalls += count
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    @property
    def accepted(self) -> list[Request]:
        return [r for r in self.requests if r.status == 201]

    # -- signatures and callbacks ------------------------------------------------------------

    def sign(self, url: str, form: Mapping[str, str], *, token: str | None = None) -> str:
        """X-Twilio-Signature for a POST of `form` to `url`, as Twilio computes it."""
        return str(RequestValidator(token or self.auth_token).compute_signature(url, dict(form)))

    def status_callback(self, sid: str, status: str, *, error_code: str | None = None) -> Callback:
        """What Twilio POSTs to the message's StatusCallback when its status changes."""
        message = self.messages[sid]
        assert message.status_callback, f"message {sid} was sent without a StatusCallback"
        form = {"AccountSid": self.account_sid, "ApiVersion": API_VERSION, "From": message.from_,
                "MessageSid": sid, "MessageStatus": status, "SmsSid": sid, "SmsStatus": status, "To": message.to}
        if error_code is not None:
            form["ErrorCode"] = error_code
        message.status = status
        return Callback(message.status_callback, form, self.sign(message.status_callback, form))

    def deliver(self, sid: str, status: str, *, error_code: str | None = None,
                post: Callable[[Callback], int] | None = None) -> int:
        """Send the status callback; returns the HTTP status. `post` replaces the network (e.g. a TestClient)."""
        callback = self.status_callback(sid, status, error_code=error_code)
        if post is not None:
            return post(callback)
        request = urllib.request.Request(callback.url, data=urllib.parse.urlencode(callback.form).encode(),
                                         headers=callback.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  (a test's own URL)
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def inbound(self, *, from_: str, body: str, to: str | None = None, sid: str | None = None) -> dict[str, str]:
        """The form Twilio POSTs to the messaging webhook for a received SMS."""
        sid = sid or new_sid()
        return {"AccountSid": self.account_sid, "ApiVersion": API_VERSION, "Body": body, "From": from_,
                "FromCountry": "LV", "MessageSid": sid, "NumMedia": "0", "NumSegments": str(segments(body)),
                "SmsMessageSid": sid, "SmsSid": sid, "SmsStatus": "received", "To": to or self.from_number,
                "ToCountry": "LV"}

    def signed(self, url: str, form: Mapping[str, str]) -> Callback:
        """Any webhook request as Twilio sends it: `form` POSTed to `url`, signed."""
        return Callback(url, dict(form), self.sign(url, form))

    def incoming_call(self, *, from_: str, to: str | None = None, sid: str | None = None) -> dict[str, str]:
        """The form Twilio POSTs to the voice webhook when someone calls the account's number."""
        sid = sid or new_sid("CA")
        to = to or self.from_number
        return {"AccountSid": self.account_sid, "ApiVersion": API_VERSION, "CallSid": sid, "CallStatus": "ringing",
                "Called": to, "Caller": from_, "Direction": "inbound", "From": from_, "FromCountry": "LV",
                "To": to, "ToCountry": "LV"}

    def call_status(self, sid: str, status: str, *, duration: int | None = None) -> Callback:
        """A status callback of a call the centre placed, to its StatusCallback URL."""
        call = self.calls[sid]
        assert call.status_callback, f"call {sid} was placed without a StatusCallback"
        form = {"AccountSid": self.account_sid, "ApiVersion": API_VERSION, "CallSid": sid, "CallStatus": status,
                "Direction": "outbound-api", "From": call.from_, "To": call.to,
                "SequenceNumber": str(call.sequence),
                "Timestamp": format_datetime(datetime.now(UTC), usegmt=True)}
        if duration is not None:
            form["CallDuration"] = str(duration)
        call.sequence += 1
        call.status = status
        return self.signed(call.status_callback, form)

    # -- serving -----------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        form = urllib.parse.parse_qs(raw.decode("utf-8"), keep_blank_values=True)
        request = Request(handler.command, handler.path, dict(handler.headers.items()), form,
                          _basic_auth(handler.headers.get("Authorization")))
        with self._lock:
            self.requests.append(request)
            stall = self._stalls > 0
            self._stalls -= stall
        if stall:
            self._release.wait(30)
        status, answer = self._answer(request)
        request.status, request.answer = status, answer
        payload = json.dumps(answer).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json; charset=utf-8")
            handler.send_header("Content-Length", str(len(payload)))
            if status == 401:
                handler.send_header("WWW-Authenticate", 'Basic realm="Twilio API"')
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:  # the client gave up (a timeout test)
            pass

    def _answer(self, request: Request) -> tuple[int, dict[str, Any]]:
        path = urllib.parse.urlsplit(request.path).path
        match = _MESSAGES_PATH.match(path) or _CALLS_PATH.match(path)
        if request.auth != (self.account_sid, self.auth_token):
            return _error(401, AUTHENTICATE, "Authenticate", detail="Your AccountSid or AuthToken was incorrect.")
        if match is None or match.group(1) != self.account_sid:
            return _error(404, NOT_FOUND, f"The requested resource {request.path} was not found")
        if request.method != "POST":
            return _error(405, 20004, "Method not allowed")
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            return _error(failure.status, failure.code, failure.message)
        if _CALLS_PATH.match(path):
            return self._place_call(request)
        to, from_, body = request.field("To"), request.field("From"), request.field("Body")
        callback = request.field("StatusCallback")
        if not to:
            return _error(400, TO_REQUIRED, "A 'To' phone number is required.")
        if not _E164.match(to):
            return _error(400, INVALID_TO, f"The 'To' number {to} is not a valid phone number.")
        if not from_:
            return _error(400, FROM_REQUIRED, "A 'From' phone number is required.")
        if from_ != self.from_number:
            return _error(400, FROM_NOT_OURS, f"The From phone number {from_} is not a valid, SMS-capable "
                                              "inbound phone number or short code for your account.")
        if to == from_:
            return _error(400, TO_EQUALS_FROM, f"'To' and 'From' number cannot be the same: {to}")
        if not body:
            return _error(400, BODY_REQUIRED, "Message body is required.")
        if len(body) > MAX_BODY:
            return _error(400, BODY_TOO_LONG, "The concatenated message body exceeds the 1600 character limit.")
        if callback is not None and urllib.parse.urlsplit(callback).scheme not in ("http", "https"):
            return _error(400, INVALID_STATUS_CALLBACK, "Invalid StatusCallback url")
        sid = new_sid()
        with self._lock:
            self.messages[sid] = Message(sid, to, from_, body, callback)
        now = format_datetime(datetime.now(UTC), usegmt=True)
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"
        return 201, {
            "account_sid": self.account_sid, "api_version": API_VERSION, "body": body, "date_created": now,
            "date_sent": None, "date_updated": now, "direction": "outbound-api", "error_code": None,
            "error_message": None, "from": from_, "messaging_service_sid": None, "num_media": "0",
            "num_segments": str(segments(body)), "price": None, "price_unit": "USD", "sid": sid,
            "status": "queued", "subresource_uris": {"media": uri.replace(".json", "/Media.json")}, "to": to,
            "uri": uri,
        }


    def _place_call(self, request: Request) -> tuple[int, dict[str, Any]]:
        to, from_, twiml = request.field("To"), request.field("From"), request.field("Twiml")
        callback, events = request.field("StatusCallback"), request.form.get("StatusCallbackEvent", [])
        if not to or not _E164.match(to):
            return _error(400, INVALID_TO, f"Invalid 'To' Phone Number: {to}")
        if from_ != self.from_number:
            return _error(400, CALL_FROM_NOT_OURS, f"The source phone number provided, {from_}, is not yet "
                                                   "verified for your account.")
        if not twiml and not request.field("Url"):
            return _error(400, URL_REQUIRED, "Url parameter is required. Please provide a valid Url or Twiml.")
        if twiml:
            try:
                root = ET.fromstring(twiml)
            except ET.ParseError:
                root = None
            if root is None or root.tag != "Response":
                return _error(400, TWIML_PARSE_FAILURE, "Document parse failure")
        if callback is not None and urllib.parse.urlsplit(callback).scheme not in ("http", "https"):
            return _error(400, INVALID_STATUS_CALLBACK, "Invalid StatusCallback url")
        if not set(events) <= CALL_EVENTS:
            return _error(400, INVALID_CALL_EVENT, f"Invalid StatusCallbackEvent: {events}")
        sid = new_sid("CA")
        with self._lock:
            self.calls[sid] = Call(sid, to, from_, twiml or "", callback, list(events))
        now = format_datetime(datetime.now(UTC), usegmt=True)
        return 201, {
            "account_sid": self.account_sid, "api_version": API_VERSION, "date_created": now, "date_updated": now,
            "direction": "outbound-api", "from": from_, "from_formatted": from_, "sid": sid, "status": "queued",
            "to": to, "to_formatted": to, "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{sid}.json",
        }


def new_sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return None
    return user, password


def _error(status: int, code: int, message: str, *, detail: str | None = None) -> tuple[int, dict[str, Any]]:
    answer: dict[str, Any] = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                              "status": status}
    if detail is not None:
        answer["detail"] = detail
    return status, answer
