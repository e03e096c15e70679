"""Demo data for `alarmcentre demo`: a municipality, clients with contacts, devices, staff logins."""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from cryptography.fernet import MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre.clients.access import set_access_info
from alarmcentre.clients.models import Client, Language
from alarmcentre.contacts.models import Contact, ContactKind
from alarmcentre.db import transaction
from alarmcentre.devices.models import Device
from alarmcentre.devices.service import assign_device
from alarmcentre.dispatch.models import Channel, PlanStep, ResourceKind, SharedResource
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


class NotADemoDatabase(RuntimeError):
    """The database holds clients the demo did not make: seeding known passwords into it would open it."""


def check_demo_database(session: Session) -> None:
    """A database the demo may seed: one without clients, or one the demo seeded before (its admin
    login with the demo's password is the mark). Anything else may hold real people."""
    if session.scalar(select(Client.id).limit(1)) is None:
        return
    username, password, _role = next(user for user in DEMO_USERS if user[2] == Role.ADMIN)
    if users.authenticate(session, username=username, password=password) is None:
        raise NotADemoDatabase(
            "this database holds clients that the demo did not make, and `alarmcentre demo` would add staff "
            "logins with published passwords to it: run `alarmcentre up` on it, or the demo on a database of its "
            "own (another ALARMCENTRE_DATA_DIR or ALARMCENTRE_DATABASE_URL)")


def seed_demo(factory: sessionmaker[Session], *, devices: int, access_cipher: MultiFernet | None = None) -> list[str]:
    """Create what is missing (safe to run at every start); returns the device serials.
    With `access_cipher`, new demo clients get door and key-safe codes to reveal.
    NotADemoDatabase, with nothing written, for a database that may hold real people."""
    with transaction(factory) as session:
        check_demo_database(session)
        for username, password, role in DEMO_USERS:
            if session.scalar(select(User).where(User.username == username)) is None:
                user = users.create_user(session, username=username, password=password, role=role,
                                         full_name=username.capitalize())
                if role == Role.SUPERVISOR:  # texted (into the outbox) when an alarm waits too long
                    user.phone, user.on_call = "+37129000000", True
                elif role == Role.OPERATOR:  # the desk phone the centre rings to answer a call (the outbox's line)
                    user.phone = "+37129000001"
        municipality = session.scalar(select(Municipality).where(Municipality.name == "Rīgas valstspilsēta"))
        if municipality is None:
            municipality = Municipality(name="Rīgas valstspilsēta", social_service="Rīgas Sociālais dienests",
                                        phone="+37167105185")
            session.add(municipality)
            session.flush()
        keys, ambulance = _demo_resources(session, municipality.id)
        serials = [demo_serial(i) for i in range(1, devices + 1)]
        for index, serial in enumerate(serials):
            if session.scalar(select(Device).where(Device.serial == serial)) is not None:
                continue
            client = _demo_client(session, municipality.id, index, keys=keys, ambulance=ambulance)
            if access_cipher is not None:
                admin = session.scalar(select(User).where(User.role == Role.ADMIN).order_by(User.id).limit(1))
                if admin is not None:
                    set_access_info(session, access_cipher, client=client, user=admin,
                                    text=f"Durvju kods {1000 + index * 37}, atslēgu seifs {2000 + index * 53} "
                                         "pie pastkastītes / door code, key safe by the mailbox")
            device = Device(serial=serial, model="demo-pendant", firmware="1.0.0", heartbeat_interval_s=60)
            session.add(device)
            session.flush()
            # Assigned the way a technician assigns one, so its page shows who has had it since when.
            assign_device(session, device=device, client_id=client.id, reason="demo")
        _demo_scaip_unit(session, serials)
    log.info("demo data ready: %d devices", len(serials))
    return serials


DEMO_SCAIP_CID = DEMO_DC09_ACCOUNT = "1001"


