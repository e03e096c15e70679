#!/usr/bin/env python3
"""Ingest on a private 3-node RabbitMQ cluster: scaling with workers, and faults counted end to end.

One run, with services it starts and removes itself (never the machine's own RabbitMQ, Mosquitto or NATS):

- a private 3-node RabbitMQ 3.10 cluster (bench/brokers/cluster.py) with the centre's definitions file
  (alarmcentre/broker/rabbitmq.py) imported once: the two quorum queues, the centre's login and one login
  per device (--devices of them);
- the devices are the project's simulator (alarmcentre_sim.fleet.Fleet), one MQTT connection each, QoS 1,
  failing over between the three nodes and keeping in an outbox what was not PUBACKed;
- the ingest is `alarmcentre ingest` worker processes (ALARMCENTRE_INGEST_URL lists the three nodes),
  each with a Prometheus port;
- every row and every fault gets a fresh scratch database (migrated, one client per device), dropped after.

1. Scaling: the same burst (--messages from --devices, about one in --alarm-every an alarm) into 1, 2 and
   4 workers (--workers). Per row: ingest rate = events stored / (last committed_at - first occurred_at),
   the devices' publish rate (made / time to the last PUBACK), alarm wait p50/p99/max (committed_at -
   occurred_at of the alarms), CPU seconds per 1,000 messages of the workers and of the three beam.smp
   processes (utime + stime from /proc/PID/stat), and the ratio to the 1-worker rate of the same run.
   The queues are purged between rows. Then (unless --no-drain) the same burst is published while no
   worker runs and drained from the queues by the row's workers: the ingest's own rate, without the
   devices' publishing competing for the cores (rate = stored / (last commit - first commit)).
2. Faults, each during a burst of --fault-messages from --fault-devices into 4 workers: every device
   sends its first quarter of events and waits; the fault is injected; the rest is sent while it lasts.
   - worker: kill -9 of one worker;
   - node: kill -9 of one broker node (the leader of the alarms queue), restarted after the count;
   - all-nodes: kill -9 of all three nodes at once, then all restarted (start_nodes([0, 1, 2]));
   - database: a private PostgreSQL (initdb'd here, as the postgres user when root) stopped for
     --outage seconds.
   Per fault: events the devices made, PUBACKed, stored (distinct), lost (made, not stored and not
   still in an outbox), duplicates, events still in outboxes, alarms not on an incident, clients
   whose incident count or signal count is wrong, dead letters, the longest alarm wait, the drain time
   after the fault ended, and how long the fault took to inject (e.g. the cluster restart).

Prints a table of figures (and JSON with --json), with the machine's load average before and after.

    PYTHONPATH=. .venv/bin/python bench/ingest_cluster.py --quick                # about 10 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python bench/ingest_cluster.py                        # 1,000 devices, 20,000 messages
    PYTHONPATH=. .venv/bin/python bench/ingest_cluster.py --faults worker,node --no-scaling
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pika
import psycopg
from sqlalchemy import func, select

from alarmcentre.broker import rabbitmq
from alarmcentre.broker.acl import CENTRE_USER
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.incidents.models import Incident, IncidentKind
from alarmcentre.ingest.amqp import QUEUES
from alarmcentre.runtime import Database
from alarmcentre_sim.connection import BrokerAddress
from bench.brokers.cluster import RABBIT_BIN, RabbitCluster
from tests.conftest import (
    POSTGRES_ADMIN_URL,
    CentreProcess,
    PostgresCluster,
    free_port,
    ingest_subscribed,
    migrated_database,
)
from tests.factories import setup_devices
from tests.test_faults import Burst, centre_env, scrape

ALARMS = ("button_press", "fall_detected")
FAULTS = ("worker", "node", "all-nodes", "database")
QUICK = {"devices": 200, "messages": 4_000, "fault_devices": 200, "fault_messages": 4_000}
DEFAULTS = {"devices": 1_000, "messages": 20_000, "fault_devices": 1_000, "fault_messages": 20_000}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    devices: int
    messages: int
    fault_devices: int
    fault_messages: int
    workers: tuple[int, ...]
    fault_workers: int
    faults: tuple[str, ...]
    scaling: bool
    drain: bool
    alarm_every: int
    outage: float
    fault_rate: float | None
    database_url: str
    timeout: float
    json_path: str | None
    quick: bool


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _list(choices: Sequence[str] | None) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in value.split(",") if item.strip())
        bad = [item for item in items if choices is not None and item not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices or ())}")
        return items
    return parse


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/ingest_cluster.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes ({QUICK['devices']} devices, {QUICK['messages']:,} messages per row and "
                             "per fault): about 10 minutes on 2 cores")
    parser.add_argument("--devices", type=_positive, default=None,
                        help=f"devices in the scaling rows (default {DEFAULTS['devices']:,})")
    parser.add_argument("--messages", type=_positive, default=None,
                        help=f"messages per scaling row (default {DEFAULTS['messages']:,}; rounded to a whole number "
                             "per device)")
    parser.add_argument("--fault-devices", type=_positive, default=None,
                        help=f"devices in each fault's burst (default {DEFAULTS['fault_devices']:,})")
    parser.add_argument("--fault-messages", type=_positive, default=None,
                        help=f"messages in each fault's burst (default {DEFAULTS['fault_messages']:,})")
    parser.add_argument("--workers", type=_list(None), default=("1", "2", "4"),
                        help="worker counts of the scaling rows, comma-separated (default 1,2,4; the first is the "
                             "ratio's baseline)")
    parser.add_argument("--fault-workers", type=_positive, default=4, help="workers during the faults (default 4)")
    parser.add_argument("--faults", type=_list(FAULTS), default=FAULTS,
                        help=f"faults to inject, comma-separated (default all: {','.join(FAULTS)})")
    parser.add_argument("--no-faults", action="store_true", help="the scaling rows only")
    parser.add_argument("--no-scaling", action="store_true", help="the faults only")
    parser.add_argument("--no-drain", action="store_true",
                        help="skip each scaling row's second measurement: the same burst published while no worker "
                             "runs, then drained from the queues by the row's workers (the ingest's own rate, "
                             "without the devices and the broker's publishing competing for the cores)")
    parser.add_argument("--alarm-every", type=_positive, default=25,
                        help="about one message in N is an alarm (button_press or fall_detected; default 25)")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds the database is down (default 20)")
    parser.add_argument("--fault-rate", type=float, default=None, metavar="MSG_PER_S",
                        help="the devices' total publish rate during the faults (default: as fast as they get PUBACKs)")
    parser.add_argument("--database-url", default=POSTGRES_ADMIN_URL,
                        help="PostgreSQL server for the scaling rows and the broker faults; a scratch database is "
                             "created per row and dropped (default %(default)s). The database fault uses a private "
                             "server of its own.")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds any one wait (connect, burst, drain, restart) may take before the row is "
                             "reported as incomplete (default 300)")
    parser.add_argument("--json", dest="json_path", metavar="PATH", default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULTS
    workers = tuple(int(w) for w in args.workers)
    if not workers or min(workers) < 1:
        parser.error("--workers needs counts of at least 1")
    return Options(
        devices=args.devices or sizes["devices"], messages=args.messages or sizes["messages"],
        fault_devices=args.fault_devices or sizes["fault_devices"],
        fault_messages=args.fault_messages or sizes["fault_messages"],
        workers=workers, fault_workers=args.fault_workers, faults=() if args.no_faults else args.faults,
        scaling=not args.no_scaling, drain=not args.no_drain, alarm_every=args.alarm_every, outage=args.outage,
        fault_rate=args.fault_rate,
        database_url=args.database_url, timeout=args.timeout, json_path=args.json_path, quick=args.quick)


# -- measuring ------------------------------------------------------------------------------


def process_cpu(pid: int | None) -> float:
    """utime + stime of one process, seconds (0 if it is gone)."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy seconds of all cores, wall seconds since boot) from /proc/stat and /proc/uptime."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return (sum(values[:8]) - idle) / CLK_TCK, uptime


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


