"""What texting can cost, bounded (docs/dispatch.md "What texts cost: bounds"), with the same real parts
as tests/test_dispatch_sms.py: the real `twilio` library against the local fake Twilio, a real database
(SQLite and PostgreSQL), the app's webhooks, a controlled clock.

Covered: the destination allow-list (a text abroad never reaches Twilio, fails with its reason, and a
dispatch step to it moves the plan on), the global hourly cap (replies wait, dispatch texts go), the
per-country cap, and the loop bounds of the automatic answers (an echoing, a fixed-text and a marked
auto-responder get at most one answer; a burst gets none).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from alarmcentre.config import Settings
from alarmcentre.contacts.models import ContactKind
from alarmcentre.dispatch import texts
from alarmcentre.dispatch.models import SmsDirection, SmsMessage, SmsStatus, StepState
from alarmcentre.dispatch.sms import allowed_calling_codes, destination_code
from alarmcentre.runtime import Database
from tests.fake_twilio import FakeTwilio
from tests.test_dispatch_sms import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    LV,
    NEIGHBOUR,
    T0,
    TWILIO_NUMBER,
    WORKER,
    Centre,
    PlanEntry,
    make_centre,
    twilio_settings,
)

ABROAD = "+447700900123"  # a UK mobile (Ofcom's range for drama)
ABROAD_2, ABROAD_3 = "+447700900124", "+447700900125"
LATVIAN = ("+37120000011", "+37120000012", "+37120000013", "+37120000014")


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=TWILIO_NUMBER) as server:
        yield server


@contextmanager
def bounded(db: Database, fake: FakeTwilio, tmp_path: Path, **overrides: Any) -> Iterator[Centre]:
    """A centre with Twilio; no allow-list override unless given (the default: Latvia only)."""
    with make_centre(db, twilio_settings(fake, tmp_path, **overrides), fake) as centre:
        yield centre


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def sent_to(fake: FakeTwilio) -> list[str | None]:
    return [request.field("To") for request in fake.accepted]


# -- the destination allow-list ----------------------------------------------------------------


def test_the_allowed_countries_are_calling_codes(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).sms_allowed_countries == "371"
    codes = allowed_calling_codes(Settings(data_dir=tmp_path, sms_allowed_countries=" +371, 44,1204 ,1"))
    assert codes == ("1204", "371", "44", "1"), "longest first: a prefix narrows its calling code"
    assert destination_code("+12045550100", codes) == "1204"
    assert destination_code("+12125550100", codes) == "1"
    assert destination_code("+37120000001", codes) == "371"
    assert destination_code("+37020000001", codes) is None
    assert destination_code("113", codes) is None, "not E.164: never sent"
    for wrong in ("LV", "371;44", "", "+0", "371,"):
        with pytest.raises(ValidationError):
            Settings(data_dir=tmp_path, sms_allowed_countries=wrong)


def test_a_text_abroad_is_refused_and_never_reaches_twilio(any_db: Database, fake: FakeTwilio, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    refused_before = counter("alarmcentre_sms_refused_country_total", purpose="reply")
    with bounded(any_db, fake, tmp_path) as centre, caplog.at_level(logging.INFO):
        abroad = centre.queue(ABROAD, "Neizpratām. Atbildiet: 1 - pieņemu", purpose="reply")
        home = centre.queue(WORKER, "Drošības poga", purpose="inform")
        centre.tick()
        centre.tick(3600)

        message = centre.text(abroad)
        assert message.status == SmsStatus.FAILED
        assert message.last_error is not None and "ALARMCENTRE_SMS_ALLOWED_COUNTRIES=371" in message.last_error
        assert (message.attempts, message.provider_sid, message.sent_at) == (0, None, None)
        assert centre.text(home).status == SmsStatus.SENT
        assert ABROAD not in [request.field("To") for request in fake.requests], "never handed to the provider"
        assert sent_to(fake) == [WORKER]
    assert counter("alarmcentre_sms_refused_country_total", purpose="reply") == refused_before + 1
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "+4477…" in logged and ABROAD not in logged and ABROAD[4:] not in logged


def test_the_texts_of_an_alarm_still_reach_a_contact_abroad(any_db: Database, fake: FakeTwilio,
                                                            tmp_path: Path) -> None:
    """The allow-list bounds what the centre sends by itself; a relative abroad is still asked and told."""
    plan: list[PlanEntry] = [(ContactKind.RELATIVE, "John Bērziņš", ABROAD, LV),
                             (ContactKind.NEIGHBOUR, "Kārlis Ozols", NEIGHBOUR, LV)]
    with bounded(any_db, fake, tmp_path) as centre:
        case = centre.open_incident(plan)
        centre.start(case)
        centre.tick()
        assert centre.states(case) == [StepState.WAITING, StepState.PENDING]
        assert [(m.to_number, m.status) for m in centre.texts(purpose="dispatch")] == [(ABROAD, SmsStatus.SENT)]
        informed = centre.queue(ABROAD, "Drošības poga", purpose="inform")
        centre.tick(10)
        assert centre.text(informed).status == SmsStatus.SENT and sent_to(fake) == [ABROAD, ABROAD]


# -- the hourly caps ---------------------------------------------------------------------------


def test_the_global_cap_holds_replies_but_lets_dispatch_texts_through(any_db: Database, fake: FakeTwilio,
                                                                       tmp_path: Path) -> None:
    held_before = counter("alarmcentre_sms_held_total", cap="global")
    with bounded(any_db, fake, tmp_path, sms_global_max_per_hour=3) as centre:
        first = [centre.queue(number, "Paldies", purpose="reply") for number in LATVIAN[:3]]
        centre.sender.send_due()
        assert sent_to(fake) == list(LATVIAN[:3])

        centre.clock.advance(10)
        held = centre.queue(LATVIAN[3], "Paldies", purpose="reply")
        late = centre.queue(NEIGHBOUR, "Paldies par atsaucību", purpose="late_reply")
        centre.sender.send_due()
        for sms_id in (held, late):
            message = centre.text(sms_id)
            assert message.status == SmsStatus.QUEUED, "held, not dropped"
            assert message.not_before == T0 + timedelta(hours=1), "until the oldest of the hour turns an hour old"
        assert counter("alarmcentre_sms_held_total", cap="global") == held_before + 2

        # An alarm's texts go out over the cap, and count towards it.
        centre.clock.advance(10)
        alarm = [centre.queue(WORKER, "Trauksme", purpose="dispatch"),
                 centre.queue(LATVIAN[0], "Trauksme #1", purpose="supervisor_alert")]
        centre.sender.send_due()
        assert [centre.text(sms_id).status for sms_id in alarm] == [SmsStatus.SENT] * 2
        assert [centre.text(sms_id).status for sms_id in (held, late)] == [SmsStatus.QUEUED] * 2

        centre.clock.now = T0 + timedelta(hours=1)
        centre.sender.send_due()
        # The three replies of T0 are an hour old; the alarm's two texts still count: one place.
        assert [centre.text(sms_id).status for sms_id in (held, late)] == [SmsStatus.SENT, SmsStatus.QUEUED]
        assert centre.text(held).sent_at == T0 + timedelta(hours=1)
        assert centre.text(late).not_before == T0 + timedelta(hours=1, seconds=20)
        centre.clock.advance(20)
        centre.sender.send_due()
        assert [centre.text(sms_id).status for sms_id in (*first, held, late)] == [SmsStatus.SENT] * 5


def test_the_country_cap_holds_replies_to_that_country_only(any_db: Database, fake: FakeTwilio,
                                                           tmp_path: Path) -> None:
    held_before = counter("alarmcentre_sms_held_total", cap="country")
    with bounded(any_db, fake, tmp_path, sms_allowed_countries="371,44", sms_country_max_per_hour=2) as centre:
        uk = [centre.queue(number, "Thank you", purpose="reply") for number in (ABROAD, ABROAD_2, ABROAD_3)]
        home = [centre.queue(number, "Paldies", purpose="reply") for number in LATVIAN]
        centre.tick()
        assert [centre.text(sms_id).status for sms_id in uk] == [SmsStatus.SENT, SmsStatus.SENT, SmsStatus.QUEUED]
        assert sent_to(fake)[:2] == [ABROAD, ABROAD_2], "an allowed country is texted"
        assert [centre.text(sms_id).status for sms_id in home] == [SmsStatus.SENT] * 4, "home: the global cap only"
        assert counter("alarmcentre_sms_held_total", cap="country") == held_before + 1

        dispatch = centre.queue(ABROAD_3, "Trauksme", purpose="dispatch")
        centre.tick(30)
        assert centre.text(dispatch).status == SmsStatus.SENT, "a dispatch text is never held by a cap"
        assert centre.text(uk[2]).status == SmsStatus.QUEUED
        centre.tick(3600)
        assert centre.text(uk[2]).status == SmsStatus.SENT


# -- loops with auto-responders ------------------------------------------------------------------


def automatic_answers(centre: Centre, number: str) -> list[SmsMessage]:
    return [m for m in centre.texts(direction=SmsDirection.OUT, to_number=number)
            if m.purpose in ("reply", "late_reply")]


def test_two_auto_responders_cannot_talk_to_each_other(any_db: Database, fake: FakeTwilio, tmp_path: Path) -> None:
    """The worker's phone answers every text it gets, at once: an echo, then a fixed text."""
    with bounded(any_db, fake, tmp_path) as centre:
        centre.dispatched()
        for round_ in range(20):
            received = [str(r.field("Body")) for r in fake.accepted if r.field("To") == WORKER]
            centre.reply(WORKER, f"Re: {received[-1]}" if round_ % 2 == 0 else "I am driving, I will call you back.")
            centre.tick(10)
        assert len(centre.texts(direction=SmsDirection.IN)) == 20
        answers = automatic_answers(centre, WORKER)
        assert len(answers) <= 1, [m.body for m in answers]
        suppressed = [m.details.get("auto_reply") for m in centre.texts(direction=SmsDirection.IN)]
        assert sum(1 for reason in suppressed if reason) >= 19, suppressed


