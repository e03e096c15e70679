"""The ingest on a RabbitMQ cluster: devices speak MQTT to the cluster, the ingest reads replicated queues.

Devices publish MQTT to RabbitMQ's MQTT plugin exactly as to Mosquitto (docs/protocol.md). The plugin
turns `alarmcentre/v1/devices/SERIAL/alarms` into the routing key `alarmcentre.v1.devices.SERIAL.alarms`
on the exchange `amq.topic`, which routes it to one of two durable quorum queues:

- `alarmcentre.alarms`: button presses, falls, cancels, mains power (the alarm lane);
- `alarmcentre.ingest`: heartbeats, battery, statuses, configuration reports (the bulk lane).

A quorum queue confirms a message once a majority of its nodes has written it to disk, and the plugin
sends the device its PUBACK only after that confirmation: a PUBACKed alarm survives kill -9 of any one
node, or of all of them (measured: docs/brokers.md). The ingest consumes each queue over AMQP with
manual acknowledgement and acknowledges a batch only after it is committed, so kill -9 of a worker
returns what it held to the queue, for another worker. Any number of workers consume the same queues
(competing consumers): each message goes to one of them. The database keeps the guarantees under that
concurrency (exact dedupe of (device, seq), one active incident per client; tests/test_ingest_concurrency.py).

Threads, per lane: one thread owns the connection (pika's BlockingConnection is not thread-safe); it
receives up to `prefetch` messages, commits them in batches, and acknowledges each batch with one
`basic.ack(multiple)`. The prefetch bounds what a worker holds: the rest stays in the replicated queue.
While the database is down the thread retries the same batch and acknowledges nothing, keeping the
connection's heartbeats going; the queue keeps every message.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import clock, metrics
from alarmcentre.config import Settings, get_settings
from alarmcentre.db import transaction
from alarmcentre.ingest.consumer import (
    ALARM_BATCH_MAX,
    ALARM_SUBSCRIPTIONS,
    BULK_SUBSCRIPTIONS,
    QUEUE_BATCHES,
    AlarmsFirst,
    Ingest,
    Lane,
    _live,
    _live_lock,
    _update_gauges,
)
from alarmcentre.ingest.processor import InboundMessage, Result
from alarmcentre.ingest.sessions import ALIVE_EVERY_S, record_connect

log = logging.getLogger(__name__)

EXCHANGE = "amq.topic"  # where RabbitMQ's MQTT plugin publishes (its default `mqtt.exchange`)
ALARMS_QUEUE = "alarmcentre.alarms"
BULK_QUEUE = "alarmcentre.ingest"
QUEUE_ARGUMENTS = {"x-queue-type": "quorum"}  # replicated (Raft), confirms only what a majority stored
RECONNECT_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 15.0)


def routing_key(mqtt_filter: str) -> str:
    """The AMQP binding key of an MQTT topic filter, as RabbitMQ's MQTT plugin maps topics: / to ., + to *."""
    return mqtt_filter.replace("/", ".").replace("+", "*")


def mqtt_topic(key: str) -> str:
    """The MQTT topic a device published to, from the routing key (serials hold no dots: protocol.py)."""
    return key.replace(".", "/")


QUEUES: dict[str, tuple[str, ...]] = {
    ALARMS_QUEUE: tuple(routing_key(f) for f in ALARM_SUBSCRIPTIONS),
    BULK_QUEUE: tuple(routing_key(f) for f in BULK_SUBSCRIPTIONS),
}


def is_amqp_url(url: str | None) -> bool:
    return bool(url) and url.split("://", 1)[0] in ("amqp", "amqps")  # type: ignore[union-attr]


def parse_node_urls(urls: str) -> list[pika.URLParameters]:
    """`amqp://user:pw@node1:5672/,amqp://user:pw@node2:5672/`: the nodes of one cluster, tried in turn."""
    params = []
    for url in (u.strip() for u in urls.split(",")):
        if not url:
            continue
        if not is_amqp_url(url):
            raise ValueError(f"AMQP URL must start with amqp:// or amqps://, got {url.split('://')[0]!r}")
        parameters = pika.URLParameters(url)
        parameters.heartbeat = 30  # a dead node is noticed within a minute, not the default 60 s x 2
        parameters.blocked_connection_timeout = 60
        parameters.connection_attempts = 1
        params.append(parameters)
    if not params:
        raise ValueError("no AMQP URL given")
    return params


