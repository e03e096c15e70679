"""Voice calls on the dashboard in a real browser (Chromium): a call to the centre's number arrives,
shows in the queue, is answered from the incident page and lands on its timeline, live (no reload).

The whole centre runs as in tests/browser.py, with Twilio configured against a local fake of its
REST API (tests/fake_twilio.py) and `public_url` the server's own address, so that the webhooks this
test posts to the real uvicorn are signed for the URL the server sees. The test plays Twilio's side
as tests/test_voice.py does: the incoming call, the operator's leg picking up (the <Dial><Queue url>
of the TwiML the centre placed), the caller leaving the queue, the status callbacks.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import update

from alarmcentre.clients.models import Client
from alarmcentre.db import transaction
from alarmcentre.devices.models import Device
from alarmcentre.users.models import User
from tests.conftest import services_required
from tests.fake_twilio import Callback, FakeTwilio

try:
    from playwright.sync_api import Locator, Page, expect
except ImportError:
    if services_required():
        raise
    pytest.skip("the playwright package is not installed (pip install -e '.[test]')", allow_module_level=True)

if TYPE_CHECKING:
    from tests.browser import Stack

pytest_plugins = ["tests.browser"]
Browse = Callable[..., Page]  # the open_browser fixture: open_browser("operator") -> a logged-in page

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "artifacts" / "screenshots"
LIVE_MS = 10_000  # a bound that catches a hang, not a speed test: the figures are printed (report)
ACCOUNT_SID = "AC" + "b0ce1ca1" * 4
AUTH_TOKEN = "f0e1d2c3b4a5968778695a4b3c2d1e0f"
CENTRE_NUMBER = "+37167000099"
OPERATOR_PHONE = "+37129000001"  # the demo operator's own phone, rung by "Answer"
DEVICE_SIM = "+37126100001"  # the SIM of the first demo device
CLIENT_PHONE = "+37126100002"  # the second demo client's own phone
VOICE = "/webhooks/twilio/voice"


def connected(page: Page) -> None:
    """The page's live feed is open: from now on changes reach it without reload."""
    page.wait_for_function("() => window.alarmcentreState && window.alarmcentreState.connected")


def mark(page: Page) -> None:
    page.evaluate("window.__sameDocument = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded: it must update by itself"


def rows(page: Page) -> Locator:
    return page.get_by_test_id("queue-row")


def row(page: Page, incident_id: int) -> Locator:
    return page.locator(f"[data-testid=queue-row][data-id='{incident_id}']")


def entries(page: Page, kind: str) -> Locator:
    return page.locator(f"[data-testid=timeline-entry][data-kind={kind}]")


def report(figure: str, seconds: float) -> None:
    print(f"\n  {figure}: {seconds * 1000:.0f} ms")


@dataclass
class Twilio:
    """Twilio's side of the calls, over HTTP to the real server: what Twilio would POST, signed."""

    stack: Stack
    fake: FakeTwilio
    http: httpx.Client

    def post(self, callback: Callback) -> httpx.Response:
        assert callback.url.startswith(self.stack.url + VOICE), callback.url
        return self.http.post(callback.url, data=callback.form, headers=callback.headers)

    def call_in(self, from_: str) -> tuple[str, ET.Element]:
        """Someone calls the centre's number: (the call's sid, the <Enqueue> the centre answered with)."""
        form = self.fake.incoming_call(from_=from_)
        response = self.post(self.fake.signed(self.stack.url + VOICE, form))
        assert response.status_code == 200, response.text
        enqueue = ET.fromstring(response.text).find("Enqueue")
        assert enqueue is not None, response.text
        return form["CallSid"], enqueue

    def caller_leaves_queue(self, enqueue: ET.Element, sid: str, result: str, waited: int) -> None:
        """Enqueue's action: the caller left the queue, bridged to an operator or hung up."""
        form = {"AccountSid": ACCOUNT_SID, "CallSid": sid, "QueueResult": result, "QueueTime": str(waited),
                "QueueSid": "QU" + "0" * 32}
        assert self.post(self.fake.signed(enqueue.attrib["action"], form)).status_code == 200

    def operator_picks_up(self, leg_sid: str, caller_sid: str, waited: int) -> None:
        """The operator's phone rings and is answered; Twilio runs its TwiML and dequeues the caller."""
        call = self.fake.calls[leg_sid]
        for status in ("initiated", "ringing", "in-progress"):
            assert self.post(self.fake.call_status(leg_sid, status)).status_code == 204
        queue = ET.fromstring(call.twiml).find("Dial/Queue")
        assert queue is not None, call.twiml
        form = {"AccountSid": ACCOUNT_SID, "CallSid": caller_sid, "QueueTime": str(waited),
                "DequeueingCallSid": leg_sid, "QueueSid": "QU" + "0" * 32}
        response = self.post(self.fake.signed(queue.attrib["url"], form))
        assert response.status_code == 200 and ET.fromstring(response.text).tag == "Response", response.text

    def incoming_status(self, sid: str, status: str, duration: int | None = None) -> None:
        """The status callback of the centre's number (no query string)."""
        form = {"AccountSid": ACCOUNT_SID, "CallSid": sid, "CallStatus": status, "Direction": "inbound"}
        if duration is not None:
            form["CallDuration"] = str(duration)
        assert self.post(self.fake.signed(self.stack.url + VOICE + "/status", form)).status_code == 204


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, from_number=CENTRE_NUMBER) as server:
        yield server


