"""The SIA DC-09 receiver's core: one frame in, its effect committed, one answer out (docs/dc09.md).

Every frame goes the way of an MQTT message: its events become the centre's own device events
(protocol v1 JSON on the device's `events` or `alarms` topic) and are committed by
`ingest.batch.process_batch`, so validation, deduplication, incidents, device state and dead
letters are the same. The answer follows the commit:

- ACK only once the frame's effect is committed;
- nothing for a bad CRC or length (the panel sends the frame again), dead-lettered;
- NAK with the receiver's time for a timestamp outside +20 s / -40 s or a failed decryption;
- DUH for a correct frame the centre cannot use (unknown account, unreadable data, refused event).

Every refused frame is a dead letter on topic `dc09/<account>`. The network side is dc09_server.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography.fernet import InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import clock, metrics
from alarmcentre.config import Settings
from alarmcentre.db import error_reason, transaction
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.incidents.models import Incident, TimelineKind
from alarmcentre.incidents.service import append_timeline
from alarmcentre.ingest.batch import process_batch
from alarmcentre.ingest.processor import InboundMessage, Outcome, Result, dead_letter
from alarmcentre.ingest.protocol import ALARM_LANE_TYPES, alarms_topic, events_topic
from alarmcentre.receivers import dc09_frame as wire
from alarmcentre.receivers.dc09_codes import NotUnderstood, Signal, signals
from alarmcentre.receivers.dedupe import retransmission_seq
from alarmcentre.tasks import service as tasks
from alarmcentre.tasks.models import TaskKind

log = logging.getLogger(__name__)

# A frame without a timestamp (allowed unencrypted) is told from a resent copy by its sequence number and
# content within this many seconds (a panel resends within its ACK timeout, seconds); the same sequence and
# content later, after the 4-digit counter wrapped, is a new event.
UNTIMED_RETRANSMISSION_S = 300
ACCOUNT_PATTERN = r"[0-9A-Fa-f]{3,16}"


class Dc09Refusal:
    """Dead-letter reasons of the receiver (besides the frame's own, dc09_frame.FrameError)."""

    BAD_HEADER = "dc09_bad_header"
    UNKNOWN_ACCOUNT = "dc09_unknown_account"
    DECRYPT_FAILED = "dc09_decrypt_failed"
    NOT_ENCRYPTED = "dc09_not_encrypted"  # plain frame for an account with a key: anyone could have sent it
    NO_KEY = "dc09_account_without_key"  # an account with no key where those are not allowed (production)
    STALE_TIMESTAMP = "dc09_stale_timestamp"
    NOT_UNDERSTOOD = "dc09_not_understood"
    EVENT_REFUSED = "dc09_event_refused"


def dead_letter_topic(account: str | None) -> str:
    return f"dc09/{account or 'unknown'}"


def encode_key(key: bytes, cipher: MultiFernet) -> str:
    return cipher.encrypt(key.hex().encode()).decode()


def decode_key(ciphertext: str, cipher: MultiFernet) -> bytes:
    return bytes.fromhex(cipher.decrypt(ciphertext.encode()).decode())


def parse_key(text: str, key_format: str = "hex") -> bytes:
    """An AES key as an installer types it: 32, 48 or 64 hexadecimal digits (`hex`, DC-09's way), or the 16,
    24 or 32 characters themselves as the key's bytes (`ascii`: Ajax hubs, pysiaalarm, Home Assistant)."""
    text = text.strip()
    if key_format == "ascii":
        key = text.encode("ascii")
    else:
        try:
            key = bytes.fromhex(text)
        except ValueError as exc:
            raise ValueError("the key is not hexadecimal (an ASCII key of 16/24/32 characters: --key-format "
                             "ascii)") from exc
    if len(key) not in wire.KEY_SIZES:
        raise ValueError(f"an AES key has 128, 192 or 256 bits; this one has {len(key) * 8}")
    return key


def set_account(session: Session, *, device: Device, account: str | None, key: bytes | None,
                cipher: MultiFernet) -> None:
    """Give a device its DC-09 account (None: none) and key (None: frames unencrypted)."""
    import re

    if account is not None:
        if not re.fullmatch(ACCOUNT_PATTERN, account):
            raise ValueError("a DC-09 account number has 3 to 16 hexadecimal digits")
        account = account.upper()
        other = session.scalar(select(Device.serial).where(Device.dc09_account == account, Device.id != device.id))
        if other is not None:
            raise ValueError(f"DC-09 account {account} belongs to device {other}")
    device.dc09_account = account
    device.dc09_key_ciphertext = encode_key(key, cipher) if key is not None and account is not None else None


@dataclass(frozen=True, slots=True)
class _Account:
    device_id: int
    serial: str
    key: bytes | None
    key_error: str | None = None


class Dc09Receiver:
    """Frames in, answers out; blocking (the server calls it from a worker thread). Thread-safe."""

    def __init__(self, session_factory: sessionmaker[Session], *, settings: Settings,
                 cipher: Callable[[], MultiFernet]) -> None:
        self._factory = session_factory
        self._settings = settings
        self._cipher = cipher

    def handle(self, raw: bytes, *, transport: str = "tcp") -> bytes | None:
        """Answer one frame (None: no answer) after committing what it says."""
        metrics.DC09_FRAMES_RECEIVED.labels(transport).inc()
        now = clock.now()
        try:
            answer, outcome = self._handle(raw, now)
        except DBAPIError as exc:
            # Nothing committed: no answer, and the panel sends the frame again (or tries its backup path).
            log.error("dc09: cannot commit a frame (%s); not answered, the panel will send it again",
                      error_reason(exc))
            answer, outcome = None, ("none", "database")
        metrics.DC09_ANSWERS.labels(*outcome).inc()
        return answer

    def _handle(self, raw: bytes, now: datetime) -> tuple[bytes | None, tuple[str, str]]:
        try:
            frame = wire.parse_frame(raw, header_error=False)
        except wire.FrameRefused as exc:
            self._refuse(raw, exc.account, None, exc.reason, exc.detail, now)
            return None, ("none", exc.reason)  # never answered: not even the sequence number can be trusted
        if frame is None:  # CRC and length right, the rest not DC-09
            self._refuse(raw, None, None, Dc09Refusal.BAD_HEADER,
                         "no ID token, sequence number and #account before '['", now)
            return wire.duh_unknown(), ("duh", Dc09Refusal.BAD_HEADER)
        account = self._account(frame.account)
        if account is None:
            self._refuse(raw, frame.account, None, Dc09Refusal.UNKNOWN_ACCOUNT,
                         f"no device has DC-09 account {frame.account}", now)
            return wire.duh(frame), ("duh", Dc09Refusal.UNKNOWN_ACCOUNT)
        if account.key is None and account.key_error is None and not self._settings.dc09_unencrypted_allowed:
            self._refuse(raw, frame.account, account.serial, Dc09Refusal.NO_KEY,
                         "the account has no AES key, and unencrypted accounts are not allowed here "
                         "(give it one: alarmcentre devices dc09 SERIAL --account ... --key-file ...)", now)
            return wire.duh(frame), ("duh", Dc09Refusal.NO_KEY)
        if account.key is not None and not frame.encrypted:
            self._refuse(raw, frame.account, account.serial, Dc09Refusal.NOT_ENCRYPTED,
                         "the account has a key, the frame was not encrypted", now)
            return wire.duh(frame), ("duh", Dc09Refusal.NOT_ENCRYPTED)
        if account.key_error is not None:
            self._refuse(raw, frame.account, account.serial, Dc09Refusal.DECRYPT_FAILED, account.key_error, now)
            return wire.nak(now), ("nak", Dc09Refusal.DECRYPT_FAILED)
        try:
            body = wire.read_body(frame, account.key)
        except wire.DecryptionFailed as exc:
            self._refuse(raw, frame.account, account.serial, Dc09Refusal.DECRYPT_FAILED, str(exc), now)
            return wire.nak(now), ("nak", Dc09Refusal.DECRYPT_FAILED)
        except ValueError as exc:
            self._refuse(raw, frame.account, account.serial, Dc09Refusal.NOT_UNDERSTOOD, str(exc), now)
            return wire.duh(frame), ("duh", Dc09Refusal.NOT_UNDERSTOOD)
        if not wire.timestamp_ok(body.timestamp, now):
            assert body.timestamp is not None
            self._refuse(raw, frame.account, account.serial, Dc09Refusal.STALE_TIMESTAMP,
                         f"frame time {body.timestamp.isoformat()}, receiver time {now.isoformat()} "
                         f"(window +{wire.MAX_AHEAD.seconds} s / -{wire.MAX_BEHIND.seconds} s)", now)
            return wire.nak(now), ("nak", Dc09Refusal.STALE_TIMESTAMP)
        try:
            found = signals(frame.message_id, body.data)
        except NotUnderstood as exc:
            self._refuse(raw, frame.account, account.serial, Dc09Refusal.NOT_UNDERSTOOD, str(exc), now)
            return wire.duh(frame), ("duh", Dc09Refusal.NOT_UNDERSTOOD)
        results = self._commit(frame, body, account, found, raw, now)
        refused = [result for result in results if result.outcome is Outcome.REJECTED]
        if refused:
            return wire.duh(frame), ("duh", Dc09Refusal.EVENT_REFUSED)
        return wire.ack(frame, account.key, now), ("ack", "ok")

    def _account(self, number: str) -> _Account | None:
        with self._factory() as session:
            row = session.execute(select(Device.id, Device.serial, Device.dc09_key_ciphertext)
                                  .where(Device.dc09_account == number)).one_or_none()
        if row is None:
            return None
        if not row.dc09_key_ciphertext:
            return _Account(row.id, row.serial, None)
        try:
            return _Account(row.id, row.serial, decode_key(row.dc09_key_ciphertext, self._cipher()))
        except (InvalidToken, ValueError):
            log.error("dc09: the key of account %s cannot be read with the access key", number)
            # Every frame of the account is then refused, visibly (NAK and a dead letter), never taken unchecked.
            return _Account(row.id, row.serial, b"", key_error="the account's key cannot be read with the "
                            "centre's access key (set it again: alarmcentre devices dc09)")

    def _commit(self, frame: wire.Frame, body: wire.Body, account: _Account, found: list[Signal], raw: bytes,
                now: datetime) -> list[Result]:
        occurred = body.timestamp or now
        with transaction(self._factory, writes=True) as session:
            messages = []
            for index, signal in enumerate(found):
                event_type = signal.mapping.type if signal.mapping else "heartbeat"
                fields = dict(signal.mapping.fields) if signal.mapping else {}
                seq = self._seq(session, account, frame, body, index, now)
                payload = {"seq": seq, "ts": occurred.isoformat(), "type": str(event_type), **fields}
                topic = (alarms_topic if event_type in ALARM_LANE_TYPES else events_topic)(account.serial)
                messages.append(InboundMessage(topic, json.dumps(payload).encode(), now))
            results = process_batch(session, messages, settings=self._settings)
            for message, signal, result in zip(messages, found, results, strict=True):
                if result.outcome is Outcome.ACCEPTED:
                    self._annotate(session, account, frame, signal, json.loads(message.payload)["seq"], result, now)
                elif result.outcome is Outcome.REJECTED:
                    # process_batch dead-lettered the JSON event; keep the frame itself beside it
                    self._dead_letter(session, raw, frame.account, account.serial, Dc09Refusal.EVENT_REFUSED,
                                      f"{signal.code}: the event was refused ({result.reason})", now)
        for result in results:
            if result.incident_opened is not None:
                metrics.INCIDENTS_RAISED.labels(result.kind).inc()
                log.info("dc09: incident %d opened (%s, account %s)", result.incident_opened, result.kind,
                         frame.account)
        return results

    @staticmethod
    def _seq(session: Session, account: _Account, frame: wire.Frame, body: wire.Body, index: int,
             now: datetime) -> int:
        """The event's `seq`: a resent frame (same sequence number, content and timestamp) is a duplicate and a
        new one never is, even after the 4-digit sequence number wrapped: the timestamp (kept within 40 s of
        now) differs; a frame without one counts as resent only within UNTIMED_RETRANSMISSION_S."""
        return retransmission_seq(
            session, device_id=account.device_id, now=now, timestamp=body.timestamp,
            window_s=UNTIMED_RETRANSMISSION_S,
            parts=("dc09", frame.account, frame.message_id, frame.sequence, body.data, str(index)))

    def _annotate(self, session: Session, account: _Account, frame: wire.Frame, signal: Signal, seq: int,
                  result: Result, now: datetime) -> None:
        """What the panel said, in its own codes: on the event, on the incident, in a task when unmapped."""
        info = {"account": frame.account, "message": frame.message_id, "sequence": frame.sequence,
                "encrypted": frame.encrypted, **signal.details()}
        row = session.scalar(select(DeviceEvent).where(DeviceEvent.device_id == account.device_id,
                                                       DeviceEvent.seq == seq))
        if row is not None:
            row.details = {**(row.details or {}), "dc09": info}
        if result.incident_id is not None:
            incident = session.get(Incident, result.incident_id)
            if incident is not None:
                zone = f", zone {signal.zone}" if signal.zone else ""
                append_timeline(session, incident, kind=TimelineKind.NOTE, actor=f"dc09:{frame.account}",
                                details={"text": f"DC-09 {signal.code}: {signal.description}{zone}", "dc09": info},
                                at=now)
        if signal.mapping is None:
            device = session.get(Device, account.device_id)
            key = f"{TaskKind.DC09_UNMAPPED_CODE.value}:device:{account.device_id}:{signal.code}"[:64]
            task = tasks.open_task(session, kind=TaskKind.DC09_UNMAPPED_CODE, due_at=now,
                                   client_id=device.client_id if device else None, device_id=account.device_id,
                                   key=key, details={"dc09": info, "serial": account.serial,
                                                     "text": f"the panel sent {signal.code}, which the centre "
                                                             "does not know: find out what it means"})
            if task is not None:
                metrics.TASKS_OPENED.labels(TaskKind.DC09_UNMAPPED_CODE.value).inc()
            log.warning("dc09: account %s sent the unmapped code %s", frame.account, signal.code)

    def _refuse(self, raw: bytes, account: str | None, serial: str | None, reason: str, detail: str,
                now: datetime) -> None:
        log.warning("dc09: refused a frame of account %s: %s (%s)", account or "?", reason, detail[:200])
        with transaction(self._factory, writes=True) as session:
            self._dead_letter(session, raw, account, serial, reason, detail, now)

    @staticmethod
    def _dead_letter(session: Session, raw: bytes, account: str | None, serial: str | None, reason: str,
                     detail: str, now: datetime) -> None:
        dead_letter(session, message=InboundMessage(dead_letter_topic(account), raw, now), reason=reason[:32],
                    detail=detail, device_serial=serial)
