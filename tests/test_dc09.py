"""The SIA DC-09 receiver: real sockets, real databases, frames made by pysiaalarm's primitives
(tests/dc09_panel.py) and taken from real panels, never only by alarmcentre's own encoder."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy import select

from alarmcentre import clock
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.incidents.models import Incident, TimelineEntry, TimelineKind
from alarmcentre.receivers import dc09_frame as codec
from alarmcentre.receivers.dc09 import Dc09Receiver, decode_key, parse_key, set_account
from alarmcentre.receivers.dc09_codes import signals
from alarmcentre.receivers.dc09_server import background_dc09_server
from alarmcentre.receivers.server import BackgroundReceiver
from alarmcentre.runtime import Database
from alarmcentre.tasks.models import OperatorTask, TaskKind
from tests.dc09_panel import Connection, decrypt, frame, sia_crc, udp_exchange
from tests.factories import Clock, count_rows, make_client, make_device

pytest.importorskip("pysiaalarm")

KEY = b"0123456789ABCDEF"  # AES-128, configured as 16 ASCII characters (Ajax, pysiaalarm)
KEY_256 = bytes.fromhex("6b" * 32)  # AES-256, configured as 64 hex digits (DC-09)


# -- the codec against independent frames -----------------------------------------------------------


def test_crc_matches_pysiaalarm() -> None:
    for text in ['"NULL"0000R0L0#1234[]', '"SIA-DCS"6002L0#AAA[|Nri1/CL501]_14:12:04,09-25-2019', "x" * 300]:
        assert f"{codec.crc16(text.encode()):04X}" == sia_crc(text)


def test_frames_from_real_panels_and_the_standard_parse() -> None:
    # From pysiaalarm's test cases: a closing report (CRC as sent by the panel; length written by DC-09's rule).
    closing = codec.parse_frame(b'\nE5D50034"SIA-DCS"6002L0#AAA[|Nri1/CL501]_14:12:04,09-25-2019\r')
    assert closing is not None and (closing.sequence, closing.account, closing.line) == ("6002", "AAA", "L0")
    body = codec.read_body(closing, None)
    assert body.timestamp == datetime(2019, 9, 25, 14, 12, 4, tzinfo=UTC)
    assert [s.code for s in signals(closing.message_id, body.data)] == ["CL"]
    # An encrypted link test from a real hub (pysiaalarm's tests): key "AAAAAAAAAAAAAAAA" as ASCII, padding
    # of 'p', no "|" after it; CRC and length as the hub sent them.
    null = codec.parse_frame(b'76D80055"*NULL"0000R0L0#AAAB[B4BC8B40D0E6D959D6BEA78E88CC0B2155741A3C44FBB96D476A'
                             b'3E557CAD64D9')
    assert null is not None and null.encrypted and null.account == "AAAB"
    body = codec.read_body(null, b"AAAAAAAAAAAAAAAA")
    assert body.timestamp == datetime(2020, 7, 5, 18, 24, 52, tzinfo=UTC)
    assert [s.code for s in signals("NULL", body.data)] == ["NULL"]
    with pytest.raises(codec.DecryptionFailed):
        codec.read_body(null, b"AAAAAAAAAAAAAAAB")
    # The standard's account/receiver/line example, ADM-CID fire alarm (the length of DC-09's rule).
    message = '"ADM-CID"9876R579BDFL789ABC#12345A[#12345A|1110 00 129]_14:12:04,09-25-2019'
    cid = codec.parse_frame(f"{sia_crc(message)}{len(message):04X}{message}".encode())
    assert cid is not None and (cid.receiver, cid.line, cid.account) == ("R579BDF", "L789ABC", "12345A")
    [fire] = signals(cid.message_id, codec.read_body(cid, None).data)
    assert (fire.code, fire.zone, fire.mapping and fire.mapping.type) == ("E110", "129", "button_press")


def test_our_encrypted_frames_decrypt_with_pycryptodome() -> None:
    raw = codec.build_frame("SIA-DCS", 12, "1234", "#1234|Nri1/MA1", key=KEY_256,
                            timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    parsed = codec.parse_frame(raw)
    assert parsed is not None
    text = decrypt(KEY_256, parsed.body)
    assert text.endswith("|#1234|Nri1/MA1]_03:04:05,01-02-2026") and len(text) % 16 == 0


def test_split_frames_keeps_the_tail() -> None:
    a = frame("NULL", 1, "1234", "")
    b = frame("NULL", 2, "1234", "")
    buffer = bytearray(a + b[:10])
    assert codec.split_frames(buffer) == [a.strip()]
    buffer.extend(b[10:])
    assert codec.split_frames(buffer) == [b.strip()] and not buffer


def test_keys() -> None:
    assert parse_key("0123456789ABCDEF", "ascii") == KEY
    assert parse_key("6b" * 32) == KEY_256
    with pytest.raises(ValueError):
        parse_key("abc")


# -- the receiver on real sockets and a real database ------------------------------------------------


class Centre:
    def __init__(self, db: Database, server: BackgroundReceiver, cipher: MultiFernet) -> None:
        self.db, self.server, self.cipher = db, server, cipher

    @property
    def port(self) -> int:
        return self.server.port

    def add_panel(self, serial: str, account: str, key: bytes | None = None, *, client: bool = True) -> None:
        with transaction(self.db.sessions, writes=True) as session:
            device = make_device(session, serial, client=make_client(session) if client else None)
            set_account(session, device=device, account=account, key=key, cipher=self.cipher)

    def dead_letters(self) -> list[DeadLetter]:
        with self.db.sessions() as session:
            return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))

    def events(self, serial: str) -> list[DeviceEvent]:
        with self.db.sessions() as session:
            return list(session.scalars(select(DeviceEvent).join(Device, Device.id == DeviceEvent.device_id)
                                        .where(Device.serial == serial).order_by(DeviceEvent.id)))

    def device(self, serial: str) -> Device:
        with self.db.sessions() as session:
            device = session.scalar(select(Device).where(Device.serial == serial))
            assert device is not None
            return device


def _centre(db: Database) -> Iterator[Centre]:
    cipher = MultiFernet([Fernet(Fernet.generate_key())])
    receiver = Dc09Receiver(db.sessions, settings=Settings(), cipher=lambda: cipher)
    server = background_dc09_server(receiver, host="127.0.0.1", port=0).start()
    try:
        yield Centre(db, server, cipher)
    finally:
        server.stop()


@pytest.fixture
def centre(any_db: Database) -> Iterator[Centre]:
    yield from _centre(any_db)


@pytest.fixture
def sqlite_centre(sqlite_db: Database) -> Iterator[Centre]:
    yield from _centre(sqlite_db)


def test_medical_alarm_opens_an_incident_committed_before_the_ack(centre: Centre) -> None:
    centre.add_panel("PANEL-1", "1234")
    panel = Connection(centre.port)
    panel.send(frame("ADM-CID", 1, "1234", "#1234|1100 01 015", at=clock.now()))
    answer = panel.answer()
    assert answer is not None and answer.kind == "ACK" and '"ACK"0001R0L0#1234[]' in answer.message
    # At the moment the panel holds the ACK, the incident is committed (read on another connection).
    with centre.db.sessions() as session:
        incident = session.scalar(select(Incident))
        assert incident is not None and incident.kind == "button_press"
        notes = list(session.scalars(select(TimelineEntry).where(TimelineEntry.incident_id == incident.id,
                                                                TimelineEntry.kind == TimelineKind.NOTE)))
    assert any("E100" in note.details["text"] and "medical" in note.details["text"] for note in notes)
    [event] = centre.events("PANEL-1")
    assert event.type == "button_press" and event.details["dc09"]["code"] == "E100"
    assert event.details["dc09"]["zone"] == "015"
    panel.close()


def test_encrypted_frame_with_the_right_key(centre: Centre) -> None:
    centre.add_panel("PANEL-2", "5678", KEY)
    panel = Connection(centre.port)
    sent_at = clock.now()
    panel.send(frame("SIA-DCS", 7, "5678", "#5678|Nri1/MA1", key=KEY, at=sent_at))
    answer = panel.answer()
    assert answer is not None and answer.kind == "*ACK" and answer.message.startswith('"*ACK"0007R0L0#5678[')
    # The encrypted ACK carries the receiver's time, readable with the panel's key (pycryptodome).
    assert abs((answer.receiver_time(KEY) - sent_at).total_seconds()) < 5
    assert count_rows(centre.db, Incident) == 1
    panel.close()


def test_wrong_key_is_a_nak_with_the_receivers_time_and_a_dead_letter(centre: Centre) -> None:
    centre.add_panel("PANEL-3", "9ABC", KEY)
    panel = Connection(centre.port)
    panel.send(frame("SIA-DCS", 8, "9ABC", "#9ABC|Nri1/MA1", key=b"FEDCBA9876543210", at=clock.now()))
    answer = panel.answer()
    assert answer is not None and answer.kind == "NAK" and answer.message.startswith('"NAK"0000R0L0A0[]_')
    assert abs((answer.receiver_time() - clock.now()).total_seconds()) < 5
    [letter] = centre.dead_letters()
    assert (letter.reason, letter.topic, letter.device_serial) == ("dc09_decrypt_failed", "dc09/9ABC", "PANEL-3")
    assert count_rows(centre.db, Incident) == 0
    panel.close()


def test_stale_timestamp_is_a_nak_with_the_receivers_time(centre: Centre) -> None:
    centre.add_panel("PANEL-4", "4444", KEY_256)
    panel = Connection(centre.port)
    for offset in (-70, +30):  # 70 s late (a replayed old frame) and 30 s ahead (a drifted clock)
        panel.send(frame("SIA-DCS", 9, "4444", "#4444|Nri1/MA1", key=KEY_256,
                         at=clock.now() + timedelta(seconds=offset)))
        answer = panel.answer()
        assert answer is not None and answer.kind == "NAK"
        assert abs((answer.receiver_time() - clock.now()).total_seconds()) < 5
    assert [letter.reason for letter in centre.dead_letters()] == ["dc09_stale_timestamp"] * 2
    assert "receiver time" in centre.dead_letters()[0].detail
    assert centre.events("PANEL-4") == [] and count_rows(centre.db, Incident) == 0
    # Within the window (-40 s … +20 s) it is taken.
    panel.send(frame("SIA-DCS", 9, "4444", "#4444|Nri1/MA1", key=KEY_256, at=clock.now() - timedelta(seconds=30)))
    answer = panel.answer()
    assert answer is not None and answer.kind == "*ACK"
    panel.close()


def test_bad_crc_and_bad_length_are_never_acked_and_are_dead_letters(centre: Centre) -> None:
    centre.add_panel("PANEL-5", "5555")
    panel = Connection(centre.port)
    panel.send(frame("ADM-CID", 1, "5555", "1100 01 001", at=clock.now(), bad_crc=True))
    assert panel.answer(timeout=1.5) is None
    good = frame("ADM-CID", 2, "5555", "1100 01 001", at=clock.now()).strip()
    wrong_length = good[:4] + f"{int(good[4:8], 16) + 1:04X}".encode() + good[8:]
    panel.send(b"\n" + wrong_length + b"\r")
    assert panel.answer(timeout=1.5) is None
    assert [letter.reason for letter in centre.dead_letters()] == ["dc09_bad_crc", "dc09_bad_length"]
    assert centre.dead_letters()[0].topic == "dc09/5555"
    assert centre.events("PANEL-5") == []
    panel.close()


def test_retransmission_is_one_event_and_a_wrapped_sequence_is_a_new_one(centre: Centre) -> None:
    centre.add_panel("PANEL-6", "6666")
    panel = Connection(centre.port)
    at = clock.now()
    once = frame("SIA-DCS", 42, "6666", "#6666|Nri1/MA1", at=at)
    for _ in range(2):  # the panel missed our ACK and sends the same frame again
        panel.send(once)
        answer = panel.answer()
        assert answer is not None and answer.kind == "ACK"
    assert len(centre.events("PANEL-6")) == 1
    # 10,000 frames later the 4-digit sequence number is 0042 again: another event (another timestamp).
    panel.send(frame("SIA-DCS", 42, "6666", "#6666|Nri1/MA1", at=at + timedelta(seconds=1)))
    assert panel.answer() is not None
    assert len(centre.events("PANEL-6")) == 2
    with centre.db.sessions() as session:
        incident = session.scalar(select(Incident))
        assert incident is not None and incident.signal_count == 2
    panel.close()


def test_untimed_retransmission_is_one_event(sqlite_centre: Centre) -> None:
    sqlite_centre.add_panel("PANEL-7", "7777")
    panel = Connection(sqlite_centre.port)
    untimed = frame("SIA-DCS", 3, "7777", "Nri1/RP", prefixes="L0")  # no R, no timestamp: allowed in clear
    for _ in range(2):
        panel.send(untimed)
        assert panel.answer() is not None
    assert len(sqlite_centre.events("PANEL-7")) == 1
    panel.close()


def test_split_frame_and_two_frames_in_one_packet(centre: Centre) -> None:
    centre.add_panel("PANEL-8", "8888")
    panel = Connection(centre.port)
    one = frame("SIA-DCS", 1, "8888", "#8888|Nri1/YT", at=clock.now())
    panel.send(one[:15])
    threading.Event().wait(0.3)
    panel.send(one[15:])
    answer = panel.answer()
    assert answer is not None and '"ACK"0001' in answer.message
    # Two frames in one segment, with a vendor's CRLF ending and no leading LF on the second.
    two = frame("SIA-DCS", 2, "8888", "#8888|Nri1/AT", at=clock.now(), ending=b"\r\n") + \
        frame("SIA-DCS", 3, "8888", "#8888|Nri1/TA", at=clock.now(), start=b"")
    panel.send(two)
    first, second = panel.answer(), panel.answer()
    assert first is not None and second is not None
    assert ('"ACK"0002' in first.message, '"ACK"0003' in second.message) == (True, True)
    assert [event.type for event in centre.events("PANEL-8")] == ["battery", "power_lost", "tamper"]
    device = centre.device("PANEL-8")
    assert device.battery_low and device.mains_power is False and device.tamper_at is not None
    panel.close()


def test_udp_and_link_test_mark_the_device_seen(centre: Centre) -> None:
    centre.add_panel("PANEL-9", "9999", KEY_256)
    assert centre.device("PANEL-9").last_seen_at is None
    answer = udp_exchange(centre.port, frame("NULL", 0, "9999", "", key=KEY_256, at=clock.now()))
    assert answer is not None and answer.kind == "*ACK"
    device = centre.device("PANEL-9")
    assert device.last_seen_at is not None and device.online
    [event] = centre.events("PANEL-9")
    assert event.type == "heartbeat" and event.details["dc09"]["code"] == "NULL"
    # Periodic test (Contact ID 602) counts the same; restoral of mains power over UDP.
    for data in ("1602 00 000", "3301 00 000"):
        answer = udp_exchange(centre.port, frame("ADM-CID", 5, "9999", data, key=KEY_256, at=clock.now()))
        assert answer is not None and answer.kind == "*ACK"
    assert [e.type for e in centre.events("PANEL-9")] == ["heartbeat", "heartbeat", "power_restored"]


def test_unmapped_code_is_acked_and_an_operator_task_shows_the_raw_code(centre: Centre) -> None:
    centre.add_panel("PANEL-10", "AAAA")
    panel = Connection(centre.port)
    for seq in (1, 2):  # the same unknown code twice: one task while it is open
        panel.send(frame("SIA-DCS", seq, "AAAA", "#AAAA|Nri2/ZX123", at=clock.now()))
        answer = panel.answer()
        assert answer is not None and answer.kind == "ACK"
    with centre.db.sessions() as session:
        [task] = session.scalars(select(OperatorTask))
    assert task.kind == TaskKind.DC09_UNMAPPED_CODE and task.details["dc09"]["code"] == "ZX"
    assert task.details["dc09"]["zone"] == "123" and task.details["serial"] == "PANEL-10"
    assert [e.type for e in centre.events("PANEL-10")] == ["heartbeat", "heartbeat"]  # the panel is alive
    panel.close()


def test_unknown_account_and_unreadable_data_are_duh_and_dead_letters(centre: Centre) -> None:
    centre.add_panel("PANEL-11", "BBBB")
    panel = Connection(centre.port)
    panel.send(frame("SIA-DCS", 5, "CCCC", "#CCCC|Nri1/MA1", at=clock.now()))
    answer = panel.answer()
    assert answer is not None and answer.message.startswith('"DUH"0005R0L0#CCCC[]')
    panel.send(frame("ADM-CID", 6, "BBBB", "#BBBB|not contact id", at=clock.now()))
    answer = panel.answer()
    assert answer is not None and answer.kind == "DUH"
    panel.send(frame("SIA-DCS", 7, "BBBB", "#BBBB|Nri1/MA1", key=KEY, at=clock.now()))  # no key configured
    answer = panel.answer()
    assert answer is not None and answer.kind == "NAK"
    assert [(d.reason, d.topic) for d in centre.dead_letters()] == [
        ("dc09_unknown_account", "dc09/CCCC"), ("dc09_not_understood", "dc09/BBBB"),
        ("dc09_decrypt_failed", "dc09/BBBB")]
    panel.close()


def test_plain_frame_for_an_account_with_a_key_is_refused(sqlite_centre: Centre) -> None:
    sqlite_centre.add_panel("PANEL-12", "DDDD", KEY)
    panel = Connection(sqlite_centre.port)
    panel.send(frame("SIA-DCS", 1, "DDDD", "#DDDD|Nri1/MA1", at=clock.now()))
    answer = panel.answer()
    assert answer is not None and answer.kind == "DUH"
    assert [d.reason for d in sqlite_centre.dead_letters()] == ["dc09_not_encrypted"]
    assert count_rows(sqlite_centre.db, Incident) == 0
    panel.close()


def test_a_real_hubs_frame_at_its_own_time(sqlite_centre: Centre) -> None:
    """The hub's encrypted link test from pysiaalarm's tests, received at the hub's time."""
    sqlite_centre.add_panel("HUB-1", "AAAB", b"AAAAAAAAAAAAAAAA")
    Clock(datetime(2020, 7, 5, 18, 25, 0, tzinfo=UTC))
    panel = Connection(sqlite_centre.port)
    panel.send(b'\n76D80055"*NULL"0000R0L0#AAAB[B4BC8B40D0E6D959D6BEA78E88CC0B2155741A3C44FBB96D476A3E557CAD64D9\r')
    answer = panel.answer()
    assert answer is not None and answer.kind == "*ACK"
    assert answer.receiver_time(b"AAAAAAAAAAAAAAAA") == datetime(2020, 7, 5, 18, 25, 0, tzinfo=UTC)
    assert sqlite_centre.device("HUB-1").last_seen_at is not None
    panel.close()


