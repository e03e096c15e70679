#!/usr/bin/env python3
"""Ingest benchmark: how fast device messages become committed rows, and how fast an alarm becomes an incident.

One run, on this machine, against services it starts and removes itself:

1. starts its own Mosquitto (the repository's config/mosquitto/mosquitto.conf on a free loopback port)
   and a fresh database (PostgreSQL: a new database, dropped at the end; SQLite: a new file, removed
   at the end), and registers the devices, each installed at a client's home;
2. baseline: a bare paho subscriber (QoS 1, automatic acknowledgement, counting only, one connection
   for the events and the alarms topics) receives what P publisher processes publish as fast as they
   can: the ceiling of a Python consumer here;
3. ingest: the same publishers and the same kind of traffic into the real Ingest (its alarm lane and
   its bulk lane, each an IngestConsumer with a broker session of its own), run in this process; the
   rate at which events are committed (first publish until the last one is committed, checked against
   the device_events row count), its ratio to the baseline, and the CPU seconds per 1,000 messages of
   this process and of the database server;
4. latency, three times: alarms alone (idle), then over paced heartbeats from the publishers at half
   and at all of the measured ingest rate; another process sends an alarm (button_press on the alarms
   topic, each from a fresh device with its own client, so each opens an incident) every 50 ms
   (--alarm-interval); latency is from the publish call to the Ingest's on_committed callback
   reporting that incident opened (after commit and acknowledgement of its batch); and this
   process's peak resident memory during the full-rate phase;
5. backlog: the ingest is stopped (the broker keeps its persistent sessions and queues for them), the
   publishers queue N heartbeats, the ingest is started again, and while it drains them an alarm is
   sent every 200 ms: alarm latency during the drain, heartbeats not yet committed when the first
   alarm was committed, and the drain time;
6. prints a table of figures and a line ratio=<ingest / bare> (and JSON with --json).

Traffic: about 95 % heartbeats, the rest battery reports, button presses, test calls, cancels, power
and carer events, as JSON payloads of about 100 bytes built like a device builds them; each device's
battery drains slowly and its signal wanders, as on a real device (and in the simulator). As devices
of protocol 1.1 do, the alarm-lane types (alarms, cancels, mains power) go on the alarms topic and the
rest on the events topic; --legacy-alarm-topic sends everything, the alarm probes too, on the events
topic, as devices of protocol 1.0 do (the ingest accepts them there, in the bulk lane).

    python bench/ingest.py                       # PostgreSQL on 127.0.0.1:5432, defaults (a few minutes)
    python bench/ingest.py --quick               # smoke run, well under 2 minutes
    python bench/ingest.py --database-url sqlite:////tmp/bench.sqlite3
    python bench/ingest.py --batch-max 50 --json result.json
    python bench/ingest.py --legacy-alarm-topic  # alarms in the bulk lane, as protocol 1.0 devices send them
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
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
from collections import Counter
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
from alarmcentre.ingest.consumer import ALARM_BATCH_MAX, Ingest
from alarmcentre.ingest.processor import Outcome, Result
from alarmcentre.ingest.protocol import (
    ALARM_LANE_TYPES,
    ALARMS_SUBSCRIPTION,
    EVENTS_SUBSCRIPTION,
    alarms_topic,
    events_topic,
    status_topic,
)
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
# Seconds between alarms in the latency phases (--alarm-interval). Each opens an incident, ~17 statements
# one by one in the alarm lane: 20 a second can fill that lane by themselves when the process is busy.
ALARM_INTERVAL = 0.05
LATENCY_LEAD_IN = 1.0  # seconds of background load before the first alarm
# The latency phases: report key, share of the measured ingest rate sent as background heartbeats.
LATENCY_LOADS: tuple[tuple[str, float], ...] = (("latency_idle", 0.0), ("latency", 0.5), ("latency_full", 1.0))
LATENCY_TARGET_MS = 100.0  # alarm p99 at half the ingest maximum
BACKLOG_ALARM_INTERVAL = 0.2  # seconds between alarms while a backlog drains
BACKLOG_TARGET_MS = 1000.0  # every alarm while a backlog drains
BACKLOG_ALARMS_MAX = 3000  # devices registered for the drain's alarms at most (10 minutes of them)
STALL_TIMEOUT = 60.0  # a phase with no progress for this long is reported as incomplete
# Each phase's heartbeats have a (device, seq) range of their own, apart from the ingest phase's
# (from 1): the latency phases from 10M, 20M, 30M, the backlog from 50M, the warm-ups from 90M.
LATENCY_SEQ_BASE = 10_000_000
BACKLOG_SEQ_BASE = 50_000_000
WARMUP_SEQ_BASE = 90_000_000
INGEST_CLIENT_ID = "bench-ingest"  # the bulk lane's; the alarm lane's is this + "-alarms"

# --quick's 5,000 messages: with the set-based bulk lane 1,000 took under a second, too short for a ratio.
QUICK = {"devices": 50, "messages": 5_000, "latency_alarms": 40, "ingest_time_limit": 15, "backlog": 5_000}
DEFAULTS = {"devices": 500, "messages": 50_000, "latency_alarms": 200, "ingest_time_limit": 150, "backlog": 50_000}


# -- options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    devices: int
    messages: int
    publishers: int
    batch_max: int
    database_url: str
    latency_alarms: int
    alarm_interval: float  # seconds
    ingest_time_limit: float
    backlog: int
    legacy_alarm_topic: bool
    mosquitto: str
    json_path: str | None
    quick: bool


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/ingest.py",
        description="Benchmark of the MQTT ingest: bare subscriber rate, committed ingest rate, "
                    "alarm-to-incident latency idle, at half and at full load, and while a backlog drains. "
                    "Starts its own Mosquitto and a fresh database.",
    )
    parser.add_argument("--devices", type=_positive, default=None,
                        help=f"devices sending traffic, each with a client (default {DEFAULTS['devices']})")
    parser.add_argument("--messages", type=_positive, default=None,
                        help=f"messages per throughput phase (default {DEFAULTS['messages']})")
    parser.add_argument("--publishers", type=_positive, default=2, help="publisher processes (default 2)")
    parser.add_argument("--batch-max", type=_positive, default=None,
                        help="the Ingest's batch_max (the bulk lane's; the alarm lane takes at most "
                             f"{ALARM_BATCH_MAX}; default: Settings().ingest_batch_max, i.e. "
                             "ALARMCENTRE_INGEST_BATCH_MAX or 500)")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES_URL,
                        help="a PostgreSQL server URL (a fresh database is created there and dropped at the end; "
                             "default %(default)s) or sqlite:///PATH (a new file that must not exist; removed at "
                             "the end)")
    parser.add_argument("--latency-alarms", type=_non_negative, default=None,
                        help="alarms in each latency phase (idle, half, full load), one per --alarm-interval "
                             f"(default {DEFAULTS['latency_alarms']}; 0 skips the phases)")
    parser.add_argument("--alarm-interval", type=_positive, default=round(ALARM_INTERVAL * 1000), metavar="MS",
                        help="milliseconds between the latency phases' alarms (default %(default)s: "
                             f"{1 / ALARM_INTERVAL:.0f} new incidents a second, far above a real centre's rate, enough "
                             "to fill the alarm lane when the process is busy; the backlog phase sends one per "
                             f"{BACKLOG_ALARM_INTERVAL * 1000:.0f} ms)")
    parser.add_argument("--backlog", type=_non_negative, default=None, metavar="N",
                        help="heartbeats queued in the broker while the ingest is stopped, drained while an alarm "
                             f"is sent every {BACKLOG_ALARM_INTERVAL * 1000:.0f} ms (default "
                             f"{DEFAULTS['backlog']:,}, with --quick {QUICK['backlog']:,}; 0 skips the phase)")
    parser.add_argument("--legacy-alarm-topic", action="store_true",
                        help="send the alarm-lane types (alarms, cancels, mains power), the alarm probes too, on "
                             "the events topic as devices of protocol 1.0 do, instead of the alarms topic: they "
                             "then wait in the bulk lane")
    parser.add_argument("--ingest-time-limit", type=float, default=None, metavar="SECONDS",
                        help="stop waiting for the ingest phase after this long and report the rate so far (the "
                             "broker still holds a backlog then, so the Ingest was busy throughout; default "
                             f"{DEFAULTS['ingest_time_limit']}, with --quick {QUICK['ingest_time_limit']})")
    parser.add_argument("--mosquitto", default=None, help="mosquitto binary (default: found on PATH or /usr/sbin)")
    parser.add_argument("--json", dest="json_path", metavar="PATH", default=None,
                        help="also write the figures as JSON to PATH ('-': stdout, the table then goes to stderr)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run with small numbers ({QUICK['devices']} devices, {QUICK['messages']:,} "
                             f"messages, {QUICK['latency_alarms']} alarms per latency phase, a backlog of "
                             f"{QUICK['backlog']:,}) unless given explicitly")
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
        alarm_interval=args.alarm_interval / 1000,
        ingest_time_limit=args.ingest_time_limit or sizes["ingest_time_limit"],
        backlog=args.backlog if args.backlog is not None else sizes["backlog"],
        legacy_alarm_topic=args.legacy_alarm_topic,
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

        Asked on a connection of its own, outside the pool the Ingest draws from."""
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


