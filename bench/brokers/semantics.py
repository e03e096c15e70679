#!/usr/bin/env python3
"""Does a clustered broker keep the centre's promises? Measured on a private 3-node cluster started here.

    /tmp/brk-venv/bin/python bench/brokers/semantics.py rabbitmq      # ~6 minutes
    /tmp/brk-venv/bin/python bench/brokers/semantics.py nats
    /tmp/brk-venv/bin/python bench/brokers/semantics.py rabbitmq --checks 1,3 --json /tmp/r.json

Needs paho-mqtt 2, pika and nats-py (``python3 -m venv /tmp/brk-venv && /tmp/brk-venv/bin/pip install paho-mqtt
pika nats-py``). The cluster comes from ``cluster.py`` (free loopback ports, files under /tmp, removed at the end);
every process this starts is stopped by its pid. Devices speak MQTT 3.1.1, QoS 1, persistent sessions, each logged
in as its serial with a per-device topic rule; the centre's ingest is a competing consumer with explicit
acknowledgement (RabbitMQ: a quorum queue over AMQP; NATS: a durable pull consumer of an R3 JetStream stream).

Prints one PASS/FAIL (or INFO) line per check with its figures:

 1  kill -9 of the ingest queue's leader node while 20 devices publish 2,000 QoS 1 messages: PUBACKed but lost
 2  kill -9 of all three nodes mid-stream, restart: PUBACKed but lost
 3  kill -9 of an ingest worker holding unacknowledged messages: redelivered to another worker, and how fast
 4  retained configuration published on node 1, read on nodes 2 and 3, after a node restart, after a full restart
 5  last will (retained `offline`) reaches the centre: device process killed; device's node killed
 6  a device publishing to / subscribing to another serial's topics; a device using another's or the centre's client id
 7  throughput: 2 publisher processes, QoS 1, into the cluster, to one consumer; and a single Mosquitto
 8  PUBACK latency p50/p99 of a single publisher at 20 msg/s (cluster and Mosquitto)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster as clu  # noqa: E402

CENTRE_USER, CENTRE_PASS = "alarmcentre", "centre-pw"
CENTRE_CLIENT_ID = "alarmcentre-config"
PUBLISHERS = [f"dev{i:03d}" for i in range(1, 21)]
SPECIAL = ["devA", "devB", "devW", "devT1", "devT2", "devL1", "devL2", "devD"]
SERIALS = PUBLISHERS + SPECIAL
PAD = b" " + b"x" * 90  # ~100-byte payloads, as the devices' JSON events
TOPIC = "alarmcentre/v1/devices/{}/{}"


def password(serial: str) -> str:
    return f"pw-{serial}"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# MQTT helpers --------------------------------------------------------------------------------------------


def mqtt_connect(port: int, user: str, pw: str, cid: str, clean: bool = False, will: tuple | None = None,
                 timeout: float = 10.0, auto_reconnect: bool = False, inflight: int = 20):
    """A connected paho client (network loop in its own thread) and its observed state."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean, protocol=mqtt.MQTTv311)
    c.username_pw_set(user, pw)
    c.max_inflight_messages_set(inflight)
    if will:
        c.will_set(will[0], will[1], qos=1, retain=True)
    st = SimpleNamespace(connack=threading.Event(), rc=None, lost=threading.Event(), disconnects=0, msgs=[],
                         subacks={}, acked={}, auto=auto_reconnect)

    def on_connect(client, userdata, flags, rc, props):
        st.rc = rc
        st.connack.set()

    def on_disconnect(client, userdata, flags, rc, props):
        st.disconnects += 1
        st.lost.set()
        if not st.auto:
            client.disconnect()  # stops paho's automatic reconnection in loop_forever

    def on_message(client, userdata, msg):
        st.msgs.append((msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))

    def on_subscribe(client, userdata, mid, rcs, props):
        st.subacks[mid] = [int(r.value) for r in rcs]

    def on_publish(client, userdata, mid, rc, props):
        st.acked[mid] = time.monotonic()

    c.on_connect, c.on_disconnect, c.on_message = on_connect, on_disconnect, on_message
    c.on_subscribe, c.on_publish = on_subscribe, on_publish
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    if not st.connack.wait(timeout):
        close(c)
        raise TimeoutError(f"no CONNACK from 127.0.0.1:{port} in {timeout} s")
    if st.rc.is_failure:
        close(c)
        raise ConnectionRefusedError(f"CONNACK {st.rc}")
    return c, st


def close(c: mqtt.Client) -> None:
    with contextlib.suppress(Exception):  # best effort
        c.disconnect()
    c.loop_stop()


def try_connect(ports: list[int], *args, attempts: int = 30, **kw):
    """Connect to the first node that accepts, cycling through the nodes."""
    last: Exception | None = None
    for k in range(attempts):
        try:
            return mqtt_connect(ports[k % len(ports)], *args, **kw)
        except (OSError, TimeoutError) as e:
            last = e
            time.sleep(0.3)
    raise RuntimeError(f"could not connect to any of {ports}: {last}")


def subscribe(c, st, topic: str, timeout: float = 5.0) -> list[int] | None:
    rc, mid = c.subscribe(topic, 1)
    deadline = time.monotonic() + timeout
    while mid not in st.subacks and time.monotonic() < deadline and not st.lost.is_set():
        time.sleep(0.02)
    return st.subacks.get(mid)


