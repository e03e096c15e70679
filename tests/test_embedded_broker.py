"""The embedded brokers: authentication, bound client ids, offline queue, topic permissions, port handling, stop."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from alarmcentre.broker import (
    BrokerError,
    BrokerPortInUseError,
    BrokerUser,
    EmbeddedBroker,
    ensure_port_free,
    start_embedded_broker,
)
from alarmcentre.broker import mosquitto as mosquitto_mod
from alarmcentre.broker.acl import Acl, centre_acl_text, device_acl_text, embedded_acl_text, topic_matches

REPO = Path(__file__).resolve().parents[1]
P = "alarmcentre/v1/devices"
USERS = [BrokerUser("alarmcentre", "centre-pw"), BrokerUser("d1", "d1-pw"), BrokerUser("d2", "d2-pw")]
PASSWORDS = {u.username: u.password for u in USERS}

MOSQUITTO = mosquitto_mod.find_mosquitto()


def need_mosquitto() -> None:
    if MOSQUITTO is None:
        msg = "no mosquitto 2.x binary on PATH: the embedded Mosquitto tests need it (apt install mosquitto)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; in CI it is required")
        pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["mosquitto", "amqtt"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "mosquitto":
        need_mosquitto()
    return request.param


@pytest.fixture
def broker(kind: str, tmp_path: Path) -> Iterator[EmbeddedBroker]:
    b = start_embedded_broker(kind=kind, data_dir=tmp_path, port=free_port(), users=USERS)  # type: ignore[arg-type]
    try:
        yield b
    finally:
        b.stop()


class Client:
    """A paho client that waits for CONNACK and collects what it receives."""

    def __init__(self, port: int, username: str | None, password: str | None = None, *,
                 client_id: str | None = None, clean_session: bool = True) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.connack: mqtt.ReasonCode | None = None
        self.disconnects = 0
        # A device's client id is its username, as on real devices.
        client_id = client_id if client_id is not None else (username or "")
        self._connected = threading.Event()
        self._subacks: dict[int, threading.Event] = {}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        if username is not None:
            self.c.username_pw_set(username, password if password is not None else PASSWORDS.get(username))
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.append(m)
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self._subacks.setdefault(mid, threading.Event()).set()
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert self._connected.wait(10), "no CONNACK"

    def _on_connect(self, c: mqtt.Client, u: object, flags: object, rc: mqtt.ReasonCode, p: object) -> None:
        if self.connack is None:
            self.connack = rc
        self._connected.set()

    def _on_disconnect(self, c: mqtt.Client, u: object, flags: object, rc: mqtt.ReasonCode, p: object) -> None:
        self.disconnects += 1

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic_filter: str) -> None:
        _, mid = self.c.subscribe(topic_filter, qos=1)
        assert self._subacks.setdefault(mid, threading.Event()).wait(5), "no SUBACK"

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return [m.payload.decode() for m in self.messages]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_authenticated_client_connects_and_others_are_refused(broker: EmbeddedBroker) -> None:
    for port, username in [(broker.centre_port, "alarmcentre"), (broker.port, "d1")]:
        ok = Client(port, username)
        assert ok.accepted, username
        ok.close()
    refused = [(broker.centre_port, "alarmcentre", "wrong"), (broker.centre_port, "nobody", "centre-pw"),
               (broker.centre_port, None, None), (broker.port, "d1", "wrong"), (broker.port, None, None)]
    if broker.centre_port != broker.port:  # Mosquitto: no device login opens the centre's listener
        refused += [(broker.centre_port, "d1", "d1-pw"), (broker.port, "alarmcentre", "centre-pw")]
    for port, username, password in refused:
        c = Client(port, username, password, client_id="probe")
        assert not c.accepted, f"{username!r} with {password!r} was let in on {port}"
        c.c.loop_stop()


def test_a_device_cannot_take_the_centres_client_id(broker: EmbeddedBroker, request: pytest.FixtureRequest) -> None:
    """A device login connecting as the ingest must neither drop it nor discard its session."""
    if broker.kind == "amqtt":
        # Known and documented (docs/brokers.md): amqtt 0.12 discards a client id's session before
        # it authenticates the newcomer, so refusing the connect comes too late. Strict: if amqtt
        # ever stops doing so, this test says so.
        request.applymarker(pytest.mark.xfail(strict=True, reason="amqtt 0.12 discards the session before "
                                              "authenticating the newcomer (demo-grade broker)"))
    centre = Client(broker.centre_port, "alarmcentre", client_id="alarmcentre-ingest", clean_session=False)
    centre.subscribe(f"{P}/+/events")
    for _ in range(5):
        hostile = Client(broker.port, "d2", client_id="alarmcentre-ingest", clean_session=True)
        # Mosquitto lets it in under its own name (use_username_as_clientid); amqtt refuses it.
        assert hostile.accepted == (broker.kind == "mosquitto")
        hostile.close() if hostile.accepted else hostile.c.loop_stop()
    d1 = Client(broker.port, "d1")
    for i in range(10):
        d1.publish(f"{P}/d1/events", f"alarm {i}")
    d1.close()
    assert centre.wait_for(10) == [f"alarm {i}" for i in range(10)]
    assert centre.disconnects == 0, "the centre's connection was taken over"
    centre.close()


def test_persistent_session_gets_messages_published_while_offline(broker: EmbeddedBroker) -> None:
    centre = Client(broker.centre_port, "alarmcentre", client_id="test-ingest", clean_session=False)
    centre.subscribe(f"{P}/+/events")
    centre.close()
    for dev in ("d1", "d2"):
        device = Client(broker.port, dev)
        for i in range(10):
            device.publish(f"{P}/{dev}/events", f"alarm {dev} {i}")
        device.close()
    centre = Client(broker.centre_port, "alarmcentre", client_id="test-ingest", clean_session=False)
    got = centre.wait_for(20)
    centre.close()
    assert sorted(got) == sorted(f"alarm {dev} {i}" for dev in ("d1", "d2") for i in range(10))


def test_topic_permissions(broker: EmbeddedBroker) -> None:
    centre = Client(broker.centre_port, "alarmcentre")
    centre.subscribe("#")  # granted, but only readable topics are delivered
    d1 = Client(broker.port, "d1")
    d1.subscribe(f"{P}/+/config")
    d1.publish(f"{P}/d1/events", "own")  # allowed
    d1.publish(f"{P}/d2/events", "forged")  # another device's topic: dropped
    centre.publish(f"{P}/d1/config", "cfg1")  # the centre may write, not read, configurations
    centre.publish(f"{P}/d2/config", "cfg2")
    time.sleep(0.5)
    assert centre.wait_for(1) == ["own"]
    assert d1.wait_for(1) == ["cfg1"]
    centre.close()
    d1.close()


def test_retained_configuration_reaches_only_its_device(broker: EmbeddedBroker) -> None:
    centre = Client(broker.centre_port, "alarmcentre")
    d2 = Client(broker.port, "d2", clean_session=False)
    d2.subscribe(f"{P}/d2/config")  # another client's subscription: amqtt 0.12.1 used to leak through it
    for dev in ("d1", "d2"):
        centre.publish(f"{P}/{dev}/config", f"cfg-{dev}", retain=True)
    time.sleep(0.3)
    d1 = Client(broker.port, "d1")
    d1.subscribe(f"{P}/d1/config")
    time.sleep(0.5)
    assert [(m.topic, m.payload.decode()) for m in d1.messages] == [(f"{P}/d1/config", "cfg-d1")]
    for dev in ("d1", "d2"):
        centre.publish(f"{P}/{dev}/config", "", retain=True)
    for c in (centre, d1, d2):
        c.close()


def test_stop_frees_the_port(kind: str, tmp_path: Path) -> None:
    port = free_port()
    b = start_embedded_broker(kind=kind, data_dir=tmp_path, port=port, users=USERS)  # type: ignore[arg-type]
    with pytest.raises(BrokerPortInUseError):
        ensure_port_free(port)
    b.stop()
    ensure_port_free(port)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    b.stop()  # a second stop is harmless


@pytest.mark.parametrize("kind_asked", ["auto", "mosquitto", "amqtt"])
def test_port_in_use_is_a_clear_error(kind_asked: str, tmp_path: Path) -> None:
    if kind_asked == "mosquitto":
        need_mosquitto()
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(BrokerPortInUseError) as e:
            start_embedded_broker(kind=kind_asked, data_dir=tmp_path, port=port, users=USERS)  # type: ignore[arg-type]
    text = str(e.value)
    assert str(port) in text and "--broker-port" in text and "ALARMCENTRE_BROKER_PORT" in text


def test_auto_prefers_mosquitto_and_says_it_is_for_the_demo(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    need_mosquitto()
    with caplog.at_level(logging.WARNING, logger="alarmcentre.broker"):
        b = start_embedded_broker(kind="auto", data_dir=tmp_path, port=free_port(), users=USERS)
    b.stop()
    assert b.kind == "mosquitto"
    assert "demo" in caplog.text


def test_auto_falls_back_to_amqtt_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mosquitto_mod, "find_mosquitto", lambda: None)
    with caplog.at_level(logging.WARNING, logger="alarmcentre.broker"):
        b = start_embedded_broker(kind="auto", data_dir=tmp_path, port=free_port(), users=USERS)
    b.stop()
    assert b.kind == "amqtt"
    assert "DEMO-GRADE" in caplog.text and "never face real devices" in caplog.text
    with pytest.raises(BrokerError, match="mosquitto"):
        start_embedded_broker(kind="mosquitto", data_dir=tmp_path, port=free_port(), users=USERS)


def test_mosquitto_keeps_queued_messages_across_a_restart(tmp_path: Path) -> None:
    need_mosquitto()
    b = start_embedded_broker(kind="mosquitto", data_dir=tmp_path, port=free_port(), users=USERS)
    centre = Client(b.centre_port, "alarmcentre", client_id="test-ingest", clean_session=False)
    centre.subscribe(f"{P}/+/events")
    centre.close()
    dev = Client(b.port, "d1")
    for i in range(5):
        dev.publish(f"{P}/d1/events", f"alarm {i}")
    dev.close()
    b.stop()  # SIGTERM: Mosquitto writes its persistence file
    b.start()
    try:
        centre = Client(b.centre_port, "alarmcentre", client_id="test-ingest", clean_session=False)
        assert centre.wait_for(5) == [f"alarm {i}" for i in range(5)]
        centre.close()
    finally:
        b.stop()


def test_mosquitto_accepts_the_password_file_written_without_mosquitto_passwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_mosquitto()
    real_which = mosquitto_mod.shutil.which
    monkeypatch.setattr(mosquitto_mod.shutil, "which",
                        lambda name, **kw: None if name == "mosquitto_passwd" else real_which(name, **kw))
    b = start_embedded_broker(kind="mosquitto", data_dir=tmp_path, port=free_port(), users=USERS)
    try:
        files = [tmp_path / "mosquitto" / name for name in ("passwords", "centre-passwords")]
        assert sum(f.read_text().count(":$7$101$") for f in files) == len(USERS)
        assert Client(b.port, "d1").accepted
        assert not Client(b.port, "d1", "wrong").accepted
        assert Client(b.centre_port, "alarmcentre").accepted
    finally:
        b.stop()


def test_mosquitto_dies_with_its_parent(tmp_path: Path) -> None:
    need_mosquitto()
    port = free_port()
    code = (
        "import sys, time; from pathlib import Path\n"
        "from alarmcentre.broker import BrokerUser, start_embedded_broker\n"
        f"b = start_embedded_broker(kind='mosquitto', data_dir=Path({str(tmp_path)!r}), port={port},"
        " users=[BrokerUser('alarmcentre', 'x')])\n"
        "print(b.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("mosquitto outlived its parent")
    ensure_port_free(port)


def _settings(text: str) -> dict[str, str]:
    keys = ("persistence", "autosave_interval", "autosave_on_changes", "max_queued_messages",
            "max_queued_bytes", "max_inflight_messages", "allow_anonymous", "per_listener_settings",
            "use_username_as_clientid", "max_packet_size")
    found = re.findall(r"^(\w+)\s+(\S+)\s*$", text, flags=re.M)
    return {k: v for k, v in found if k in keys}


def test_embedded_mosquitto_uses_the_production_queue_settings() -> None:
    production = _settings((REPO / "config/mosquitto/mosquitto.conf").read_text())
    embedded = _settings((REPO / "alarmcentre/broker/mosquitto-embedded.conf").read_text())
    assert embedded == production
    assert production["max_queued_messages"] == "1000000" and production["allow_anonymous"] == "false"
    assert production["use_username_as_clientid"] == "true" and production["per_listener_settings"] == "true"
    assert production["max_packet_size"] == "16384"


def test_acl_rules() -> None:
    acl = Acl.parse(embedded_acl_text())
    assert acl.allows("alarmcentre", "ingest", f"{P}/d1/events", "read")
    assert acl.allows("alarmcentre", "ingest", f"{P}/d1/commands", "write")
    assert not acl.allows("alarmcentre", "ingest", f"{P}/d1/config", "read")
    assert not acl.allows("device", "sim", f"{P}/anything/status", "write")  # no shared device login
    assert acl.allows("d1", "d1", f"{P}/d1/config", "read")
    assert not acl.allows("d1", "d1", f"{P}/d2/config", "read")
    assert not acl.allows("d1", "d1", f"{P}/d1/events", "read")
    assert not acl.allows("+", "x", f"{P}/+/events", "write")  # no wildcard usernames in patterns
    assert not acl.allows(None, "x", f"{P}/d1/events", "write")
    # Production has the same rules, each on its listener.
    devices = Acl.parse((REPO / "config/mosquitto/acl").read_text())
    centre = Acl.parse((REPO / "config/mosquitto/centre-acl").read_text())
    assert devices.user_rules == {} and devices.pattern_rules == Acl.parse(device_acl_text()).pattern_rules
    assert centre.pattern_rules == [] and centre.user_rules == Acl.parse(centre_acl_text()).user_rules
    assert centre.user_rules["alarmcentre"] == acl.user_rules["alarmcentre"]
    assert devices.pattern_rules == acl.pattern_rules
    assert devices.allows("d7", "d7", f"{P}/d7/events", "write")
    assert topic_matches("a/b", "a/#") and topic_matches("a", "a/#") and not topic_matches("a/b/c", "a/+")