def test_account_key_is_stored_encrypted(sqlite_centre: Centre) -> None:
    sqlite_centre.add_panel("PANEL-13", "abc123", KEY_256)
    device = sqlite_centre.device("PANEL-13")
    assert device.dc09_account == "ABC123"
    assert device.dc09_key_ciphertext and KEY_256.hex() not in device.dc09_key_ciphertext
    assert decode_key(device.dc09_key_ciphertext, sqlite_centre.cipher) == KEY_256
    with transaction(sqlite_centre.db.sessions) as session, pytest.raises(ValueError, match="belongs to"):
        other = make_device(session, "PANEL-14")
        set_account(session, device=other, account="ABC123", key=None, cipher=sqlite_centre.cipher)


def test_an_account_without_a_key_is_refused_in_production_unless_allowed(sqlite_db: Database) -> None:
    """Under ALARMCENTRE_ENV=production a keyless account's frames are refused (DUH and a dead letter): anyone
    who knows the number could send them. ALARMCENTRE_DC09_ALLOW_UNENCRYPTED=true takes them, for old panels."""
    cipher = MultiFernet([Fernet(Fernet.generate_key())])
    for allow, expected in ((None, "DUH"), (True, "ACK")):
        settings = Settings(env="production", dc09_allow_unencrypted=allow)
        server = background_dc09_server(Dc09Receiver(sqlite_db.sessions, settings=settings, cipher=lambda: cipher),
                                        host="127.0.0.1", port=0).start()
        try:
            centre = Centre(sqlite_db, server, cipher)
            serial, account = ("PANEL-P1", "E001") if allow is None else ("PANEL-P2", "E002")
            centre.add_panel(serial, account)
            panel = Connection(centre.port)
            panel.send(frame("SIA-DCS", 1, account, f"#{account}|Nri1/MA1", at=clock.now()))
            answer = panel.answer()
            panel.close()
        finally:
            server.stop()
        assert answer is not None and answer.kind == expected, (allow, answer)
    assert [(d.reason, d.topic) for d in centre.dead_letters()] == [("dc09_account_without_key", "dc09/E001")]
    assert count_rows(sqlite_db, Incident) == 1  # PANEL-P2's alarm, taken because it was allowed


