"""Device registration and assignment. Functions take the session first and never commit."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from alarmcentre.clients.models import Client
from alarmcentre.devices.models import Device, DeviceEvent, DeviceStatus
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
        if value is None and name != "firmware":
            raise ValueError(f"{name} cannot be empty")
        setattr(device, name, value)
    if device.status == DeviceStatus.RETIRED and device.client_id is not None:
        raise DeviceConflict("take the device back from its client before retiring it")
    session.flush()
    return device


def assign_device(session: Session, *, device: Device, client_id: int | None) -> Device:
    """Give a device to a client (it becomes installed) or take it back (in stock)."""
    if client_id is None:
        device.client_id = None
        if device.status == DeviceStatus.INSTALLED:
            device.status = DeviceStatus.IN_STOCK
        session.flush()
        return device
    if session.get(Client, client_id) is None:
        raise LookupError(f"client {client_id} does not exist")
    if device.status == DeviceStatus.RETIRED:
        raise DeviceConflict("a retired device cannot be assigned")
    device.client_id = client_id
    device.status = DeviceStatus.INSTALLED
    session.flush()
    return device


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
