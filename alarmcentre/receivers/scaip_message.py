"""SCAIP on the wire (docs/scaip.md): SIP requests in, SIP responses out, the SCAIP XML they carry.

A SCAIP device (CLC/TS 50134-9) sends each alarm, cancel, information or heartbeat as a SIP MESSAGE
(RFC 3428) whose body is an `<mrq>` ("message request") of short tags; the receiver answers the MESSAGE with a
SIP response whose body is an `<mrs>` ("message response") naming the request's `ref` and a status number
(`snu`, 0 = taken). SIP digest authentication (RFC 3261 section 22, RFC 2617 MD5) proves the device's identity.

Only what the receiver needs of SIP is here: requests are parsed tolerantly (compact header names, bare LF line
ends, a missing Content-Length on UDP), responses are built exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from enum import IntEnum
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeElementTree
from defusedxml import DefusedXmlException

CONTENT_TYPE = "application/scaip+xml"  # registered with IANA
MAX_MESSAGE = 8192  # a SIP request longer than this is refused (a SCAIP one is a few hundred bytes)
MAX_BODY = 4096  # an <mrq> longer than this is answered "message too long"
MANDATORY_TAGS = ("ref", "cid", "dty")  # what every device sends (the standard and every published trace)
NONCE_TTL_S = 300  # a digest challenge is good for this long (resent copies within it are deduplicated)

# RFC 3261 7.3.3: the compact forms of header names.
_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "l": "content-length", "c": "content-type",
            "m": "contact", "s": "subject", "k": "supported"}
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 405: "Method Not Allowed",
            413: "Request Entity Too Large", 415: "Unsupported Media Type", 500: "Server Internal Error"}


class StatusNumber(IntEnum):
    """The `snu` of an `<mrs>`: 0 taken, anything else refused (the device may try again or elsewhere)."""

    OK = 0
    MESSAGE_TOO_LONG = 1
    INVALID_FORMAT = 2
    WRONG_DATA_CONTENT = 3
    HOLD = 4
    NOT_TREATED = 5
    BUSY = 6
    MANDATORY_TAG_MISSING = 7


class SipError(ValueError):
    """Not a SIP request the receiver can answer (no start line, no Call-ID, …)."""


class ScaipError(ValueError):
    """An `<mrq>` the receiver refuses, with the status number to answer."""

    def __init__(self, snu: StatusNumber, detail: str) -> None:
        super().__init__(detail)
        self.snu = snu


@dataclass(slots=True)
class SipRequest:
    method: str
    uri: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # (lower-case full name, value), in order
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip().lower()


def _head_end(data: bytes | bytearray) -> tuple[int, int] | None:
    """Where the header block ends (index, separator length), CRLF CRLF or the tolerated LF LF."""
    found = [(index, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (index := data.find(sep)) >= 0]
    return min(found) if found else None


def _content_length(head: bytes) -> int:
    match = re.search(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", head, re.IGNORECASE | re.MULTILINE)
    return int(match.group(1)) if match else 0


def split_stream(buffer: bytearray) -> list[bytes]:
    """Whole SIP messages off the front of a TCP connection's buffer; the rest stays for the next segment.
    Blank lines between messages (RFC 5626 keep-alives) are dropped."""
    messages = []
    while True:
        while buffer[:2] == b"\r\n" or buffer[:1] == b"\n":
            del buffer[:2 if buffer[:2] == b"\r\n" else 1]
        end = _head_end(buffer)
        if end is None:
            return messages
        index, sep = end
        total = index + sep + _content_length(bytes(buffer[:index]))
        if len(buffer) < total:
            return messages
        messages.append(bytes(buffer[:total]))
        del buffer[:total]


def split_datagram(data: bytes) -> list[bytes]:
    """A UDP datagram holds one SIP message (or only a keep-alive)."""
    message = data.lstrip(b"\r\n")
    return [message] if message else []


def parse_request(raw: bytes) -> SipRequest:
    if len(raw) > MAX_MESSAGE:
        raise SipError(f"the message has {len(raw)} bytes, more than {MAX_MESSAGE}")
    end = _head_end(raw)
    head, body = (raw[:end[0]], raw[end[0] + end[1]:]) if end else (raw, b"")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipError("the header is not UTF-8") from exc
    lines = text.replace("\r\n", "\n").split("\n")
    start = lines[0].split(" ")
    if len(start) != 3 or start[2] != "SIP/2.0" or not start[0].isalpha():
        raise SipError(f"not a SIP request line: {lines[0][:80]!r}")
    request = SipRequest(method=start[0].upper(), uri=start[1])
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and request.headers:  # a folded continuation line
            name, value = request.headers[-1]
            request.headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise SipError(f"not a header line: {line[:80]!r}")
        key = name.strip().lower()
        request.headers.append((_COMPACT.get(key, key), value.strip()))
    for needed in ("via", "from", "to", "call-id", "cseq"):
        if request.header(needed) is None:
            raise SipError(f"no {needed} header")
    length = request.header("content-length")
    request.body = body[:int(length)] if length and length.isdigit() else body
    return request


def build_response(request: SipRequest, status: int, *, body: bytes = b"", content_type: str = CONTENT_TYPE,
                   extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A response to `request` (RFC 3261 8.2.6): its Via, From, Call-ID and CSeq, its To with our tag."""
    to = request.header("to") or ""
    if ";tag=" not in to.replace(" ", "").lower():
        # The same tag for a resent copy of the request: derived from its Call-ID and CSeq.
        tag = hashlib.sha256(f"{request.header('call-id')}|{request.header('cseq')}".encode()).hexdigest()[:12]
        to = f"{to};tag={tag}"
    lines = [f"SIP/2.0 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"Via: {via}" for via in request.all("via")]
    lines += [f"From: {request.header('from')}", f"To: {to}", f"Call-ID: {request.header('call-id')}",
              f"CSeq: {request.header('cseq')}", "Server: alarmcentre"]
    lines += [f"{name}: {value}" for name, value in extra]
    if body:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- the SCAIP body -----------------------------------------------------------------------------------


def parse_mrq(body: bytes) -> dict[str, str]:
    """The `<mrq>`'s tags (lower case) and their text; the first of a repeated tag counts."""
    if len(body) > MAX_BODY:
        raise ScaipError(StatusNumber.MESSAGE_TOO_LONG, f"the <mrq> has {len(body)} bytes, more than {MAX_BODY}")
    try:
        root = SafeElementTree.fromstring(body.strip(), forbid_dtd=True)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise ScaipError(StatusNumber.INVALID_FORMAT, f"not XML the receiver accepts: {exc}") from exc
    if _local(root.tag) != "mrq":
        raise ScaipError(StatusNumber.INVALID_FORMAT, f"the body is <{_local(root.tag)}>, not <mrq>")
    tags: dict[str, str] = {}
    for child in root:
        tags.setdefault(_local(child.tag).lower(), (child.text or "").strip())
    missing = [tag for tag in MANDATORY_TAGS if not tags.get(tag)]
    if missing:
        raise ScaipError(StatusNumber.MANDATORY_TAG_MISSING, f"no {', '.join(missing)} in the <mrq>")
    return tags


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def build_mrs(ref: str | None, snu: StatusNumber, text: str | None = None) -> bytes:
    parts = [f"<ref>{escape(ref or '')}</ref>", f"<snu>{int(snu)}</snu>"]
    if text:
        parts.append(f"<ste>{escape(text[:200])}</ste>")
    return f'<?xml version="1.0" encoding="UTF-8"?><mrs>{"".join(parts)}</mrs>'.encode()


# -- digest authentication ------------------------------------------------------------------------------

_PARAM = re.compile(r'([A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_authorization(value: str) -> dict[str, str]:
    """The parameters of an `Authorization: Digest …` header (lower-case names); {} for another scheme."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return {}
    return {match.group(1).lower(): match.group(2) if match.group(2) is not None else match.group(3)
            for match in _PARAM.finditer(rest)}


def ha1(username: str, realm: str, password: str) -> str:
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).hexdigest()  # noqa: S324 (RFC 2617's MD5)


def digest_response(ha1_hex: str, *, method: str, params: dict[str, str]) -> str:
    ha2 = hashlib.md5(f"{method}:{params.get('uri', '')}".encode()).hexdigest()  # noqa: S324
    if params.get("qop"):
        text = f"{ha1_hex}:{params.get('nonce')}:{params.get('nc')}:{params.get('cnonce')}:{params['qop']}:{ha2}"
    else:
        text = f"{ha1_hex}:{params.get('nonce')}:{ha2}"
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324


class Nonces:
    """Stateless challenges: a nonce is its issue time and a MAC of it under a key of this process, so any
    worker thread can check one and a restart only makes devices answer a fresh challenge."""

    def __init__(self, key: bytes | None = None, *, ttl_s: int = NONCE_TTL_S) -> None:
        self._key = key or secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def issue(self, now: float | None = None) -> str:
        issued = str(int(time.time() if now is None else now))
        return f"{issued}.{self._mac(issued)}"

    def fresh(self, nonce: str, now: float | None = None) -> bool | None:
        """True: ours and fresh; False: ours but expired (answer stale=true); None: not ours."""
        issued, _, mac = nonce.partition(".")
        if not issued.isdigit() or not hmac.compare_digest(mac, self._mac(issued)):
            return None
        age = (time.time() if now is None else now) - int(issued)
        return -5 <= age <= self.ttl_s

    def _mac(self, issued: str) -> str:
        return hmac.new(self._key, issued.encode(), hashlib.sha256).hexdigest()[:32]


def challenge(realm: str, nonce: str, *, stale: bool = False) -> str:
    return (f'Digest realm="{realm}", nonce="{nonce}", algorithm=MD5, qop="auth"'
            + (", stale=true" if stale else ""))
