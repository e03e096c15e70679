"""The embedded amqtt broker: pure Python, in a daemon thread with its own asyncio loop. Demo-grade.

Used only when no mosquitto binary is installed. What it loses (measured, docs/brokers.md):
messages a crashed subscriber had received but not acknowledged, messages not acknowledged
within 5 s, and everything it holds when this process ends (no persistence). It runs with
anonymous access off, because amqtt keeps no offline queue at all for anonymous sessions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from argon2 import PasswordHasher

from alarmcentre.broker import BROKER_HOST, BrokerError, BrokerUser, validate_users
from alarmcentre.broker.acl import CENTRE_USER, Acl, embedded_acl_text

log = logging.getLogger(__name__)

# amqtt verifies the password of every CONNECT synchronously on its event loop. argon2-cffi's
# default (64 MiB, 3 passes) costs ~180 ms per connect here, so a simulator reconnecting 1000
# devices would stall the broker for minutes. 1 MiB / 1 pass costs ~0.6 ms, the order of what
# Mosquitto's own 101-round PBKDF2 costs; the file is local, owner-only, for a loopback demo.
_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def write_password_file(path: Path, users: list[BrokerUser]) -> None:
    """user:$argon2id$... lines, the format amqtt's FileAuthPlugin verifies (through pwdlib)."""
    validate_users(users)
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{u.username}:{_HASHER.hash(u.password)}\n" for u in users))
    os.replace(tmp, path)


class BoundClientIdPlugin(BaseAuthPlugin):
    """A device may connect only with its username as client id (what Mosquitto's
    use_username_as_clientid enforces on the device listener); the centre's login may use any.

    amqtt has one listener here, so the rule is checked instead of imposed. It is not a seal:
    amqtt 0.12 discards (clean session) or rewrites the session of a client id *before* it
    authenticates the newcomer, so even a refused connect can disturb the ingest's session.
    One more reason amqtt is demo-grade (docs/brokers.md).
    """

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Session) -> bool | None:
        if session.username == CENTRE_USER or session.client_id == session.username:
            return None  # no objection; the password plugin decides
        log.warning("refused a connection as %r: a device's client id must be its username", session.client_id)
        return False


class AclTopicPlugin(BaseTopicPlugin):
    """Applies the embedded ACL file (Mosquitto format) to publishes and deliveries, like Mosquitto."""

    @dataclass
    class Config:
        acl_file: str = ""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._acl = Acl.parse(Path(self.config.acl_file).read_text())

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if session is None or topic is None:
            return False
        if action == Action.SUBSCRIBE:
            return True  # as Mosquitto 2.0.11: any filter may be subscribed, deliveries are checked
        access = "write" if action == Action.PUBLISH else "read"
        allowed = self._acl.allows(session.username, session.client_id, topic, access)
        if not allowed:
            log.info("acl: %s (user %s) may not %s %s", session.client_id, session.username, access, topic)
        return allowed


class _Broker(Broker):
    """amqtt's Broker with its retained-message delivery corrected (relies on amqtt 0.12 internals).

    amqtt 0.12.1, on every connect, sends a client the retained messages matching *every
    client's* subscriptions (a device would get other devices' configuration, the centre
    would get configurations it cannot parse), and never checks read permission for
    retained messages. Here a client gets the retained messages of its own subscriptions
    only, and only those it may read.
    """

    acl: Acl

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, qos = subscription
        if not any(s.client_id == session.client_id for s, _ in self._subscriptions.get(topic_filter, [])):
            return
        handler = self._get_handler(session)
        if handler is None:
            return
        sends = [
            handler.mqtt_publish(topic, retained.data, min(qos, retained.qos or qos), retain=True)
            for topic, retained in list(self._retained_messages.items())
            if self._matches(topic, topic_filter)
            and self.acl.allows(session.username, session.client_id, topic, "read")
        ]
        if sends:
            await asyncio.gather(*sends, return_exceptions=True)


class AmqttBroker:
    """amqtt on 127.0.0.1:port in a daemon thread; start() and stop() are synchronous and bounded."""

    kind = "amqtt"

    def __init__(
        self,
        *,
        data_dir: Path,
        port: int,
        users: list[BrokerUser],
        acl_text: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        validate_users(users)
        self.data_dir = Path(data_dir).resolve()
        self.host = BROKER_HOST
        self.port = port
        self.centre_port = port  # one listener for all: the client-id rule is BoundClientIdPlugin's
        self.users = list(users)
        self.acl_text = acl_text if acl_text is not None else embedded_acl_text()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.password_path = self.data_dir / "passwords"
        self.acl_path = self.data_dir / "acl"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: _Broker | None = None

    def config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            # An explicit plugin list replaces amqtt's defaults: no AnonymousAuthPlugin (whose
            # anonymous sessions get no offline queue), no $SYS publisher, no packet logger.
            "plugins": {
                "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(self.password_path)},
                f"{__name__}.BoundClientIdPlugin": {},
                f"{__name__}.AclTopicPlugin": {"acl_file": str(self.acl_path)},
            },
        }

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_password_file(self.password_path, self.users)
        self.acl_path.write_text(self.acl_text)
        amqtt_log = logging.getLogger("amqtt")
        if amqtt_log.level == logging.NOTSET:
            # amqtt logs every connection at INFO; the simulator makes thousands.
            amqtt_log.setLevel(logging.WARNING)

        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._run, args=(ready, failure), name=f"amqtt-broker-{self.port}", daemon=True
        )
        self._thread.start()
        if not ready.wait(self.start_timeout):
            raise BrokerError(f"amqtt did not start on {self.host}:{self.port} within {self.start_timeout:.0f} s")
        if failure:
            self._thread.join(self.stop_timeout)
            self._thread = None
            raise BrokerError(f"amqtt failed to start on {self.host}:{self.port}: {failure[0]}") from failure[0]
        log.info("embedded amqtt on %s:%d, password file and ACL in %s", self.host, self.port, self.data_dir)

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._start_broker(loop))
            except BaseException as e:  # reported to start() in the caller's thread
                failure.append(e)
                return
            finally:
                ready.set()
            self._loop = loop
            loop.run_forever()
        finally:
            # Cancel what the broker left (client handlers) so the loop closes cleanly.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _start_broker(self, loop: asyncio.AbstractEventLoop) -> None:
        broker = _Broker(self.config(), loop=loop)
        broker.acl = Acl.parse(self.acl_text)
        await broker.start()
        self._broker = broker

    def stop(self) -> None:
        thread, loop, broker = self._thread, self._loop, self._broker
        self._thread = self._loop = self._broker = None
        if thread is None or loop is None or not thread.is_alive():
            return
        if broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(self.stop_timeout)
            except Exception:
                log.exception("amqtt did not shut down cleanly; stopping its loop anyway")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self.stop_timeout)
        if thread.is_alive():
            log.error("the amqtt broker thread did not end within %.0f s", self.stop_timeout)
