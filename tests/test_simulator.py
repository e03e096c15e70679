"""The device simulator against a real Mosquitto broker.

Each test module run starts its own ``mosquitto`` on a free port (never the
system service), subscribes with a plain paho client and checks what the
simulator publishes with the centre's own parser. Without the binary the broker
tests are skipped, except in CI (``CI=true``, or ``ALARMCENTRE_REQUIRE_SERVICES=1``), where
that is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarmcentre.ingest.protocol import (
    ParsedEvent,
    commands_topic,
    config_topic,
    parse_message,
)
from alarmcentre_sim.connection import BrokerAddress, SimulatorError, serials
from alarmcentre_sim.device import check_config
from alarmcentre_sim.fleet import Fleet
from alarmcentre_sim.scenario import ScenarioError, parse_scenario, run_scenario
from alarmcentre_sim.stats import Console, RateLimiter

MOSQUITTO = os.environ.get("ALARMCENTRE_TEST_MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- broker helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_mosquitto(directory: Path, port: int, extra: str = "") -> subprocess.Popen[bytes]:
    conf = directory / f"mosquitto-{port}.conf"
    anonymous = "false" if "password_file" in extra else "true"
    # Started as root, mosquitto would switch to the "mosquitto" user and could not read our
    # password file in a private temp directory: keep the current user.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous {anonymous}\nmax_connections -1\npersistence false\n"
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n" + extra
    )
    log = open(directory / f"mosquitto-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mosquitto exited at start: {(directory / f'mosquitto-{port}.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("mosquitto did not start listening within 10 s")


def _stop_mosquitto(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _need_mosquitto() -> None:
    if not os.path.exists(MOSQUITTO):
        message = f"mosquitto binary not found at {MOSQUITTO}: install mosquitto to run these tests"
        if os.environ.get("CI") == "true" or os.environ.get("ALARMCENTRE_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _need_mosquitto()
    port = _free_port()
    proc = _start_mosquitto(tmp_path_factory.mktemp("mosquitto"), port)
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        _stop_mosquitto(proc)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float

    @property
    def device(self) -> str:
        return self.topic.split("/")[3]

    @property
    def kind(self) -> str:
        return self.topic.rsplit("/", 1)[-1]

    def event(self) -> dict[str, object]:
        return json.loads(self.payload)


class Recorder:
    """A paho subscriber that keeps every message, for assertions from the test thread."""

    def __init__(self, url: str, *topics: str, only: str = "") -> None:
        address = BrokerAddress.from_url(url)
        self.only = only  # keep only devices whose serial starts with this
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}")
        if address.username:
            self.client.username_pw_set(address.username, address.password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert self._subscribed.wait(5), "subscription not acknowledged"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.topic.split("/")[3].startswith(self.only):
            return
        with self._lock:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain), time.monotonic()))

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def events(self, device: str | None = None, type_: str | None = None) -> list[Received]:
        return [
            m for m in self.snapshot()
            if m.kind in ("events", "alarms") and (device is None or m.device == device)
            and (type_ is None or m.event().get("type") == type_)
        ]

    def statuses(self, device: str) -> list[Received]:
        return [m for m in self.snapshot() if m.kind == "status" and m.device == device]

    def wait_until(self, condition: Callable[[], object], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.02)
        return bool(condition())

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def recorder_factory(broker_url: str) -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(*topics: str, only: str = "") -> Recorder:
        rec = Recorder(broker_url, *topics, only=only)
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.close()


def _uid() -> str:
    return uuid.uuid4().hex[:6].upper()


def _valid(msg: Received) -> ParsedEvent:
    """What the centre's ingest makes of the message; fails the test if it would be refused."""
    result = parse_message(msg.topic, msg.payload, received_at=datetime.now(UTC))
    assert isinstance(result, ParsedEvent), f"centre refuses {msg.payload!r}: {result}"
    return result


def _sim(*args: str, url: str) -> list[str]:
    return [sys.executable, "-m", "alarmcentre_sim", *args, "--url", url]