class CpuWindow:
    """CPU seconds of given processes between start() and stop(); pids are read when sampled."""

    def __init__(self, groups: dict[str, Callable[[], list[int | None]]]) -> None:
        self.groups = groups
        self.used: dict[str, float] = {}
        self._start: dict[str, dict[int, float]] = {}
        self._machine: tuple[float, float] = (0.0, 0.0)
        self.machine_cores = 0.0

    def start(self) -> None:
        self._start = {name: {pid: process_cpu(pid) for pid in pids() if pid} for name, pids in self.groups.items()}
        self._machine = machine_busy()

    def stop(self) -> None:
        for name, pids in self.groups.items():
            begun = self._start.get(name, {})
            self.used[name] = sum(process_cpu(pid) - begun.get(pid, 0.0) for pid in pids() if pid)
        busy, uptime = machine_busy()
        self.machine_cores = (busy - self._machine[0]) / max(uptime - self._machine[1], 1e-9)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.2) -> float | None:
    """Seconds until `predicate` held, or None after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            return None
        time.sleep(step)
    return time.monotonic() - start


# -- the traffic ------------------------------------------------------------------------------


def plan(serials: list[str], messages: int, alarm_every: int, seed: int) -> dict[str, list[str]]:
    """Each device's events in order: heartbeats, about one in `alarm_every` an alarm (fixed by the seed)."""
    per_device = max(1, round(messages / len(serials)))
    rng = random.Random(seed)
    share = 1 / alarm_every
    kinds, weights = ["heartbeat", "button_press", "fall_detected"], [1 - share, share * 0.8, share * 0.2]
    return {serial: rng.choices(kinds, weights, k=per_device) for serial in serials}