def safe_urls(urls: str) -> str:
    """For logs: the nodes, never the password."""
    shown = []
    for url in (u.strip() for u in urls.split(",") if u.strip()):
        parts = urlsplit(url)
        user = f"{unquote(parts.username)}@" if parts.username else ""
        shown.append(f"{parts.scheme}://{user}{parts.hostname}:{parts.port or 5672}")
    return ",".join(shown)


def declare_topology(channel: BlockingChannel) -> None:
    """The two quorum queues and their bindings; idempotent. Declared by every worker at start so that a
    fresh cluster routes device messages somewhere: RabbitMQ drops (and still PUBACKs) a message no queue
    is bound for. Production loads the same topology at boot (`alarmcentre broker rabbitmq-definitions`)."""
    for queue, keys in QUEUES.items():
        channel.queue_declare(queue, durable=True, arguments=QUEUE_ARGUMENTS)
        for key in keys:
            channel.queue_bind(queue, EXCHANGE, routing_key=key)


@dataclass(frozen=True, slots=True)
class _Delivery:
    message: InboundMessage
    tag: int
    at: float  # time.monotonic() at receipt


class AmqpLane(Lane):
    """One queue of the cluster into the database: at least once, deduplicated, acknowledged after commit."""

    def __init__(self, *, urls: str, queue: str, session_factory: sessionmaker[Session], worker_id: str,
                 batch_max: int = 500, on_committed: Callable[[list[Result]], None] | None = None,
                 settings: Settings | None = None, alarms_first: AlarmsFirst | None = None,
                 carries_alarms: bool = False) -> None:
        self._settings = settings or get_settings()
        self._nodes = parse_node_urls(urls)
        self._shown = safe_urls(urls)
        self.queue = queue
        self.client_id = worker_id
        self._factory = session_factory
        self._batch_max = batch_max
        self._prefetch = QUEUE_BATCHES * batch_max
        self._on_committed = on_committed
        self._alarms_first = alarms_first
        self._carries_alarms = carries_alarms
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._held: list[_Delivery] = []  # received, not yet committed (the batch in hand first)
        self._connection: pika.BlockingConnection | None = None
        self.database_ok = True
        self.last_commit_at: float | None = None
        self.session_lost_at: float | None = None  # a queue is not a session: nothing to lose on reconnect
        self.node: str | None = None  # host:port of the node this lane is connected to
        self._running = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        log.info("ingest: connecting to %s as %s for %s", self._shown, self.client_id, self.queue)
        metrics.DATABASE_UP.set(1)
        metrics.INGEST_RUNNING.inc()
        self._running = True
        with _live_lock:
            _live.add(self)  # type: ignore[arg-type]
        _update_gauges()
        self._thread = threading.Thread(target=self._run, name=f"ingest {self.client_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand, then close. What is not acknowledged goes back to the queue."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._connected.clear()
        with _live_lock:
            _live.discard(self)  # type: ignore[arg-type]
        _update_gauges()
        if self._running:
            self._running = False
            metrics.INGEST_RUNNING.dec()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        return len(self._held)

    @property
    def worker_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def waiting_age(self) -> float | None:
        held = self._held
        return max(time.monotonic() - held[0].at, 0.0) if held else None

    # -- the lane's thread -----------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._serve()
                failures = 0
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._lost(exc)
                self._close()  # if still open (a cancelled consumer): what it held goes back to the queue
                delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
                failures += 1
                if self._stop.wait(delay):
                    break
        self._close()

    def _serve(self) -> None:
        """Connect to the first node that answers, then receive and commit until stopped or disconnected."""
        # Each attempt starts at another node, so that workers spread over the cluster and one dead node
        # does not hold up every reconnect.
        start = random.randrange(len(self._nodes))
        self._connection = connection = pika.BlockingConnection(self._nodes[start:] + self._nodes[:start])
        channel = connection.channel()
        declare_topology(channel)
        channel.basic_qos(prefetch_count=self._prefetch)
        cancelled: list[str] = []
        # The broker cancels a consumer whose queue went away (deleted, or its node lost): start over.
        channel.add_on_cancel_callback(lambda frame: cancelled.append(str(frame.method.consumer_tag)))
        channel.basic_consume(self.queue, self._deliver, auto_ack=False, consumer_tag=self.client_id)
        self.node = f"{connection._impl.params.host}:{connection._impl.params.port}"
        self._note_connected()
        self._connected.set()
        _update_gauges()
        log.info("ingest: subscribed as %s to queue %s on %s", self.client_id, self.queue, self.node)
        alive_noted = time.monotonic()
        while not self._stop.is_set():
            connection.process_data_events(time_limit=0 if self._held else 0.2)
            if cancelled:
                raise pika.exceptions.ConsumerCancelled(f"the broker cancelled consumer {cancelled[0]}")
            if time.monotonic() - alive_noted >= ALIVE_EVERY_S:
                alive_noted = time.monotonic()
                self._note_alive()
            if self._held:
                self._commit_next_batch(channel)

    def _deliver(self, _channel: BlockingChannel, method: Any, _properties: Any, body: bytes) -> None:
        metrics.MESSAGES_RECEIVED.inc()
        if self._carries_alarms and self._alarms_first is not None:
            self._alarms_first.received()
        message = InboundMessage(topic=mqtt_topic(method.routing_key), payload=bytes(body), received_at=clock.now())
        self._held.append(_Delivery(message, method.delivery_tag, time.monotonic()))

    def _commit_next_batch(self, channel: BlockingChannel) -> None:
        batch = self._held[: self._batch_max]
        if self._alarms_first is not None and not self._carries_alarms:
            self._alarms_first.wait_for_alarms()
        results = self._commit_with_retry(batch, self._wait)
        if results is None:
            return  # stopping while the database is down: the queue keeps the batch
        # Deliveries on one channel are numbered in order: one ack covers the whole batch.
        channel.basic_ack(delivery_tag=batch[-1].tag, multiple=True)
        del self._held[: len(batch)]
        if self._carries_alarms and self._alarms_first is not None:
            self._alarms_first.done(len(batch))
        self._record([item.message for item in batch], results)

    def _wait(self, seconds: float) -> bool:
        """Wait between database retries while answering the broker's heartbeats; True when stopping."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            assert self._connection is not None
            self._connection.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
        return self._stop.is_set()

    def _note_connected(self) -> None:
        try:
            with transaction(self._factory, writes=True) as session:
                record_connect(session, client_id=self.client_id, session_present=True)
        except DBAPIError as exc:
            log.warning("ingest: cannot record the connection (%s)", type(exc.orig or exc).__name__)

    def _lost(self, exc: BaseException) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        _update_gauges()
        dropped = len(self._held)
        if self._carries_alarms and self._alarms_first is not None:
            self._alarms_first.done(dropped)
        self._held.clear()  # not acknowledged: the queue delivers them again, to us or another worker
        if self._stop.is_set():
            return
        if was_connected:
            metrics.BROKER_DISCONNECTS.inc()
            log.warning("ingest: lost the broker node %s (%s: %s); %d unacknowledged messages go back to the "
                        "queue; reconnecting", self.node, type(exc).__name__, exc, dropped)
        else:
            log.warning("ingest: no broker node of %s answers (%s: %s); retrying", self._shown,
                        type(exc).__name__, exc)

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()


def default_worker_name() -> str:
    return socket.gethostname()


class AmqpIngest(Ingest):
    """The two lanes of one worker on the cluster: the alarm queue and the bulk queue, each on a connection
    of its own. Worker ids `<client_id>@<worker>-alarms` and `<client_id>@<worker>` name the worker in the
    broker's consumer list, the logs and the database's record of who is listening."""

    def __init__(self, *, amqp_urls: str, session_factory: sessionmaker[Session],
                 client_id: str = "alarmcentre-ingest", worker: str | None = None, batch_max: int = 500,
                 on_committed: Callable[[list[Result]], None] | None = None,
                 settings: Settings | None = None) -> None:
        worker_id = f"{client_id}@{worker or default_worker_name()}"
        common: dict[str, Any] = {"urls": amqp_urls, "session_factory": session_factory,
                                  "on_committed": on_committed, "settings": settings, "alarms_first": AlarmsFirst()}
        self.alarms = AmqpLane(queue=ALARMS_QUEUE, worker_id=f"{worker_id}-alarms",  # type: ignore[assignment]
                               batch_max=min(batch_max, ALARM_BATCH_MAX), carries_alarms=True, **common)
        self.bulk = AmqpLane(queue=BULK_QUEUE, worker_id=worker_id, batch_max=batch_max,  # type: ignore[assignment]
                             **common)
        self.lanes = (self.alarms, self.bulk)  # type: ignore[assignment]
        self.worker_id = worker_id