@pytest.fixture
def stack(tmp_path: Path, fake: FakeTwilio) -> Iterator[Stack]:
    """tests/browser.py's stack with Twilio configured against the fake (open_browser uses this one)."""
    from tests.browser import running_stack  # imported here: tests.browser is loaded as a plugin first

    def twilio(base_url: str) -> dict[str, Any]:
        return {"twilio_account_sid": ACCOUNT_SID, "twilio_auth_token": AUTH_TOKEN,
                "twilio_from_number": CENTRE_NUMBER, "twilio_api_base": fake.url, "public_url": base_url}

    with running_stack(tmp_path, more_settings=twilio) as running:
        yield running


@pytest.fixture
def twilio(stack: Stack, fake: FakeTwilio) -> Iterator[Twilio]:
    """The operator gets a phone, the first device a SIM, the second client a phone of their own.
    Updates without reading first (SQLite: a read-then-write transaction fails if the centre committed)."""
    with transaction(stack.sessions) as session:
        session.execute(update(User).where(User.id == stack.user_ids["operator"]).values(phone=OPERATOR_PHONE))
        session.execute(update(Device).where(Device.serial == stack.serials[0]).values(sim_number=DEVICE_SIM))
        session.execute(update(Client).where(Client.id == stack.client_id(stack.serials[1]))
                        .values(phone=CLIENT_PHONE))
    with httpx.Client(timeout=10) as http:
        yield Twilio(stack, fake, http)