def _sim_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# -------------------------------------------------------------------- scenarios


def test_scenario_steps_arrive_in_order_and_disconnect_fires_last_will(
    broker_url: str, recorder_factory: Callable[..., Recorder]
) -> None:
    dev = f"T{_uid()}-1"
    rec = recorder_factory(f"alarmcentre/v1/devices/{dev}/#")
    scenario = parse_scenario(f"""
devices: [{dev}]
linger: 0
steps:
  - {{at: 0, device: {dev}, type: heartbeat}}
  - {{at: 0.3, device: {dev}, type: button_press}}
  - {{at: 0.6, device: {dev}, type: cancel}}
  - {{at: 0.6, device: {dev}, type: battery, level: 15}}
  - {{at: 0.7, device: {dev}, type: fall_detected, confidence: 0.8}}
  - {{at: 0.8, device: {dev}, type: power_lost}}
  - {{at: 0.8, device: {dev}, type: heartbeat}}
  - {{at: 0.9, device: {dev}, action: disconnect}}
""")
    started = time.monotonic()
    stats = asyncio.run(run_scenario(scenario, broker_url))
    assert stats.total_failed == 0
    assert rec.wait_until(lambda: [m.payload for m in rec.statuses(dev)] == [b"online", b"offline"], 5)

    events = rec.events(dev)
    parsed = [_valid(m) for m in events]
    assert [p.type.value for p in parsed] == [
        "heartbeat", "button_press", "cancel", "battery", "fall_detected", "power_lost", "heartbeat"
    ]
    seqs = [p.event.seq for p in parsed]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # seq starts at the Unix time in ms, so it only grows across restarts.
    assert abs(seqs[0] - time.time() * 1000) < 60_000
    first, battery, fall, last = events[0].event(), events[3].event(), events[4].event(), events[6].event()
    assert first["device_id"] == dev and first["mains"] is True and first["battery"] == 100
    assert battery["level"] == 15 and battery["low"] is True
    assert fall["confidence"] == 0.8
    assert last["mains"] is False
    # Timing follows 'at' (from connection): the press ~0.3 s after the first heartbeat.
    assert 0.2 < events[1].at - events[0].at < 1.0
    assert time.monotonic() - started < 5
    # The offline came from the broker (last will): the device sent no DISCONNECT.
    assert stats.published["status:offline"] == 0
    late = recorder_factory(f"alarmcentre/v1/devices/{dev}/status")
    assert late.wait_until(lambda: late.statuses(dev), 3)
    assert late.statuses(dev)[0].payload == b"offline" and late.statuses(dev)[0].retain


def test_scenario_clean_disconnect_and_reconnect(
    broker_url: str, recorder_factory: Callable[..., Recorder]
) -> None:
    dev = f"T{_uid()}-2"
    rec = recorder_factory(f"alarmcentre/v1/devices/{dev}/#")
    scenario = parse_scenario(f"""
devices: [{dev}]
linger: 0
steps:
  - {{at: 0, type: test_call}}
  - {{at: 0.1, action: clean_disconnect}}
  - {{at: 0.15, type: button_press}}     # while offline: kept, sent after the reconnect
  - {{at: 0.4, action: connect}}
  - {{at: 0.5, type: pull_cord}}
  - {{at: 0.5, raw: "not json"}}
""")
    stats = asyncio.run(run_scenario(scenario, broker_url))
    assert stats.total_failed == 0 and stats.undelivered == 0 and stats.resent == 1
    assert rec.wait_until(lambda: len(rec.statuses(dev)) == 4, 5)
    assert [m.payload for m in rec.statuses(dev)] == [b"online", b"offline", b"online", b"offline"]
    assert stats.published["status:offline"] == 2  # both by the device itself
    events = rec.events(dev)
    assert [e.payload for e in events][-1] == b"not json"
    parsed = [_valid(e) for e in events[:-1]]
    assert [p.type.value for p in parsed] == ["test_call", "button_press", "pull_cord"]
    assert [p.event.seq for p in parsed] == sorted(p.event.seq for p in parsed)
    # The press kept the time it happened, before the reconnect (second "online").
    second_online = rec.statuses(dev)[2].at
    assert events[1].at >= second_online
    assert 0.15 <= (parsed[2].event.ts - parsed[1].event.ts).total_seconds() < 1.0


