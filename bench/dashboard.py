"""Dashboard under load: 200 open incidents, 10 operators connected to the live feed.

Measures, on a real HTTP server (uvicorn) and a real database:
- alarm to screen: from the commit of a new alarm to each operator's browser having received the
  change event and re-read the queue (what a browser does), over several alarms;
- the queue fragment with 200 rows against /healthz (the bare server round trip) in the same run.

    python bench/dashboard.py                       # SQLite in a temporary directory
    python bench/dashboard.py --database-url postgresql://postgres@127.0.0.1:5432/bench_dashboard
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import create_engine, text

from alarmcentre.app import create_app
from alarmcentre.clients.models import Client
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.devices.models import Device, DeviceStatus
from alarmcentre.ingest.processor import InboundMessage, process_message
from alarmcentre.ingest.protocol import events_topic
from alarmcentre.municipalities.models import Municipality
from alarmcentre.runtime import Database
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User

PASSWORD = "bench-password"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def press(serial: str) -> InboundMessage:
    payload = json.dumps({"seq": 1, "ts": datetime.now(UTC).isoformat(), "type": "button_press"}).encode()
    return InboundMessage(events_topic(serial), payload, datetime.now(UTC))


def fresh_postgres(url: str) -> str:
    admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    name = url.rsplit("/", 1)[1]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url


class Operator(threading.Thread):
    """One browser: logged in, listening to the feed, re-reading the queue on every change."""

    def __init__(self, base: str, username: str) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=base, timeout=30)
        page = self.http.get("/login")
        nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
        assert nonce is not None
        response = self.http.post("/login", data={"username": username, "password": PASSWORD,
                                                  "nonce": nonce.group(1)})
        assert response.status_code == 303, response.status_code  # logged in: redirected to the queue
        self.connected = threading.Event()
        self.refreshed_at: list[float] = []
        self.events_at: list[float] = []
        self.stop = False

    def run(self) -> None:
        with self.http.stream("GET", "/ui/events", headers={"Accept": "text/event-stream"}) as stream:
            event = ""
            for line in stream.iter_lines():
                if self.stop:
                    return
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "hello":
                    self.connected.set()
                elif line.startswith("data:") and event == "change":
                    self.events_at.append(time.perf_counter())
                    self.http.get("/ui/queue/rows", headers={"X-Requested-With": "fetch"}).raise_for_status()
                    self.refreshed_at.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL URL (the database is dropped and created)")
    parser.add_argument("--incidents", type=int, default=200)
    parser.add_argument("--operators", type=int, default=10)
    parser.add_argument("--alarms", type=int, default=20, help="new alarms raised while they watch")
    parser.add_argument("--quick", action="store_true", help="a small run that only checks the bench works")
    args = parser.parse_args()
    if args.quick:
        args.incidents, args.operators, args.alarms = 20, 3, 4

    workdir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    url = fresh_postgres(args.database_url) if args.database_url else None
    settings = Settings(data_dir=workdir, database_url=url)
    db = Database.open(settings)
    password_hash = users._hasher.hash(PASSWORD)
    serials = [f"BENCH-{n:05d}" for n in range(args.incidents + args.alarms)]
    with transaction(db.sessions) as session:
        municipality = Municipality(name="Bench")
        session.add(municipality)
        session.flush()
        for n, serial in enumerate(serials):
            client = Client(municipality_id=municipality.id, full_name=f"Client {n}", address=f"Iela {n}",
                            care_level=1 + n % 4)
            session.add(client)
            session.flush()
            session.add(Device(serial=serial, client_id=client.id, status=DeviceStatus.INSTALLED))
        for n in range(args.operators):
            session.add(User(username=f"op{n}", password_hash=password_hash, role=Role.OPERATOR))
    with transaction(db.sessions) as session:
        for serial in serials[:args.incidents]:
            process_message(session, message=press(serial), settings=settings)

    port = free_port()
    app = create_app(settings=settings, session_factory=db.sessions)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"

    probe = httpx.Client(base_url=base, timeout=30)
    operators = [Operator(base, f"op{n}") for n in range(args.operators)]
    # Same client, same run: the bare round trip, then the queue with all its rows.
    healthz, fragment = [], []
    for _ in range(50):
        started = time.perf_counter()
        probe.get("/healthz")
        healthz.append(time.perf_counter() - started)
    size = 0
    for _ in range(50):
        started = time.perf_counter()
        size = len(operators[0].http.get("/ui/queue/rows").content)
        fragment.append(time.perf_counter() - started)

    for operator in operators:
        operator.start()
    for operator in operators:
        assert operator.connected.wait(10), "an operator did not connect to the feed"
    time.sleep(1)

    def raise_alarms(serials_now: list[str]) -> tuple[list[float], list[float]]:
        to_event, to_screen = [], []
        for serial in serials_now:
            before = [len(o.refreshed_at) for o in operators]
            with transaction(db.sessions) as session:
                process_message(session, message=press(serial), settings=settings)
            committed = time.perf_counter()
            deadline = time.monotonic() + 10
            while any(len(o.refreshed_at) <= b for o, b in zip(operators, before, strict=True)):
                assert time.monotonic() < deadline, "an operator's screen did not update within 10 s"
                time.sleep(0.005)
            for operator, index in zip(operators, before, strict=True):
                to_event.append(operator.events_at[index] - committed)
                to_screen.append(operator.refreshed_at[index] - committed)
            time.sleep(0.3)  # one alarm at a time, as they come at night
        return to_event, to_screen

    # Baseline in the same run: every browser's re-read renders the queue itself (no sharing).
    half = args.alarms // 2
    app.state.shared_rendering.max_age_s = 0
    _event_alone, screen_alone = raise_alarms(serials[args.incidents:args.incidents + half])
    app.state.shared_rendering.max_age_s = 2.0
    to_event, to_screen = raise_alarms(serials[args.incidents + half:])

    for operator in operators:
        operator.stop = True
    server.should_exit = True
    backend = "PostgreSQL" if url else "SQLite"
    ms = 1000
    print(f"dashboard bench: {backend}, {args.incidents} open incidents, {args.operators} operators on the feed, "
          f"{args.alarms} new alarms (poll interval {settings.live_poll_s} s)")
    print(f"  /healthz round trip       p50 {statistics.median(healthz) * ms:6.1f} ms")
    print(f"  queue fragment ({size // 1024} KiB) p50 {statistics.median(fragment) * ms:6.1f} ms  "
          f"p95 {percentile(fragment, 0.95) * ms:6.1f} ms  ratio to /healthz "
          f"{statistics.median(fragment) / statistics.median(healthz):.1f}x")
    print(f"  alarm commit -> event     p50 {statistics.median(to_event) * ms:6.1f} ms  "
          f"p95 {percentile(to_event, 0.95) * ms:6.1f} ms  max {max(to_event) * ms:6.1f} ms")
    for name, values in (("each renders", screen_alone), ("shared render", to_screen)):
        print(f"  alarm commit -> re-read   p50 {statistics.median(values) * ms:6.1f} ms  "
              f"p95 {percentile(values, 0.95) * ms:6.1f} ms  max {max(values) * ms:6.1f} ms "
              f"({name}; all {args.operators} screens, {len(values)} samples)")
    print(f"  shared / each-renders p95 ratio: {percentile(to_screen, 0.95) / percentile(screen_alone, 0.95):.2f}")


if __name__ == "__main__":
    main()
