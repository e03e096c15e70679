"""Login throttling (users/throttle.py): guessing is slowed by address, by username and by both,
no stranger can keep an operator out, one answer for every refusal, shared by every process."""

from __future__ import annotations

import statistics
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from alarmcentre.app import create_app
from alarmcentre.config import Settings
from alarmcentre.db import transaction
from alarmcentre.runtime import Database
from alarmcentre.users import service as users
from alarmcentre.users.models import Role, User
from alarmcentre.users.throttle import FREE_FAILURES, LoginThrottle, ThrottleKind, wait_after
from tests.factories import Clock

PASSWORD = "night-shift-1"
PASSWORD_HASH = users._hasher.hash(PASSWORD)
OPERATOR_DESK, ATTACKER, NAT = "10.1.0.5", "203.0.113.9", "198.51.100.1"
REFUSED = {"detail": "wrong username or password"}


@pytest.fixture
def db(any_db: Database) -> Database:
    with transaction(any_db.sessions) as session:
        for name, role in [("op-a", Role.OPERATOR), ("op-b", Role.OPERATOR), ("sup", Role.SUPERVISOR)]:
            session.add(User(username=name, password_hash=PASSWORD_HASH, role=role, full_name=name))
    return any_db


def app_on(db: Database, **settings: object) -> TestClient:
    """One process's API (a second call on the same database stands for a second process)."""
    return TestClient(create_app(settings=Settings(**settings), session_factory=db.sessions))  # type: ignore[arg-type]


def api_login(http: TestClient, username: str, password: str = PASSWORD, *, address: str) -> tuple[int, dict]:
    # TestClient's peer address is "testclient"; the trusted proxy passes on the address we play.
    response = http.post("/api/v1/auth/token", data={"username": username, "password": password},
                         headers={"X-Forwarded-For": address})
    return response.status_code, response.json()


def behind_proxy(db: Database) -> TestClient:
    return app_on(db, trusted_proxies="testclient")


def test_one_address_guessing_one_account_waits_longer_and_longer_and_the_wait_ends(db: Database) -> None:
    clock = Clock(datetime.now(UTC))
    http = behind_proxy(db)
    free = FREE_FAILURES[ThrottleKind.PAIR]
    for _ in range(free + 1):  # the sixth is still checked: its failure starts the first wait
        assert api_login(http, "op-a", "guess", address=ATTACKER) == (401, REFUSED)
    # Throttled: even the right password is refused now, in the same words.
    assert api_login(http, "op-a", address=ATTACKER) == (401, REFUSED)
    assert wait_after(ThrottleKind.PAIR, free + 2) == timedelta(seconds=4)  # it grew
    clock.advance(4.5)
    assert api_login(http, "op-a", address=ATTACKER)[0] == 200, "a wait ends by itself: nothing is locked"
    assert wait_after(ThrottleKind.PAIR, 10_000) == timedelta(minutes=15)


def test_a_stranger_hammering_an_operators_name_does_not_keep_her_out(db: Database) -> None:
    Clock(datetime.now(UTC))
    http = behind_proxy(db)
    assert api_login(http, "op-a", address=OPERATOR_DESK)[0] == 200  # her desk, known from before
    for i in range(FREE_FAILURES[ThrottleKind.USER] + 5):  # from many addresses: past every free allowance
        api_login(http, "op-a", "guess", address=f"203.0.113.{i % 60}")
    status, _ = api_login(http, "op-a", address=OPERATOR_DESK)
    assert status == 200, "the operator was locked out by a stranger"
    # From a new address the name is throttled: a guesser spreading over addresses gains nothing.
    assert api_login(http, "op-a", address="192.0.2.77") == (401, REFUSED)


def test_a_password_spray_from_one_address_is_stopped_but_not_the_operators_behind_the_same_nat(db: Database) -> None:
    Clock(datetime.now(UTC))
    http = behind_proxy(db)
    assert api_login(http, "op-b", address=NAT)[0] == 200  # an operator behind the NAT, before the spray
    free = FREE_FAILURES[ThrottleKind.ADDRESS]
    for i in range(free + 1):
        assert api_login(http, f"user-{i}", "Winter2026!", address=NAT) == (401, REFUSED)
        if i % 5 == 0:  # an insider at that address logging in between guesses wins no extra tries
            assert api_login(http, "op-b", address=NAT)[0] == 200
    with transaction(db.sessions) as session:  # a real account the spray would hit next
        session.add(User(username="weak", password_hash=users._hasher.hash("Winter2026!"), role=Role.OPERATOR))
    assert api_login(http, "weak", "Winter2026!", address=NAT) == (401, REFUSED), "the spray went on"
    assert api_login(http, "op-b", address=NAT)[0] == 200, "a known operator behind the NAT was shut out"


