"""A SCAIP device for the tests, written from RFC 3261 (SIP), RFC 3428 (MESSAGE) and RFC 2617 (digest) alone:
it uses nothing of alarmcentre's SCAIP code, so the receiver is checked against an independent sender."""

from __future__ import annotations

import hashlib
import re
import socket
import uuid
from dataclasses import dataclass, field


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def tag(self, name: str) -> str | None:
        match = re.search(rf"<{name}>(.*?)</{name}>".encode(), self.body, re.DOTALL)
        return match.group(1).decode() if match else None


def parse_response(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return Response(status, headers, body)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@dataclass
class Device:
    """One SCAIP unit: builds MESSAGE requests and answers a digest challenge."""

    port: int
    cid: str
    password: str | None = None
    host: str = "127.0.0.1"
    cseq: int = 0
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    nonce_count: int = 0

    def message(self, body: str, *, authorization: str | None = None, method: str = "MESSAGE",
                content_type: str = "application/scaip+xml", bare_lf: bool = False) -> bytes:
        self.cseq += 1
        uri = f"sip:alarm@{self.host}:{self.port}"
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{uuid.uuid4().hex[:10]};rport",
                 "Max-Forwards: 70",
                 f"From: <sip:{self.cid}@127.0.0.1>;tag={self.cseq}abc",
                 f"To: <{uri}>",
                 f"Call-ID: {self.call_id}",
                 f"CSeq: {self.cseq} {method}"]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        data = body.encode()
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(data)}"]
        end = "\n" if bare_lf else "\r\n"
        return (end.join(lines) + end + end).encode() + data

    def authorization(self, challenge: str, *, method: str = "MESSAGE", password: str | None = None) -> str:
        params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
        self.nonce_count += 1
        nc, cnonce = f"{self.nonce_count:08x}", uuid.uuid4().hex[:16]
        uri = f"sip:alarm@{self.host}:{self.port}"
        ha1 = md5(f"{self.cid}:{params['realm']}:{password or self.password}")
        ha2 = md5(f"{method}:{uri}")
        response = md5(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
        return (f'Digest username="{self.cid}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
                f'uri="{uri}", response="{response}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"')

    def udp(self, raw: bytes, timeout: float = 5.0) -> Response | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(raw, (self.host, self.port))
            try:
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                return None
        return parse_response(data)

    def send(self, body: str, timeout: float = 5.0) -> Response | None:
        """One MESSAGE over UDP, answering a digest challenge once when the device has a password."""
        answer = self.udp(self.message(body), timeout)
        if answer is not None and answer.status == 401 and self.password:
            answer = self.udp(self.message(body, authorization=self.authorization(
                answer.headers["www-authenticate"])), timeout)
        return answer


def mrq(ref: str, cid: str, *, mty: str | None = "ME", stc: str | None = "0010", dty: str = "0004",
        crd: str | None = None) -> str:
    tags = [f"<ref>{ref}</ref>", f"<cid>{cid}</cid>", f"<dty>{dty}</dty>"]
    if mty is not None:
        tags.append(f"<mty>{mty}</mty>")
    if stc is not None:
        tags.append(f"<stc>{stc}</stc>")
    if crd is not None:
        tags.append(f"<crd>{crd}</crd>")
    return f"<mrq>{''.join(tags)}</mrq>"


def read_tcp_responses(sock: socket.socket, count: int, timeout: float = 5.0) -> list[Response]:
    sock.settimeout(timeout)
    buffer = b""
    responses = []
    while len(responses) < count:
        while b"\r\n\r\n" in buffer:
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            if len(rest) < length:
                break
            responses.append(parse_response(head + b"\r\n\r\n" + rest[:length]))
            buffer = rest[length:]
        if len(responses) >= count:
            break
        chunk = sock.recv(65535)
        if not chunk:
            break
        buffer += chunk
    return responses