def wait_msgs(st, n: int, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    while len(st.msgs) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return st.msgs


class Device(threading.Thread):
    """A device that must get each of its messages PUBACKed: republishes what was not, and on a lost connection
    connects to the next node (persistent session, subscribed to its configuration)."""

    def __init__(self, serial: str, ports: list[int], first: int, count: int, rate: float, deadline: float):
        super().__init__(daemon=True)
        self.serial, self.ports, self.first, self.rate, self.deadline = serial, ports, first, rate, deadline
        self.pending = {seq: f"{serial}:{seq}".encode() + PAD for seq in range(count)}
        self.acked: dict[int, float] = {}
        self.reconnects = self.connect_failures = 0
        self.lock = threading.Lock()

    @property
    def keys(self) -> set[str]:
        return {f"{self.serial}:{s}" for s in self.acked}

    def _ack(self, seq: int) -> None:
        if self.pending.pop(seq, None) is not None:
            self.acked[seq] = time.monotonic()

    def run(self) -> None:
        pi = self.first
        topic = TOPIC.format(self.serial, "events")
        while self.pending and time.monotonic() < self.deadline:
            try:
                c, st = mqtt_connect(self.ports[pi % len(self.ports)], self.serial, password(self.serial),
                                     self.serial, clean=False, timeout=5)
            except (OSError, TimeoutError):
                self.connect_failures += 1
                pi += 1
                time.sleep(0.2)
                continue
            mids: dict[int, int] = {}
            early: set[int] = set()  # PUBACKs that arrived before publish() returned their mid

            def on_publish(client, userdata, mid, rc, props, mids=mids, early=early):
                with self.lock:  # never held around a paho call: paho calls this holding its own lock
                    if mid in mids:
                        self._ack(mids[mid])
                    else:
                        early.add(mid)

            c.on_publish = on_publish
            c.subscribe(TOPIC.format(self.serial, "config"), 1)
            for seq in sorted(self.pending):
                if st.lost.is_set() or time.monotonic() > self.deadline:
                    break
                payload = self.pending.get(seq)
                if payload is None:
                    continue
                info = c.publish(topic, payload, qos=1)
                with self.lock:
                    mids[info.mid] = seq
                    if info.mid in early:
                        early.discard(info.mid)
                        self._ack(seq)
                time.sleep(1 / self.rate)
            while self.pending and not st.lost.is_set() and time.monotonic() < self.deadline:
                time.sleep(0.05)
                if time.monotonic() - max(self.acked.values(), default=time.monotonic()) > 15:
                    break  # connected but nothing acknowledged for 15 s: try another node
            close(c)
            if self.pending:
                self.reconnects += 1
                pi += 1


# consumer (ingest worker) and publisher subprocesses --------------------------------------------------------


class Proc:
    """A child process of this script ('worker' or 'publish' mode) whose stdout lines are collected."""

    def __init__(self, mode: str, spec: dict, *opts: str):
        cmd = [sys.executable, os.path.abspath(__file__), mode, json.dumps(spec), *opts]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("EOF")

    def wait_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line.startswith(prefix):
                return line
            if line == "EOF":
                break
        raise TimeoutError(f"no line {prefix!r} from {self.proc.args[2]} in {timeout} s")

    def result(self, timeout: float = 120) -> dict:
        return json.loads(self.wait_line("RESULT ", timeout)[7:])

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            clu._stop_pid(self.proc.pid, self.proc, timeout=5)
        self.proc.wait()


def consume(spec: dict, idle: float = 3.0, timeout: float = 90.0, keys: bool = True, ready_timeout: float = 60) -> dict:
    """Run a worker that acknowledges everything until the queue has been idle for `idle` seconds."""
    w = Proc("worker", spec, "--idle", str(idle), "--timeout", str(timeout), *(["--keys"] if keys else []))
    try:
        w.wait_line("READY", ready_timeout)
        return w.result(timeout + 30)
    finally:
        w.stop()


def worker_main(spec: dict, args) -> None:
    {"rabbitmq": rabbit_worker, "nats": nats_worker, "mqtt": mqtt_worker}[spec["engine"]](spec, args)


def _key(subject: str, body: bytes) -> str:
    return subject.replace("/", ".") + " " + body.split(b" ", 1)[0].decode(errors="replace")


class Tally:
    def __init__(self, args):
        self.args = args
        self.keys: list[str] = []
        self.count = self.redelivered = 0
        self.first = self.last = None
        self.t_end = time.monotonic() + args.timeout
        self.t_start = time.time()

    def add(self, subject: str, body: bytes, redelivered: bool) -> None:
        now = time.time()
        self.first = self.first or now
        self.last = now
        self.count += 1
        self.redelivered += bool(redelivered)
        if self.args.keys:
            self.keys.append(_key(subject, body))

    def done(self) -> bool:
        if time.monotonic() > self.t_end:
            return True
        if self.last is None:
            return time.time() - self.t_start > (self.args.first_timeout or self.args.idle)
        return time.time() - self.last > self.args.idle

    def report(self) -> None:
        out = {"count": self.count, "redelivered": self.redelivered, "first": self.first, "last": self.last}
        if self.args.keys:
            out["keys"] = self.keys
        print("RESULT " + json.dumps(out), flush=True)


def hold_forever(tally: Tally, sleep) -> None:
    print(f"HOLDING {tally.count}", flush=True)
    while True:
        sleep(1)


def rabbit_worker(spec: dict, args) -> None:
    import pika

    creds = pika.PlainCredentials(spec["user"], spec["password"])
    params = [pika.ConnectionParameters("127.0.0.1", p, credentials=creds, connection_attempts=2, retry_delay=1,
                                        socket_timeout=5) for p in spec["amqp_ports"]]
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=args.hold or args.prefetch)
    tally = Tally(args)
    print("READY", flush=True)
    for method, _props, body in ch.consume(spec["queue"], inactivity_timeout=0.2):
        if method is None:
            if tally.done():
                break
            continue
        tally.add(method.routing_key, body, method.redelivered)
        if args.hold:
            if tally.count >= args.hold:
                hold_forever(tally, conn.sleep)
            continue
        ch.basic_ack(method.delivery_tag)
        if tally.done():
            break
    tally.report()
    conn.close()


def nats_worker(spec: dict, args) -> None:
    asyncio.run(_nats_worker(spec, args))


