"""One simulated safety-button device speaking device protocol v1 over its own MQTT connection.

Each device has its own connection because the last will (``offline``, retained)
belongs to a connection: sharing one connection between devices could not show
the centre a single device dropping off. The device keeps its state (seq, battery,
mains, applied config) across reconnects, like real hardware keeps it in memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import random
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiomqtt
import paho.mqtt.client as paho

from alarmcentre.ingest.protocol import (
    ALARM_LANE_TYPES,
    EventType,
    alarms_topic,
    commands_topic,
    config_topic,
    events_topic,
    status_topic,
)

from .connection import BrokerAddress, SimulatorError, check_device_id
from .stats import Console, RateLimiter, Stats

log = logging.getLogger("alarmcentre_sim")

MAX_REASON_CHARS = 500  # the centre refuses longer config_failed reasons
LOW_BATTERY_BELOW = 20  # percent; battery events below this carry low: true
RECONNECT_MAX_DELAY = 60.0
OUTBOX_MAX = 1000  # events kept per device while offline; the oldest go first when full
_warned_refused_subscription = False
_ALARM_LANE_KINDS = frozenset(t.value for t in ALARM_LANE_TYPES)


def now_rfc3339() -> str:
    """The event time as the protocol wants it: RFC 3339, milliseconds, explicit offset."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def unix_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class DeviceBehaviour:
    """What a device does on its own; the same for every device of a fleet.

    Rates are per device per hour, so a tester can think about one household and
    scale with ``--devices``.
    """

    heartbeat_interval: float | None = 60.0  # seconds; None: no heartbeats of its own
    battery_start: float = 100.0  # percent
    battery_drain: float = 0.5  # percent per hour; each device varies by +-battery_drain_spread
    battery_drain_spread: float = 0.2  # so a fleet does not cross 90 % in the same second
    press_rate: float = 0.0  # button presses per hour (Poisson)
    fall_rate: float = 0.0  # fall_detected events per hour (Poisson)
    power_cut_rate: float = 0.0  # mains failures per hour (Poisson)
    power_cut_duration: float = 300.0  # mean seconds until power_restored
    keepalive: int = 60  # MQTT keepalive; the broker sends the last will after 1.5x this of silence
    listen: bool = True  # subscribe to config and commands (a one-shot press does not)
    offline_on_stop: bool = True  # publish retained "offline" before a clean disconnect
    # Alarms, cancels and mains power on the alarm lane topic (protocol 1.1); False: on the events
    # topic, as a device of protocol 1.0 sends them.
    alarm_lane: bool = True


@dataclass(frozen=True, slots=True)
class ConfigDecision:
    """The device's verdict on one config message (pure, so it can be tested on any input)."""

    version: int | None  # None when the message has no usable version
    ok: bool
    reason: str | None = None
    heartbeat_interval: int | None = None


def check_config(payload: bytes) -> ConfigDecision:
    """Decide whether a config message can be applied, and why not.

    Unknown settings are accepted and ignored: the simulator only models the
    heartbeat interval, and a real device ignores settings meant for other models.
    """
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        return ConfigDecision(None, False, "config is not UTF-8")
    except (ValueError, RecursionError) as exc:
        return ConfigDecision(None, False, f"config is not JSON: {exc}"[:MAX_REASON_CHARS])
    if not isinstance(data, dict):
        return ConfigDecision(None, False, f"config is a JSON {type(data).__name__}, not an object")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        return ConfigDecision(None, False, f"version must be a non-negative integer, got {version!r}"[:200])
    if "heartbeat_interval" in data:
        interval = data["heartbeat_interval"]
        if isinstance(interval, bool) or not isinstance(interval, int) or interval <= 0:
            return ConfigDecision(
                version,
                False,
                f"heartbeat_interval must be a positive integer (seconds), "
                f"got {interval!r}"[:MAX_REASON_CHARS],
            )
        return ConfigDecision(version, True, heartbeat_interval=interval)
    return ConfigDecision(version, True)


EndMode = Literal["clean", "drop"]


class DeviceClient(aiomqtt.Client):
    """aiomqtt's client with a slower housekeeping tick.

    aiomqtt wakes every client once a second to let paho send keepalive pings.
    With 10,000 devices that is 10,000 wakeups a second, most of the CPU of an
    idle fleet. Ticking every ``misc_period`` seconds (at most a quarter of the
    keepalive) still pings in time. If a future aiomqtt renames the hook, this
    override is simply unused and the 1 s tick comes back.
    """

    misc_period: float = 5.0

    async def _misc_loop(self) -> None:
        while self._client.loop_misc() == paho.MQTT_ERR_SUCCESS:
            await asyncio.sleep(self.misc_period)


