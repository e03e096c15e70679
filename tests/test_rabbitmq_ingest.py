"""The ingest on a 3-node RabbitMQ cluster: replicated quorum queues, competing workers, faults injected.

Devices speak MQTT to the cluster's MQTT plugin (the simulator, failing over between nodes as devices
with several receiver addresses do); the ingest consumes the quorum queues over AMQP and acknowledges
only what it committed. The fault test runs four `alarmcentre ingest` processes against one PostgreSQL
and kills one of them and one broker node in the middle of a burst. The full-size runs (20,000 messages
from 1,000 devices, every node killed at once, a database outage) are in bench/ingest_cluster.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from alarmcentre import care
from alarmcentre.broker.acl import CENTRE_USER
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.devices import service as devices
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.devices.publisher import ConfigPublisher
from alarmcentre.incidents.models import Incident
from alarmcentre.ingest.amqp import ALARMS_QUEUE, BULK_QUEUE, AmqpIngest
from alarmcentre.ingest.protocol import alarms_topic, config_topic, events_topic, status_topic
from alarmcentre.runtime import Database
from alarmcentre_sim.connection import BrokerAddress
from tests.conftest import CentreProcess, PostgresCluster, free_port, ingest_subscribed, migrated_database, wait_until
from tests.factories import count_rows as count
from tests.factories import event_payload, setup_devices
from tests.rabbitmq import CENTRE_PASSWORD, DEVICES, Rabbit, device_password, start_cluster
from tests.test_faults import Burst, assert_each_message_once, burst_plan, centre_env, scrape

pytestmark = pytest.mark.needs_true_clock


# Each test's bound holds the module's cluster start too (up to two tries of 150 s) for whichever test
# comes first.
@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[Rabbit]:
    yield from start_cluster()


@pytest.fixture
def rabbit(rabbit_cluster: Rabbit) -> Rabbit:
    """The module's cluster with every node up and the centre's queues empty."""
    for i, node in enumerate(rabbit_cluster.cluster.nodes):
        if not node.pid:
            rabbit_cluster.cluster.start_node(i)
    rabbit_cluster.purge()
    return rabbit_cluster


class MqttDevice:
    """One device's MQTT connection to one node, publishing QoS 1 and waiting for each PUBACK."""

    def __init__(self, cluster: Rabbit, serial: str, *, node: int = 0, password: str | None = None) -> None:
        self.serial = serial
        self.closed = threading.Event()
        self.refused: str | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=serial, clean_session=True,
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(serial, password or device_password(serial))
        self.client.on_disconnect = lambda *_args: self.closed.set()
        self.received: list[tuple[str, bytes]] = []
        self.client.on_message = lambda _c, _u, msg: self.received.append((msg.topic, bytes(msg.payload)))
        connected = threading.Event()

        def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
            if getattr(reason, "is_failure", False):
                self.refused = str(reason)
            connected.set()

        self.client.on_connect = on_connect
        self.client.connect("127.0.0.1", cluster.cluster.nodes[node].mqtt, keepalive=30)
        self.client.loop_start()
        assert connected.wait(10), f"{serial}: no CONNACK"

    def publish(self, topic: str, payload: bytes, timeout: float = 5.0, retain: bool = False) -> bool:
        """True once the broker acknowledged it (PUBACK)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def subscribe(self, topic: str) -> None:
        granted = threading.Event()
        self.client.on_subscribe = lambda *_args: granted.set()
        self.client.subscribe(topic, qos=1)
        assert granted.wait(10), f"{self.serial}: no SUBACK"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.timeout(420)
def test_a_press_on_any_node_becomes_one_incident_and_waits_in_the_queue_while_no_ingest_runs(
    rabbit: Rabbit, postgres_db: Database
) -> None:
    serial = DEVICES[0]
    setup_devices(postgres_db.sessions, [serial])
    device = MqttDevice(rabbit, serial, node=2)  # the ingest reads from whichever node; the queue spans all
    try:
        # No ingest yet: the queues (declared from the definitions file at setup) keep what devices send.
        assert device.publish(events_topic(serial), event_payload(1, "heartbeat", battery=90))
        assert device.publish(alarms_topic(serial), event_payload(2, "button_press"))
        assert rabbit.queue_depths() == {ALARMS_QUEUE: 1, BULK_QUEUE: 1}
        ingest = AmqpIngest(amqp_urls=rabbit.ingest_url(), session_factory=postgres_db.sessions, worker="t1")
        ingest.start()
        try:
            assert ingest.wait_connected(30), "the ingest did not connect to the cluster"
            wait_until(lambda: count(postgres_db, Incident) == 1 and count(postgres_db, DeviceEvent) == 2, 20)
            assert device.publish(alarms_topic(serial), event_payload(3, "fall_detected"))
            wait_until(lambda: count(postgres_db, DeviceEvent) == 3, 20)
            assert ingest.connected and ingest.database_ok
        finally:
            ingest.stop()
    finally:
        device.close()
    with postgres_db.sessions() as session:
        assert session.scalar(select(Incident.signal_count)) == 2, "both alarms on the client's one incident"
        assert session.scalar(select(func.count()).select_from(DeviceEvent).where(DeviceEvent.incident_id.is_(None))
                              .where(DeviceEvent.type != "heartbeat")) == 0
    wait_until(lambda: rabbit.queue_depths() == {ALARMS_QUEUE: 0, BULK_QUEUE: 0}, 10)


@pytest.mark.timeout(420)
def test_a_device_can_publish_only_as_itself_and_only_with_its_own_password(
    rabbit: Rabbit, postgres_db: Database
) -> None:
    own, other = DEVICES[1], DEVICES[2]
    setup_devices(postgres_db.sessions, [own, other])
    wrong = MqttDevice(rabbit, own, password="not-its-password")
    assert wrong.refused is not None, "a wrong password was accepted"
    wrong.close()
    hostile = MqttDevice(rabbit, own)
    try:
        # RabbitMQ refuses a publish outside the topic permissions by closing the connection.
        assert not hostile.publish(alarms_topic(other), event_payload(1, "button_press"), timeout=3)
        assert hostile.closed.wait(5), "the broker kept a device that published as another"
    finally:
        hostile.close()
    # Nothing of it reached the queues; the device's own topic still works.
    assert rabbit.queue_depths() == {ALARMS_QUEUE: 0, BULK_QUEUE: 0}
    honest = MqttDevice(rabbit, own)
    try:
        assert honest.publish(alarms_topic(own), event_payload(2, "button_press"))
        assert rabbit.queue_depths()[ALARMS_QUEUE] == 1
    finally:
        honest.close()


@pytest.mark.timeout(420)
def test_a_device_that_comes_back_through_another_node_is_sent_its_pending_configuration(
    rabbit: Rabbit, postgres_db: Database
) -> None:
    serial = DEVICES[199]  # a device no other test of the module uses: the retained message outlives the test
    setup_devices(postgres_db.sessions, [serial])
    ingest = AmqpIngest(amqp_urls=rabbit.ingest_url(), session_factory=postgres_db.sessions, worker="t-config")
    publisher = ConfigPublisher(rabbit.mqtt_url(node=0), timeout_s=5)
    ingest.start()
    try:
        assert ingest.wait_connected(30)
        with transaction(postgres_db.sessions, writes=True) as session:
            device = devices.get_by_serial(session, serial)
            assert device is not None
            devices.set_desired_config(session, device=device, config={"volume": 3}, actor="user:t")
        assert care.republish_configs(postgres_db.sessions, publisher) == 1  # retained, on node 0 only
        client = MqttDevice(rabbit, serial, node=2)
        try:
            client.subscribe(config_topic(serial))
            time.sleep(1.0)
            assert client.received == [], "RabbitMQ 3.10 keeps retained messages per node (docs/brokers.md)"
            assert client.publish(status_topic(serial), b"online")
            wait_until(lambda: connected_at(postgres_db, serial) is not None, 20)
            assert care.republish_configs(postgres_db.sessions, publisher) == 1, "sent again after the reconnect"
            wait_until(lambda: len(client.received) == 1, 10)
            assert json.loads(client.received[0][1])["version"] == 1
            assert care.republish_configs(postgres_db.sessions, publisher) == 0, "once per reconnect"
            # A device that refused the version is not sent it again, however often it reconnects.
            assert client.publish(events_topic(serial), event_payload(1, "config_failed", version=1,
                                                                      reason="volume out of range"))
            wait_until(lambda: count(postgres_db, DeviceEvent) == 1, 20)
            before = connected_at(postgres_db, serial)
            assert client.publish(status_topic(serial), b"online")
            wait_until(lambda: connected_at(postgres_db, serial) != before, 20)
            assert care.republish_configs(postgres_db.sessions, publisher) == 0
        finally:
            client.close()
    finally:
        centre = MqttDevice(rabbit, CENTRE_USER, node=0, password=CENTRE_PASSWORD)
        centre.publish(config_topic(serial), b"", retain=True)  # an empty retained message clears it
        centre.close()
        publisher.close()
        ingest.stop()


@pytest.mark.timeout(420)
def test_logins_written_by_the_cli_let_the_centre_and_a_provisioned_device_in(
    rabbit: Rabbit, tmp_path: Path
) -> None:
    """What docs/operations.md tells an operator to run, run: the printed passwords work on the cluster."""
    definitions, database = tmp_path / "definitions.json", f"sqlite:///{tmp_path / 'centre.sqlite3'}"

    def cli(*args: str) -> dict[str, str]:
        out = subprocess.run([sys.executable, "-m", "alarmcentre.cli", *args, "--database-url", database],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)

    centre = cli("rabbitmq-definitions", str(definitions))["password"]
    device = cli("devices", "provision", "RMQ-CLI-1", "--rabbitmq-definitions", str(definitions))["password"]
    assert "password" not in cli("rabbitmq-definitions", str(definitions)), "the centre's password stays"
    assert centre not in definitions.read_text() and device not in definitions.read_text(), "only hashes stored"
    assert definitions.stat().st_mode & 0o077 == 0, "the file is the owner's alone"
    rabbit.import_definitions(definitions)
    try:
        db = Database.open(Settings(database_url=database, data_dir=tmp_path))
        ingest = AmqpIngest(amqp_urls=rabbit.ingest_url().replace(CENTRE_PASSWORD, centre),
                            session_factory=db.sessions, worker="t-cli")
        ingest.start()
        try:
            assert ingest.wait_connected(30), "the centre's printed password did not log in"
            client = MqttDevice(rabbit, "RMQ-CLI-1", node=1, password=device)
            try:
                assert client.refused is None, client.refused
                assert client.publish(alarms_topic("RMQ-CLI-1"), event_payload(1, "button_press"))
            finally:
                client.close()
            wait_until(lambda: count(db, DeviceEvent) == 1, 20)
        finally:
            ingest.stop()
            db.engine.dispose()
    finally:
        rabbit.import_definitions()  # the other tests' logins and the centre's test password back


def connected_at(db: Database, serial: str) -> object:
    with db.sessions() as session:
        return session.scalar(select(Device.connected_at).where(Device.serial == serial))


def alarm_waits(db: Database) -> list[float]:
    """Seconds from each alarm's device timestamp to its commit."""
    with db.sessions() as session:
        rows = session.execute(select(DeviceEvent.occurred_at, DeviceEvent.committed_at)
                               .where(DeviceEvent.type.in_(["button_press", "fall_detected"]))).all()
    return sorted((committed - occurred).total_seconds() for occurred, committed in rows)