class BenchBurst(Burst):
    """tests.test_faults.Burst with a longer connect bound (1,000 devices on a 3-node cluster) and no asserts."""

    def connect_within(self, timeout: float) -> float:
        started = time.monotonic()
        self.fleet.start_in_thread()
        if not self.fleet.wait_connected(timeout):
            raise RuntimeError(f"the simulated devices did not connect within {timeout:.0f} s: {self.describe()}")
        connected = wait_for(lambda: len(self.fleet.stats.devices_connected) == len(self.plan), 60)
        if connected is None:
            raise RuntimeError(f"only {len(self.fleet.stats.devices_connected)}/{len(self.plan)} devices connected")
        return time.monotonic() - started

    def acked(self) -> int:
        published = self.fleet.stats.published
        return sum(published[kind] for kind in ("heartbeat", *ALARMS))

    def in_outboxes(self) -> set[tuple[str, int]]:
        waiting = set()
        for device in self.fleet.devices.values():
            for _kind, data in list(device._outbox):
                with suppress(ValueError, KeyError):
                    waiting.add((device.device_id, int(json.loads(data)["seq"])))
        return waiting


# -- services -------------------------------------------------------------------------------


CENTRE_PASSWORD = "centre-login-for-the-bench"


class Rabbit:
    """The running cluster, and the URLs the centre and the devices use on it."""

    def __init__(self, cluster: RabbitCluster) -> None:
        self.cluster = cluster

    def ingest_url(self) -> str:
        return ",".join(f"amqp://{CENTRE_USER}:{CENTRE_PASSWORD}@127.0.0.1:{node.ports['amqp']}/"
                        for node in self.cluster.nodes)

    def mqtt_url(self) -> str:
        return f"mqtt://{CENTRE_USER}:{CENTRE_PASSWORD}@127.0.0.1:{self.cluster.nodes[0].mqtt}"

    def devices_url(self) -> str:
        """Every node, for devices that fail over (the simulator's cluster URL); logins per serial."""
        return "mqtt://" + ",".join(f"127.0.0.1:{node.mqtt}" for node in self.cluster.nodes)

    def _channel_work(self, work: Callable[[Any], Any]) -> Any:
        node = next(node for node in self.cluster.nodes if node.pid)
        url = f"amqp://{CENTRE_USER}:{CENTRE_PASSWORD}@127.0.0.1:{node.ports['amqp']}/"
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            return work(connection.channel())
        finally:
            with suppress(Exception):
                connection.close()

    def queue_depths(self) -> dict[str, int]:
        """Messages ready in each of the centre's queues."""
        return self._channel_work(lambda channel: {
            queue: channel.queue_declare(queue, passive=True).method.message_count for queue in QUEUES})

    def purge(self) -> None:
        """Empty the centre's queues: what one row left must not reach the next one's database."""
        self._channel_work(lambda channel: [channel.queue_purge(queue) for queue in QUEUES])


def serials_for(n: int) -> list[str]:
    return [f"BCL-{i:04d}" for i in range(n)]


def device_password(serial: str) -> str:
    return f"{serial}-bench-login"


