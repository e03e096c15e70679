"""Devices (the home units) and their append-only signal log."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from alarmcentre import clock
from alarmcentre.db import Base
from alarmcentre.db_types import BigId, str_enum


class DeviceStatus(StrEnum):
    """Inventory state. Only a retired device is refused by the ingest."""

    IN_STOCK = "in_stock"
    INSTALLED = "installed"
    FAULTY = "faulty"
    IN_REPAIR = "in_repair"
    RETIRED = "retired"


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(primary_key=True)
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(100), default="generic")
    firmware: Mapped[str | None] = mapped_column(String(64))
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id"), index=True)
    status: Mapped[DeviceStatus] = mapped_column(str_enum(DeviceStatus), default=DeviceStatus.IN_STOCK)
    battery_level: Mapped[int | None]
    battery_low: Mapped[bool] = mapped_column(default=False)
    battery_at: Mapped[datetime | None]
    mains_power: Mapped[bool | None] = mapped_column(Boolean)  # None: never reported
    mains_changed_at: Mapped[datetime | None]
    rssi: Mapped[int | None]
    last_seen_at: Mapped[datetime | None]
    online: Mapped[bool] = mapped_column(default=False)
    online_changed_at: Mapped[datetime | None]
    # The device's last (re)connection: its `online` status, even when it was online already (a broker
    # node died under it and it came back through another).
    connected_at: Mapped[datetime | None]
    heartbeat_interval_s: Mapped[int] = mapped_column(default=60)
    # Programming state: the centre writes desired, the device reports what it applied.
    desired_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    desired_config_version: Mapped[int] = mapped_column(default=0)
    reported_config_version: Mapped[int | None]
    config_error: Mapped[str | None] = mapped_column(String(500))
    config_failed_version: Mapped[int | None]  # the version the device last refused
    config_changed_at: Mapped[datetime | None]  # when desired_config last changed: "pending since"
    # The version the broker holds retained for the device; behind desired when a publish failed.
    config_published_version: Mapped[int] = mapped_column(default=0, server_default="0")
    config_published_at: Mapped[datetime | None]  # when the centre last published the desired configuration
    last_test_call_at: Mapped[datetime | None]  # the monthly test press
    tamper_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    # A SIA DC-09 panel's account number (3-16 hex digits, upper case) and its AES key, encrypted with the
    # access key (docs/dc09.md); NULL for MQTT devices.
    dc09_account: Mapped[str | None] = mapped_column(String(16), unique=True)
    dc09_key_ciphertext: Mapped[str | None] = mapped_column(Text)
    # A SCAIP device's controller id (its <cid>) and SIP digest password, encrypted with the access key
    # (docs/scaip.md); NULL for the others.
    scaip_cid: Mapped[str | None] = mapped_column(String(32), unique=True)
    scaip_password_ciphertext: Mapped[str | None] = mapped_column(Text)
    # The SIM's phone number (E.164) of a device that can call: its call reaches the client's incident.
    sim_number: Mapped[str | None] = mapped_column(String(32), index=True)


class DeviceEvent(Base):
    """Every accepted device signal, once: (device, seq) is the deduplication key."""

    __tablename__ = "device_events"
    __table_args__ = (UniqueConstraint("device_id", "seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(index=True)  # retention.py deletes by it
    committed_at: Mapped[datetime] = mapped_column(default=clock.now)
    clock_skewed: Mapped[bool] = mapped_column(default=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id"), index=True)


class DeviceAssignment(Base):
    """Who had the device when: a client's history survives a device swap."""

    __tablename__ = "device_assignments"

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), index=True)
    assigned_at: Mapped[datetime] = mapped_column(default=clock.now)
    unassigned_at: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(String(200), default="")


class BatteryReading(Base):
    """Append-only battery history (from heartbeats and battery reports)."""

    __tablename__ = "battery_readings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    at: Mapped[datetime]
    level: Mapped[int]
    low: Mapped[bool]


class SignalReading(Base):
    """Append-only radio signal history (rssi, dBm)."""

    __tablename__ = "signal_readings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    at: Mapped[datetime]
    rssi: Mapped[int]


class DeviceConfigVersion(Base):
    """Every desired configuration a technician saved, never changed afterwards."""

    __tablename__ = "device_config_versions"
    __table_args__ = (UniqueConstraint("device_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"), index=True)
    version: Mapped[int]
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=clock.now)
    created_by: Mapped[str] = mapped_column(String(100))  # "user:NAME"