def register_devices(factory: sessionmaker[Session], serials: Sequence[str], *,
                     municipality_name: str = "Benchmark novads") -> None:
    """Each device installed at its own client's home (as tests/factories.setup_devices does)."""
    with transaction(factory) as session:
        municipality = Municipality(name=municipality_name)
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
    legacy_alarm_topic: bool = False  # alarm-lane types on the events topic (protocol 1.0 devices)
    until_stopped: bool = False  # ends at the parent's "stop" (or when the messages run out, then waits for it)


@dataclass
class JobResult:
    sent: int
    acked: int
    started: float  # time.monotonic() of the first publish: CLOCK_MONOTONIC, the same in every process
    finished: float  # when the last PUBACK arrived (or the wait gave up)
    cpu_seconds: float
    payload_bytes: int
    stopped: bool = False  # an until_stopped job that the parent stopped before its messages ran out
    # alarms: serial -> (time.monotonic(), time.time()) at the publish call
    publish_times: dict[str, tuple[float, float]] = field(default_factory=dict)


def device_topic(serial: str, kind: str, *, legacy: bool = False) -> str:
    """Where a device sends an event of this type: the alarm-lane types on the alarms topic (protocol 1.1),
    or, legacy, everything on the events topic (protocol 1.0, which the ingest still accepts)."""
    return alarms_topic(serial) if kind in ALARM_LANE_TYPES and not legacy else events_topic(serial)


def build_messages(job: Job) -> list[tuple[str, str, bytes]]:
    """(serial, topic, payload) in publishing order."""
    rng = random.Random(job.seed)
    if job.alarms:
        return [(serial, device_topic(serial, "button_press", legacy=job.legacy_alarm_topic),
                 event_payload(1, "button_press")) for serial in job.serials[:job.count]]
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
        messages.append((serial, device_topic(serial, kind, legacy=job.legacy_alarm_topic), payload))
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

    def expect(self, sent: int) -> None:
        """Fewer were sent than planned (a stopped job): wait only for those."""
        self.expected = sent
        if self.count >= sent:  # after the change, or on_publish may have checked the old number last
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
            sent, stopped = 0, False
            for n, (serial, topic, payload) in enumerate(messages):
                wait = started + n / job.rate - time.monotonic() if job.rate else 0.0
                if job.until_stopped:
                    if conn.poll(max(wait, 0.0)):  # the pause between messages listens for "stop"
                        stopped = conn.recv() == "stop"
                        break
                elif wait > 0:
                    time.sleep(wait)
                if job.alarms:
                    publish_times[serial] = (time.monotonic(), time.time())
                client.publish(topic, payload, qos=1)
                sent += 1
            if job.until_stopped and not stopped:
                conn.recv()  # ran out of messages: the parent still says when the phase is over
            if sent < len(messages):
                acks.expect(sent)
            if sent:
                acks.all_in.wait(STALL_TIMEOUT * 2)
            conn.send(JobResult(sent=sent, acked=acks.count, started=started,
                                finished=acks.last_at or time.monotonic(), cpu_seconds=_own_cpu() - cpu_before,
                                payload_bytes=sum(len(m[2]) for m in messages[:sent]), stopped=stopped,
                                publish_times=publish_times))
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
        go = self.start(jobs, on_go=on_go)
        return go, self.finish(jobs, timeout=timeout)

    def start(self, jobs: dict[int, Job], *, on_go: Callable[[], None] | None = None) -> float:
        """The first half of run(): returns the time of "go" while the publishers send."""
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
        return go

    def stop(self, index: int) -> None:
        """End an until_stopped job (its publisher then waits for its PUBACKs and reports)."""
        self._conns[index].send("stop")

    def finish(self, jobs: dict[int, Job], *, timeout: float = 600.0) -> list[JobResult]:
        results = []
        for index in jobs:
            if not self._conns[index].poll(timeout):
                raise RuntimeError(f"publisher {index} did not finish within {timeout:.0f} s")
            results.append(self._conns[index].recv())
        return results

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
               rate: float | None = None, heartbeats_only: bool = False,
               legacy_alarm_topic: bool = False) -> dict[int, Job]:
    """Each publisher sends for its own share of the devices, so (device, seq) never collides."""
    jobs = {}
    for index in range(publishers):
        count = total // publishers + (1 if index < total % publishers else 0)
        jobs[index] = Job(serials=tuple(serials[index::publishers]), count=count, seq_base=seq_base,
                          seed=seed * 1000 + index, rate=rate / publishers if rate else None,
                          heartbeats_only=heartbeats_only, legacy_alarm_topic=legacy_alarm_topic)
    return jobs