@contextmanager
def rabbit_cluster(devices: int, base: Path) -> Iterator[Rabbit]:
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        raise SystemExit(f"no RabbitMQ server in {RABBIT_BIN} (Debian: apt-get install rabbitmq-server)")
    cluster = RabbitCluster(base / "cluster", prefix=f"acb{uuid.uuid4().hex[:6]}")
    try:
        ready = cluster.start()
        definitions = rabbitmq.empty()
        rabbitmq.set_login(definitions, CENTRE_USER, CENTRE_PASSWORD)
        for serial in serials_for(devices):
            rabbitmq.set_login(definitions, serial, device_password(serial))
        path = base / "definitions.json"
        rabbitmq.save(path, definitions)
        started = time.monotonic()
        cluster.ctl(0, "import_definitions", str(path), timeout=300)
        say(f"cluster up in {ready:.1f} s; definitions with {devices} device logins imported in "
            f"{time.monotonic() - started:.1f} s")
        yield Rabbit(cluster)
    finally:
        cluster.stop()


class ScratchDatabase:
    """A fresh database on a PostgreSQL server, migrated, one client per device; dropped by drop()."""

    def __init__(self, admin_url: str, serials: list[str]) -> None:
        self.admin_url = admin_url
        self.name = f"alarmcentre_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = f"{admin_url.rsplit('/', 1)[0]}/{self.name}"
        self.db: Database = migrated_database(self.url)
        setup_devices(self.db.sessions, serials)

    def drop(self) -> None:
        self.db.engine.dispose()
        with suppress(psycopg.Error), psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def stored(self) -> int:
        with self.db.sessions() as session:
            return session.scalar(select(func.count()).select_from(DeviceEvent)) or 0