BAD_SCENARIOS = {
    "level out of range": ("devices: [A1]\nsteps:\n  - {at: 0, type: heartbeat}\n"
                           "  - {at: 1, type: battery, level: 150}\n", ["step 2", "line 4", "level"]),
    "unknown type": ("devices: [A1]\nsteps:\n  - {at: 0, type: button_pres}\n", ["step 1", "type"]),
    "field of another type": ("devices: [A1]\nsteps:\n  - {at: 0, type: cancel, level: 3}\n",
                              ["step 1", "cancel events have no field level"]),
    "negative time": ("devices: [A1]\nsteps:\n  - {at: -1, type: cancel}\n", ["step 1", "at"]),
    "typo in a field": ("devices: [A1]\nsteps:\n  - {at: 0, type: heartbeat, levle: 3}\n",
                        ["step 1", "levle", "Extra inputs"]),
    "unknown device": ("devices: [A1, A2]\nsteps:\n  - {at: 0, device: A1, type: cancel}\n"
                       "  - {at: 0, device: A9, type: cancel}\n", ["step 2", "A9", "not in 'devices'"]),
    "device missing": ("devices: [A1, A2]\nsteps:\n  - {at: 0, type: cancel}\n",
                       ["step 1", "'device' is needed"]),
    "type and action": ("devices: [A1]\nsteps:\n  - {at: 0, type: cancel, action: connect}\n",
                        ["step 1", "exactly one"]),
    "bad action": ("devices: [A1]\nsteps:\n  - {at: 0, action: explode}\n", ["step 1", "action"]),
    "no steps": ("devices: [A1]\nsteps: []\n", ["steps"]),
    "not yaml": ("devices: [A1\nsteps:\n", ["line", "not valid YAML"]),
    "not a mapping": ("- 1\n- 2\n", ["mapping"]),
    "bad serial": ("devices: ['A/1']\nsteps:\n  - {at: 0, type: cancel}\n", ["devices"]),
}


@pytest.mark.parametrize("name", sorted(BAD_SCENARIOS))
def test_bad_scenario_gives_a_clear_error(name: str) -> None:
    text, expected = BAD_SCENARIOS[name]
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml:")
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_bad_scenario_file_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_SCENARIOS["level out of range"][0])
    done = subprocess.run(_sim("scenario", str(path), url="mqtt://127.0.0.1:9"), capture_output=True,
                          text=True, env=_sim_env(), timeout=30)
    assert done.returncode == 2
    assert "step 2, line 4" in done.stderr and "less than or equal to 100" in done.stderr
    assert "Traceback" not in done.stderr
    for example in sorted((ROOT / "examples" / "scenarios").glob("*.yaml")):
        ok = subprocess.run(_sim("scenario", "--check", str(example), url="mqtt://127.0.0.1:9"),
                            capture_output=True, text=True, env=_sim_env(), timeout=30)
        assert ok.returncode == 0, f"{example.name}: {ok.stderr}"


# ----------------------------------------------------- status, config, commands


