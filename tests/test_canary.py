"""The end-to-end canary: a test alarm through the real broker every interval, judged where the
dashboards' live feed runs; a stuck ingest makes it late on every screen, /readyz and the metrics,
and it recovers by itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from alarmcentre.canary import CanaryBeat, CanaryWatch, ensure_canary_device
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices import service as devices
from alarmcentre.incidents.models import Incident
from alarmcentre.ingest.consumer import IngestConsumer
from alarmcentre.runtime import Centre, Database
from tests.conftest import free_port
from tests.factories import Clock, make_client


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout} s")
        time.sleep(0.1)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_the_canary_goes_end_to_end_goes_late_when_the_ingest_stops_and_recovers(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker_port=free_port(), mqtt_url=None, metrics_port=0,
                        canary_interval_s=0.5, canary_bound_s=2.0)
    centre = Centre(settings).start()
    try:
        assert centre.db is not None and centre.consumer.wait_connected(15)
        failures_before = metric("alarmcentre_canary_failures_total")
        with TestClient(centre.app) as http:  # runs the app's lifespan: the feed and its canary watch
            wait_until(lambda: http.get("/ui/system").json().get("canary") == "ok", timeout=15)
            ready = http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["canary"] == "ok", ready.text
            assert metric("alarmcentre_canary_last_success_timestamp_seconds") > time.time() - 10
            with centre.db.sessions() as session:
                assert (session.scalar(select(func.count()).select_from(CanaryBeat)) or 0) >= 1
                # Never an alarm for operators, never a rejected message.
                assert session.scalar(select(func.count()).select_from(Incident)) == 0
                assert session.scalar(select(func.count()).select_from(DeadLetter)) == 0

            centre.consumer.stop()  # the pipeline stalls: test alarms stay in the broker
            wait_until(lambda: http.get("/ui/system").json().get("canary") == "late", timeout=10)
            late = http.get("/readyz")
            assert late.status_code == 503 and "test alarm" in late.json()["checks"]["canary"]
            assert metric("alarmcentre_canary_failures_total") == failures_before + 1
            assert metric("alarmcentre_canary_ok") == 0

            consumer = IngestConsumer(mqtt_url=centre.mqtt_url or "", session_factory=centre.db.sessions,
                                      client_id=settings.mqtt_client_id, batch_max=settings.ingest_batch_max,
                                      settings=centre.settings)
            consumer.start()
            try:
                wait_until(lambda: http.get("/ui/system").json().get("canary") == "ok", timeout=15)
                assert http.get("/readyz").json()["checks"]["canary"] == "ok"
            finally:
                consumer.stop()
    finally:
        centre.stop()


def test_a_canary_seen_after_the_bound_is_late(sqlite_db: Database) -> None:
    settings = Settings(canary_interval_s=60, canary_bound_s=10)
    clock = Clock(datetime(2026, 11, 23, 22, 0, tzinfo=UTC))
    watch = CanaryWatch(settings)
    with sqlite_db.sessions() as session:
        assert not watch.poll(session) and watch.state.ok is None  # nothing due yet
        session.add(CanaryBeat(device_serial="canary", seq=1, sent_at=clock.now - timedelta(seconds=2)))
        session.commit()
        assert watch.poll(session) and watch.state.ok is True
        clock.advance(60)
        session.add(CanaryBeat(device_serial="canary", seq=2, sent_at=clock.now - timedelta(seconds=25)))
        session.commit()
        assert watch.poll(session) and watch.state.ok is False and "took 25 s" in watch.state.detail
        assert watch.readiness() == watch.state.detail
        clock.advance(30)
        session.add(CanaryBeat(device_serial="canary", seq=3, sent_at=clock.now - timedelta(seconds=1)))
        session.commit()
        assert watch.poll(session) and watch.state.ok is True and watch.readiness() is None
        clock.advance(71)  # interval + bound passed without a beat: the device or the broker is gone
        assert watch.poll(session) and watch.state.ok is False and "no test alarm" in watch.state.detail


def test_the_canary_device_can_never_be_given_to_a_client(sqlite_db: Database) -> None:
    with transaction(sqlite_db.sessions) as session:
        canary = ensure_canary_device(session, Settings())
        client = make_client(session)
        with pytest.raises(devices.DeviceConflict, match="canary"):
            devices.assign_device(session, device=canary, client_id=client.id)
