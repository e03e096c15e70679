"""Device routes: technicians and admins register and assign; all staff read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, status

from alarmcentre.api_deps import DEVICE_EDITORS, STAFF, SessionDep, require_roles
from alarmcentre.devices import service
from alarmcentre.devices.models import Device, DeviceEvent, DeviceStatus
from alarmcentre.devices.schemas import AssignIn, DeviceEventOut, DeviceIn, DeviceOut, DevicePatch
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
        return service.assign_device(session, device=device, client_id=body.client_id)
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
