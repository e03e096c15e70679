"""API shapes of devices and their signal log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from alarmcentre.devices.models import DeviceStatus
from alarmcentre.ingest.protocol import DEVICE_ID_PATTERN
from alarmcentre.schemas import Id, InputModel, Phone

Serial = Annotated[str, Field(pattern=f"^{DEVICE_ID_PATTERN}$", description="letters, digits, - and _")]


class DeviceIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    serial: Serial
    model: Annotated[str, Field(min_length=1, max_length=100)] = "generic"
    firmware: Annotated[str, Field(max_length=64)] | None = None
    heartbeat_interval_s: Annotated[int, Field(ge=10, le=90_000)] = 60
    status: DeviceStatus = DeviceStatus.IN_STOCK
    client_id: Id | None = None
    sim_number: Phone | None = Field(None, description="the SIM's number, if the device can call the centre")


class DevicePatch(InputModel):
    model_config = ConfigDict(extra="forbid")
    model: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    firmware: Annotated[str, Field(max_length=64)] | None = None
    heartbeat_interval_s: Annotated[int, Field(ge=10, le=90_000)] | None = None
    status: DeviceStatus | None = None
    sim_number: Phone | None = Field(None, description="null clears it")


class AssignIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    client_id: Id | None = Field(description="the client to assign to; null takes the device back")


class DeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    serial: str
    model: str
    firmware: str | None
    client_id: int | None
    status: DeviceStatus
    battery_level: int | None
    battery_low: bool
    battery_at: datetime | None
    mains_power: bool | None
    mains_changed_at: datetime | None
    rssi: int | None
    last_seen_at: datetime | None
    online: bool
    heartbeat_interval_s: int
    desired_config: dict[str, Any]
    desired_config_version: int
    reported_config_version: int | None
    config_error: str | None
    tamper_at: datetime | None
    sim_number: str | None = None


class DeviceEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    seq: int
    type: str
    occurred_at: datetime
    received_at: datetime
    clock_skewed: bool
    details: dict[str, Any]
    incident_id: int | None


class SwapIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    replacement_serial: Serial = Field(description="an in-stock device that takes over the client")
    reason: Annotated[str, Field(min_length=1, max_length=200)]


class AssignmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    device_id: int
    client_id: int
    assigned_at: datetime
    unassigned_at: datetime | None
    reason: str


class BatteryReadingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    at: datetime
    level: int
    low: bool


class SignalReadingOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    at: datetime
    rssi: int


class ConfigIn(InputModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] = Field(description="the whole desired configuration, checked against the model's schema")


class ConfigVersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    version: int
    config: dict[str, Any]
    created_at: datetime
    created_by: str


class ConfigStateOut(BaseModel):
    serial: str
    model: str
    state: str = Field(description="in_sync, pending or failed")
    desired_version: int
    reported_version: int | None
    published_version: int = Field(description="the version the broker holds retained")
    published: bool = Field(description="the broker holds the desired version")
    changed_at: datetime | None
    error: str | None
    desired: dict[str, Any]
    diff: dict[str, dict[str, Any]] = Field(description="settings whose desired value differs from the device's")
    versions: list[ConfigVersionOut]
