#!/usr/bin/env python3
"""Ingest benchmark: how fast device messages become committed rows, and how fast an alarm becomes an incident.

One run, on this machine, against services it starts and removes itself:

1. starts its own Mosquitto (the repository's config/mosquitto/mosquitto.conf on a free loopback port)
   and a fresh database (PostgreSQL: a new database, dropped at the end; SQLite: a new file, removed
   at the end), and registers the devices, each installed at a client's home;
2. baseline: a bare paho subscriber (QoS 1, automatic acknowledgement, counting only) receives what
   P publisher processes publish as fast as they can: the ceiling of a Python consumer here;
3. ingest: the same publishers and the same kind of traffic into the real IngestConsumer, run in this
   process; the rate at which events are committed (first publish until the last one is committed,
   checked against the device_events row count) and its ratio to the baseline;
4. latency: the publishers send paced heartbeats at half the measured ingest rate while another
   process sends an alarm (button_press, each from a fresh device with its own client, so each opens
   an incident) every 50 ms; latency is from the publish call to the consumer's on_committed callback
   reporting that incident opened (after commit and acknowledgement of its batch);
5. prints a table of figures (and JSON with --json).

Traffic: about 95 % heartbeats, the rest battery reports, button presses, test calls, cancels, power
and carer events, as JSON payloads of about 100 bytes built like a device builds them; each device's
battery drains slowly and its signal wanders, as on a real device (and in the simulator).

    python bench/ingest.py                       # PostgreSQL on 127.0.0.1:5432, defaults
    python bench/ingest.py --quick               # smoke run, well under 30 s
    python bench/ingest.py --database-url sqlite:////tmp/bench.sqlite3
    python bench/ingest.py --batch-max 50 --json result.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import multiprocessing as mp
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre.clients.models import Client
from alarmcentre.config import Settings
from alarmcentre.db import make_engine, make_sessionmaker, transaction
from alarmcentre.devices.models import Device, DeviceEvent, DeviceStatus
from alarmcentre.incidents.models import Incident
from alarmcentre.ingest.consumer import IngestConsumer
from alarmcentre.ingest.processor import Outcome, Result
from alarmcentre.ingest.protocol import EVENTS_SUBSCRIPTION, events_topic, status_topic
from alarmcentre.migrate import upgrade
from alarmcentre.municipalities.models import Municipality

REPO = Path(__file__).resolve().parent.parent
REPO_MOSQUITTO_CONF = REPO / "config" / "mosquitto" / "mosquitto.conf"
DEFAULT_POSTGRES_URL = os.environ.get("ALARMCENTRE_TEST_POSTGRES_URL",
                                      "postgresql://postgres@127.0.0.1:5432/postgres")

# The broker settings this benchmark needs when the repository's configuration is absent: with
# Mosquitto's defaults (1000 queued, 20 in flight) a subscriber that falls behind loses messages.
FALLBACK_MOSQUITTO_CONF = """\
persistence false
max_queued_messages 1000000
max_queued_bytes 0
max_inflight_messages 1000
"""
# Lines of the shipped configuration replaced for a private loopback broker (listeners, paths, auth:
# one anonymous listener; the identity rules are tested in tests/test_broker_identity.py).
BROKER_OVERRIDES = ("listener", "port", "persistence_location", "password_file", "acl_file", "log_dest",
                    "allow_anonymous", "pid_file", "user", "per_listener_settings", "use_username_as_clientid")

# Traffic mix, percent. Heartbeats dominate as on a real fleet; alarms are rare.
TRAFFIC_MIX: tuple[tuple[str, float], ...] = (
    ("heartbeat", 95.0),
    ("battery", 1.5),
    ("button_press", 1.0),
    ("test_call", 1.0),
    ("cancel", 0.5),
    ("power_lost", 0.25),
    ("power_restored", 0.25),
    ("carer_arrived", 0.25),
    ("carer_departed", 0.25),
)
PUBLISHER_INFLIGHT = 100  # unacknowledged QoS 1 publishes per publisher connection
ALARM_INTERVAL = 0.05  # seconds between alarms in the latency phase
LATENCY_LEAD_IN = 1.0  # seconds of background load before the first alarm
STALL_TIMEOUT = 60.0  # a phase with no progress for this long is reported as incomplete
LATENCY_SEQ_BASE = 10_000_000  # keeps the latency phase's (device, seq) apart from the ingest phase's

QUICK = {"devices": 50, "messages": 1_000, "latency_alarms": 40, "ingest_time_limit": 15}
DEFAULTS = {"devices": 500, "messages": 50_000, "latency_alarms": 200, "ingest_time_limit": 150}


# -- options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    devices: int
    messages: int
    publishers: int
    batch_max: int
    database_url: str
    latency_alarms: int
    ingest_time_limit: float
    mosquitto: str
    json_path: str | None
    quick: bool


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/ingest.py",
        description="Benchmark of the MQTT ingest: bare subscriber rate, committed ingest rate, and "
                    "alarm-to-incident latency at half load. Starts its own Mosquitto and a fresh database.",
    )
    parser.add_argument("--devices", type=_positive, default=None,
                        help=f"devices sending traffic, each with a client (default {DEFAULTS['devices']})")
    parser.add_argument("--messages", type=_positive, default=None,
                        help=f"messages per throughput phase (default {DEFAULTS['messages']})")
    parser.add_argument("--publishers", type=_positive, default=2, help="publisher processes (default 2)")
    parser.add_argument("--batch-max", type=_positive, default=None,
                        help="IngestConsumer batch_max (default: Settings().ingest_batch_max, "
                             "i.e. ALARMCENTRE_INGEST_BATCH_MAX or 500)")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES_URL,
                        help="a PostgreSQL server URL (a fresh database is created there and dropped at the end; "
                             "default %(default)s) or sqlite:///PATH (a new file that must not exist; removed at "
                             "the end)")
    parser.add_argument("--latency-alarms", type=_non_negative, default=None,
                        help=f"alarms in the latency phase, one per {ALARM_INTERVAL * 1000:.0f} ms "
                             f"(default {DEFAULTS['latency_alarms']}; 0 skips the phase)")
    parser.add_argument("--ingest-time-limit", type=float, default=None, metavar="SECONDS",
                        help="stop waiting for the ingest phase after this long and report the rate so far (the "
                             "broker still holds a backlog then, so the consumer was busy throughout; default "
                             f"{DEFAULTS['ingest_time_limit']}, with --quick {QUICK['ingest_time_limit']})")
    parser.add_argument("--mosquitto", default=None, help="mosquitto binary (default: found on PATH or /usr/sbin)")
    parser.add_argument("--json", dest="json_path", metavar="PATH", default=None,
                        help="also write the figures as JSON to PATH ('-': stdout, the table then goes to stderr)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run with small numbers ({QUICK['devices']} devices, {QUICK['messages']} "
                             f"messages, {QUICK['latency_alarms']} alarms) unless given explicitly")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULTS
    mosquitto_binary = args.mosquitto or shutil.which("mosquitto", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if not mosquitto_binary:
        parser.error("no mosquitto binary found; install Mosquitto 2.x or pass --mosquitto")
    url = args.database_url
    if not (url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://", "sqlite:///"))):
        parser.error("--database-url must be postgresql://... or sqlite:///PATH")
    return Options(
        devices=args.devices or sizes["devices"],
        messages=args.messages or sizes["messages"],
        publishers=args.publishers,
        batch_max=args.batch_max or Settings().ingest_batch_max,
        database_url=url,
        latency_alarms=args.latency_alarms if args.latency_alarms is not None else sizes["latency_alarms"],
        ingest_time_limit=args.ingest_time_limit or sizes["ingest_time_limit"],
        mosquitto=mosquitto_binary,
        json_path=args.json_path,
        quick=args.quick,
    )


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the broker -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes a child get SIGTERM if this process dies (Linux), so no broker is left over."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class Broker:
    """A private Mosquitto on a free loopback port, anonymous, with the repository's queue limits."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        if REPO_MOSQUITTO_CONF.exists():
            kept = [line for line in REPO_MOSQUITTO_CONF.read_text().splitlines()
                    if not re.match(rf"^\s*({'|'.join(BROKER_OVERRIDES)})\b", line)]
            self.config_source = str(REPO_MOSQUITTO_CONF.relative_to(REPO))
        else:
            kept = FALLBACK_MOSQUITTO_CONF.splitlines()
            self.config_source = "built-in equivalent (" + ", ".join(FALLBACK_MOSQUITTO_CONF.splitlines()) + ")"
        kept += [f"listener {self.port} 127.0.0.1", "allow_anonymous true", f"persistence_location {workdir}/",
                 "log_dest stderr"]
        if os.geteuid() == 0:
            kept.append("user root")  # as root, mosquitto would switch to its own user and lose the directory
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text("\n".join(kept) + "\n")
        self.log = workdir / "mosquitto.log"

    @property
    def version(self) -> str:
        try:
            out = subprocess.run([self.binary, "-h"], capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        found = re.search(r"mosquitto version (\S+)", out)
        return found[1] if found else "unknown"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                            stderr=log, preexec_fn=_die_with_parent())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("mosquitto did not start:\n" + self.log.read_text()[-2000:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


# -- the database ---------------------------------------------------------------------------


class BenchDatabase:
    """A fresh database for this run: created here, removed at the end."""

    def __init__(self, url: str) -> None:
        self.kind = "sqlite" if url.startswith("sqlite") else "postgresql"
        self._admin_url = ""
        self._name = ""
        self._sqlite_path: Path | None = None
        if self.kind == "sqlite":
            self._sqlite_path = Path(url.removeprefix("sqlite:///"))
            if self._sqlite_path.exists():
                raise SystemExit(f"{self._sqlite_path} exists; the benchmark needs a new file (remove it first)")
            self._sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            self.url = url
        else:
            self._admin_url = re.sub(r"^(postgres|postgresql|postgresql\+psycopg)://", "postgresql://", url)
            self._name = f"alarmcentre_bench_{uuid.uuid4().hex[:12]}"
            self.url = self._admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) \
                + "/" + self._name
        self.engine: Engine | None = None
        self.sessions: sessionmaker[Session] | None = None
        self._monitor: psycopg.Connection[Any] | None = None

    def create(self) -> None:
        if self.kind == "postgresql":
            with psycopg.connect(self._admin_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{self._name}"')
        self.engine = make_engine(self.url)
        upgrade(self.engine)
        self.sessions = make_sessionmaker(self.engine)

    @property
    def version(self) -> str:
        if self.kind == "sqlite":
            return f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL)"
        assert self.engine is not None
        with self.engine.connect() as conn:
            return f"PostgreSQL {conn.scalar(text('SHOW server_version'))}"

    def count_events(self) -> int:
        assert self.sessions is not None
        with self.sessions() as session:
            return session.scalar(select(func.count()).select_from(DeviceEvent)) or 0

    def backend_pids(self) -> list[int]:
        """PostgreSQL server processes serving this database (for their CPU time), if on this machine.

        Asked on a connection of its own, outside the pool the consumer draws from."""
        if self.kind != "postgresql" or self.engine is None:
            return []
        if self._monitor is None:
            self._monitor = psycopg.connect(self.url.replace("postgresql+psycopg://", "postgresql://", 1),
                                            autocommit=True)
        rows = self._monitor.execute("SELECT pid FROM pg_stat_activity "
                                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return [int(row[0]) for row in rows]

    def drop(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
        if self.engine is not None:
            self.engine.dispose()
        if self.kind == "postgresql" and self._name:
            with psycopg.connect(self._admin_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self._name}" WITH (FORCE)')
        elif self._sqlite_path is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self._sqlite_path}{suffix}").unlink(missing_ok=True)


def register_devices(factory: sessionmaker[Session], serials: Sequence[str]) -> None:
    """Each device installed at its own client's home (as tests/factories.setup_devices does)."""
    with transaction(factory) as session:
        municipality = Municipality(name="Benchmark novads")
        session.add(municipality)
        session.flush()
        clients = [Client(municipality_id=municipality.id, full_name=f"Bench client {n}", address="Testa iela 1",
                          care_level=2) for n in range(len(serials))]
        session.add_all(clients)
        session.flush()
        session.add_all([Device(serial=serial, client_id=client.id, status=DeviceStatus.INSTALLED)
                         for serial, client in zip(serials, clients, strict=True)])


# -- traffic and the publisher processes ----------------------------------------------------


def event_payload(seq: int, type_: str, *, ts: datetime | None = None, **fields: object) -> bytes:
    """A device event as devices send it (the same form as tests/factories.event_payload)."""
    return json.dumps({"seq": seq, "ts": (ts or datetime.now(UTC)).isoformat(), "type": type_, **fields}).encode()


class _DeviceState:
    """What a device reports, changing as a real one does (as the simulator's devices do): the battery
    drains slowly, the signal wanders a dB or two per heartbeat. Random values at every heartbeat
    would make each one a battery and a signal history row, which real traffic does not."""

    def __init__(self, rng: random.Random) -> None:
        self.battery = rng.randint(40, 100)
        self.rssi = rng.randint(-95, -55)

    def fields(self, type_: str, rng: random.Random) -> dict[str, object]:
        if type_ == "heartbeat":
            if rng.random() < 0.01:
                self.battery = max(self.battery - 1, 0)
            self.rssi = max(-110, min(-40, self.rssi + rng.randint(-2, 2)))
            return {"battery": self.battery, "rssi": self.rssi}
        if type_ == "battery":
            return {"level": self.battery, "low": self.battery < 20}
        return {}


@dataclass(frozen=True)
class Job:
    """What one publisher process sends in one phase."""

    serials: tuple[str, ...]
    count: int
    seq_base: int
    seed: int
    rate: float | None = None  # messages per second; None: as fast as the broker takes them
    heartbeats_only: bool = False
    alarms: bool = False  # one button_press per serial, in order (the latency probes)
    delay: float = 0.0  # seconds to wait after "go" before the first message


@dataclass
class JobResult:
    sent: int
    acked: int
    started: float  # time.monotonic() of the first publish: CLOCK_MONOTONIC, the same in every process
    finished: float  # when the last PUBACK arrived (or the wait gave up)
    cpu_seconds: float
    payload_bytes: int
    # alarms: serial -> (time.monotonic(), time.time()) at the publish call
    publish_times: dict[str, tuple[float, float]] = field(default_factory=dict)


def build_messages(job: Job) -> list[tuple[str, str, bytes]]:
    """(serial, topic, payload) in publishing order."""
    rng = random.Random(job.seed)
    if job.alarms:
        return [(serial, events_topic(serial), event_payload(1, "button_press")) for serial in job.serials[:job.count]]
    kinds = [kind for kind, _ in TRAFFIC_MIX]
    cumulative = []
    total = 0.0
    for _, share in TRAFFIC_MIX:
        total += share
        cumulative.append(total)
    seqs = dict.fromkeys(job.serials, job.seq_base)
    states = {serial: _DeviceState(rng) for serial in job.serials}
    messages = []
    for _ in range(job.count):
        serial = rng.choice(job.serials)
        seqs[serial] += 1
        kind = "heartbeat" if job.heartbeats_only else rng.choices(kinds, cum_weights=cumulative)[0]
        payload = event_payload(seqs[serial], kind, **states[serial].fields(kind, rng))
        messages.append((serial, events_topic(serial), payload))
    return messages


class _Acks:
    def __init__(self) -> None:
        self.count = 0
        self.expected = 0
        self.all_in = threading.Event()
        self.last_at = 0.0

    def on_publish(self, _client: mqtt.Client, _userdata: object, _mid: int, _reason: object,
                   _properties: object) -> None:
        self.count += 1
        self.last_at = time.monotonic()
        if self.count >= self.expected:
            self.all_in.set()


def publisher_main(index: int, host: str, port: int, conn: Connection) -> None:
    """A publisher process: one MQTT connection, runs jobs sent over `conn` until it gets None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends us
    acks = _Acks()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-publisher-{index}-{os.getpid()}",
                         clean_session=True)
    client.max_inflight_messages_set(PUBLISHER_INFLIGHT)
    client.on_publish = acks.on_publish
    client.connect(host, port, keepalive=60)
    client.loop_start()
    try:
        while True:
            try:
                job = conn.recv()
            except EOFError:
                return
            if job is None:
                return
            messages = build_messages(job)
            acks.count, acks.expected = 0, len(messages)
            acks.all_in.clear()
            conn.send("ready")
            if conn.recv() != "go":
                return
            if job.delay:
                time.sleep(job.delay)
            cpu_before = _own_cpu()
            publish_times: dict[str, tuple[float, float]] = {}
            started = time.monotonic()
            for n, (serial, topic, payload) in enumerate(messages):
                if job.rate:
                    wait = started + n / job.rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                if job.alarms:
                    publish_times[serial] = (time.monotonic(), time.time())
                client.publish(topic, payload, qos=1)
            if messages:
                acks.all_in.wait(STALL_TIMEOUT * 2)
            conn.send(JobResult(sent=len(messages), acked=acks.count, started=started,
                                finished=acks.last_at or time.monotonic(), cpu_seconds=_own_cpu() - cpu_before,
                                payload_bytes=sum(len(m[2]) for m in messages), publish_times=publish_times))
    finally:
        client.disconnect()
        client.loop_stop()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PublisherPool:
    """Long-lived publisher processes (spawned once, used by every phase)."""

    def __init__(self, size: int, port: int) -> None:
        context = mp.get_context("spawn")  # no fork of a process that already runs threads
        self._conns: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        for index in range(size):
            parent, child = context.Pipe()
            proc = context.Process(target=publisher_main, args=(index, "127.0.0.1", port, child),
                                   name=f"bench-publisher-{index}", daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def __len__(self) -> int:
        return len(self._procs)

    def run(self, jobs: dict[int, Job], *, on_go: Callable[[], None] | None = None,
            timeout: float = 600.0) -> tuple[float, list[JobResult]]:
        """Hand each publisher its job, wait until all have built their messages, start them together.

        Returns the time of "go" and the results, once every publisher has sent and seen its PUBACKs."""
        for index, job in jobs.items():
            self._conns[index].send(job)
        for index in jobs:
            if not self._conns[index].poll(120) or self._conns[index].recv() != "ready":
                raise RuntimeError(f"publisher {index} did not get ready")
        if on_go is not None:
            on_go()
        go = time.monotonic()
        for index in jobs:
            self._conns[index].send("go")
        results = []
        for index in jobs:
            if not self._conns[index].poll(timeout):
                raise RuntimeError(f"publisher {index} did not finish within {timeout:.0f} s")
            results.append(self._conns[index].recv())
        return go, results

    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs if proc.pid is not None]

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(None)
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def split_jobs(serials: Sequence[str], total: int, publishers: int, *, seq_base: int, seed: int,
               rate: float | None = None, heartbeats_only: bool = False) -> dict[int, Job]:
    """Each publisher sends for its own share of the devices, so (device, seq) never collides."""
    jobs = {}
    for index in range(publishers):
        count = total // publishers + (1 if index < total % publishers else 0)
        jobs[index] = Job(serials=tuple(serials[index::publishers]), count=count, seq_base=seq_base,
                          seed=seed * 1000 + index, rate=rate / publishers if rate else None,
                          heartbeats_only=heartbeats_only)
    return jobs


# -- CPU accounting ---------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc; None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class CpuMeter:
    """Cores kept busy during a phase: this process, the broker, the database server, the publishers."""

    def __init__(self, broker: Broker, db: BenchDatabase, pool: PublisherPool) -> None:
        self._broker, self._db, self._pool = broker, db, pool
        self._start: dict[str, dict[int, float]] = {}
        self._t0 = 0.0

    def _snapshot(self) -> dict[str, dict[int, float]]:
        groups = {"ingest process": [os.getpid()], "mosquitto": [self._broker.pid or -1],
                  "publishers": self._pool.pids(), "database server": self._db.backend_pids()}
        out: dict[str, dict[int, float]] = {}
        for name, pids in groups.items():
            out[name] = {pid: cpu for pid in pids if (cpu := process_cpu(pid)) is not None}
        return out

    def start(self) -> None:
        self._start = self._snapshot()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Average cores busy per group since start()."""
        end = self._snapshot()
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        busy = {}
        for name, pids in end.items():
            if not pids:
                continue
            used = sum(cpu - self._start.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
            busy[name] = round(used / elapsed, 2)
        return busy


# -- what the consumer commits --------------------------------------------------------------


class CommitTracker:
    """The IngestConsumer's on_committed listener: counts, batch sizes, and when incidents opened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events = 0
        self.statuses = 0
        self.rejected = 0
        self.duplicates = 0
        self.batch_sizes: list[int] = []
        self.opened: dict[int, float] = {}  # incident id -> monotonic time its batch was reported committed
        self.last_progress = time.monotonic()
        self.target = 0
        self.reached_at: float | None = None
        self.reached = threading.Event()

    def on_committed(self, results: list[Result]) -> None:
        now = time.monotonic()
        with self._lock:
            self.batch_sizes.append(len(results))
            for result in results:
                if result.kind == "status":
                    self.statuses += 1
                    continue
                self.events += 1
                if result.outcome is Outcome.REJECTED:
                    self.rejected += 1
                elif result.outcome is Outcome.DUPLICATE:
                    self.duplicates += 1
                if result.incident_opened is not None:
                    self.opened[result.incident_opened] = now
            self.last_progress = now
            if self.target and self.reached_at is None and self.events >= self.target:
                self.reached_at = now
                self.reached.set()

    def reset(self, target: int = 0) -> None:
        with self._lock:
            self.events = self.statuses = self.rejected = self.duplicates = 0
            self.batch_sizes = []
            self.opened = {}
            self.target = target
            self.reached_at = None
            self.reached.clear()
            self.last_progress = time.monotonic()

    def progress(self) -> tuple[int, float]:
        """Events committed so far and when the last batch was reported, as one consistent pair."""
        with self._lock:
            return self.events, self.last_progress

    def wait(self, predicate: Callable[[], bool], what: str) -> bool:
        """Until predicate() holds, or no commit for STALL_TIMEOUT seconds (then False)."""
        while not predicate():
            if time.monotonic() - self.last_progress > STALL_TIMEOUT:
                say(f"WARNING: no commit for {STALL_TIMEOUT:.0f} s while waiting for {what}; giving up")
                return False
            time.sleep(0.02)
        return True


class CommitTimer:
    """How long the database's COMMIT itself takes (the WAL flush to disk), from SQLAlchemy's events:
    the engine's `commit` (just before the DBAPI commit) to the session's `after_commit`."""

    def __init__(self, engine: Engine, sessions: sessionmaker[Session]) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self.seconds: list[float] = []
        event.listen(engine, "commit", self._before)
        event.listen(sessions, "after_commit", self._after)

    def _before(self, _conn: object) -> None:
        self._local.started = time.perf_counter()

    def _after(self, _session: Session) -> None:
        started = getattr(self._local, "started", None)
        if started is not None:
            self._local.started = None
            with self._lock:
                self.seconds.append(time.perf_counter() - started)

    def reset(self) -> None:
        with self._lock:
            self.seconds = []

    def summary(self, elapsed: float | None = None) -> dict[str, float]:
        with self._lock:
            values = sorted(self.seconds)
        if not values:
            return {}
        out = {"commits": len(values), "p50_ms": round(percentile(values, 0.5) * 1000, 1),
               "p99_ms": round(percentile(values, 0.99) * 1000, 1), "max_ms": round(values[-1] * 1000, 1)}
        if elapsed:
            out["share_of_time"] = round(sum(values) / elapsed, 3)
        return out


# -- the phases -------------------------------------------------------------------------------


def _subscribed_client(port: int, client_id: str,
                       on_message: Callable[[mqtt.Client, object, mqtt.MQTTMessage], None]) -> mqtt.Client:
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_connect = lambda c, *_args: c.subscribe(EVENTS_SUBSCRIPTION, qos=1)
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("the bare subscriber could not subscribe")
    return client


def run_baseline(opts: Options, serials: Sequence[str], pool: PublisherPool, port: int,
                 cpu: CpuMeter) -> dict[str, Any]:
    say(f"baseline: bare paho subscriber, {opts.messages:,} messages from {opts.publishers} publishers")
    lock = threading.Lock()
    state = {"count": 0, "last": 0.0, "progress": time.monotonic()}
    done = threading.Event()

    def on_message(_client: mqtt.Client, _userdata: object, _msg: mqtt.MQTTMessage) -> None:
        with lock:
            state["count"] += 1
            state["last"] = state["progress"] = time.monotonic()
            if state["count"] >= opts.messages:
                done.set()

    client = _subscribed_client(port, "bench-bare-subscriber", on_message)
    try:
        go, results = pool.run(split_jobs(serials, opts.messages, opts.publishers, seq_base=0, seed=1),
                               on_go=cpu.start)
        while not done.wait(0.1):
            if time.monotonic() - state["progress"] > STALL_TIMEOUT:
                say(f"WARNING: bare subscriber stalled at {state['count']:,} messages")
                break
        busy = cpu.stop()
    finally:
        client.disconnect()
        client.loop_stop()
    elapsed = state["last"] - go
    received = int(state["count"])
    return {
        "received": received,
        "complete": received >= opts.messages,
        "seconds": round(elapsed, 2),
        "rate": round(received / elapsed, 1) if elapsed > 0 else 0.0,
        "publish_rate": _publish_rate(go, results),
        "payload_bytes_mean": round(sum(r.payload_bytes for r in results) / max(sum(r.sent for r in results), 1), 1),
        "cores_busy": busy,
    }


def _publish_rate(go: float, results: list[JobResult]) -> float:
    sent = sum(r.acked for r in results)
    elapsed = max(r.finished for r in results) - go
    return round(sent / elapsed, 1) if elapsed > 0 else 0.0


def start_consumer(opts: Options, db: BenchDatabase, port: int, tracker: CommitTracker,
                   serials: Sequence[str]) -> IngestConsumer:
    """Connect the consumer, then wait until it demonstrably receives and commits (devices report online)."""
    assert db.sessions is not None
    tracker.reset()
    consumer = IngestConsumer(mqtt_url=f"mqtt://127.0.0.1:{port}", session_factory=db.sessions,
                              client_id="bench-ingest", batch_max=opts.batch_max, on_committed=tracker.on_committed)
    consumer.start()
    if not consumer.wait_connected(10):
        raise RuntimeError("the IngestConsumer did not connect to the broker")
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-warmup", clean_session=True)
    probe.connect("127.0.0.1", port)
    probe.loop_start()
    try:
        deadline = time.monotonic() + 20
        while tracker.statuses == 0:  # the subscription may not be in place yet: repeat the first status
            if time.monotonic() > deadline:
                raise RuntimeError("the IngestConsumer committed nothing within 20 s")
            probe.publish(status_topic(serials[0]), b"online", qos=1)
            time.sleep(0.2)
        for serial in serials:
            probe.publish(status_topic(serial), b"online", qos=1)
        if not tracker.wait(lambda: tracker.statuses >= len(serials), "the warm-up statuses"):
            raise RuntimeError("the warm-up statuses were not all committed")
    finally:
        probe.disconnect()
        probe.loop_stop()
    return consumer


def wipe_session(port: int, client_id: str) -> None:
    """Discard a persistent session and the backlog the broker holds for it (a clean-session connect)."""
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.on_connect = lambda *_args: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError(f"could not connect as {client_id} to discard its session")
    finally:
        client.disconnect()
        client.loop_stop()


def stop_consumer(consumer: IngestConsumer) -> None:
    """IngestConsumer.stop(), bounded: a consumer that does not stop within 60 s is reported."""
    stopper = threading.Thread(target=consumer.stop, name="bench-consumer-stop", daemon=True)
    stopper.start()
    stopper.join(60)
    if stopper.is_alive():
        say("WARNING: the IngestConsumer did not stop within 60 s")


def run_ingest(opts: Options, db: BenchDatabase, serials: Sequence[str], pool: PublisherPool,
               tracker: CommitTracker, cpu: CpuMeter, timer: CommitTimer, consumer: IngestConsumer,
               restart: Callable[[], IngestConsumer]) -> tuple[dict[str, Any], IngestConsumer]:
    """Returns the figures and the consumer to go on with (a fresh one if the time limit left a backlog)."""
    say(f"ingest: IngestConsumer (in process, batch_max {opts.batch_max}), {opts.messages:,} messages, "
        f"time limit {opts.ingest_time_limit:.0f} s")
    before = db.count_events()
    tracker.reset(target=opts.messages)
    timer.reset()
    go, results = pool.run(split_jobs(serials, opts.messages, opts.publishers, seq_base=0, seed=1), on_go=cpu.start)
    deadline = go + opts.ingest_time_limit
    progressing = tracker.wait(lambda: tracker.reached.is_set() or time.monotonic() > deadline,
                               "all events committed")
    busy = cpu.stop()
    commits = timer.summary(time.monotonic() - go)
    events, end = tracker.progress()
    reached = tracker.reached.is_set()
    if reached and tracker.reached_at is not None:
        events, end = opts.messages, tracker.reached_at
    sizes = list(tracker.batch_sizes)
    if not reached:
        # The broker still holds the rest for the consumer's session: stop it, count, start afresh.
        say(f"ingest: time limit reached with {events:,} of {opts.messages:,} committed; restarting the consumer")
        stop_consumer(consumer)
        wipe_session(consumer.endpoint.port, "bench-ingest")
    rows = db.count_events() - before
    counted = tracker.progress()[0]
    if not reached:
        consumer = restart()
    elapsed = end - go
    return {
        "committed": events,
        "time_limited": progressing and not reached,
        # every event the consumer reported committed is in the table, and nothing else
        "complete": progressing and rows == counted and tracker.rejected == 0,
        "rows_checked": rows,
        "rejected": tracker.rejected,
        "duplicates": tracker.duplicates,
        "seconds": round(elapsed, 2),
        "rate": round(events / elapsed, 1) if elapsed > 0 else 0.0,
        "publish_rate": _publish_rate(go, results),
        "batches": len(sizes),
        "batch_mean": round(sum(sizes) / len(sizes), 1) if sizes else 0.0,
        "batch_largest": max(sizes, default=0),
        "commit": commits,
        "cores_busy": busy,
    }, consumer


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    return sorted_values[max(math.ceil(q * len(sorted_values)) - 1, 0)]


def run_latency(opts: Options, db: BenchDatabase, serials: Sequence[str], alarm_serials: Sequence[str],
                pool: PublisherPool, tracker: CommitTracker, ingest_rate: float, cpu: CpuMeter,
                timer: CommitTimer) -> dict[str, Any]:
    alarm_rate = 1 / ALARM_INTERVAL
    load = ingest_rate / 2
    background = max(load - alarm_rate, 1.0)
    duration = LATENCY_LEAD_IN + opts.latency_alarms * ALARM_INTERVAL + 0.5
    say(f"latency: {opts.latency_alarms} alarms, one per {ALARM_INTERVAL * 1000:.0f} ms, over "
        f"{background:,.0f} heartbeats/s ({load:,.0f} msg/s in all, half the ingest rate)")
    jobs = split_jobs(serials, int(background * duration), opts.publishers, seq_base=LATENCY_SEQ_BASE, seed=3,
                      rate=background, heartbeats_only=True)
    jobs[opts.publishers] = Job(serials=tuple(alarm_serials), count=len(alarm_serials), seq_base=0, seed=4,
                              rate=alarm_rate, alarms=True, delay=LATENCY_LEAD_IN)
    tracker.reset()
    timer.reset()
    go, results = pool.run(jobs, on_go=cpu.start)
    tracker.wait(lambda: len(tracker.opened) >= len(alarm_serials), "the alarms' incidents")
    busy = cpu.stop()
    commits = timer.summary(time.monotonic() - go)
    published = {serial: t for result in results for serial, t in result.publish_times.items()}
    assert db.sessions is not None
    with db.sessions() as session:
        rows = session.execute(select(Incident.id, Device.serial, Incident.opened_at)
                               .join(Device, Device.id == Incident.device_id)
                               .where(Incident.id.in_(list(tracker.opened)))).all()
    total, delivery, processing = [], [], []
    for incident, serial, opened_at in rows:
        if serial not in published:
            continue
        sent_monotonic, sent_wall = published[serial]
        total.append((tracker.opened[incident] - sent_monotonic) * 1000)
        # opened_at is the consumer's receipt of the alarm (wall clock): the split is publish -> received
        # (client, broker, paho thread, local queue) and received -> committed (processing and commit).
        delivery.append((opened_at.timestamp() - sent_wall) * 1000)
        processing.append(total[-1] - delivery[-1])
    latencies = sorted(total)
    heartbeats = sum(r.acked for r in results if not r.publish_times)
    heartbeat_seconds = max((r.finished - r.started for r in results if not r.publish_times), default=0.0)
    figures: dict[str, Any] = {
        "alarms": len(alarm_serials),
        "measured": len(latencies),
        "load_target": round(load, 1),
        "background_rate": round(heartbeats / heartbeat_seconds, 1) if heartbeat_seconds > 0 else 0.0,
        "batch_mean": round(sum(tracker.batch_sizes) / len(tracker.batch_sizes), 1) if tracker.batch_sizes else 0.0,
        "commit": commits,
        "cores_busy": busy,
    }
    if latencies:
        figures.update({
            "p50_ms": round(percentile(latencies, 0.50), 1),
            "p90_ms": round(percentile(latencies, 0.90), 1),
            "p99_ms": round(percentile(latencies, 0.99), 1),
            "max_ms": round(latencies[-1], 1),
            "mean_ms": round(sum(latencies) / len(latencies), 1),
            "to_receipt_p50_ms": round(percentile(sorted(delivery), 0.50), 1),
            "to_receipt_p99_ms": round(percentile(sorted(delivery), 0.99), 1),
            "receipt_to_commit_p50_ms": round(percentile(sorted(processing), 0.50), 1),
            "receipt_to_commit_p99_ms": round(percentile(sorted(processing), 0.99), 1),
        })
    return figures


# -- report -----------------------------------------------------------------------------------


def machine_info(broker: Broker, db: BenchDatabase) -> dict[str, Any]:
    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "load_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "paho_mqtt": package_version("paho-mqtt"),
        "sqlalchemy": package_version("sqlalchemy"),
        "psycopg": package_version("psycopg"),
        "mosquitto": broker.version,
        "broker_config": broker.config_source,
        "database": db.version,
    }


def render(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    base, ing, lat = report["baseline"], report["ingest"], report.get("latency")
    lines = [
        f"alarmcentre ingest benchmark, {m['date']}",
        f"machine    {m['cores']} cores ({m['cpu']}), load average {m['load_at_start']} at start, "
        f"{m.get('load_at_end')} at end (others' work competes for the cores), {m['os']}",
        f"software   Python {m['python']}, paho-mqtt {m['paho_mqtt']}, SQLAlchemy {m['sqlalchemy']}, "
        f"psycopg {m['psycopg']}",
        f"broker     Mosquitto {m['mosquitto']}, config: {m['broker_config']}",
        f"database   {m['database']}",
        f"traffic    {s['devices']:,} devices, {s['messages']:,} messages per phase from {s['publishers']} publisher "
        f"processes, ~{base['payload_bytes_mean']:.0f}-byte payloads, "
        f"{dict(TRAFFIC_MIX)['heartbeat']:.0f} % heartbeats",
        f"ingest     IngestConsumer in the benchmark process, batch_max {s['batch_max']}",
        "",
        f"{'figure':<44}{'value':>16}   target",
    ]

    def row(name: str, value: str, target: str = "") -> None:
        lines.append(f"{name:<44}{value:>16}   {target}".rstrip())

    row("bare subscriber (QoS 1, auto-ack)", f"{base['rate']:,.0f} msg/s",
        "" if base["complete"] else f"INCOMPLETE: {base['received']:,} received")
    if not ing["complete"]:
        note = f"INCOMPLETE: {ing['committed']:,} committed, {ing['rows_checked']:,} rows, {ing['rejected']} rejected"
    elif ing["time_limited"]:
        note = f"time limit: {ing['committed']:,} of {s['messages']:,} committed in {ing['seconds']:.0f} s"
    else:
        note = f"all {s['messages']:,} in {ing['seconds']:.1f} s"
    row("ingest, committed events", f"{ing['rate']:,.0f} msg/s", note)
    ratio = report["ratio"]
    row("ingest / bare subscriber", f"{ratio * 100:.1f} %", f">= 50 %  {'met' if ratio >= 0.5 else 'NOT MET'}")
    row("publishers' rate (PUBACKed), ingest phase", f"{ing['publish_rate']:,.0f} msg/s")
    row("batches committed, mean size (largest)", f"{ing['batch_mean']:,.1f} ({ing['batch_largest']})")
    if ing.get("commit"):
        row("  COMMIT alone, p50 (share of the time)", f"{ing['commit']['p50_ms']:,.1f} ms",
            f"{ing['commit'].get('share_of_time', 0) * 100:.1f} % of the phase; p99 {ing['commit']['p99_ms']:,.1f} ms")
    if lat:
        row("latency phase load (target: half of ingest)", f"{lat['load_target']:,.0f} msg/s",
            f"background heartbeats sent at {lat['background_rate']:,.0f} msg/s + {1 / ALARM_INTERVAL:.0f} alarms/s")
        if lat["measured"]:
            row("alarm publish -> incident committed p50", f"{lat['p50_ms']:,.1f} ms")
            row("                                    p90", f"{lat['p90_ms']:,.1f} ms")
            p99_met = lat["p99_ms"] < 100 and lat["measured"] == lat["alarms"]
            row("                                    p99", f"{lat['p99_ms']:,.1f} ms",
                f"< 100 ms  {'met' if p99_met else 'NOT MET'}")
            row("                                    max", f"{lat['max_ms']:,.1f} ms")
            row("  of which publish -> consumer received p50", f"{lat['to_receipt_p50_ms']:,.1f} ms",
                f"p99 {lat['to_receipt_p99_ms']:,.1f} ms")
            row("  of which received -> committed        p50", f"{lat['receipt_to_commit_p50_ms']:,.1f} ms",
                f"p99 {lat['receipt_to_commit_p99_ms']:,.1f} ms")
        row("alarms measured", f"{lat['measured']} / {lat['alarms']}")
        row("batches in latency phase, mean size", f"{lat['batch_mean']:,.1f}")
        if lat.get("commit"):
            row("  COMMIT alone, p50", f"{lat['commit']['p50_ms']:,.1f} ms",
                f"p99 {lat['commit']['p99_ms']:,.1f} ms, max {lat['commit']['max_ms']:,.1f} ms")
    lines.append("")
    for name, phase in (("baseline", base), ("ingest", ing)) + ((("latency", lat),) if lat else ()):
        busy = ", ".join(f"{k} {v:.2f}" for k, v in phase["cores_busy"].items())
        lines.append(f"cores busy during {name + ':':<10} {busy}")
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM cleans up like Ctrl-C: broker stopped, database dropped."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(opts: Options) -> dict[str, Any]:
    serials = [f"BENCH-{n:05d}" for n in range(opts.devices)]
    alarm_serials = [f"ALARM-{n:05d}" for n in range(opts.latency_alarms)]
    with contextlib.ExitStack() as stack:
        stack.enter_context(_terminate_as_exit())
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="alarmcentre-bench-")))
        broker = Broker(opts.mosquitto, workdir)
        broker.start()
        stack.callback(broker.stop)
        say(f"mosquitto on port {broker.port} ({broker.config_source})")

        db = BenchDatabase(opts.database_url)
        stack.callback(db.drop)
        db.create()
        assert db.sessions is not None
        register_devices(db.sessions, serials + alarm_serials)
        say(f"{db.version}: {len(serials) + len(alarm_serials):,} devices registered")

        # One process per publisher, and one more for the latency phase's alarms.
        pool = PublisherPool(opts.publishers + (1 if opts.latency_alarms else 0), broker.port)
        stack.callback(pool.close)
        cpu = CpuMeter(broker, db, pool)
        report: dict[str, Any] = {"machine": machine_info(broker, db),
                                  "settings": {k: v for k, v in asdict(opts).items() if k != "json_path"}}
        report["settings"]["ingest_mode"] = "in-process IngestConsumer"
        report["baseline"] = run_baseline(opts, serials, pool, broker.port, cpu)

        tracker = CommitTracker()
        consumers: list[IngestConsumer] = []
        stack.callback(lambda: stop_consumer(consumers[-1]) if consumers else None)

        def start() -> IngestConsumer:
            consumers.append(start_consumer(opts, db, broker.port, tracker, serials))
            return consumers[-1]

        assert db.engine is not None
        timer = CommitTimer(db.engine, db.sessions)
        report["ingest"], _ = run_ingest(opts, db, serials, pool, tracker, cpu, timer, start(), start)
        report["ratio"] = round(report["ingest"]["rate"] / report["baseline"]["rate"], 3) \
            if report["baseline"]["rate"] else 0.0
        if opts.latency_alarms:
            report["latency"] = run_latency(opts, db, serials, alarm_serials, pool, tracker,
                                            report["ingest"]["rate"], cpu, timer)
        lat = report.get("latency")
        report["targets"] = {
            "ingest_ratio_at_least_50_percent": report["ratio"] >= 0.5,
            "alarm_p99_below_100_ms": (lat is not None and "p99_ms" in lat and lat["p99_ms"] < 100
                                       and lat["measured"] == lat["alarms"]),
        }
        report["machine"]["load_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        say("done; stopping the consumer, the publishers and the broker, removing the database")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    report = run(opts)
    table = render(report)
    to_stdout_json = opts.json_path == "-"
    print(table, file=sys.stderr if to_stdout_json else sys.stdout, flush=True)
    if opts.json_path:
        document = json.dumps(report, indent=2)
        if to_stdout_json:
            print(document)
        else:
            Path(opts.json_path).write_text(document + "\n")
    complete = report["baseline"]["complete"] and report["ingest"]["complete"]
    if "latency" in report:
        complete = complete and report["latency"]["measured"] == report["latency"]["alarms"]
    if not complete:
        say("ERROR: a phase did not complete (messages missing); the figures above are not valid")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
