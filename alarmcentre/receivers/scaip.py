"""The SCAIP receiver's core: one SIP MESSAGE in, its effect committed, one SIP response out (docs/scaip.md).

A message goes the way of an MQTT one: its `<mrq>` becomes one of the centre's device events (protocol v1
JSON on the device's `events` or `alarms` topic) committed by `ingest.batch.process_batch`, so validation,
deduplication, incidents, device state and dead letters are the same as for every device. The answer
follows the commit:

- 200 OK with `<mrs>` status number 0 only once the message's effect is committed;
- 200 OK with another status number (too long, invalid format, mandatory tag missing, wrong data content)
  for what the centre refuses, each one also a dead letter on topic `scaip/<cid>`;
- 401 with a digest challenge for a device with a password whose request carries no valid answer to one
  (or one already used for another message), 403 for a wrong password or a device without a password where
  those are refused;
- no answer at all when the database cannot commit: the device resends (SIP over UDP resends for 32 s) or
  turns to its other way of raising the alarm.

The network side is scaip_server.py; the wire format scaip_message.py; the codes scaip_codes.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections import OrderedDict
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
from alarmcentre.receivers import scaip_message as wire
from alarmcentre.receivers.dedupe import retransmission_seq
from alarmcentre.receivers.scaip_codes import NotUnderstood, Signal, signal
from alarmcentre.tasks import service as tasks
from alarmcentre.tasks.models import TaskKind

log = logging.getLogger(__name__)

CID_PATTERN = r"[0-9A-Za-z._-]{1,32}"
# The same <mrq> (same ref and tags) again within this long is the device resending: its SIP transaction
# resends for 32 s, and a device that got no answer may try the whole message again. Later, a `ref` that came
# round again (a counter that wrapped) is a new alarm.
RETRANSMISSION_WINDOW_S = 300
ALLOWED_METHODS = "MESSAGE, OPTIONS"
MAX_TAGS_KEPT = 24  # of a device's <mrq>, on its event (each value cut to 100 characters)


class ScaipRefusal:
    """Dead-letter reasons of the SCAIP receiver."""

    NOT_SIP = "scaip_not_sip"
    TOO_LONG = "scaip_message_too_long"
    INVALID_FORMAT = "scaip_invalid_format"
    MANDATORY_TAG_MISSING = "scaip_mandatory_tag_missing"
    UNKNOWN_DEVICE = "scaip_unknown_device"
    NOT_UNDERSTOOD = "scaip_not_understood"
    BAD_CREDENTIALS = "scaip_bad_credentials"
    NO_PASSWORD = "scaip_device_without_password"
    EVENT_REFUSED = "scaip_event_refused"


_REFUSAL_OF_STATUS = {
    wire.StatusNumber.MESSAGE_TOO_LONG: ScaipRefusal.TOO_LONG,
    wire.StatusNumber.INVALID_FORMAT: ScaipRefusal.INVALID_FORMAT,
    wire.StatusNumber.MANDATORY_TAG_MISSING: ScaipRefusal.MANDATORY_TAG_MISSING,
}


def dead_letter_topic(cid: str | None) -> str:
    return f"scaip/{cid or 'unknown'}"


def set_identity(session: Session, *, device: Device, cid: str | None, password: str | None,
                 cipher: MultiFernet) -> None:
    """Give a device its SCAIP controller id (`cid`; None: none) and digest password (None: no
    authentication), the password stored encrypted with the access key."""
    if cid is not None:
        cid = cid.strip()
        if not re.fullmatch(CID_PATTERN, cid):
            raise ValueError("a SCAIP controller id (cid) has 1 to 32 letters, digits, '.', '_' or '-'")
        other = session.scalar(select(Device.serial).where(Device.scaip_cid == cid, Device.id != device.id))
        if other is not None:
            raise ValueError(f"SCAIP cid {cid} belongs to device {other}")
    if password is not None and not 8 <= len(password) <= 128:
        raise ValueError("a SCAIP device password has 8 to 128 characters")
    device.scaip_cid = cid
    device.scaip_password_ciphertext = (cipher.encrypt(password.encode()).decode()
                                        if password is not None and cid is not None else None)


@dataclass(frozen=True, slots=True)
class _Device:
    id: int
    serial: str
    password: str | None
    password_error: str | None = None


class _UsedAuthorizations:
    """Digest answers already taken, so a captured one cannot carry another body while its nonce is fresh
    (qop=auth covers the method and URI, not the body). The same answer with the same body is a resent copy."""

    def __init__(self, ttl_s: int) -> None:
        self._ttl_s = ttl_s
        # In the order taken, so the expired ones are pruned from the front (not a scan of all of them).
        self._seen: OrderedDict[tuple[str, str, str], tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, params: dict[str, str], body: bytes) -> bool:
        key = (params.get("nonce", ""), params.get("nc", ""), params.get("cnonce", ""))
        body_digest = hashlib.sha256(body).hexdigest()
        now = time.monotonic()
        with self._lock:
            while self._seen and now - next(iter(self._seen.values()))[1] > self._ttl_s:
                self._seen.popitem(last=False)
            seen = self._seen.get(key)
            if seen is not None:
                return seen[0] == body_digest
            self._seen[key] = (body_digest, now)
            return True


class ScaipReceiver:
    """SIP requests in, responses out; blocking (the server calls it from worker threads). Thread-safe."""

    def __init__(self, session_factory: sessionmaker[Session], *, settings: Settings,
                 cipher: Callable[[], MultiFernet], nonces: wire.Nonces | None = None) -> None:
        self._factory = session_factory
        self._settings = settings
        self._cipher = cipher
        self._nonces = nonces or wire.Nonces()
        self._used = _UsedAuthorizations(self._nonces.ttl_s)

    def handle(self, raw: bytes, *, transport: str = "udp") -> bytes | None:
        """Answer one SIP request (None: no answer) after committing what it says."""
        metrics.SCAIP_MESSAGES_RECEIVED.labels(transport).inc()
        now = clock.now()
        try:
            answer, outcome = self._handle(raw, now)
        except DBAPIError as exc:
            # Nothing committed: no answer, and the device resends (or raises the alarm another way).
            log.error("scaip: cannot commit a message (%s); not answered, the device will send it again",
                      error_reason(exc))
            answer, outcome = None, ("none", "database")
        metrics.SCAIP_ANSWERS.labels(*outcome).inc()
        return answer

    def _handle(self, raw: bytes, now: datetime) -> tuple[bytes | None, tuple[str, str]]:
        try:
            request = wire.parse_request(raw)
        except wire.SipError as exc:
            self._refuse(raw, None, None, ScaipRefusal.NOT_SIP, str(exc), now)
            return None, ("none", ScaipRefusal.NOT_SIP)
        if request.method == "OPTIONS":  # devices and proxies ask whether the receiver is there
            return wire.build_response(request, 200, extra=(("Allow", ALLOWED_METHODS),)), ("200", "options")
        if request.method != "MESSAGE":
            return wire.build_response(request, 405, extra=(("Allow", ALLOWED_METHODS),)), ("405", "method")
        try:
            tags = wire.parse_mrq(request.body)
        except wire.ScaipError as exc:
            reason = _REFUSAL_OF_STATUS[exc.snu]
            self._refuse(raw, None, None, reason, str(exc), now)
            return self._mrs(request, _ref_in(request.body), exc.snu, str(exc)), (str(int(exc.snu)), reason)
        cid, ref = tags["cid"], tags["ref"]
        device = self._device(cid)
        if device is None:
            detail = f"no device has SCAIP cid {cid}"
            self._refuse(raw, cid, None, ScaipRefusal.UNKNOWN_DEVICE, detail, now)
            return (self._mrs(request, ref, wire.StatusNumber.WRONG_DATA_CONTENT, detail),
                    ("3", ScaipRefusal.UNKNOWN_DEVICE))
        refused = self._authenticate(request, device, cid, raw, now)
        if refused is not None:
            return refused
        try:
            found = signal(tags)
        except NotUnderstood as exc:
            self._refuse(raw, cid, device.serial, ScaipRefusal.NOT_UNDERSTOOD, str(exc), now)
            return (self._mrs(request, ref, wire.StatusNumber.WRONG_DATA_CONTENT, str(exc)),
                    ("3", ScaipRefusal.NOT_UNDERSTOOD))
        result = self._commit(device, tags, found, raw, now)
        if result.outcome is Outcome.REJECTED:
            return (self._mrs(request, ref, wire.StatusNumber.WRONG_DATA_CONTENT, result.reason or "refused"),
                    ("3", ScaipRefusal.EVENT_REFUSED))
        return self._mrs(request, ref, wire.StatusNumber.OK), ("0", "ok")

    @staticmethod
    def _mrs(request: wire.SipRequest, ref: str | None, snu: wire.StatusNumber, text: str | None = None) -> bytes:
        return wire.build_response(request, 200, body=wire.build_mrs(ref, snu, text))

    def _authenticate(self, request: wire.SipRequest, device: _Device, cid: str, raw: bytes,
                      now: datetime) -> tuple[bytes, tuple[str, str]] | None:
        """None: the request may go on; else the answer that stops it."""
        realm = self._settings.scaip_realm
        if device.password_error is not None:
            self._refuse(raw, cid, device.serial, ScaipRefusal.BAD_CREDENTIALS, device.password_error, now)
            return wire.build_response(request, 403), ("403", ScaipRefusal.BAD_CREDENTIALS)
        if device.password is None:
            if self._settings.scaip_unauthenticated_allowed:
                return None
            self._refuse(raw, cid, device.serial, ScaipRefusal.NO_PASSWORD,
                         "the device has no SCAIP password, and devices without one are not allowed here (give it "
                         "one: alarmcentre devices scaip SERIAL --cid ... --password-file ...)", now)
            return wire.build_response(request, 403), ("403", ScaipRefusal.NO_PASSWORD)
        params = wire.parse_authorization(request.header("authorization") or "")
        fresh = self._nonces.fresh(params.get("nonce", "")) if params else None
        if fresh is not True:  # no answer yet, a nonce of another process or an expired one: a new challenge
            header = wire.challenge(realm, self._nonces.issue(), stale=fresh is False)
            return wire.build_response(request, 401, extra=(("WWW-Authenticate", header),)), ("401", "challenge")
        problem = None
        if params.get("username") != cid:
            problem = f"digest username {params.get('username')!r} is not the message's cid"
        elif params.get("realm") != realm or params.get("algorithm", "MD5").upper() != "MD5" \
                or params.get("qop", "auth") != "auth":
            problem = "digest realm, algorithm or qop not the challenge's"
        else:
            expected = wire.digest_response(wire.ha1(cid, realm, device.password), method=request.method,
                                            params=params)
            if not hmac.compare_digest(expected, params.get("response", "")):
                problem = "wrong digest response (wrong password)"
        if problem is not None:
            self._refuse(raw, cid, device.serial, ScaipRefusal.BAD_CREDENTIALS, problem, now)
            return wire.build_response(request, 403), ("403", ScaipRefusal.BAD_CREDENTIALS)
        if not self._used.take(params, request.body):
            # A replay carrying another body, or a unit that reuses its nonce without a nonce count: either
            # way a fresh challenge, which only the password answers (a 403 would shut such a unit out).
            log.warning("scaip: cid %s sent a digest answer already used for another message; challenged again",
                        cid)
            header = wire.challenge(realm, self._nonces.issue(), stale=True)
            return wire.build_response(request, 401, extra=(("WWW-Authenticate", header),)), ("401", "reused")
        return None

    def _device(self, cid: str) -> _Device | None:
        with self._factory() as session:
            row = session.execute(select(Device.id, Device.serial, Device.scaip_password_ciphertext)
                                  .where(Device.scaip_cid == cid)).one_or_none()
        if row is None:
            return None
        if not row.scaip_password_ciphertext:
            return _Device(row.id, row.serial, None)
        try:
            return _Device(row.id, row.serial, self._cipher().decrypt(row.scaip_password_ciphertext.encode()).decode())
        except (InvalidToken, ValueError):
            log.error("scaip: the password of cid %s cannot be read with the access key", cid)
            # Every message of the device is then refused, visibly, never taken unchecked.
            return _Device(row.id, row.serial, None, password_error="the device's password cannot be read with "
                           "the centre's access key (set it again: alarmcentre devices scaip)")

    def _commit(self, device: _Device, tags: dict[str, str], found: Signal, raw: bytes, now: datetime) -> Result:
        with transaction(self._factory, writes=True) as session:
            canonical = "|".join(f"{name}={value}" for name, value in sorted(tags.items()))
            seq = retransmission_seq(session, device_id=device.id, parts=("scaip", tags["cid"], canonical),
                                     now=now, timestamp=None, window_s=RETRANSMISSION_WINDOW_S)
            payload = {"seq": seq, "ts": now.isoformat(), "type": str(found.type)}
            topic = (alarms_topic if found.type in ALARM_LANE_TYPES else events_topic)(device.serial)
            [result] = process_batch(session, [InboundMessage(topic, json.dumps(payload).encode(), now)],
                                     settings=self._settings)
            if result.outcome is Outcome.ACCEPTED:
                self._annotate(session, device, tags, found, seq, result, now)
            elif result.outcome is Outcome.REJECTED:
                # process_batch dead-lettered the JSON event; keep the message itself beside it
                self._dead_letter(session, raw, tags["cid"], device.serial, ScaipRefusal.EVENT_REFUSED,
                                  f"{found.code}: the event was refused ({result.reason})", now)
        if result.incident_opened is not None:
            metrics.INCIDENTS_RAISED.labels(result.kind).inc()
            log.info("scaip: incident %d opened (%s, cid %s)", result.incident_opened, result.kind, tags["cid"])
        return result

    def _annotate(self, session: Session, device: _Device, tags: dict[str, str], found: Signal, seq: int,
                  result: Result, now: datetime) -> None:
        """What the device said, in its own codes: on the event, on the incident, in a task when unmapped."""
        kept = {name: value[:100] for name, value in list(tags.items())[:MAX_TAGS_KEPT]}
        info = {"code": found.code, "description": found.description, "tags": kept}
        row = session.scalar(select(DeviceEvent).where(DeviceEvent.device_id == device.id, DeviceEvent.seq == seq))
        if row is not None:
            row.details = {**(row.details or {}), "scaip": info}
        if result.incident_id is not None:
            incident = session.get(Incident, result.incident_id)
            if incident is not None:
                text = f"SCAIP {found.code}: {found.description}"
                if tags.get("dty"):
                    text += f", device type {tags['dty']}"
                callback = tags.get("crd", "")
                if callback.partition(":")[2].strip("+ "):  # "gsm:+3712…": where the device takes a call
                    text += f"; call back on {callback}"
                append_timeline(session, incident, kind=TimelineKind.NOTE, actor=f"scaip:{tags['cid']}",
                                details={"text": text, "scaip": info}, at=now)
        if not found.mapped:
            owner = session.get(Device, device.id)
            key = f"{TaskKind.SCAIP_UNMAPPED_CODE.value}:device:{device.id}:{found.code}"[:64]
            task = tasks.open_task(session, kind=TaskKind.SCAIP_UNMAPPED_CODE, due_at=now,
                                   client_id=owner.client_id if owner else None, device_id=device.id, key=key,
                                   details={"scaip": info, "serial": device.serial,
                                            "text": f"the device sent {found.code}, which the centre does not "
                                                    "know: find out what it means"})
            if task is not None:
                metrics.TASKS_OPENED.labels(TaskKind.SCAIP_UNMAPPED_CODE.value).inc()
            log.warning("scaip: cid %s sent the unmapped code %s", tags["cid"], found.code)

    def _refuse(self, raw: bytes, cid: str | None, serial: str | None, reason: str, detail: str,
                now: datetime) -> None:
        log.warning("scaip: refused a message of cid %s: %s (%s)", cid or "?", reason, detail[:200])
        with transaction(self._factory, writes=True) as session:
            self._dead_letter(session, raw, cid, serial, reason, detail, now)

    @staticmethod
    def _dead_letter(session: Session, raw: bytes, cid: str | None, serial: str | None, reason: str,
                     detail: str, now: datetime) -> None:
        dead_letter(session, message=InboundMessage(dead_letter_topic(cid), raw, now), reason=reason[:32],
                    detail=detail, device_serial=serial)


def _ref_in(body: bytes) -> str | None:
    """The `ref` of a body the parser refused, for the answer to name (best effort)."""
    match = re.search(rb"<ref>\s*([^<]{1,64}?)\s*</ref>", body)
    return match.group(1).decode("utf-8", "replace") if match else None
