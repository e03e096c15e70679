"""The end-to-end canary: a built-in synthetic device raises a test alarm through the real broker
every `canary_interval_s`, and the centre checks that it went all the way (broker → ingest →
database → the live feed of the dashboards) within `canary_bound_s`. A late or missing canary
puts a system-fault banner on every operator's screen, fails /readyz and shows in the metrics;
the next canary that comes through in time clears it by itself.

Why a real alarm (type button_press from a real device login): a fault that delays or drops
alarms anywhere on the way (a broker ACL, a stuck ingest, a database that does not commit, a
dashboard feed that stopped) delays the canary too. The ingest recognises the canary's device
(model "canary") and records a CanaryBeat instead of an incident, so operators never see it
as an alarm.

Parts: `CanaryPublisher` (the device; runs in the scheduler process), the ingest's
`record_beat` (processor.py), and `CanaryWatch` (runs in every API process, driven by the live
feed's poll: it stamps the beats it sees and judges freshness).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from sqlalchemy import BigInteger, String, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from alarmcentre import clock, metrics
from alarmcentre.config import Settings
from alarmcentre.db import Base
from alarmcentre.db_types import BigId
from alarmcentre.devices.models import Device, DeviceStatus
from alarmcentre.ingest.protocol import events_topic

log = logging.getLogger(__name__)

CANARY_MODEL = "canary"


class CanaryBeat(Base):
    """One test alarm of the canary: when the device sent it, when the ingest committed it, and
    when a live feed saw it."""

    __tablename__ = "canary_beats"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_serial: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[datetime] = mapped_column(index=True)
    committed_at: Mapped[datetime] = mapped_column(default=clock.now)
    seen_at: Mapped[datetime | None] = mapped_column(index=True)


def ensure_canary_device(session: Session, settings: Settings) -> Device:
    """The canary's device row: model canary, never installed (so no supervision or care jobs), and
    never assignable to a client (devices.service refuses)."""
    device = session.scalar(select(Device).where(Device.serial == settings.canary_serial))
    if device is None:
        device = Device(serial=settings.canary_serial, model=CANARY_MODEL, status=DeviceStatus.IN_REPAIR)
        session.add(device)
        session.flush()
    elif device.model != CANARY_MODEL:
        raise RuntimeError(f"device {settings.canary_serial!r} exists and is not the canary: "
                           "set ALARMCENTRE_CANARY_SERIAL to a serial no real device has")
    return device


def is_canary(device: Device) -> bool:
    return device.model == CANARY_MODEL


def record_beat(session: Session, *, device: Device, seq: int, sent_at: datetime) -> None:
    """Called by the ingest instead of raising an incident (same transaction as the event)."""
    session.add(CanaryBeat(device_serial=device.serial, seq=seq, sent_at=sent_at))


def prune_beats(factory: sessionmaker[Session], keep: timedelta = timedelta(days=7)) -> None:
    """A beat a minute is 10,000 rows a week: keep a week, for the record of outages."""
    with factory() as session, session.begin():
        session.execute(delete(CanaryBeat).where(CanaryBeat.sent_at < clock.now() - keep))


# -- the device --------------------------------------------------------------------------


class CanaryPublisher:
    """The synthetic device: its own broker login (username = its serial, like every device),
    publishing a button press with QoS 1 and waiting for the broker's PUBACK."""

    def __init__(self, mqtt_url: str, *, serial: str, timeout_s: float = 5.0) -> None:
        parts = urlsplit(mqtt_url)
        self.serial, self.timeout_s = serial, timeout_s
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{serial}-canary",
                                   clean_session=True)
        if parts.username:
            self._client.username_pw_set(unquote(parts.username), unquote(parts.password or ""))
        if parts.scheme == "mqtts":
            self._client.tls_set()
        self._client.reconnect_delay_set(1, 30)
        self._client.connect_async(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=30)
        self._client.loop_start()
        self._lock = threading.Lock()

    def beat(self) -> bool:
        """Send one test alarm; False when the broker did not take it (the watch will say so)."""
        now = datetime.now(UTC)
        seq = int(now.timestamp() * 1000)  # unique and increasing across restarts
        payload = json.dumps({"seq": seq, "ts": now.isoformat(), "type": "button_press"}).encode()
        with self._lock:
            try:
                info = self._client.publish(events_topic(self.serial), payload, qos=1)
                info.wait_for_publish(timeout=self.timeout_s)
                ok = info.is_published()
            except (RuntimeError, ValueError) as exc:  # not connected: paho refuses at once
                log.warning("canary: could not publish: %s", exc)
                ok = False
        if not ok:
            log.warning("canary: the broker did not acknowledge the test alarm within %.0f s", self.timeout_s)
        return ok

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


# -- the watch ---------------------------------------------------------------------------


@dataclass
class CanaryState:
    ok: bool | None = None  # None: nothing judged yet (just started)
    detail: str = "waiting for the first test alarm"
    last_success: datetime | None = None


class CanaryWatch:
    """Judges the canary from the database; `poll` runs on the live feed's poll (a thread).

    Healthy while a test alarm sent within the last interval + bound was seen within the bound.
    Judged by when the device sent it, so a stuck ingest that delivers late still counts as late."""

    def __init__(self, settings: Settings) -> None:
        self.interval = timedelta(seconds=settings.canary_interval_s)
        self.bound = timedelta(seconds=settings.canary_bound_s)
        self.started = clock.now()
        self.state = CanaryState()
        self._failed_seq: int | None = None

    def poll(self, session: Session) -> bool:
        """Stamp new beats as seen, judge, and return True when the verdict changed."""
        now = clock.now()
        session.execute(update(CanaryBeat).where(CanaryBeat.seen_at.is_(None)).values(seen_at=now))
        session.commit()
        latest = session.scalar(select(CanaryBeat).order_by(CanaryBeat.sent_at.desc()).limit(1))
        on_time = latest is not None and latest.seen_at is not None and latest.seen_at - latest.sent_at <= self.bound
        if on_time and latest is not None:
            self.state.last_success = max(self.state.last_success or latest.sent_at, latest.sent_at)
            metrics.CANARY_LAST_SUCCESS.set(self.state.last_success.timestamp())
        overdue_since = (self.state.last_success or self.started) + self.interval + self.bound
        if latest is not None and not on_time and latest.seen_at is not None:
            ok, detail = False, (f"the last test alarm took {(latest.seen_at - latest.sent_at).total_seconds():.0f} s "
                                 f"(bound {self.bound.total_seconds():.0f} s)")
        elif now > overdue_since:
            waited = (now - (self.state.last_success or self.started)).total_seconds()
            ok, detail = False, f"no test alarm came through for {waited:.0f} s"
        elif on_time:
            ok, detail = True, "ok"
        else:
            return False  # just started, the first one is not due yet
        changed = ok != self.state.ok
        if changed and not ok:
            metrics.CANARY_FAILURES.inc()
            log.error("canary: %s: alarms may be delayed or lost", detail)
        elif changed and ok and self.state.ok is False:
            log.info("canary: test alarms come through again")
        self.state.ok, self.state.detail = ok, detail
        metrics.CANARY_OK.set(1 if ok else 0)
        return changed

    def readiness(self) -> str | None:
        if self.state.ok is False:
            return self.state.detail
        return None
