"""Device care against real parts: Mosquitto (the repository's config, or a provisioned ACL), the
real ingest, the API, and `alarmcentre scheduler` processes on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from alarmcentre import care
from alarmcentre.app import create_app
from alarmcentre.broker.provision import set_password
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.devices import service as devices
from alarmcentre.devices.models import Device
from alarmcentre.devices.publisher import ConfigPublisher
from alarmcentre.incidents.models import Incident, IncidentKind, IncidentStatus, TimelineEntry
from alarmcentre.ingest.consumer import IngestConsumer
from alarmcentre.ingest.protocol import config_topic, events_topic
from alarmcentre.runtime import Database
from alarmcentre.tasks.models import OperatorTask
from alarmcentre.users.models import Role
from alarmcentre.users.service import create_user
from alarmcentre.workorders.models import WorkOrder
from tests.conftest import MosquittoProcess, free_port, missing_service, wait_for_port
from tests.factories import event_payload, make_client, make_device
from tests.test_pipeline import Publisher, wait_until

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def ingest(postgres_db: Database, mosquitto: MosquittoProcess) -> Iterator[IngestConsumer]:
    consumer = IngestConsumer(mqtt_url=mosquitto.url, session_factory=postgres_db.sessions)
    consumer.start()
    assert consumer.wait_connected(10)
    yield consumer
    consumer.stop()


def install(db: Database, serial: str, **fields: object) -> int:
    with transaction(db.sessions) as session:
        device = make_device(session, serial, client=make_client(session))
        for name, value in fields.items():
            setattr(device, name, value)
        return device.id


def test_a_device_that_stops_heartbeating_is_flagged_within_its_window_and_restored(
    postgres_db: Database, mosquitto: MosquittoProcess, ingest: IngestConsumer
) -> None:
    # heartbeat 10 s x tolerance 0.15 = a 1.5 s window, so the test runs in seconds.
    settings = Settings(supervision_tolerance=0.15)
    device_id = install(postgres_db, "HB-1", heartbeat_interval_s=10)
    device = Publisher(mosquitto.url, client_id="HB-1")
    seq = iter(range(1, 10_000))
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(0.25):
            try:
                device.publish(events_topic("HB-1"), event_payload(next(seq), "heartbeat", battery=90))
            except RuntimeError:  # not connected yet (a loaded machine): a device tries again, as here
                continue

    def supervise() -> int:
        return care.run_job(postgres_db.sessions, "supervision", care.supervise_devices, settings=settings)

    def silent_incidents(*statuses: IncidentStatus) -> list[Incident]:
        with postgres_db.sessions() as session:
            return list(session.scalars(select(Incident).where(Incident.device_id == device_id,
                                                               Incident.kind == IncidentKind.DEVICE_SILENT,
                                                               Incident.status.in_(statuses))))

    try:
        beating = threading.Thread(target=heartbeat)
        beating.start()
        wait_until(lambda: _last_seen(postgres_db, device_id) is not None, timeout=15)
        for _ in range(12):  # 3 s of heartbeats: never flagged
            assert supervise() == 0
            time.sleep(0.25)
        stop.set()
        beating.join(5)
        silent_from = time.monotonic()
        wait_until(lambda: supervise() == 1, timeout=5, step=0.1)
        flagged_after = time.monotonic() - silent_from
        assert 1.0 < flagged_after < 1.5 + 1.0, flagged_after  # the window, plus a sweep's latency
        assert len(silent_incidents(IncidentStatus.OPEN)) == 1

        device.publish(events_topic("HB-1"), event_payload(next(seq), "heartbeat"))  # heard again
        wait_until(lambda: (supervise() or True) and not silent_incidents(IncidentStatus.OPEN), timeout=5, step=0.1)
        (incident,) = silent_incidents(IncidentStatus.RESOLVED)
        assert incident.outcome == "restored"
        with postgres_db.sessions() as session:
            kinds = [e.kind.value for e in session.scalars(select(TimelineEntry).where(
                TimelineEntry.incident_id == incident.id).order_by(TimelineEntry.id))]
        assert kinds == ["opened", "restored"]
    finally:
        stop.set()
        device.close()


def _last_seen(db: Database, device_id: int) -> datetime | None:
    with db.sessions() as session:
        device = session.get(Device, device_id)
        return device.last_seen_at if device else None


def test_a_config_change_reaches_the_device_retained_and_its_report_puts_it_in_sync(
    postgres_db: Database, mosquitto: MosquittoProcess, ingest: IngestConsumer
) -> None:
    install(postgres_db, "CFG-1")
    with transaction(postgres_db.sessions) as session:
        create_user(session, username="tech", password="password-123", role=Role.TECHNICIAN)
    publisher = ConfigPublisher(mosquitto.url, timeout_s=5)
    http = TestClient(create_app(settings=Settings(), session_factory=postgres_db.sessions,
                                 config_publisher=publisher))
    token = http.post("/api/v1/auth/token", data={"username": "tech", "password": "password-123"}).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    try:
        bad = http.put("/api/v1/devices/CFG-1/config", json={"config": {"volume": 99}}, headers=headers)
        assert bad.status_code == 422 and "volume" in bad.text
        saved = http.put("/api/v1/devices/CFG-1/config", headers=headers,
                         json={"config": {"volume": 6, "language": "lv", "alarm_numbers": ["+37120000001"]}})
        assert saved.status_code == 200, saved.text
        assert saved.json()["state"] == "pending" and saved.json()["published"] is True

        # The device connects only now: the retained message is waiting for it.
        received: list[tuple[bytes, bool]] = []
        got = threading.Event()
        device = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="CFG-1")
        device.on_message = lambda _c, _u, msg: (received.append((msg.payload, msg.retain)), got.set())
        device.on_connect = lambda c, *_a: c.subscribe(config_topic("CFG-1"), qos=1)
        device.connect("127.0.0.1", mosquitto.port)
        device.loop_start()
        assert got.wait(5), "the device did not receive its configuration"
        payload, retained = received[0]
        assert retained and json.loads(payload) == {"version": 1, "volume": 6, "language": "lv",
                                                     "alarm_numbers": ["+37120000001"]}
        info = device.publish(events_topic("CFG-1"), event_payload(1, "config_applied", version=1), qos=1)
        info.wait_for_publish(5)
        wait_until(lambda: http.get("/api/v1/devices/CFG-1/config", headers=headers).json()["state"] == "in_sync",
                   timeout=5, step=0.05)
        state = http.get("/api/v1/devices/CFG-1/config", headers=headers).json()
        assert state["diff"] == {} and [v["version"] for v in state["versions"]] == [1]
        device.disconnect()
        device.loop_stop()
    finally:
        publisher.close()


def test_a_config_saved_while_the_broker_is_down_is_published_later(
    postgres_db: Database, mosquitto: MosquittoProcess
) -> None:
    device_id = install(postgres_db, "CFG-2")
    mosquitto.stop()
    publisher = ConfigPublisher(mosquitto.url, timeout_s=0.5)
    try:
        with transaction(postgres_db.sessions) as session:
            device = session.get(Device, device_id)
            assert device is not None
            devices.set_desired_config(session, device=device, config={"volume": 3}, actor="user:t")
        assert care.republish_configs(postgres_db.sessions, publisher) == 0  # broker away: kept, not lost
        mosquitto.start()
        wait_until(lambda: care.republish_configs(postgres_db.sessions, publisher) == 1, timeout=15, step=0.5)
        with postgres_db.sessions() as session:
            device = session.get(Device, device_id)
            assert device is not None and device.config_published_version == 1
    finally:
        publisher.close()


# -- provisioned logins: Mosquitto with the generated password and ACL files -------------


def test_a_provisioned_device_cannot_publish_on_another_devices_topic(tmp_path: Path) -> None:
    if not Path("/usr/sbin/mosquitto").exists() and subprocess.run(["which", "mosquitto"]).returncode != 0:
        missing_service("no mosquitto binary")
    passwords, acl, db_url = tmp_path / "passwords", tmp_path / "acl", f"sqlite:///{tmp_path / 'c.sqlite3'}"
    logins = {}
    for serial in ("PROV-A", "PROV-B"):
        out = subprocess.run([sys.executable, "-m", "alarmcentre.cli", "devices", "provision", serial,
                              "--password-file", str(passwords), "--acl-file", str(acl), "--database-url", db_url],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        logins[serial] = next(line.split(": ", 1)[1] for line in out.stdout.splitlines()
                              if line.startswith("password: "))
    assert logins["PROV-A"] not in passwords.read_text(), "only hashes are stored"
    assert "$7$" in passwords.read_text() and "pattern write alarmcentre/v1/devices/%u/events" in acl.read_text()
    # The centre's login and rules are the shipped ones, on their own listener (docs/brokers.md).
    centre_passwords = tmp_path / "centre-passwords"
    set_password(centre_passwords, "alarmcentre", "centre-password-1")

    port, centre_port = free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"per_listener_settings true\npersistence false\nlog_dest stderr\nuser root\n"
                    f"listener {port} 127.0.0.1\nuse_username_as_clientid true\nallow_anonymous false\n"
                    f"password_file {passwords}\nacl_file {acl}\n"
                    f"listener {centre_port} 127.0.0.1\nallow_anonymous false\npassword_file {centre_passwords}\n"
                    f"acl_file {REPO / 'config' / 'mosquitto' / 'centre-acl'}\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / "mosquitto.log", "ab"))  # noqa: SIM115
    try:
        assert wait_for_port(port), (tmp_path / "mosquitto.log").read_text()
        centre_got: list[str] = []
        centre = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="centre")
        centre.username_pw_set("alarmcentre", "centre-password-1")
        subscribed = threading.Event()
        centre.on_connect = lambda c, *_a: c.subscribe("alarmcentre/v1/devices/+/events", qos=1)
        centre.on_subscribe = lambda *_a: subscribed.set()
        centre.on_message = lambda _c, _u, msg: centre_got.append(f"{msg.topic} {msg.payload.decode()}")
        centre.connect("127.0.0.1", centre_port)
        centre.loop_start()
        assert subscribed.wait(5)

        device_a = Publisher(f"mqtt://PROV-A:{logins['PROV-A']}@127.0.0.1:{port}", client_id="PROV-A")
        device_a.publish(events_topic("PROV-B"), b'{"forged": true}')  # Mosquitto acknowledges and drops it
        device_a.publish(events_topic("PROV-A"), b'{"own": true}')
        wait_until(lambda: len(centre_got) >= 1, timeout=5)
        time.sleep(0.3)
        assert centre_got == [f"{events_topic('PROV-A')} " + '{"own": true}']
        device_a.close()

        wrong = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="PROV-B")
        wrong.username_pw_set("PROV-B", logins["PROV-A"])  # someone else's password
        with pytest.raises(Exception):  # noqa: B017  (paho raises on the refused CONNACK)
            wrong.connect("127.0.0.1", port)
            wrong.loop_start()
            deadline = time.monotonic() + 3
            while not wrong.is_connected() and time.monotonic() < deadline:
                time.sleep(0.05)
            wrong.loop_stop()
            if not wrong.is_connected():
                raise ConnectionRefusedError("refused")
        centre.disconnect()
        centre.loop_stop()
    finally:
        broker.terminate()
        broker.wait(10)


# -- two scheduler processes on PostgreSQL -----------------------------------------------


def _scheduler(database_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ALARMCENTRE_DATABASE_URL": database_url, "ALARMCENTRE_METRICS_PORT": "0",
           "ALARMCENTRE_CARE_INTERVAL_S": "0.2", "ALARMCENTRE_SUPERVISION_INTERVAL_S": "0.2"}
    env.pop("ALARMCENTRE_MQTT_URL", None)
    return subprocess.Popen([sys.executable, "-m", "alarmcentre.cli", "scheduler"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))  # noqa: SIM115


@pytest.mark.needs_true_clock
def test_two_scheduler_processes_create_each_task_once(postgres_db: Database, postgres_url: str,
                                                       tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with transaction(postgres_db.sessions) as session:
        for i in range(30):
            client = make_client(session)
            client.last_contact_at = now - timedelta(days=15)
            device = make_device(session, f"TWO-{i:02d}", client=client)
            device.last_seen_at, device.online = now + timedelta(days=1), True  # not silent
            device.last_test_call_at = now
            if i % 3 == 0:
                device.battery_level, device.battery_low = 10, True
            if i % 5 == 0:
                device.mains_power, device.mains_changed_at = False, now - timedelta(hours=1)
    expected = {"tasks": 30 + 6 + 10, "orders": 10}
    schedulers = [_scheduler(postgres_url, tmp_path / f"s{i}.log") for i in range(2)]

    def counts() -> dict[str, int]:
        with postgres_db.sessions() as session:
            return {"tasks": session.scalar(select(func.count()).select_from(OperatorTask)) or 0,
                    "orders": session.scalar(select(func.count()).select_from(WorkOrder)) or 0}

    try:
        deadline = time.monotonic() + 40
        while counts() != expected:
            assert time.monotonic() < deadline, (counts(), (tmp_path / "s0.log").read_text()[-2000:])
            assert all(p.poll() is None for p in schedulers), (tmp_path / "s0.log").read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(2)  # several more runs of every job in both processes
    finally:
        for process in schedulers:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
    assert counts() == expected
    with postgres_db.sessions() as session:
        keys = session.execute(select(OperatorTask.kind, OperatorTask.client_id, OperatorTask.device_id)).all()
    assert len(set(keys)) == len(keys)