# -- CPU and memory accounting --------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc; None where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_cpu() -> float | None:
    """CPU seconds every process of the machine has used so far (/proc/stat: user, nice, system, irq,
    softirq; not idle, iowait, or time the hypervisor stole); None where unreadable."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


OTHERS = "rest of the machine"  # what else kept the cores busy: others' work, PostgreSQL's own processes


@dataclass(frozen=True)
class CpuUse:
    """CPU used during a phase, per group of processes."""

    cores: dict[str, float]  # average cores busy
    seconds: dict[str, float]  # CPU seconds (user + system)

    def per_thousand(self, messages: int) -> dict[str, float]:
        """CPU seconds per 1,000 messages: what each part costs, whatever the rate it ran at."""
        if not messages:
            return {}
        return {name: round(used / messages * 1000, 3) for name, used in self.seconds.items() if name != OTHERS}


class CpuMeter:
    """Cores kept busy during a phase: this process, the broker, the database server, the publishers.

    The database server is the PostgreSQL backends serving this database (its WAL writer and checkpointer
    are not counted); on SQLite the database works inside this process. The rest of the machine is all
    other CPU use: on a shared machine it says how much of the cores the benchmark did not have."""

    def __init__(self, broker: Broker, db: BenchDatabase, pool: PublisherPool) -> None:
        self._broker, self._db, self._pool = broker, db, pool
        self._start: dict[str, dict[int, float]] = {}
        self._machine_start: float | None = None
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
        self._machine_start = machine_cpu()
        self._t0 = time.monotonic()

    def stop(self) -> CpuUse:
        """CPU used per group since start(); a process that started since counts from zero."""
        end = self._snapshot()
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        busy, seconds = {}, {}
        for name, pids in end.items():
            if not pids:
                continue
            used = sum(cpu - self._start.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
            busy[name] = round(used / elapsed, 2)
            seconds[name] = round(used, 3)
        machine = machine_cpu()
        if machine is not None and self._machine_start is not None:
            rest = max(machine - self._machine_start - sum(seconds.values()), 0.0)
            busy[OTHERS], seconds[OTHERS] = round(rest / elapsed, 2), round(rest, 3)
        return CpuUse(cores=busy, seconds=seconds)


def _status_kib(field_name: str) -> int | None:
    """A memory figure of this process from /proc/self/status, in KiB; None where unreadable."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    return None


def lifetime_peak_rss_mib() -> float:
    """This process's peak resident memory since it started (ru_maxrss: KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class RssMeter:
    """Peak resident memory of this process during a phase. The kernel's high-water mark covers the whole
    life of the process, so it is reset at start (Linux: writing 5 to /proc/self/clear_refs); where that
    is not possible, the highest of samples taken every 50 ms instead."""

    def __init__(self) -> None:
        self._peak_kib = 0
        self._hwm_reset = False
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self._peak_kib = _status_kib("VmRSS") or 0
        if not self._hwm_reset:
            self._stop.clear()
            self._sampler = threading.Thread(target=self._sample, name="bench-rss", daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._peak_kib = max(self._peak_kib, _status_kib("VmRSS") or 0)

    def stop(self) -> float | None:
        """Peak resident memory since start(), MiB (None where /proc is not there)."""
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._sampler = None
        peak = max(self._peak_kib, (_status_kib("VmHWM") or 0) if self._hwm_reset else 0)
        return round(peak / 1024, 1) if peak else None


# -- what the Ingest commits ----------------------------------------------------------------


class CommitTracker:
    """The Ingest's on_committed listener, for both lanes: counts, batch sizes per lane, and when
    incidents opened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events = 0
        self.heartbeats = 0
        self.statuses = 0
        self.rejected = 0
        self.duplicates = 0
        self.batch_sizes: dict[str, list[int]] = {"bulk": [], "alarms": []}
        self.opened: dict[int, float] = {}  # incident id -> monotonic time its batch was reported committed
        self.heartbeats_at_first_incident: int | None = None  # heartbeats committed before the first incident
        self.last_progress = time.monotonic()
        self.target = 0
        self.target_heartbeats = False  # the target counts heartbeats only (a backlog), not every event
        self.reached_at: float | None = None
        self.reached = threading.Event()
        self.retried: Counter[str] = Counter()  # batches the Ingest retried after a database error, by error

    def on_committed(self, results: list[Result]) -> None:
        now = time.monotonic()
        # Both lanes call this and their results do not say which lane they came from; the worker thread
        # does: IngestConsumer names it after its client id, and the alarm lane's ends in "-alarms".
        lane = "alarms" if threading.current_thread().name.endswith("-alarms") else "bulk"
        with self._lock:
            self.batch_sizes[lane].append(len(results))
            for result in results:
                if result.kind == "status":
                    self.statuses += 1
                    continue
                self.events += 1
                if result.kind == "heartbeat":
                    self.heartbeats += 1
                if result.outcome is Outcome.REJECTED:
                    self.rejected += 1
                elif result.outcome is Outcome.DUPLICATE:
                    self.duplicates += 1
                if result.incident_opened is not None:
                    if not self.opened:
                        self.heartbeats_at_first_incident = self.heartbeats
                    self.opened[result.incident_opened] = now
            self.last_progress = now
            counted = self.heartbeats if self.target_heartbeats else self.events
            if self.target and self.reached_at is None and counted >= self.target:
                self.reached_at = now
                self.reached.set()

    def reset(self, target: int = 0, *, heartbeats: bool = False) -> None:
        with self._lock:
            self.events = self.heartbeats = self.statuses = self.rejected = self.duplicates = 0
            self.batch_sizes = {"bulk": [], "alarms": []}
            self.opened = {}
            self.heartbeats_at_first_incident = None
            self.target = target
            self.target_heartbeats = heartbeats
            self.reached_at = None
            self.reached.clear()
            self.retried = Counter()
            self.last_progress = time.monotonic()

    def note_retry(self, error: str) -> None:
        with self._lock:
            self.retried[error] += 1

    def retries(self) -> dict[str, int]:
        with self._lock:
            return dict(self.retried)

    def batch_mean(self, lane: str) -> float:
        with self._lock:
            sizes = list(self.batch_sizes[lane])
        return round(sum(sizes) / len(sizes), 1) if sizes else 0.0

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