def test_an_echo_of_the_centres_text_is_not_answered(any_db: Database, fake: FakeTwilio, tmp_path: Path) -> None:
    echoes_before = counter("alarmcentre_sms_auto_replies_suppressed_total", reason="echo")
    with bounded(any_db, fake, tmp_path) as centre:
        centre.dispatched()
        for _ in range(20):
            last = [str(r.field("Body")) for r in fake.accepted if r.field("To") == WORKER][-1]
            centre.reply(WORKER, last)
            centre.tick(120)  # slower than any window: the echo itself is recognised
        assert automatic_answers(centre, WORKER) == []
        assert {m.details.get("auto_reply") for m in centre.texts(direction=SmsDirection.IN)} == {"suppressed: echo"}
    assert counter("alarmcentre_sms_auto_replies_suppressed_total", reason="echo") == echoes_before + 20


@pytest.mark.parametrize("body", ["Auto-reply: I am on holiday until Monday.", "[Automātiskā atbilde] Atvaļinājumā",
                                  "Re: Out of office", "АВТООТВЕТ: в отпуске"])
def test_a_marked_auto_reply_is_never_answered(centre: Centre, body: str) -> None:
    centre.dispatched()
    centre.reply(WORKER, body)
    (received,) = centre.texts(direction=SmsDirection.IN)
    assert received.details == {"auto_reply": "suppressed: auto_reply_marker"}
    assert automatic_answers(centre, WORKER) == []


