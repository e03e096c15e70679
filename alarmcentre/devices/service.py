"""Device registration and assignment. Functions take the session first and never commit."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from alarmcentre import clock
from alarmcentre.canary import CANARY_MODEL
from alarmcentre.clients.models import Client
from alarmcentre.db import LIKE_ESCAPE, contains_pattern
from alarmcentre.devices.catalogue import validate_config
from alarmcentre.devices.models import (
    BatteryReading,
    Device,
    DeviceAssignment,
    DeviceConfigVersion,
    DeviceEvent,
    DeviceStatus,
    SignalReading,
)
from alarmcentre.devices.schemas import DeviceIn, DevicePatch
from alarmcentre.ingest.protocol import DEVICE_ID_PATTERN


class DeviceConflict(ValueError):
    pass


def register_device(session: Session, *, data: DeviceIn) -> Device:
    if session.scalar(select(Device).where(Device.serial == data.serial)) is not None:
        raise DeviceConflict(f"device {data.serial} is registered already")
    device = Device(**data.model_dump(exclude={"client_id"}))
    session.add(device)
    session.flush()
    if data.client_id is not None:
        assign_device(session, device=device, client_id=data.client_id)
    return device


def update_device(session: Session, *, device: Device, patch: DevicePatch) -> Device:
    changes = patch.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if value is None and name not in ("firmware", "sim_number"):
            raise ValueError(f"{name} cannot be empty")
        setattr(device, name, value)
    if device.status == DeviceStatus.RETIRED and device.client_id is not None:
        raise DeviceConflict("take the device back from its client before retiring it")
    session.flush()
    return device


def assign_device(session: Session, *, device: Device, client_id: int | None, reason: str = "") -> Device:
    """Give a device to a client (it becomes installed) or take it back (in stock); history is kept."""
    if client_id is None:
        _end_assignment(session, device)
        device.client_id = None
        if device.status == DeviceStatus.INSTALLED:
            device.status = DeviceStatus.IN_STOCK
        session.flush()
        return device
    if session.get(Client, client_id) is None:
        raise LookupError(f"client {client_id} does not exist")
    if device.status == DeviceStatus.RETIRED:
        raise DeviceConflict("a retired device cannot be assigned")
    if device.model == CANARY_MODEL:  # its presses are never alarms: a client wearing it would be unheard
        raise DeviceConflict("the canary is the centre's own test device and cannot be assigned to a client")
    if device.client_id != client_id:
        _end_assignment(session, device)
        session.add(DeviceAssignment(device_id=device.id, client_id=client_id, assigned_at=clock.now(),
                                     reason=reason[:200]))
    device.client_id = client_id
    device.status = DeviceStatus.INSTALLED
    session.flush()
    return device


def _end_assignment(session: Session, device: Device) -> None:
    session.execute(update(DeviceAssignment)
                    .where(DeviceAssignment.device_id == device.id, DeviceAssignment.unassigned_at.is_(None))
                    .values(unassigned_at=clock.now()).execution_options(synchronize_session=False))


def swap_device(session: Session, *, faulty: Device, replacement: Device, reason: str, actor: str) -> Device:
    """Replace a client's faulty device: the old one goes to FAULTY, the new one takes over the client
    and the desired configuration. The client's history stays: events stay with the device that sent
    them, and the assignments say who had which device when."""
    if faulty.client_id is None:
        raise DeviceConflict(f"device {faulty.serial} is not assigned to a client")
    if replacement.id == faulty.id:
        raise DeviceConflict("a device cannot replace itself")
    if replacement.client_id is not None or replacement.status != DeviceStatus.IN_STOCK:
        raise DeviceConflict(f"device {replacement.serial} is not in stock")
    client_id = faulty.client_id
    assign_device(session, device=faulty, client_id=None, reason=reason)
    faulty.status = DeviceStatus.FAULTY
    assign_device(session, device=replacement, client_id=client_id, reason=f"replaces {faulty.serial}: {reason}")
    if faulty.desired_config:
        set_desired_config(session, device=replacement, config=dict(faulty.desired_config), actor=actor)
    session.flush()
    return replacement


def assignments(session: Session, *, device: Device | None = None,
                client_id: int | None = None) -> Sequence[DeviceAssignment]:
    query = select(DeviceAssignment).order_by(DeviceAssignment.assigned_at, DeviceAssignment.id)
    if device is not None:
        query = query.where(DeviceAssignment.device_id == device.id)
    if client_id is not None:
        query = query.where(DeviceAssignment.client_id == client_id)
    return session.scalars(query).all()


def battery_history(session: Session, *, device: Device, limit: int = 500) -> Sequence[BatteryReading]:
    return session.scalars(select(BatteryReading).where(BatteryReading.device_id == device.id)
                           .order_by(BatteryReading.at.desc(), BatteryReading.id.desc()).limit(limit)).all()


def signal_history(session: Session, *, device: Device, limit: int = 500) -> Sequence[SignalReading]:
    return session.scalars(select(SignalReading).where(SignalReading.device_id == device.id)
                           .order_by(SignalReading.at.desc(), SignalReading.id.desc()).limit(limit)).all()


# -- programming: desired (centre) versus reported (device) ------------------------------


class ConfigState(StrEnum):
    IN_SYNC = "in_sync"
    PENDING = "pending"
    FAILED = "failed"


def config_state(device: Device) -> ConfigState:
    if device.desired_config_version == 0 or (device.reported_config_version or 0) >= device.desired_config_version:
        return ConfigState.IN_SYNC
    if device.config_failed_version == device.desired_config_version:
        return ConfigState.FAILED
    return ConfigState.PENDING


def set_desired_config(session: Session, *, device: Device, config: dict[str, Any], actor: str) -> DeviceConfigVersion:
    """Validate against the model's schema and store as the next version (publishing is the caller's)."""
    checked = validate_config(device.model, config)
    # The row lock orders two technicians saving at once; the unique (device, version) backs it up.
    session.refresh(device, with_for_update=True)
    version = device.desired_config_version + 1
    row = DeviceConfigVersion(device_id=device.id, version=version, config=checked, created_at=clock.now(),
                              created_by=actor)
    session.add(row)
    device.desired_config, device.desired_config_version = checked, version
    device.config_changed_at = clock.now()
    session.flush()
    return row


def mark_published(session: Session, *, device_id: int, version: int) -> None:
    """The broker holds `version` retained; never move backwards (a slower publisher may finish last)."""
    session.execute(update(Device).where(Device.id == device_id, Device.config_published_version <= version)
                    .values(config_published_version=version, config_published_at=clock.now())
                    .execution_options(synchronize_session=False))


def config_versions(session: Session, *, device: Device, limit: int = 100) -> Sequence[DeviceConfigVersion]:
    return session.scalars(select(DeviceConfigVersion).where(DeviceConfigVersion.device_id == device.id)
                           .order_by(DeviceConfigVersion.version.desc()).limit(limit)).all()


def config_diff(session: Session, *, device: Device) -> dict[str, dict[str, Any]]:
    """Settings whose desired value differs from what the device runs (the version it reported)."""
    reported: dict[str, Any] = {}
    if device.reported_config_version:
        row = session.scalar(select(DeviceConfigVersion).where(
            DeviceConfigVersion.device_id == device.id, DeviceConfigVersion.version == device.reported_config_version))
        reported = dict(row.config) if row is not None else {}
    desired = dict(device.desired_config or {})
    return {key: {"desired": desired.get(key), "reported": reported.get(key)}
            for key in sorted(set(desired) | set(reported)) if desired.get(key) != reported.get(key)}


def get_by_serial(session: Session, serial: str) -> Device | None:
    if not re.fullmatch(DEVICE_ID_PATTERN, serial):
        return None  # no device can have it (and PostgreSQL refuses text with NUL in a query)
    return session.scalar(select(Device).where(Device.serial == serial))


def list_devices(
    session: Session, *, client_id: int | None = None, status: DeviceStatus | None = None,
    limit: int = 100, offset: int = 0,
) -> Sequence[Device]:
    query = select(Device).order_by(Device.serial).limit(limit).offset(offset)
    if client_id is not None:
        query = query.where(Device.client_id == client_id)
    if status is not None:
        query = query.where(Device.status == status)
    return session.scalars(query).all()


def recent_events(session: Session, *, device: Device, limit: int = 100) -> Sequence[DeviceEvent]:
    return session.scalars(
        select(DeviceEvent).where(DeviceEvent.device_id == device.id).order_by(DeviceEvent.id.desc()).limit(limit)
    ).all()


def get_device(session: Session, device_id: int) -> Device | None:
    return session.get(Device, device_id)


def lock(session: Session, device: Device) -> Device:
    """Re-read the device and hold it for the rest of the transaction: two technicians acting on one
    device at once, the second sees what the first did."""
    session.refresh(device, with_for_update=True)
    return device


@dataclass(frozen=True)
class InventoryRow:
    device: Device
    client: Client | None


def inventory(session: Session, *, search: str = "", status: DeviceStatus | None = None,
              limit: int = 300) -> list[InventoryRow]:
    """The technicians' inventory by serial; `search` matches a serial or the client's name.

    The canary is the centre's own test device, not stock to install or repair: its state is the
    banner's, not the inventory's (it showed there as "in repair")."""
    query = (select(Device, Client).outerjoin(Client, Client.id == Device.client_id)
             .where(Device.model != CANARY_MODEL).order_by(Device.serial).limit(limit))
    if status is not None:
        query = query.where(Device.status == status)
    if search:
        query = query.where(or_(Device.serial.ilike(contains_pattern(search), escape=LIKE_ESCAPE),
                                Client.full_name.ilike(contains_pattern(search), escape=LIKE_ESCAPE)))
    return [InventoryRow(device, client) for device, client in session.execute(query).all()]


def inventory_counts(session: Session) -> dict[DeviceStatus, int]:
    """Devices per status, the canary left out as in `inventory`."""
    return {status: count for status, count in session.execute(
        select(Device.status, func.count()).where(Device.model != CANARY_MODEL).group_by(Device.status)).all()}


def spare_serials(session: Session, *, excluding: int, limit: int = 200) -> Sequence[str]:
    """Devices in stock with nobody: what a faulty one can be swapped for."""
    return session.scalars(
        select(Device.serial).where(Device.status == DeviceStatus.IN_STOCK, Device.client_id.is_(None),
                                    Device.id != excluding).order_by(Device.serial).limit(limit)).all()
