"""`alarmcentre devices dc09` and `alarmcentre receive-dc09` as an installer meets them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from alarmcentre import clock
from alarmcentre.clients.access import load_cipher
from alarmcentre.config import Settings
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.receivers.dc09 import decode_key
from alarmcentre.runtime import Database
from tests.conftest import free_port, wait_for_port

pytest.importorskip("pysiaalarm")
from tests.dc09_panel import Connection, frame  # noqa: E402


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alarmcentre.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_devices_dc09_stores_the_key_encrypted_and_rotation_keeps_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.sqlite3'}"
    common = ("--data-dir", str(tmp_path), "--database-url", url)
    key = "00112233445566778899aabbccddeeff"
    (tmp_path / "panel.key").write_text(key + "\n")
    done = _cli("devices", "dc09", "PANEL-1", "--account", "4f2a", "--key-file", str(tmp_path / "panel.key"),
                "--supervision-s", "90", *common)
    assert done.returncode == 0, done.stderr
    assert "DC-09 account 4F2A" in done.stdout and "AES-128" in done.stdout and key not in done.stdout
    settings = Settings(data_dir=tmp_path, database_url=url)
    db = Database.open(settings)
    with db.sessions() as session:
        device = session.scalar(select(Device).where(Device.serial == "PANEL-1"))
        assert device is not None and device.dc09_account == "4F2A" and device.heartbeat_interval_s == 90
        assert device.dc09_key_ciphertext and key not in device.dc09_key_ciphertext
        assert decode_key(device.dc09_key_ciphertext, load_cipher(settings)).hex() == key

    clash = _cli("devices", "dc09", "PANEL-2", "--account", "4F2A", *common)
    assert clash.returncode == 2 and "belongs to device PANEL-1" in clash.stderr
    (tmp_path / "short.key").write_text("abcd")
    short = _cli("devices", "dc09", "PANEL-3", "--account", "1234", "--key-file", str(tmp_path / "short.key"), *common)
    assert short.returncode == 2 and "128, 192 or 256 bits" in short.stderr

    assert _cli("keys", "rotate", *common).returncode == 0
    with db.sessions() as session:
        device = session.scalar(select(Device).where(Device.serial == "PANEL-1"))
        assert device is not None and device.dc09_key_ciphertext
        assert decode_key(device.dc09_key_ciphertext, load_cipher(settings)).hex() == key
    db.engine.dispose()


@pytest.mark.needs_true_clock
def test_receive_dc09_process_acks_a_committed_alarm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.sqlite3'}"
    common = ("--data-dir", str(tmp_path), "--database-url", url)
    (tmp_path / "panel.key").write_text("ABCDEFGHIJKLMNOP")
    assert _cli("devices", "dc09", "PANEL-1", "--account", "777", "--key-file", str(tmp_path / "panel.key"),
                "--key-format", "ascii", *common).returncode == 0
    port, metrics_port = free_port(), free_port()
    log = (tmp_path / "dc09.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "alarmcentre.cli", "receive-dc09", "--port", str(port),
                                "--metrics-port", str(metrics_port), *common], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for_port(port, 20), (tmp_path / "dc09.log").read_text()
        panel = Connection(port)
        panel.send(frame("SIA-DCS", 1, "777", "#777|Nri1/MA1", key=b"ABCDEFGHIJKLMNOP", at=clock.now()))
        answer = panel.answer()
        assert answer is not None and answer.kind == "*ACK"
        panel.close()
        db = Database.open(Settings(data_dir=tmp_path, database_url=url), upgrade=False)
        with db.sessions() as session:
            assert [e.type for e in session.scalars(select(DeviceEvent))] == ["button_press"]
        db.engine.dispose()
        import urllib.request

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'alarmcentre_dc09_answers_total{answer="ack",reason="ok"} 1.0' in metrics
    finally:
        process.terminate()
        process.wait(10)
        log.close()