def test_parallel_guesses_are_counted_before_any_is_checked(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    Clock(datetime.now(UTC))
    http = behind_proxy(db)
    checked: list[str] = []
    real_verify = users._verify

    def counting_verify(password_hash: str, password: str) -> bool:
        if password_hash == PASSWORD_HASH:
            checked.append(password)
        return real_verify(password_hash, password)

    monkeypatch.setattr(users, "_verify", counting_verify)
    barrier = threading.Barrier(16)

    def guess(i: int) -> None:
        barrier.wait()
        api_login(http, "op-a", f"guess-{i}", address=ATTACKER)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # The free allowance and the one whose failure starts the wait; the rest only pay the hashing time.
    assert len(checked) <= FREE_FAILURES[ThrottleKind.PAIR] + 1, checked
    with db.sessions() as session:
        pair = session.scalar(select(LoginThrottle).where(LoginThrottle.kind == ThrottleKind.PAIR))
        assert pair is not None and pair.failures == 16


def test_unknown_wrong_and_throttled_get_one_answer_in_about_the_same_time(db: Database) -> None:
    Clock(datetime.now(UTC))
    http = behind_proxy(db)

    def timed(username: str, password: str, address: str) -> tuple[float, tuple[int, dict]]:
        started = time.perf_counter()
        answer = api_login(http, username, password, address=address)
        return time.perf_counter() - started, answer

    for _ in range(FREE_FAILURES[ThrottleKind.PAIR] + 1):
        api_login(http, "op-b", "guess", address=ATTACKER)
    samples: dict[str, list[float]] = {"unknown": [], "wrong": [], "throttled": []}
    for i in range(5):
        for kind, (username, password, address) in {
            "unknown": (f"nobody-{i}", "guess", f"192.0.2.{i}"),
            "wrong": ("op-a", "guess", f"192.0.2.{100 + i}"),
            "throttled": ("op-b", PASSWORD, ATTACKER),
        }.items():
            seconds, answer = timed(username, password, address)
            assert answer == (401, REFUSED), kind
            samples[kind].append(seconds)
    medians = {kind: statistics.median(values) for kind, values in samples.items()}
    # A generous bound (timing varies on a busy machine): a throttled or unknown login that skipped
    # the password hashing would answer ~20x faster (measured before: 8 ms against 150-190 ms).
    assert medians["throttled"] > 0.4 * medians["wrong"] and medians["unknown"] > 0.4 * medians["wrong"], medians


def test_a_forwarded_address_counts_only_from_a_trusted_proxy(db: Database) -> None:
    Clock(datetime.now(UTC))
    direct = app_on(db)  # no proxy configured: the header is ignored, the connection's address counts
    for i in range(FREE_FAILURES[ThrottleKind.PAIR] + 1):
        assert api_login(direct, "op-a", "guess", address=f"192.0.2.{i}") == (401, REFUSED)
    assert api_login(direct, "op-a", address="192.0.2.200") == (401, REFUSED), "a made-up header escaped the count"
    with db.sessions() as session:
        addresses = set(session.scalars(select(LoginThrottle.address).where(LoginThrottle.kind == ThrottleKind.PAIR)))
    assert addresses == {"testclient"}
    # Through a trusted proxy, the nearest address it did not add is the client's.
    proxied = app_on(db, trusted_proxies="testclient, 10.9.9.9")
    assert api_login(proxied, "op-b", address="198.51.100.7, 10.9.9.9")[0] == 200
    with db.sessions() as session:
        trusted = session.scalar(select(LoginThrottle.address).where(LoginThrottle.kind == ThrottleKind.TRUSTED))
    assert trusted == "198.51.100.7"


def test_the_count_is_shared_by_every_process_and_the_dashboard(db: Database) -> None:
    Clock(datetime.now(UTC))
    first, second = behind_proxy(db), behind_proxy(db)
    for i in range(FREE_FAILURES[ThrottleKind.PAIR] + 1):
        api_login(first if i % 2 else second, "op-a", "guess", address=ATTACKER)
    assert api_login(second, "op-a", address=ATTACKER) == (401, REFUSED)
    # The dashboard's login form counts in the same place.
    page = second.get("/login")
    nonce = page.text.split('name="nonce" value="', 1)[1].split('"', 1)[0]
    form = second.post("/login", data={"username": "op-a", "password": PASSWORD, "nonce": nonce},
                       headers={"X-Forwarded-For": ATTACKER}, follow_redirects=False)
    assert form.status_code == 401 and "ac_session" not in second.cookies


def test_a_supervisor_sees_and_clears_throttles_and_an_operator_may_not(db: Database) -> None:
    Clock(datetime.now(UTC))
    http = behind_proxy(db)
    for _ in range(FREE_FAILURES[ThrottleKind.PAIR] + 1):
        api_login(http, "op-a", "guess", address=ATTACKER)
    supervisor = {"Authorization": f"Bearer {api_login(http, 'sup', address=OPERATOR_DESK)[1]['access_token']}"}
    operator = {"Authorization": f"Bearer {api_login(http, 'op-b', address=OPERATOR_DESK)[1]['access_token']}"}
    assert http.get("/api/v1/login-throttles", headers=operator).status_code == 403
    assert http.delete("/api/v1/login-throttles", params={"username": "op-a"}, headers=operator).status_code == 403
    listed = http.get("/api/v1/login-throttles", headers=supervisor).json()
    pair = next(t for t in listed if t["kind"] == "pair")
    assert (pair["username"], pair["address"], pair["failures"]) == ("op-a", ATTACKER, 6) and pair["wait_until"]
    assert http.delete("/api/v1/login-throttles", headers=supervisor).status_code == 422
    cleared = http.delete("/api/v1/login-throttles", params={"username": "op-a", "address": ATTACKER},
                          headers=supervisor)
    assert cleared.status_code == 200 and cleared.json() == {"cleared": 1}
    assert api_login(http, "op-a", address=ATTACKER)[0] == 200