class SimDevice:
    """A device: connects, announces itself, beats, drains, presses and answers the centre.

    Control it from the event loop it runs on: ``run()`` as a task, then
    ``send_event()``, ``drop()``, ``disconnect_clean()``, ``reconnect()`` and
    finally ``shutdown()``.
    """

    def __init__(
        self,
        device_id: str,
        broker: BrokerAddress,
        behaviour: DeviceBehaviour | None = None,
        *,
        stats: Stats | None = None,
        limiter: RateLimiter | None = None,
        console: Console | None = None,
        connect_gate: asyncio.Semaphore | None = None,
        rng: random.Random | None = None,
        client_id: str | None = None,
        serial_login: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.device_id = check_device_id(device_id)
        # Brokers give each device its own login named after its serial and bind the client id to
        # it (docs/brokers.md); see BrokerAddress.login.
        self.username, self._password = broker.login(device_id, serial_login=serial_login)
        self.broker = broker
        self.behaviour = behaviour or DeviceBehaviour()
        self.stats = stats or Stats(devices=1)
        self.limiter = limiter or RateLimiter(None)
        self.console = console or Console()
        self._gate = connect_gate
        self._rng = rng or random.Random()
        # The serial is the client id, as on real devices; a one-shot press passes
        # another one so it does not take over the connection of a running fleet.
        self.client_id = client_id or device_id
        self.timeout = timeout
        # Which node of the broker's (one, unless a cluster) this device talks to; spread by serial.
        self._node = zlib.crc32(device_id.encode()) % len(broker.nodes)

        # seq starts at the Unix time in ms, so a restarted simulator continues above
        # the seqs it sent before (as long as it averaged under 1000 events/s).
        self._seq = unix_ms() - 1
        self.mains = True
        self._battery = float(self.behaviour.battery_start)
        self._battery_at = time.monotonic()
        spread = self.behaviour.battery_drain_spread
        self._drain_per_s = (
            self.behaviour.battery_drain * self._rng.uniform(1 - spread, 1 + spread) / 3600.0
        )
        self._rssi = self._rng.randint(-95, -55)
        self.heartbeat_interval: float | None = self.behaviour.heartbeat_interval
        self.config_version: int | None = None  # last version answered (applied or failed)
        self._last_bad_config: bytes | None = None
        self._power_restore_at: float | None = None

        self._client: aiomqtt.Client | None = None
        self._want_online = True
        self._stopping = False
        self._wake = asyncio.Event()
        self._session_end = asyncio.Event()
        self._end_mode: EndMode = "clean"
        self._interval_changed = asyncio.Event()
        self._battery_changed = asyncio.Event()
        self._inflight: set[asyncio.Task[bool]] = set()
        self._late_flushes: set[asyncio.Task[None]] = set()
        self._outbox: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=OUTBOX_MAX)
        self.connected = asyncio.Event()  # set while a session is up
        self.offline = asyncio.Event()  # the opposite of connected, to wait on
        self.offline.set()
        self.first_attempt_done = asyncio.Event()  # set after the first connect attempt
        self.done = asyncio.Event()  # set when run() has returned
        self.last_error: str | None = None

    # ------------------------------------------------------------------ state

    def battery_level(self) -> float:
        """Current charge in percent; drains continuously with wall time."""
        elapsed = time.monotonic() - self._battery_at
        return max(0.0, self._battery - elapsed * self._drain_per_s)

    def set_battery(self, level: float) -> None:
        self._battery = max(0.0, min(100.0, float(level)))
        self._battery_at = time.monotonic()
        self._battery_changed.set()

    def set_heartbeat_interval(self, seconds: float | None) -> None:
        self.heartbeat_interval = seconds
        self._interval_changed.set()

    @property
    def seq(self) -> int:
        """The last seq used."""
        return self._seq

    # ------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Stay connected until ``shutdown()``, reconnecting with backoff after a loss.

        A dropped device (``drop()``) stays away until ``reconnect()``; a lost one
        (broker restart, network) comes back by itself, as real devices do.
        """
        backoff = 1.0
        try:
            while not self._stopping:
                if not self._want_online:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                outcome = await self._session()
                if outcome == "ended" or self._stopping:
                    backoff = 1.0
                    continue
                self._node = (self._node + 1) % len(self.broker.nodes)  # lost or refused: try the next node
                delay = backoff * self._rng.uniform(0.5, 1.5)
                backoff = min(backoff * 2, RECONNECT_MAX_DELAY)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            self.first_attempt_done.set()
            self.connected.clear()
            self.offline.set()
            self.done.set()

    def request_stop(self) -> None:
        """Ask ``run()`` to end (clean goodbye) without waiting for it."""
        self._stopping = True
        self._want_online = False
        self._end_mode = "clean"
        self._session_end.set()
        self._wake.set()

    async def shutdown(self) -> None:
        """Stop for good: publish ``offline`` (if configured), disconnect cleanly, end ``run()``."""
        self.request_stop()
        await self.done.wait()

    async def drop(self) -> None:
        """Vanish without a DISCONNECT (as a pulled plug), so the broker sends the last will."""
        await self._go_offline("drop")

    async def disconnect_clean(self) -> None:
        """Publish ``offline`` (unless turned off) and DISCONNECT; stays away until ``reconnect()``."""
        await self._go_offline("clean")

    async def reconnect(self, timeout: float | None = None) -> bool:
        """Come back after ``drop()``/``disconnect_clean()``; True once connected."""
        self._want_online = True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.timeout):
                await self.connected.wait()
        except TimeoutError:
            return False
        return True

    async def _go_offline(self, mode: EndMode) -> None:
        self._want_online = False
        self._end_mode = mode
        if not self.connected.is_set():
            return
        self._session_end.set()
        await self.offline.wait()

    def _new_client(self) -> DeviceClient:
        host, port = self.broker.nodes[self._node]
        client = DeviceClient(
            host,
            port,
            username=self.username,
            password=self._password,
            identifier=self.client_id,
            will=aiomqtt.Will(status_topic(self.device_id), b"offline", qos=1, retain=True),
            clean_session=True,
            keepalive=self.behaviour.keepalive,
            timeout=self.timeout,
            tls_context=self.broker.tls_context(),
        )
        client.misc_period = min(5.0, self.behaviour.keepalive / 4)
        return client

    @staticmethod
    async def _close(client: aiomqtt.Client) -> None:
        """DISCONNECT if still connected; a no-op for a connection that is already gone."""
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await client.__aexit__(None, None, None)

    async def _session(self) -> Literal["ended", "lost", "connect_failed"]:
        if self._stopping or not self._want_online:
            return "ended"
        self._session_end.clear()
        # The gate bounds handshakes in flight (connect, online, subscribe), so a
        # large fleet or a reconnect storm does not stampede the broker. The client
        # is made inside it too: 10,000 idle clients waiting their turn cost memory.
        async with self._gate or contextlib.nullcontext():
            if self._stopping or not self._want_online:
                return "ended"
            client = self._new_client()
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                return self._connect_failed(str(exc) or type(exc).__name__)
            try:
                if not await self._publish_status(client, "online"):
                    raise aiomqtt.MqttError("no PUBACK for the online status")
                if self.behaviour.listen:
                    granted = await client.subscribe(
                        [(config_topic(self.device_id), 1), (commands_topic(self.device_id), 1)]
                    )
                    self._check_granted(granted)
            except aiomqtt.MqttError as exc:
                await self._close(client)
                return self._connect_failed(str(exc) or type(exc).__name__)
        self._client = client
        self.stats.connects += 1
        self.stats.devices_connected.add(self.device_id)
        self.last_error = None
        self.connected.set()
        self.offline.clear()
        self.first_attempt_done.set()
        if self._stopping or not self._want_online:
            self._session_end.set()  # asked to go away while the handshake ran
        try:
            return await self._connected_session(client)
        finally:
            self.connected.clear()
            self.offline.set()
            self._client = None
            await self._close(client)

    def _check_granted(self, granted: object) -> None:
        # A broker ACL that refuses the subscription answers 0x80; say so (once per
        # process, not 10,000 times) since config and commands then never arrive.
        global _warned_refused_subscription
        codes = granted if isinstance(granted, (list, tuple)) else []
        refused = any(getattr(c, "is_failure", c == 0x80) for c in codes)
        if refused and not _warned_refused_subscription:
            _warned_refused_subscription = True
            log.warning("%s: the broker refused the subscription to its config/commands topics (ACL?); "
                        "this device will not receive them", self.device_id)

    def _connect_failed(self, error: str) -> Literal["connect_failed"]:
        self.last_error = error
        self.stats.connect_failures += 1
        log.debug("%s: connect failed: %s", self.device_id, error)
        self.first_attempt_done.set()
        return "connect_failed"

    async def _connected_session(self, client: aiomqtt.Client) -> Literal["ended", "lost"]:
        receiver = asyncio.create_task(self._receive(client))
        if self._outbox:
            await self._flush_outbox(client)
        behaviours = [asyncio.create_task(self._heartbeat_loop())]
        b = self.behaviour
        if b.battery_drain > 0:
            behaviours.append(asyncio.create_task(self._battery_loop()))
        if b.press_rate > 0:
            behaviours.append(asyncio.create_task(self._poisson_loop(b.press_rate, self._random_press)))
        if b.fall_rate > 0:
            behaviours.append(asyncio.create_task(self._poisson_loop(b.fall_rate, self._random_fall)))
        if b.power_cut_rate > 0 or self._power_restore_at is not None:
            behaviours.append(asyncio.create_task(self._power_loop()))
        ender = asyncio.create_task(self._session_end.wait())
        try:
            await asyncio.wait([receiver, ender], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ender.cancel()
            for task in behaviours:
                task.cancel()
            await asyncio.gather(*behaviours, return_exceptions=True)

        if receiver.done():  # the connection went away without being asked to
            self.stats.connections_lost += 1
            log.info("%s: connection lost", self.device_id)
            return "lost"

        if self._end_mode == "drop":
            self._shutdown_socket(client)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await asyncio.gather(receiver, return_exceptions=True)
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            return "ended"

        # Clean end: let in-flight publishes get their PUBACK, say offline, DISCONNECT.
        # Through the gate like the connect, so stopping 10,000 devices is no stampede either.
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self.timeout)
        async with self._gate or contextlib.nullcontext():
            if self.behaviour.offline_on_stop:
                await self._publish_status(client, "offline")
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            await self._close(client)
        return "ended"

    @staticmethod
    def _shutdown_socket(client: aiomqtt.Client) -> None:
        # aiomqtt has no public way to drop a connection without DISCONNECT; the
        # paho client under it exposes its socket. Shutting the socket down makes
        # the broker see a broken connection, which is what fires the last will.
        sock = client._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

    # -------------------------------------------------------------- publishing

    async def _publish_status(self, client: aiomqtt.Client, status: str) -> bool:
        await self.limiter.acquire()
        return await self._publish_now(client, status_topic(self.device_id), f"status:{status}",
                                       lambda: status.encode(), retain=True)

    async def send_event(self, event_type: EventType | str, **fields: Any) -> bool:
        """Publish one event (QoS 1, waits for the PUBACK); True if the broker acknowledged it.

        Updates the device state the event describes (mains for power events,
        battery level for battery events) and fills the heartbeat and battery
        fields from that state when they are not given.
        """
        etype = EventType(event_type)
        fields = {k: v for k, v in fields.items() if v is not None}
        if etype is EventType.POWER_LOST:
            self.mains = False
        elif etype is EventType.POWER_RESTORED:
            self.mains = True
            self._power_restore_at = None
        elif etype is EventType.BATTERY:
            if "level" in fields:
                self.set_battery(fields["level"])
            else:
                fields["level"] = math.floor(self.battery_level())
            fields.setdefault("low", fields["level"] < LOW_BATTERY_BELOW)
        elif etype is EventType.HEARTBEAT:
            if "battery" in fields:
                self.set_battery(fields["battery"])
            if "mains" in fields:
                self.mains = bool(fields["mains"])
            self._rssi = max(-110, min(-40, self._rssi + self._rng.randint(-2, 2)))
            fields = {
                "battery": math.floor(self.battery_level()),
                "rssi": self._rssi,
                "mains": self.mains,
                **fields,
            }
        return await self._publish_event(etype.value, lambda: self._event_payload(etype.value, fields))

    async def send_raw(self, payload: bytes) -> bool:
        """Publish arbitrary bytes on the events topic, to test how the centre refuses them."""
        return await self._publish_event("raw", lambda: payload)

    def _event_payload(self, etype: str, fields: dict[str, Any]) -> bytes:
        self._seq += 1
        body = {"seq": self._seq, "ts": now_rfc3339(), "type": etype, "device_id": self.device_id, **fields}
        return json.dumps(body, separators=(",", ":")).encode()

    async def _publish_event(self, kind: str, payload: Callable[[], bytes]) -> bool:
        client = self._client
        if client is None or not self.connected.is_set():
            # Offline: the event still happened (seq and ts now); it waits in the outbox.
            self._queue(kind, payload(), "device offline")
            return False
        await self.limiter.acquire()
        # Shielded: a device being stopped still waits for the PUBACK of what it sent.
        task = asyncio.ensure_future(
            self._publish_now(client, self._topic_for(kind), kind, payload, keep=True)
        )
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    def _topic_for(self, kind: str) -> str:
        if self.behaviour.alarm_lane and kind in _ALARM_LANE_KINDS:
            return alarms_topic(self.device_id)
        return events_topic(self.device_id)

    def _queue(self, kind: str, data: bytes, why: str) -> None:
        # The protocol asks devices to keep an event until a PUBACK: the outbox is
        # sent first thing after the next connect, oldest first.
        if len(self._outbox) == self._outbox.maxlen:
            self.stats.outbox_dropped += 1
            self.stats.outbox -= 1
        self._outbox.append((kind, data))
        self.stats.outbox += 1
        text = data.decode("utf-8", "replace")
        self.console.message("!", self.device_id, self._topic_for(kind).rsplit("/", 1)[-1], f"{text} queued: {why}")

    async def _flush_outbox(self, client: aiomqtt.Client) -> None:
        while self._outbox:
            kind, data = self._outbox.popleft()
            self.stats.outbox -= 1
            await self.limiter.acquire()
            if not await self._publish_now(client, self._topic_for(kind), kind, lambda d=data: d,
                                           keep=True, front=True):
                return
            self.stats.resent += 1

    def _flush_outbox_now(self) -> None:
        """Send the outbox on the connection that is up, if one is.

        A publish in flight when a connection breaks fails only at its timeout, often after the
        device has reconnected and sent its outbox: without this it would wait for the next
        reconnect, however long that takes."""
        client = self._client
        if client is None or not self.connected.is_set():
            return  # the next connection sends the outbox first thing
        task = asyncio.ensure_future(self._flush_outbox(client))
        self._late_flushes.add(task)
        task.add_done_callback(self._late_flushes.discard)

    async def _publish_now(
        self,
        client: aiomqtt.Client,
        topic: str,
        kind: str,
        payload: Callable[[], bytes],
        retain: bool = False,
        keep: bool = False,
        front: bool = False,
    ) -> bool:
        # The payload (and its seq) is made right before the publish call, with no
        # await in between, so messages leave in seq order.
        data = payload()
        started = time.monotonic()
        try:
            await client.publish(topic, data, qos=1, retain=retain)
        except aiomqtt.MqttError as exc:
            self.stats.record_publish(kind, False, time.monotonic() - started)
            log.debug("%s: publish %s failed: %s", self.device_id, kind, exc)
            if not keep:
                self.console.message("!", self.device_id, topic.rsplit("/", 1)[-1],
                                     f"{data.decode('utf-8', 'replace')} failed: {exc}")
            elif front:  # an outbox event: back to the head of the line
                self._outbox.appendleft((kind, data))
                self.stats.outbox += 1
            else:
                self._queue(kind, data, f"no PUBACK ({exc})")
                self._flush_outbox_now()
            return False
        self.stats.record_publish(kind, True, time.monotonic() - started)
        self.console.message(">", self.device_id, topic.rsplit("/", 1)[-1], data)
        return True

    # --------------------------------------------------------------- behaviour

    async def _heartbeat_loop(self) -> None:
        # First beat at a random point of the interval so a fleet spreads out;
        # then every interval +-10 %, so it stays spread.
        first = True
        while True:
            interval = self.heartbeat_interval
            self._interval_changed.clear()
            if interval is None:
                await self._interval_changed.wait()
                continue
            delay = self._rng.uniform(0, interval) if first else interval * self._rng.uniform(0.9, 1.1)
            first = False
            try:
                async with asyncio.timeout(delay):
                    await self._interval_changed.wait()
                continue  # new interval from the config: plan again from now
            except TimeoutError:
                pass
            await self.send_event(EventType.HEARTBEAT)

    async def _battery_loop(self) -> None:
        # Sleep exactly until the next 10 % step instead of polling.
        while True:
            level = self.battery_level()
            if level <= 0 or self._drain_per_s <= 0:
                return
            step = math.ceil(level / 10) * 10 - 10
            self._battery_changed.clear()
            try:
                async with asyncio.timeout((level - step) / self._drain_per_s):
                    await self._battery_changed.wait()
                continue  # level set from outside: plan again
            except TimeoutError:
                pass
            self.set_battery(step)
            self._battery_changed.clear()
            await self.send_event(EventType.BATTERY, level=step)

    async def _poisson_loop(self, per_hour: float, fire: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(self._rng.expovariate(per_hour / 3600.0))
            await fire()

    async def _random_press(self) -> None:
        await self.send_event(EventType.BUTTON_PRESS)

    async def _random_fall(self) -> None:
        await self.send_event(EventType.FALL_DETECTED, confidence=round(self._rng.uniform(0.6, 0.99), 2))

    async def _power_loop(self) -> None:
        b = self.behaviour
        while True:
            if self._power_restore_at is None:
                if b.power_cut_rate <= 0:
                    return
                await asyncio.sleep(self._rng.expovariate(b.power_cut_rate / 3600.0))
                if not self.mains:
                    continue
                self._power_restore_at = time.monotonic() + b.power_cut_duration * self._rng.uniform(0.5, 1.5)
                await self.send_event(EventType.POWER_LOST)
            await asyncio.sleep(max(0.0, self._power_restore_at - time.monotonic()))
            await self.send_event(EventType.POWER_RESTORED)

    # ----------------------------------------------------------------- receive

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Handle config and commands until the connection ends."""
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                topic = message.topic.value
                payload = message.payload
                if not isinstance(payload, bytes):
                    payload = str(payload).encode()
                kind = topic.rsplit("/", 1)[-1]
                self.stats.received[kind] += 1
                self.console.message("<", self.device_id, kind, payload)
                if kind == "config":
                    await self._on_config(payload)
                elif kind == "commands":
                    await self._on_command(payload)

    async def _on_config(self, payload: bytes) -> None:
        if not payload:
            return  # an empty retained message only clears the retained config
        decision = check_config(payload)
        if decision.version is None:
            if payload == self._last_bad_config:
                return  # the same unreadable retained config again (reconnect)
            self._last_bad_config = payload
            log.warning("%s: config refused: %s", self.device_id, decision.reason)
            await self.send_event(EventType.CONFIG_FAILED, version=0, reason=decision.reason)
            return
        if self.config_version is not None and decision.version <= self.config_version:
            log.debug("%s: config version %s already answered", self.device_id, decision.version)
            return
        self.config_version = decision.version
        if not decision.ok:
            log.warning("%s: config version %s refused: %s",
                        self.device_id, decision.version, decision.reason)
            await self.send_event(EventType.CONFIG_FAILED, version=decision.version, reason=decision.reason)
            return
        if decision.heartbeat_interval is not None:
            self.set_heartbeat_interval(decision.heartbeat_interval)
        await self.send_event(EventType.CONFIG_APPLIED, version=decision.version)

    async def _on_command(self, payload: bytes) -> None:
        try:
            data = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            data = None
        command = data.get("command") if isinstance(data, dict) else None
        if command == "test_call":
            await self.send_event(EventType.TEST_CALL)
        else:
            log.warning("%s: unknown command ignored: %s",
                        self.device_id, payload[:200].decode("utf-8", "replace"))