class IngestLog(logging.Handler):
    """The Ingest's warnings and errors, on stderr as Python's last-resort handler would print them, and each
    batch it retried after a database error noted in the tracker: a retry costs the batch its time (a
    deadlock, for one, waits PostgreSQL's deadlock_timeout first), so a phase's figures need it beside them."""

    def __init__(self, tracker: CommitTracker) -> None:
        super().__init__(logging.WARNING)
        self._tracker = tracker

    def emit(self, record: logging.LogRecord) -> None:
        # IngestConsumer._commit_with_retry: "cannot commit %d messages (%s: %s); retrying ..." (count, error, reason)
        args = record.args if isinstance(record.args, tuple) else ()
        if isinstance(record.msg, str) and record.msg.startswith("ingest: cannot commit") and len(args) > 1:
            self._tracker.note_retry(str(args[1]))
        say(f"{record.levelname.lower()}: {record.getMessage()}")


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
    # Both topics the traffic goes to (the alarm-lane types on the alarms topic), on one connection.
    client.on_connect = lambda c, *_args: c.subscribe([(EVENTS_SUBSCRIPTION, 1), (ALARMS_SUBSCRIPTION, 1)])
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
        go, results = pool.run(split_jobs(serials, opts.messages, opts.publishers, seq_base=0, seed=1,
                                          legacy_alarm_topic=opts.legacy_alarm_topic), on_go=cpu.start)
        while not done.wait(0.1):
            if time.monotonic() - state["progress"] > STALL_TIMEOUT:
                say(f"WARNING: bare subscriber stalled at {state['count']:,} messages")
                break
        use = cpu.stop()
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
        "cores_busy": use.cores,
    }


def _publish_rate(go: float, results: list[JobResult]) -> float:
    sent = sum(r.acked for r in results)
    elapsed = max(r.finished for r in results) - go
    return round(sent / elapsed, 1) if elapsed > 0 else 0.0


def start_ingest(opts: Options, db: BenchDatabase, port: int, tracker: CommitTracker, serials: Sequence[str], *,
                 live: list[Ingest], warm_up_seq: int | None) -> Ingest:
    """Start the Ingest (both lanes) and wait until both are connected and subscribed. With warm_up_seq,
    then until each demonstrably receives and commits: devices report online (the bulk lane), and one
    device reports mains power (the alarm lane, a type that opens no incident)."""
    assert db.sessions is not None
    # No per-device budget (ingest/deferral.py): the bench's 50-500 devices stand for thousands, each sending far
    # faster than a device does, and the figures are the ingest's capacity. The budget has its own measurement
    # (tests/test_device_flood.py).
    ingest = Ingest(mqtt_url=f"mqtt://127.0.0.1:{port}", session_factory=db.sessions, client_id=INGEST_CLIENT_ID,
                    batch_max=opts.batch_max, on_committed=tracker.on_committed, budget=False)
    live.append(ingest)  # from here on the run's clean-up stops it, whatever fails below
    ingest.start()
    if not ingest.wait_connected(10):
        raise RuntimeError("the Ingest did not connect to the broker")
    if warm_up_seq is None:
        return ingest  # the caller counts from before start() (a backlog's drain)
    tracker.reset()
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-warmup", clean_session=True)
    probe.connect("127.0.0.1", port)
    probe.loop_start()
    try:
        deadline = time.monotonic() + 20
        while tracker.statuses == 0:  # the subscription may not be in place yet: repeat the first status
            if time.monotonic() > deadline:
                raise RuntimeError("the Ingest committed nothing within 20 s")
            probe.publish(status_topic(serials[0]), b"online", qos=1)
            time.sleep(0.2)
        for serial in serials:
            probe.publish(status_topic(serial), b"online", qos=1)
        if not tracker.wait(lambda: tracker.statuses >= len(serials), "the warm-up statuses"):
            raise RuntimeError("the warm-up statuses were not all committed")
        probe.publish(alarms_topic(serials[0]), event_payload(warm_up_seq, "power_restored"), qos=1)
        if not tracker.wait(lambda: bool(tracker.batch_sizes["alarms"]), "the alarm lane's warm-up"):
            raise RuntimeError("the alarm lane committed nothing")
    finally:
        probe.disconnect()
        probe.loop_stop()
    return ingest


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


def stop_ingest(ingest: Ingest) -> None:
    """Ingest.stop(), bounded: an Ingest that does not stop within 60 s is reported."""
    stopper = threading.Thread(target=ingest.stop, name="bench-ingest-stop", daemon=True)
    stopper.start()
    stopper.join(60)
    if stopper.is_alive():
        say("WARNING: the Ingest did not stop within 60 s")


