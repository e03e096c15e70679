"""A simulated SCAIP social alarm (docs/scaip.md): SIP MESSAGEs with an `<mrq>`, over UDP or TCP.

It behaves as a unit does on the wire: it answers the receiver's digest challenge with its password, and over
UDP it sends an unanswered request again on SIP's schedule (RFC 3261 timer E: after 0.5 s, doubling up to
4 s, for 32 s in all), so a tester sees what a real unit does while the centre cannot commit.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import time
from dataclasses import dataclass, field

# What a tester asks for -> (mty, stc) of the <mrq>.
MESSAGES: dict[str, tuple[str, str | None]] = {
    "alarm": ("ME", "0010"),
    "cancel": ("RE", None),
    "heartbeat": ("PI", None),
    "info": ("IN", "0000"),
}
T1_S, T2_S, TRANSACTION_S = 0.5, 4.0, 32.0


class ScaipError(Exception):
    """The receiver could not be reached, or answered something a unit cannot use."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int  # the SIP status
    snu: int | None  # the <mrs> status number (0: taken), None without an <mrs>
    ref: str | None
    text: str | None
    sends: int  # how many times the request went out (retransmissions over UDP)

    @property
    def taken(self) -> bool:
        return self.status == 200 and self.snu == 0


def mrq(*, ref: str, cid: str, kind: str, stc: str | None = None, device_type: str = "0001",
        callback: str | None = None) -> str:
    mty, default_stc = MESSAGES[kind]
    tags = [f"<ref>{ref}</ref>", f"<cid>{cid}</cid>", f"<dty>{device_type}</dty>", f"<mty>{mty}</mty>"]
    if stc or default_stc:
        tags.append(f"<stc>{stc or default_stc}</stc>")
    if callback:
        tags.append(f"<crd>{callback}</crd>")
    return f"<mrq>{''.join(tags)}</mrq>"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 (SIP digest is MD5)


@dataclass
class ScaipUnit:
    host: str
    port: int
    cid: str
    password: str | None = None
    transport: str = "udp"
    cseq: int = 0
    call_id: str = field(default_factory=lambda: secrets.token_hex(12))
    _nonce_count: int = 0
    _tcp: socket.socket | None = None

    @property
    def uri(self) -> str:
        return f"sip:alarm@{self.host}:{self.port}"

    def send(self, body: str) -> Answer:
        """One MESSAGE, answering one digest challenge; raises ScaipError when nothing answers."""
        answer, sends = self._transaction(self._request(body))
        if answer.status == 401 and self.password:
            challenge = dict(re.findall(r'(\w+)="?([^",]*)"?', answer.headers.get("www-authenticate", "")))
            answer, more = self._transaction(self._request(body, self._authorization(challenge)))
            sends += more
        return Answer(answer.status, _int(answer.tag("snu")), answer.tag("ref"), answer.tag("ste"), sends)

    def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None

    def _request(self, body: str, authorization: str | None = None) -> bytes:
        self.cseq += 1
        data = body.encode()
        lines = [f"MESSAGE {self.uri} SIP/2.0",
                 f"Via: SIP/2.0/{self.transport.upper()} 127.0.0.1;branch=z9hG4bK{secrets.token_hex(6)};rport",
                 "Max-Forwards: 70", f"From: <sip:{self.cid}@{self.host}>;tag={secrets.token_hex(4)}",
                 f"To: <{self.uri}>", f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} MESSAGE"]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        lines += ["Content-Type: application/scaip+xml", f"Content-Length: {len(data)}"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + data

    def _authorization(self, challenge: dict[str, str]) -> str:
        self._nonce_count += 1
        nc, cnonce = f"{self._nonce_count:08x}", secrets.token_hex(8)
        ha1 = _md5(f"{self.cid}:{challenge.get('realm', '')}:{self.password}")
        ha2 = _md5(f"MESSAGE:{self.uri}")
        response = _md5(f"{ha1}:{challenge.get('nonce', '')}:{nc}:{cnonce}:auth:{ha2}")
        return (f'Digest username="{self.cid}", realm="{challenge.get("realm", "")}", '
                f'nonce="{challenge.get("nonce", "")}", uri="{self.uri}", response="{response}", algorithm=MD5, '
                f'qop=auth, nc={nc}, cnonce="{cnonce}"')

    def _transaction(self, request: bytes) -> tuple[_Response, int]:
        return self._over_tcp(request) if self.transport == "tcp" else self._over_udp(request)

    def _over_udp(self, request: bytes) -> tuple[_Response, int]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            deadline, wait, sends = time.monotonic() + TRANSACTION_S, T1_S, 0
            while time.monotonic() < deadline:
                sock.sendto(request, (self.host, self.port))
                sends += 1
                sock.settimeout(min(wait, max(deadline - time.monotonic(), 0.01)))
                try:
                    data, _ = sock.recvfrom(65535)
                    return _Response.parse(data), sends
                except (TimeoutError, ConnectionRefusedError):
                    wait = min(wait * 2, T2_S)
        raise ScaipError(f"no answer from {self.host}:{self.port} within {TRANSACTION_S:.0f} s ({sends} sends)")

    def _over_tcp(self, request: bytes) -> tuple[_Response, int]:
        try:
            if self._tcp is None:
                self._tcp = socket.create_connection((self.host, self.port), timeout=TRANSACTION_S)
            self._tcp.sendall(request)
            buffer = b""
            while True:
                head, sep, rest = buffer.partition(b"\r\n\r\n")
                if sep:
                    match = re.search(rb"Content-Length:\s*(\d+)", head, re.IGNORECASE)
                    length = int(match.group(1)) if match else 0
                    if len(rest) >= length:
                        return _Response.parse(head + sep + rest[:length]), 1
                chunk = self._tcp.recv(65535)
                if not chunk:
                    raise ScaipError("the receiver closed the connection")
                buffer += chunk
        except OSError as exc:
            self.close()
            raise ScaipError(f"no answer from {self.host}:{self.port} over TCP: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def parse(cls, raw: bytes) -> _Response:
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        try:
            status = int(lines[0].split(" ")[1])
        except (IndexError, ValueError) as exc:
            raise ScaipError(f"not a SIP response: {lines[0][:80]!r}") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        return cls(status, headers, body)

    def tag(self, name: str) -> str | None:
        match = re.search(rf"<{name}>(.*?)</{name}>".encode(), self.body, re.DOTALL)
        return match.group(1).decode("utf-8", "replace") if match else None


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None
