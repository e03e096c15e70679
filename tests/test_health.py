"""Liveness (/healthz) and readiness (/readyz) of every kind of process, against real parts.

The API's own routes are in tests/test_api.py; here: the registry, the ingest's checks against a
real Mosquitto and PostgreSQL (broker lost, database stalled, database down), the standalone
`alarmcentre ingest` and `alarmcentre scheduler` processes, and `alarmcentre up`'s Centre.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from alarmcentre.config import Settings
from alarmcentre.health import HealthChecks, freshness_check, ingest_checks, start_http_server
from alarmcentre.ingest.consumer import IngestConsumer
from alarmcentre.ingest.protocol import events_topic
from alarmcentre.runtime import Centre, Database
from tests.conftest import POSTGRES_ADMIN_URL, MosquittoProcess, free_port
from tests.factories import event_payload, setup_devices
from tests.test_pipeline import Publisher, wait_until


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""  # not listening (yet)


def ready(url: str) -> dict:
    status, body = get(url + "/readyz")
    assert status in (200, 503), (status, body)
    answer = json.loads(body)
    assert (status == 200) == (answer["status"] == "ok")
    return answer["checks"]


# -- the registry ------------------------------------------------------------------------


def test_a_check_that_raises_fails_readiness_and_the_others_still_run() -> None:
    def broken() -> str | None:
        raise RuntimeError("boom")

    checks = HealthChecks({"database": lambda: None, "canary": broken})
    assert checks.run() == (False, {"status": "failing",
                                    "checks": {"database": "ok", "canary": "check failed: RuntimeError"}})


def test_a_name_cannot_be_registered_twice() -> None:
    checks = HealthChecks({"database": lambda: None})
    with pytest.raises(ValueError, match="exists already"):
        checks.add("database", lambda: "other")


def test_freshness_counts_from_start_until_the_first_success() -> None:
    now = time.time()
    last: list[float | None] = [None]
    check = freshness_check(lambda: last[0], max_age_s=60, what="canary alarm", since=now - 10)
    assert check() is None  # 10 s after start: still within the first period
    late = freshness_check(lambda: last[0], max_age_s=60, what="canary alarm", since=now - 100)
    assert late() == "no canary alarm yet, 100 s after start (bound 60 s)"
    last[0] = now - 5
    assert late() is None
    last[0] = now - 400
    assert late() == "last canary alarm 400 s ago (bound 60 s)"


def test_the_standalone_server_answers_healthz_readyz_and_metrics() -> None:
    problem: list[str | None] = [None]
    server = start_http_server("127.0.0.1", 0, HealthChecks({"database": lambda: problem[0]}))
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert get(url + "/healthz")[0] == 200
        assert json.loads(get(url + "/healthz")[1])["status"] == "ok"
        assert get(url + "/readyz") == (200, '{"status": "ok", "checks": {"database": "ok"}}')
        problem[0] = "unreachable: OperationalError"
        assert get(url + "/readyz") == (503, '{"status": "failing", "checks": '
                                             '{"database": "unreachable: OperationalError"}}')
        assert get(url + "/healthz")[0] == 200  # alive all the same
        status, body = get(url + "/metrics")
        assert status == 200 and "# TYPE alarmcentre_ingest_queue_depth gauge" in body
    finally:
        server.shutdown()


# -- the ingest's checks, against real parts ---------------------------------------------


@pytest.fixture
def consumer(postgres_db: Database, mosquitto: MosquittoProcess) -> Iterator[IngestConsumer]:
    consumer = IngestConsumer(mqtt_url=mosquitto.url, session_factory=postgres_db.sessions)
    consumer.start()
    assert consumer.wait_connected(10)
    yield consumer
    consumer.stop()


def test_ingest_readiness_follows_a_stalled_database_an_outage_and_the_broker(
    postgres_db: Database, postgres_url: str, mosquitto: MosquittoProcess, consumer: IngestConsumer
) -> None:
    setup_devices(postgres_db.sessions, ["RDY-1"])
    checks = HealthChecks(ingest_checks(consumer, max_lag_s=1.0))
    assert checks.run()[0], checks.run()
    name = postgres_url.rsplit("/", 1)[1]
    publisher = Publisher(mosquitto.url)
    try:
        # A stall: the commit neither fails nor finishes (a lock held elsewhere). Nothing errors,
        # so only the lag bound can tell.
        with psycopg.connect(postgres_url) as blocker:
            blocker.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
            publisher.publish(events_topic("RDY-1"), event_payload(1, "button_press"))
            wait_until(lambda: not checks.run()[0], timeout=10, step=0.1)
            problem = checks.run()[1]["checks"]["ingest"]
            assert problem.startswith("oldest uncommitted message has waited") and "1 waiting" in problem
            assert checks.run()[1]["checks"]["broker"] == "ok"
            assert consumer.pending == 1
        wait_until(lambda: checks.run()[0], timeout=10, step=0.1)  # lock released: committed
        assert consumer.pending == 0 and consumer.waiting_age() is None

        # An outage: commits fail.
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            publisher.publish(events_topic("RDY-1"), event_payload(2, "heartbeat"))
            wait_until(lambda: not consumer.database_ok, timeout=10)
            assert checks.run()[1]["checks"]["ingest"].startswith("ingest cannot commit to the database")
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        wait_until(lambda: checks.run()[0], timeout=40, step=0.1)
    finally:
        publisher.close()

    # The broker goes away and comes back.
    mosquitto.stop()
    wait_until(lambda: not checks.run()[0], timeout=10)
    assert checks.run()[1]["checks"] == {"broker": "ingest not connected to the broker", "ingest": "ok"}
    mosquitto.start()
    wait_until(lambda: checks.run()[0], timeout=30, step=0.1)


# -- standalone processes ----------------------------------------------------------------


def _start(command: str, *, database_url: str, port: int, log_path: Path, mqtt_url: str | None = None,
           ) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ALARMCENTRE_DATABASE_URL": database_url, "ALARMCENTRE_METRICS_PORT": str(port)}
    env.pop("ALARMCENTRE_MQTT_URL", None)
    if mqtt_url:
        env["ALARMCENTRE_MQTT_URL"] = mqtt_url
    return subprocess.Popen([sys.executable, "-m", "alarmcentre.cli", command], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"))  # noqa: SIM115


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.mark.needs_true_clock
def test_standalone_ingest_and_scheduler_serve_healthz_and_readyz(
    tmp_path: Path, mosquitto: MosquittoProcess
) -> None:
    database_url = f"sqlite:///{tmp_path / 'standalone.sqlite3'}"
    subprocess.run([sys.executable, "-m", "alarmcentre.cli", "db", "upgrade", "--database-url", database_url],
                   check=True, capture_output=True, timeout=60)
    ingest_port, scheduler_port = free_port(), free_port()
    ingest = _start("ingest", database_url=database_url, port=ingest_port, log_path=tmp_path / "ingest.log",
                    mqtt_url=mosquitto.url)
    scheduler = _start("scheduler", database_url=database_url, port=scheduler_port,
                       log_path=tmp_path / "scheduler.log")
    ingest_url, scheduler_url = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{scheduler_port}"
    try:
        wait_until(lambda: get(ingest_url + "/healthz")[0] == 200, timeout=30, step=0.1)
        wait_until(lambda: get(ingest_url + "/readyz")[0] == 200, timeout=30, step=0.1)
        assert ready(ingest_url) == {"database": "ok", "broker": "ok", "ingest": "ok"}
        status, body = get(ingest_url + "/metrics")
        assert status == 200 and "alarmcentre_ingest_running 2.0" in body  # two lanes

        wait_until(lambda: get(scheduler_url + "/readyz")[0] == 200, timeout=30, step=0.1)
        assert ready(scheduler_url) == {"database": "ok", "scheduler": "ok"}
        # Ready means the scheduler runs; its first sweep may still be on its way (it was, once, in CI).
        wait_until(lambda: 'alarmcentre_scheduler_last_run_timestamp_seconds{job="escalation_sweep"}' in get(
            scheduler_url + "/metrics")[1], timeout=30, step=0.2)

        mosquitto.stop()
        wait_until(lambda: get(ingest_url + "/readyz")[0] == 503, timeout=15, step=0.1)
        assert ready(ingest_url)["broker"] == "ingest not connected to the broker"
        assert get(ingest_url + "/healthz")[0] == 200
    finally:
        _stop(ingest)
        _stop(scheduler)


# -- `alarmcentre up` ------------------------------------------------------------------------


def test_the_all_in_one_centre_reports_every_part_and_takes_another_with_one_call(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker="amqtt", broker_port=free_port(), database_url=None,
                        mqtt_url=None)
    centre = Centre(settings).start()
    try:
        assert centre.consumer.wait_connected(10)
        http = TestClient(centre.app)
        wait_until(lambda: http.get("/readyz").status_code == 200, timeout=10, step=0.1)
        checks = http.get("/readyz").json()["checks"]
        assert {name: checks[name] for name in ("database", "broker", "ingest", "scheduler")} == {
            "database": "ok", "broker": "ok", "ingest": "ok", "scheduler": "ok"}
        centre.health.add("later-part", freshness_check(lambda: None, max_age_s=60, what="test alarm",
                                                        since=time.time() - 120))
        response = http.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["later-part"] == "no test alarm yet, 120 s after start (bound 60 s)"
    finally:
        centre.stop()
