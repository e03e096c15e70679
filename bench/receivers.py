#!/usr/bin/env python3
"""Receiver benchmark: how many DC-09 frames and SCAIP messages a second become committed device events.

One run, on this machine, on a fresh database (PostgreSQL: a new database, dropped at the end; SQLite: a new
file, removed at the end):

1. baseline: the same events as the receivers make (protocol v1 JSON, heartbeats on `events`, button presses
   on `alarms`) committed straight through `ingest.batch.process_batch`, one message per transaction, by C
   threads of this process (no network, no receiver);
2. the receivers, each on its real server (receivers/server.py: asyncio, TCP and UDP on one port, the work
   in worker threads) in this process, with C devices in a sender process, each device waiting for the
   answer to a message before it sends the next, as a real one does:
   - DC-09 over UDP and over TCP (one connection per panel kept open): AES-128 encrypted frames, as
     production requires; heartbeats are link tests (`*NULL`), alarms SIA DCS `Nri1/MA1` (medical alarm);
   - SCAIP over UDP, each device with a password: every message is a challenge (401) and the authorised
     request; and once without passwords (`Settings(scaip_allow_unauthenticated=True)`): one request each;
     heartbeats `<mty>PI</mty>`, alarms `ME` stc 0010;
   every case with fresh devices, each at a client of its own: a device's first alarm opens an incident,
   the rest are signals on it;
3. prints per case: events committed per second, send -> answer latency p50/p99, the ratio to the baseline
   of the same traffic and concurrency, the cores busy (this process, the devices, the database server, the
   rest of the machine), and checks the device_events rows against the answers; then a `ratio=` line per
   receiver (its messages over its time, against the baseline's).

    PYTHONPATH=. python bench/receivers.py                   # PostgreSQL on 127.0.0.1:5432 (~3.5 minutes)
    PYTHONPATH=. python bench/receivers.py --quick           # smoke run, ~35 s
    PYTHONPATH=. python bench/receivers.py --database-url sqlite:////tmp/receivers.sqlite3
    PYTHONPATH=. python bench/receivers.py --profile dc09-heartbeat   # cProfile of receiver.handle, no network
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import itertools
import json
import logging
import multiprocessing as mp
import os
import platform
import pstats
import secrets
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.devices.models import DeviceEvent
from alarmcentre.incidents.models import Incident
from alarmcentre.ingest.batch import process_batch
from alarmcentre.ingest.processor import InboundMessage, Outcome
from alarmcentre.ingest.protocol import alarms_topic, events_topic
from alarmcentre.receivers.dc09 import Dc09Receiver, set_account
from alarmcentre.receivers.dc09_frame import build_frame
from alarmcentre.receivers.dc09_server import background_dc09_server
from alarmcentre.receivers.scaip import ScaipReceiver, set_identity
from alarmcentre.receivers.scaip_server import background_scaip_server
from alarmcentre.receivers.server import BackgroundReceiver
from bench.ingest import DEFAULT_POSTGRES_URL, OTHERS, BenchDatabase, machine_cpu, percentile, process_cpu, say
from tests.factories import make_client, make_device
from tests.scaip_device import Device as ScaipDevice
from tests.scaip_device import mrq, parse_response

KINDS = ("heartbeat", "alarm")
CONCURRENCY = (1, 20)
# Messages per case (shared among its devices). The full run's are sized so that a case lasts several seconds.
QUICK = {"heartbeats": 400, "alarms": 200}
DEFAULTS = {"heartbeats": 3000, "alarms": 1000}
WARM_UP = 20  # heartbeats from a device of its own before a receiver's first case (pools, caches); not counted
ANSWER_TIMEOUT = 10.0  # seconds a device waits for an answer (a real one would resend; here it is a failure)
PROFILE_TARGETS = ("dc09-heartbeat", "dc09-alarm", "scaip-heartbeat", "scaip-alarm")


@dataclass(frozen=True)
class Receiver:
    """One receiver configuration under test."""

    key: str  # for the ratio= line and the JSON
    label: str
    protocol: str  # "dc09" | "scaip"
    transport: str  # "udp" | "tcp"
    passwords: bool = False  # SCAIP: every device has one (digest: challenge, then the authorised request)


RECEIVERS = (
    Receiver("dc09-udp", "DC-09 UDP, AES", "dc09", "udp"),
    Receiver("dc09-tcp", "DC-09 TCP, AES", "dc09", "tcp"),
    Receiver("scaip-udp-digest", "SCAIP UDP, digest", "scaip", "udp", passwords=True),
    Receiver("scaip-udp-open", "SCAIP UDP, no password", "scaip", "udp"),
)


# -- options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    database_url: str
    concurrency: tuple[int, ...]
    heartbeats: int
    alarms: int
    receivers: tuple[str, ...]
    json_path: str | None
    profile: str | None
    profile_messages: int
    quick: bool


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/receivers.py",
        description="Benchmark of the DC-09 and SCAIP receivers: frames/messages per second committed as device "
                    "events, send -> answer latency, against process_batch alone. Uses a fresh database.")
    parser.add_argument("--database-url", default=DEFAULT_POSTGRES_URL,
                        help="a PostgreSQL server URL (a fresh database is created there and dropped at the end; "
                             "default %(default)s) or sqlite:///PATH (a new file, removed at the end)")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), metavar="C,C",
                        help="devices sending at once, one set of cases each (default %(default)s)")
    parser.add_argument("--heartbeats", type=_positive, default=None,
                        help=f"heartbeats per case (default {DEFAULTS['heartbeats']}, --quick {QUICK['heartbeats']})")
    parser.add_argument("--alarms", type=_positive, default=None,
                        help=f"alarms per case (default {DEFAULTS['alarms']}, --quick {QUICK['alarms']})")
    parser.add_argument("--receivers", default=",".join(r.key for r in RECEIVERS),
                        help="which receivers, comma-separated (default all: %(default)s)")
    parser.add_argument("--json", dest="json_path", metavar="PATH", default=None,
                        help="also write the figures as JSON to PATH")
    parser.add_argument("--profile", choices=PROFILE_TARGETS, default=None,
                        help="instead of the benchmark: cProfile of the receiver's handle() called directly in one "
                             "thread (no network; SCAIP with a password), top functions to stderr")
    parser.add_argument("--profile-messages", type=_positive, default=1000, help="messages for --profile")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK['heartbeats']} heartbeats and {QUICK['alarms']} alarms per case")
    args = parser.parse_args(argv)
    url = args.database_url
    if not url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://", "sqlite:///")):
        parser.error("--database-url must be postgresql://... or sqlite:///PATH")
    try:
        concurrency = tuple(int(part) for part in args.concurrency.split(","))
    except ValueError:
        parser.error("--concurrency takes numbers, e.g. 1,20")
    if not concurrency or min(concurrency) < 1:
        parser.error("--concurrency: at least one device")
    known = {r.key for r in RECEIVERS}
    chosen = tuple(key for key in args.receivers.split(",") if key)
    if not set(chosen) <= known:
        parser.error(f"--receivers: choose from {', '.join(sorted(known))}")
    sizes = QUICK if args.quick else DEFAULTS
    return Options(database_url=url, concurrency=concurrency, heartbeats=args.heartbeats or sizes["heartbeats"],
                   alarms=args.alarms or sizes["alarms"], receivers=chosen, json_path=args.json_path,
                   profile=args.profile, profile_messages=args.profile_messages, quick=args.quick)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


# -- the devices --------------------------------------------------------------------------------

Exchange = Callable[[bytes], bytes]  # one request out, its answer back (raises TimeoutError: none came)


@dataclass(frozen=True)
class DeviceSpec:
    """What a sender needs to be one device: DC-09 account and AES key (hex), or SCAIP cid and password."""

    ident: str
    secret: str | None


class Dc09Panel:
    def __init__(self, spec: DeviceSpec) -> None:
        self.account = spec.ident
        self.key = bytes.fromhex(spec.secret) if spec.secret else None
        self.sequence = 0

    def send(self, kind: str, exchange: Exchange) -> tuple[str, float]:
        """One frame, built just before it goes (its timestamp must be within 40 s): "ok" or what came back,
        and the seconds from sending it to the answer."""
        self.sequence += 1
        if kind == "heartbeat":
            frame = build_frame("NULL", self.sequence, self.account, "", key=self.key)
        else:
            frame = build_frame("SIA-DCS", self.sequence, self.account, f"#{self.account}|Nri1/MA1", key=self.key)
        sent = time.perf_counter()
        answer = exchange(frame)
        seconds = time.perf_counter() - sent
        if b'ACK"' in answer[:24]:  # "ACK" or "*ACK"; a NAK or DUH is no acknowledgement
            return "ok", seconds
        return answer[9:14].decode("ascii", "replace").strip('"*') or "empty answer", seconds


class ScaipUnit:
    def __init__(self, spec: DeviceSpec, port: int) -> None:
        self.device = ScaipDevice(port=port, cid=spec.ident, password=spec.secret)
        self.ref = 0
        self.challenges: list[float] = []  # seconds, request -> 401, of each message that drew one

    def send(self, kind: str, exchange: Exchange) -> tuple[str, float]:
        """One <mrq>; with a password, as the first request draws a 401: the authorised one after it. "ok" or
        what came back, and the seconds from the first request to the last answer."""
        self.ref += 1
        ref = f"{self.ref:08d}"
        body = (mrq(ref, self.device.cid, mty="PI", stc=None) if kind == "heartbeat"
                else mrq(ref, self.device.cid))
        request = self.device.message(body)
        sent = time.perf_counter()
        answer = parse_response(exchange(request))
        if answer.status == 401 and self.device.password:
            self.challenges.append(time.perf_counter() - sent)
            authorization = self.device.authorization(answer.headers["www-authenticate"])
            answer = parse_response(exchange(self.device.message(body, authorization=authorization)))
        seconds = time.perf_counter() - sent
        if answer.status == 200 and answer.tag("snu") == "0":
            return "ok", seconds
        return f"SIP {answer.status} snu {answer.tag('snu')}", seconds


def _udp_exchange(sock: socket.socket) -> Exchange:
    def exchange(raw: bytes) -> bytes:
        sock.send(raw)
        return sock.recv(65535)
    return exchange


def _tcp_exchange(sock: socket.socket) -> Exchange:
    """DC-09 over TCP: the answer is one frame, ended by CR."""
    def exchange(raw: bytes) -> bytes:
        sock.sendall(raw)
        buffer = b""
        while b"\r" not in buffer:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("the receiver closed the connection")
            buffer += chunk
        return buffer
    return exchange


@dataclass(frozen=True)
class SendJob:
    protocol: str
    transport: str
    port: int
    kind: str
    devices: tuple[DeviceSpec, ...]
    per_device: tuple[int, ...]


@dataclass
class SendResult:
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, send -> answer, successful ones
    challenges: list[float] = field(default_factory=list)  # SCAIP digest: seconds, first request -> 401
    seconds: float = 0.0  # first send to the last answer of any device


def _device_loop(job: SendJob, spec: DeviceSpec, count: int, start: threading.Barrier, out: SendResult,
                 lock: threading.Lock) -> None:
    kind = socket.SOCK_STREAM if job.transport == "tcp" else socket.SOCK_DGRAM
    device: Dc09Panel | ScaipUnit = Dc09Panel(spec) if job.protocol == "dc09" else ScaipUnit(spec, job.port)
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            sock.connect(("127.0.0.1", job.port))  # UDP too: then only the receiver's datagrams come in
            start.wait(60)
        except (OSError, threading.BrokenBarrierError) as exc:
            start.abort()  # the others stop waiting too; every message of the device counts as failed
            failures[f"not started ({type(exc).__name__})"] += count
            count = 0
        exchange = _tcp_exchange(sock) if job.transport == "tcp" else _udp_exchange(sock)
        for _ in range(count):
            try:
                outcome, seconds = device.send(job.kind, exchange)
            except (TimeoutError, OSError) as exc:
                outcome, seconds = f"no answer ({type(exc).__name__})", 0.0
            except Exception as exc:  # an answer the device cannot read: counted, never a thread lost silently
                outcome, seconds = f"unreadable answer ({type(exc).__name__}: {exc})"[:120], 0.0
            if outcome == "ok":
                latencies.append(seconds)
            else:
                failures[outcome] += 1
    with lock:
        out.ok += len(latencies)
        out.latencies += latencies
        if isinstance(device, ScaipUnit):
            out.challenges += device.challenges
        for reason, n in failures.items():
            out.failures[reason] = out.failures.get(reason, 0) + n


def run_devices(job: SendJob) -> SendResult:
    """Every device of the job in a thread of its own, all starting together; blocks until all are done."""
    out, lock = SendResult(), threading.Lock()
    start = threading.Barrier(len(job.devices) + 1)
    threads = [threading.Thread(target=_device_loop, args=(job, spec, count, start, out, lock), daemon=True)
               for spec, count in zip(job.devices, job.per_device, strict=True)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait(60)
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    out.seconds = time.perf_counter() - began
    return out


def sender_main(conn: Connection) -> None:
    """The devices' process: runs the jobs it is sent until it gets None."""
    conn.send("ready")  # its imports done, so their CPU falls in no case
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        conn.send(run_devices(job))


