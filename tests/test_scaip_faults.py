"""Faults the SCAIP receiver survives, injected: a database outage while a unit is sending its alarm,
and kill -9 of the receiver process. The unit is the simulator's (it resends over UDP as SIP does)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy import select

from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.devices.models import DeviceEvent
from alarmcentre.incidents.models import Incident
from alarmcentre.receivers.scaip import ScaipReceiver, set_identity
from alarmcentre.receivers.scaip_server import background_scaip_server
from alarmcentre_sim.scaip import Answer, ScaipUnit, mrq
from tests.conftest import PostgresCluster, free_port, migrated_database, wait_for_port
from tests.factories import count_rows, make_client, make_device


class Sending:
    """A unit sending one alarm in a thread: the answer, or the error, once it gave up."""

    def __init__(self, unit: ScaipUnit, ref: str) -> None:
        self.answer: Answer | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._send, args=(unit, ref), daemon=True)
        self._thread.start()

    def _send(self, unit: ScaipUnit, ref: str) -> None:
        try:
            self.answer = unit.send(mrq(ref=ref, cid=unit.cid, kind="alarm"))
        except Exception as exc:  # noqa: BLE001 (the test reports it)
            self.error = exc

    def wait(self, timeout: float) -> Answer:
        self._thread.join(timeout)
        assert self.answer is not None, f"no answer: {self.error}"
        return self.answer


@pytest.mark.timeout(180)
def test_an_alarm_sent_while_the_database_is_down_is_taken_once_when_it_is_back(
        private_postgres: PostgresCluster) -> None:
    db = migrated_database(private_postgres.create_database())
    cipher = MultiFernet([Fernet(Fernet.generate_key())])
    with transaction(db.sessions, writes=True) as session:
        set_identity(session, device=make_device(session, "UNIT-DB", client=make_client(session)), cid="8801",
                     password="outage unit password", cipher=cipher)
    server = background_scaip_server(ScaipReceiver(db.sessions, settings=Settings(), cipher=lambda: cipher),
                                     host="127.0.0.1", port=0).start()
    try:
        private_postgres.stop("fast")
        try:
            sending = Sending(ScaipUnit("127.0.0.1", server.port, "8801", "outage unit password"), "outage-1")
            time.sleep(8)  # the unit sends, gets no answer, sends again (0.5 s, 1 s, 2 s, 4 s, …)
            assert sending.answer is None and sending.error is None
        finally:
            private_postgres.start()
        answer = sending.wait(40)
        assert answer.taken and answer.sends > 3
        assert count_rows(db, DeviceEvent) == 1 and count_rows(db, Incident) == 1
    finally:
        server.stop()
        db.engine.dispose()


@pytest.mark.needs_true_clock
@pytest.mark.timeout(180)
def test_kill_9_of_the_receiver_loses_no_alarm_the_unit_is_sending(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.sqlite3'}"
    common = ["--data-dir", str(tmp_path), "--database-url", url]
    subprocess.run([sys.executable, "-m", "alarmcentre.cli", "devices", "scaip", "UNIT-K", "--cid", "9901",
                    *common], check=True, capture_output=True, timeout=60)
    port = free_port()

    def receiver() -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "alarmcentre.cli", "receive-scaip", "--port", str(port),
                                    "--metrics-port", "0", *common], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        assert wait_for_port(port, 20)
        return process

    first = receiver()
    unit = ScaipUnit("127.0.0.1", port, "9901")
    assert unit.send(mrq(ref="before", cid="9901", kind="alarm")).taken
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    sending = Sending(unit, "during")  # the unit's next alarm finds nobody there, and keeps sending
    time.sleep(3)
    assert sending.answer is None
    second = receiver()
    try:
        answer = sending.wait(40)
        assert answer.taken and answer.sends > 2
    finally:
        second.terminate()
        second.wait(10)
    from alarmcentre.runtime import Database

    db = Database.open(Settings(data_dir=tmp_path, database_url=url), upgrade=False)
    with db.sessions() as session:
        refs = [event.details["scaip"]["tags"]["ref"] for event in session.scalars(select(DeviceEvent)
                                                                                    .order_by(DeviceEvent.id))]
    db.engine.dispose()
    assert refs == ["before", "during"]