def run_ingest(opts: Options, db: BenchDatabase, serials: Sequence[str], pool: PublisherPool,
               tracker: CommitTracker, cpu: CpuMeter, timer: CommitTimer, ingest: Ingest,
               restart: Callable[[], Ingest]) -> tuple[dict[str, Any], Ingest]:
    """Returns the figures and the Ingest to go on with (a fresh one if the time limit left a backlog)."""
    say(f"ingest: Ingest (in process, batch_max {opts.batch_max}, alarm lane {min(opts.batch_max, ALARM_BATCH_MAX)}), "
        f"{opts.messages:,} messages, time limit {opts.ingest_time_limit:.0f} s")
    before = db.count_events()
    tracker.reset(target=opts.messages)
    timer.reset()
    go, results = pool.run(split_jobs(serials, opts.messages, opts.publishers, seq_base=0, seed=1,
                                      legacy_alarm_topic=opts.legacy_alarm_topic), on_go=cpu.start)
    deadline = go + opts.ingest_time_limit
    progressing = tracker.wait(lambda: tracker.reached.is_set() or time.monotonic() > deadline,
                               "all events committed")
    use = cpu.stop()
    commits = timer.summary(time.monotonic() - go)
    events, end = tracker.progress()
    reached = tracker.reached.is_set()
    if reached and tracker.reached_at is not None:
        events, end = opts.messages, tracker.reached_at
    sizes, alarm_sizes = list(tracker.batch_sizes["bulk"]), list(tracker.batch_sizes["alarms"])
    if not reached:
        # The broker still holds the rest for the Ingest's sessions: stop it, count, start afresh.
        say(f"ingest: time limit reached with {events:,} of {opts.messages:,} committed; discarding the backlog and "
            "restarting the Ingest (which then reports its sessions lost: discarded here on purpose)")
        stop_ingest(ingest)
        for client_id in (INGEST_CLIENT_ID, f"{INGEST_CLIENT_ID}-alarms"):
            wipe_session(ingest.endpoint.port, client_id)
    rows = db.count_events() - before
    counted = tracker.progress()[0]
    rejected, duplicates, retried = tracker.rejected, tracker.duplicates, tracker.retries()  # restart() resets them
    if not reached:
        ingest = restart()
    elapsed = end - go
    return {
        "committed": events,
        "time_limited": progressing and not reached,
        # every event the Ingest reported committed is in the table, and nothing else
        "complete": progressing and rows == counted and rejected == 0,
        "rows_checked": rows,
        "rejected": rejected,
        "duplicates": duplicates,
        "retried_batches": retried,
        "seconds": round(elapsed, 2),
        "rate": round(events / elapsed, 1) if elapsed > 0 else 0.0,
        "publish_rate": _publish_rate(go, results),
        "batches": len(sizes),
        "batch_mean": round(sum(sizes) / len(sizes), 1) if sizes else 0.0,
        "batch_largest": max(sizes, default=0),
        "alarm_lane_batches": len(alarm_sizes),
        "alarm_lane_events": sum(alarm_sizes),
        "alarm_lane_batch_mean": round(sum(alarm_sizes) / len(alarm_sizes), 1) if alarm_sizes else 0.0,
        "commit": commits,
        "cores_busy": use.cores,
        "cpu_seconds": use.seconds,
        "cpu_seconds_per_1000": use.per_thousand(events),
    }, ingest


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    return sorted_values[max(math.ceil(q * len(sorted_values)) - 1, 0)]


def alarm_latencies(db: BenchDatabase, tracker: CommitTracker, published: dict[str, tuple[float, float]], *,
                    sent_by: float | None = None) -> tuple[list[float], list[float], list[float]]:
    """For each alarm (published before sent_by, if given) whose incident was reported opened, in ms:
    publish -> committed, publish -> received, received -> committed."""
    assert db.sessions is not None
    with db.sessions() as session:
        rows = session.execute(select(Incident.id, Device.serial, Incident.opened_at)
                               .join(Device, Device.id == Incident.device_id)
                               .where(Incident.id.in_(list(tracker.opened)))).all()
    total, delivery, processing = [], [], []
    for incident, serial, opened_at in rows:
        if serial not in published or (sent_by is not None and published[serial][0] > sent_by):
            continue
        sent_monotonic, sent_wall = published[serial]
        total.append((tracker.opened[incident] - sent_monotonic) * 1000)
        # opened_at is the Ingest's receipt of the alarm (wall clock): the split is publish -> received
        # (client, broker, paho thread, local queue) and received -> committed (processing and commit).
        delivery.append((opened_at.timestamp() - sent_wall) * 1000)
        processing.append(total[-1] - delivery[-1])
    return total, delivery, processing


def latency_summary(total: list[float], delivery: list[float], processing: list[float]) -> dict[str, float]:
    if not total:
        return {}
    latencies = sorted(total)
    return {
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p90_ms": round(percentile(latencies, 0.90), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "max_ms": round(latencies[-1], 1),
        "mean_ms": round(sum(latencies) / len(latencies), 1),
        "to_receipt_p50_ms": round(percentile(sorted(delivery), 0.50), 1),
        "to_receipt_p99_ms": round(percentile(sorted(delivery), 0.99), 1),
        "receipt_to_commit_p50_ms": round(percentile(sorted(processing), 0.50), 1),
        "receipt_to_commit_p99_ms": round(percentile(sorted(processing), 0.99), 1),
    }


