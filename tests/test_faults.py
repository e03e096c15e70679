"""Faults injected into a real deployment, counted end to end.

Mosquitto with the repository's configuration, PostgreSQL, and `alarmcentre ingest` (and, for
the SIGKILL tests, `scheduler` and `api`) as processes of their own. The devices are the
project's simulator: each has its own connection, publishes QoS 1, keeps an event the broker
did not acknowledge and sends it again after reconnecting, as docs/protocol.md asks of devices.
Each test compares what the devices published with the events, incidents, timeline entries and
texts in the database.

Related cases elsewhere: a SIGKILL of a lone ingest mid-burst from one publisher and a database
that refuses connections (test_pipeline.py); a SIGKILL of a lone scheduler mid-escalation and two
schedulers at once (test_dispatch_flow.py). The SIGKILL test here kills each process while all
three run, devices send and escalations and an operator are at work.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Select, func, select

from alarmcentre.contacts.models import Contact, ContactKind
from alarmcentre.db import transaction
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.dispatch.models import (
    Channel,
    IncidentStep,
    PlanStep,
    SmsMessage,
    SmsStatus,
    StepState,
    Timer,
    TimerKind,
)
from alarmcentre.incidents.models import Incident, IncidentKind, IncidentStatus, TimelineEntry, TimelineKind
from alarmcentre.runtime import Database
from alarmcentre.users.models import Role
from alarmcentre.users.service import create_user
from alarmcentre_sim.connection import BrokerAddress
from alarmcentre_sim.fleet import Fleet
from alarmcentre_sim.stats import Stats
from tests.conftest import (
    CentreProcess,
    MosquittoProcess,
    PostgresCluster,
    free_port,
    ingest_subscribed,
    migrated_database,
    wait_for_port,
    wait_until,
)
from tests.factories import count_rows as count
from tests.factories import make_client, make_device, setup_devices, stage_escalations

# Every test here runs alarmcentre processes of its own, on the true clock.
pytestmark = pytest.mark.needs_true_clock

ALARMS = ("button_press", "fall_detected")


# -- the devices -------------------------------------------------------------------------


def burst_plan(serials: list[str], per_device: int, seed: int) -> dict[str, list[str]]:
    """Each device's events in order: mostly heartbeats, about one in ten an alarm (fixed by the seed)."""
    rng = random.Random(seed)
    kinds, weights = ["heartbeat", "button_press", "fall_detected"], [90, 8, 2]
    return {serial: rng.choices(kinds, weights, k=per_device) for serial in serials}


class Burst:
    """Simulated devices sending a fixed plan, every device in order and all devices at once.

    With `hold_at`, each device sends its first `hold_at` events and then waits for `release()`:
    the fault is injected in the middle of the burst however slow the machine, and the rest is
    sent while the fault lasts and after it."""

    def __init__(self, url: str | BrokerAddress, plan: dict[str, list[str]], *, rate: float,
                 hold_at: int | None = None) -> None:
        self.plan = plan
        self.total = sum(len(kinds) for kinds in plan.values())
        self.hold_at = hold_at
        # No events of their own (heartbeats, battery): only the plan, so the expectations are exact.
        # A publish not acknowledged within `timeout` is kept and sent again.
        self.fleet = Fleet(url, list(plan), heartbeat_interval=None, battery_drain=0, rate_limit=rate, timeout=5.0)
        self.sent: list[tuple[str, int, str]] = []  # (serial, seq, type) of every event a device made
        self._future: Future[None] | None = None
        self._gate = asyncio.Event()  # bound to the fleet's loop when first awaited there
        if hold_at is None:
            self._gate.set()

    def connect(self) -> None:
        self.fleet.start_in_thread()
        assert self.fleet.wait_connected(60), "the simulated devices did not try to connect"
        # A device whose first handshake timed out on a busy machine tries again with backoff, as a
        # real one does; the burst starts once every device is in.
        devices = self.fleet.devices.values()
        wait_until(lambda: all(d.connected.is_set() for d in devices), timeout=60, step=0.1,
                   explain=self.describe)

    def start(self) -> None:
        # The plan runs on the fleet's own loop, as Fleet.press() does for one event.
        assert self.fleet._loop is not None
        self._future = asyncio.run_coroutine_threadsafe(self._run(), self.fleet._loop)

    def release(self) -> None:
        assert self.fleet._loop is not None
        self.fleet._loop.call_soon_threadsafe(self._gate.set)

    async def _run(self) -> None:
        await asyncio.gather(*(self._device(serial, kinds) for serial, kinds in self.plan.items()))

    async def _device(self, serial: str, kinds: list[str]) -> None:
        device = self.fleet.devices[serial]
        for position, kind in enumerate(kinds):
            if position == self.hold_at:
                await self._gate.wait()
            seq = device.seq + 1
            await device.send_event(kind)  # back on PUBACK, or kept in the device's outbox for later
            assert device.seq == seq, "only the plan makes events"
            self.sent.append((serial, seq, kind))

    def describe(self) -> str:
        """For a failure message: who is connected, what waits in the outboxes."""
        devices = self.fleet.devices.values()
        offline = [d.device_id for d in devices if not d.connected.is_set()]
        waiting = sum(len(d._outbox) for d in devices)
        return (f"{len(offline)} offline (e.g. {offline[:3]}, last error "
                f"{next((d.last_error for d in devices if d.last_error), None)}), {waiting} events in outboxes")

    @property
    def made(self) -> int:
        return len(self.sent)

    def wait(self, timeout: float) -> None:
        assert self._future is not None
        self._future.result(timeout)

    def stop(self) -> Stats:
        if self._future is not None:
            self.release()  # nothing left waiting at the gate when the fleet stops
        return self.fleet.stop()


