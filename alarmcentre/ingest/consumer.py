"""The MQTT side of the ingest: receive, hand to the processor in batches, commit, then acknowledge.

Why paho-mqtt and not aiomqtt: paho has manual acknowledgement (`manual_ack=True`),
so a PUBACK leaves only after the message's effect is committed. aiomqtt acknowledges
on receipt and its bounded queue drops silently when full; either loses alarms on a crash.

The ingest runs two lanes (`Ingest`), each an `IngestConsumer` with its own broker session: alarms
(their own topic, small batches) and the bulk of traffic (events and statuses). The broker queues each
session apart, so an alarm never waits behind a backlog of heartbeats, there or here.

Threads, per lane: paho's network loop thread puts messages on a queue; one worker thread drains
it in batches, commits each batch in one transaction, and acknowledges the batch. The
queue is small (two batches): when the worker falls behind, paho's thread waits for room and
the broker holds the rest (backpressure, no buffering without limit). If the database is
down the worker keeps retrying the same batch and acknowledges nothing, so the broker keeps
every message.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import clock, metrics
from alarmcentre.config import Settings, get_settings
from alarmcentre.db import error_reason, transaction
from alarmcentre.ingest.batch import apply_deferred_round, process_batch
from alarmcentre.ingest.deferral import DeviceBudget
from alarmcentre.ingest.processor import InboundMessage, Outcome, Result
from alarmcentre.ingest.protocol import ALARMS_SUBSCRIPTION, EVENTS_SUBSCRIPTION, STATUS_SUBSCRIPTION
from alarmcentre.ingest.sessions import ALIVE_EVERY_S, record_alive, record_connect

log = logging.getLogger(__name__)

# Messages received but not yet committed, at most. Mosquitto 2.0.11 does not hold to its in-flight
# limit once acknowledgements flow, so this is the real bound: past it paho's network thread waits,
# and the backlog stays in the broker (persisted) instead of in this process. Small, so that an
# alarm waits behind at most two batches of heartbeats.
QUEUE_BATCHES = 2

BULK_SUBSCRIPTIONS = (EVENTS_SUBSCRIPTION, STATUS_SUBSCRIPTION)
ALARM_SUBSCRIPTIONS = (ALARMS_SUBSCRIPTION,)
DATABASE_RETRY_MAX_S = 3.0
# A busy bulk lane applies a round of set-aside messages at least this often (each round is small).
DRAIN_EVERY_S = 1.0
# Alarms come one by one; a small batch bounds what one slow commit holds back.
ALARM_BATCH_MAX = 50



class AlarmsFirst:
    """Alarms ahead of the bulk inside one process: while the alarm lane holds alarms (received, not
    yet committed), the bulk lane starts no new batch. On SQLite that hands the single write lock to
    the alarm (the busy handler is not fair: the bulk lane would take it again right after each of its
    commits), and on PostgreSQL it leaves the CPU to the alarm. A batch already begun finishes."""

    MAX_HOLD_S = 2.0  # the bulk lane waits at most this long per batch, whatever happens to the alarms

    def __init__(self) -> None:
        self._in_hand = 0
        self._changed = threading.Condition()

    def received(self) -> None:
        with self._changed:
            self._in_hand += 1

    def done(self, count: int) -> None:
        with self._changed:
            self._in_hand = max(self._in_hand - count, 0)
            self._changed.notify_all()

    def wait_for_alarms(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._in_hand == 0, timeout=self.MAX_HOLD_S)


_live: set[IngestConsumer] = set()  # every running consumer of this process, for the shared gauges
_live_lock = threading.Lock()


def _update_gauges() -> None:
    """The broker gauge reads 1 only while every lane of this process is connected; the queue gauge
    counts every lane's waiting messages."""
    with _live_lock:
        consumers = list(_live)
    metrics.BROKER_CONNECTED.set(1 if consumers and all(c.connected for c in consumers) else 0)
    metrics.INGEST_QUEUE.set(sum(c.pending for c in consumers))


class HasMessage(Protocol):
    @property
    def message(self) -> InboundMessage: ...


