"""SIA DC-09 frames: split a byte stream into frames, check and parse them, build the answers.

Pure code (no sockets, no database). A frame on the wire (ANSI/SIA DC-09-2013, 5.5):

    <LF> CRC(4 hex) 0LLL(4 hex) "ID" SEQ(4 digits) [Rrcvr] [Lpref] #ACCT [ DATA ] [x-data] _HH:MM:SS,MM-DD-YYYY <CR>

CRC (CRC-16/ARC, polynomial 0xA001 reflected) and length cover everything from the first `"` up to
the CR. An encrypted frame ("*SIA-DCS", "*ADM-CID", "*NULL") carries, after the `[`, hexadecimal
AES-CBC ciphertext (zero IV, key of 128, 192 or 256 bits) of `pad|DATA]x-data_timestamp`; its
timestamp is mandatory.

Tolerance where panels differ and the standard leaves room: R and L prefixes are optional; a
timestamp on an unencrypted frame is optional; frames may end in CR, LF or CRLF and begin with or
without LF; several frames may come in one TCP segment or one frame in several; the padding of an
encrypted body may be any characters but `|`, `[` and `]` and need not be followed by `|` (an empty
NULL message); the length field's first digit may be anything (DC-09 reserves it as 0).
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MAX_FRAME = 1024  # bytes between LF and CR; a DC-09 frame is at most a few hundred
TIMESTAMP_FORMAT = "%H:%M:%S,%m-%d-%Y"
# A frame's timestamp must lie within this window around the receiver's clock (DC-09 5.5.1.8).
MAX_AHEAD = timedelta(seconds=20)
MAX_BEHIND = timedelta(seconds=40)
KEY_SIZES = (16, 24, 32)
_IV = bytes(16)
_PAD_ALPHABET = string.ascii_uppercase + string.digits

# "ID"SEQ then optional Rrcvr and Lpref, then #account, then [ (the rest is the body).
_HEADER_RE = re.compile(
    r'^"(?P<enc>\*?)(?P<id>[A-Z][A-Z-]{1,15})"(?P<seq>\d{4})(?P<receiver>R[0-9A-Fa-f]{1,6})?'
    r"(?P<line>L[0-9A-Fa-f]{1,6})?#(?P<account>[0-9A-Fa-f]{3,16})\[(?P<body>.*)$", re.S)
_TIMESTAMP_RE = re.compile(r"_(\d{2}:\d{2}:\d{2},\d{2}-\d{2}-\d{4})$")
MESSAGE_TYPES = ("SIA-DCS", "ADM-CID", "NULL")


class FrameError(StrEnum):
    """Why a frame was refused before anything in it was understood; each is a dead-letter reason."""

    BAD_FRAME = "dc09_bad_frame"  # not a DC-09 frame at all (no CRC/length/ID/account where they belong)
    BAD_CRC = "dc09_bad_crc"
    BAD_LENGTH = "dc09_bad_length"
    TOO_LONG = "dc09_too_long"


class FrameRefused(Exception):
    def __init__(self, reason: FrameError, detail: str, account: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.account = account


class DecryptionFailed(Exception):
    """The ciphertext did not decrypt to a DC-09 body with the account's key: wrong key, or corrupted."""


def crc16(data: bytes) -> int:
    """CRC-16/ARC (polynomial 0x8005 reflected, initial 0), DC-09's CRC."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame whose CRC and length were right; the body is still encrypted when `encrypted`."""

    raw: bytes  # as received, without the LF and CR around it
    message_id: str  # "SIA-DCS", "ADM-CID", "NULL" or anything else a panel sent
    encrypted: bool
    sequence: str  # 4 digits, echoed in the answer
    receiver: str | None  # "R…" as sent, or None
    line: str | None  # "L…" as sent, or None
    account: str  # upper case
    body: str  # after the first "[": data]x-data_timestamp, or hex ciphertext


@dataclass(frozen=True, slots=True)
class Body:
    """The decrypted (or plain) content of a frame."""

    data: str  # between "[" (after the padding and "|" when encrypted) and "]", e.g. "#1234|Nri1/MA1"
    extended: list[str] = field(default_factory=list)  # x-data blocks, without their brackets
    timestamp: datetime | None = None  # UTC