class Senders:
    """One long-lived process for the devices, apart from the receiver's so they do not share its GIL."""

    def __init__(self) -> None:
        context = mp.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=sender_main, args=(child,), name="bench-devices", daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(60) or self._conn.recv() != "ready":
            raise RuntimeError("the devices' process did not start")

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def run(self, job: SendJob) -> SendResult:
        self._conn.send(job)
        if not self._conn.poll(600):
            raise RuntimeError("the devices did not finish within 600 s")
        result: SendResult = self._conn.recv()
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(None)
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)


# -- the database -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchDevice:
    id: int
    serial: str
    spec: DeviceSpec


def register(factory: sessionmaker[Session], cipher: MultiFernet, protocol: str, prefix: str, count: int, *,
             passwords: bool = True) -> list[BenchDevice]:
    """`count` devices, each installed at a client of its own, with a DC-09 account and key, a SCAIP cid (and
    password), or (protocol "") neither. Accounts and cids are made of the device's id, unique in the run."""
    made = []
    with transaction(factory, writes=True) as session:
        for n in range(count):
            serial = f"{prefix}-{n:03d}"
            device = make_device(session, serial, client=make_client(session, name=f"Bench {serial}"))
            if protocol == "dc09":
                key = secrets.token_bytes(16)
                account = f"{0xB00000 + device.id:X}"
                set_account(session, device=device, account=account, key=key, cipher=cipher)
                made.append(BenchDevice(device.id, serial, DeviceSpec(account, key.hex())))
            elif protocol == "scaip":
                cid = f"bench{device.id}"
                password = secrets.token_urlsafe(12) if passwords else None
                set_identity(session, device=device, cid=cid, password=password, cipher=cipher)
                made.append(BenchDevice(device.id, serial, DeviceSpec(cid, password)))
            else:
                made.append(BenchDevice(device.id, serial, DeviceSpec(serial, None)))
    return made