@pytest.mark.timeout(420)
def test_four_workers_lose_and_repeat_nothing_when_a_worker_and_a_broker_node_are_killed_mid_burst(
    rabbit: Rabbit, postgres_db: Database, postgres_url: str, tmp_path: Path
) -> None:
    serials = DEVICES[:100]
    setup_devices(postgres_db.sessions, serials)
    plan = burst_plan(serials, per_device=20, seed=14)
    workers = []
    for n in range(4):
        env = centre_env(postgres_url, rabbit.mqtt_url(), tmp_path / f"w{n}", ingest_url=rabbit.ingest_url(),
                         ingest_worker=f"w{n}", metrics_port=free_port())
        workers.append(CentreProcess("ingest", env, tmp_path / f"ingest-{n}.log").start())
    devices = BrokerAddress.from_url(rabbit.devices_url(), passwords=rabbit.passwords)
    burst = Burst(devices, plan, rate=150, hold_at=5)  # ~13 s of sending; the faults inside it
    started = time.monotonic()
    try:
        for worker in workers:
            wait_until(lambda w=worker: ingest_subscribed(w.log), timeout=60, step=0.1)  # type: ignore[misc]
        burst.connect()
        burst.start()
        wait_until(lambda: burst.made >= 500, timeout=60, step=0.05)
        workers[0].kill()  # kill -9 with a batch in hand: it goes back to the queue, to the other three
        killed_worker_at = burst.made
        burst.release()
        wait_until(lambda: burst.made >= 1200, timeout=60, step=0.05)
        rabbit.cluster.kill(1)  # kill -9 of a broker node: its devices and workers move to the others
        killed_node_at = burst.made
        burst.wait(180)
        drained = wait_until(lambda: count(postgres_db, DeviceEvent) >= burst.total, timeout=120, step=0.2,
                             explain=lambda: (f"{count(postgres_db, DeviceEvent)} of {burst.total} stored; devices "
                                              f"{burst.describe()}; queues "
                                              f"{rabbit.queue_depths()}; logs:\n"
                                              + "\n".join(w.log_tail(1500) for w in workers)))
        time.sleep(1.0)  # anything redelivered late must still not duplicate
        alive = [w for w in workers[1:] if w.alive]
        assert len(alive) == 3, "\n".join(w.log_tail() for w in workers[1:])
        suppressed = sum(scrape(int(w.env["ALARMCENTRE_METRICS_PORT"]), "alarmcentre_ingest_duplicates_total")
                         for w in alive)
        shares = [scrape(int(w.env["ALARMCENTRE_METRICS_PORT"]), "alarmcentre_ingest_messages_received_total")
                  for w in alive]
        for worker in alive:  # ready again: connected to a living node, committing
            port = worker.env["ALARMCENTRE_METRICS_PORT"]
            wait_until(lambda p=port: httpx.get(f"http://127.0.0.1:{p}/readyz").status_code == 200,  # type: ignore[misc]
                       timeout=30, step=0.5, explain=lambda p=port: httpx.get(f"http://127.0.0.1:{p}/readyz").text)  # type: ignore[misc]
    finally:
        stats = burst.stop()
        for worker in workers:
            worker.stop()
    figures = assert_each_message_once(postgres_db, burst.sent)
    assert all(share > 0 for share in shares), f"a worker received nothing: {shares}"
    waits = alarm_waits(postgres_db)
    print(f"4 workers on 3 nodes: {figures}; worker killed at {killed_worker_at}, node killed at "
          f"{killed_node_at} of {burst.total} events; received per surviving worker {shares}; "
          f"{stats.total_failed} publishes without PUBACK, {stats.resent} resent; {suppressed:.0f} redeliveries "
          f"dropped as duplicates; longest alarm wait {waits[-1]:.2f} s (median {waits[len(waits) // 2]:.2f} s); "
          f"all stored {drained:.1f} s after the burst; {time.monotonic() - started:.1f} s in all")
    assert waits[-1] < 120, "an alarm waited past the generous bound that catches a hang"