async def _nats_worker(spec: dict, args) -> None:
    import nats
    from nats.errors import TimeoutError as NatsTimeout

    nc = await nats.connect(servers=[f"nats://127.0.0.1:{p}" for p in spec["client_ports"]], user=spec["user"],
                            password=spec["password"], connect_timeout=2, max_reconnect_attempts=-1)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=spec["durable"], stream=spec["stream"])
    tally = Tally(args)
    print("READY", flush=True)
    while not tally.done():
        want = (args.hold - tally.count) if args.hold else args.prefetch
        try:
            msgs = await sub.fetch(want, timeout=0.5)
        except NatsTimeout:
            msgs = []
        except Exception as e:  # noqa: BLE001 - e.g. no responders while a leader is elected
            print(f"LOG fetch: {e!r}", flush=True)
            await asyncio.sleep(0.3)
            continue
        for m in msgs:
            tally.add(m.subject, m.data, m.metadata.num_delivered > 1)
            if not args.hold:
                await m.ack()
        if args.hold and tally.count >= args.hold:
            print(f"HOLDING {tally.count}", flush=True)
            while True:
                await asyncio.sleep(1)
        if tally.last is None and not msgs:
            await asyncio.sleep(0)
    tally.report()
    await nc.close()


def mqtt_worker(spec: dict, args) -> None:
    tally = Tally(args)
    lock = threading.Lock()
    c, st = mqtt_connect(spec["mqtt_ports"][0], spec["user"], spec["password"], "alarmcentre-ingest", clean=False)

    def on_message(client, userdata, msg):
        with lock:
            tally.add(msg.topic, msg.payload, msg.dup)

    c.on_message = on_message
    subscribe(c, st, spec["topic"])
    print("READY", flush=True)
    while not tally.done():
        time.sleep(0.1)
    tally.report()
    close(c)


def publish_main(spec: dict, args) -> None:
    """One publisher process: QoS 1, either as fast as a window of in-flight messages allows for --seconds, or at
    --rate msg/s one at a time (PUBACK latency)."""
    c, st = mqtt_connect(args.port, args.user, args.password, args.user, clean=True, inflight=max(args.window, 1))
    topic = TOPIC.format(args.user, "events")
    sem = threading.Semaphore(max(args.window, 1))
    sent: dict[int, float] = {}
    acks: dict[int, float] = {}  # by mid (mids wrap at 65,535: latencies are taken in --rate runs only)
    n_acked = [0, 0.0]  # count and time of the last PUBACK, updated by paho's network thread only

    def on_publish(client, userdata, mid, rc, props):
        now = time.monotonic()  # no lock of ours here: paho holds its own while calling this
        acks[mid] = now
        n_acked[0] += 1
        n_acked[1] = now
        sem.release()

    c.on_publish = on_publish
    t0 = time.time()
    m0 = time.monotonic()
    end = m0 + args.seconds
    seq = 0
    while time.monotonic() < end and (not args.count or seq < args.count):
        if not sem.acquire(timeout=5):
            break
        t = time.monotonic()
        info = c.publish(topic, f"{args.user}:{seq}".encode() + PAD, qos=1)
        sent[info.mid] = t
        seq += 1
        if args.rate:
            time.sleep(max(0.0, m0 + seq / args.rate - time.monotonic()))
    deadline = time.monotonic() + 30
    while n_acked[0] < seq and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = (n_acked[1] or time.monotonic()) - m0
    acked = n_acked[0]
    lat = [acks[m] - t for m, t in sent.items() if m in acks] if seq < 60000 else []
    close(c)
    print("RESULT " + json.dumps({"sent": seq, "acked": acked, "first": t0, "elapsed": elapsed,
                                  "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
                                  "max_ms": max(lat, default=0) * 1000}), flush=True)


# engines -------------------------------------------------------------------------------------------------


def rabbit_password_hash(pw: str) -> str:
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + pw.encode()).digest()).decode()