# -- the centre's processes --------------------------------------------------------------


def centre_env(database_url: str, mqtt_url: str, data_dir: Path, **settings: object) -> dict[str, str]:
    env = {"ALARMCENTRE_DATABASE_URL": database_url, "ALARMCENTRE_MQTT_URL": mqtt_url,
           "ALARMCENTRE_DATA_DIR": str(data_dir), "ALARMCENTRE_METRICS_PORT": "0"}
    env.update({f"ALARMCENTRE_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


# -- counting ----------------------------------------------------------------------------


def assert_each_message_once(db: Database, sent: list[tuple[str, int, str]]) -> dict[str, int]:
    """Every published event is in the database once; every alarm is in its client's one active incident."""
    assert len(sent) == len(set(sent)), "a device reused a seq"
    with db.sessions() as session:
        stored = Counter(tuple(row) for row in session.execute(
            select(Device.serial, DeviceEvent.seq, DeviceEvent.type).join(Device, Device.id == DeviceEvent.device_id)))
        client_of = dict(session.execute(select(Device.serial, Device.client_id)).all())
        incidents = session.execute(
            select(Incident.id, Incident.client_id, Incident.status, Incident.signal_count, Incident.active_key)
            .where(Incident.kind.in_([IncidentKind(kind) for kind in ALARMS]), Incident.device_id.is_not(None))).all()
        entries = dict(session.execute(
            select(TimelineEntry.incident_id, func.count())
            .where(TimelineEntry.kind.in_([TimelineKind.OPENED, TimelineKind.SIGNAL]))
            .group_by(TimelineEntry.incident_id)).all())
        dead_letters = session.scalar(select(func.count()).select_from(DeadLetter))
    missing = set(sent) - set(stored)
    assert not missing, f"{len(missing)} published events are not in the database, e.g. {sorted(missing)[:5]}"
    assert set(stored) == set(sent), "events in the database that no device published"
    duplicates = sum(n - 1 for n in stored.values())
    assert duplicates == 0
    assert dead_letters == 0
    alarms = Counter(client_of[serial] for serial, _, kind in sent if kind in ALARMS)
    per_client = Counter(client_id for _, client_id, *_ in incidents)
    assert per_client == Counter(dict.fromkeys(alarms, 1)), "one incident per client that raised an alarm, no other"
    for incident_id, client_id, status, signals, active_key in incidents:
        assert status != IncidentStatus.RESOLVED and active_key == f"client:{client_id}", "the incident is active"
        assert signals == alarms[client_id], f"incident {incident_id}: {signals} signals for {alarms[client_id]} alarms"
        assert entries[incident_id] == alarms[client_id], f"incident {incident_id}: one timeline entry per alarm"
    return {"events": len(stored), "alarms": sum(alarms.values()), "incidents": len(incidents),
            "timeline": sum(entries.values()), "duplicates": duplicates}


# -- the simulated device itself ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_an_event_in_flight_when_the_connection_breaks_is_sent_again_after_the_reconnect(
    mosquitto: MosquittoProcess,
) -> None:
    """Its publish fails only at its timeout, after the device has reconnected and sent its outbox:
    the device must still send it (it used to wait in the outbox for the next reconnect)."""
    fleet = Fleet(mosquitto.url, ["INFLIGHT-1"], heartbeat_interval=None, battery_drain=0, timeout=4.0)
    fleet.start_in_thread()
    try:
        assert fleet.wait_connected(10) and fleet.stats.connects == 1
        assert mosquitto.process is not None
        mosquitto.process.send_signal(signal.SIGSTOP)  # the broker hears nothing: no PUBACK
        assert fleet._loop is not None
        pressed = asyncio.run_coroutine_threadsafe(fleet.send("INFLIGHT-1", "button_press"), fleet._loop)
        time.sleep(0.5)
        mosquitto.kill()  # the connection breaks with the publish in flight
        mosquitto.start()
        wait_until(lambda: fleet.stats.connects == 2, timeout=10)
        assert pressed.result(10) is False, "no PUBACK came for it"
        wait_until(lambda: fleet.stats.resent == 1, timeout=10)
        assert fleet.stats.outbox == 0 and fleet.stats.published["button_press"] == 1
    finally:
        fleet.stop()


# -- 1. the broker restarts during a burst -----------------------------------------------


@pytest.mark.timeout(400)
def test_broker_restart_mid_burst_loses_nothing_and_duplicates_nothing(
    postgres_db: Database, postgres_url: str, mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    serials = [f"BR-{i:04d}" for i in range(500)]
    setup_devices(postgres_db.sessions, serials)
    plan = burst_plan(serials, per_device=10, seed=1)
    metrics_port = free_port()
    ingest = CentreProcess("ingest", centre_env(postgres_url, mosquitto.url, tmp_path, metrics_port=metrics_port),
                           tmp_path / "ingest.log").start()
    burst = Burst(mosquitto.url, plan, rate=300, hold_at=4)  # ~17 s of sending, the restart inside it
    started = time.monotonic()
    try:
        wait_until(lambda: ingest_subscribed(ingest.log), timeout=30, step=0.1)
        burst.connect()
        burst.start()
        # Well into the burst, with the ingest holding received, unacknowledged messages.
        wait_until(lambda: burst.made >= 1500, timeout=60, step=0.05)
        made_at_stop = burst.made
        down = time.monotonic()
        mosquitto.stop()  # SIGTERM: Mosquitto saves its state (persistence on) and goes
        burst.release()  # the devices go on: into their outboxes while the broker is away
        stored_at_stop = count(postgres_db, DeviceEvent)
        time.sleep(1.0)
        mosquitto.start()
        outage = time.monotonic() - down
        assert made_at_stop < burst.total and stored_at_stop < burst.total, "not a mid-burst restart"
        burst.wait(120)
        drained = wait_until(lambda: count(postgres_db, DeviceEvent) >= burst.total, timeout=120, step=0.2)
        time.sleep(1.0)  # anything redelivered late must still not duplicate
        suppressed = scrape(metrics_port, "alarmcentre_ingest_duplicates_total")
        assert ingest.alive, ingest.log_tail()
    finally:
        stats = burst.stop()
        ingest.stop()
    figures = assert_each_message_once(postgres_db, burst.sent)
    assert "session present: True" in ingest.log.read_text(), "the ingest's session survived the restart"
    print(f"broker restart: {figures}; devices made {made_at_stop} events before the stop "
          f"({stored_at_stop} stored), broker down {outage:.1f} s; {stats.total_failed} publishes without PUBACK, "
          f"{stats.resent} resent from outboxes; {suppressed:.0f} redeliveries dropped by the ingest; "
          f"all stored {drained:.1f} s after the burst; {time.monotonic() - started:.1f} s in all")


# -- 2. PostgreSQL stops for 20 s during a burst -----------------------------------------


@pytest.mark.timeout(300)
def test_database_down_for_20_s_mid_burst_loses_nothing_and_duplicates_nothing(
    private_postgres: PostgresCluster, mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    url = private_postgres.create_database()
    db = migrated_database(url)
    serials = [f"DB-{i:04d}" for i in range(60)]
    setup_devices(db.sessions, serials)
    plan = burst_plan(serials, per_device=10, seed=2)
    metrics_port = free_port()
    ingest = CentreProcess("ingest", centre_env(url, mosquitto.url, tmp_path, metrics_port=metrics_port),
                           tmp_path / "ingest.log").start()
    burst = Burst(mosquitto.url, plan, rate=30, hold_at=2)  # ~20 s of sending, most while the database is down
    started = time.monotonic()
    try:
        wait_until(lambda: ingest_subscribed(ingest.log), timeout=30, step=0.1)
        burst.connect()
        burst.start()
        # The ingest is at work (it committed) and the devices are into the burst.
        wait_until(lambda: burst.made >= 60 and count(db, DeviceEvent) > 0, timeout=60, step=0.05)
        made_at_stop = burst.made
        stored_at_stop = count(db, DeviceEvent)
        down = time.monotonic()
        private_postgres.stop("fast")
        burst.release()
        try:
            wait_until(lambda: "cannot commit" in ingest.log_tail(20_000), timeout=20, step=0.1)
            time.sleep(max(0.0, 20.0 - (time.monotonic() - down)))
            made_while_down = burst.made - made_at_stop
            assert ingest.alive, ingest.log_tail()
        finally:
            private_postgres.start()
        outage = time.monotonic() - down
        assert made_at_stop < burst.total and stored_at_stop < burst.total, "not a mid-burst outage"
        burst.wait(60)
        drained = wait_until(lambda: count(db, DeviceEvent) >= burst.total, timeout=120, step=0.2)
        time.sleep(1.0)  # anything redelivered late must still not duplicate
        suppressed = scrape(metrics_port, "alarmcentre_ingest_duplicates_total")
        assert ingest.alive, ingest.log_tail()
    finally:
        burst.stop()
        ingest.stop()
    try:
        figures = assert_each_message_once(db, burst.sent)
    finally:
        db.engine.dispose()
    assert "database is back" in ingest.log.read_text()
    print(f"database outage: {figures}; {stored_at_stop} stored and {made_at_stop} made before the stop, "
          f"{made_while_down} made while down; down {outage:.1f} s; all stored {drained:.1f} s after it was back; "
          f"{suppressed:.0f} redeliveries dropped; {time.monotonic() - started:.1f} s in all")


# -- 3. SIGKILL of each process during a burst and escalations ---------------------------

PASSWORD = "night-shift-1"
SUPERVISOR_PHONE = "+37129999999"
ACK_ALERT_AFTER_S, ACK_ALERT_REPEAT_S = 5, 10  # the least the settings allow: alerts fire within the test
STAGED = 30  # incidents whose step 1 times out during the test (see factories.stage_escalations)
OPERATOR_ACTS = 12  # incidents the operator claims and dispatches through the API


def install_clients_with_plans(db: Database, serials: list[str]) -> None:
    """One client per device with a one-step plan (text a relative, +3712300NNNN); an on-call supervisor."""
    with transaction(db.sessions) as session:
        for i, serial in enumerate(serials):
            client = make_client(session)
            make_device(session, serial, client=client)
            contact = Contact(client_id=client.id, position=1, kind=ContactKind.RELATIVE, name=f"Relative {i}",
                              phone=f"+3712300{i:04d}")
            session.add(contact)
            session.flush()
            session.add(PlanStep(client_id=client.id, position=1, contact_id=contact.id, channel=Channel.SMS,
                                 wait_seconds=300, automatic=True))
        supervisor = create_user(session, username="sup", password=PASSWORD, role=Role.SUPERVISOR)
        supervisor.phone, supervisor.on_call = SUPERVISOR_PHONE, True
        create_user(session, username="op", password=PASSWORD, role=Role.OPERATOR)


class Operator:
    """An operator at the API: claims open incidents as they come and texts each client's first contact.

    Retries what fails while the API is down. A 409 is expected only for a retried call (the lost
    attempt had done it); anything else unexpected is kept in `errors`."""

    def __init__(self, base_url: str, wanted: int) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)
        self.wanted = wanted
        self.handled: list[int] = []
        self.retries = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def start(self) -> None:
        token = self._call("POST", "/api/v1/auth/token", data={"username": "op", "password": PASSWORD})[0]
        self.http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: object) -> tuple[httpx.Response, bool]:
        """The response, and whether it took more than one attempt."""
        retried = False
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                response = self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code < 500:
                return response, retried
            retried = True
            self.retries += 1
            time.sleep(0.2)

    def _expect(self, what: str, response: httpx.Response, retried: bool) -> None:
        if not (response.status_code == 200 or (response.status_code == 409 and retried)):
            self.errors.append(f"{what}: {response.status_code} {response.text[:200]}")

    def _run(self) -> None:
        try:
            while len(self.handled) < self.wanted:
                listing, _ = self._call("GET", "/api/v1/incidents", params={"status": "open", "limit": 1000})
                waiting = sorted(i["id"] for i in listing.json() if i["kind"] in ALARMS)
                if not waiting:
                    time.sleep(0.1)
                    continue
                incident = waiting[0]
                claim = self._call("POST", f"/api/v1/incidents/{incident}/acknowledge")
                self._expect(f"acknowledge {incident}", *claim)
                steps, _ = self._call("GET", f"/api/v1/incidents/{incident}/steps")
                first = steps.json()[0]["id"]
                self._expect(f"start step {first}", *self._call(
                    "POST", f"/api/v1/incidents/{incident}/steps/start", json={"step_id": first}))
                self.handled.append(incident)
        except _Stopped:
            pass
        except Exception as exc:  # the test thread reads it: an exception here would go unseen
            self.errors.append(repr(exc))


class _Stopped(Exception):
    pass


def rows(db: Database, query: Select[Any]) -> list[Any]:
    with db.sessions() as session:
        return list(session.execute(query).all())


def assert_staged_steps_fired_once(db: Database, staged: list[int]) -> None:
    """Each staged step 1 timed out once: one timeout entry, step 2 started once, one text to its phone."""
    timers = Counter((i, kind, outcome) for i, kind, outcome in rows(db, select(
        Timer.incident_id, Timer.kind, Timer.outcome).where(Timer.incident_id.in_(staged))))
    entries = Counter(rows(db, select(TimelineEntry.incident_id, TimelineEntry.kind)
                           .where(TimelineEntry.incident_id.in_(staged))))
    steps = {(i, position): (step_id, state, phone) for step_id, i, position, state, phone in rows(db, select(
        IncidentStep.id, IncidentStep.incident_id, IncidentStep.position, IncidentStep.state, IncidentStep.phone)
        .where(IncidentStep.incident_id.in_(staged)))}
    texts = Counter(rows(db, select(SmsMessage.incident_id, SmsMessage.step_id, SmsMessage.to_number)
                         .where(SmsMessage.incident_id.in_(staged))))
    for i in staged:
        (_, first_state, _), (second, second_state, second_phone) = steps[(i, 1)], steps[(i, 2)]
        assert timers[(i, TimerKind.STEP_TIMEOUT, "fired")] == 1, f"incident {i}: step 1's timeout fired once"
        assert timers[(i, TimerKind.STEP_TIMEOUT, None)] == 1, f"incident {i}: step 2 waits on one timer"
        assert entries[(i, TimelineKind.STEP_TIMEOUT)] == 1 and entries[(i, TimelineKind.STEP_STARTED)] == 1, i
        assert (first_state, second_state) == (StepState.NO_ANSWER, StepState.WAITING), i
        mine = {key: n for key, n in texts.items() if key[0] == i}
        assert mine == {(i, second, second_phone): 1}, f"incident {i}: one text, to step 2's contact: {mine}"


def assert_operator_actions_once(db: Database, handled: list[int]) -> None:
    """Each incident the operator handled: acknowledged once, its first step started once, texted once."""
    entries = Counter(rows(db, select(TimelineEntry.incident_id, TimelineEntry.kind)
                           .where(TimelineEntry.incident_id.in_(handled))))
    texts = Counter(rows(db, select(SmsMessage.incident_id, SmsMessage.step_id)
                         .where(SmsMessage.incident_id.in_(handled), SmsMessage.purpose == "dispatch")))
    first_steps = dict(rows(db, select(IncidentStep.incident_id, IncidentStep.id)
                            .where(IncidentStep.incident_id.in_(handled), IncidentStep.position == 1)))
    for i in handled:
        assert entries[(i, TimelineKind.ACKNOWLEDGED)] == 1, f"incident {i} acknowledged once"
        assert entries[(i, TimelineKind.STEP_STARTED)] == 1, f"incident {i}: step 1 started once"
        mine = {key: n for key, n in texts.items() if key[0] == i}
        assert mine == {(i, first_steps[i]): 1}, f"incident {i}: one dispatch text, for step 1: {mine}"


def assert_supervisor_alerts_once(db: Database) -> int:
    """Each acknowledgement timer fired at most once: one alert and one text per firing, one chain, spaced."""
    incidents = {i: (status, opened) for i, status, opened in rows(db, select(
        Incident.id, Incident.status, Incident.opened_at))}
    timers: dict[int, list[str | None]] = {}
    for i, outcome in rows(db, select(Timer.incident_id, Timer.outcome).where(Timer.kind == TimerKind.ACK_ALERT)):
        timers.setdefault(i, []).append(outcome)
    alerts: dict[int, list[Any]] = {}
    for i, at in rows(db, select(TimelineEntry.incident_id, TimelineEntry.at)
                      .where(TimelineEntry.kind == TimelineKind.SUPERVISOR_ALERT).order_by(TimelineEntry.at)):
        alerts.setdefault(i, []).append(at)
    texts = Counter(i for (i,) in rows(db, select(SmsMessage.incident_id)
                                       .where(SmsMessage.purpose == "supervisor_alert")))
    for i, chain in timers.items():
        status, opened = incidents[i]
        fired = alerts.get(i, [])
        assert len(chain) == len(fired) + 1, f"incident {i}: each alert made one next timer ({chain}, {fired})"
        # One chain: an open incident waits on one timer. (An acknowledgement racing a firing can leave one
        # more timer pending, which then fires without effect: at most one.)
        pending = chain.count(None)
        assert (pending == 1) if status == IncidentStatus.OPEN else (pending <= 1), (i, chain)
        assert texts[i] == len(fired), f"incident {i}: one text to the supervisor per alert"
        # A timer fired twice would show as two alerts at about the same time. The gaps are not exact: the
        # next timer is due `repeat` after the start of the sweep's batch, the entry is stamped when written.
        times = [opened, *fired]
        gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
        assert all(gap >= ACK_ALERT_REPEAT_S / 2 for gap in gaps[1:]), (i, gaps)
        assert not gaps or gaps[0] >= ACK_ALERT_AFTER_S - 0.5, (i, gaps)
    assert set(alerts) <= set(timers)
    return sum(map(len, alerts.values()))


def assert_api_serves_every_incident(base_url: str, db: Database) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        token = http.post("/api/v1/auth/token", data={"username": "sup", "password": PASSWORD})
        assert token.status_code == 200, token.text
        http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        listing = http.get("/api/v1/incidents", params={"limit": 1000})
        assert listing.status_code == 200, listing.text
        in_db = dict(rows(db, select(TimelineEntry.incident_id, func.count()).group_by(TimelineEntry.incident_id)))
        assert sorted(i["id"] for i in listing.json()) == sorted(i for (i,) in rows(db, select(Incident.id)))
        for incident_id, entries in in_db.items():
            detail = http.get(f"/api/v1/incidents/{incident_id}")
            assert detail.status_code == 200 and len(detail.json()["timeline"]) == entries, detail.text[:300]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("victim", ["ingest", "scheduler", "api"])
def test_sigkill_of_a_process_mid_burst_and_mid_escalation_loses_and_repeats_nothing(
    victim: str, postgres_db: Database, postgres_url: str, mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    serials = [f"KILL-{i:03d}" for i in range(40)]
    install_clients_with_plans(postgres_db, serials)
    plan = burst_plan(serials, per_device=10, seed=3)
    api_port = free_port()
    env = centre_env(postgres_url, mosquitto.url, tmp_path, api_port=api_port, sweep_interval_s=0.2,
                     ack_alert_after_s=ACK_ALERT_AFTER_S, ack_alert_repeat_s=ACK_ALERT_REPEAT_S,
                     sms_min_interval_s=0, sms_max_per_hour=100_000, ingest_batch_max=100)
    processes = {name: CentreProcess(name, env, tmp_path / f"{name}.log").start()
                 for name in ("ingest", "scheduler", "api")}
    base_url = f"http://127.0.0.1:{api_port}"
    burst = Burst(mosquitto.url, plan, rate=40, hold_at=5)  # ~10 s of sending, the kill inside it
    operator = Operator(base_url, OPERATOR_ACTS)

    def staged_fired() -> int:
        return count(postgres_db, Timer, Timer.incident_id.in_(staged), Timer.outcome == "fired")

    started = time.monotonic()
    try:
        wait_until(lambda: ingest_subscribed(processes["ingest"].log), timeout=30, step=0.1)
        assert wait_for_port(api_port, 30), processes["api"].log_tail()
        burst.connect()
        operator.start()
        with transaction(postgres_db.sessions) as session:
            # Their step timeouts come due over 6 s from 3 s on: while the burst runs, across the kill.
            staged = stage_escalations(session, STAGED, datetime.now(UTC) + timedelta(seconds=3), spread_s=6.0)
        burst.start()
        at_work = {"ingest": lambda: count(postgres_db, DeviceEvent) >= 120,
                   "scheduler": lambda: staged_fired() >= STAGED // 3,
                   "api": lambda: len(operator.handled) >= 4}[victim]
        wait_until(at_work, timeout=60, step=0.02)
        at_kill = {"made": burst.made, "stored": count(postgres_db, DeviceEvent), "staged fired": staged_fired(),
                   "handled": len(operator.handled)}
        processes[victim].kill()
        down = time.monotonic()
        burst.release()
        time.sleep(3.0 if victim == "scheduler" else 1.0)  # the scheduler: timers come due while it is away
        processes[victim].start()
        if victim == "api":
            assert wait_for_port(api_port, 30), processes["api"].log_tail()
        downtime = time.monotonic() - down
        assert at_kill["made"] < burst.total, f"the burst ended before the kill: {at_kill}"
        assert at_kill["staged fired"] < STAGED or victim != "scheduler", f"escalations were over: {at_kill}"
        assert at_kill["handled"] < OPERATOR_ACTS or victim != "api", f"the operator was done: {at_kill}"

        burst.wait(120)
        wait_until(lambda: count(postgres_db, DeviceEvent) >= burst.total, timeout=120, step=0.2)
        wait_until(lambda: staged_fired() == STAGED, timeout=60, step=0.1)
        wait_until(lambda: len(operator.handled) == OPERATOR_ACTS or bool(operator.errors), timeout=60, step=0.1)
        wait_until(lambda: count(postgres_db, SmsMessage, SmsMessage.status == SmsStatus.QUEUED) == 0, timeout=30)
        for name in ("ingest", "scheduler"):  # the database holds still for the checks
            assert processes[name].alive, processes[name].log_tail()
            processes[name].stop()
        assert processes["api"].alive, processes["api"].log_tail()
        assert_api_serves_every_incident(base_url, postgres_db)
    finally:
        operator.stop()
        burst.stop()
        for process in processes.values():
            process.stop()
    assert operator.errors == []
    figures = assert_each_message_once(postgres_db, burst.sent)
    assert_staged_steps_fired_once(postgres_db, staged)
    assert_operator_actions_once(postgres_db, operator.handled)
    alerts = assert_supervisor_alerts_once(postgres_db)
    dispatch = count(postgres_db, SmsMessage, SmsMessage.purpose == "dispatch")
    assert dispatch == STAGED + OPERATOR_ACTS, "one text per started step, no other"
    print(f"SIGKILL {victim}: {figures}; at the kill {at_kill}; down {downtime:.1f} s; {STAGED} staged timeouts "
          f"and {OPERATOR_ACTS} operator dispatches each texted once ({dispatch} texts); {alerts} supervisor "
          f"alerts, each once; operator retries {operator.retries}; {time.monotonic() - started:.1f} s in all")
