"""A simulated SIA DC-09 alarm panel (docs/dc09.md): SIA DCS frames over TCP or UDP, optionally AES-encrypted.

Like a panel, it waits for the receiver's answer and sends the same frame again when none comes (three
tries, `ANSWER_TIMEOUT_S` apart); an ACK ends it, a NAK or DUH is reported. The frame codec is the
receiver's own (`alarmcentre.receivers.dc09_frame`); the tests check that codec against pysiaalarm.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from alarmcentre.receivers.dc09_frame import build_frame

# What a tester asks for -> (DC-09 message id, SIA DCS event of the data).
EVENTS: dict[str, tuple[str, str | None]] = {
    "alarm": ("SIA-DCS", "Nri1/MA1"),  # medical alarm, zone 1
    "cancel": ("SIA-DCS", "Nri1/OC1"),
    "link-test": ("NULL", None),
    "periodic-test": ("SIA-DCS", "Nri0/RP"),
    "low-battery": ("SIA-DCS", "Nri0/YT"),
    "mains-lost": ("SIA-DCS", "Nri0/AT"),
    "mains-back": ("SIA-DCS", "Nri0/AR"),
}
ANSWER_TIMEOUT_S = 5.0
TRIES = 3


@dataclass(frozen=True, slots=True)
class PanelAnswer:
    kind: str | None  # ACK, *ACK, NAK, *NAK, DUH; None: nothing came
    text: str
    sends: int

    @property
    def taken(self) -> bool:
        return self.kind in ("ACK", "*ACK")


@dataclass
class Dc09Panel:
    host: str
    port: int
    account: str
    key: bytes | None = None
    transport: str = "tcp"
    sequence: int = 0

    def send(self, event: str) -> PanelAnswer:
        message_id, code = EVENTS[event]
        self.sequence = self.sequence % 9999 + 1
        data = f"#{self.account}|{code}" if code else ""
        frame = build_frame(message_id, self.sequence, self.account, data, key=self.key,
                            timestamp=datetime.now(UTC))
        sends = 0
        for _ in range(TRIES):  # the same frame again, as a panel does when no answer came
            sends += 1
            raw = self._exchange(frame)
            if raw:
                text = raw.decode("ascii", "replace").strip()
                kind = text[9:].split('"', 1)[0] if text[8:9] == '"' else None
                return PanelAnswer(kind, text, sends)
        return PanelAnswer(None, "", sends)

    def _exchange(self, frame: bytes) -> bytes | None:
        kind = socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.settimeout(ANSWER_TIMEOUT_S)
            try:
                if self.transport == "tcp":
                    sock.connect((self.host, self.port))
                    sock.sendall(frame)
                    return sock.recv(4096)
                sock.sendto(frame, (self.host, self.port))
                return sock.recvfrom(4096)[0]
            except OSError:
                return None