class RabbitEngine:
    name = "rabbitmq"

    def __init__(self, base: Path):
        self.cluster = clu.RabbitCluster(base / "rabbitmq")
        self.queue = "alarmcentre.ingest"

    def start(self) -> float:
        t = self.cluster.start()
        t0 = time.monotonic()
        self.setup()
        return t + (time.monotonic() - t0)

    def setup(self) -> None:
        users, perms, topic_perms = [], [], []
        for u, pw in [(CENTRE_USER, CENTRE_PASS)] + [(s, password(s)) for s in SERIALS]:
            users.append({"name": u, "password_hash": rabbit_password_hash(pw),
                          "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []})
        perms.append({"user": CENTRE_USER, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"})
        for s in SERIALS:
            own = rf"mqtt-subscription-{s}qos[01]"
            perms.append({"user": s, "vhost": "/", "configure": f"^{own}$", "write": rf"^(amq\.topic|{own})$",
                          "read": rf"^(amq\.topic|{own})$"})
            # the same rule for every device, through RabbitMQ's {username} expansion
            topic_perms.append({"user": s, "vhost": "/", "exchange": "amq.topic",
                                "write": r"^alarmcentre\.v1\.devices\.{username}\.(events|alarms|status)$",
                                "read": r"^alarmcentre\.v1\.devices\.{username}\.(config|commands)$"})
        queues, bindings = [], []
        for q, keys in [(self.queue, ["events", "status"]), ("alarmcentre.alarms", ["alarms"])]:
            queues.append({"name": q, "vhost": "/", "durable": True, "auto_delete": False,
                           "arguments": {"x-queue-type": "quorum"}})
            for k in keys:
                bindings.append({"source": "amq.topic", "vhost": "/", "destination": q, "destination_type": "queue",
                                 "routing_key": f"alarmcentre.v1.devices.*.{k}", "arguments": {}})
        defs = {"users": users, "permissions": perms, "topic_permissions": topic_perms, "queues": queues,
                "bindings": bindings}
        path = self.cluster.base / "definitions.json"
        path.write_text(json.dumps(defs))
        self.cluster.ctl(0, "import_definitions", str(path))

    def worker_spec(self, alive: list[int] | None = None) -> dict:
        alive = alive if alive is not None else self.alive()
        return {"engine": "rabbitmq", "amqp_ports": [self.cluster.nodes[i].ports["amqp"] for i in alive],
                "user": CENTRE_USER, "password": CENTRE_PASS, "queue": self.queue}

    def alive(self) -> list[int]:
        return [n.index for n in self.cluster.nodes if n.pid]

    def leader(self) -> int:
        i = self.alive()[0]
        out = self.cluster.ctl(i, "list_queues", "name", "leader", "--quiet", "--no-table-headers")
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == self.queue:
                return next(n.index for n in self.cluster.nodes if n.name == parts[1])
        raise RuntimeError(f"no leader for {self.queue}: {out}")

    def wait_ready(self) -> None:
        for _ in range(120):
            try:
                self.leader()
                return
            except Exception:  # noqa: BLE001 - queue leader not yet elected
                time.sleep(0.5)

    def stored_total(self) -> None:
        return None  # a quorum queue has no public sequence number; the drain's count says it all

    def note(self) -> str:
        return "RabbitMQ " + self.cluster.ctl(0, "version").strip()


class NatsEngine:
    name = "nats"
    stream, durable = "ALARMCENTRE", "ingest"

    def __init__(self, base: Path, ack_wait: float = 10.0):
        self.ack_wait = ack_wait
        self.cluster = clu.NatsCluster(base / "nats", auth=self.auth_config())

    @staticmethod
    def auth_config() -> str:
        users = [f"    {{ user: {CENTRE_USER}, password: {CENTRE_PASS} }}",
                 f"    {{ user: {clu.ADMIN_USER}, password: {clu.ADMIN_PASS} }}"]
        for s in SERIALS:
            if s == "devD":  # allow-all-devices-but-one with a deny rule: the shape of GHSA's bypass (6e)
                users.append(f'    {{ user: {s}, password: "{password(s)}", permissions: {{ publish: {{ allow: '
                             f'["alarmcentre.v1.devices.{s}.>"] }}, subscribe: {{ allow: ["alarmcentre.v1.devices.>", '
                             f'"$MQTT.sub.>"], deny: ["alarmcentre.v1.devices.devB.>"] }} }} }}')
                continue
            pub = ", ".join(f'"alarmcentre.v1.devices.{s}.{k}"' for k in ("events", "alarms", "status"))
            sub = ", ".join(f'"alarmcentre.v1.devices.{s}.{k}"' for k in ("config", "commands"))
            users.append(f'    {{ user: {s}, password: "{password(s)}", permissions: {{ publish: {{ allow: [{pub}] }}, '
                         f'subscribe: {{ allow: [{sub}, "$MQTT.sub.>"] }} }} }}')
        return "authorization {\n  users: [\n" + "\n".join(users) + "\n  ]\n}\n"

    def start(self) -> float:
        t = self.cluster.start()
        t0 = time.monotonic()
        self.setup()
        return t + (time.monotonic() - t0)

    def _run(self, coro_fn):
        async def go():
            import nats

            nc = await nats.connect(servers=[f"nats://127.0.0.1:{self.cluster.nodes[i].ports['client']}"
                                             for i in self.alive()], user=CENTRE_USER, password=CENTRE_PASS,
                                    connect_timeout=2)
            try:
                return await coro_fn(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(go())

    def setup(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

        async def go(js):
            for name, kinds in [(self.stream, ["events", "status"]), (self.stream + "_ALARMS", ["alarms"])]:
                subjects = [f"alarmcentre.v1.devices.*.{k}" for k in kinds]
                await js.add_stream(StreamConfig(name=name, subjects=subjects, num_replicas=3,
                                                 storage=StorageType.FILE, retention=RetentionPolicy.WORK_QUEUE))
                await js.add_consumer(name, ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                                                           ack_wait=self.ack_wait, max_ack_pending=20000))

        for attempt in range(30):
            try:
                self._run(go)
                return
            except Exception:  # noqa: BLE001 - JetStream not yet ready
                if attempt == 29:
                    raise
                time.sleep(1)

    def worker_spec(self, alive: list[int] | None = None) -> dict:
        alive = alive if alive is not None else self.alive()
        return {"engine": "nats", "client_ports": [self.cluster.nodes[i].ports["client"] for i in alive],
                "user": CENTRE_USER, "password": CENTRE_PASS, "stream": self.stream, "durable": self.durable}

    def alive(self) -> list[int]:
        return [n.index for n in self.cluster.nodes if n.pid]

    def leader(self) -> int:
        async def go(js):
            return (await js.stream_info(self.stream)).cluster.leader

        name = self._run(go)
        return next(n.index for n in self.cluster.nodes if n.name == name)

    def stored_total(self) -> int:
        """Messages the stream has ever stored (its last sequence number)."""

        async def go(js):
            return (await js.stream_info(self.stream)).state.last_seq

        return self._run(go)

    def wait_ready(self) -> None:
        self.cluster.wait_jetstream(120)
        for _ in range(120):
            try:
                self.leader()
                return
            except Exception:  # noqa: BLE001 - stream leader not yet elected
                time.sleep(0.5)

    def note(self) -> str:
        return subprocess.run([clu.NATS_BIN, "--version"], capture_output=True, text=True).stdout.strip()


# checks --------------------------------------------------------------------------------------------------


class Run:
    def __init__(self, engine, args):
        self.e, self.args = engine, args
        self.results: list[dict] = []

    @property
    def ports(self) -> list[int]:
        return self.e.cluster.mqtt_ports

    def alive_ports(self) -> list[int]:
        return [self.e.cluster.nodes[i].mqtt for i in self.e.alive()]

    def report(self, check: str, verdict: str, text: str, **figures) -> None:
        line = f"{verdict:4} {check:4} {text}"
        print(line, flush=True)
        self.results.append({"check": check, "verdict": verdict, "text": text, **figures})

    def drain(self, alive: list[int] | None = None, idle: float = 4.0) -> dict:
        return consume(self.e.worker_spec(alive), idle=idle, timeout=120)

    def centre(self, node: int):
        return mqtt_connect(self.ports[node], CENTRE_USER, CENTRE_PASS, CENTRE_CLIENT_ID, clean=True)

    # 1 and 2 ----------------------------------------------------------------------------------------------
    def publish_and_kill(self, kill_all: bool) -> None:
        self.drain(idle=2)
        n, k = self.args.n, len(PUBLISHERS)
        per = n // k
        deadline = time.monotonic() + 180
        devices = [Device(s, self.ports, i % 3, per, self.args.rate, deadline) for i, s in enumerate(PUBLISHERS)]
        victim = self.e.leader()
        stored0 = self.e.stored_total()
        t0 = time.monotonic()
        for d in devices:
            d.start()
        while sum(len(d.acked) for d in devices) < n // 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        acked_at_kill = {key for d in devices for key in d.keys}
        t_kill = time.monotonic()
        victims = self.e.alive() if kill_all else [victim]
        for i in victims:
            self.e.cluster.kill(i)
        restart_s = None
        if kill_all:
            time.sleep(1.0)
            t_r = time.monotonic()
            self.e.cluster.start_nodes(victims)
            self.e.wait_ready()
            restart_s = time.monotonic() - t_r
        for d in devices:
            d.join(max(0.0, deadline - time.monotonic()) + 1)
        t_done = time.monotonic()
        acked = {key for d in devices for key in d.keys}
        got = self.drain()
        time.sleep(5)
        late = self.drain(idle=3)  # anything the first drain missed (e.g. a consumer leader still recovering)
        got["keys"] += late["keys"]
        keys = [x.split(" ", 1)[1] for x in got["keys"] if x.endswith(tuple("0123456789"))]
        stored0 = None if stored0 is None else self.e.stored_total() - stored0
        received = set(keys)
        lost = acked - received
        lost_before = acked_at_kill - received
        ack_time = {f"{d.serial}:{q}": t for d in devices for q, t in d.acked.items()}
        lost_after = sorted(ack_time[k] - t_kill for k in lost)
        unacked = n - len(acked)
        reconnects = sum(d.reconnects for d in devices)
        gaps = sorted(t for d in devices for t in d.acked.values())
        stall = max((b - a for a, b in zip(gaps, gaps[1:], strict=False) if b > t_kill - 0.5), default=0)
        check = "2" if kill_all else "1"
        what = "all 3 nodes" if kill_all else f"node {victim + 1} (queue leader)"
        verdict = "PASS" if not lost and not unacked else "FAIL"
        when = f", PUBACKed {lost_after[0]:+.1f} to {lost_after[-1]:+.1f} s from the kill" if lost_after else ""
        text = (f"kill -9 {what} after {len(acked_at_kill)} PUBACKs: {len(acked)}/{n} PUBACKed, "
                f"{len(lost)} PUBACKed but lost ({len(lost_before)} of them acked before the kill{when}), "
                f"{len(received)} distinct received ({len(keys) - len(received)} duplicates), "
                f"{unacked} never PUBACKed, {reconnects} reconnects, longest PUBACK gap {stall:.1f} s, "
                f"all PUBACKed {t_done - t0:.1f} s after start, {late['count']} more in a second drain 5 s later")
        if stored0 is not None:
            text += f", the stream stored {stored0} messages in all during the check"
        if restart_s is not None:
            text += f", cluster restart {restart_s:.1f} s"
        if not kill_all:
            t_r = time.monotonic()
            self.e.cluster.start_node(victim)
            self.e.wait_ready()
            text += f", node restart {time.monotonic() - t_r:.1f} s"
        self.report(check, verdict, text, lost=len(lost), acked=len(acked), received=len(received),
                    duplicates=len(keys) - len(received), unacked=unacked, stall_s=stall, restart_s=restart_s)

    def check1(self) -> None:
        self.publish_and_kill(kill_all=False)

    def check2(self) -> None:
        self.publish_and_kill(kill_all=True)

    # 3 ---------------------------------------------------------------------------------------------------
    def check3(self) -> None:
        self.drain(idle=2)
        m, serial = 50, "devL2"
        a = Proc("worker", self.e.worker_spec(), "--hold", str(m), "--idle", "600", "--timeout", "600", "--keys")
        try:
            a.wait_line("READY", 60)
            c, st = try_connect(self.ports, serial, password(serial), serial, clean=False)
            for seq in range(m):
                c.publish(TOPIC.format(serial, "events"), f"{serial}:{seq}".encode() + PAD, qos=1)
            a.wait_line("HOLDING", 30)
            close(c)
            b = Proc("worker", self.e.worker_spec(), "--idle", "4", "--first-timeout", "60", "--timeout", "90",
                     "--keys")
            b.wait_line("READY", 60)
            time.sleep(1.0)  # B is consuming and gets nothing while A holds everything
            t_kill = time.time()
            a.kill9()
            res = b.result(120)
            b.stop()
        finally:
            a.stop()
        got = {x.split(" ", 1)[1] for x in res["keys"]}
        want = {f"{serial}:{s}" for s in range(m)}
        delay = (res["first"] - t_kill) if res["first"] else float("nan")
        verdict = "PASS" if want <= got else "FAIL"
        self.report("3", verdict, f"worker killed holding {m} unacked: {len(want & got)}/{m} redelivered to the "
                    f"other worker ({res['redelivered']} flagged redelivered), first after {delay:.1f} s",
                    redelivered=len(want & got), delay_s=delay)

    # 4 ---------------------------------------------------------------------------------------------------
    def read_retained(self, node: int, serial: str, topic: str | None = None, wait: float = 3.0) -> list[bytes]:
        c, st = mqtt_connect(self.ports[node], serial, password(serial), serial, clean=True)
        subscribe(c, st, topic or TOPIC.format(serial, "config"))
        wait_msgs(st, 1, wait)
        close(c)
        return [m[1] for m in st.msgs if m[2]]

    def check4(self) -> None:
        c, st = self.centre(0)
        info = c.publish(TOPIC.format("devA", "config"), b'{"version": 7}', qos=1, retain=True)
        info.wait_for_publish(10)
        close(c)
        time.sleep(0.5)
        self.retained_cfg = b'{"version": 7}'
        seen = {i: self.read_retained(i, "devA") for i in range(3)}
        ok = all(seen[i] == [self.retained_cfg] for i in range(3))
        self.report("4a", "PASS" if ok else "FAIL", "retained config published on node 1, read by the device on "
                    + ", ".join(f"node {i + 1}: {'yes' if seen[i] else 'NO'}" for i in range(3)),
                    nodes=[bool(seen[i]) for i in range(3)])
        # the centre learns devices' statuses from retained `status` through a wildcard subscription
        d, dst = mqtt_connect(self.ports[1], "devB", password("devB"), "devB", clean=True)
        d.publish(TOPIC.format("devB", "status"), b"online", qos=1, retain=True).wait_for_publish(10)
        close(d)
        time.sleep(0.5)
        rows = []
        for i in range(3):
            c, st = mqtt_connect(self.ports[i], CENTRE_USER, CENTRE_PASS, "alarmcentre-status", clean=True)
            exact = subscribe(c, st, TOPIC.format("devB", "status"))
            wait_msgs(st, 1, 2)
            n_exact = len([m for m in st.msgs if m[2]])
            st.msgs.clear()
            c2, st2 = mqtt_connect(self.ports[i], CENTRE_USER, CENTRE_PASS, "alarmcentre-status2", clean=True)
            subscribe(c2, st2, "alarmcentre/v1/devices/+/status")
            wait_msgs(st2, 1, 2)
            rows.append((n_exact, len([m for m in st2.msgs if m[2]]), exact))
            close(c)
            close(c2)
        ok = all(r[0] and r[1] for r in rows)
        self.report("4b", "PASS" if ok else "FAIL", "retained status published by a device on node 2, centre reads "
                    + "; ".join(f"node {i + 1}: exact topic {r[0]}, wildcard + {r[1]}" for i, r in enumerate(rows)))

    def check4_after_restart(self, check: str, what: str) -> None:
        seen = {i: self.read_retained(i, "devA") for i in range(3)}
        ok = all(seen[i] == [self.retained_cfg] for i in range(3))
        self.report(check, "PASS" if ok else "FAIL", f"retained config after {what}: "
                    + ", ".join(f"node {i + 1}: {'yes' if seen[i] else 'NO'}" for i in range(3)),
                    nodes=[bool(seen[i]) for i in range(3)])

    # 5 ---------------------------------------------------------------------------------------------------
    def check5(self) -> None:
        self.drain(idle=2)
        # (a) the device's process dies: its TCP connection closes without DISCONNECT
        dev = subprocess.Popen([sys.executable, os.path.abspath(__file__), "device", json.dumps(
            {"port": self.ports[1], "serial": "devW"})], stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert dev.stdout.readline().startswith("CONNECTED")
        time.sleep(0.5)
        t_kill = time.time()
        os.kill(dev.pid, 9)
        dev.wait()
        got = self.drain(idle=3)
        status = [k for k in got["keys"] if k.startswith("alarmcentre.v1.devices.devW.status")]
        first = got["first"] - t_kill if got["first"] else float("nan")
        ok = status[-1:] == ["alarmcentre.v1.devices.devW.status offline"] if status else False
        c, st = mqtt_connect(self.ports[2], CENTRE_USER, CENTRE_PASS, "alarmcentre-status", clean=True)
        subscribe(c, st, TOPIC.format("devW", "status"))
        wait_msgs(st, 1, 2)
        close(c)
        retained = [m[1].decode() for m in st.msgs if m[2]]
        self.report("5a", "PASS" if ok else "FAIL", f"device process killed (node 2): centre got {status} "
                    f"{first:.1f} s later; retained status read on node 3: {retained}")
        # (b) the node the device is connected to dies
        victim = 2
        c, st = mqtt_connect(self.ports[victim], "devL1", password("devL1"), "devL1", clean=False,
                             will=(TOPIC.format("devL1", "status"), b"offline"))
        c.publish(TOPIC.format("devL1", "status"), b"online", qos=1, retain=True).wait_for_publish(10)
        time.sleep(0.5)
        self.drain(idle=2)
        self.e.cluster.kill(victim)
        got = self.drain(alive=self.e.alive(), idle=5)
        status = [k for k in got["keys"] if "devL1.status" in k]
        c.loop_stop()
        t_r = time.monotonic()
        self.e.cluster.start_node(victim)
        self.e.wait_ready()
        restart = time.monotonic() - t_r
        self.report("5b", "PASS" if status else "INFO", f"node 3 killed under a connected device: centre got "
                    f"{status or 'no last will'} within 5 s (node restart {restart:.1f} s)")

    # 6 ---------------------------------------------------------------------------------------------------
    def check6(self) -> None:
        self.drain(idle=2)
        # (a) devA publishes on devB's topics
        c, st = mqtt_connect(self.ports[0], "devA", password("devA"), "devA", clean=True)
        infos = [c.publish(TOPIC.format("devB", k), b"devA:evil" + PAD, qos=1) for k in ("events", "status")]
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3 and not st.lost.is_set() and not all(i.is_published() for i in infos):
            time.sleep(0.05)
        pubacks = sum(i.is_published() for i in infos)
        dropped = st.lost.is_set()
        close(c)
        got = self.drain(idle=3)
        evil = [k for k in got["keys"] if "evil" in k]
        self.report("6a", "PASS" if not evil else "FAIL", f"devA publishes on devB's events and status: "
                    f"{len(evil)} reached the centre; broker sent {pubacks}/2 PUBACKs, "
                    f"{'closed the connection' if dropped else 'kept the connection'}")
        # (b) devA subscribes to devB's config (retained) and to every device's config
        cc, cst = self.centre(0)
        cc.publish(TOPIC.format("devB", "config"), b'{"version": 3, "secret": 1}', qos=1,
                   retain=True).wait_for_publish(10)
        close(cc)
        time.sleep(0.5)
        rows = []
        for topic in (TOPIC.format("devB", "config"), "alarmcentre/v1/devices/+/config", "alarmcentre/v1/devices/#"):
            c, st = mqtt_connect(self.ports[0], "devA", password("devA"), "devA", clean=True)
            rc = subscribe(c, st, topic)
            wait_msgs(st, 1, 2)
            foreign = [m[0] for m in st.msgs if "/devB/" in m[0]]
            rows.append((topic, rc, foreign, st.lost.is_set()))
            close(c)
        ok = not any(r[2] for r in rows)
        self.report("6b", "PASS" if ok else "FAIL", "devA subscribes to another's config: " + "; ".join(
            f"{t}: suback {rc}, {len(f)} of devB's messages{', disconnected' if lost else ''}"
            for t, rc, f, lost in rows))
        # (c) devA uses devB's client id: is the live devB kicked, is devB's queued session lost?
        b, bst = mqtt_connect(self.ports[1], "devB", password("devB"), "devB", clean=False, auto_reconnect=True)
        subscribe(b, bst, TOPIC.format("devB", "commands"))
        kicked = accepted = 0
        for _ in range(3):
            try:
                a, ast = mqtt_connect(self.ports[0], "devA", password("devA"), "devB", clean=True)
                accepted += 1
                time.sleep(1.0)
                close(a)
            except (OSError, TimeoutError, ConnectionRefusedError):
                pass
            time.sleep(1.5)
        kicked = bst.disconnects
        close(b)  # now devB is away; the centre queues 5 commands for it
        cc, cst = self.centre(2)
        for i in range(5):
            cc.publish(TOPIC.format("devB", "commands"), f"cmd{i}".encode(), qos=1).wait_for_publish(10)
        close(cc)
        try:
            a, ast = mqtt_connect(self.ports[0], "devA", password("devA"), "devB", clean=True)
            close(a)
            took_over = True
        except (OSError, TimeoutError, ConnectionRefusedError):
            took_over = False
        b, bst = mqtt_connect(self.ports[1], "devB", password("devB"), "devB", clean=False)
        wait_msgs(bst, 5, 5)
        close(b)
        cmds = [m for m in bst.msgs if m[0].endswith("/commands")]
        ok = kicked == 0 and len(cmds) == 5
        self.report("6c", "PASS" if ok else "FAIL", f"devA connects 3 times with devB's client id: accepted "
                    f"{accepted}/3, live devB kicked {kicked} times; with devB away and 5 commands queued, devA's "
                    f"clean-session login as devB {'accepted' if took_over else 'refused'}, devB then got "
                    f"{len(cmds)}/5 commands", kicked=kicked, commands=len(cmds))
        # (d) a device uses the centre's client id
        cc, cst = mqtt_connect(self.ports[0], CENTRE_USER, CENTRE_PASS, CENTRE_CLIENT_ID, clean=False,
                               auto_reconnect=True)
        try:
            a, ast = mqtt_connect(self.ports[1], "devA", password("devA"), CENTRE_CLIENT_ID, clean=True)
            time.sleep(1.0)
            close(a)
            acc = True
        except (OSError, TimeoutError, ConnectionRefusedError):
            acc = False
        time.sleep(1.0)
        close(cc)
        ok = cst.disconnects == 0
        self.report("6d", "PASS" if ok else "FAIL", f"devA connects with the centre's client id "
                    f"{CENTRE_CLIENT_ID!r}: {'accepted' if acc else 'refused'}, centre's connection dropped "
                    f"{cst.disconnects} times")

    def check6e(self) -> None:
        """NATS only: a subscription allowed by a wildcard rule but denied for one device's subjects (the shape of
        the advisory on retained/QoS 1 replay bypassing deny permissions, fixed in 2.12.12)."""
        if self.e.name != "nats":
            self.report("6e", "INFO", "n/a: RabbitMQ topic permissions are one allow regex per user, no deny rules")
            return
        cc, cst = self.centre(0)
        cc.publish(TOPIC.format("devB", "config"), b'{"version": 4, "secret": 1}', qos=1,
                   retain=True).wait_for_publish(10)
        rows = []
        for topic in ("alarmcentre/v1/devices/+/config", TOPIC.format("devB", "config")):
            c, st = mqtt_connect(self.ports[1], "devD", password("devD"), "devD", clean=True)
            rc = subscribe(c, st, topic)
            wait_msgs(st, 1, 2)
            rows.append(f"{topic}: suback {rc}, retained of devB {len([m for m in st.msgs if '/devB/' in m[0]])}")
            close(c)
        c, st = mqtt_connect(self.ports[1], "devD", password("devD"), "devD", clean=False)
        subscribe(c, st, "alarmcentre/v1/devices/+/config")
        time.sleep(0.5)
        st.msgs.clear()
        cc.publish(TOPIC.format("devB", "config"), b'{"version": 5}', qos=1).wait_for_publish(10)
        wait_msgs(st, 1, 2)
        live = len([m for m in st.msgs if "/devB/" in m[0]])
        close(c)
        cc.publish(TOPIC.format("devB", "config"), b'{"version": 6}', qos=1).wait_for_publish(10)
        close(cc)
        c, st = mqtt_connect(self.ports[2], "devD", password("devD"), "devD", clean=False)
        wait_msgs(st, 1, 3)
        replay = len([m for m in st.msgs if "/devB/" in m[0]])
        close(c)
        c, st = mqtt_connect(self.ports[2], "devD", password("devD"), "devD", clean=True)
        close(c)
        leaked = any(not r.endswith(" 0") for r in rows) or live or replay
        self.report("6e", "FAIL" if leaked else "PASS", "devD may read devices.> except devB (deny): "
                    + "; ".join(rows) + f"; live QoS 1 on devB/config through +: {live}; queued for devD's "
                    f"persistent session while away: {replay}")

    # 7 and 8 ---------------------------------------------------------------------------------------------
    def throughput(self, ports: list[int], spec: dict, seconds: float) -> dict:
        w = Proc("worker", spec, "--idle", "3", "--timeout", str(seconds + 120), "--prefetch", "500")
        w.wait_line("READY", 60)
        pubs = []
        for i, serial in enumerate(("devT1", "devT2")):
            pubs.append(Proc("publish", {}, "--port", str(ports[i % len(ports)]), "--user", serial, "--password",
                             password(serial), "--seconds", str(seconds), "--window", "200"))
        res = [p.result(seconds + 60) for p in pubs]
        got = w.result(180)
        for p in pubs + [w]:
            p.stop()
        acked = sum(r["acked"] for r in res)
        pub_rate = sum(r["acked"] / r["elapsed"] for r in res)
        start = min(r["first"] for r in res)
        e2e = got["count"] / (got["last"] - start) if got["last"] else 0
        return {"acked": acked, "pub_rate": pub_rate, "consumed": got["count"], "e2e_rate": e2e}

    def latency(self, port: int) -> dict:
        p = Proc("publish", {}, "--port", str(port), "--user", "devT1", "--password", password("devT1"),
                 "--seconds", "10", "--rate", "20", "--count", "200", "--window", "1")
        r = p.result(60)
        p.stop()
        return r

    def check7(self) -> None:
        self.drain(idle=2)
        t = self.throughput(self.ports[:2], self.e.worker_spec([2]), self.args.seconds)
        self.drain(idle=2)
        m = self.mosquitto_figures()
        self.report("7", "INFO", f"QoS 1, 2 publishers (nodes 1, 2), consumer on node 3: published "
                    f"{t['pub_rate']:.0f} msg/s PUBACKed, end to end {t['e2e_rate']:.0f} msg/s "
                    f"({t['consumed']}/{t['acked']} consumed); single Mosquitto in the same run: published "
                    f"{m['t']['pub_rate']:.0f} msg/s, end to end {m['t']['e2e_rate']:.0f} msg/s "
                    f"({m['t']['consumed']}/{m['t']['acked']})", cluster=t, mosquitto=m["t"])

    def check8(self) -> None:
        r = self.latency(self.ports[0])
        m = self.mosquitto_figures()
        self.report("8", "INFO", f"PUBACK latency, 1 publisher at 20 msg/s on node 1: p50 {r['p50_ms']:.1f} ms, "
                    f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms ({r['acked']}/{r['sent']}); Mosquitto: "
                    f"p50 {m['l']['p50_ms']:.1f} ms, p99 {m['l']['p99_ms']:.1f} ms", cluster=r, mosquitto=m["l"])

    def mosquitto_figures(self) -> dict:
        """Mosquitto 2.0 on a free port (max_inflight_messages 1000, max_queued_messages 1000000), measured once."""
        if getattr(self, "_mosq", None) is None:
            b = clu.MosquittoBroker(Path(tempfile.mkdtemp(prefix="ac-mosq-", dir="/tmp")))
            b.start()
            try:
                spec = {"engine": "mqtt", "mqtt_ports": b.mqtt_ports, "user": CENTRE_USER, "password": CENTRE_PASS,
                        "topic": "alarmcentre/v1/devices/+/events"}
                self._mosq = {"l": self.latency(b.mqtt_ports[0]),
                              "t": self.throughput(b.mqtt_ports, spec, self.args.seconds)}
            finally:
                b.stop()
        return self._mosq


def device_main(spec: dict) -> None:
    """A device that connects with its last will and waits to be killed (check 5a)."""
    s = spec["serial"]
    c, st = mqtt_connect(spec["port"], s, password(s), s, clean=False, will=(TOPIC.format(s, "status"), b"offline"))
    c.publish(TOPIC.format(s, "status"), b"online", qos=1, retain=True).wait_for_publish(10)
    print("CONNECTED", flush=True)
    time.sleep(600)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] in ("worker", "publish", "device"):
        mode, spec = sys.argv[1], json.loads(sys.argv[2])
        p = argparse.ArgumentParser()
        p.add_argument("--idle", type=float, default=3)
        p.add_argument("--timeout", type=float, default=120)
        p.add_argument("--first-timeout", type=float, default=0, help="wait this long for a first message")
        p.add_argument("--hold", type=int, default=0)
        p.add_argument("--prefetch", type=int, default=200)
        p.add_argument("--keys", action="store_true")
        p.add_argument("--port", type=int)
        p.add_argument("--user")
        p.add_argument("--password")
        p.add_argument("--seconds", type=float, default=10)
        p.add_argument("--rate", type=float, default=0)
        p.add_argument("--count", type=int, default=0)
        p.add_argument("--window", type=int, default=200)
        args = p.parse_args(sys.argv[3:])
        {"worker": lambda: worker_main(spec, args), "publish": lambda: publish_main(spec, args),
         "device": lambda: device_main(spec)}[mode]()
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("engine", choices=["rabbitmq", "nats"])
    p.add_argument("--checks", default="8,4,5,6,3,1,2,7", help="which checks, in this order (default: all)")
    p.add_argument("--n", type=int, default=2000, help="messages in checks 1 and 2 (20 devices)")
    p.add_argument("--rate", type=float, default=25.0, help="msg/s per device in checks 1 and 2")
    p.add_argument("--seconds", type=float, default=10.0, help="publishing time of the throughput check")
    p.add_argument("--ack-wait", type=float, default=10.0, help="NATS consumer ack_wait (redelivery delay), s")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--keep", action="store_true", help="keep the cluster's directory (logs) at the end")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix=f"ac-sem-{args.engine}-", dir="/tmp"))
    engine = RabbitEngine(base) if args.engine == "rabbitmq" else NatsEngine(base, args.ack_wait)
    engine.cluster.keep = args.keep
    run = Run(engine, args)
    t0 = time.monotonic()
    try:
        ready = engine.start()
        print(f"INFO -    {engine.note()}: 3-node cluster ready (users, queues/streams set up) in {ready:.1f} s; "
              f"ports {json.dumps(engine.cluster.describe()['nodes'])}", flush=True)
        run.results.append({"check": "-", "verdict": "INFO", "ready_s": ready})
        order = [c.strip() for c in args.checks.split(",") if c.strip()]
        for c in order:
            try:
                getattr(run, f"check{c}")()
                if c == "6":
                    run.check6e()
                if c == "5" and "4" in order:
                    run.check4_after_restart("4c", "kill -9 and restart of node 3")
                if c == "2" and "4" in order:
                    run.check4_after_restart("4d", "kill -9 and restart of all 3 nodes")
            except Exception as e:  # noqa: BLE001 - report and go on with the next check
                run.report(c, "FAIL", f"check raised {type(e).__name__}: {e}")
                for i in range(3):
                    if engine.cluster.nodes[i].pid is None:
                        engine.cluster.start_node(i)
                engine.wait_ready()
    finally:
        engine.cluster.stop()
        if not engine.cluster.keep:
            import shutil

            shutil.rmtree(base, ignore_errors=True)
    print(f"INFO -    total {time.monotonic() - t0:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"engine": args.engine, "results": run.results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
