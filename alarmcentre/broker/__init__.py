"""The embedded MQTT broker of `alarmcentre up`: a demo convenience, never the production broker.

Production runs an external Mosquitto with config/mosquitto/ (see docs/brokers.md). For the
demo the centre can start a broker itself, on 127.0.0.1 only, with authentication and the
same topic permissions:

- "mosquitto": a `mosquitto` binary (2.x) run as a child process. Same engine and queue
  settings as production, so it keeps the delivery guarantees; preferred by "auto".
- "amqtt": the pure-Python amqtt broker in a thread of this process, when no binary is
  installed. Demo-grade: it loses messages that a crashed subscriber had received but not
  acknowledged, forgets messages not acknowledged within 5 s, and keeps everything in
  memory only.

Either way the broker lives and dies with this process (or next to it), so a `kill -9` of the
centre can lose what the broker held; the at-least-once promise is made for the external
Mosquitto deployment.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

log = logging.getLogger(__name__)

BROKER_HOST = "127.0.0.1"  # demo brokers never listen beyond this machine


@dataclass
class BrokerUser:
    username: str
    password: str


class EmbeddedBroker(Protocol):
    kind: str  # "mosquitto" or "amqtt"
    host: str
    port: int  # devices connect here; their client id is bound to their username
    centre_port: int  # the centre's own login connects here (the same port on amqtt)

    def start(self) -> None: ...

    def stop(self) -> None: ...


class BrokerError(RuntimeError):
    """The embedded broker could not be started or stopped."""


class BrokerPortInUseError(BrokerError):
    """The port chosen for the embedded broker is taken by another program."""


def ensure_port_free(port: int, host: str = BROKER_HOST) -> None:
    """Refuse to start on a port someone else listens on, rather than talk to the wrong broker."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option as the brokers themselves use, so a port with only TIME_WAIT leftovers
        # of our previous run counts as free, while a live listener does not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                raise BrokerPortInUseError(
                    f"cannot start the embedded MQTT broker: port {port} on {host} is already in use "
                    f"(another MQTT broker, or an alarmcentre that is still running?). Choose a free port "
                    f"with --broker-port or ALARMCENTRE_BROKER_PORT, or point the centre at an existing "
                    f"broker with ALARMCENTRE_MQTT_URL."
                ) from e
            raise


def free_port(host: str = BROKER_HOST) -> int:
    """A port free on `host` now (the kernel's choice), for a listener only this process needs to know."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def validate_users(users: list[BrokerUser]) -> None:
    """Both password file formats are `name:hash` lines; refuse names and passwords they cannot hold."""
    if not users:
        raise ValueError("the embedded broker needs at least one user: anonymous access is never allowed")
    seen: set[str] = set()
    for u in users:
        if not u.username or any(c in u.username for c in ":\n\r\0") or u.username != u.username.strip():
            raise ValueError(f"invalid broker username {u.username!r}")
        if not u.password or any(c in u.password for c in "\n\r\0"):
            raise ValueError(f"invalid password for broker user {u.username!r}")
        if u.username in seen:
            raise ValueError(f"broker user {u.username!r} given twice")
        seen.add(u.username)


def start_embedded_broker(
    *,
    kind: Literal["auto", "mosquitto", "amqtt"],
    data_dir: Path,
    port: int,
    users: list[BrokerUser],
) -> EmbeddedBroker:
    """Start an embedded broker on 127.0.0.1:`port` and return it running; call stop() at shutdown.

    Its files (configuration, password file, ACL, persistence, log) live in `data_dir/<kind>/`.
    Raises BrokerPortInUseError if the port is taken, BrokerError if the broker does not start.
    """
    from alarmcentre.broker.mosquitto import find_mosquitto

    validate_users(users)
    ensure_port_free(port)
    mosquitto_bin = find_mosquitto() if kind in ("auto", "mosquitto") else None
    if kind == "mosquitto" and mosquitto_bin is None:
        raise BrokerError(
            "the embedded broker kind 'mosquitto' was asked for (--broker / ALARMCENTRE_BROKER), but no "
            "mosquitto 2.x binary was found on PATH (Debian/Ubuntu: apt install mosquitto; its system "
            "service need not run), use 'auto' or 'amqtt' for the demo broker"
        )
    broker: EmbeddedBroker
    if mosquitto_bin is not None:
        from alarmcentre.broker.mosquitto import MosquittoBroker

        log.warning(
            "starting an embedded Mosquitto (%s) on %s:%d for the demo; production uses an external "
            "Mosquitto configured from config/mosquitto/, see docs/brokers.md",
            mosquitto_bin, BROKER_HOST, port,
        )
        broker = MosquittoBroker(binary=mosquitto_bin, data_dir=data_dir / "mosquitto", port=port, users=users)
    else:
        try:
            from alarmcentre.broker.amqtt_broker import AmqttBroker
        except ImportError as exc:
            raise BrokerError(
                "no mosquitto 2.x binary found and amqtt is not installed: install mosquitto "
                "(Debian: apt-get install mosquitto; its service need not run), or the demo extra "
                "(pip install 'alarmcentre[demo]') for the demo-grade amqtt broker") from exc

        log.warning(
            "%s: starting the embedded amqtt broker on %s:%d. amqtt is DEMO-GRADE: "
            "it loses messages a crashed subscriber had received but not acknowledged, forgets "
            "messages not acknowledged within 5 s, and holds its queues in memory only. It must never "
            "face real devices. Install mosquitto for a broker that keeps the guarantees "
            "(see docs/brokers.md).",
            "no mosquitto 2.x binary found" if kind == "auto" else "broker 'amqtt' asked for", BROKER_HOST, port,
        )
        broker = AmqttBroker(data_dir=data_dir / "amqtt", port=port, users=users)
    broker.start()
    return broker


__all__ = [
    "BROKER_HOST",
    "BrokerError",
    "BrokerPortInUseError",
    "BrokerUser",
    "EmbeddedBroker",
    "ensure_port_free",
    "free_port",
    "start_embedded_broker",
]