def test_online_is_retained_and_killed_process_leaves_last_will(
    broker_url: str, recorder_factory: Callable[..., Recorder]
) -> None:
    prefix = f"K{_uid()}-"
    devices = serials(prefix, 3)
    rec = recorder_factory("alarmcentre/v1/devices/+/status", only=prefix)
    proc = subprocess.Popen(_sim("run", "--devices", "3", "--prefix", prefix, "--heartbeat-interval", "0",
                                 url=broker_url), env=_sim_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert rec.wait_until(lambda: all(rec.statuses(d) for d in devices), 10)
        late = recorder_factory("alarmcentre/v1/devices/+/status", only=prefix)
        assert late.wait_until(lambda: all(late.statuses(d) for d in devices), 3)
        assert all(late.statuses(d)[0].payload == b"online" and late.statuses(d)[0].retain for d in devices)
    finally:
        proc.kill()  # no DISCONNECT: the broker must publish every device's will
        proc.wait(10)
    assert rec.wait_until(lambda: all(rec.statuses(d)[-1].payload == b"offline" for d in devices), 5)


def test_config_is_applied_once_and_bad_config_refused(
    broker_url: str, recorder_factory: Callable[..., Recorder]
) -> None:
    dev = f"C{_uid()}-1"
    rec = recorder_factory(f"alarmcentre/v1/devices/{dev}/+")
    # Retained before the device exists, as the centre leaves it for a device that is off.
    config = {"version": 3, "heartbeat_interval": 1, "led": "on"}  # unknown settings are ignored
    rec.publish(config_topic(dev), json.dumps(config), retain=True)
    fleet = Fleet(broker_url, [dev], heartbeat_interval=3600, battery_drain=0)
    fleet.start_in_thread()
    try:
        assert fleet.wait_connected(10)
        assert rec.wait_until(lambda: rec.events(dev, "config_applied"), 5)
        assert rec.events(dev, "config_applied")[0].event()["version"] == 3
        # The new interval is in force: 1 s instead of an hour.
        assert rec.wait_until(lambda: len(rec.events(dev, "heartbeat")) >= 2, 4)

        rec.publish(config_topic(dev), json.dumps({"version": 4, "heartbeat_interval": -5}), retain=True)
        assert rec.wait_until(lambda: rec.events(dev, "config_failed"), 5)
        failed = rec.events(dev, "config_failed")[0].event()
        assert failed["version"] == 4 and "heartbeat_interval" in str(failed["reason"])

        rec.publish(config_topic(dev), b"{not json", retain=True)
        assert rec.wait_until(lambda: len(rec.events(dev, "config_failed")) == 2, 5)
        assert rec.events(dev, "config_failed")[1].event()["version"] == 0

        # Versions already answered are not answered again; a newer one is.
        rec.publish(config_topic(dev), json.dumps({"version": 3, "heartbeat_interval": 1}))
        rec.publish(config_topic(dev), json.dumps({"version": 5}))
        assert rec.wait_until(lambda: len(rec.events(dev, "config_applied")) == 2, 5)
        time.sleep(0.3)
        assert [e.event()["version"] for e in rec.events(dev, "config_applied")] == [3, 5]
    finally:
        rec.publish(config_topic(dev), b"", retain=True)  # clear the retained config
        stats = fleet.stop()
    assert stats.total_failed == 0
    assert stats.received["config"] >= 5
    for msg in rec.events(dev):
        _valid(msg)


def test_test_call_command_is_answered_and_unknown_ignored(
    broker_url: str, recorder_factory: Callable[..., Recorder]
) -> None:
    dev = f"M{_uid()}-1"
    rec = recorder_factory(f"alarmcentre/v1/devices/{dev}/+")
    fleet = Fleet(broker_url, [dev], heartbeat_interval=None, battery_drain=0)
    fleet.start_in_thread()
    try:
        assert fleet.wait_connected(10)
        rec.publish(commands_topic(dev), json.dumps({"command": "self_destruct"}))
        rec.publish(commands_topic(dev), b"\xff garbage")
        rec.publish(commands_topic(dev), json.dumps({"command": "test_call"}))
        assert rec.wait_until(lambda: rec.events(dev), 5)
        time.sleep(0.3)
        assert [_valid(m).type.value for m in rec.events(dev)] == ["test_call"]
        assert fleet.press(dev, "pull_cord")  # library use from another thread
        assert rec.wait_until(lambda: rec.events(dev, "pull_cord"), 5)
    finally:
        stats = fleet.stop()
    assert stats.received["commands"] == 3
    assert stats.published["test_call"] == 1 and stats.total_failed == 0


def test_alarms_go_on_the_alarm_lane_and_legacy_devices_send_them_with_the_events(
    broker_url: str, recorder_factory: Callable[..., Recorder]
) -> None:
    dev = f"L{_uid()}-1"
    rec = recorder_factory(f"alarmcentre/v1/devices/{dev}/+")
    for extra in ([], ["--legacy-alarm-topic"]):
        for kind in ("button_press", "test_call"):
            done = subprocess.run(_sim("press", dev, "--type", kind, *extra, url=broker_url),
                                  capture_output=True, text=True, env=_sim_env(), timeout=30)
            assert done.returncode == 0, done.stderr
    assert rec.wait_until(lambda: len(rec.events(dev)) == 4, 5)
    assert [(m.kind, m.event()["type"]) for m in rec.events(dev)] == [
        ("alarms", "button_press"), ("events", "test_call"), ("events", "button_press"), ("events", "test_call")]
    for msg in rec.events(dev):
        _valid(msg)  # the centre takes each from where it came


def test_press_one_shot_disconnects_without_last_will(
    broker_url: str, recorder_factory: Callable[..., Recorder]
) -> None:
    dev = f"P{_uid()}-1"
    rec = recorder_factory(f"alarmcentre/v1/devices/{dev}/#")
    done = subprocess.run(_sim("press", dev, "--type", "fall_detected", "--confidence", "0.9",
                               url=broker_url), capture_output=True, text=True, env=_sim_env(), timeout=30)
    assert done.returncode == 0, done.stderr
    assert rec.wait_until(lambda: rec.events(dev), 5)
    time.sleep(0.5)  # a last will would arrive now
    assert [m.payload for m in rec.statuses(dev)] == [b"online"]
    (event,) = rec.events(dev)
    assert _valid(event).type.value == "fall_detected" and event.event()["confidence"] == 0.9

    done = subprocess.run(_sim("press", dev, "--offline-after", url=broker_url), capture_output=True,
                          text=True, env=_sim_env(), timeout=30)
    assert done.returncode == 0, done.stderr
    assert rec.wait_until(lambda: len(rec.statuses(dev)) == 3, 5)
    assert [m.payload for m in rec.statuses(dev)][-1] == b"offline"
    seqs = [_valid(m).event.seq for m in rec.events(dev)]
    assert seqs[1] > seqs[0]
    rec.publish(f"alarmcentre/v1/devices/{dev}/status", b"", retain=True)

    done = subprocess.run(_sim("press", dev, url="mqtt://127.0.0.1:9"), capture_output=True, text=True,
                          env=_sim_env(), timeout=30)
    assert done.returncode == 1 and "could not connect" in done.stderr


# ------------------------------------------------------------------------ fleets


def test_fleet_of_200_sends_heartbeats_from_every_device(
    broker_url: str, recorder_factory: Callable[..., Recorder]
) -> None:
    prefix = f"F{_uid()}-"
    devices = serials(prefix, 200)
    rec = recorder_factory("alarmcentre/v1/devices/+/#", only=prefix)
    fleet = Fleet(broker_url, devices, heartbeat_interval=1.0, connect_batch=50, seed=1)
    stats = asyncio.run(fleet.run(duration=3.5))
    assert stats.total_failed == 0 and stats.connect_failures == 0
    assert len(stats.devices_connected) == 200
    assert rec.wait_until(lambda: len(rec.statuses(devices[-1])) == 2, 5)
    beats: dict[str, list[int]] = {}
    for msg in rec.events(type_="heartbeat"):
        beats.setdefault(msg.device, []).append(_valid(msg).event.seq)
    assert set(beats) == set(devices)
    assert all(seqs == sorted(seqs) and len(set(seqs)) == len(seqs) for seqs in beats.values())
    assert sum(map(len, beats.values())) == stats.published["heartbeat"]
    assert all([m.payload for m in rec.statuses(d)] == [b"online", b"offline"] for d in devices)
    for d in devices:  # leave no retained status behind
        rec.publish(f"alarmcentre/v1/devices/{d}/status", b"", retain=True)


def test_battery_power_and_presses_happen_by_themselves(
    broker_url: str, recorder_factory: Callable[..., Recorder]
) -> None:
    prefix = f"B{_uid()}-"
    devices = serials(prefix, 3)
    rec = recorder_factory("alarmcentre/v1/devices/+/+", only=prefix)
    fleet = Fleet(broker_url, devices, heartbeat_interval=None, battery_start=35, battery_drain=20 * 3600,
                  press_rate=4 * 3600, fall_rate=2 * 3600, power_cut_rate=4 * 3600, power_cut_duration=0.2,
                  seed=7)
    stats = asyncio.run(fleet.run(duration=2.5))
    assert stats.total_failed == 0
    for d in devices:
        battery = [m.event() for m in rec.events(d, "battery")]
        assert [(b["level"], b["low"]) for b in battery][:3] == [(30, False), (20, False), (10, True)]
        assert rec.events(d, "button_press") and rec.events(d, "fall_detected")
        power = [m.event()["type"] for m in rec.events(d) if "power" in str(m.event()["type"])]
        assert power and power[0] == "power_lost"
        assert all(a != b for a, b in zip(power, power[1:], strict=False))  # lost, restored, lost...
        for msg in rec.events(d):
            _valid(msg)


def test_rate_limit_caps_the_whole_fleet(broker_url: str) -> None:
    fleet = Fleet(broker_url, serials(f"R{_uid()}-", 20), heartbeat_interval=0.05, rate_limit=50)
    stats = asyncio.run(fleet.run(duration=2.0))
    assert stats.total_failed == 0
    # 40 statuses + heartbeats in ~2 s at 50/s (plus the offlines while stopping).
    assert stats.total_published <= 50 * stats.elapsed() + 5
    assert stats.published["heartbeat"] > 20


def test_cli_run_stops_at_ctrl_c_with_a_summary(
    broker_url: str, recorder_factory: Callable[..., Recorder]
) -> None:
    prefix = f"I{_uid()}-"
    rec = recorder_factory("alarmcentre/v1/devices/+/#", only=prefix)
    proc = subprocess.Popen(_sim("run", "-n", "4", "--prefix", prefix, "--heartbeat-interval", "0.5", "-v",
                                 url=broker_url), env=_sim_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert rec.wait_until(lambda: len(rec.events(type_="heartbeat")) >= 4, 10)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "summary: 4 device(s)" in out and "heartbeat" in out
    assert f"> {prefix}00001 status online" in out  # --verbose lines
    devices = serials(prefix, 4)
    assert rec.wait_until(lambda: all(rec.statuses(d)[-1].payload == b"offline" for d in devices), 5)


def test_per_device_logins_pass_a_per_serial_acl(tmp_path: Path) -> None:
    _need_mosquitto()
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd not installed")
    prefix = f"L{_uid()}-"
    devices = serials(prefix, 2)
    password_file = tmp_path / "passwords"
    password_file.touch()
    for user, password in [("watcher", "w-pass"), *((d, "d-pass") for d in devices)]:
        subprocess.run([passwd, "-b", str(password_file), user, password], check=True)
    acl = tmp_path / "acl"
    acl.write_text(
        "user watcher\ntopic read alarmcentre/v1/devices/#\ntopic write alarmcentre/v1/devices/+/config\n"
        "pattern write alarmcentre/v1/devices/%u/events\npattern write alarmcentre/v1/devices/%u/alarms\n"
        "pattern write alarmcentre/v1/devices/%u/status\n"
        "pattern read alarmcentre/v1/devices/%u/config\npattern read alarmcentre/v1/devices/%u/commands\n"
    )
    port = _free_port()
    proc = _start_mosquitto(tmp_path, port, f"password_file {password_file}\nacl_file {acl}\n")
    rec = Recorder(f"mqtt://watcher:w-pass@127.0.0.1:{port}", "alarmcentre/v1/devices/+/events")
    try:
        rec.publish(config_topic(devices[1]), json.dumps({"version": 1}), retain=True)
        fleet = Fleet(f"mqtt://:d-pass@127.0.0.1:{port}", devices, serial_login=True, heartbeat_interval=0.3)
        stats = asyncio.run(fleet.run(duration=1.5))
        assert stats.connect_failures == 0 and len(stats.devices_connected) == 2
        assert {m.device for m in rec.events(type_="heartbeat")} == set(devices)
        assert [m.device for m in rec.events(type_="config_applied")] == [devices[1]]
    finally:
        rec.close()
        _stop_mosquitto(proc)


def test_devices_come_back_after_a_broker_restart(tmp_path: Path) -> None:
    _need_mosquitto()
    port = _free_port()
    url = f"mqtt://127.0.0.1:{port}"
    proc = _start_mosquitto(tmp_path, port)
    fleet = Fleet(url, serials(f"X{_uid()}-", 5), heartbeat_interval=None, battery_drain=0)
    fleet.start_in_thread()
    try:
        assert fleet.wait_connected(10)
        _stop_mosquitto(proc)
        time.sleep(0.5)
        proc = _start_mosquitto(tmp_path, port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and fleet.stats.connects < 10:
            time.sleep(0.1)
        assert fleet.stats.connects == 10 and fleet.stats.connections_lost == 5
    finally:
        fleet.stop()
        _stop_mosquitto(proc)


# ------------------------------------------------------------ pure, no broker


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=60),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                     st.sampled_from(["version", "heartbeat_interval", "x"]), inner, max_size=3),
                 max_leaves=6).map(lambda v: json.dumps(v).encode()),
))
def test_check_config_never_raises_and_answers_are_valid(payload: bytes) -> None:
    decision = check_config(payload)
    if decision.ok:
        assert isinstance(decision.version, int) and decision.version >= 0
        assert decision.heartbeat_interval is None or decision.heartbeat_interval > 0
    else:
        assert decision.reason and len(decision.reason) <= 500


