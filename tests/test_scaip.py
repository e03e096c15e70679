"""The SCAIP receiver: real sockets, real databases, requests made by an independent SIP sender
(tests/scaip_device.py) and bodies taken from published traces of real devices."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy import select

from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.deadletters.models import DeadLetter
from alarmcentre.devices.models import Device, DeviceEvent
from alarmcentre.incidents.models import Incident, TimelineEntry, TimelineKind
from alarmcentre.ingest.protocol import EventType
from alarmcentre.receivers import scaip_message as wire
from alarmcentre.receivers.scaip import RETRANSMISSION_WINDOW_S, ScaipReceiver, set_identity
from alarmcentre.receivers.scaip_codes import signal
from alarmcentre.receivers.scaip_server import background_scaip_server
from alarmcentre.receivers.server import BackgroundReceiver
from alarmcentre.runtime import Database
from alarmcentre.tasks.models import OperatorTask, TaskKind
from tests.conftest import free_port, wait_for_port
from tests.factories import Clock, count_rows, make_client, make_device
from tests.scaip_device import Device as ScaipDevice
from tests.scaip_device import mrq, read_tcp_responses

# Bodies as published from real units' traffic (heartbeats and alarms), kept byte for byte.
ESSENCE_HEARTBEAT = ("<mrq><ref>00001A85</ref><cha>0</cha><mty>PI</mty><cid>26317</cid><dty>02</dty><did>00</did>"
                     "<crd>no-voice:</crd><stc>102</stc></mrq>")
POSSUM_HEARTBEAT = "<mrq><mty>PI</mty><ref>1998218577</ref><cid>10149471</cid><dty>2</dty></mrq>"
TELEALARM_HEARTBEAT = ("<mrq><ref>v6l7eiuzBTfybE7j</ref><cid>999998</cid><dty>0002</dty><mty>PI</mty><stc>0009</stc>"
                       "<lco>002</lco><crd>gsm:</crd><cha>0</cha></mrq>")
ESSENCE_ALARM = ("<mrq><ref>00001883</ref><cha>0</cha><mty>ME</mty><cid>26317</cid><dty>02</dty><did>00</did>"
                 "<crd>gsm:+37284463906</crd><stc>010</stc></mrq>")
POSSUM_ALARM = "<mrq><ref>1193308443</ref><cid>10149471</cid><dty>3</dty><stc>10</stc><crd>gsm:</crd></mrq>"
TELEALARM_ALARM_0067 = ("<mrq><ref>lmepivnFqmI8Jvv1</ref><cid>999998</cid><dty>0002</dty><mty>ME</mty><stc>0067</stc>"
                        "<crd>gsm:</crd><cha>0</cha></mrq>")
DORO_ALARM = ("<mrq><ref>803137200003</ref><mty>ME</mty><cid> 8031372</cid><dty>0004</dty><stc>0010</stc>"
              "<crd>gsm:+</crd></mrq>")


# -- the codec against published bodies -----------------------------------------------------------------


def test_published_device_bodies_parse_and_map() -> None:
    expected = [(ESSENCE_HEARTBEAT, "26317", EventType.HEARTBEAT, True),
                (POSSUM_HEARTBEAT, "10149471", EventType.HEARTBEAT, True),
                (TELEALARM_HEARTBEAT, "999998", EventType.HEARTBEAT, True),
                (ESSENCE_ALARM, "26317", EventType.BUTTON_PRESS, True),
                (POSSUM_ALARM, "10149471", EventType.BUTTON_PRESS, True),  # no <mty>: an alarm message
                (TELEALARM_ALARM_0067, "999998", EventType.BUTTON_PRESS, False),  # unknown code: still an alarm
                (DORO_ALARM, "8031372", EventType.BUTTON_PRESS, True)]  # the cid's leading space is dropped
    for body, cid, event_type, mapped in expected:
        tags = wire.parse_mrq(body.encode())
        found = signal(tags)
        assert (tags["cid"], found.type, found.mapped) == (cid, event_type, mapped), body
    assert signal(wire.parse_mrq(TELEALARM_ALARM_0067.encode())).code == "ME/0067"
    assert signal(wire.parse_mrq(mrq("1", "5", mty="RE", stc=None).encode())).type == EventType.CANCEL
    assert signal(wire.parse_mrq(mrq("1", "5", stc="19").encode())).type == EventType.CANCEL


def test_bodies_the_receiver_refuses_say_why() -> None:
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            "<mrq><ref>&lol2;</ref><cid>1</cid><dty>1</dty></mrq>")
    cases = [(bomb, wire.StatusNumber.INVALID_FORMAT), ("<mrq><ref>1</ref>", wire.StatusNumber.INVALID_FORMAT),
             ("<mrs><ref>1</ref><snu>0</snu></mrs>", wire.StatusNumber.INVALID_FORMAT),
             ("<mrq><ref>1</ref><dty>4</dty></mrq>", wire.StatusNumber.MANDATORY_TAG_MISSING),
             ("<mrq>" + "<x>y</x>" * 600 + "</mrq>", wire.StatusNumber.MESSAGE_TOO_LONG)]
    for body, snu in cases:
        with pytest.raises(wire.ScaipError) as caught:
            wire.parse_mrq(body.encode())
        assert caught.value.snu is snu, body


def test_tcp_stream_is_cut_by_content_length_and_keepalives_are_dropped() -> None:
    device = ScaipDevice(port=5060, cid="1")
    a, b = device.message(mrq("1", "1")), device.message(mrq("2", "1"), bare_lf=True)
    buffer = bytearray(b"\r\n\r\n" + a + b[:20])
    assert wire.split_stream(buffer) == [a]
    buffer.extend(b[20:])
    assert wire.split_stream(buffer) == [b] and not buffer
    assert wire.parse_request(b).header("call-id") == device.call_id


def test_digest_matches_rfc_2617s_example() -> None:
    # RFC 2617 section 3.5: the password of "Mufasa" is "Circle Of Life".
    params = {"nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093", "uri": "/dir/index.html", "qop": "auth",
              "nc": "00000001", "cnonce": "0a4f113b"}
    response = wire.digest_response(wire.ha1("Mufasa", "testrealm@host.com", "Circle Of Life"), method="GET",
                                    params=params)
    assert response == "6629fae49393a05397450978507c4ef1"


# -- the receiver on real sockets and a real database ------------------------------------------------------


class Centre:
    def __init__(self, db: Database, server: BackgroundReceiver, cipher: MultiFernet) -> None:
        self.db, self.server, self.cipher = db, server, cipher

    @property
    def port(self) -> int:
        return self.server.port

    def add_device(self, serial: str, cid: str, password: str | None = None, *, client: bool = True) -> ScaipDevice:
        with transaction(self.db.sessions, writes=True) as session:
            device = make_device(session, serial, client=make_client(session) if client else None)
            set_identity(session, device=device, cid=cid, password=password, cipher=self.cipher)
        return ScaipDevice(port=self.port, cid=cid, password=password)

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


def _centre(db: Database, settings: Settings | None = None) -> Iterator[Centre]:
    cipher = MultiFernet([Fernet(Fernet.generate_key())])
    receiver = ScaipReceiver(db.sessions, settings=settings or Settings(), cipher=lambda: cipher)
    server = background_scaip_server(receiver, host="127.0.0.1", port=0).start()
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


def test_an_alarm_opens_an_incident_committed_before_the_answer(centre: Centre) -> None:
    device = centre.add_device("SCAIP-1", "26317")
    answer = device.send(ESSENCE_ALARM)
    assert answer is not None and answer.status == 200
    assert answer.headers["content-type"] == "application/scaip+xml"
    assert (answer.tag("ref"), answer.tag("snu")) == ("00001883", "0")
    assert answer.headers["call-id"] == device.call_id and answer.headers["cseq"] == f"{device.cseq} MESSAGE"
    # When the device holds the answer, the incident is committed (read on another connection).
    with centre.db.sessions() as session:
        incident = session.scalar(select(Incident))
        assert incident is not None and incident.kind == "button_press"
        notes = list(session.scalars(select(TimelineEntry).where(TimelineEntry.incident_id == incident.id,
                                                                TimelineEntry.kind == TimelineKind.NOTE)))
    [note] = [note for note in notes if note.actor == "scaip:26317"]
    assert "ME/010" in note.details["text"] and "call back on gsm:+37284463906" in note.details["text"]
    [event] = centre.events("SCAIP-1")
    assert event.type == "button_press" and event.details["scaip"]["tags"]["dty"] == "02"


def test_two_messages_in_one_tcp_segment_and_one_split_over_two(centre: Centre) -> None:
    device = centre.add_device("SCAIP-2", "2002")
    first, second, third = (device.message(mrq(ref, "2002", mty="PI", stc=None)) for ref in ("a1", "a2", "a3"))
    with socket.create_connection(("127.0.0.1", centre.port)) as sock:
        sock.sendall(first + second + third[:30])
        sock.sendall(third[30:])
        answers = read_tcp_responses(sock, 3)
    assert [(a.status, a.tag("ref"), a.tag("snu")) for a in answers] == [(200, "a1", "0"), (200, "a2", "0"),
                                                                         (200, "a3", "0")]
    assert [e.type for e in centre.events("SCAIP-2")] == ["heartbeat"] * 3
    seen = centre.device("SCAIP-2")
    assert seen.last_seen_at is not None and seen.online


def test_a_resent_message_is_one_event_and_a_ref_that_comes_round_again_later_is_a_new_one(
        sqlite_centre: Centre) -> None:
    clock = Clock(datetime.now(UTC))
    device = sqlite_centre.add_device("SCAIP-3", "3003")
    for _ in range(2):  # the device missed our answer and sends the same message again
        answer = device.send(mrq("0042", "3003"))
        assert answer is not None and answer.tag("snu") == "0"
        clock.advance(10)
    assert len(sqlite_centre.events("SCAIP-3")) == 1
    clock.advance(RETRANSMISSION_WINDOW_S + 1)  # its counter wrapped: ref 0042 is a new alarm
    answer = device.send(mrq("0042", "3003"))
    assert answer is not None and answer.tag("snu") == "0"
    assert len(sqlite_centre.events("SCAIP-3")) == 2
    with sqlite_centre.db.sessions() as session:
        incident = session.scalar(select(Incident))
        assert incident is not None and incident.signal_count == 2


def test_digest_authentication_challenges_takes_the_right_password_and_refuses_the_wrong_one(
        centre: Centre) -> None:
    device = centre.add_device("SCAIP-4", "4004", "correct horse battery")
    body = mrq("r1", "4004")
    challenge = device.udp(device.message(body))
    assert challenge is not None and challenge.status == 401
    assert 'realm="alarmcentre"' in challenge.headers["www-authenticate"]
    assert count_rows(centre.db, Incident) == 0 and centre.dead_letters() == []  # a challenge is no refusal
    wrong = device.udp(device.message(body, authorization=device.authorization(
        challenge.headers["www-authenticate"], password="wrong password!")))
    assert wrong is not None and wrong.status == 403
    assert [(d.reason, d.topic, d.device_serial) for d in centre.dead_letters()] == [
        ("scaip_bad_credentials", "scaip/4004", "SCAIP-4")]
    assert count_rows(centre.db, Incident) == 0
    authorization = device.authorization(challenge.headers["www-authenticate"])
    right = device.udp(device.message(body, authorization=authorization))
    assert right is not None and right.status == 200 and right.tag("snu") == "0"
    assert count_rows(centre.db, Incident) == 1
    # The same authorised request resent is the same event; the answer on another body is a replay.
    again = device.udp(device.message(body, authorization=authorization))
    assert again is not None and again.tag("snu") == "0" and len(centre.events("SCAIP-4")) == 1
    forged = device.udp(device.message(mrq("r2", "4004", mty="RE", stc=None), authorization=authorization))
    assert forged is not None and forged.status == 401 and "stale=true" in forged.headers["www-authenticate"]
    assert [e.type for e in centre.events("SCAIP-4")] == ["button_press"]  # the forged cancel did nothing
    # A unit that reuses its nonce for its next message simply answers the new challenge.
    retry = device.udp(device.message(mrq("r2", "4004", mty="RE", stc=None), authorization=device.authorization(
        forged.headers["www-authenticate"])))
    assert retry is not None and retry.tag("snu") == "0"
    assert [e.type for e in centre.events("SCAIP-4")] == ["button_press", "cancel"]
    # Another device's name in the digest is refused, even with that device's right password.
    other = centre.add_device("SCAIP-5", "5005", "another password")
    impostor = ScaipDevice(port=centre.port, cid="5005", password="another password")
    challenge = impostor.udp(impostor.message(mrq("r3", "4004")))
    assert challenge is not None and challenge.status == 401
    stolen = impostor.udp(impostor.message(mrq("r3", "4004"), authorization=impostor.authorization(
        challenge.headers["www-authenticate"])))
    assert stolen is not None and stolen.status == 403 and other.cid == "5005"
    assert len(centre.events("SCAIP-4")) == 2


def test_what_the_receiver_refuses_is_answered_and_dead_lettered(centre: Centre) -> None:
    device = centre.add_device("SCAIP-6", "6006")
    unknown = ScaipDevice(port=centre.port, cid="9999").send(mrq("u1", "9999"))
    assert unknown is not None and (unknown.status, unknown.tag("snu"), unknown.tag("ref")) == (200, "3", "u1")
    missing = device.send("<mrq><ref>m1</ref><dty>4</dty></mrq>")
    assert missing is not None and (missing.tag("snu"), missing.tag("ref")) == ("7", "m1")
    broken = device.send("<mrq><ref>b1</ref><cid>6006</cid>")
    assert broken is not None and broken.tag("snu") == "2"
    strange = device.send(mrq("s1", "6006", mty="XX"))
    assert strange is not None and strange.tag("snu") == "3"
    assert device.udp(b"HELLO there\r\n\r\n", timeout=1.5) is None  # not SIP: no answer can be addressed
    assert [d.reason for d in centre.dead_letters()] == [
        "scaip_unknown_device", "scaip_mandatory_tag_missing", "scaip_invalid_format", "scaip_not_understood",
        "scaip_not_sip"]
    assert centre.dead_letters()[0].topic == "scaip/9999"
    assert centre.events("SCAIP-6") == [] and count_rows(centre.db, Incident) == 0
    options = device.udp(device.message("", method="OPTIONS"))
    assert options is not None and options.status == 200 and "MESSAGE" in options.headers["allow"]
    invite = device.udp(device.message("", method="INVITE"))
    assert invite is not None and invite.status == 405


def test_an_unknown_alarm_code_still_raises_an_alarm_and_an_operator_task_shows_it(centre: Centre) -> None:
    device = centre.add_device("SCAIP-7", "999998")
    answer = device.send(TELEALARM_ALARM_0067)
    assert answer is not None and answer.tag("snu") == "0"
    info = device.send(mrq("i1", "999998", mty="IN", stc="0300"))
    assert info is not None and info.tag("snu") == "0"
    assert [e.type for e in centre.events("SCAIP-7")] == ["button_press", "heartbeat"]
    assert count_rows(centre.db, Incident) == 1
    with centre.db.sessions() as session:
        found = list(session.scalars(select(OperatorTask).where(OperatorTask.kind == TaskKind.SCAIP_UNMAPPED_CODE)))
    assert sorted(task.details["scaip"]["code"] for task in found) == ["IN/0300", "ME/0067"]


def test_a_cancel_after_the_alarm_is_recorded_on_its_incident(centre: Centre) -> None:
    device = centre.add_device("SCAIP-8", "8008")
    assert device.send(mrq("c1", "8008")) is not None
    answer = device.send(mrq("c2", "8008", mty="RE", stc=None))
    assert answer is not None and answer.tag("snu") == "0"
    assert [e.type for e in centre.events("SCAIP-8")] == ["button_press", "cancel"]
    with centre.db.sessions() as session:
        kinds = list(session.scalars(select(TimelineEntry.kind)))
    assert TimelineKind.CANCEL in kinds


def test_the_password_is_stored_encrypted(sqlite_centre: Centre) -> None:
    sqlite_centre.add_device("SCAIP-9", "9009", "a secret password")
    stored = sqlite_centre.device("SCAIP-9").scaip_password_ciphertext
    assert stored and "a secret password" not in stored
    assert sqlite_centre.cipher.decrypt(stored.encode()) == b"a secret password"
    with sqlite_centre.db.sessions() as session, pytest.raises(ValueError, match="belongs to device SCAIP-9"):
        set_identity(session, device=make_device(session, "SCAIP-10"), cid="9009", password=None,
                     cipher=sqlite_centre.cipher)


def test_a_device_without_a_password_is_refused_in_production_unless_allowed(sqlite_db: Database) -> None:
    for allow, expected in ((None, 403), (True, 200)):
        centre = next(generator := _centre(sqlite_db, Settings(env="production", scaip_allow_unauthenticated=allow)))
        try:
            cid = "7701" if allow is None else "7702"
            device = centre.add_device(f"SCAIP-P{cid}", cid)
            answer = device.send(mrq("p1", cid))
            assert answer is not None and answer.status == expected
        finally:
            generator.close()
    assert [d.reason for d in centre.dead_letters()] == ["scaip_device_without_password"]
    assert count_rows(sqlite_db, Incident) == 1


def test_the_cli_refuses_a_device_without_a_password_in_production(tmp_path: Path) -> None:
    env = {**os.environ, "ALARMCENTRE_ENV": "production", "ALARMCENTRE_DATA_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "alarmcentre.cli", "devices", "scaip", "UNIT-1", "--cid", "1234"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode != 0 and "without a password is refused" in run.stderr, run


@pytest.mark.needs_true_clock
def test_devices_scaip_then_receive_scaip_answers_a_committed_alarm_and_rotation_keeps_the_password(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.sqlite3'}"
    common = ("--data-dir", str(tmp_path), "--database-url", url)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "alarmcentre.cli", *args, *common], capture_output=True,
                              text=True, timeout=60)

    (tmp_path / "password").write_text("unit one's password\n")
    done = cli("devices", "scaip", "UNIT-1", "--cid", "1234", "--password-file", str(tmp_path / "password"),
               "--supervision-s", "3600")
    assert done.returncode == 0, done.stderr
    assert "registered, SCAIP cid 1234, SIP digest password stored encrypted" in done.stdout
    assert "every 3600 s" in done.stdout and "unit one" not in done.stdout
    clash = cli("devices", "scaip", "UNIT-2", "--cid", "1234")
    assert clash.returncode == 2 and "belongs to device UNIT-1" in clash.stderr
    assert cli("keys", "rotate").returncode == 0  # the password is encrypted again with the new key

    port, metrics_port = free_port(), free_port()
    log = (tmp_path / "scaip.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "alarmcentre.cli", "receive-scaip", "--port", str(port),
                                "--metrics-port", str(metrics_port), *common], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for_port(port, 20), (tmp_path / "scaip.log").read_text()
        answer = ScaipDevice(port=port, cid="1234", password="unit one's password").send(mrq("x1", "1234"))
        assert answer is not None and (answer.status, answer.tag("snu")) == (200, "0")
        db = Database.open(Settings(data_dir=tmp_path, database_url=url), upgrade=False)
        with db.sessions() as session:
            assert [e.type for e in session.scalars(select(DeviceEvent))] == ["button_press"]
        db.engine.dispose()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'alarmcentre_scaip_answers_total{answer="0",reason="ok"} 1.0' in metrics
        assert 'alarmcentre_scaip_answers_total{answer="401",reason="challenge"} 1.0' in metrics
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_the_simulator_is_a_scaip_unit_over_udp_and_tcp(sqlite_centre: Centre, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from alarmcentre_sim.cli import main as simulator

    sqlite_centre.add_device("SCAIP-S1", "5151", "simulated unit password")
    (tmp_path / "password").write_text("simulated unit password\n")
    common = ["--port", str(sqlite_centre.port), "--password-file", str(tmp_path / "password")]
    assert simulator(["scaip", "5151", *common, "--callback", "gsm:+37120000001"]) == 0
    assert simulator(["scaip", "5151", *common, "--type", "heartbeat", "--transport", "tcp", "--count", "2",
                      "--interval", "0"]) == 0
    assert "2 of 2 heartbeat message(s) taken" in capsys.readouterr().err
    assert [e.type for e in sqlite_centre.events("SCAIP-S1")] == ["button_press", "heartbeat", "heartbeat"]
    # A wrong password: refused, and the simulator says so (exit 1).
    (tmp_path / "password").write_text("not the password\n")
    assert simulator(["scaip", "5151", *common]) == 1
    assert "SIP 403" in capsys.readouterr().err


def test_answers_lost_on_the_way_back_make_the_unit_resend_and_the_alarm_counts_once(sqlite_centre: Centre) -> None:
    """Fault: the network drops the receiver's first two answers. The unit resends the same request
    (SIP timer E) and the third answer arrives: one event, one incident."""
    from alarmcentre_sim.scaip import ScaipUnit
    from alarmcentre_sim.scaip import mrq as sim_mrq

    sqlite_centre.add_device("SCAIP-L1", "6161")
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind(("127.0.0.1", 0))
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.settimeout(5)
    dropped: list[bytes] = []

    def forward() -> None:
        while True:
            try:
                data, unit = relay.recvfrom(65535)
            except OSError:
                return
            upstream.sendto(data, ("127.0.0.1", sqlite_centre.port))
            answer, _ = upstream.recvfrom(65535)
            if len(dropped) < 2:
                dropped.append(answer)  # lost on the way back
            else:
                relay.sendto(answer, unit)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        answer = ScaipUnit("127.0.0.1", relay.getsockname()[1], "6161").send(
            sim_mrq(ref="lost-1", cid="6161", kind="alarm"))
    finally:
        relay.close()
        upstream.close()
    assert answer.taken and answer.sends == 3 and len(dropped) == 2
    assert all(b"<snu>0</snu>" in lost for lost in dropped)  # each copy was committed-or-known before its answer
    assert [e.type for e in sqlite_centre.events("SCAIP-L1")] == ["button_press"]
    assert count_rows(sqlite_centre.db, Incident) == 1


def test_the_demos_first_device_answers_as_a_scaip_unit(sqlite_centre: Centre) -> None:
    from alarmcentre.demo import DEMO_SCAIP_CID, seed_demo

    serials = seed_demo(sqlite_centre.db.sessions, devices=2)
    seed_demo(sqlite_centre.db.sessions, devices=2)  # again at the next start: nothing changes
    answer = ScaipDevice(port=sqlite_centre.port, cid=DEMO_SCAIP_CID).send(mrq("d1", DEMO_SCAIP_CID))
    assert answer is not None and answer.tag("snu") == "0"
    first = sqlite_centre.device(serials[0])
    assert first.scaip_cid == DEMO_SCAIP_CID and sqlite_centre.device(serials[1]).scaip_cid is None
    assert first.dc09_account == "1001" and first.dc09_key_ciphertext is None  # and a DC-09 panel
    with sqlite_centre.db.sessions() as session:
        incident = session.scalar(select(Incident))
        assert incident is not None and incident.client_id == first.client_id


def test_a_new_password_shuts_the_old_one_out_at_the_next_message(sqlite_centre: Centre) -> None:
    unit = sqlite_centre.add_device("SCAIP-R1", "7171", "the old password")
    assert (answer := unit.send(mrq("o1", "7171"))) is not None and answer.tag("snu") == "0"
    with transaction(sqlite_centre.db.sessions, writes=True) as session:
        device = session.scalar(select(Device).where(Device.serial == "SCAIP-R1"))
        assert device is not None
        set_identity(session, device=device, cid="7171", password="the new password", cipher=sqlite_centre.cipher)
    refused = unit.send(mrq("o2", "7171"))  # the stolen unit, still with the old password
    assert refused is not None and refused.status == 403
    assert sqlite_centre.dead_letters()[-1].reason == "scaip_bad_credentials"
    unit.password = "the new password"
    assert (answer := unit.send(mrq("o3", "7171"))) is not None and answer.tag("snu") == "0"
    assert [e.details["scaip"]["tags"]["ref"] for e in sqlite_centre.events("SCAIP-R1")] == ["o1", "o3"]