def test_the_cli_refuses_an_account_without_a_key_in_production(tmp_path: Path) -> None:
    env = {**os.environ, "ALARMCENTRE_ENV": "production", "ALARMCENTRE_DATA_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "alarmcentre.cli", "devices", "dc09", "PANEL-9", "--account", "1234"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode != 0 and "without a key is refused" in run.stderr, run


def test_the_simulator_is_a_dc09_panel_over_tcp_and_udp(sqlite_centre: Centre, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from alarmcentre_sim.cli import main as simulator

    sqlite_centre.add_panel("PANEL-S1", "5A5A", KEY)
    (tmp_path / "panel.key").write_text(KEY.decode())
    common = ["5a5a", "--port", str(sqlite_centre.port), "--key-file", str(tmp_path / "panel.key"),
              "--key-format", "ascii"]
    assert simulator(["dc09", *common]) == 0
    for kind in ("low-battery", "mains-lost", "link-test"):
        assert simulator(["dc09", *common, "--type", kind, "--transport", "udp"]) == 0
    assert "1 of 1 link-test frame(s) acknowledged" in capsys.readouterr().err
    assert [e.type for e in sqlite_centre.events("PANEL-S1")] == ["button_press", "battery", "power_lost",
                                                                  "heartbeat"]
    # The wrong key: NAK, reported, exit 1.
    (tmp_path / "panel.key").write_text("FEDCBA9876543210")
    assert simulator(["dc09", *common]) == 1
    assert "NAK" in capsys.readouterr().err