def _demo_scaip_unit(session: Session, serials: list[str]) -> None:
    """The first demo device also answers as a SCAIP unit (cid 1001, no password) and a DC-09 panel (account
    1001, no key): the demo is not production. A tester sends it alarms with `alarmcentre-sim scaip 1001` or
    `alarmcentre-sim dc09 1001` (docs/scaip.md, docs/dc09.md)."""
    device = session.scalar(select(Device).where(Device.serial == serials[0])) if serials else None
    if device is None:
        return
    if session.scalar(select(Device).where(Device.scaip_cid.is_not(None))) is None:
        device.scaip_cid = DEMO_SCAIP_CID
    if session.scalar(select(Device).where(Device.dc09_account.is_not(None))) is None:
        device.dc09_account = DEMO_DC09_ACCOUNT


def _demo_resources(session: Session, municipality_id: int) -> tuple[SharedResource, SharedResource]:
    found = {r.kind: r for r in session.scalars(select(SharedResource))}
    keys = found.get(ResourceKind.KEYS_SERVICE) or SharedResource(
        municipality_id=municipality_id, kind=ResourceKind.KEYS_SERVICE, name="Rezerves atslēgu dienests",
        phone="+37167000000")
    ambulance = found.get(ResourceKind.EMERGENCY_SERVICES) or SharedResource(
        kind=ResourceKind.EMERGENCY_SERVICES, name="Neatliekamā medicīniskā palīdzība", phone="113")
    session.add_all([keys, ambulance])
    session.flush()
    return keys, ambulance


def _demo_client(
    session: Session, municipality_id: int, index: int, *, keys: SharedResource, ambulance: SharedResource
) -> Client:
    name = _NAMES[index % len(_NAMES)] + (f" {index // len(_NAMES) + 1}" if index >= len(_NAMES) else "")
    client = Client(
        municipality_id=municipality_id, full_name=name,
        birth_date=date(1930 + index % 25, 1 + index % 12, 1 + index % 28),
        address=f"{_STREETS[index % len(_STREETS)]} {index + 3}-{index % 40 + 1}, Rīga", phone=f"+3712{index:07d}",
        language=Language.LV if index % 4 else Language.EN, care_level=1 + index % 4,
    )
    session.add(client)
    session.flush()
    relative = Contact(client_id=client.id, position=1, kind=ContactKind.RELATIVE, name=f"Meita/Daughter of {name}",
                       phone=f"+3712{index + 5000000:07d}", has_key=True)
    neighbour = Contact(client_id=client.id, position=2, kind=ContactKind.NEIGHBOUR, name="Kaimiņš/Neighbour",
                        phone=f"+3712{index + 6000000:07d}", language=Language.EN)
    session.add_all([relative, neighbour])
    session.flush()
    # The response plan: relative, neighbour, keys service by SMS (each moves on by itself after
    # its wait), then the operator phones 113.
    session.add_all([
        PlanStep(client_id=client.id, position=1, contact_id=relative.id, channel=Channel.SMS, wait_seconds=180),
        PlanStep(client_id=client.id, position=2, contact_id=neighbour.id, channel=Channel.SMS, wait_seconds=180),
        PlanStep(client_id=client.id, position=3, resource_id=keys.id, channel=Channel.SMS, wait_seconds=600),
        PlanStep(client_id=client.id, position=4, resource_id=ambulance.id, channel=Channel.OPERATOR_TASK,
                 automatic=False, instruction="zvaniet 113 / call 113"),
    ])
    return client


def start_demo_fleet(address: str, passwords: dict[str, str], serials: list[str], *, press_rate: float) -> Any:
    """Simulated devices for the demo, in a background thread, each logged in as its serial with its
    own password; returns an object with stop()."""
    from alarmcentre_sim.connection import BrokerAddress
    from alarmcentre_sim.fleet import Fleet

    fleet = Fleet(BrokerAddress.from_url(address, passwords=passwords), serials, press_rate=press_rate)
    fleet.start_in_thread()
    return fleet
