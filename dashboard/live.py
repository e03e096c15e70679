"""The live feed: one poller per process finds what changed in the database and pushes it to
every connected dashboard over Server-Sent Events.

Why polling the database and not in-process signals: the ingest, the scheduler and the API may be
separate processes (and the database is the one place every change is committed), so the feed
sees every change whoever made it, on SQLite and PostgreSQL alike. One poller serves all
browsers of a process, and it runs only while a browser is connected.

Every change on an incident writes a timeline entry (append-only, increasing ids), so new
timeline ids name the incidents that changed. PostgreSQL hands out ids before commit, so an
entry with a smaller id can become visible after a larger one; the poller therefore re-reads a
window of recent ids and reports any it has not seen, rather than trusting "id > last".
Browsers also re-read their page every 15 s, and on every (re)connection, as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from alarmcentre import clock
from alarmcentre.canary import CanaryWatch
from alarmcentre.dispatch.sms import outbox_mark
from alarmcentre.incidents import service as incidents
from alarmcentre.tasks import service as tasks

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

LOOKBACK_IDS = 1000  # ids below the newest that may still commit late (PostgreSQL sequences)
SUBSCRIBER_BACKLOG = 50  # a browser further behind than this gets one "resync everything"


@dataclass
class Change:
    incidents: set[int] = field(default_factory=set)
    sms: bool = False
    tasks: bool = False
    canary: bool = False  # the canary's verdict changed

    def __bool__(self) -> bool:
        return bool(self.incidents or self.sms or self.tasks or self.canary)


class LiveFeed:
    def __init__(self, session_factory: sessionmaker[Session], *, poll_s: float = 0.25,
                 canary: CanaryWatch | None = None) -> None:
        self._factory = session_factory
        self.canary = canary
        self._permanent = False
        self.poll_s = poll_s
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._seen: set[int] = set()  # timeline ids within the lookback window
        self._newest = -1  # -1: not started; the first poll only learns where things are
        self._sms_mark: tuple[Any, ...] | None = None
        self._task_mark: tuple[Any, ...] | None = None
        self.database_ok = True
        self.version = 0  # counts published changes: what a shared rendering was made from

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- subscribers ----------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=SUBSCRIBER_BACKLOG)
        self._subscribers.add(queue)
        self._ensure_running()
        return queue

    def start(self) -> None:
        """Keep polling with nobody connected (the API server does): the canary is watched always."""
        self._permanent = True
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="live-feed")

    def system_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"database": "ok" if self.database_ok else "down"}
        if self.canary is not None and self.canary.state.ok is not None:
            state["canary"] = "ok" if self.canary.state.ok else "late"
            state["canary_detail"] = self.canary.state.detail
        return state

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    def publish(self, event: dict[str, Any]) -> None:
        self.version += 1
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                # Too far behind to catch up event by event: tell it to re-read everything.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"type": "change", "resync": True, "incidents": [], "sms": True, "tasks": True})

    async def stop(self) -> None:
        self._permanent = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- polling --------------------------------------------------------------------------

    async def _run(self) -> None:
        while self._subscribers or self._permanent:
            try:
                change = await run_in_threadpool(self.poll)
            except Exception as exc:  # the database is down: say so on every screen, keep trying
                if self.database_ok:
                    log.warning("live feed: cannot read the database: %s", type(exc).__name__)
                    self.database_ok = False
                    self.publish({"type": "system", **self.system_state()})
            else:
                if not self.database_ok:
                    log.info("live feed: the database is back")
                    self.database_ok = True
                    # Everything may have changed meanwhile: every page re-reads.
                    self.publish({"type": "system", **self.system_state()})
                if change.canary:
                    self.publish({"type": "system", **self.system_state()})
                if change.incidents or change.sms or change.tasks:
                    self.publish({"type": "change", "incidents": sorted(change.incidents),
                                  "sms": change.sms, "tasks": change.tasks})
            await asyncio.sleep(self.poll_s)
        self._newest = -1  # nobody listens: start afresh with the next subscriber

    def poll(self) -> Change:
        """What changed since the last poll (blocking; run in a thread)."""
        change = Change()
        with self._factory() as session:
            low = max(self._newest - LOOKBACK_IDS, 0)
            rows = incidents.timeline_entries_after(session, low)
            sms_mark = outbox_mark(session)
            task_mark = tasks.active_mark(session)
        first = self._newest < 0
        for entry_id, incident_id in rows:
            if entry_id not in self._seen:
                self._seen.add(entry_id)
                if not first:
                    change.incidents.add(incident_id)
        if rows:
            self._newest = max(self._newest, max(entry_id for entry_id, _ in rows))
        elif first:
            self._newest = 0
        floor = self._newest - LOOKBACK_IDS
        self._seen = {entry_id for entry_id in self._seen if entry_id > floor}
        if not first:
            change.sms = sms_mark != self._sms_mark
            change.tasks = task_mark != self._task_mark
        self._sms_mark, self._task_mark = sms_mark, task_mark
        if self.canary is not None:
            with self._factory() as session:
                change.canary = self.canary.poll(session)
        return change


class SharedRendering:
    """One rendering of a page part for every browser that asks after the same change.

    Ten operators re-read the queue at the same moment after each change; rendering it once
    instead of ten times is what keeps the screens within a second with 200 open incidents on
    two cores. Only while the feed runs (it is what says when something changed), and never
    older than `max_age_s` as a second guard."""

    def __init__(self, max_age_s: float = 2.0) -> None:
        self.max_age_s = max_age_s
        self._entries: dict[tuple[str, ...], tuple[int, float, str]] = {}
        self._locks: dict[tuple[str, ...], threading.Lock] = defaultdict(threading.Lock)
        self.made = 0

    def get(self, key: tuple[str, ...], feed: LiveFeed, make: Callable[[], str]) -> str:
        if not feed.running:
            return make()
        with self._locks[key]:  # the others wait for the one rendering, then share it
            version = feed.version
            entry = self._entries.get(key)
            if entry is not None and entry[0] == version and time.monotonic() - entry[1] < self.max_age_s:
                return entry[2]
            html = make()
            self.made += 1
            self._entries[key] = (version, time.monotonic(), html)
            return html


async def event_stream(feed: LiveFeed, *, is_disconnected: Any) -> AsyncIterator[dict[str, Any]]:
    """The SSE events of one browser: hello (then re-read everything), changes, system state."""
    queue = feed.subscribe()
    try:
        yield {"event": "hello", "retry": 2000,
               "data": json.dumps({"server_time": clock.now().timestamp(), **feed.system_state()})}
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), timeout=5)
            except TimeoutError:
                if await is_disconnected():
                    return
                continue
            yield {"event": event["type"], "data": json.dumps(event)}
    finally:
        feed.unsubscribe(queue)