@contextmanager
def private_postgres() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of our own to stop and start (as the postgres user when we are root)."""
    as_root = os.geteuid() == 0
    directory = Path(tempfile.mkdtemp(prefix="alarmcentre-bench-pg-"))
    if as_root:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
    cluster = PostgresCluster(directory, free_port(), "postgres" if as_root else None)
    try:
        cluster.initdb()
        cluster.start()
        yield cluster
    finally:
        with suppress(Exception):
            if cluster.running:
                cluster.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


class Workers:
    """N `alarmcentre ingest` processes on the cluster, each with its own name and metrics port."""

    def __init__(self, rabbit: Rabbit, database_url: str, n: int, logs: Path, tag: str) -> None:
        self.procs: list[CentreProcess] = []
        logs.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            env = centre_env(database_url, rabbit.mqtt_url(), logs / f"{tag}-w{i}",
                             ingest_url=rabbit.ingest_url(), ingest_worker=f"{tag}-w{i}", metrics_port=free_port())
            self.procs.append(CentreProcess("ingest", env, logs / f"{tag}-ingest-{i}.log").start())

    def wait_subscribed(self, timeout: float) -> None:
        for proc in self.procs:
            if wait_for(lambda p=proc: ingest_subscribed(p.log), timeout, 0.1) is None:  # type: ignore[misc]
                raise RuntimeError(f"a worker did not subscribe within {timeout:.0f} s:\n{proc.log_tail()}")

    def pids(self) -> list[int | None]:
        return [p.process.pid if p.process is not None else None for p in self.procs]

    def metric(self, name: str) -> float:
        total = 0.0
        for proc in self.procs:
            if proc.alive:
                with suppress(OSError):
                    total += scrape(int(proc.env["ALARMCENTRE_METRICS_PORT"]), name)
        return total

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


# -- counting -------------------------------------------------------------------------------


def count(db: Database, burst: BenchBurst, waiting: set[tuple[str, int]]) -> dict[str, Any]:
    """What the devices made against what the database holds; nothing asserted, everything reported."""
    sent = burst.sent
    with db.sessions() as session:
        rows = session.execute(select(Device.serial, DeviceEvent.seq, DeviceEvent.type, DeviceEvent.occurred_at,
                                      DeviceEvent.committed_at, DeviceEvent.incident_id)
                               .join(Device, Device.id == DeviceEvent.device_id)).all()
        client_of = dict(session.execute(select(Device.serial, Device.client_id)).all())
        incidents = session.execute(
            select(Incident.client_id, Incident.signal_count)
            .where(Incident.kind.in_([IncidentKind(kind) for kind in ALARMS]), Incident.device_id.is_not(None))).all()
        dead_letters = session.scalar(select(func.count()).select_from(DeadLetter)) or 0
    stored = Counter((serial, seq, kind) for serial, seq, kind, *_ in rows)
    missing = set(sent) - set(stored)
    lost = [m for m in missing if (m[0], m[1]) not in waiting]
    alarms = Counter(client_of[serial] for serial, _, kind in sent if kind in ALARMS)
    per_client = Counter(client_id for client_id, _ in incidents)
    signals = Counter()
    for client_id, signal_count in incidents:
        signals[client_id] += signal_count
    wrong_clients = sum(1 for client in set(alarms) | set(per_client)
                        if per_client[client] != 1 or signals[client] != alarms[client])
    waits = sorted((committed - occurred).total_seconds() for _s, _q, kind, occurred, committed, _i in rows
                   if kind in ALARMS)
    times: list[datetime] = [r[3] for r in rows]
    commits: list[datetime] = [r[4] for r in rows]
    span = (max(commits) - min(times)).total_seconds() if rows else float("nan")
    return {
        "made": len(sent), "acked": burst.acked(), "stored": len(stored), "lost": len(lost),
        "lost_examples": sorted(lost)[:5], "in_outboxes": len(waiting), "not_made": len(set(stored) - set(sent)),
        "duplicates": sum(n - 1 for n in stored.values()), "alarms": sum(alarms.values()),
        "alarms_without_incident": sum(1 for *_x, kind, _o, _c, incident in rows
                                       if kind in ALARMS and incident is None),
        "clients_wrong_incidents": wrong_clients, "incidents": len(incidents), "dead_letters": dead_letters,
        "alarm_wait_p50": percentile(waits, 50), "alarm_wait_p99": percentile(waits, 99),
        "alarm_wait_max": waits[-1] if waits else float("nan"),
        "rate": len(stored) / span if span > 0 else float("nan"), "span": span,
    }


# -- the runs --------------------------------------------------------------------------------


@dataclass
class Run:
    opts: Options
    rabbit: Rabbit
    base: Path
    results: dict[str, Any] = field(default_factory=dict)

    def devices(self, n: int) -> BrokerAddress:
        serials = serials_for(n)
        return BrokerAddress.from_url(self.rabbit.devices_url(),
                                      passwords={serial: device_password(serial) for serial in serials})

    def ensure_nodes(self) -> None:
        for i, node in enumerate(self.rabbit.cluster.nodes):
            if not node.pid:
                say(f"restarting node {i + 1}")
                self.rabbit.cluster.start_node(i)

    def purge(self) -> None:
        self.ensure_nodes()
        self.rabbit.purge()

    def scaling_row(self, workers: int, seed: int) -> dict[str, Any]:
        opts = self.opts
        serials = serials_for(opts.devices)
        self.purge()
        scratch = ScratchDatabase(opts.database_url, serials)
        pool = Workers(self.rabbit, scratch.url, workers, self.base / "logs", f"s{workers}")
        burst = BenchBurst(self.devices(opts.devices), plan(serials, opts.messages, opts.alarm_every, seed), rate=0)
        burst.fleet.rate_limit = None  # as fast as the PUBACKs come
        cpu = CpuWindow({"workers": pool.pids, "broker": lambda: [n.pid for n in self.rabbit.cluster.nodes],
                         "bench": lambda: [os.getpid()]})
        row: dict[str, Any] = {"workers": workers, "load_before": load()}
        try:
            pool.wait_subscribed(opts.timeout)
            row["connect_s"] = burst.connect_within(opts.timeout)
            cpu.start()
            go = time.monotonic()
            burst.start()
            burst.wait(opts.timeout)
            row["publish_rate"] = burst.made / (time.monotonic() - go)
            drained = wait_for(lambda: scratch.stored() >= burst.total, opts.timeout)
            cpu.stop()
            row["complete"] = drained is not None
            row["drain_after_burst_s"] = drained
            time.sleep(1.0)
            row["redeliveries_dropped"] = pool.metric("alarmcentre_ingest_duplicates_total")
            row["received"] = pool.metric("alarmcentre_ingest_messages_received_total")
            waiting = burst.in_outboxes()
        finally:
            try:
                burst.stop()
            finally:
                pool.stop()
        try:
            row.update(count(scratch.db, burst, waiting))
        finally:
            scratch.drop()
        per_k = 1000 / max(row["stored"], 1)
        row.update({f"cpu_{name}_per_1000": used * per_k for name, used in cpu.used.items()})
        row["machine_cores_busy"] = cpu.machine_cores
        row["load_after"] = load()
        return row

    def drain_row(self, workers: int, seed: int) -> dict[str, Any]:
        """The same burst published while no worker runs (the queues keep it), then drained by `workers`."""
        opts = self.opts
        serials = serials_for(opts.devices)
        self.purge()
        scratch = ScratchDatabase(opts.database_url, serials)
        burst = BenchBurst(self.devices(opts.devices), plan(serials, opts.messages, opts.alarm_every, seed), rate=0)
        burst.fleet.rate_limit = None
        row: dict[str, Any] = {}
        pool: Workers | None = None
        stopped = False
        try:
            burst.connect_within(opts.timeout)
            burst.start()
            burst.wait(opts.timeout)
            waiting = burst.in_outboxes()
            burst.stop()
            stopped = True
            row["queued"] = self.rabbit.queue_depths()
            pool = Workers(self.rabbit, scratch.url, workers, self.base / "logs", f"d{workers}")
            cpu = CpuWindow({"workers": pool.pids, "broker": lambda: [n.pid for n in self.rabbit.cluster.nodes]})
            cpu.start()
            row["complete"] = wait_for(lambda: scratch.stored() >= burst.total, opts.timeout) is not None
            cpu.stop()
        finally:
            if pool is not None:
                pool.stop()
            if not stopped:
                burst.stop()
        try:
            counted = count(scratch.db, burst, waiting)
            with scratch.db.sessions() as session:
                first, last = session.execute(select(func.min(DeviceEvent.committed_at),
                                                     func.max(DeviceEvent.committed_at))).one()
        finally:
            scratch.drop()
        span = (last - first).total_seconds() if first is not None else float("nan")
        per_k = 1000 / max(counted["stored"], 1)
        row.update({"stored": counted["stored"], "made": counted["made"], "lost": counted["lost"],
                    "duplicates": counted["duplicates"], "rate": counted["stored"] / span if span > 0 else float("nan"),
                    "alarm_wait_max": counted["alarm_wait_max"], "machine_cores_busy": cpu.machine_cores,
                    **{f"cpu_{name}_per_1000": used * per_k for name, used in cpu.used.items()}})
        return row

    def fault(self, name: str, seed: int) -> dict[str, Any]:
        opts = self.opts
        serials = serials_for(opts.fault_devices)
        self.purge()
        with private_postgres() if name == "database" else _nothing() as pg:
            admin = pg.admin_url if pg is not None else opts.database_url
            scratch = ScratchDatabase(admin, serials)
            pool = Workers(self.rabbit, scratch.url, opts.fault_workers, self.base / "logs", f"f-{name}")
            events = plan(serials, opts.fault_messages, opts.alarm_every, seed)
            per_device = len(next(iter(events.values())))
            hold = max(1, per_device // 4)
            burst = BenchBurst(self.devices(opts.fault_devices), events, rate=0, hold_at=hold)
            burst.fleet.rate_limit = opts.fault_rate
            row: dict[str, Any] = {"fault": name, "load_before": load()}
            try:
                pool.wait_subscribed(opts.timeout)
                row["connect_s"] = burst.connect_within(opts.timeout)
                burst.start()
                held = wait_for(lambda: burst.made >= hold * len(serials), opts.timeout, 0.05)
                if held is None:
                    raise RuntimeError(f"devices did not reach their hold point: {burst.describe()}")
                # the ingest is at work: it has committed some and holds or awaits the rest
                wait_for(lambda: scratch.stored() > 0, opts.timeout, 0.05)
                row["made_at_fault"], row["stored_at_fault"] = burst.made, scratch.stored()
                fault_started = time.monotonic()
                fault_ended = self.inject(name, pool, pg, burst, row)
                row["fault_s"] = fault_ended - fault_started
                burst.wait(opts.timeout)
                last_made = time.monotonic()
                drained = wait_for(lambda: scratch.stored() >= burst.total, opts.timeout)
                row["complete"] = drained is not None
                if drained is not None:
                    done = last_made + drained
                    row["drain_after_fault_s"] = done - fault_ended
                    row["drain_after_burst_s"] = drained
                time.sleep(2.0)  # anything redelivered late must still not duplicate
                row["redeliveries_dropped"] = pool.metric("alarmcentre_ingest_duplicates_total")
                row["workers_alive"] = sum(1 for p in pool.procs if p.alive)
                row["resent"] = burst.fleet.stats.resent
                row["publish_failures"] = burst.fleet.stats.total_failed
                waiting = burst.in_outboxes()
                if not row["complete"]:
                    row["devices"] = burst.describe()
                    with suppress(Exception):
                        row["queues"] = self.rabbit.queue_depths()
            finally:
                try:
                    burst.stop()
                finally:
                    pool.stop()
            try:
                row.update(count(scratch.db, burst, waiting))
            finally:
                scratch.drop()
        row["load_after"] = load()
        return row

    def inject(self, name: str, pool: Workers, pg: PostgresCluster | None, burst: BenchBurst,
               row: dict[str, Any]) -> float:
        """Inject the fault, release the devices; returns when the fault ended (monotonic)."""
        cluster = self.rabbit.cluster
        if name == "worker":
            pool.procs[0].kill()
            burst.release()
            return time.monotonic()
        if name == "node":
            node = self.alarms_leader()
            row["killed_node"] = node + 1
            cluster.kill(node)
            burst.release()
            return time.monotonic()
        if name == "all-nodes":
            for i in range(len(cluster.nodes)):
                cluster.kill(i)
            killed = time.monotonic()
            burst.release()
            try:
                row["restart_s"] = cluster.start_nodes(list(range(len(cluster.nodes))))
            except Exception as exc:  # report it, then the row is incomplete
                row["restart_error"] = repr(exc)[:500]
                raise
            row["down_s"] = time.monotonic() - killed
            return time.monotonic()
        assert pg is not None and name == "database"
        down = time.monotonic()
        pg.stop("fast")
        burst.release()
        time.sleep(max(0.0, self.opts.outage - (time.monotonic() - down)))
        pg.start()
        row["down_s"] = time.monotonic() - down
        return time.monotonic()

    def alarms_leader(self) -> int:
        """Index of the node leading the alarms queue (node 2 if the cluster does not say)."""
        with suppress(Exception):
            out = self.rabbit.cluster.ctl(0, "list_queues", "name", "leader", "--no-table-headers", "--quiet")
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == "alarmcentre.alarms":
                    for i, node in enumerate(self.rabbit.cluster.nodes):
                        if node.name == parts[1]:
                            return i
        return 1


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


# -- the report ------------------------------------------------------------------------------


def _f(value: Any, fmt: str = "{:,.0f}") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "-"
    return fmt.format(value) if isinstance(value, int | float) else str(value)


def render(report: dict[str, Any]) -> str:
    lines = [f"ingest on a 3-node RabbitMQ cluster, {report['started']}; {os.cpu_count()} cores; "
             f"load average at start {report['load_start']}, at end {report['load_end']}; {report['seconds']:.0f} s"]
    rows = report.get("scaling", [])
    if rows:
        base = next((r["rate"] for r in rows if r.get("rate") == r.get("rate")), None)
        opts = report["options"]
        lines += ["", f"scaling: {opts['devices']:,} devices, {_f(rows[0].get('made'))} messages per row, "
                      f"{_f(rows[0].get('alarms'))} alarms", "",
                  "| workers | stored / made | ingest msg/s | ratio | devices' publish msg/s | alarm wait p50 / p99 / "
                  "max s | CPU s per 1,000: workers / broker (3 nodes) / simulator | machine cores busy | load "
                  "before → after | lost / dup |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
        for r in rows:
            if "made" not in r:
                lines.append(f"| {r['workers']} | FAILED: {r.get('error', '?')} |")
                continue
            ratio = r["rate"] / base if base else float("nan")
            lines.append(
                f"| {r['workers']} | {r['stored']:,} / {r['made']:,} | {_f(r['rate'])} | {_f(ratio, '{:.2f}')} | "
                f"{_f(r.get('publish_rate'))} | {_f(r['alarm_wait_p50'], '{:.2f}')} / "
                f"{_f(r['alarm_wait_p99'], '{:.2f}')} / {_f(r['alarm_wait_max'], '{:.2f}')} | "
                f"{_f(r['cpu_workers_per_1000'], '{:.2f}')} / {_f(r['cpu_broker_per_1000'], '{:.2f}')} / "
                f"{_f(r['cpu_bench_per_1000'], '{:.2f}')} | {_f(r['machine_cores_busy'], '{:.2f}')} | "
                f"{r['load_before']} → {r['load_after']} | {r['lost']} / {r['duplicates']} |")
    queued = [(r["workers"], r["queued"]) for r in rows if isinstance(r.get("queued"), dict) and "rate" in r["queued"]]
    if queued:
        base = queued[0][1]["rate"]
        lines += ["", "the same burst queued first (no worker running), then drained (rate = stored / (last commit - "
                      "first commit)):", "",
                  "| workers | stored / made | drain msg/s | ratio | CPU s per 1,000: workers / broker | "
                  "machine cores busy | lost / dup |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for workers, q in queued:
            lines.append(f"| {workers} | {q['stored']:,} / {q['made']:,} | {_f(q['rate'])} | "
                         f"{_f(q['rate'] / base if base else None, '{:.2f}')} | "
                         f"{_f(q.get('cpu_workers_per_1000'), '{:.2f}')} / {_f(q.get('cpu_broker_per_1000'), '{:.2f}')}"
                         f" | {_f(q['machine_cores_busy'], '{:.2f}')} | {q['lost']} / {q['duplicates']} |")
    faults = report.get("faults", [])
    if faults:
        lines += ["", f"faults: {report['options']['fault_devices']:,} devices, {report['options']['fault_workers']} "
                      "workers", "",
                  "| fault | made / PUBACKed / stored | lost | duplicates | in outboxes | alarms (without incident, "
                  "clients wrong) | longest alarm wait s | fault lasted s | drain after fault s | redeliveries "
                  "dropped | resent by devices | load before → after |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in faults:
            if "made" not in r:
                lines.append(f"| {r['fault']} | FAILED: {r.get('error', '?')} |")
                continue
            extra = f" (node {r['killed_node']})" if "killed_node" in r else ""
            lines.append(
                f"| {r['fault']}{extra} | {r['made']:,} / {r['acked']:,} / {r['stored']:,} | {r['lost']} | "
                f"{r['duplicates']} | {r['in_outboxes']} | {r['alarms']} ({r['alarms_without_incident']}, "
                f"{r['clients_wrong_incidents']}) | {_f(r['alarm_wait_max'], '{:.1f}')} | "
                f"{_f(r.get('fault_s'), '{:.1f}')} | {_f(r.get('drain_after_fault_s'), '{:.1f}')} | "
                f"{_f(r.get('redeliveries_dropped'))} | {_f(r.get('resent'))} | "
                f"{r['load_before']} → {r['load_after']} |")
            if not r.get("complete", True) or r.get("error"):
                lines.append(f"|  | INCOMPLETE: {r.get('error', '')} {r.get('devices', '')} queues "
                             f"{r.get('queues', '?')} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_start": load(),
                              "options": {k: v for k, v in vars(opts).items()}}
    base = Path(tempfile.mkdtemp(prefix="alarmcentre-bench-rabbit-"))
    devices = max(opts.devices if opts.scaling else 0, opts.fault_devices if opts.faults else 0)
    failed = False
    try:
        with rabbit_cluster(devices, base) as rabbit:
            run = Run(opts, rabbit, base)
            if opts.scaling:
                report["scaling"] = []
                for workers in opts.workers:
                    say(f"scaling row: {workers} worker(s)")
                    try:
                        row = run.scaling_row(workers, seed=100)  # the same burst in every row
                        if opts.drain:
                            row["queued"] = run.drain_row(workers, seed=100)
                    except Exception as exc:  # reported in the table; the other rows still run
                        failed = True
                        row = {"workers": workers, "error": repr(exc)[:800]}
                    report["scaling"].append(row)
                    say(f"  {row}")
            report["faults"] = []
            for n, name in enumerate(opts.faults):
                say(f"fault: {name}")
                try:
                    row = run.fault(name, seed=200 + n)
                except Exception as exc:  # one fault failing must not hide the others' figures
                    failed = True
                    row = {"fault": name, "error": repr(exc)[:800]}
                report["faults"].append(row)
                say(f"  {row}")
    finally:
        report["load_end"] = load()
        report["seconds"] = time.monotonic() - started
        print(render(report))
        if opts.json_path:
            Path(opts.json_path).write_text(json.dumps(report, indent=2, default=str))
    bad = failed or any(r.get("lost") or r.get("duplicates") or not r.get("complete", True)
                        for r in report.get("scaling", []) + report.get("faults", []))
    if bad:
        say(f"something failed: the workers' logs are kept in {base / 'logs'}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