def test_a_person_gets_help_once_a_window_and_every_reply_word_confirmed(centre: Centre) -> None:
    case = centre.dispatched()
    centre.reply(WORKER, "kas notiek?")
    centre.tick(10)
    centre.reply(WORKER, "kas???")  # not understood again, within the window: stored, shown, not answered
    centre.tick(10)
    centre.answer(WORKER, "Jā")  # a reply word: applied and confirmed
    centre.tick(10)
    assert [m.body for m in automatic_answers(centre, WORKER)] == [
        texts.help_text(LV), texts.reply_confirmation(LV, texts.Reply.ACCEPT, centre.code(WORKER))]
    assert centre.states(case)[0] == StepState.ACCEPTED
    centre.tick(31 * 60)
    centre.reply(WORKER, "kas notiek?")  # after the window: help again
    assert [m.body for m in automatic_answers(centre, WORKER)][-1] == texts.help_text(LV)
    assert len(automatic_answers(centre, WORKER)) == 3


def test_a_burst_from_one_number_gets_no_answers(centre: Centre) -> None:
    bursts_before = counter("alarmcentre_sms_auto_replies_suppressed_total", reason="burst")
    centre.dispatched()
    for _ in range(10):
        centre.reply(WORKER, "1")  # a reply word, ten times in a few seconds: a machine
        centre.clock.advance(2)
    assert len(automatic_answers(centre, WORKER)) == 5, "the first five are a person's"
    assert counter("alarmcentre_sms_auto_replies_suppressed_total", reason="burst") == bursts_before + 5


@pytest.fixture
def centre(sqlite_db: Database, fake: FakeTwilio, tmp_path: Path) -> Iterator[Centre]:
    with bounded(sqlite_db, fake, tmp_path) as built:
        yield built
