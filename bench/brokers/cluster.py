#!/usr/bin/env python3
"""Private broker clusters for the broker evaluation (bench/brokers/semantics.py).

Starts, on free loopback ports with every file under one directory in /tmp, and never touching the
machine's own RabbitMQ, NATS or Mosquitto services:

- ``rabbitmq``: a 3-node RabbitMQ 3.10 cluster (its own epmd, its own Erlang cookie, the MQTT plugin on
  each node, MQTT subscription queues of persistent sessions as quorum queues);
- ``nats``: a 3-node NATS 2.9 cluster with JetStream (file store) and the MQTT gateway on each node;
- ``mosquitto``: one Mosquitto 2.0 (the single-node baseline).

    python bench/brokers/cluster.py start rabbitmq          # prints the ports as JSON, runs until Ctrl-C
    python bench/brokers/cluster.py start nats --dir /tmp/my-nats
    python bench/brokers/cluster.py start mosquitto

Each cluster logs in an administrator ``admin`` / ``admin-pw``. Every process is started in a session of
its own and stopped by its pid (SIGTERM, then SIGKILL); ``kill(i)`` sends SIGKILL to one node.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
NATS_BIN = "/usr/sbin/nats-server"
MOSQUITTO_BIN = "/usr/sbin/mosquitto"
EPMD_BIN = shutil.which("epmd") or "/usr/bin/epmd"
ADMIN_USER, ADMIN_PASS = "admin", "admin-pw"

_reserved: set[int] = set()


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (kept distinct from every port handed out before in this process)."""
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        socks.append(s)
        if port in _reserved:
            continue
        _reserved.add(port)
        ports.append(port)
    for s in socks:
        s.close()
    return ports


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def _stop_pid(pid: int | None, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    """SIGTERM, wait, then SIGKILL: one process, by its pid."""
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None and not _alive(pid):
            return
        if proc is None and not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@dataclass
class Node:
    index: int
    name: str
    ports: dict[str, int]
    dir: Path
    proc: subprocess.Popen | None = None
    pid: int | None = None  # the broker's own pid (beam.smp for RabbitMQ)

    @property
    def mqtt(self) -> int:
        return self.ports["mqtt"]


@dataclass
class Cluster:
    kind: str
    base: Path
    nodes: list[Node] = field(default_factory=list)
    ready_seconds: float = 0.0
    keep: bool = False

    # interface ---------------------------------------------------------------------------------------
    def start(self) -> float:
        raise NotImplementedError

    def start_node(self, i: int) -> None:
        raise NotImplementedError

    def start_nodes(self, indexes: list[int]) -> float:
        t0 = time.monotonic()
        for i in indexes:
            self._spawn(i)
        for i in indexes:
            self._await(i)
        return time.monotonic() - t0

    def _spawn(self, i: int) -> None:
        raise NotImplementedError

    def _await(self, i: int) -> None:
        raise NotImplementedError

    def kill(self, i: int) -> None:
        """kill -9 of node i (the broker process itself)."""
        node = self.nodes[i]
        if node.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(node.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        if node.proc is not None:
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                _stop_pid(node.proc.pid, node.proc)
        node.pid = None
        node.proc = None

    def stop(self) -> None:
        for node in self.nodes:
            _stop_pid(node.pid, node.proc)
            if node.proc is not None and node.proc.poll() is None:
                _stop_pid(node.proc.pid, node.proc, timeout=5)
            node.pid = node.proc = None
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt for n in self.nodes]

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "dir": str(self.base),
            "ready_seconds": round(self.ready_seconds, 1),
            "admin": None if self.kind == "mosquitto" else [ADMIN_USER, ADMIN_PASS],
            "nodes": [{"name": n.name, "pid": n.pid, **n.ports} for n in self.nodes],
        }

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# RabbitMQ ----------------------------------------------------------------------------------------------

RABBIT_CONF = """\
listeners.tcp.1 = 127.0.0.1:{amqp}
loopback_users = none
log.file.level = info
log.console = false
cluster_partition_handling = pause_minority
cluster_formation.peer_discovery_backend = classic_config
{peers}
mqtt.listeners.tcp.1 = 127.0.0.1:{mqtt}
mqtt.allow_anonymous = false
mqtt.vhost = /
mqtt.exchange = amq.topic
# persistent sessions (clean session false): their subscription queue is a quorum queue, not a classic one
mqtt.durable_queue_type = quorum
mqtt.prefetch = 100
"""


