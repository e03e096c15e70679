"""The centre's MQTT publisher: desired configurations, retained, QoS 1, confirmed by PUBACK.

Used by the API process (a technician saves a configuration) and the scheduler (republishing
what could not be published). It never holds a change only in memory: the database has the
desired configuration first, and `config_published_version` records what the broker has.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.orm import Session, sessionmaker

from alarmcentre import metrics
from alarmcentre.db import transaction
from alarmcentre.devices import service
from alarmcentre.devices.models import Device
from alarmcentre.ingest.protocol import config_topic

log = logging.getLogger(__name__)


def config_payload(version: int, config: dict[str, Any]) -> bytes:
    return json.dumps({"version": version, **config}, separators=(",", ":"), sort_keys=True).encode()


class ConfigPublisher:
    """One paho connection, opened on first use and kept; thread-safe; reconnects by itself."""

    def __init__(self, mqtt_url: str, *, timeout_s: float = 5.0, client_id: str | None = None) -> None:
        parts = urlsplit(mqtt_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.timeout_s = timeout_s
        # A random id: several API processes must not kick each other off the broker.
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"alarmcentre-config-{uuid.uuid4().hex[:10]}")
        if parts.username:
            self._client.username_pw_set(unquote(parts.username), unquote(parts.password or ""))
        if parts.scheme == "mqtts":
            self._client.tls_set()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._started = False

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        if not reason.is_failure:
            self._connected.set()
        else:
            log.error("config publisher: broker refused the connection: %s", reason)

    def _on_disconnect(self, *_args: Any) -> None:
        self._connected.clear()

    def _ensure_started(self) -> None:
        if not self._started:
            self._client.connect_async(self.host, self.port, keepalive=30)
            self._client.loop_start()
            self._started = True

    def publish_config(self, serial: str, version: int, config: dict[str, Any]) -> bool:
        """True once the broker acknowledged the retained message; False (logged, counted) otherwise."""
        with self._lock:
            self._ensure_started()
            deadline = time.monotonic() + self.timeout_s
            if not self._connected.wait(self.timeout_s):
                log.warning("config publisher: broker %s:%d unreachable; %s v%d stays pending",
                            self.host, self.port, serial, version)
                metrics.CONFIG_PUBLISH_ERRORS.inc()
                return False
            info = self._client.publish(config_topic(serial), config_payload(version, config), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("config publisher: %s v%d not published: %s", serial, version, exc)
            if not info.is_published():
                metrics.CONFIG_PUBLISH_ERRORS.inc()
                return False
            return True

    def close(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False


def save_and_publish_config(
    session: Session, factory: sessionmaker[Session], publisher: ConfigPublisher | None, *, device: Device,
    config: dict[str, Any], actor: str, expected_version: int | None = None,
) -> int:
    """Store `config` as the device's next desired version, commit `session`, then publish it retained;
    the version saved. The API and the dashboard both save through here.

    The request's own transaction is committed (the session is finished afterwards): the save
    must be durable before the broker holds it, and the publish (up to its timeout) must not keep a
    write lock. If the broker is unreachable the change is kept and the scheduler publishes it later.
    Refused before anything is written: ValueError when invalid for the model (its __cause__ is the
    ValidationError), DeviceConflict when `expected_version` is no longer the desired one."""
    if expected_version is not None:
        session.refresh(device, with_for_update=True)
        if device.desired_config_version != expected_version:
            raise service.DeviceConflict(f"version {device.desired_config_version} was saved meanwhile")
    row = service.set_desired_config(session, device=device, config=config, actor=actor)
    serial, device_id, version, saved = device.serial, device.id, row.version, dict(row.config)
    session.commit()
    if publisher is not None and publisher.publish_config(serial, version, saved):
        with transaction(factory) as later:
            service.mark_published(later, device_id=device_id, version=version)
    return version