def events_per_device(factory: sessionmaker[Session]) -> dict[int, int]:
    with factory() as session:
        rows = session.execute(select(DeviceEvent.device_id, func.count()).group_by(DeviceEvent.device_id))
        return {int(device_id): int(n) for device_id, n in rows}


def incidents_per_device(factory: sessionmaker[Session]) -> dict[int, int]:
    with factory() as session:
        rows = session.execute(select(Incident.device_id, func.count()).where(Incident.device_id.is_not(None))
                               .group_by(Incident.device_id))
        return {int(device_id): int(n) for device_id, n in rows}


# -- CPU --------------------------------------------------------------------------------------


class CpuMeter:
    """Average cores busy during a case: this process (the receiver, or the baseline's threads), the devices'
    process, the PostgreSQL backends of the database, and the rest of the machine (others' work, PostgreSQL's
    WAL writer and checkpointer), from /proc as bench/ingest.py counts them. Also the SQL statements sent."""

    def __init__(self, db: BenchDatabase, senders: Senders) -> None:
        self._db, self._senders = db, senders
        self._start: dict[str, dict[int, float]] = {}
        self._machine: float | None = None
        self._t0 = 0.0
        self._statements = itertools.count()
        self._statements_at_start = 0
        self.statements = 0  # of the last case
        assert db.engine is not None
        event.listen(db.engine, "before_cursor_execute", lambda *_: next(self._statements))

    def _snapshot(self) -> dict[str, dict[int, float]]:
        groups = {"bench": [os.getpid()], "devices": [self._senders.pid or -1], "database": self._db.backend_pids()}
        return {name: {pid: cpu for pid in pids if (cpu := process_cpu(pid)) is not None}
                for name, pids in groups.items()}

    def start(self) -> None:
        self._start, self._machine, self._t0 = self._snapshot(), machine_cpu(), time.monotonic()
        self._statements_at_start = next(self._statements)

    def stop(self) -> dict[str, float]:
        end, elapsed = self._snapshot(), max(time.monotonic() - self._t0, 1e-9)
        self.statements = next(self._statements) - self._statements_at_start - 1
        used = {name: sum(cpu - self._start.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
                for name, pids in end.items()}
        machine = machine_cpu()
        if machine is not None and self._machine is not None:
            used[OTHERS] = max(machine - self._machine - sum(used.values()), 0.0)
        return {name: round(seconds / elapsed, 2) for name, seconds in used.items()}


# -- the cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    receiver: str  # "baseline" or a Receiver.key
    label: str
    kind: str
    devices: int
    messages: int
    ok: int
    failures: dict[str, int]
    seconds: float
    latency_ms: dict[str, float]
    cores: dict[str, float]
    device_ids: list[int] = field(default_factory=list)
    statements: int = 0  # SQL statements this process sent during the case (SQLAlchemy's cursor executes)
    challenge_ms: dict[str, float] = field(default_factory=dict)  # SCAIP digest: the 401 leg alone
    rows: int | None = None  # device_events of the case's devices, counted at the end
    incidents: int | None = None
    ratio: float | None = None

    @property
    def expected_incidents(self) -> int:
        return self.devices if self.kind == "alarm" else 0  # one per device, the later alarms signals on it

    @property
    def valid(self) -> bool:
        return (self.rows == self.ok == self.messages and not self.failures
                and self.incidents == self.expected_incidents)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def _split(total: int, parts: int) -> tuple[int, ...]:
    return tuple(total // parts + (1 if n < total % parts else 0) for n in range(parts))


def _latency(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ordered = sorted(seconds)
    return {q: round(percentile(ordered, p) * 1000, 2) for q, p in (("p50", 0.5), ("p99", 0.99))} | {
        "max": round(ordered[-1] * 1000, 2)}


def run_baseline(db: BenchDatabase, cipher: MultiFernet, cpu: CpuMeter, kind: str, concurrency: int,
                 total: int, settings: Settings, *, prefix: str = "BASE") -> Case:
    """The receivers' events straight into process_batch, one transaction each, from C threads of this process."""
    assert db.sessions is not None
    factory = db.sessions
    devices = register(factory, cipher, "", f"{prefix}-{kind[:1].upper()}{concurrency}", concurrency)
    out, lock = SendResult(), threading.Lock()
    start = threading.Barrier(concurrency + 1)

    def device_loop(serial: str, count: int) -> None:
        topic = events_topic(serial) if kind == "heartbeat" else alarms_topic(serial)
        event_type = "heartbeat" if kind == "heartbeat" else "button_press"
        latencies, failures = [], Counter[str]()
        start.wait()
        for seq in range(1, count + 1):
            began = time.perf_counter()
            now = datetime.now(UTC)
            payload = json.dumps({"seq": seq, "ts": now.isoformat(), "type": event_type}).encode()
            try:
                with transaction(factory, writes=True) as session:
                    [result] = process_batch(session, [InboundMessage(topic, payload, now)], settings=settings)
            except Exception as exc:  # counted as a failure, so the check at the end sees it
                failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
                continue
            if result.outcome is Outcome.ACCEPTED:
                latencies.append(time.perf_counter() - began)
            else:
                failures[f"{result.outcome} {result.reason or ''}".strip()] += 1
        with lock:
            out.ok += len(latencies)
            out.latencies += latencies
            for reason, n in failures.items():
                out.failures[reason] = out.failures.get(reason, 0) + n

    threads = [threading.Thread(target=device_loop, args=(d.serial, count), daemon=True)
               for d, count in zip(devices, _split(total, concurrency), strict=True)]
    for thread in threads:
        thread.start()
    cpu.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    out.seconds = time.perf_counter() - began
    return Case("baseline", "process_batch, 1 msg/transaction", kind, concurrency, total, out.ok, out.failures,
                out.seconds, _latency(out.latencies), cpu.stop(), [d.id for d in devices], cpu.statements)


@contextlib.contextmanager
def receiving(receiver: Receiver, db: BenchDatabase, cipher: MultiFernet) -> Iterator[BackgroundReceiver]:
    assert db.sessions is not None
    server: BackgroundReceiver
    if receiver.protocol == "dc09":
        server = background_dc09_server(Dc09Receiver(db.sessions, settings=Settings(), cipher=lambda: cipher),
                                        host="127.0.0.1", port=0)
    else:
        settings = Settings() if receiver.passwords else Settings(scaip_allow_unauthenticated=True)
        server = background_scaip_server(ScaipReceiver(db.sessions, settings=settings, cipher=lambda: cipher),
                                         host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run_receiver_case(receiver: Receiver, db: BenchDatabase, cipher: MultiFernet, cpu: CpuMeter, senders: Senders,
                      port: int, kind: str, concurrency: int, total: int, index: int) -> Case:
    assert db.sessions is not None
    devices = register(db.sessions, cipher, receiver.protocol, f"R{index:02d}-{kind[:1].upper()}{concurrency}",
                       concurrency, passwords=receiver.passwords)
    job = SendJob(receiver.protocol, receiver.transport, port, kind, tuple(d.spec for d in devices),
                  _split(total, concurrency))
    cpu.start()
    result = senders.run(job)
    return Case(receiver.key, receiver.label, kind, concurrency, total, result.ok, result.failures, result.seconds,
                _latency(result.latencies), cpu.stop(), [d.id for d in devices], cpu.statements,
                _latency(result.challenges))


def warm_up(receiver: Receiver, db: BenchDatabase, cipher: MultiFernet, senders: Senders, port: int) -> None:
    assert db.sessions is not None
    devices = register(db.sessions, cipher, receiver.protocol, f"WARM-{receiver.key}", 1,
                       passwords=receiver.passwords)
    result = senders.run(SendJob(receiver.protocol, receiver.transport, port, "heartbeat",
                                 (devices[0].spec,), (WARM_UP,)))
    if result.failures:
        say(f"WARNING: warm-up of {receiver.key} not answered as expected: {result.failures}")


def check(cases: list[Case], db: BenchDatabase) -> list[str]:
    """Rows and incidents of each case's devices, counted once at the end; the problems found."""
    assert db.sessions is not None
    events, incidents = events_per_device(db.sessions), incidents_per_device(db.sessions)
    problems = []
    for case in cases:
        case.rows = sum(events.get(device_id, 0) for device_id in case.device_ids)
        case.incidents = sum(incidents.get(device_id, 0) for device_id in case.device_ids)
        name = f"{case.label}, {case.kind}, {case.devices} device(s)"
        if case.rows != case.ok:
            problems.append(f"{name}: {case.ok} answered as committed but {case.rows} device_events rows")
        if case.failures:
            problems.append(f"{name}: not acknowledged: {case.failures}")
        if case.ok + sum(case.failures.values()) != case.messages:
            problems.append(f"{name}: {case.messages} to send, {case.ok} acknowledged and "
                            f"{sum(case.failures.values())} failed")
        if case.incidents != case.expected_incidents:
            problems.append(f"{name}: {case.incidents} incidents, expected {case.expected_incidents}")
    return problems


def machine_info(db: BenchDatabase) -> dict[str, Any]:
    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cores": os.cpu_count(), "cpu": cpu_model,
            "load_at_start": round(os.getloadavg()[0], 2), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "sqlalchemy": package_version("sqlalchemy"),
            "psycopg": package_version("psycopg"), "cryptography": package_version("cryptography"),
            "database": db.version}


def run(opts: Options) -> dict[str, Any]:
    cipher = MultiFernet([Fernet(Fernet.generate_key())])
    settings = Settings()
    with contextlib.ExitStack() as stack:
        db = BenchDatabase(opts.database_url)
        stack.callback(db.drop)
        db.create()
        senders = Senders()
        stack.callback(senders.close)
        cpu = CpuMeter(db, senders)
        report: dict[str, Any] = {"machine": machine_info(db), "settings": asdict(opts)}
        say(f"{db.version}; concurrency {opts.concurrency}, {opts.heartbeats} heartbeats and {opts.alarms} alarms "
            "per case")
        sizes = {"heartbeat": opts.heartbeats, "alarm": opts.alarms}
        cases: list[Case] = []
        # The baseline's warm-up: pools and caches as the receivers find them after theirs.
        run_baseline(db, cipher, cpu, "heartbeat", 1, WARM_UP, settings, prefix="WARM")
        for kind in KINDS:
            for concurrency in opts.concurrency:
                cases.append(run_baseline(db, cipher, cpu, kind, concurrency, sizes[kind], settings))
                say(f"baseline {kind} x{concurrency}: {cases[-1].rate:,.0f} msg/s")
        for index, receiver in enumerate(r for r in RECEIVERS if r.key in opts.receivers):
            with receiving(receiver, db, cipher) as server:
                warm_up(receiver, db, cipher, senders, server.port)
                for kind in KINDS:
                    for concurrency in opts.concurrency:
                        case = run_receiver_case(receiver, db, cipher, cpu, senders, server.port, kind, concurrency,
                                                 sizes[kind], index)
                        cases.append(case)
                        say(f"{receiver.key} {kind} x{concurrency}: {case.rate:,.0f} msg/s, "
                            f"p99 {case.latency_ms.get('p99', 0):.1f} ms")
        baseline = {(c.kind, c.devices): c for c in cases if c.receiver == "baseline"}
        for case in cases:
            base = baseline[(case.kind, case.devices)]
            case.ratio = round(case.rate / base.rate, 3) if base.rate else None
        report["problems"] = check(cases, db)
        report["cases"] = [{k: v for k, v in asdict(c).items() if k != "device_ids"}
                           | {"rate": round(c.rate, 1), "valid": c.valid} for c in cases]
        report["ratios"] = overall_ratios(cases)
        report["machine"]["load_at_end"] = round(os.getloadavg()[0], 2)
        say("done; removing the database")
    return report


def overall_ratios(cases: list[Case]) -> dict[str, float]:
    """Per receiver: its committed messages over its time in all its cases, against the baseline's same."""
    def rate(key: str) -> float:
        chosen = [c for c in cases if c.receiver == key]
        seconds = sum(c.seconds for c in chosen)
        return sum(c.ok for c in chosen) / seconds if seconds else 0.0

    base = rate("baseline")
    return {key: round(rate(key) / base, 3) if base else 0.0 for key in dict.fromkeys(c.receiver for c in cases)
            if key != "baseline"}


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"alarmcentre receiver benchmark, {m['date']}",
        f"machine   {m['cores']} cores ({m['cpu']}), load average {m['load_at_start']} at start, "
        f"{m['load_at_end']} at end, {m['os']}",
        f"software  Python {m['python']}, SQLAlchemy {m['sqlalchemy']}, psycopg {m['psycopg']}, "
        f"cryptography {m['cryptography']}, {m['database']}",
        "each device waits for the answer before its next message; latency: send -> answer (SCAIP digest: both "
        "round trips); ratio: against the baseline of the same kind and concurrency",
        "",
        f"{'case':<34}{'kind':<10}{'devices':>7}{'msgs':>7}{'msg/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>7}"
        f"{'rows':>7}{'inc':>5}{'sql/msg':>8}   cores: bench / devices / db / rest",
    ]
    for case in report["cases"]:
        lat, cores = case["latency_ms"], case["cores"]
        busy = " / ".join(f"{cores.get(k, 0):.2f}" for k in ("bench", "devices", "database", OTHERS))
        ratio = f"{case['ratio']:.2f}" if case["ratio"] is not None else "-"
        note = "" if case["valid"] else "   MISMATCH"
        per_message = case["statements"] / max(case["messages"], 1)
        lines.append(f"{case['label']:<34}{case['kind']:<10}{case['devices']:>7}{case['messages']:>7}"
                     f"{case['rate']:>9,.0f}{lat.get('p50', 0):>9.1f}{lat.get('p99', 0):>9.1f}{ratio:>7}"
                     f"{case['rows']:>7}{case['incidents']:>5}{per_message:>8.1f}   {busy}{note}")
    lines.append("  (rows: device_events of the case's devices; inc: incidents of them, one per device for alarms; "
                 "sql/msg: statements sent per message; bench: this process, i.e. the receiver or the baseline)")
    for case in report["cases"]:
        if challenge := case["challenge_ms"]:
            lines.append(f"  {case['label']}, {case['kind']}, {case['devices']} device(s): of which request -> 401 "
                         f"p50 {challenge['p50']:.1f} ms, p99 {challenge['p99']:.1f} ms")
    return "\n".join(lines)


# -- the profile -------------------------------------------------------------------------------


def run_profile(opts: Options) -> int:
    """receiver.handle() called in this thread under cProfile: where one message's time goes, no network."""
    assert opts.profile is not None
    protocol, kind = opts.profile.split("-")
    cipher = MultiFernet([Fernet(Fernet.generate_key())])
    with contextlib.ExitStack() as stack:
        db = BenchDatabase(opts.database_url)
        stack.callback(db.drop)
        db.create()
        assert db.sessions is not None
        [device] = register(db.sessions, cipher, protocol, "PROFILE", 1)
        handler: Dc09Receiver | ScaipReceiver
        unit: Dc09Panel | ScaipUnit
        if protocol == "dc09":
            handler = Dc09Receiver(db.sessions, settings=Settings(), cipher=lambda: cipher)
            unit = Dc09Panel(device.spec)
        else:
            handler = ScaipReceiver(db.sessions, settings=Settings(), cipher=lambda: cipher)
            unit = ScaipUnit(device.spec, 5060)

        def exchange(raw: bytes) -> bytes:
            return handler.handle(raw, transport="udp") or b""

        for _ in range(WARM_UP):
            unit.send(kind, exchange)
        profiler = cProfile.Profile()
        began = time.perf_counter()
        profiler.enable()
        outcomes = Counter(unit.send(kind, exchange)[0] for _ in range(opts.profile_messages))
        profiler.disable()
        seconds = time.perf_counter() - began
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(15)
        # The centre's own functions, and the waits for PostgreSQL's answers (psycopg's wait): where a message goes.
        stats.sort_stats("cumulative").print_stats(r"alarmcentre/|psycopg/connection\.py:\d+\(wait\)", 40)
        print(out.getvalue(), file=sys.stderr)
        print(f"profile {opts.profile}: {opts.profile_messages} messages in {seconds:.2f} s under cProfile "
              f"({opts.profile_messages / seconds:,.0f} msg/s with its overhead), outcomes {dict(outcomes)}")
    return 0 if set(outcomes) == {"ok"} else 1


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    opts = parse_args(argv)
    if opts.profile:
        return run_profile(opts)
    report = run(opts)
    print(render(report), flush=True)
    for key, ratio in report["ratios"].items():
        print(f"ratio={ratio:.3f} receiver={key}", flush=True)
    if opts.json_path:
        Path(opts.json_path).write_text(json.dumps(report, indent=2) + "\n")
    for problem in report["problems"]:
        say(f"ERROR: {problem}")
    if report["problems"]:
        say("ERROR: answers and committed rows do not agree; the figures above are not valid")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