def split_frames(buffer: bytearray) -> list[bytes]:
    """Take the complete frames out of `buffer` (a TCP connection's unread bytes), leaving any incomplete
    tail in it. A frame ends at CR or LF; empty lines between frames are skipped."""
    frames: list[bytes] = []
    start = 0
    for index, byte in enumerate(buffer):
        if byte in (0x0A, 0x0D):
            chunk = bytes(buffer[start:index]).strip()
            if chunk:
                frames.append(chunk)
            start = index + 1
    del buffer[:start]
    return frames


def parse_frame(raw: bytes, *, header_error: bool = True) -> Frame | None:
    """Check CRC and length and read the header; raises FrameRefused. A frame with the right CRC and length
    whose header is not DC-09 raises too, or returns None with `header_error=False` (it is answered DUH)."""
    raw = raw.strip(b"\r\n\x00 ")
    if len(raw) > MAX_FRAME:
        raise FrameRefused(FrameError.TOO_LONG, f"{len(raw)} bytes > {MAX_FRAME}")
    quote = raw.find(b'"')
    if quote < 8 or not re.fullmatch(rb"[0-9A-Fa-f]{8}", raw[quote - 8:quote]):
        raise FrameRefused(FrameError.BAD_FRAME, "no CRC and length before the ID token")
    message = raw[quote:]
    sent_crc, sent_length = int(raw[quote - 8:quote - 4], 16), int(raw[quote - 3:quote], 16)
    try:
        text = message.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    match = _HEADER_RE.match(text)
    account = match.group("account").upper() if match else None
    if crc16(message) != sent_crc:
        raise FrameRefused(FrameError.BAD_CRC, f"CRC {raw[quote - 8:quote - 4].decode()} sent, "
                           f"{crc16(message):04X} computed", account)
    if len(message) != sent_length:
        raise FrameRefused(FrameError.BAD_LENGTH, f"length {sent_length} sent, {len(message)} received", account)
    if match is None:
        if not header_error:
            return None
        raise FrameRefused(FrameError.BAD_FRAME, "no ID token, sequence number and #account before '['")
    return Frame(raw=raw, message_id=match.group("id"), encrypted=bool(match.group("enc")),
                 sequence=match.group("seq"), receiver=match.group("receiver"), line=match.group("line"),
                 account=account or "", body=match.group("body"))


def read_body(frame: Frame, key: bytes | None) -> Body:
    """The frame's content: decrypted with `key` when the frame is encrypted (raises DecryptionFailed),
    else as sent. Raises ValueError for a body that is not DC-09 (a missing "]")."""
    if frame.encrypted:
        if key is None:
            raise DecryptionFailed("an encrypted frame for an account without a key")
        text = decrypt(frame.body, key)
        head, bracket, tail = text.partition("]")
        if not bracket:
            raise DecryptionFailed("no ']' in the decrypted body")
        # Padding first: anything but | [ ]; a "|" ends it. A NULL message may have padding alone.
        _, bar, data = head.partition("|")
        if not bar:
            if frame.message_id != "NULL":
                raise DecryptionFailed("no '|' after the padding of the decrypted body")
            data = ""
        body = _read_tail(data, tail)
        if body.timestamp is None:
            raise DecryptionFailed("no timestamp in the decrypted body (required when encrypted)")
        return body
    data, bracket, tail = frame.body.partition("]")
    if not bracket:
        raise ValueError("no ']' closing the data")
    return _read_tail(data, tail)