class Lane:
    """What every lane of the ingest does whatever its broker: commit a batch (retrying while the database
    is down), tell supervision it is alive, count and log the outcome. Subclasses receive and acknowledge."""

    client_id: str
    _factory: sessionmaker[Session]
    _settings: Settings
    _on_committed: Callable[[list[Result]], None] | None
    database_ok: bool
    last_commit_at: float | None
    _budget: DeviceBudget | None = None  # per-device budget: messages past it are set aside (ingest/deferral.py)

    def _note_alive(self) -> None:
        """Tell device supervision that the centre is listening (ingest/sessions.py)."""
        try:
            with transaction(self._factory, writes=True) as session:
                record_alive(session, client_id=self.client_id)
        except DBAPIError as exc:  # the batch commits report the database; this is no reason to stop
            log.debug("ingest: could not note being alive: %s", error_reason(exc))

    def _commit_with_retry(self, batch: Sequence[HasMessage], wait: Callable[[float], bool]) -> list[Result] | None:
        """Commit the batch, retrying while the database is down; None if `wait` says to stop first."""
        delay = 0.5
        while True:
            try:
                with transaction(self._factory, writes=True) as session:
                    results = process_batch(session, [item.message for item in batch], settings=self._settings,
                                            budget=self._budget)
                if not self.database_ok:
                    log.warning("ingest: database is back; committed %d held messages", len(batch))
                self.database_ok = True
                metrics.DATABASE_UP.set(1)
                return results
            except DBAPIError as exc:
                self.database_ok = False
                metrics.DATABASE_UP.set(0)
                metrics.DATABASE_ERRORS.inc()
                log.error("ingest: cannot commit %d messages (%s: %s); retrying in %.1fs, nothing acknowledged",
                          len(batch), type(exc.orig or exc).__name__, error_reason(exc), delay)
            if wait(delay):
                return None
            # Short: an alarm waits out the outage plus at most this, and a retry costs the database little.
            delay = min(delay * 2, DATABASE_RETRY_MAX_S)

    def _record(self, messages: Sequence[InboundMessage], results: list[Result]) -> None:
        """After a commit (of a batch, or of a round of set-aside messages): count, log, tell the listener."""
        now = clock.now()
        self.last_commit_at = time.time()
        metrics.INGEST_LAST_COMMIT.set(self.last_commit_at)
        _update_gauges()
        accepted: Counter[str] = Counter()
        deferred = 0
        for message, result in zip(messages, results, strict=True):
            metrics.INGEST_LAG.observe(max((now - message.received_at).total_seconds(), 0.0))
            if result.outcome is Outcome.ACCEPTED:
                accepted[result.kind] += 1
                if result.clock_skewed:
                    metrics.CLOCK_SKEWED_ALARMS.inc()
                if result.incident_opened is not None:
                    metrics.INCIDENTS_RAISED.labels(result.kind).inc()
                    log.info("ingest: incident %d opened (%s)", result.incident_opened, result.kind)
            elif result.outcome is Outcome.DUPLICATE:
                metrics.MESSAGES_DUPLICATE.inc()
            elif result.outcome is Outcome.DEFERRED:
                deferred += 1
            else:
                metrics.MESSAGES_REJECTED.labels(result.reason or "unknown").inc()
                log.warning("ingest: rejected a message on %s: %s", message.topic[:120], result.reason)
        for kind, count in accepted.items():  # one update per kind, not per message: most are heartbeats
            metrics.MESSAGES_ACCEPTED.labels(kind).inc(count)
        if deferred:  # counted and logged per batch: a flood must not flood the log too
            metrics.MESSAGES_DEFERRED.inc(deferred)
            if self._budget is not None:
                self._budget.noted_set_aside()  # again after the commit: a drain that looked meanwhile looks again
            log.warning("ingest: %d messages of devices past their budget set aside, applied later", deferred)
        if self._on_committed is not None:
            try:
                self._on_committed(results)
            except Exception:  # a listener's bug must not stop the ingest
                log.exception("ingest: on_committed listener failed")



