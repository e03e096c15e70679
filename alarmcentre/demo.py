"""Demo data for `alarmcentre demo`: a municipality, clients with contacts, devices, staff logins."""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre.clients.models import Client, Language
from alarmcentre.contacts.models import Contact, ContactKind
from alarmcentre.db import transaction
from alarmcentre.devices.models import Device, DeviceStatus
from alarmcentre.municipalities.models import Municipality
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User

log = logging.getLogger(__name__)

# Demo only: printed at start-up. Never use these passwords anywhere else.
DEMO_USERS = [
    ("operator", "operator-demo", Role.OPERATOR),
    ("supervisor", "supervisor-demo", Role.SUPERVISOR),
    ("technician", "technician-demo", Role.TECHNICIAN),
    ("admin", "admin-demo", Role.ADMIN),
]

_NAMES = ["Anna Bērziņa", "Jānis Kalniņš", "Marija Ozola", "Pēteris Liepiņš", "Velta Krūmiņa", "Ivars Zariņš",
          "Skaidrīte Vītola", "Gunārs Egle", "Olga Petrova", "Edgars Siliņš", "Ruta Jansone", "Voldemārs Lācis"]
_STREETS = ["Brīvības iela", "Lāčplēša iela", "Miera iela", "Dzirnavu iela", "Tērbatas iela", "Ģertrūdes iela"]


def demo_serial(index: int) -> str:
    return f"DEMO-{index:04d}"


def seed_demo(factory: sessionmaker[Session], *, devices: int) -> list[str]:
    """Create what is missing (safe to run at every start); returns the device serials."""
    with transaction(factory) as session:
        for username, password, role in DEMO_USERS:
            if session.scalar(select(User).where(User.username == username)) is None:
                users.create_user(session, username=username, password=password, role=role,
                                  full_name=username.capitalize())
        municipality = session.scalar(select(Municipality).where(Municipality.name == "Rīgas valstspilsēta"))
        if municipality is None:
            municipality = Municipality(name="Rīgas valstspilsēta", social_service="Rīgas Sociālais dienests",
                                        phone="+37167105185")
            session.add(municipality)
            session.flush()
        serials = [demo_serial(i) for i in range(1, devices + 1)]
        for index, serial in enumerate(serials):
            if session.scalar(select(Device).where(Device.serial == serial)) is not None:
                continue
            client = _demo_client(session, municipality.id, index)
            session.add(Device(serial=serial, model="demo-pendant", firmware="1.0.0", client_id=client.id,
                               status=DeviceStatus.INSTALLED, heartbeat_interval_s=60))
    log.info("demo data ready: %d devices", len(serials))
    return serials


def _demo_client(session: Session, municipality_id: int, index: int) -> Client:
    name = _NAMES[index % len(_NAMES)] + (f" {index // len(_NAMES) + 1}" if index >= len(_NAMES) else "")
    client = Client(
        municipality_id=municipality_id, full_name=name,
        birth_date=date(1930 + index % 25, 1 + index % 12, 1 + index % 28),
        address=f"{_STREETS[index % len(_STREETS)]} {index + 3}-{index % 40 + 1}, Rīga", phone=f"+3712{index:07d}",
        language=Language.LV if index % 4 else Language.EN, care_level=1 + index % 4,
    )
    session.add(client)
    session.flush()
    session.add_all([
        Contact(client_id=client.id, position=1, kind=ContactKind.RELATIVE, name=f"Meita/Daughter of {name}",
                phone=f"+3712{index + 5000000:07d}", has_key=True),
        Contact(client_id=client.id, position=2, kind=ContactKind.NEIGHBOUR, name="Kaimiņš/Neighbour",
                phone=f"+3712{index + 6000000:07d}"),
        Contact(client_id=client.id, position=3, kind=ContactKind.KEYS_SERVICE, name="Rezerves atslēgu dienests",
                phone="+37167000000", has_key=True),
    ])
    return client


def start_demo_fleet(url: str, serials: list[str], *, press_rate: float) -> Any:
    """Simulated devices for the demo, in a background thread; returns an object with stop()."""
    from alarmcentre_sim.fleet import Fleet

    fleet = Fleet(url, serials, press_rate=press_rate)
    fleet.start_in_thread()
    return fleet