def _read_tail(data: str, tail: str) -> Body:
    extended: list[str] = []
    while tail.startswith("["):
        block, bracket, tail = tail[1:].partition("]")
        if not bracket:
            raise ValueError("an extended-data block without ']'")
        extended.append(block)
    timestamp = None
    if tail:
        match = _TIMESTAMP_RE.fullmatch(tail)
        if match is None:
            raise ValueError(f"{tail[:40]!r} after the data is not a timestamp _HH:MM:SS,MM-DD-YYYY")
        try:
            timestamp = datetime.strptime(match.group(1), TIMESTAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError as exc:
            raise ValueError(f"timestamp {match.group(1)!r}: {exc}") from exc
    return Body(data=data, extended=extended, timestamp=timestamp)


def timestamp_ok(timestamp: datetime | None, now: datetime) -> bool:
    return timestamp is None or now - MAX_BEHIND <= timestamp <= now + MAX_AHEAD


def _cipher(key: bytes) -> Cipher[modes.CBC]:
    if len(key) not in KEY_SIZES:
        raise ValueError(f"an AES key has 16, 24 or 32 bytes, not {len(key)}")
    return Cipher(algorithms.AES(key), modes.CBC(_IV))


def decrypt(hex_text: str, key: bytes) -> str:
    try:
        ciphertext = bytes.fromhex(hex_text)
    except ValueError as exc:
        raise DecryptionFailed("the encrypted body is not hexadecimal") from exc
    if not ciphertext or len(ciphertext) % 16:
        raise DecryptionFailed(f"{len(ciphertext)} bytes of ciphertext, not a multiple of 16")
    decryptor = _cipher(key).decryptor()
    plain = decryptor.update(ciphertext) + decryptor.finalize()
    try:
        text = plain.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DecryptionFailed("the decrypted body is not ASCII") from exc
    if not text.isprintable():
        raise DecryptionFailed("the decrypted body has control characters")
    return text


def encrypt(text: str, key: bytes) -> str:
    """Random padding in front up to a whole block (at least one character), then AES-CBC; hex, upper case."""
    pad = 16 - len(text) % 16
    plain = ("".join(secrets.choice(_PAD_ALPHABET) for _ in range(pad)) + text).encode("ascii")
    encryptor = _cipher(key).encryptor()
    return (encryptor.update(plain) + encryptor.finalize()).hex().upper()


def wire(message: str) -> bytes:
    """LF, CRC, length, message, CR."""
    data = message.encode("ascii")
    return b"\n" + f"{crc16(data):04X}{len(data):04X}".encode() + data + b"\r"


def format_timestamp(at: datetime) -> str:
    return "_" + at.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def _prefixes(frame: Frame) -> str:
    return f"{frame.receiver or ''}{frame.line or ''}"


def ack(frame: Frame, key: bytes | None, now: datetime) -> bytes:
    """ACK, encrypted (with the receiver's time) when the frame was encrypted (DC-09 5.5.3.1)."""
    head = f'"{"*" if frame.encrypted else ""}ACK"{frame.sequence}{_prefixes(frame)}#{frame.account}['
    if frame.encrypted and key is not None:
        return wire(head + encrypt("]" + format_timestamp(now), key))
    return wire(head + "]")


def nak(now: datetime) -> bytes:
    """NAK with the receiver's own time, never encrypted (DC-09 5.5.3.2), so the panel can set its clock."""
    return wire('"NAK"0000R0L0A0[]' + format_timestamp(now))


def duh_unknown() -> bytes:
    """DUH to a frame whose sequence number and account could not be read."""
    return wire('"DUH"0000R0L0A0[]')


def duh(frame: Frame) -> bytes:
    """DUH: received correctly, not understood (DC-09 5.5.3.3)."""
    return wire(f'"DUH"{frame.sequence}{_prefixes(frame)}#{frame.account}[]')


def build_frame(message_id: str, sequence: int, account: str, data: str, *, key: bytes | None = None,
                timestamp: datetime | None = None, receiver: str | None = "R0", line: str | None = "L0") -> bytes:
    """A panel's frame (the simulator's, the benchmark's). Encrypted frames always carry a timestamp."""
    stamp = format_timestamp(timestamp) if timestamp is not None else ""
    head = f'"{"*" if key else ""}{message_id}"{sequence % 10000:04d}{receiver or ""}{line or ""}#{account}['
    if key is not None:
        stamp = stamp or format_timestamp(datetime.now(UTC))
        return wire(head + encrypt(f"|{data}]{stamp}", key))
    return wire(f"{head}{data}]{stamp}")