@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str) -> MqttEndpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp"):
            raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {url.split('://')[0]!r}")
        if not parts.hostname:
            raise ValueError("MQTT URL has no host")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )

    def safe(self) -> str:
        """For logs: never the password."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class _Received:
    message: InboundMessage
    mid: int
    qos: int
    generation: int  # which connection it came on: a mid is only valid on its own connection
    at: float  # time.monotonic() at receipt: the readiness lag bound, immune to clock changes


class IngestConsumer(Lane):
    """Consumes device messages from the broker into the database, at least once, deduplicated."""

    def __init__(
        self,
        *,
        mqtt_url: str,
        session_factory: sessionmaker[Session],
        client_id: str = "alarmcentre-ingest",
        subscriptions: tuple[str, ...] = BULK_SUBSCRIPTIONS,
        batch_max: int = 500,
        on_committed: Callable[[list[Result]], None] | None = None,
        settings: Settings | None = None,
        alarms_first: AlarmsFirst | None = None,
        carries_alarms: bool = False,
        budget: DeviceBudget | None = None,
        drains_deferred: bool = False,
    ) -> None:
        self._settings = settings or get_settings()
        self._budget = budget
        # This lane applies the set-aside messages when it has time (one lane per ingest does: the bulk lane).
        self._drains_deferred = drains_deferred and budget is not None
        self._drained_at = 0.0
        # Shared by the lanes of one Ingest: the alarm lane (carries_alarms) reports what it holds,
        # the bulk lane waits for it before each batch.
        self._alarms_first = alarms_first
        self._carries_alarms = carries_alarms
        self.endpoint = MqttEndpoint.parse(mqtt_url)
        self._factory = session_factory
        self._batch_max = batch_max
        self._subscriptions = subscriptions
        self._on_committed = on_committed
        self._queue: queue.Queue[_Received] = queue.Queue(maxsize=QUEUE_BATCHES * batch_max)
        self._stop = threading.Event()
        self._generation = 0
        self._connected = threading.Event()
        self._worker: threading.Thread | None = None
        self.database_ok = True
        self.last_commit_at: float | None = None
        # time.monotonic() of the last reconnect to a session the broker had lost (sessions.py).
        self.session_lost_at: float | None = None
        # The batch the worker is committing: receipt time of its oldest message, and its size.
        self._in_hand_since: float | None = None
        self._in_hand = 0
        self._running = False

        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,  # persistent session: the broker queues for us while we are away
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if self.endpoint.username:
            self._client.username_pw_set(self.endpoint.username, self.endpoint.password)
        if self.endpoint.tls:
            self._client.tls_set()
        self._client.reconnect_delay_set(min_delay=1, max_delay=15)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        log.info("ingest: connecting to %s as %s", self.endpoint.safe(), self.client_id)
        metrics.DATABASE_UP.set(1)
        metrics.INGEST_RUNNING.inc()
        self._running = True
        with _live_lock:
            _live.add(self)
        _update_gauges()
        self._worker = threading.Thread(target=self._work, name=f"ingest-worker {self.client_id}", daemon=True)
        self._worker.start()
        # connect_async + loop_start: paho retries the first connection and every later one.
        self._client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30)
        self._client.loop_start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand, then disconnect. Unacknowledged messages stay with the broker."""
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        with _live_lock:
            _live.discard(self)
        _update_gauges()
        if self._running:
            self._running = False
            metrics.INGEST_RUNNING.dec()

    @property
    def client_id(self) -> str:
        return self._client._client_id.decode()

    def wait_connected(self, timeout: float) -> bool:
        """Connected and subscribed: from now on the broker keeps every device message for us."""
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def pending(self) -> int:
        """Messages received and not yet committed: queued, or in the batch being committed."""
        return self._queue.qsize() + self._in_hand

    @property
    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def waiting_age(self) -> float | None:
        """Seconds the oldest message received and not yet committed has waited; None when none waits.
        What the broker still holds for us is not counted: it is not ours until received."""
        oldest = self._in_hand_since
        if oldest is None:
            with self._queue.mutex:  # peek at the head without taking it
                oldest = self._queue.queue[0].at if self._queue.queue else None
        return None if oldest is None else max(time.monotonic() - oldest, 0.0)

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: object, flags: mqtt.ConnectFlags,
                    reason_code: object, _properties: object) -> None:
        if getattr(reason_code, "is_failure", False):
            log.error("ingest: broker refused the connection: %s", reason_code)
            return
        self._generation += 1
        log.info("ingest: connected to %s (session present: %s)", self.endpoint.safe(), flags.session_present)
        self._check_session(flags.session_present)
        if not flags.session_present:
            # A new session: subscribe, and count as connected only once the broker confirms it
            # (a message published before that would not be kept for us). An existing session keeps
            # its subscriptions, and re-subscribing would replay every device's retained status.
            client.subscribe([(topic, 1) for topic in self._subscriptions])
        else:
            self._connected.set()
            _update_gauges()

    def _check_session(self, session_present: bool) -> None:
        client_id = self.client_id
        try:
            with transaction(self._factory, writes=True) as session:
                lost = record_connect(session, client_id=client_id, session_present=session_present)
        except DBAPIError as exc:
            log.warning("ingest: cannot record the broker session (%s); a lost session would go unnoticed",
                        type(exc.orig or exc).__name__)
            return
        if lost:
            self.session_lost_at = time.monotonic()
            metrics.INGEST_SESSIONS_LOST.inc()
            log.error("ingest: the broker no longer had the persistent session %r: messages it queued for the "
                      "ingest while it was away may be lost (broker state lost, or another client connected "
                      "with this client id)", client_id)

    def _on_subscribe(self, _client: mqtt.Client, _userdata: object, _mid: int,
                      reason_codes: list[object], _properties: object) -> None:
        failed = [code for code in reason_codes if getattr(code, "is_failure", False)]
        if failed:
            log.error("ingest: the broker refused the subscription to device topics: %s", failed)
        else:
            log.info("ingest: subscribed as %s to %s", self.client_id, ", ".join(self._subscriptions))
            self._connected.set()
            _update_gauges()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: object,
                       reason_code: object, _properties: object) -> None:
        self._connected.clear()
        _update_gauges()
        if not self._stop.is_set():
            metrics.BROKER_DISCONNECTS.inc()
            log.warning("ingest: lost the broker (%s); reconnecting by itself", reason_code)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        metrics.MESSAGES_RECEIVED.inc()
        if self._carries_alarms and self._alarms_first is not None:
            self._alarms_first.received()
        received = _Received(
            InboundMessage(topic=msg.topic, payload=bytes(msg.payload), received_at=clock.now()),
            mid=msg.mid,
            qos=msg.qos,
            generation=self._generation,
            at=time.monotonic(),
        )
        # Backpressure: wait for room, but never past stop(), or stop() would wait on this thread
        # forever. A message dropped here was not acknowledged: the broker sends it again.
        while not self._stop.is_set():
            try:
                self._queue.put(received, timeout=0.5)
                break
            except queue.Full:
                continue

    # -- worker thread ---------------------------------------------------------------------

    def _work(self) -> None:
        alive_noted = time.monotonic()
        while not self._stop.is_set():
            if self.connected and time.monotonic() - alive_noted >= ALIVE_EVERY_S:
                alive_noted = time.monotonic()
                self._note_alive()
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._drain_deferred()
                continue
            self._in_hand_since, self._in_hand = first.at, 1
            batch = [first]
            while len(batch) < self._batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
                self._in_hand += 1
            if self._alarms_first is not None and not self._carries_alarms:
                self._alarms_first.wait_for_alarms()
            results = self._commit_with_retry(batch, self._stop.wait)
            if results is None:
                return  # stopping while the database is down: the broker keeps the batch
            self._acknowledge(batch)
            if self._carries_alarms and self._alarms_first is not None:
                self._alarms_first.done(len(batch))
            self._in_hand_since, self._in_hand = None, 0
            self._record([item.message for item in batch], results)
            if time.monotonic() - self._drained_at >= DRAIN_EVERY_S:  # busy: still a round now and then
                self._drain_deferred()

    def _drain_deferred(self) -> None:
        """Apply one round of set-aside messages, if this lane drains and there may be some."""
        budget = self._budget
        if not self._drains_deferred or budget is None or not budget.maybe_set_aside or self._stop.is_set():
            return
        self._drained_at = time.monotonic()
        if self._alarms_first is not None:
            self._alarms_first.wait_for_alarms()
        count_before = budget.set_aside_count
        try:
            with transaction(self._factory, writes=True) as session:
                messages, results = apply_deferred_round(session, settings=self._settings)
        except DBAPIError as exc:  # the batches report the database; the rows wait for the next round
            log.warning("ingest: could not apply set-aside messages: %s", error_reason(exc))
            return
        if not results:
            budget.found_none_set_aside(count_before)
            return
        metrics.DEFERRED_APPLIED.inc(len(results))
        self._record(messages, results)  # an alarm among them opened its incident: counted and logged as any

    def _acknowledge(self, batch: list[_Received]) -> None:
        generation = self._generation
        for item in batch:
            # A message from an earlier connection is redelivered by the broker on this one;
            # its old mid now means something else, so it must not be acknowledged.
            if item.qos > 0 and item.generation == generation:
                self._client.ack(item.mid, item.qos)