@pytest.mark.timeout(420)
def test_two_workers_hold_everything_through_a_20_s_database_outage(
    rabbit: Rabbit, private_postgres: PostgresCluster, tmp_path: Path
) -> None:
    url = private_postgres.create_database()
    db = migrated_database(url)
    serials = DEVICES[100:160]
    setup_devices(db.sessions, serials)
    plan = burst_plan(serials, per_device=10, seed=3)
    workers = [CentreProcess("ingest", centre_env(url, rabbit.mqtt_url(), tmp_path / f"w{n}",
                                                  ingest_url=rabbit.ingest_url(), ingest_worker=f"db{n}",
                                                  metrics_port=free_port()), tmp_path / f"ingest-{n}.log").start()
               for n in range(2)]
    burst = Burst(BrokerAddress.from_url(rabbit.devices_url(), passwords=rabbit.passwords), plan, rate=30, hold_at=2)
    try:
        for worker in workers:
            wait_until(lambda w=worker: ingest_subscribed(w.log), timeout=60, step=0.1)  # type: ignore[misc]
        burst.connect()
        burst.start()
        wait_until(lambda: burst.made >= 60 and count(db, DeviceEvent) > 0, timeout=60, step=0.05)
        made_at_stop = burst.made
        down = time.monotonic()
        private_postgres.stop("fast")
        burst.release()
        try:
            wait_until(lambda: all("cannot commit" in w.log_tail(20_000) for w in workers), timeout=20, step=0.1)
            time.sleep(max(0.0, 20.0 - (time.monotonic() - down)))
            waiting = rabbit.queue_depths()
            assert all(w.alive for w in workers), "\n".join(w.log_tail() for w in workers)
        finally:
            private_postgres.start()
        outage = time.monotonic() - down
        burst.wait(60)
        drained = wait_until(lambda: count(db, DeviceEvent) >= burst.total, timeout=120, step=0.2)
        time.sleep(1.0)
        assert all(w.alive for w in workers)
    finally:
        burst.stop()
        for worker in workers:
            worker.stop()
    try:
        figures = assert_each_message_once(db, burst.sent)
        waits = alarm_waits(db)
    finally:
        db.engine.dispose()
    assert all("database is back" in w.log.read_text() for w in workers)
    assert not any("lost the broker" in w.log.read_text() for w in workers), "the outage cost a broker connection"
    print(f"database outage on the cluster: {figures}; {made_at_stop} made before the stop, down {outage:.1f} s, "
          f"queues at the end of it {waiting}; all stored {drained:.1f} s after it was back; longest alarm wait "
          f"{waits[-1]:.1f} s")