def run_latency(opts: Options, db: BenchDatabase, serials: Sequence[str], alarm_serials: Sequence[str],
                pool: PublisherPool, tracker: CommitTracker, ingest_rate: float, cpu: CpuMeter,
                timer: CommitTimer, *, share: float, seq_base: int, rss: RssMeter | None = None) -> dict[str, Any]:
    """Alarms every opts.alarm_interval over background heartbeats at `share` of the ingest rate (0: alarms alone)."""
    alarm_rate = 1 / opts.alarm_interval
    load = ingest_rate * share
    background = max(load - alarm_rate, 1.0) if share else 0.0
    lead_in = LATENCY_LEAD_IN if background else 0.0
    duration = lead_in + len(alarm_serials) * opts.alarm_interval + 0.5
    over = (f"over {background:,.0f} heartbeats/s ({background + alarm_rate:,.0f} msg/s in all, {share:.0%} of the "
            "ingest rate)") if background else "alone (idle)"
    say(f"latency: {len(alarm_serials)} alarms, one per {opts.alarm_interval * 1000:.0f} ms, {over}")
    jobs = {}
    if background:
        jobs = split_jobs(serials, int(background * duration), opts.publishers, seq_base=seq_base,
                          seed=3 + seq_base // LATENCY_SEQ_BASE, rate=background, heartbeats_only=True)
    jobs[opts.publishers] = Job(serials=tuple(alarm_serials), count=len(alarm_serials), seq_base=0, seed=4,
                                rate=alarm_rate, alarms=True, delay=lead_in,
                                legacy_alarm_topic=opts.legacy_alarm_topic)
    tracker.reset()
    timer.reset()

    def on_go() -> None:
        cpu.start()
        if rss is not None:
            rss.start()

    go, results = pool.run(jobs, on_go=on_go)
    tracker.wait(lambda: len(tracker.opened) >= len(alarm_serials), "the alarms' incidents")
    use = cpu.stop()
    commits = timer.summary(time.monotonic() - go)
    # What the bulk lane has not caught up with yet would spill into the next phase: wait for it, and
    # note how long after the last publish that was (more than a moment: the load was above its rate).
    sent = sum(r.acked for r in results)
    last_publish = max(r.finished for r in results)
    tracker.wait(lambda: tracker.events >= sent, "the phase's heartbeats")
    caught_up = max(tracker.progress()[1] - last_publish, 0.0)
    rss_peak = rss.stop() if rss is not None else None
    published = {serial: t for result in results for serial, t in result.publish_times.items()}
    total, delivery, processing = alarm_latencies(db, tracker, published)
    heartbeats = sum(r.acked for r in results if not r.publish_times)
    heartbeat_seconds = max((r.finished - r.started for r in results if not r.publish_times), default=0.0)
    figures: dict[str, Any] = {
        "share": share,
        "alarms": len(alarm_serials),
        "measured": len(total),
        "load_target": round(load, 1),
        "background_rate": round(heartbeats / heartbeat_seconds, 1) if heartbeat_seconds > 0 else 0.0,
        "batch_mean": tracker.batch_mean("bulk"),
        "alarm_lane_batch_mean": tracker.batch_mean("alarms"),
        "caught_up_after_s": round(caught_up, 2),
        "retried_batches": tracker.retries(),
        "commit": commits,
        "cores_busy": use.cores,
        # small batches cost more per message: compare with the ingest phase's and the drain's
        "cpu_seconds_per_1000": use.per_thousand(sent),
        **latency_summary(total, delivery, processing),
    }
    if rss is not None:
        figures["rss_peak_mib"] = rss_peak
    return figures


def run_backlog(opts: Options, db: BenchDatabase, serials: Sequence[str], pool: PublisherPool,
                tracker: CommitTracker, ingest_rate: float, cpu: CpuMeter, rss: RssMeter, ingest: Ingest,
                restart: Callable[[], Ingest]) -> tuple[dict[str, Any], Ingest]:
    """Stop the Ingest, queue a backlog for its sessions, start it again and send alarms while it drains.

    Returns the figures and the Ingest that drained it."""
    assert db.sessions is not None
    # Alarms for the whole drain, each from a fresh device: for three times the drain the ingest phase's
    # rate predicts, and 20 s more. Registered now, while the Ingest still runs and nothing is measured.
    predicted = opts.backlog / max(ingest_rate, 50.0)
    count = min(math.ceil((3 * predicted + 20) / BACKLOG_ALARM_INTERVAL), BACKLOG_ALARMS_MAX)
    alarm_serials = [f"DRAIN-{n:05d}" for n in range(count)]
    register_devices(db.sessions, alarm_serials, municipality_name="Benchmark novads (backlog)")
    say(f"backlog: ingest stopped; {opts.backlog:,} heartbeats queue in the broker for its persistent sessions")
    stop_ingest(ingest)
    go, results = pool.run(split_jobs(serials, opts.backlog, opts.publishers, seq_base=BACKLOG_SEQ_BASE, seed=5,
                                      heartbeats_only=True))
    queued = sum(r.acked for r in results)
    queue_seconds = max(r.finished for r in results) - go
    say(f"backlog: {queued:,} queued in {queue_seconds:.1f} s; starting the ingest, an alarm every "
        f"{BACKLOG_ALARM_INTERVAL * 1000:.0f} ms while it drains")
    tracker.reset(target=queued, heartbeats=True)
    cpu.start()
    rss.start()
    started = time.monotonic()
    ingest = restart()  # without a warm-up: its statuses would queue behind the backlog
    connected = time.monotonic()
    alarm_job = {opts.publishers: Job(serials=tuple(alarm_serials), count=len(alarm_serials), seq_base=0, seed=6,
                                      rate=1 / BACKLOG_ALARM_INTERVAL, alarms=True, until_stopped=True,
                                      legacy_alarm_topic=opts.legacy_alarm_topic)}
    pool.start(alarm_job)
    drained = tracker.wait(tracker.reached.is_set, "the backlog to drain")
    use = cpu.stop()
    rss_peak = rss.stop()
    drain_end = tracker.reached_at if tracker.reached_at is not None else tracker.progress()[1]
    pool.stop(opts.publishers)
    [alarms] = pool.finish(alarm_job)
    tracker.wait(lambda: len(tracker.opened) >= alarms.sent, "the drain's alarms' incidents")
    total, delivery, processing = alarm_latencies(db, tracker, alarms.publish_times, sent_by=drain_end)
    first_commit = min(tracker.opened.values(), default=None)
    at_first = tracker.heartbeats_at_first_incident
    drain_seconds = drain_end - started
    return {
        "queued": queued,
        "queue_seconds": round(queue_seconds, 2),
        "drained": drained and tracker.reached.is_set(),
        "drain_seconds": round(drain_seconds, 2),
        "drain_rate": round(queued / drain_seconds, 1) if drain_seconds > 0 else 0.0,
        "connect_seconds": round(connected - started, 3),
        "first_alarm_sent_s": round(alarms.started - started, 2),
        "first_alarm_committed_s": round(first_commit - started, 2) if first_commit is not None else None,
        "heartbeats_uncommitted_at_first_alarm": queued - at_first if at_first is not None else None,
        "alarms_sent": alarms.sent,
        "alarms_during_drain": sum(1 for sent, _ in alarms.publish_times.values() if sent <= drain_end),
        "alarms_ran_out": not alarms.stopped,
        "measured": len(total),
        "retried_batches": tracker.retries(),
        "batch_mean": tracker.batch_mean("bulk"),
        "alarm_lane_batch_mean": tracker.batch_mean("alarms"),
        "cores_busy": use.cores,
        "cpu_seconds_per_1000": use.per_thousand(queued),
        "rss_peak_mib": rss_peak,
        **latency_summary(total, delivery, processing),
    }, ingest


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


def _retries(phase: dict[str, Any]) -> tuple[int, str]:
    """Batches the Ingest retried after a database error in a phase, and by which error."""
    retried = phase.get("retried_batches") or {}
    return sum(retried.values()), ", ".join(f"{error} {count}" for error, count in sorted(retried.items()))


def render(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    base, ing, backlog = report["baseline"], report["ingest"], report.get("backlog")
    alarm_topic = ("the events topic (--legacy-alarm-topic: as devices of protocol 1.0, so they wait in the bulk "
                   "lane)") if s["legacy_alarm_topic"] else "the alarms topic (protocol 1.1)"
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
        f"{dict(TRAFFIC_MIX)['heartbeat']:.0f} % heartbeats; alarms, cancels and mains power on {alarm_topic}",
        f"ingest     Ingest in the benchmark process: bulk lane ({INGEST_CLIENT_ID}, batch_max {s['batch_max']}) and "
        f"alarm lane ({INGEST_CLIENT_ID}-alarms, batch_max {s['alarm_batch_max']})",
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
    row("batches committed, mean size (largest)", f"{ing['batch_mean']:,.1f} ({ing['batch_largest']})",
        f"bulk lane; alarm lane {ing['alarm_lane_batch_mean']:,.1f} ({ing['alarm_lane_events']:,} events)")
    if ing.get("commit"):
        row("  COMMIT alone, p50 (share of the time)", f"{ing['commit']['p50_ms']:,.1f} ms",
            f"{ing['commit'].get('share_of_time', 0) * 100:.1f} % of the phase; p99 {ing['commit']['p99_ms']:,.1f} ms")
    retried, errors = _retries(ing)
    row("batches retried after a database error", f"{retried}",
        f"{errors}: each waited for the error (a deadlock: deadlock_timeout), then 0.5 s" if retried else "")
    per_thousand, busy = ing["cpu_seconds_per_1000"], ing["cores_busy"]
    row("CPU per 1,000 messages, ingest process", f"{per_thousand.get('ingest process', 0):,.2f} s",
        f"{busy.get('ingest process', 0):.2f} cores busy")
    if "database server" in per_thousand:
        row("CPU per 1,000 messages, database server", f"{per_thousand['database server']:,.2f} s",
            f"{busy['database server']:.2f} cores busy (its backends; WAL writer, checkpointer not counted)")
    else:
        row("CPU per 1,000 messages, database server", "in process", "SQLite: included in the ingest process")

    phases = [(label, report[key]) for key, label in (("latency_idle", "idle (alarms alone)"),
                                                      ("latency", "50 % of ingest maximum"),
                                                      ("latency_full", "100 % of ingest maximum"))
              if key in report]
    alarm_rate = 1 / s["alarm_interval"]
    if phases:
        lines += ["", f"{'alarm publish -> incident committed, ms':<40}{'load/s':>8}{'sent/s':>8}{'p50':>8}"
                      f"{'p90':>8}{'p99':>8}{'max':>8}{'recv p99':>10}{'batches':>13}{'cpu/1k':>8}{'alarms':>10}   "
                      f"p99 < {LATENCY_TARGET_MS:.0f} ms"]
        for label, lat in phases:
            sent = lat["background_rate"] + alarm_rate
            cells = "".join(f"{lat[key]:>8,.1f}" if key in lat else f"{'-':>8}"
                            for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"))
            met = "p99_ms" in lat and lat["p99_ms"] < LATENCY_TARGET_MS and lat["measured"] == lat["alarms"]
            note = "met" if met else "NOT MET"
            if lat["caught_up_after_s"] >= 1:
                note += f"; bulk lane caught up {lat['caught_up_after_s']:.1f} s after the last publish"
            if (retried := _retries(lat))[0]:
                note += f"; batches retried: {retried[1]}"
            cpu_per_1k = lat.get("cpu_seconds_per_1000", {}).get("ingest process", 0.0)
            batches = f"{lat['batch_mean']:,.1f} / {lat['alarm_lane_batch_mean']:,.1f}"
            lines.append(f"  {label:<38}{lat['load_target']:>8,.0f}{sent:>8,.0f}{cells}"
                         f"{lat.get('to_receipt_p99_ms', 0):>10,.1f}{batches:>13}{cpu_per_1k:>8,.2f}"
                         f"{lat['measured']:>5} /{lat['alarms']:>3}   {note}")
        lines.append(f"  (load: target, sent: heartbeats as sent + {alarm_rate:,.0f} alarms/s, one per "
                     f"{s['alarm_interval'] * 1000:.0f} ms; recv: publish -> ingest received; batches: mean size, bulk "
                     "/ alarm lane (alarm lane > 1: alarms waited for each other); cpu/1k: ingest process CPU s per "
                     "1,000 messages; the target is stated for 50 %)")
        if full := report.get("latency_full"):
            row("peak resident memory, ingest process, 100 %", f"{full.get('rss_peak_mib') or 0:,.1f} MiB",
                f"whole run's peak {report['rss_lifetime_peak_mib']:,.1f} MiB")

    if backlog:
        lines.append("")
        row("backlog: heartbeats queued, ingest stopped", f"{backlog['queued']:,}",
            f"queued in {backlog['queue_seconds']:.1f} s")
        row("backlog drain time", f"{backlog['drain_seconds']:,.1f} s",
            (f"{backlog['drain_rate']:,.0f} msg/s, mean bulk batch {backlog['batch_mean']:,.1f}" if backlog["drained"]
             else "INCOMPLETE: the drain stalled"))
        uncommitted = backlog["heartbeats_uncommitted_at_first_alarm"]
        if uncommitted is not None:
            row("heartbeats not yet committed at 1st alarm", f"{uncommitted:,}",
                f"{uncommitted / max(backlog['queued'], 1) * 100:.0f} % of the backlog; first alarm sent "
                f"{backlog['first_alarm_sent_s']:.2f} s, committed {backlog['first_alarm_committed_s']:.2f} s "
                "after the ingest started")
        if "p50_ms" in backlog:
            met = (backlog["drained"] and backlog["max_ms"] < BACKLOG_TARGET_MS
                   and backlog["measured"] == backlog["alarms_during_drain"])
            row("alarm latency during the drain, p50", f"{backlog['p50_ms']:,.1f} ms")
            row("                                   p99", f"{backlog['p99_ms']:,.1f} ms")
            row("                                   max", f"{backlog['max_ms']:,.1f} ms",
                f"every alarm < {BACKLOG_TARGET_MS / 1000:.0f} s  {'met' if met else 'NOT MET'}")
            row("  of which publish -> ingest received p99", f"{backlog['to_receipt_p99_ms']:,.1f} ms")
        row("alarms during the drain, measured / sent", f"{backlog['measured']} / {backlog['alarms_during_drain']}",
            f"one per {BACKLOG_ALARM_INTERVAL * 1000:.0f} ms from a fresh device"
            + ("; RAN OUT of devices before the drain ended" if backlog["alarms_ran_out"] else ""))
        drain_cpu = backlog["cpu_seconds_per_1000"]
        if (retried := _retries(backlog))[0]:
            row("batches retried after a database error", f"{retried[0]}", retried[1])
        row("CPU per 1,000 heartbeats during the drain", f"{drain_cpu.get('ingest process', 0):,.2f} s",
            f"ingest process; database server {drain_cpu['database server']:,.2f} s" if "database server" in drain_cpu
            else "ingest process (SQLite in it)")
        row("peak resident memory, ingest, drain", f"{backlog.get('rss_peak_mib') or 0:,.1f} MiB")

    lines.append("")
    named = [("baseline", base), ("ingest", ing)]
    named += [(name, report[key]) for key, name in (("latency_idle", "latency idle"), ("latency", "latency 50 %"),
                                                    ("latency_full", "latency 100 %")) if key in report]
    if backlog:
        named.append(("backlog drain", backlog))
    for name, phase in named:
        busy_text = ", ".join(f"{k} {v:.2f}" for k, v in phase["cores_busy"].items())
        lines.append(f"cores busy during {name + ':':<15} {busy_text}")
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
    # One fresh device per alarm and latency phase (idle, half, full); the backlog's are added later.
    alarm_serials = [f"ALARM-{n:05d}" for n in range(len(LATENCY_LOADS) * opts.latency_alarms)]
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

        # One process per publisher, and one more for the alarms of the latency and backlog phases.
        pool = PublisherPool(opts.publishers + (1 if opts.latency_alarms or opts.backlog else 0), broker.port)
        stack.callback(pool.close)
        cpu = CpuMeter(broker, db, pool)
        report: dict[str, Any] = {"machine": machine_info(broker, db),
                                  "settings": {k: v for k, v in asdict(opts).items() if k != "json_path"}}
        report["settings"]["ingest_mode"] = "in-process Ingest (alarm lane and bulk lane)"
        report["settings"]["alarm_batch_max"] = min(opts.batch_max, ALARM_BATCH_MAX)
        report["baseline"] = run_baseline(opts, serials, pool, broker.port, cpu)

        tracker = CommitTracker()
        ingest_log = logging.getLogger("alarmcentre.ingest")
        handler = IngestLog(tracker)
        ingest_log.addHandler(handler)
        stack.callback(ingest_log.removeHandler, handler)
        ingests: list[Ingest] = []
        stack.callback(lambda: stop_ingest(ingests[-1]) if ingests else None)

        def start(*, warm_up: bool = True) -> Ingest:
            # Each warm-up's mains report has a seq of its own (a repeated one would be a duplicate).
            return start_ingest(opts, db, broker.port, tracker, serials, live=ingests,
                                warm_up_seq=WARMUP_SEQ_BASE + len(ingests) if warm_up else None)

        assert db.engine is not None
        timer = CommitTimer(db.engine, db.sessions)
        report["ingest"], ingest = run_ingest(opts, db, serials, pool, tracker, cpu, timer, start(), start)
        report["ratio"] = round(report["ingest"]["rate"] / report["baseline"]["rate"], 3) \
            if report["baseline"]["rate"] else 0.0
        rss = RssMeter()
        if opts.latency_alarms:
            for n, (key, share) in enumerate(LATENCY_LOADS):
                report[key] = run_latency(
                    opts, db, serials, alarm_serials[n * opts.latency_alarms:(n + 1) * opts.latency_alarms], pool,
                    tracker, report["ingest"]["rate"], cpu, timer, share=share, seq_base=LATENCY_SEQ_BASE * (n + 1),
                    rss=rss if share == 1.0 else None)
        if opts.backlog:
            report["backlog"], ingest = run_backlog(opts, db, serials, pool, tracker, report["ingest"]["rate"], cpu,
                                                    rss, ingest, lambda: start(warm_up=False))
        report["rss_lifetime_peak_mib"] = lifetime_peak_rss_mib()
        lat, backlog = report.get("latency"), report.get("backlog")
        report["targets"] = {
            "ingest_ratio_at_least_50_percent": report["ratio"] >= 0.5,
            "alarm_p99_below_100_ms": (lat is not None and "p99_ms" in lat and lat["p99_ms"] < LATENCY_TARGET_MS
                                       and lat["measured"] == lat["alarms"]),
            "backlog_every_alarm_below_1_s": (backlog is not None and backlog["drained"] and "max_ms" in backlog
                                              and backlog["max_ms"] < BACKLOG_TARGET_MS
                                              and backlog["measured"] == backlog["alarms_during_drain"]),
        }
        report["machine"]["load_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        say("done; stopping the ingest, the publishers and the broker, removing the database")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    report = run(opts)
    table = render(report)
    to_stdout_json = opts.json_path == "-"
    out = sys.stderr if to_stdout_json else sys.stdout
    print(table, file=out, flush=True)
    # One line for scripts to grep, in every run: the ingest's rate as a fraction of the bare subscriber's.
    print(f"ratio={report['ratio']:.3f}", file=out, flush=True)
    if opts.json_path:
        document = json.dumps(report, indent=2)
        if to_stdout_json:
            print(document)
        else:
            Path(opts.json_path).write_text(document + "\n")
    complete = report["baseline"]["complete"] and report["ingest"]["complete"]
    for key, _ in LATENCY_LOADS:
        if key in report:
            complete = complete and report[key]["measured"] == report[key]["alarms"]
    if "backlog" in report:
        backlog = report["backlog"]
        complete = complete and backlog["drained"] and backlog["measured"] == backlog["alarms_during_drain"]
    if not complete:
        say("ERROR: a phase did not complete (messages missing); the figures above are not valid")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
