"""A private 3-node RabbitMQ cluster for the tests, set up as production is (docs/brokers.md).

The cluster itself comes from bench/brokers/cluster.py (its own epmd, Erlang cookie and free loopback
ports; the machine's RabbitMQ service is never touched). On top of it the centre's definitions file
(alarmcentre/broker/rabbitmq.py) is imported: the quorum queues, the centre's login and one login per
test device, each confined to its own topics.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from alarmcentre.broker import rabbitmq
from alarmcentre.broker.acl import CENTRE_USER
from alarmcentre.ingest.amqp import QUEUES
from bench.brokers.cluster import RABBIT_BIN, RabbitCluster
from tests.conftest import missing_service

T = TypeVar("T")
CENTRE_PASSWORD = "centre-login-for-tests"
DEVICES = [f"RMQ-{n:04d}" for n in range(200)]


def device_password(serial: str) -> str:
    return f"{serial}-login-for-tests"


class Rabbit:
    """The running cluster, and the URLs the centre and the devices use on it."""

    def __init__(self, cluster: RabbitCluster, definitions: Path) -> None:
        self.cluster = cluster
        self.definitions = definitions  # the test logins: import again after a test changed logins

    def import_definitions(self, path: Path | None = None) -> None:
        alive = next(i for i, node in enumerate(self.cluster.nodes) if node.pid)
        self.cluster.ctl(alive, "import_definitions", str(path or self.definitions))

    def ingest_url(self, nodes: list[int] | None = None) -> str:
        indexes = range(len(self.cluster.nodes)) if nodes is None else nodes
        return ",".join(f"amqp://{CENTRE_USER}:{CENTRE_PASSWORD}@127.0.0.1:{self.cluster.nodes[i].ports['amqp']}/"
                        for i in indexes)

    def mqtt_url(self, user: str = CENTRE_USER, password: str = CENTRE_PASSWORD, node: int = 0) -> str:
        return f"mqtt://{user}:{password}@127.0.0.1:{self.cluster.nodes[node].mqtt}"

    def devices_url(self) -> str:
        """Every node, for devices that fail over (the simulator's cluster URL); logins per serial."""
        nodes = [f"127.0.0.1:{node.mqtt}" for node in self.cluster.nodes]
        return f"mqtt://{nodes[0]}" + "".join(f",{node}" for node in nodes[1:])

    @property
    def passwords(self) -> dict[str, str]:
        return {serial: device_password(serial) for serial in DEVICES}

    def queue_depths(self) -> dict[str, int]:
        """Messages ready in each of the centre's queues, as the queue's leader counts them."""
        return self._on_channel(lambda channel: {
            queue: channel.queue_declare(queue, passive=True).method.message_count for queue in QUEUES})

    def purge(self) -> None:
        """Empty the centre's queues: what one test left must not reach the next one's database."""
        self._on_channel(lambda channel: [channel.queue_purge(queue) for queue in QUEUES])

    def _on_channel(self, work: Callable[[BlockingChannel], T]) -> T:
        alive = [i for i, node in enumerate(self.cluster.nodes) if node.pid]
        connection = pika.BlockingConnection(pika.URLParameters(self.ingest_url(alive[:1])))
        try:
            return work(connection.channel())
        finally:
            with contextlib.suppress(Exception):
                connection.close()


def start_cluster(attempts: int = 2, budget: float = 150.0) -> Iterator[Rabbit]:
    """A private 3-node cluster with the centre's and the test devices' logins.

    A start that fails or takes longer than `budget` is tried once more on new ports, saying why (the
    nodes' last log lines): a port taken between choosing it and binding it must not fail a module."""
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        missing_service(f"no RabbitMQ server in {RABBIT_BIN} (Debian: apt-get install rabbitmq-server)")
    for attempt in range(1, attempts + 1):
        base = Path(tempfile.mkdtemp(prefix="alarmcentre-rabbit-"))
        cluster = RabbitCluster(base / "cluster", prefix=f"act{base.name[-6:].lower().replace('_', '')}")
        try:
            seconds = cluster.start(budget=budget)
            break
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as error:
            logs = cluster.log_tail()
            cluster.stop()
            shutil.rmtree(base, ignore_errors=True)
            if attempt == attempts:
                pytest.fail(f"the private RabbitMQ cluster did not start ({attempts} tries): {error}\n{logs}")
            print(f"the private RabbitMQ cluster did not start ({error}); again on new ports\n{logs}",
                  file=sys.stderr)
    print(f"private RabbitMQ cluster ready in {seconds:.1f} s", file=sys.stderr)
    try:
        definitions = rabbitmq.empty()
        rabbitmq.set_login(definitions, CENTRE_USER, CENTRE_PASSWORD)
        for serial in DEVICES:
            rabbitmq.set_login(definitions, serial, device_password(serial))
        path = base / "definitions.json"
        rabbitmq.save(path, definitions)
        rabbit = Rabbit(cluster, path)
        rabbit.import_definitions()
        yield rabbit
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
