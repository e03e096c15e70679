"""Device routes: technicians and admins register and assign; all staff read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from sqlalchemy.orm import Session

from alarmcentre.api_deps import DEVICE_EDITORS, STAFF, SessionDep, require_roles
from alarmcentre.devices import service
from alarmcentre.devices.models import (
    BatteryReading,
    Device,
    DeviceAssignment,
    DeviceEvent,
    DeviceStatus,
    SignalReading,
)
from alarmcentre.devices.publisher import save_and_publish_config
from alarmcentre.devices.schemas import (
    AssignIn,
    AssignmentOut,
    BatteryReadingOut,
    ConfigIn,
    ConfigStateOut,
    ConfigVersionOut,
    DeviceEventOut,
    DeviceIn,
    DeviceOut,
    DevicePatch,
    SignalReadingOut,
    SwapIn,
)
from alarmcentre.schemas import MAX_ID, Id
from alarmcentre.users.models import User

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
Reader = Annotated[User, Depends(require_roles(*STAFF))]
Editor = Annotated[User, Depends(require_roles(*DEVICE_EDITORS))]


def load_device(session: SessionDep, serial: str) -> Device:
    device = service.get_by_serial(session, serial)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"device {serial} not found")
    return device


@router.get("", response_model=list[DeviceOut])
def list_devices(
    session: SessionDep, _u: Reader, client_id: Id | None = None,
    status_: Annotated[DeviceStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[Device]:
    return list(service.list_devices(session, client_id=client_id, status=status_, limit=limit, offset=offset))


@router.post("", response_model=DeviceOut, status_code=status.HTTP_201_CREATED)
def register_device(body: DeviceIn, session: SessionDep, _u: Editor) -> Device:
    try:
        return service.register_device(session, data=body)
    except service.DeviceConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except LookupError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc


@router.get("/{serial}", response_model=DeviceOut)
def get_device(_u: Reader, device: Annotated[Device, Depends(load_device)]) -> Device:
    return device


@router.patch("/{serial}", response_model=DeviceOut)
def update_device(
    body: DevicePatch, session: SessionDep, _u: Editor, device: Annotated[Device, Depends(load_device)]
) -> Device:
    try:
        return service.update_device(session, device=device, patch=body)
    except service.DeviceConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc


@router.post("/{serial}/assign", response_model=DeviceOut)
def assign_device(
    body: AssignIn, session: SessionDep, _u: Editor, device: Annotated[Device, Depends(load_device)]
) -> Device:
    try:
        return service.assign_device(session, device=device, client_id=body.client_id, reason="assigned by API")
    except service.DeviceConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except LookupError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc


@router.get("/{serial}/events", response_model=list[DeviceEventOut])
def device_events(
    session: SessionDep, _u: Reader, device: Annotated[Device, Depends(load_device)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeviceEvent]:
    return list(service.recent_events(session, device=device, limit=limit))


@router.post("/{serial}/swap", response_model=DeviceOut)
def swap_device(
    body: SwapIn, session: SessionDep, user: Editor, device: Annotated[Device, Depends(load_device)]
) -> Device:
    """Replace this (faulty) device at its client by an in-stock one; the client's history stays."""
    replacement = service.get_by_serial(session, body.replacement_serial)
    if replacement is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"device {body.replacement_serial} not found")
    try:
        return service.swap_device(session, faulty=device, replacement=replacement, reason=body.reason,
                                   actor=f"user:{user.username}")
    except service.DeviceConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except ValueError as exc:  # the old configuration does not fit the new model
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc


@router.get("/{serial}/assignments", response_model=list[AssignmentOut])
def device_assignments(
    session: SessionDep, _u: Reader, device: Annotated[Device, Depends(load_device)]
) -> list[DeviceAssignment]:
    return list(service.assignments(session, device=device))


@router.get("/{serial}/battery", response_model=list[BatteryReadingOut])
def battery_history(
    session: SessionDep, _u: Reader, device: Annotated[Device, Depends(load_device)],
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[BatteryReading]:
    """Newest first; a reading is kept whenever the level or the low flag changed."""
    return list(service.battery_history(session, device=device, limit=limit))


@router.get("/{serial}/signal", response_model=list[SignalReadingOut])
def signal_history(
    session: SessionDep, _u: Reader, device: Annotated[Device, Depends(load_device)],
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[SignalReading]:
    """Newest first; a reading is kept whenever the signal moved by 3 dB or more."""
    return list(service.signal_history(session, device=device, limit=limit))


def _config_state(session: Session, device: Device) -> ConfigStateOut:
    return ConfigStateOut(
        serial=device.serial, model=device.model, state=service.config_state(device).value,
        desired_version=device.desired_config_version, reported_version=device.reported_config_version,
        published_version=device.config_published_version,
        published=device.config_published_version >= device.desired_config_version,
        changed_at=device.config_changed_at, error=device.config_error, desired=dict(device.desired_config or {}),
        diff=service.config_diff(session, device=device),
        versions=[ConfigVersionOut.model_validate(v) for v in service.config_versions(session, device=device)],
    )


@router.get("/{serial}/config", response_model=ConfigStateOut)
def get_config(session: SessionDep, _u: Reader, device: Annotated[Device, Depends(load_device)]) -> ConfigStateOut:
    """Programming state: desired versus reported, with the difference and the version history."""
    return _config_state(session, device)


@router.put("/{serial}/config", response_model=ConfigStateOut)
def put_config(serial: str, body: ConfigIn, request: Request, session: SessionDep, user: Editor) -> ConfigStateOut:
    """Save a new desired configuration (the next version), then publish it retained to the device.

    The save is committed before the publish: if the broker is unreachable the change is kept
    and the scheduler publishes it later (`published` is false until then)."""
    factory = request.app.state.session_factory
    device = load_device(session, serial)
    try:
        save_and_publish_config(session, factory, getattr(request.app.state, "config_publisher", None),
                                device=device, config=body.config, actor=f"user:{user.username}")
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    with factory() as fresh:
        return _config_state(fresh, load_device(fresh, serial))
