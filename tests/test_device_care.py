"""Device care and welfare jobs with a controlled clock, on SQLite and PostgreSQL (no broker here).

Each job is called the way the scheduler calls it (care.run_job: one transaction), twice where
it matters, to show a second run changes nothing.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from alarmcentre import care, clock
from alarmcentre.app import create_app
from alarmcentre.clients.models import Client, ClientStatus
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.devices import service as devices
from alarmcentre.devices.catalogue import supervision_window_s, validate_config
from alarmcentre.devices.models import BatteryReading, Device, DeviceAssignment, DeviceStatus, SignalReading
from alarmcentre.incidents.models import Incident, IncidentKind, IncidentStatus, TimelineEntry
from alarmcentre.ingest.processor import InboundMessage, process_message
from alarmcentre.ingest.protocol import status_topic
from alarmcentre.ingest.sessions import record_alive, record_connect
from alarmcentre.runtime import Database
from alarmcentre.tasks.models import OperatorTask, TaskKind, TaskStatus
from alarmcentre.users.models import Role
from alarmcentre.users.service import create_user
from alarmcentre.workorders.models import WorkOrder, WorkOrderKind, WorkOrderStatus
from tests.factories import make_client, make_device, message

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
SETTINGS = Settings()


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start
        clock.set_clock(lambda: self.now)

    def set(self, at: datetime) -> None:
        self.now = at

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def run(db: Database, job: care.Job, settings: Settings = SETTINGS) -> int:
    return care.run_job(db.sessions, job.__name__, job, settings=settings)


def feed(db: Database, serial: str, seq: int, type_: str, **fields: object) -> None:
    with transaction(db.sessions) as session:
        process_message(session, message=message(serial, seq, type_, ts=clock.now(), **fields), settings=SETTINGS)


def tasks_of(db: Database, kind: TaskKind, *statuses: TaskStatus) -> list[OperatorTask]:
    with db.sessions() as session:
        query = select(OperatorTask).where(OperatorTask.kind == kind).order_by(OperatorTask.id)
        if statuses:
            query = query.where(OperatorTask.status.in_(statuses))
        return list(session.scalars(query))


def orders_of(db: Database, kind: WorkOrderKind) -> list[WorkOrder]:
    with db.sessions() as session:
        return list(session.scalars(select(WorkOrder).where(WorkOrder.kind == kind).order_by(WorkOrder.id)))


def installed(db: Database, serial: str = "C1", **device_fields: object) -> tuple[int, int]:
    with transaction(db.sessions) as session:
        client = make_client(session)
        device = make_device(session, serial)
        devices.assign_device(session, device=device, client_id=client.id, reason="installed")
        for name, value in device_fields.items():
            setattr(device, name, value)
        return client.id, device.id


# -- welfare checks ----------------------------------------------------------------------


def test_welfare_check_opens_exactly_at_fourteen_days_once_and_contact_moves_the_next(any_db: Database) -> None:
    fake = Clock(T0)
    client_id, _ = installed(any_db)
    feed(any_db, "C1", 1, "test_call")  # contact at T0
    fake.set(T0 + timedelta(days=14) - timedelta(seconds=1))
    assert run(any_db, care.welfare_checks) == 0
    fake.set(T0 + timedelta(days=14))
    assert run(any_db, care.welfare_checks) == 1
    assert run(any_db, care.welfare_checks) == 0, "a second run opens nothing"
    (task,) = tasks_of(any_db, TaskKind.WELFARE_CHECK)
    assert task.status == TaskStatus.OPEN and task.due_at == T0 + timedelta(days=14) and task.client_id == client_id

    # The client presses the test button meanwhile: the check is no longer needed.
    fake.advance(hours=1)
    feed(any_db, "C1", 2, "test_call")
    run(any_db, care.welfare_checks)
    (task,) = tasks_of(any_db, TaskKind.WELFARE_CHECK)
    assert task.status == TaskStatus.CLOSED and task.outcome == "contact_received" and task.active_key is None
    fake.advance(days=14, seconds=-1)
    assert run(any_db, care.welfare_checks) == 0
    fake.advance(seconds=1)
    assert run(any_db, care.welfare_checks) == 1


def test_operator_completes_a_welfare_check_through_the_api(any_db: Database) -> None:
    fake = Clock(T0)
    client_id, _ = installed(any_db)
    with transaction(any_db.sessions) as session:
        for name, role in (("op", Role.OPERATOR), ("op2", Role.OPERATOR), ("tech", Role.TECHNICIAN)):
            create_user(session, username=name, password="password-123", role=role)
    http = TestClient(create_app(settings=SETTINGS, session_factory=any_db.sessions))

    def auth(user: str) -> dict[str, str]:
        token = http.post("/api/v1/auth/token", data={"username": user, "password": "password-123"})
        return {"Authorization": f"Bearer {token.json()['access_token']}"}

    fake.advance(days=15)  # never heard since the service started
    op, op2, tech = auth("op"), auth("op2"), auth("tech")
    run(any_db, care.welfare_checks)
    queue = http.get("/api/v1/tasks", headers=op).json()
    assert [(t["kind"], t["client_id"]) for t in queue] == [("welfare_check", client_id)]
    assert http.get("/api/v1/tasks", headers=tech).status_code == 403
    task_id = queue[0]["id"]
    assert http.post(f"/api/v1/tasks/{task_id}/claim", headers=op).status_code == 200
    assert http.post(f"/api/v1/tasks/{task_id}/claim", headers=op2).status_code == 409
    assert http.post(f"/api/v1/tasks/{task_id}/complete", json={"outcome": "reached"}, headers=op2).status_code == 409
    done = http.post(f"/api/v1/tasks/{task_id}/complete", headers=op,
                     json={"outcome": "reached", "notes": "all well, daughter visits on Sundays"})
    assert done.status_code == 200 and done.json()["status"] == "done", done.text
    welfare = http.get(f"/api/v1/clients/{client_id}/welfare", headers=op).json()
    assert datetime.fromisoformat(welfare["last_contact_at"]) == fake.now
    assert datetime.fromisoformat(welfare["next_check_due_at"]) == fake.now + timedelta(days=14)
    assert welfare["open_task_id"] is None
    assert run(any_db, care.welfare_checks) == 0
    assert http.get("/api/v1/tasks", headers=op).json() == []


@pytest.mark.parametrize(("contact", "local_contact", "local_due"), [
    # Riga goes EET → EEST on the last Sunday of March (29 March 2026) ...
    (datetime(2026, 3, 20, 10, 0, tzinfo=UTC), "2026-03-20T12:00:00+02:00", "2026-04-03T13:00:00+03:00"),
    # ... and back on the last Sunday of October (25 October 2026).
    (datetime(2026, 10, 20, 10, 0, tzinfo=UTC), "2026-10-20T13:00:00+03:00", "2026-11-03T12:00:00+02:00"),
])
def test_welfare_check_across_a_dst_change_is_exactly_fourteen_days(
    any_db: Database, contact: datetime, local_contact: str, local_due: str
) -> None:
    fake = Clock(contact - timedelta(days=1))
    installed(any_db)
    fake.set(contact)
    feed(any_db, "C1", 1, "test_call")
    assert care.local_time(contact, SETTINGS).isoformat() == local_contact
    fake.set(contact + timedelta(days=14, seconds=-1))
    assert run(any_db, care.welfare_checks) == 0
    fake.set(contact + timedelta(days=14))
    assert run(any_db, care.welfare_checks) == 1
    (task,) = tasks_of(any_db, TaskKind.WELFARE_CHECK)
    assert task.due_at - contact == timedelta(hours=14 * 24)
    assert care.local_time(task.due_at, SETTINGS).isoformat() == local_due


def test_paused_and_ended_clients_get_no_welfare_check(any_db: Database) -> None:
    fake = Clock(T0)
    with transaction(any_db.sessions) as session:
        ids = {status: make_client(session).id for status in ClientStatus}
        for status, client_id in ids.items():
            session.get(Client, client_id).status = status  # type: ignore[union-attr]
    fake.advance(days=30)
    assert run(any_db, care.welfare_checks) == 1
    (task,) = tasks_of(any_db, TaskKind.WELFARE_CHECK)
    assert task.client_id == ids[ClientStatus.ACTIVE]
    with transaction(any_db.sessions) as session:  # she goes to hospital: the open check is withdrawn
        session.get(Client, ids[ClientStatus.ACTIVE]).status = ClientStatus.PAUSED  # type: ignore[union-attr]
    run(any_db, care.welfare_checks)
    (task,) = tasks_of(any_db, TaskKind.WELFARE_CHECK)
    assert task.status == TaskStatus.CLOSED and task.outcome == "client_paused"


def test_concurrent_welfare_runs_open_each_task_once(postgres_db: Database) -> None:
    """Without the advisory lock: the unique active key alone keeps two racing runs from duplicating."""
    Clock(T0)
    with transaction(postgres_db.sessions) as session:
        for _ in range(40):
            make_client(session)
    clock.set_clock(lambda: T0 + timedelta(days=20))
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def race() -> None:
        try:
            barrier.wait()
            with transaction(postgres_db.sessions) as session:
                care.welfare_checks(session, SETTINGS, clock.now())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    tasks = tasks_of(postgres_db, TaskKind.WELFARE_CHECK)
    assert len(tasks) == 40 and len({t.client_id for t in tasks}) == 40


# -- supervision -------------------------------------------------------------------------


def test_supervision_window_presets() -> None:
    def window(model: str, heartbeat: int = 60, tolerance: float = 3.0) -> float:
        return supervision_window_s(model=model, heartbeat_interval_s=heartbeat, tolerance=tolerance)

    assert window("generic") == 180 and window("generic", 600) == 1800 and window("generic", 10, 0.5) == 5
    assert window("unknown-model") == 180
    assert (window("ip-pendant"), window("gsm-unit"), window("daily-unit", 10)) == (180, 1800, 25 * 3600)


def test_silent_device_raises_one_incident_and_is_restored_when_heard(any_db: Database) -> None:
    fake = Clock(T0)
    client_id, device_id = installed(any_db)
    feed(any_db, "C1", 1, "heartbeat")
    fake.advance(seconds=180)
    assert run(any_db, care.supervise_devices) == 0, "exactly at the window: not yet"
    fake.advance(seconds=1)
    assert run(any_db, care.supervise_devices) == 1
    assert run(any_db, care.supervise_devices) == 0
    with any_db.sessions() as session:
        (silent,) = session.scalars(select(Incident).where(Incident.kind == IncidentKind.DEVICE_SILENT))
        assert (silent.priority, silent.status, silent.active_key) == (3, IncidentStatus.OPEN, f"silent:{device_id}")
        assert silent.client_id == client_id
    # A real alarm while the silent incident is open gets its own incident.
    feed(any_db, "C1", 2, "button_press")
    with any_db.sessions() as session:
        kinds = sorted(i.kind.value for i in session.scalars(select(Incident)))
    assert kinds == ["button_press", "device_silent"]
    fake.advance(seconds=5)
    run(any_db, care.supervise_devices)  # the press was a message: the device is heard again
    with any_db.sessions() as session:
        silent = session.get(Incident, silent.id)
        assert silent is not None and silent.status == IncidentStatus.RESOLVED and silent.outcome == "restored"
        assert silent.active_key is None and silent.resolved_at == fake.now
        timeline = [e.kind.value for e in session.scalars(
            select(TimelineEntry).where(TimelineEntry.incident_id == silent.id).order_by(TimelineEntry.id))]
    assert timeline == ["opened", "restored"]
    fake.advance(seconds=181)
    assert run(any_db, care.supervise_devices) == 1, "a new silence is a new incident"


def test_a_device_is_not_judged_silent_for_time_the_centre_was_not_listening(any_db: Database) -> None:
    """The demo (or an ingest) restarted after an hour: the devices have not reconnected yet, but they
    were not silent while nobody listened. A window after the ingest is back they are judged again."""
    fake = Clock(T0)
    installed(any_db)
    feed(any_db, "C1", 1, "heartbeat")
    with transaction(any_db.sessions) as session:
        record_connect(session, client_id="alarmcentre-ingest", session_present=False)
        record_connect(session, client_id="alarmcentre-ingest-alarms", session_present=False)
    fake.advance(seconds=100)
    with transaction(any_db.sessions) as session:
        record_alive(session, client_id="alarmcentre-ingest")
    fake.advance(seconds=3600)  # the centre was down; its ingest's last sign of life is an hour old
    assert run(any_db, care.supervise_devices) == 0, "nobody listening: no silence can be judged"
    with transaction(any_db.sessions) as session:  # the ingest is back
        record_connect(session, client_id="alarmcentre-ingest", session_present=True)
    fake.advance(seconds=170)
    assert run(any_db, care.supervise_devices) == 0, "within a window of the centre's return"
    fake.advance(seconds=11)
    with transaction(any_db.sessions) as session:
        record_alive(session, client_id="alarmcentre-ingest")
    assert run(any_db, care.supervise_devices) == 1, "a whole window heard nothing: silent"


def test_offline_status_is_flagged_at_once_and_an_operator_resolution_holds(any_db: Database) -> None:
    fake = Clock(T0)
    _, device_id = installed(any_db, serial="W1")
    feed(any_db, "W1", 1, "heartbeat")
    fake.advance(seconds=10)
    with transaction(any_db.sessions) as session:
        process_message(session, message=InboundMessage(status_topic("W1"), b"offline", fake.now))
    assert run(any_db, care.supervise_devices) == 1, "the last will counts at once, inside the window"
    with transaction(any_db.sessions) as session:  # an operator resolves it: the client unplugged it on purpose
        incident = session.scalar(select(Incident).where(Incident.device_id == device_id))
        assert incident is not None
        incident.status, incident.active_key, incident.outcome = IncidentStatus.RESOLVED, None, "test"
    fake.advance(seconds=600)
    assert run(any_db, care.supervise_devices) == 0, "the same silence is not raised again"
    feed(any_db, "W1", 2, "heartbeat")
    fake.advance(seconds=181)
    assert run(any_db, care.supervise_devices) == 1


def test_devices_not_installed_are_not_supervised(any_db: Database) -> None:
    fake = Clock(T0)
    with transaction(any_db.sessions) as session:
        make_device(session, "STOCK-1")
        make_device(session, "GONE-1", status=DeviceStatus.RETIRED)
    fake.advance(days=3)
    assert run(any_db, care.supervise_devices) == 0


# -- batteries, mains ---------------------------------------------------------------------


def test_low_battery_opens_one_free_work_order_and_a_notice_and_a_new_battery_closes_them(any_db: Database) -> None:
    fake = Clock(T0)
    client_id, device_id = installed(any_db)
    feed(any_db, "C1", 1, "heartbeat", battery=40, rssi=-70)
    feed(any_db, "C1", 2, "heartbeat", battery=40, rssi=-71)  # no change worth a history row
    assert run(any_db, care.batteries) == 0
    feed(any_db, "C1", 3, "battery", level=19)
    assert run(any_db, care.batteries) == 1
    assert run(any_db, care.batteries) == 0
    feed(any_db, "C1", 4, "heartbeat", battery=50, rssi=-80)  # better, not a new battery
    run(any_db, care.batteries)
    (order,) = orders_of(any_db, WorkOrderKind.BATTERY_REPLACEMENT)
    assert order.status == WorkOrderStatus.OPEN and order.free_of_charge and order.client_id == client_id
    (notice,) = tasks_of(any_db, TaskKind.BATTERY_NOTICE)
    assert notice.status == TaskStatus.OPEN and notice.device_id == device_id and notice.client_id == client_id
    fake.advance(days=1)
    feed(any_db, "C1", 5, "battery", level=100)
    run(any_db, care.batteries)
    (order,) = orders_of(any_db, WorkOrderKind.BATTERY_REPLACEMENT)
    assert order.status == WorkOrderStatus.DONE and order.done_by == "system" and "100" in (order.resolution or "")
    assert tasks_of(any_db, TaskKind.BATTERY_NOTICE)[0].status == TaskStatus.CLOSED
    # The device's own low flag counts even at a higher level.
    feed(any_db, "C1", 6, "battery", level=60, low=True)
    assert run(any_db, care.batteries) == 1
    with any_db.sessions() as session:
        levels = [(r.level, r.low) for r in session.scalars(select(BatteryReading).order_by(BatteryReading.id))]
        rssi = [r.rssi for r in session.scalars(select(SignalReading).order_by(SignalReading.id))]
    assert levels == [(40, False), (19, True), (50, False), (100, False), (60, True)]
    assert rssi == [-70, -80]


def test_power_lost_longer_than_the_grace_opens_one_call_task_restored_closes_it(any_db: Database) -> None:
    fake = Clock(T0)
    _, device_id = installed(any_db)
    feed(any_db, "C1", 1, "power_lost")
    fake.advance(seconds=299)
    assert run(any_db, care.mains_power) == 0
    fake.advance(seconds=2)
    assert run(any_db, care.mains_power) == 1
    assert run(any_db, care.mains_power) == 0
    feed(any_db, "C1", 2, "power_restored")
    run(any_db, care.mains_power)
    (task,) = tasks_of(any_db, TaskKind.POWER_LOSS)
    assert task.status == TaskStatus.CLOSED and task.outcome == "power_restored" and task.device_id == device_id
    feed(any_db, "C1", 3, "power_lost")  # a short cut: back before the grace is over
    fake.advance(seconds=120)
    feed(any_db, "C1", 4, "power_restored")
    fake.advance(seconds=600)
    assert run(any_db, care.mains_power) == 0


# -- programming -------------------------------------------------------------------------


def test_config_validation_versions_and_pending_for_a_day_opens_one_work_order(any_db: Database) -> None:
    fake = Clock(T0)
    _, device_id = installed(any_db)
    with pytest.raises(ValueError, match="volume"):
        validate_config("generic", {"volume": 11})
    with pytest.raises(ValueError, match="fall_sensitivity"):
        validate_config("generic", {"fall_sensitivity": 3})  # only the ip-pendant has a fall sensor
    assert validate_config("ip-pendant", {"fall_sensitivity": 3, "alarm_numbers": ["20 000 001"]}) == {
        "fall_sensitivity": 3, "alarm_numbers": ["+37120000001"]}
    with transaction(any_db.sessions) as session:
        device = session.get(Device, device_id)
        assert device is not None
        devices.set_desired_config(session, device=device, config={"volume": 5, "language": "lv"}, actor="user:t")
        devices.set_desired_config(session, device=device, config={"volume": 7, "language": "lv"}, actor="user:t")
        assert devices.config_state(device) == devices.ConfigState.PENDING
    fake.advance(hours=24, seconds=-1)
    assert run(any_db, care.config_state) == 0
    fake.advance(seconds=2)
    assert run(any_db, care.config_state) == 1
    assert run(any_db, care.config_state) == 0
    feed(any_db, "C1", 1, "config_applied", version=1)  # an older version: still pending
    run(any_db, care.config_state)
    assert orders_of(any_db, WorkOrderKind.CONFIG_PENDING)[0].status == WorkOrderStatus.OPEN
    with any_db.sessions() as session:
        device = session.get(Device, device_id)
        assert device is not None
        assert devices.config_diff(session, device=device) == {"volume": {"desired": 7, "reported": 5}}
    feed(any_db, "C1", 2, "config_applied", version=2)
    run(any_db, care.config_state)
    (order,) = orders_of(any_db, WorkOrderKind.CONFIG_PENDING)
    assert order.status == WorkOrderStatus.DONE and "v2" in (order.resolution or "")


def test_a_refused_config_opens_a_work_order_at_once(any_db: Database) -> None:
    Clock(T0)
    _, device_id = installed(any_db)
    with transaction(any_db.sessions) as session:
        device = session.get(Device, device_id)
        assert device is not None
        devices.set_desired_config(session, device=device, config={"volume": 9}, actor="user:t")
    feed(any_db, "C1", 1, "config_failed", version=1, reason="speaker fault")
    with any_db.sessions() as session:
        device = session.get(Device, device_id)
        assert device is not None and devices.config_state(device) == devices.ConfigState.FAILED
    assert run(any_db, care.config_state) == 1
    (order,) = orders_of(any_db, WorkOrderKind.CONFIG_PENDING)
    assert order.details["state"] == "failed" and "speaker fault" in order.details["error"]


# -- monthly test, inventory -------------------------------------------------------------


def test_monthly_test_reminder_after_thirty_days_without_a_test_call(any_db: Database) -> None:
    fake = Clock(T0)
    installed(any_db, serial="M1")
    installed(any_db, serial="M2")
    feed(any_db, "M1", 1, "test_call")
    fake.advance(days=20)
    feed(any_db, "M2", 1, "test_call")
    fake.advance(days=10, seconds=1)
    with any_db.sessions() as session:
        assert [d.serial for d, _ in care.monthly_test_due(session, SETTINGS, fake.now)] == ["M1"]
    assert run(any_db, care.monthly_test_reminders) == 1
    assert run(any_db, care.monthly_test_reminders) == 0
    feed(any_db, "M1", 2, "test_call")
    run(any_db, care.monthly_test_reminders)
    (task,) = tasks_of(any_db, TaskKind.MONTHLY_TEST_REMINDER)
    assert task.status == TaskStatus.CLOSED and task.outcome == "test_call_received"


def test_swap_keeps_the_clients_history_and_configuration(any_db: Database) -> None:
    fake = Clock(T0)
    client_id, old_id = installed(any_db, serial="OLD-1")
    with transaction(any_db.sessions) as session:
        old = session.get(Device, old_id)
        assert old is not None
        devices.set_desired_config(session, device=old, config={"volume": 4}, actor="user:t")
        make_device(session, "NEW-1")
    feed(any_db, "OLD-1", 1, "button_press")
    fake.advance(days=2)
    with transaction(any_db.sessions) as session:
        old, new = devices.get_by_serial(session, "OLD-1"), devices.get_by_serial(session, "NEW-1")
        assert old is not None and new is not None
        devices.swap_device(session, faulty=old, replacement=new, reason="speaker broken", actor="user:t")
    with any_db.sessions() as session:
        old, new = devices.get_by_serial(session, "OLD-1"), devices.get_by_serial(session, "NEW-1")
        assert old is not None and new is not None
        assert (old.status, old.client_id) == (DeviceStatus.FAULTY, None)
        assert (new.status, new.client_id) == (DeviceStatus.INSTALLED, client_id)
        assert new.desired_config == {"volume": 4} and new.desired_config_version == 1
        history = [(a.device_id, a.client_id, a.unassigned_at is None) for a in devices.assignments(
            session, client_id=client_id)]
        assert history == [(old.id, client_id, False), (new.id, client_id, True)]
        assert session.scalar(select(func.count()).select_from(Incident).where(Incident.client_id == client_id)) == 1
        assert session.scalar(select(func.count()).select_from(DeviceAssignment)) == 2


def test_work_orders_through_the_api(any_db: Database) -> None:
    Clock(T0)
    _, device_id = installed(any_db, serial="WO-1")
    with transaction(any_db.sessions) as session:
        for name, role in (("tech", Role.TECHNICIAN), ("op", Role.OPERATOR)):
            create_user(session, username=name, password="password-123", role=role)
    http = TestClient(create_app(settings=SETTINGS, session_factory=any_db.sessions))

    def auth(user: str) -> dict[str, str]:
        token = http.post("/api/v1/auth/token", data={"username": user, "password": "password-123"})
        return {"Authorization": f"Bearer {token.json()['access_token']}"}

    tech, op = auth("tech"), auth("op")
    feed(any_db, "WO-1", 1, "battery", level=5)
    run(any_db, care.batteries)
    (order,) = http.get("/api/v1/work-orders", params={"status": "open"}, headers=tech).json()
    assert order["kind"] == "battery_replacement" and order["free_of_charge"] is True
    assert http.get("/api/v1/work-orders", headers=op).status_code == 403
    base = f"/api/v1/work-orders/{order['id']}"
    assert http.post(base + "/assign", json={}, headers=tech).json()["status"] == "assigned"
    http.post(base + "/notes", json={"text": "visit booked for Tuesday"}, headers=tech)
    done = http.post(base + "/done", json={"resolution": "battery replaced"}, headers=tech).json()
    assert done["status"] == "done" and done["done_by"] == "user:tech"
    assert [n["text"] for n in done["notes"]] == ["assigned to tech", "visit booked for Tuesday"]
    assert http.post(base + "/done", json={"resolution": "again"}, headers=tech).status_code == 409
    manual = http.post("/api/v1/work-orders", json={"serial": "WO-1", "kind": "repair", "summary": "loose mount"},
                       headers=tech)
    assert manual.status_code == 201 and manual.json()["device_id"] == device_id
    again = http.post("/api/v1/work-orders", json={"serial": "WO-1", "kind": "repair", "summary": "x"}, headers=tech)
    assert again.status_code == 409
    assert [r["level"] for r in http.get("/api/v1/devices/WO-1/battery", headers=op).json()] == [5]
    assert http.get("/api/v1/devices/WO-1/assignments", headers=op).json()[0]["reason"] == "installed"
    assert http.get("/api/v1/devices/WO-1/config", headers=op).json()["state"] == "in_sync"
    # Saved with no broker configured: kept, shown as not yet published.
    saved = http.put("/api/v1/devices/WO-1/config", json={"config": {"volume": 2}}, headers=tech).json()
    assert (saved["state"], saved["published"], saved["desired_version"]) == ("pending", False, 1)
    assert http.put("/api/v1/devices/WO-1/config", json={"config": {}}, headers=op).status_code == 403


def test_an_applied_heartbeat_interval_changes_the_supervision_window(any_db: Database) -> None:
    Clock(T0)
    _, device_id = installed(any_db)
    with transaction(any_db.sessions) as session:
        device = session.get(Device, device_id)
        assert device is not None
        before = device.heartbeat_interval_s
        devices.set_desired_config(session, device=device, config={"heartbeat_interval": 600}, actor="user:t")
    with any_db.sessions() as session:  # saved, not applied: the device still heartbeats as before
        device = session.get(Device, device_id)
        assert device is not None and device.heartbeat_interval_s == before
    feed(any_db, "C1", 1, "config_applied", version=1)
    with any_db.sessions() as session:
        device = session.get(Device, device_id)
        assert device is not None and device.heartbeat_interval_s == 600
