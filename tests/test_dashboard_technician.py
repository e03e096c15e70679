"""The technicians' dashboard pages: inventory, one device (history, programming, assign, swap) and
work orders, through real logins and forms, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from alarmcentre.app import create_app
from alarmcentre.canary import CANARY_MODEL
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.devices import service as devices
from alarmcentre.devices.models import Device, DeviceAssignment, DeviceConfigVersion, DeviceEvent, DeviceStatus
from alarmcentre.ingest.processor import process_message
from alarmcentre.runtime import Database
from alarmcentre.users.models import Role, User
from alarmcentre.workorders.models import WorkOrder, WorkOrderNote, WorkOrderStatus
from alarmcentre_dashboard.technician import step_line
from tests.factories import make_client, make_device, message
from tests.test_dashboard import PASSWORD_HASH, Browser


class Staff(Browser):
    """Takes the CSRF token from the device list, a page every staff role may open."""

    def login(self, username: str, *args: Any, **kwargs: Any) -> Any:
        response = super().login(username, *args, **kwargs)
        self.csrf = self.token_from(self.http.get("/ui/devices").text) or self.csrf
        return response

    def post(self, path: str, data: dict[str, str] | None = None, *, csrf: str | None = None) -> Any:
        return super().post(path, data, csrf=csrf)

    def page(self, path: str) -> Any:
        return self.http.get(path)


@dataclass
class Shop:
    db: Database
    settings: Settings
    app: Any
    marta: int
    janis: int
    incident: int

    def browser(self, username: str) -> Staff:
        browser = Staff(self.app)
        assert browser.login(username).status_code == 303
        return browser

    def device(self, serial: str) -> Device:
        with self.db.sessions() as session:
            device = devices.get_by_serial(session, serial)
            assert device is not None
            session.expunge(device)
            return device

    def count(self, model: type, *where: object) -> int:
        with self.db.sessions() as session:
            return session.scalar(select(func.count()).select_from(model).where(*where)) or 0

    def feed(self, serial: str, seq: int, type_: str = "heartbeat", **fields: object) -> None:
        with transaction(self.db.sessions) as session:
            process_message(session, message=message(serial, seq, type_, **fields), settings=self.settings)


@pytest.fixture
def shop(any_db: Database, tmp_path: Path) -> Shop:
    settings = Settings(data_dir=tmp_path)
    with transaction(any_db.sessions) as session:
        marta = make_client(session, name="Marta Kalniņa")
        janis = make_client(session, name="Jānis Bērziņš")
        pendant = make_device(session, "TECH-1", client=marta)
        pendant.model = "ip-pendant"
        make_device(session, "SPARE_1")  # "_" is a LIKE wildcard: the search must match it literally
        make_device(session, "SPARE-2")
        make_device(session, "BROKEN-1", status=DeviceStatus.FAULTY)
        # The centre's own test device (alarmcentre up creates it): never stock, never in the inventory.
        session.add(Device(serial="alarmcentre-canary", model=CANARY_MODEL, status=DeviceStatus.IN_REPAIR))
        session.add(DeviceAssignment(device_id=pendant.id, client_id=marta.id, reason="installed"))
        for name, role in [("op", Role.OPERATOR), ("tech", Role.TECHNICIAN), ("tech2", Role.TECHNICIAN),
                           ("admin", Role.ADMIN)]:
            session.add(User(username=name, password_hash=PASSWORD_HASH, role=role, full_name=name.upper()))
        ids = marta.id, janis.id
    with transaction(any_db.sessions) as session:
        incident = process_message(session, message=message("TECH-1", 1), settings=settings).incident_id
    assert incident is not None
    app = create_app(settings=settings, session_factory=any_db.sessions)
    found = Shop(any_db, settings, app, *ids, incident)
    for seq, (level, rssi) in enumerate([(90, -70), (60, -80), (15, -95)], start=2):
        found.feed("TECH-1", seq, battery=level, rssi=rssi)
    return found


def rows(html: str, testid: str, attribute: str) -> list[str]:
    """The attribute of every element with that data-testid, in page order."""
    pattern = rf'data-testid="{testid}"[^>]*?{attribute}="([^"]*)"|{attribute}="([^"]*)"[^>]*?data-testid="{testid}"'
    return [a or b for a, b in re.findall(pattern, html)]


def config_form(device: Device, **values: str) -> dict[str, str]:
    form = {"version": str(device.desired_config_version)}
    form.update({f"cfg_{key}": value for key, value in values.items()})
    return form


# -- the inventory ---------------------------------------------------------------------------


def test_the_inventory_lists_filters_and_searches(shop: Shop) -> None:
    tech = shop.browser("tech")
    page = tech.page("/ui/devices").text
    assert rows(page, "device-row", "data-serial") == ["BROKEN-1", "SPARE-2", "SPARE_1", "TECH-1"]
    assert "Ierīces" in page and "Sērijas numurs" in page  # technicians read it in Latvian by default
    tech_row = re.search(r'data-serial="TECH-1".*?</tr>', page, re.S)
    assert tech_row and "Marta Kalniņa" in tech_row.group(0) and "15 %" in tech_row.group(0)
    assert rows(tech.page("/ui/devices?state=in_stock").text, "device-row", "data-serial") == ["SPARE-2", "SPARE_1"]
    assert rows(tech.page("/ui/devices?state=faulty").text, "device-row", "data-serial") == ["BROKEN-1"]
    assert rows(tech.page("/ui/devices?state=in_repair").text, "device-row", "data-serial") == []
    assert rows(tech.page("/ui/devices?q=spare").text, "device-row", "data-serial") == ["SPARE-2", "SPARE_1"]
    assert rows(tech.page("/ui/devices?q=E_1").text, "device-row", "data-serial") == ["SPARE_1"]
    assert rows(tech.page("/ui/devices?q=kalni").text, "device-row", "data-serial") == ["TECH-1"]
    assert rows(tech.page("/ui/devices?q=%25%00x&state=bogus").text, "device-row", "data-serial") == []
    assert tech.page("/ui/devices/NO-SUCH").status_code == 404
    assert tech.page("/ui/devices/bad%00serial").status_code == 404
    assert tech.page("/ui/devices/SPARE_1?client_q=%C2%B2").status_code == 200  # "²".isdigit(), yet no number


# -- one device: history and programming ------------------------------------------------------


def test_the_device_page_shows_battery_and_signal_history_and_the_config_diff(shop: Shop) -> None:
    with transaction(shop.db.sessions) as session:
        device = devices.get_by_serial(session, "TECH-1")
        assert device is not None
        devices.set_desired_config(session, device=device, config={"volume": 5, "language": "lv"}, actor="user:t")
    shop.feed("TECH-1", 10, "config_applied", version=1)
    with transaction(shop.db.sessions) as session:
        device = devices.get_by_serial(session, "TECH-1")
        assert device is not None
        devices.set_desired_config(session, device=device, config={"volume": 7, "language": "lv"}, actor="user:t")
    page = shop.browser("tech").page("/ui/devices/TECH-1").text
    assert rows(page, "battery-row", "data-level") == ["15", "60", "90"]  # newest first
    assert rows(page, "signal-row", "data-rssi") == ["-95", "-80", "-70"]
    chart = re.search(r'data-testid="battery-chart".*?</svg>', page, re.S)
    assert chart and "<polyline points=" in chart.group(0)
    assert 'data-testid="signal-chart"' in page
    assert rows(page, "config-diff-row", "data-key") == ["volume"]
    assert rows(page, "config-same-row", "data-key") == ["language"]
    assert rows(page, "config-state", "data-state") == ["pending"]
    assert rows(page, "config-version-row", "data-version") == ["2", "1"]
    assert rows(page, "assignment-row", "data-client-id") == [str(shop.marta)]


def test_the_battery_line_holds_each_level_until_the_next_reading() -> None:
    from datetime import UTC, datetime, timedelta

    start = datetime(2026, 1, 1, tzinfo=UTC)
    line = step_line([(start, 100), (start + timedelta(hours=1), 50)], low=0, high=100,
                     until=start + timedelta(hours=2), width=100, height=10)
    assert line == "0.0,0.0 50.0,0.0 50.0,5.0 100.0,5.0"
    assert step_line([], low=0, high=100, until=start) == ""


class FakePublisher:
    def __init__(self, works: bool = True) -> None:
        self.works = works
        self.published: list[tuple[str, int, dict]] = []

    def publish_config(self, serial: str, version: int, config: dict) -> bool:
        self.published.append((serial, version, config))
        return self.works


def test_editing_the_configuration_validates_then_saves_a_new_pending_version(shop: Shop) -> None:
    tech = shop.browser("tech")
    page = tech.page("/ui/devices/TECH-1").text
    for key in ("alarm_numbers", "heartbeat_interval", "volume", "language", "fall_sensitivity"):
        assert f'data-testid="config-input-{key}"' in page, key  # every setting of the ip-pendant's schema
    device = shop.device("TECH-1")
    for bad, field in [({"volume": "11"}, "volume"), ({"volume": "loud"}, "volume"),
                       ({"alarm_numbers": "+371 2000 0001, not a phone"}, "alarm_numbers"),
                       ({"language": "de"}, "language")]:
        refused = tech.post("/ui/devices/TECH-1/config", config_form(device, **bad))
        assert refused.status_code == 422, bad
        assert f'data-testid="field-error-{field}"' in refused.text and 'data-testid="error"' in refused.text
        assert f'value="{bad[field]}"' in refused.text or bad[field] in refused.text
    assert shop.device("TECH-1").desired_config_version == 0 and shop.count(DeviceConfigVersion) == 0

    shop.app.state.config_publisher = publisher = FakePublisher()
    saved = tech.post("/ui/devices/TECH-1/config", config_form(
        device, volume="6", language="ru", fall_sensitivity="3", alarm_numbers="20 000 001; +371 20000002",
        heartbeat_interval=""))
    assert saved.status_code == 303 and saved.headers["location"] == "/ui/devices/TECH-1#programming"
    device = shop.device("TECH-1")
    expected = {"volume": 6, "language": "ru", "fall_sensitivity": 3,
                "alarm_numbers": ["+37120000001", "+37120000002"]}
    assert device.desired_config == expected and device.desired_config_version == 1
    assert publisher.published == [("TECH-1", 1, expected)] and device.config_published_version == 1
    with shop.db.sessions() as session:
        version = session.scalar(select(DeviceConfigVersion))
        assert version is not None and version.created_by == "user:tech" and version.config == expected
    page = tech.page("/ui/devices/TECH-1").text
    assert rows(page, "config-state", "data-state") == ["pending"]
    assert sorted(rows(page, "config-diff-row", "data-key")) == sorted(expected)
    assert 'name="cfg_volume" value="6"' in page

    # Broker away: the version is kept and shown as not yet sent.
    shop.app.state.config_publisher = FakePublisher(works=False)
    assert tech.post("/ui/devices/TECH-1/config", config_form(device, volume="2")).status_code == 303
    device = shop.device("TECH-1")
    assert device.desired_config == {"volume": 2} and device.config_published_version == 1
    assert 'data-testid="published"><span class="badge alert"' in tech.page("/ui/devices/TECH-1").text

    # A form of an older version would overwrite a colleague's save: refused, nothing saved.
    stale = tech.post("/ui/devices/TECH-1/config", config_form(shop.device("TECH-1"), volume="9") | {"version": "1"})
    assert stale.status_code == 409 and shop.device("TECH-1").desired_config_version == 2
    assert 'data-testid="error"' in stale.text and 'name="version" value="2"' in stale.text


# -- assign, swap, status -----------------------------------------------------------------------


def test_assign_and_swap_keep_the_clients_history(shop: Shop) -> None:
    tech = shop.browser("tech")
    found = tech.page(f"/ui/devices/SPARE_1?client_q={'Jānis'}").text
    assert rows(found, "client-result", "data-client-id") == [str(shop.janis)]
    assert rows(tech.page(f"/ui/devices/SPARE_1?client_q={shop.janis}").text, "client-result",
                "data-client-id") == [str(shop.janis)]
    assert tech.post("/ui/devices/SPARE_1/assign", {"client_id": "999999"}).status_code == 422
    assert tech.post("/ui/devices/SPARE_1/assign", {"client_id": "x"}).status_code == 422
    assert shop.device("SPARE_1").client_id is None
    assert tech.post("/ui/devices/SPARE_1/assign", {"client_id": str(shop.janis)}).status_code == 303
    spare = shop.device("SPARE_1")
    assert spare.client_id == shop.janis and spare.status == DeviceStatus.INSTALLED
    assert tech.post("/ui/devices/SPARE_1/unassign").status_code == 303
    assert shop.device("SPARE_1").status == DeviceStatus.IN_STOCK
    assert tech.post("/ui/devices/SPARE_1/unassign").status_code == 409

    with transaction(shop.db.sessions) as session:
        device = devices.get_by_serial(session, "TECH-1")
        assert device is not None
        devices.set_desired_config(session, device=device, config={"volume": 4}, actor="user:t")
    events_before = shop.count(DeviceEvent, DeviceEvent.device_id == shop.device("TECH-1").id)
    # Refused swaps change nothing: not in stock, no reason, unknown replacement.
    for form, code in [({"replacement_serial": "BROKEN-1", "reason": "dead"}, 409),
                       ({"replacement_serial": "SPARE-2", "reason": ""}, 422),
                       ({"replacement_serial": "NOPE-9", "reason": "dead"}, 422)]:
        refused = tech.post("/ui/devices/TECH-1/swap", form)
        assert refused.status_code == code and 'data-testid="error"' in refused.text, form
    assert shop.device("TECH-1").client_id == shop.marta and shop.device("SPARE-2").status == DeviceStatus.IN_STOCK

    swapped = tech.post("/ui/devices/TECH-1/swap", {"replacement_serial": "SPARE-2", "reason": "speaker dead"})
    assert swapped.status_code == 303 and swapped.headers["location"] == "/ui/devices/SPARE-2"
    old, new = shop.device("TECH-1"), shop.device("SPARE-2")
    assert old.status == DeviceStatus.FAULTY and old.client_id is None
    assert new.status == DeviceStatus.INSTALLED and new.client_id == shop.marta
    assert new.desired_config == {"volume": 4} and new.desired_config_version == 1
    assert shop.count(DeviceEvent, DeviceEvent.device_id == old.id) == events_before  # the events stay
    old_page, new_page = tech.page("/ui/devices/TECH-1").text, tech.page("/ui/devices/SPARE-2").text
    assert rows(old_page, "assignment-row", "data-current") == ["no"]
    assert rows(old_page, "assignment-row", "data-client-id") == [str(shop.marta)]
    assert rows(new_page, "assignment-row", "data-current") == ["yes"]
    assert "replaces TECH-1: speaker dead" in new_page
    with shop.db.sessions() as session:
        history = session.scalars(select(DeviceAssignment).where(DeviceAssignment.client_id == shop.marta)
                                  .order_by(DeviceAssignment.id)).all()
        assert [(a.device_id, a.unassigned_at is None) for a in history] == [(old.id, False), (new.id, True)]

    assert tech.post("/ui/devices/TECH-1/status", {"device_status": "in_repair"}).status_code == 303
    assert shop.device("TECH-1").status == DeviceStatus.IN_REPAIR
    retire = tech.post("/ui/devices/SPARE-2/status", {"device_status": "retired"})
    assert retire.status_code == 409 and shop.device("SPARE-2").status == DeviceStatus.INSTALLED
    assert tech.post("/ui/devices/SPARE-2/status", {"device_status": "lost"}).status_code == 422


# -- work orders --------------------------------------------------------------------------------


def test_work_orders_open_take_note_hand_on_and_finish(shop: Shop) -> None:
    tech = shop.browser("tech")
    opened = tech.post("/ui/devices/TECH-1/workorders", {"kind": "repair", "summary": "Loose strap"})
    assert opened.status_code == 303
    path = opened.headers["location"]
    order_id = int(path.rsplit("/", 1)[1])
    again = tech.post("/ui/devices/TECH-1/workorders", {"kind": "repair", "summary": "Twice"})
    assert again.status_code == 409 and shop.count(WorkOrder) == 1
    assert rows(tech.page("/ui/workorders").text, "workorder-row", "data-id") == [str(order_id)]
    assert rows(tech.page("/ui/workorders?state=done").text, "workorder-row", "data-id") == []
    assert rows(tech.page("/ui/workorders?state=open").text, "workorder-row", "data-id") == [str(order_id)]

    assert tech.post(f"{path}/notes", {"text": "  "}).status_code == 422
    assert tech.post(f"{path}/notes", {"text": "Strap ordered"}).status_code == 303
    assert tech.post(f"{path}/assign").status_code == 303
    assert rows(tech.page("/ui/workorders?state=assigned&mine=1").text, "workorder-row", "data-id") == [str(order_id)]
    with shop.db.sessions() as session:
        operator_id = session.scalar(select(User.id).where(User.username == "op"))
        other_id = session.scalar(select(User.id).where(User.username == "tech2"))
    refused = tech.post(f"{path}/assign", {"user_id": str(operator_id)})
    assert refused.status_code == 422 and 'data-testid="error"' in refused.text
    assert tech.post(f"{path}/assign", {"user_id": str(other_id)}).status_code == 303
    assert rows(tech.page("/ui/workorders?state=assigned&mine=1").text, "workorder-row", "data-id") == []
    assert tech.post(f"{path}/done", {"resolution": ""}).status_code == 422
    assert tech.post(f"{path}/done", {"resolution": "New strap fitted"}).status_code == 303
    assert tech.post(f"{path}/done", {"resolution": "again"}).status_code == 409
    with shop.db.sessions() as session:
        order = session.get(WorkOrder, order_id)
        assert order is not None and order.status == WorkOrderStatus.DONE and order.done_by == "user:tech"
        assert order.resolution == "New strap fitted" and order.assigned_to == other_id
    page = tech.page(path).text
    assert rows(page, "workorder-status", "data-status") == ["done"] and 'data-testid="done-form"' not in page
    assert page.count('data-testid="workorder-note"') == 3  # the note and the two assignments
    assert "Strap ordered" in page and "assigned to tech2" in page
    assert rows(tech.page("/ui/workorders?state=done").text, "workorder-row", "data-id") == [str(order_id)]
    assert tech.page("/ui/workorders/999999").status_code == 404
    assert shop.browser("admin").page(path).status_code == 200


# -- CSRF and roles -------------------------------------------------------------------------------


def test_forms_without_the_csrf_token_change_nothing(shop: Shop) -> None:
    tech = shop.browser("tech")
    with transaction(shop.db.sessions) as session:
        device = session.scalar(select(Device).where(Device.serial == "TECH-1"))
        assert device is not None
        order = WorkOrder(kind="repair", device_id=device.id, client_id=device.client_id, summary="x")
        session.add(order)
        session.flush()
        order_id = order.id
    device = shop.device("TECH-1")
    for path, form in [("/ui/devices/TECH-1/config", config_form(device, volume="3")),
                       ("/ui/devices/SPARE_1/assign", {"client_id": str(shop.janis)}),
                       ("/ui/devices/TECH-1/swap", {"replacement_serial": "SPARE-2", "reason": "x"}),
                       ("/ui/devices/BROKEN-1/status", {"device_status": "retired"}),
                       ("/ui/devices/TECH-1/workorders", {"kind": "other", "summary": "x"}),
                       (f"/ui/workorders/{order_id}/notes", {"text": "x"}),
                       (f"/ui/workorders/{order_id}/assign", {}),
                       (f"/ui/workorders/{order_id}/done", {"resolution": "x"})]:
        for token in ("", "0" * 40):
            refused = tech.post(path, form, csrf=token)
            assert refused.status_code == 403 and 'data-code="csrf"' in refused.text, path
    assert shop.device("TECH-1").desired_config_version == 0 and shop.device("TECH-1").client_id == shop.marta
    assert shop.device("SPARE_1").client_id is None and shop.device("BROKEN-1").status == DeviceStatus.FAULTY
    assert shop.count(WorkOrder) == 1 and shop.count(WorkOrderNote) == 0
    with shop.db.sessions() as session:
        stored = session.get(WorkOrder, order_id)
        assert stored is not None and stored.status == WorkOrderStatus.OPEN


def test_operators_read_devices_and_nothing_more_technicians_no_incidents(shop: Shop) -> None:
    operator = shop.browser("op")
    assert rows(operator.page("/ui/devices").text, "device-row", "data-serial")[-1] == "TECH-1"
    page = operator.page("/ui/devices/TECH-1")
    assert page.status_code == 200 and 'data-testid="battery-row"' in page.text
    for form_id in ("config-form", "swap-form", "assign-form", "status-form", "workorder-create-form"):
        assert f'data-testid="{form_id}"' not in page.text, form_id
    device = shop.device("TECH-1")
    for path, form in [("/ui/devices/TECH-1/config", config_form(device, volume="3")),
                       ("/ui/devices/TECH-1/unassign", {}),
                       ("/ui/devices/BROKEN-1/status", {"device_status": "retired"})]:
        assert operator.post(path, form).status_code == 403, path
    assert shop.device("TECH-1").desired_config_version == 0 and shop.device("TECH-1").client_id == shop.marta
    for path in ("/ui/workorders", "/ui/workorders/1"):
        response = operator.page(path)
        assert response.status_code == 403 and 'data-testid="error-page"' in response.text

    tech = shop.browser("tech")
    for path in (f"/ui/incidents/{shop.incident}", "/ui/incidents", "/ui/queue"):
        assert tech.page(path).status_code == 403, path
    assert tech.post(f"/ui/incidents/{shop.incident}/acknowledge").status_code == 403
    assert tech.page("/ui/devices/TECH-1").status_code == 200 and tech.page("/ui/workorders").status_code == 200


def test_the_demo_devices_have_their_assignment_on_record(sqlite_db: Database) -> None:
    """The device page said "Never with a client" for a demo device it showed installed at a client."""
    from alarmcentre.demo import seed_demo

    serials = seed_demo(sqlite_db.sessions, devices=3)
    with sqlite_db.sessions() as session:
        for serial in serials:
            device = devices.get_by_serial(session, serial)
            assert device is not None and device.status == DeviceStatus.INSTALLED and device.client_id is not None
            (current,) = [a for a in devices.assignments(session, device=device) if a.unassigned_at is None]
            assert current.client_id == device.client_id
