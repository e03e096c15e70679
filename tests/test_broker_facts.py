"""What Mosquitto really does with MQTT shared subscriptions ($share/…), which competing ingest
workers would rely on. docs/brokers.md states these facts and why the centre does not run several
ingest workers on one Mosquitto; if a Mosquitto upgrade changes them, this fails and the page (and
the choice) must be looked at again."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import MosquittoProcess, wait_until


class Worker:
    """A would-be ingest worker: persistent session, one shared subscription, records what it gets."""

    def __init__(self, broker: MosquittoProcess, name: str, *, acknowledge: bool = True) -> None:
        self.received: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, clean_session=False,
                                  manual_ack=not acknowledge)
        self.client.on_message = lambda _c, _u, msg: self.received.append(msg.payload.decode())
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe("$share/ingest/facts/#", 1)
        assert subscribed.wait(5)

    def leave(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def die(self) -> None:
        """Gone without a word (kill -9): the socket closes, nothing is acknowledged."""
        self.client.loop_stop()
        self.client.socket().close()


def publish(broker: MosquittoProcess, prefix: str, count: int) -> list[str]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"publisher-{prefix}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    sent = [f"{prefix}{n}" for n in range(count)]
    for payload in sent:
        client.publish("facts/x", payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    return sent


def test_mosquitto_queues_a_shared_subscriptions_messages_for_an_offline_member(mosquitto: MosquittoProcess) -> None:
    first, second = Worker(mosquitto, "w1"), Worker(mosquitto, "w2")
    publish(mosquitto, "a", 10)
    wait_until(lambda: len(first.received) + len(second.received) == 10, timeout=5)
    assert len(first.received) == len(second.received) == 5  # shared round robin, as expected

    second.leave()  # a worker stopped or died; its persistent session stays
    sent = publish(mosquitto, "b", 10)
    time.sleep(0.5)
    # Half of what was sent meanwhile went to the session of the worker that is gone, not to the one
    # that is running: it waits there until that worker comes back.
    waiting = [p for p in sent if p not in first.received]
    assert len(waiting) == 5
    back = Worker(mosquitto, "w2")
    wait_until(lambda: all(p in back.received for p in waiting), timeout=5)
    first.leave()
    back.leave()


def test_mosquitto_keeps_what_a_dead_member_held_unacknowledged_for_that_member(mosquitto: MosquittoProcess) -> None:
    holder, other = Worker(mosquitto, "w1", acknowledge=False), Worker(mosquitto, "w2")
    publish(mosquitto, "c", 10)
    wait_until(lambda: len(holder.received) == 5 and len(other.received) == 5, timeout=5)
    held = list(holder.received)
    holder.die()
    time.sleep(1.0)
    assert not any(p in other.received for p in held), "the running worker got the dead one's messages"
    again = Worker(mosquitto, "w1")  # only the same identity coming back gets them
    wait_until(lambda: all(p in again.received for p in held), timeout=5)
    other.leave()
    again.leave()