def test_check_config_cases() -> None:
    assert check_config(b'{"version": 2, "heartbeat_interval": 30}').heartbeat_interval == 30
    assert check_config(b'{"version": 2}').ok
    assert not check_config(b'{"version": true}').ok
    assert not check_config(b'{"version": 1, "heartbeat_interval": 1.5}').ok
    assert not check_config(b'{"version": 1, "heartbeat_interval": true}').ok
    assert check_config(b'[1]').version is None


def test_urls_and_serials() -> None:
    a = BrokerAddress.from_url("mqtt://user:p%40ss@broker.example:1884")
    assert (a.host, a.port, a.username, a.password, a.tls) == ("broker.example", 1884, "user", "p@ss", False)
    assert "p@ss" not in a.display()
    assert BrokerAddress.from_url("mqtts://h").port == 8883
    assert BrokerAddress.from_url("mqtt://h").port == 1883
    for bad in ("http://h", "mqtt://", "mqtt://h:99999", "mqtt://h/x"):
        with pytest.raises(SimulatorError):
            BrokerAddress.from_url(bad)
    assert serials("SIM-", 3) == ["SIM-00001", "SIM-00002", "SIM-00003"]
    assert serials("S", 2, start=999_999)[-1] == "S1000000"
    assert serials("DEMO-", 2, digits=4) == ["DEMO-0001", "DEMO-0002"]
    with pytest.raises(SimulatorError):
        serials("bad/prefix-", 1)


def test_rate_limiter_spaces_calls() -> None:
    async def go() -> float:
        limiter = RateLimiter(200)
        start = time.monotonic()
        await asyncio.gather(*(limiter.acquire() for _ in range(101)))
        return time.monotonic() - start

    assert 0.45 < asyncio.run(go()) < 1.5


def test_console_lines_go_to_the_sink() -> None:
    lines: list[str] = []
    console = Console(verbose=True, sink=lines.append)
    console.message(">", "SIM-00001", "events", b'{"a":1}')
    assert lines[0].endswith('> SIM-00001 events {"a":1}')