class Ingest:
    """The ingest of one process: the alarm lane and the bulk lane, started and stopped together.

    Each lane is a consumer with a broker session of its own (client ids `<client_id>-alarms` and
    `<client_id>`), a queue and a worker thread: a backlog of heartbeats fills the bulk lane's
    session in the broker and its queue here, while an alarm goes by the other lane."""

    def __init__(self, *, mqtt_url: str, session_factory: sessionmaker[Session], client_id: str = "alarmcentre-ingest",
                 batch_max: int = 500, on_committed: Callable[[list[Result]], None] | None = None,
                 settings: Settings | None = None, budget: DeviceBudget | Literal[False] | None = None) -> None:
        """`budget`: the devices' budget (None: the default one; False: none, every message applied at once)."""
        # One budget for both lanes: a device flooding either is set aside (ingest/deferral.py).
        shared_budget = None if budget is False else budget or DeviceBudget()
        common: dict[str, Any] = {"mqtt_url": mqtt_url, "session_factory": session_factory,
                                  "on_committed": on_committed, "settings": settings, "alarms_first": AlarmsFirst(),
                                  "budget": shared_budget}
        self.alarms = IngestConsumer(client_id=f"{client_id}-alarms", subscriptions=ALARM_SUBSCRIPTIONS,
                                     batch_max=min(batch_max, ALARM_BATCH_MAX), carries_alarms=True, **common)
        self.bulk = IngestConsumer(client_id=client_id, subscriptions=BULK_SUBSCRIPTIONS, batch_max=batch_max,
                                   drains_deferred=True, **common)
        self.lanes = (self.alarms, self.bulk)
        self.endpoint = self.bulk.endpoint

    def start(self) -> None:
        for lane in self.lanes:
            lane.start()

    def stop(self, timeout: float = 10.0) -> None:
        for lane in self.lanes:
            lane.stop(timeout)

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(lane.wait_connected(max(deadline - time.monotonic(), 0.0)) for lane in self.lanes)

    @property
    def connected(self) -> bool:
        return all(lane.connected for lane in self.lanes)

    @property
    def pending(self) -> int:
        return sum(lane.pending for lane in self.lanes)

    @property
    def worker_alive(self) -> bool:
        return all(lane.worker_alive for lane in self.lanes)

    @property
    def database_ok(self) -> bool:
        return all(lane.database_ok for lane in self.lanes)

    @property
    def last_commit_at(self) -> float | None:
        return max((lane.last_commit_at for lane in self.lanes if lane.last_commit_at is not None), default=None)

    @property
    def session_lost_at(self) -> float | None:
        return max((lane.session_lost_at for lane in self.lanes if lane.session_lost_at is not None), default=None)

    def waiting_age(self) -> float | None:
        return max((age for lane in self.lanes if (age := lane.waiting_age()) is not None), default=None)


def build_ingest(settings: Settings, session_factory: sessionmaker[Session], *, mqtt_url: str | None = None,
                 on_committed: Callable[[list[Result]], None] | None = None) -> Ingest:
    """The ingest the settings ask for: on the queues of a RabbitMQ cluster when `ingest_url` is an amqp://
    URL, else subscribed on the MQTT broker (`mqtt_url`, or the embedded broker's)."""
    if settings.ingest_url:
        from alarmcentre.ingest.amqp import AmqpIngest

        return AmqpIngest(amqp_urls=settings.ingest_url, session_factory=session_factory,
                          client_id=settings.mqtt_client_id, worker=settings.ingest_worker,
                          batch_max=settings.ingest_batch_max, on_committed=on_committed, settings=settings)
    url = mqtt_url or settings.mqtt_url
    if not url:
        raise ValueError("the ingest needs a broker: ALARMCENTRE_MQTT_URL or ALARMCENTRE_INGEST_URL")
    return Ingest(mqtt_url=url, session_factory=session_factory, client_id=settings.mqtt_client_id,
                  batch_max=settings.ingest_batch_max, on_committed=on_committed, settings=settings)
