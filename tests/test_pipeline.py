"""End to end through a real broker: device → MQTT → ingest → database → API.

On the embedded defaults (in-process broker, SQLite) and on Mosquitto + PostgreSQL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from alarmcentre.config import Settings
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.incidents.models import Incident, TimelineEntry
from alarmcentre.ingest.consumer import IngestConsumer
from alarmcentre.ingest.protocol import events_topic, status_topic
from alarmcentre.runtime import Centre, Database
from tests.conftest import MosquittoProcess, free_port, ingest_subscribed, start_alarmcentre, wait_until
from tests.factories import count_rows as count
from tests.factories import event_payload, setup_devices

ADMIN = ("admin", "admin-password-1")


class Publisher:
    """A device-side MQTT client that waits for each PUBACK, like a real device must."""

    def __init__(self, url: str, client_id: str = "test-publisher") -> None:
        parts = urlsplit(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if parts.username:
            self.client.username_pw_set(parts.username, parts.password)
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"broker did not acknowledge {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def api_token(client: TestClient) -> dict[str, str]:
    response = client.post("/api/v1/auth/token", data={"username": ADMIN[0], "password": ADMIN[1]})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def open_incidents_via_api(client: TestClient, headers: dict[str, str]) -> list[dict]:
    response = client.get("/api/v1/incidents", params={"status": "open"}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def press_becomes_one_incident(publisher: Publisher, client: TestClient, serial: str) -> float:
    headers = api_token(client)
    assert open_incidents_via_api(client, headers) == []
    publisher.publish(status_topic(serial), b"online", retain=True)
    started = time.monotonic()
    publisher.publish(events_topic(serial), event_payload(1, "button_press"))
    wait_until(lambda: len(open_incidents_via_api(client, headers)) == 1, timeout=10.0)
    elapsed = time.monotonic() - started
    time.sleep(0.3)  # nothing more may arrive
    (incident,) = open_incidents_via_api(client, headers)
    assert incident["kind"] == "button_press" and incident["status"] == "open"
    detail = client.get(f"/api/v1/incidents/{incident['id']}", headers=headers).json()
    assert [entry["kind"] for entry in detail["timeline"]] == ["opened"]
    return elapsed


# -- embedded defaults -------------------------------------------------------------------


@pytest.fixture(params=["amqtt", "mosquitto"])
def embedded_centre(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Centre]:
    """`alarmcentre up` as it runs on a laptop: embedded broker, SQLite in the data dir."""
    if request.param == "mosquitto" and not _has_mosquitto():
        pytest.skip("no mosquitto binary: the embedded default falls back to amqtt, tested above")
    settings = Settings(data_dir=tmp_path / "data", broker=request.param, broker_port=free_port(),
                        admin_user=ADMIN[0], admin_password=ADMIN[1], database_url=None, mqtt_url=None)
    centre = Centre(settings, device_logins=("EMB-1",)).start()
    assert centre.consumer.wait_connected(10), "ingest did not connect to the embedded broker"
    yield centre
    centre.stop()


def _has_mosquitto() -> bool:
    import shutil

    return shutil.which("mosquitto") is not None


def test_press_on_embedded_defaults_becomes_one_incident(embedded_centre: Centre) -> None:
    assert embedded_centre.db is not None
    setup_devices(embedded_centre.db.sessions, ["EMB-1"])
    publisher = Publisher(embedded_centre.device_url("EMB-1"), client_id="EMB-1")
    try:
        press_becomes_one_incident(publisher, TestClient(embedded_centre.app), "EMB-1")
    finally:
        publisher.close()
    # The centre's own canary device sends test alarms too: count the pressed device's events.
    assert count(embedded_centre.db, DeviceEvent, DeviceEvent.device_id.in_(
        select(Device.id).where(Device.serial == "EMB-1"))) == 1


def test_an_alarm_waits_for_another_sqlite_writer_instead_of_failing(embedded_centre: Centre) -> None:
    """SQLite has one writer. An ingest batch that read while another part of the centre held the
    write lock used to fail when that writer committed ("database is locked"), and waited for a
    retry; it must take the lock first and wait its turn."""
    assert embedded_centre.db is not None
    setup_devices(embedded_centre.db.sessions, ["EMB-1"])
    errors_before = metric("alarmcentre_ingest_database_errors_total")
    other_writer = embedded_centre.db.engine.raw_connection()
    holding = threading.Event()

    def hold_the_write_lock() -> None:
        cursor = other_writer.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute("UPDATE devices SET model = model WHERE serial = 'EMB-1'")
        holding.set()
        time.sleep(1.0)  # the alarm arrives meanwhile
        cursor.execute("COMMIT")

    writer = threading.Thread(target=hold_the_write_lock)
    writer.start()
    assert holding.wait(5)
    publisher = Publisher(embedded_centre.device_url("EMB-1"), client_id="EMB-1")
    try:
        publisher.publish(events_topic("EMB-1"), event_payload(1, "button_press"))
        writer.join(10)
        wait_until(lambda: count(embedded_centre.db, DeviceEvent, DeviceEvent.device_id.in_(
            select(Device.id).where(Device.serial == "EMB-1"))) == 1, timeout=10)
    finally:
        publisher.close()
        other_writer.close()
    assert metric("alarmcentre_ingest_database_errors_total") == errors_before


# -- Mosquitto + PostgreSQL --------------------------------------------------------------


@pytest.fixture
def consumer_on(postgres_db: Database, mosquitto: MosquittoProcess) -> Iterator[IngestConsumer]:
    consumer = IngestConsumer(mqtt_url=mosquitto.url, session_factory=postgres_db.sessions)
    consumer.start()
    assert consumer.wait_connected(10)
    yield consumer
    consumer.stop()


def test_press_on_mosquitto_and_postgres_becomes_one_incident(
    postgres_db: Database, mosquitto: MosquittoProcess, consumer_on: IngestConsumer
) -> None:
    setup_devices(postgres_db.sessions, ["PG-1"])
    with postgres_db.sessions() as session, session.begin():
        from alarmcentre.users.models import Role
        from alarmcentre.users.service import create_user

        create_user(session, username=ADMIN[0], password=ADMIN[1], role=Role.ADMIN)
    from alarmcentre.app import create_app

    app = create_app(settings=Settings(), session_factory=postgres_db.sessions)
    publisher = Publisher(mosquitto.url, client_id="PG-1")
    try:
        press_becomes_one_incident(publisher, TestClient(app), "PG-1")
    finally:
        publisher.close()


def test_the_same_message_twice_through_the_broker_is_one_event_one_incident(
    postgres_db: Database, mosquitto: MosquittoProcess, consumer_on: IngestConsumer
) -> None:
    setup_devices(postgres_db.sessions, ["DUP-1"])
    duplicates_before = metric("alarmcentre_ingest_duplicates_total")
    payload = event_payload(77, "button_press")
    publisher = Publisher(mosquitto.url)
    try:
        publisher.publish(events_topic("DUP-1"), payload)
        publisher.publish(events_topic("DUP-1"), payload)
    finally:
        publisher.close()
    wait_until(lambda: metric("alarmcentre_ingest_duplicates_total") >= duplicates_before + 1, timeout=5)
    assert count(postgres_db, DeviceEvent) == 1
    assert count(postgres_db, Incident) == 1


def test_bad_payloads_through_the_broker_are_dead_lettered_and_the_consumer_goes_on(
    postgres_db: Database, mosquitto: MosquittoProcess, consumer_on: IngestConsumer
) -> None:
    setup_devices(postgres_db.sessions, ["BAD-1"])
    corpus: list[tuple[str, bytes, str]] = [
        (events_topic("BAD-1"), b"{not json", "bad_json"),
        (events_topic("BAD-1"), b'{"seq": "x", "ts": "2026-01-01T00:00:00Z", "type": "battery"}', "invalid_schema"),
        (events_topic("BAD-1"), b"x" * 10_000, "too_large"),
        (events_topic("NOBODY"), event_payload(1), "unknown_device"),
        (events_topic("BAD-1"), json.dumps({"seq": 1, "ts": "2026-01-01T00:00:00Z", "type": "button_press",
                                            "device_id": "OTHER"}).encode(), "device_mismatch"),
        (events_topic("BAD-1"), json.dumps({"seq": 2, "ts": "2999-01-01T00:00:00Z",
                                            "type": "heartbeat"}).encode(), "clock_skew"),
        (events_topic("BAD-1"), event_payload(3, "self_destruct"), "unknown_type"),
        (events_topic("BAD-1"), bytes([0xC0, 0xFF, 0x00, 0x81]), "not_utf8"),
        (status_topic("BAD-1"), b"sleepy", "bad_status"),
    ]
    before = {reason: metric("alarmcentre_ingest_messages_rejected_total", reason=reason) for *_, reason in corpus}
    publisher = Publisher(mosquitto.url)
    try:
        for topic, payload, _ in corpus:
            publisher.publish(topic, payload)
        publisher.publish(events_topic("BAD-1"), event_payload(10, "button_press"))
    finally:
        publisher.close()
    wait_until(lambda: count(postgres_db, Incident) == 1, timeout=5)
    with postgres_db.sessions() as session:
        reasons = [dl.reason for dl in session.scalars(select(DeadLetter).order_by(DeadLetter.received_at))]
    assert reasons == [reason for *_, reason in corpus]
    for *_, reason in corpus:
        assert metric("alarmcentre_ingest_messages_rejected_total", reason=reason) == before[reason] + 1, reason
    assert consumer_on.connected


def test_database_outage_holds_messages_until_it_is_back(
    postgres_db: Database, mosquitto: MosquittoProcess, consumer_on: IngestConsumer, postgres_url: str
) -> None:
    """While commits fail nothing is acknowledged or lost; when the database returns all is applied."""
    setup_devices(postgres_db.sessions, ["OUT-1"])
    name = postgres_url.rsplit("/", 1)[1]
    import psycopg

    from tests.conftest import POSTGRES_ADMIN_URL

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        # Refuse new connections and cut the live ones: the ingest's next commit fails.
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        publisher = Publisher(mosquitto.url)
        try:
            for seq in range(1, 21):
                publisher.publish(events_topic("OUT-1"), event_payload(seq, "heartbeat"))
            publisher.publish(events_topic("OUT-1"), event_payload(21, "button_press"))
        finally:
            publisher.close()
        wait_until(lambda: not consumer_on.database_ok, timeout=10)
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    wait_until(lambda: count(postgres_db, DeviceEvent) == 21, timeout=40)
    assert count(postgres_db, Incident) == 1
    assert consumer_on.database_ok


# -- SIGKILL of the ingest during a burst ------------------------------------------------


def _start_ingest(database_url: str, mqtt_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {"ALARMCENTRE_DATABASE_URL": database_url, "ALARMCENTRE_MQTT_URL": mqtt_url,
           "ALARMCENTRE_METRICS_PORT": "0", "ALARMCENTRE_INGEST_BATCH_MAX": "50"}
    return start_alarmcentre("ingest", env, log_path)


@pytest.mark.needs_true_clock
def test_sigkill_of_the_ingest_mid_burst_loses_nothing_and_duplicates_nothing(
    postgres_db: Database, postgres_url: str, mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    devices = [f"K-{i:03d}" for i in range(50)]
    setup_devices(postgres_db.sessions, devices)
    total = 1000
    # Every 10th message an alarm; the rest heartbeats. Deterministic, so expectations are exact.
    plan = [(devices[i % len(devices)], i + 1, "button_press" if i % 10 == 0 else "heartbeat") for i in range(total)]
    alarms_per_device: dict[str, int] = {}
    for serial, _, kind in plan:
        if kind == "button_press":
            alarms_per_device[serial] = alarms_per_device.get(serial, 0) + 1

    log_path = tmp_path / "ingest.log"
    ingest = _start_ingest(postgres_url, mosquitto.url, log_path)
    publisher = Publisher(mosquitto.url)
    published = 0
    try:
        # The ingest's persistent session and subscription must exist before the burst.
        wait_until(lambda: ingest_subscribed(log_path), timeout=20, step=0.1)

        def burst() -> None:
            nonlocal published
            for serial, seq, kind in plan:
                publisher.publish(events_topic(serial), event_payload(seq, kind))
                published += 1

        sender = threading.Thread(target=burst)
        sender.start()
        wait_until(lambda: count(postgres_db, DeviceEvent) >= 150, timeout=30, step=0.005)
        ingest.send_signal(signal.SIGKILL)
        ingest.wait(10)
        at_kill = count(postgres_db, DeviceEvent)
        assert at_kill < total, "the burst ended before the kill: not a mid-burst test"
        sender.join(60)
        assert published == total
        ingest = _start_ingest(postgres_url, mosquitto.url, log_path)
        wait_until(lambda: count(postgres_db, DeviceEvent) >= total, timeout=60, step=0.1)
        time.sleep(1.0)  # anything redelivered late must still not duplicate
    finally:
        publisher.close()
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(15)
        except subprocess.TimeoutExpired:
            ingest.kill()

    with postgres_db.sessions() as session:
        pairs = session.execute(select(DeviceEvent.device_id, DeviceEvent.seq)).all()
        incidents = session.scalars(select(Incident)).all()
        timeline = session.scalar(select(func.count()).select_from(TimelineEntry))
    assert len(pairs) == total == len(set(pairs)), "every message once"
    assert sorted(seq for _, seq in pairs) == list(range(1, total + 1))
    assert len(incidents) == len(alarms_per_device), "one incident per client that pressed"
    assert sorted(i.signal_count for i in incidents) == sorted(alarms_per_device.values())
    assert timeline == sum(alarms_per_device.values()), "one timeline entry per alarm, none twice"
    print(f"killed at {at_kill}/{total} events committed; all {total} present once after restart "
          f"({datetime.now(UTC):%H:%M:%S})")


def test_ingest_reconnects_by_itself_when_the_broker_restarts(
    postgres_db: Database, mosquitto: MosquittoProcess, consumer_on: IngestConsumer
) -> None:
    setup_devices(postgres_db.sessions, ["RE-1"])
    disconnects = metric("alarmcentre_broker_disconnects_total")
    mosquitto.stop()
    wait_until(lambda: not consumer_on.connected, timeout=10)
    assert metric("alarmcentre_broker_connected") == 0
    assert metric("alarmcentre_broker_disconnects_total") == disconnects + 1
    mosquitto.start()
    wait_until(lambda: consumer_on.connected, timeout=30, step=0.1)
    assert metric("alarmcentre_broker_connected") == 1
    publisher = Publisher(mosquitto.url)
    try:
        publisher.publish(events_topic("RE-1"), event_payload(1, "button_press"))
    finally:
        publisher.close()
    wait_until(lambda: count(postgres_db, Incident) == 1, timeout=5)