def test_a_call_arrives_is_answered_and_lands_on_the_timeline_without_reloading(
        stack: Stack, open_browser: Browse, twilio: Twilio, fake: FakeTwilio) -> None:
    queue = open_browser("operator")
    expect(queue).to_have_url(f"{stack.url}/ui/queue")
    expect(queue.get_by_test_id("queue-empty")).to_be_visible()
    connected(queue)
    mark(queue)

    calling = time.monotonic()
    sid, enqueue = twilio.call_in(DEVICE_SIM)
    expect(rows(queue)).to_have_count(1, timeout=LIVE_MS)
    incident_id = int(rows(queue).first.get_attribute("data-id") or 0)
    waiting_badge = row(queue, incident_id).get_by_test_id("caller-waiting")
    expect(waiting_badge).to_be_visible(timeout=LIVE_MS)
    report("incoming call to the queue's 'caller on the line' badge", time.monotonic() - calling)
    expect(waiting_badge).to_have_text("Zvanītājs gaida līnijā")
    expect(row(queue, incident_id)).to_have_attribute("data-status", "open")
    client_name = stack.client_name(stack.client_id(stack.serials[0]))
    expect(row(queue, incident_id)).to_contain_text("Zvans uz centru")  # the incident's kind, in Latvian
    assert_not_reloaded(queue)

    # The operator opens the incident from the queue: the caller waits there, with "Answer".
    row(queue, incident_id).get_by_role("link", name=client_name).click()
    queue.wait_for_url(f"**/ui/incidents/{incident_id}")
    page = queue
    waiting = page.get_by_test_id("voice-waiting")
    expect(waiting).to_have_count(1)
    expect(waiting).to_contain_text("Līnijā, gaida operatoru:")
    expect(waiting).to_contain_text(DEVICE_SIM)
    incoming = entries(page, "call_incoming")
    expect(incoming).to_have_count(1)
    expect(incoming).to_contain_text("Ienākošs zvans")
    expect(incoming).to_contain_text(f"Ierīces SIM {DEVICE_SIM}")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    connected(page)
    page.screenshot(path=str(SCREENSHOTS / "voice-waiting.png"), full_page=True)

    answer = page.get_by_test_id("voice-answer")
    expect(answer).to_have_text("Atbildēt: zvanīt uz manu tālruni")
    answer.click()
    head = page.get_by_test_id("incident-head")
    expect(head).to_have_attribute("data-status", "acknowledged")  # answering is taking the incident
    expect(head).to_have_attribute("data-owner", str(stack.user_ids["operator"]))
    placed = list(fake.calls.values())
    assert [call.to for call in placed] == [OPERATOR_PHONE], placed
    assert placed[0].from_ == CENTRE_NUMBER
    leg = placed[0].sid
    expect(page.locator("[data-testid=voice-call-row][data-purpose=answer]")).to_have_count(1)
    expect(waiting).to_have_count(1)  # still waiting until the operator's phone picks up

    # Twilio's side: the operator's phone rings, is answered, and takes the caller out of the queue.
    connected(page)
    mark(page)
    picking_up = time.monotonic()
    twilio.operator_picks_up(leg, sid, waited=9)
    twilio.caller_leaves_queue(enqueue, sid, "bridged", waited=9)
    spoken = entries(page, "call_connected")
    expect(spoken).to_have_count(1, timeout=LIVE_MS)
    report("operator picked up to 'speaking with the caller' on the timeline", time.monotonic() - picking_up)
    expect(spoken).to_contain_text("Operators runā ar zvanītāju")
    expect(spoken).to_contain_text("Ilze Kalna")
    expect(spoken).to_contain_text("gaidīja 9")
    expect(waiting).to_have_count(0, timeout=LIVE_MS)

    # They talk; both hang up.
    hanging_up = time.monotonic()
    assert twilio.post(fake.call_status(leg, "completed", duration=95)).status_code == 204
    twilio.incoming_status(sid, "completed", duration=104)
    ended = entries(page, "call_ended")
    expect(ended).to_have_count(1, timeout=LIVE_MS)
    report("call completed to 'call ended' on the timeline", time.monotonic() - hanging_up)
    expect(ended).to_contain_text("Zvans beidzies")
    expect(ended).to_contain_text("Pabeigts")
    expect(ended).to_contain_text("runāja 104 s")
    expect(entries(page, "call_failed")).to_have_count(0)
    expect(page.locator("[data-testid=voice-call-row][data-purpose=incoming]")).to_have_attribute(
        "data-status", "completed", timeout=LIVE_MS)
    assert_not_reloaded(page)
    kinds = page.locator("[data-testid=timeline-entry]").evaluate_all("els => els.map(e => e.dataset.kind)")
    # Newest first, as the page shows them.
    assert kinds == ["call_ended", "call_connected", "acknowledged", "call_incoming", "opened"], kinds
    expect(page.locator("html")).to_have_attribute("lang", "lv")

    page.screenshot(path=str(SCREENSHOTS / "voice-call.png"), full_page=True)
    for name in ("voice-waiting.png", "voice-call.png"):
        assert (SCREENSHOTS / name).stat().st_size > 20_000, name

    # Back on the queue the call is no longer waiting.
    page.goto("/ui/queue")
    expect(row(page, incident_id)).to_have_attribute("data-status", "acknowledged")
    expect(row(page, incident_id).get_by_test_id("caller-waiting")).to_have_count(0)


def test_a_caller_who_hangs_up_while_waiting_leaves_the_queue_and_the_incident_page_live(
        stack: Stack, open_browser: Browse, twilio: Twilio, fake: FakeTwilio) -> None:
    queue = open_browser("operator")
    connected(queue)
    sid, enqueue = twilio.call_in(CLIENT_PHONE)
    expect(rows(queue)).to_have_count(1, timeout=LIVE_MS)
    incident_id = int(rows(queue).first.get_attribute("data-id") or 0)
    badge = row(queue, incident_id).get_by_test_id("caller-waiting")
    expect(badge).to_be_visible(timeout=LIVE_MS)

    page = queue.context.new_page()  # the same operator's second tab, on the incident
    page.goto(f"/ui/incidents/{incident_id}")
    waiting = page.get_by_test_id("voice-waiting")
    expect(waiting).to_contain_text(CLIENT_PHONE)
    expect(entries(page, "call_incoming")).to_contain_text(f"Klients {CLIENT_PHONE}")
    for tab in (queue, page):
        connected(tab)
        mark(tab)

    hung_up = time.monotonic()
    twilio.caller_leaves_queue(enqueue, sid, "hangup", waited=40)
    ended = entries(page, "call_ended")
    expect(ended).to_have_count(1, timeout=LIVE_MS)
    report("hung up while waiting to the timeline", time.monotonic() - hung_up)
    expect(ended).to_contain_text("Zvanītājs nolika klausuli, gaidot")
    expect(ended).to_contain_text("gaidīja 40")
    expect(waiting).to_have_count(0, timeout=LIVE_MS)
    expect(page.get_by_test_id("voice-answer")).to_have_count(0)
    expect(badge).to_have_count(0, timeout=LIVE_MS)
    report("hung up while waiting to the badge gone from the queue", time.monotonic() - hung_up)
    expect(row(queue, incident_id)).to_have_attribute("data-status", "open")  # the incident itself still waits
    for tab in (queue, page):
        assert_not_reloaded(tab)
    assert fake.calls == {}, "nobody's phone was rung"
