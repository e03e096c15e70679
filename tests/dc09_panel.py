"""A DC-09 panel for the tests, built on pysiaalarm's own primitives (its CRC, and pycryptodome's AES that it
uses), not on alarmcentre's codec: the receiver is checked against an independent implementation."""

from __future__ import annotations

import secrets
import socket
import string
from datetime import UTC, datetime

from Crypto.Cipher import AES
from pysiaalarm import SIAEvent

IV = bytes(16)


def sia_crc(message: str) -> str:
    return SIAEvent._crc_calc(message)  # pysiaalarm's CRC-16 (4 hex digits, upper case)


def timestamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("_%H:%M:%S,%m-%d-%Y")


def encrypt(key: bytes, text: str) -> str:
    pad = "".join(secrets.choice(string.ascii_letters) for _ in range(16 - len(text) % 16))
    return AES.new(key, AES.MODE_CBC, IV).encrypt((pad + text).encode()).hex().upper()


def decrypt(key: bytes, hex_text: str) -> str:
    return AES.new(key, AES.MODE_CBC, IV).decrypt(bytes.fromhex(hex_text)).decode("ascii")


def frame(message_id: str, seq: int, account: str, data: str, *, key: bytes | None = None,
          at: datetime | None = None, prefixes: str = "R0L0", bad_crc: bool = False, ending: bytes = b"\r",
          start: bytes = b"\n") -> bytes:
    """<LF>CRC LLLL "ID"SEQ R L #ACCT[DATA]_TIMESTAMP<CR>, as DC-09-2013 5.5.1 writes it."""
    stamp = timestamp(at) if at is not None else ""
    head = f'"{"*" if key else ""}{message_id}"{seq:04d}{prefixes}#{account}['
    message = head + (encrypt(key, f"|{data}]{stamp}") if key else f"{data}]{stamp}")
    crc = sia_crc(message)
    if bad_crc:
        crc = f"{(int(crc, 16) ^ 0x0101):04X}"
    return start + f"{crc}{len(message):04X}{message}".encode() + ending


class Answer:
    """A receiver's answer, checked with pysiaalarm's CRC."""

    def __init__(self, raw: bytes) -> None:
        text = raw.decode("ascii").strip("\r\n")
        self.raw = raw
        self.crc, self.length, self.message = text[:4], text[4:8], text[8:]
        assert sia_crc(self.message) == self.crc, f"bad CRC in the answer {raw!r}"
        assert int(self.length, 16) == len(self.message), f"bad length in the answer {raw!r}"
        self.kind = self.message.split('"')[1]  # ACK, *ACK, NAK, DUH

    def receiver_time(self, key: bytes | None = None) -> datetime:
        body = self.message.split("[", 1)[1]
        if key is not None:
            body = decrypt(key, body)
        stamp = body.rsplit("_", 1)[1]
        return datetime.strptime(stamp, "%H:%M:%S,%m-%d-%Y").replace(tzinfo=UTC)


class Connection:
    """A panel's TCP connection to the receiver; answers are read one at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, timeout: float = 10.0) -> Answer | None:
        self.sock.settimeout(timeout)
        try:
            while b"\r" not in self._buffer:
                chunk = self.sock.recv(1024)
                if not chunk:
                    return None
                self._buffer += chunk
        except TimeoutError:
            return None
        one, _, self._buffer = self._buffer.partition(b"\r")
        return Answer(one + b"\r")

    def close(self) -> None:
        self.sock.close()


def udp_exchange(port: int, data: bytes, timeout: float = 10.0) -> Answer | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return Answer(sock.recv(1024))
        except TimeoutError:
            return None