async def press_once(
    broker: BrokerAddress,
    device_id: str,
    event_type: EventType | str = EventType.BUTTON_PRESS,
    *,
    fields: dict[str, Any] | None = None,
    console: Console | None = None,
    offline_after: bool = False,
    client_id: str | None = None,
    serial_login: bool = False,
    timeout: float = 10.0,
    alarm_lane: bool = True,
) -> Stats:
    """Connect as one device, publish ``online`` and one event, disconnect cleanly.

    The clean DISCONNECT means the broker discards the last will, and by default
    no ``offline`` is published either: the serial may be running in a fleet at
    the same moment, and a one-shot press must not mark it offline. For the same
    reason the MQTT client id is the serial plus ``-press-<pid>``, so the broker
    does not hand the fleet's connection over to this one.
    """
    stats = Stats(devices=1)
    behaviour = DeviceBehaviour(heartbeat_interval=None, battery_drain=0.0, listen=False,
                                offline_on_stop=offline_after, alarm_lane=alarm_lane)
    dev = SimDevice(device_id, broker, behaviour, stats=stats, console=console, timeout=timeout,
                    client_id=client_id or f"{device_id}-press-{os.getpid()}", serial_login=serial_login)
    task = asyncio.create_task(dev.run())
    try:
        await dev.first_attempt_done.wait()
        if not dev.connected.is_set():
            raise SimulatorError(f"could not connect to {broker.display()}: {dev.last_error}")
        await dev.send_event(event_type, **(fields or {}))
    finally:
        await dev.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        stats.ended = time.monotonic()
    return stats