class RabbitCluster(Cluster):
    def __init__(self, base: Path, size: int = 3, prefix: str = "acr"):
        super().__init__("rabbitmq", base)
        self.cookie = "ALARMCENTREBENCH" + os.urandom(8).hex().upper()
        self.epmd_port = free_ports(1)[0]
        self.epmd: subprocess.Popen | None = None
        self._deadline = time.monotonic() + 300.0
        self.home = base / "home"
        for i in range(size):
            amqp, mqtt, dist = free_ports(3)
            name = f"{prefix}{i + 1}@localhost"
            self.nodes.append(Node(i, name, {"amqp": amqp, "mqtt": mqtt, "dist": dist}, base / f"node{i + 1}"))

    def env(self, node: Node | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("RABBITMQ_ERLANG_COOKIE", None)
        env.update(HOME=str(self.home), ERL_EPMD_PORT=str(self.epmd_port), ERL_EPMD_ADDRESS="127.0.0.1")
        if node is not None:
            d = node.dir
            env.update(
                RABBITMQ_NODENAME=node.name,
                RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                RABBITMQ_NODE_PORT=str(node.ports["amqp"]),
                RABBITMQ_DIST_PORT=str(node.ports["dist"]),
                RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
                RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
                RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
                RABBITMQ_MNESIA_DIR=str(d / "mnesia" / node.name),
                RABBITMQ_LOG_BASE=str(d / "log"),
                RABBITMQ_PID_FILE=str(d / "beam.pid"),
                RABBITMQ_FEATURE_FLAGS_FILE=str(d / "feature_flags"),
                # no busy-waiting schedulers: three nodes share two cores with other work
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none",
            )
        return env

    def ctl(self, i: int, *args: str, check: bool = True, timeout: float = 60, tool: str = "rabbitmqctl") -> str:
        node = self.nodes[i]
        r = subprocess.run([str(RABBIT_BIN / tool), "-n", node.name, *args], env=self.env(), capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} on {node.name}: {r.returncode} {r.stdout} {r.stderr}")
        return r.stdout

    def start(self, budget: float = 300.0) -> float:
        """Start every node and form the cluster; TimeoutError when that takes longer than `budget` seconds."""
        t0 = time.monotonic()
        self._deadline = t0 + budget
        self.base.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        log = open(self.base / "epmd.log", "ab")  # noqa: SIM115 - the child keeps it
        self.epmd = subprocess.Popen([EPMD_BIN, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                     stdout=log, stderr=log, start_new_session=True)
        wait_port(self.epmd_port, 10)
        peers = "\n".join(f"cluster_formation.classic_config.nodes.{n.index + 1} = {n.name}" for n in self.nodes)
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            (node.dir / "rabbitmq.conf").write_text(RABBIT_CONF.format(peers=peers, **node.ports))
            (node.dir / "advanced.config").write_text("[].\n")
            (node.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        # the first node forms the cluster; the others then join it through classic peer discovery
        self.start_nodes([0])
        self.start_nodes(list(range(1, len(self.nodes))))
        members = self.ctl(0, "eval", "length(rabbit_nodes:all_running()).").strip()
        if members != str(len(self.nodes)):
            raise RuntimeError(f"cluster has {members} running nodes, expected {len(self.nodes)}")
        self.ctl(0, "add_user", ADMIN_USER, ADMIN_PASS)
        self.ctl(0, "set_user_tags", ADMIN_USER, "administrator")
        self.ctl(0, "set_permissions", "-p", "/", ADMIN_USER, ".*", ".*", ".*")
        self.ready_seconds = time.monotonic() - t0
        return self.ready_seconds

    def start_node(self, i: int) -> None:
        self.start_nodes([i])

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        (node.dir / "beam.pid").unlink(missing_ok=True)
        out = open(node.dir / "stdout.log", "ab")  # noqa: SIM115 - the child keeps it
        node.proc = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env(node), stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     cwd=node.dir)

    def _await(self, i: int) -> None:
        node = self.nodes[i]
        deadline = min(time.monotonic() + 180, self._deadline)
        while True:  # await_startup fails at once while the node is not yet registered with epmd
            left = deadline - time.monotonic()
            try:
                self.ctl(i, "await_startup", "--timeout", str(max(1, int(left))), timeout=max(5.0, left + 10))
                break
            except subprocess.TimeoutExpired as error:
                raise TimeoutError(f"{node.name} did not finish starting: {error}") from error
            except RuntimeError:
                if time.monotonic() > deadline or (node.proc is not None and node.proc.poll() is not None):
                    raise
                time.sleep(0.5)
        node.pid = int((node.dir / "beam.pid").read_text().strip())
        wait_port(node.mqtt, 30)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines each node wrote (its log and its console), for a failure message."""
        parts = []
        for node in self.nodes:
            for path in [node.dir / "stdout.log", *sorted((node.dir / "log").glob("*.log"))]:
                if path.exists():
                    tail = path.read_text(errors="replace").splitlines()[-lines:]
                    parts.append(f"--- {path.name} of {node.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        keep = self.keep
        self.keep = True
        super().stop()
        self.keep = keep
        if self.epmd is not None:
            _stop_pid(self.epmd.pid, self.epmd, timeout=5)
            self.epmd = None
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)


# NATS --------------------------------------------------------------------------------------------------

NATS_CONF = """\
server_name: {name}
listen: 127.0.0.1:{client}
http: 127.0.0.1:{monitor}
max_payload: 16KB
jetstream {{
  store_dir: "{store}"
  max_memory_store: 256MB
  max_file_store: 4GB
}}
cluster {{
  name: alarmcentre
  listen: 127.0.0.1:{route}
  routes: [{routes}]
}}
mqtt {{
  listen: 127.0.0.1:{mqtt}
  # replicas of the MQTT gateway's own streams (sessions, retained messages, QoS 1 deliveries)
  stream_replicas: 3
  ack_wait: "30s"
  max_ack_pending: 1000
}}
{auth}
"""

NATS_DEFAULT_AUTH = f"""\
authorization {{
  users: [ {{ user: {ADMIN_USER}, password: {ADMIN_PASS} }} ]
}}
"""


class NatsCluster(Cluster):
    def __init__(self, base: Path, size: int = 3, auth: str = NATS_DEFAULT_AUTH):
        super().__init__("nats", base)
        self.auth = auth
        for i in range(size):
            client, route, mqtt, monitor = free_ports(4)
            self.nodes.append(Node(i, f"n{i + 1}", {"client": client, "route": route, "mqtt": mqtt,
                                                    "monitor": monitor}, base / f"node{i + 1}"))

    @property
    def client_ports(self) -> list[int]:
        return [n.ports["client"] for n in self.nodes]

    def write_config(self) -> None:
        routes = ", ".join(f"nats://127.0.0.1:{n.ports['route']}" for n in self.nodes)
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            text = NATS_CONF.format(name=node.name, store=node.dir / "js", routes=routes, auth=self.auth,
                                    **node.ports)
            (node.dir / "nats.conf").write_text(text)

    def reload(self) -> None:
        """Rewrite the configuration (e.g. new users) and make every running node reload it (SIGHUP)."""
        self.write_config()
        for node in self.nodes:
            if node.pid:
                os.kill(node.pid, signal.SIGHUP)
        time.sleep(1.0)

    def start(self) -> float:
        t0 = time.monotonic()
        self.base.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.start_nodes(list(range(len(self.nodes))))
        self.wait_jetstream()
        self.ready_seconds = time.monotonic() - t0
        return self.ready_seconds

    def start_node(self, i: int) -> None:
        self.start_nodes([i])

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        out = open(node.dir / "nats.log", "ab")  # noqa: SIM115 - the child keeps it
        node.proc = subprocess.Popen([NATS_BIN, "-c", str(node.dir / "nats.conf")], stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        node.pid = node.proc.pid

    def _await(self, i: int) -> None:
        node = self.nodes[i]
        wait_port(node.ports["monitor"], 30)
        wait_port(node.mqtt, 60)  # the MQTT listener opens once JetStream and the MQTT streams are usable

    def wait_jetstream(self, timeout: float = 60) -> None:
        """Until every running node reports a JetStream meta leader and all peers current."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = True
            for node in self.nodes:
                if not node.pid:
                    continue
                try:
                    url = f"http://127.0.0.1:{node.ports['monitor']}/healthz?js-enabled-only=true"
                    with urllib.request.urlopen(url, timeout=2) as r:
                        ok = ok and json.load(r).get("status") == "ok"
                    with urllib.request.urlopen(f"http://127.0.0.1:{node.ports['monitor']}/jsz", timeout=2) as r:
                        meta = json.load(r).get("meta_cluster") or {}
                    ok = ok and bool(meta.get("leader"))
                except OSError:
                    ok = False
            if ok:
                return
            time.sleep(0.2)
        raise TimeoutError("JetStream meta leader not elected")


# Mosquitto ---------------------------------------------------------------------------------------------

MOSQUITTO_CONF = """\
listener {mqtt} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {dir}/
autosave_interval 2
max_inflight_messages 1000
max_queued_messages 1000000
log_dest file {dir}/mosquitto.log
"""


class MosquittoBroker(Cluster):
    def __init__(self, base: Path):
        super().__init__("mosquitto", base)
        self.nodes.append(Node(0, "mosquitto", {"mqtt": free_ports(1)[0]}, base))

    def start(self) -> float:
        t0 = time.monotonic()
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "mosquitto.conf").write_text(MOSQUITTO_CONF.format(dir=self.base, **self.nodes[0].ports))
        self.start_nodes([0])
        self.ready_seconds = time.monotonic() - t0
        return self.ready_seconds

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        node.proc = subprocess.Popen([MOSQUITTO_BIN, "-c", str(self.base / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        node.pid = node.proc.pid

    def _await(self, i: int) -> None:
        wait_port(self.nodes[i].mqtt, 10)


def make(kind: str, base: Path | None = None, **kw) -> Cluster:
    base = base or Path(tempfile.mkdtemp(prefix=f"ac-{kind}-", dir="/tmp"))
    cls = {"rabbitmq": RabbitCluster, "nats": NatsCluster, "mosquitto": MosquittoBroker}[kind]
    return cls(base, **kw)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start", help="start a cluster, print its ports as JSON, run until SIGINT/SIGTERM")
    s.add_argument("kind", choices=["rabbitmq", "nats", "mosquitto"])
    s.add_argument("--dir", type=Path, help="directory for all its files (default: a new one in /tmp)")
    s.add_argument("--keep", action="store_true", help="keep the directory when stopping")
    args = p.parse_args()
    cluster = make(args.kind, args.dir)
    cluster.keep = args.keep
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster.start()
        print(json.dumps(cluster.describe(), indent=2), flush=True)
        while not stop:
            time.sleep(0.5)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
