"""The alarm lane through the shipped Mosquitto configuration (logins, ACLs), on SQLite and PostgreSQL:
an alarm overtakes a backlog of heartbeats that waits in the broker for the ingest; an alarm sent the
protocol 1.0 way still counts; the lane refuses what is not an alarm."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.incidents.models import Incident
from alarmcentre.ingest.consumer import Ingest
from alarmcentre.ingest.protocol import alarms_topic, events_topic
from alarmcentre.runtime import Database
from tests.conftest import SealedMosquitto, wait_until
from tests.factories import count_rows, event_payload, setup_devices

BACKLOG = 20_000


class DeviceLink:
    """One device's connection, with its own login (the broker binds the client id to it)."""

    def __init__(self, broker: SealedMosquitto, serial: str) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=serial)
        self.client.username_pw_set(serial, broker.device_passwords[serial])
        self.client.max_inflight_messages_set(1000)
        connected = threading.Event()
        self.client.on_connect = lambda *_args: connected.set()
        self.client.connect("127.0.0.1", broker.device_port)
        self.client.loop_start()
        assert connected.wait(10), "no CONNACK"

    def publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published(), "the broker did not acknowledge an event"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def heartbeats_of(db: Database, serial: str) -> int:
    return count_rows(db, DeviceEvent, DeviceEvent.type == "heartbeat",
                      DeviceEvent.device_id.in_(select(Device.id).where(Device.serial == serial)))


def test_an_alarm_overtakes_a_backlog_of_heartbeats_queued_in_the_broker(
    any_db: Database, sealed_mosquitto: SealedMosquitto
) -> None:
    setup_devices(any_db.sessions, ["SEAL-1", "SEAL-2"])
    ingest = Ingest(mqtt_url=sealed_mosquitto.centre_url(), session_factory=any_db.sessions)
    ingest.start()
    assert ingest.wait_connected(10)
    ingest.stop()  # away (a restart, a deployment): the broker queues for both of its sessions

    chatty, pressing = DeviceLink(sealed_mosquitto, "SEAL-1"), DeviceLink(sealed_mosquitto, "SEAL-2")
    try:
        chatty.publish_all([(events_topic("SEAL-1"), event_payload(seq, "heartbeat", battery=90))
                            for seq in range(1, BACKLOG + 1)])
        ingest = Ingest(mqtt_url=sealed_mosquitto.centre_url(), session_factory=any_db.sessions)
        ingest.start()
        pressing.publish_all([(alarms_topic("SEAL-2"), event_payload(1, "button_press"))])
        wait_until(lambda: count_rows(any_db, Incident) == 1, timeout=30)
        committed_before_the_alarm = heartbeats_of(any_db, "SEAL-1")
        wait_until(lambda: heartbeats_of(any_db, "SEAL-1") == BACKLOG, timeout=300, step=0.2)
    finally:
        chatty.close()
        pressing.close()
        ingest.stop()
    # The alarm did not wait for the backlog (with one queue it would have waited for all of it).
    assert committed_before_the_alarm < BACKLOG / 2, committed_before_the_alarm
    assert count_rows(any_db, DeviceEvent) == BACKLOG + 1


def test_an_alarm_on_the_events_topic_still_counts_and_the_lane_refuses_heartbeats(
    any_db: Database, sealed_mosquitto: SealedMosquitto
) -> None:
    setup_devices(any_db.sessions, ["SEAL-1"])
    ingest = Ingest(mqtt_url=sealed_mosquitto.centre_url(), session_factory=any_db.sessions)
    ingest.start()
    device = DeviceLink(sealed_mosquitto, "SEAL-1")
    try:
        assert ingest.wait_connected(10)
        device.publish_all([
            (events_topic("SEAL-1"), event_payload(1, "button_press")),  # a device of revision 1.0
            (alarms_topic("SEAL-1"), event_payload(2, "heartbeat")),
            (alarms_topic("SEAL-1"), event_payload(3, "cancel")),
            (alarms_topic("SEAL-1"), event_payload(1, "button_press")),  # seq 1 again: one counter, a redelivery
        ])
        wait_until(lambda: count_rows(any_db, DeviceEvent) == 2 and count_rows(any_db, DeadLetter) == 1, timeout=10)
    finally:
        device.close()
        ingest.stop()
    with any_db.sessions() as session:
        (letter,) = session.scalars(select(DeadLetter))
        assert letter.reason == "not_an_alarm" and letter.topic == alarms_topic("SEAL-1")
        assert sorted(e.type for e in session.scalars(select(DeviceEvent))) == ["button_press", "cancel"]
        assert session.scalars(select(Incident)).one().signal_count == 1
