"""Broker addresses and process limits for the simulator.

Kept apart from the device logic so the command line, the fleet and the tests
all read a broker URL the same way.
"""

from __future__ import annotations

import functools
import json
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from alarmcentre.ingest.protocol import DEVICE_ID_PATTERN

DEFAULT_URL = "mqtt://127.0.0.1:18830"
URL_ENV = "ALARMCENTRE_MQTT_URL"

_DEVICE_ID_RE = re.compile(rf"^{DEVICE_ID_PATTERN}$")


class SimulatorError(Exception):
    """A problem the user can fix (bad URL, bad file, broker unreachable): shown without a traceback."""


def load_credentials(path: str | Path) -> dict[str, str]:
    """A JSON object of serial -> password, such as the embedded broker's data/broker/credentials.json."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SimulatorError(f"credentials file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise SimulatorError(f"credentials file {path}: expected a JSON object of serial to password")
    return data


def default_url() -> str:
    """The broker URL when none is given: the same variable the centre reads, so both meet."""
    return os.environ.get(URL_ENV) or DEFAULT_URL


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where and how to connect. One instance is shared by every simulated device."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False
    cafile: str | None = None
    # Per-device passwords by serial (`--credentials`): each device logs in as itself.
    passwords: Mapping[str, str] | None = field(default=None, compare=False, repr=False)
    # Further nodes of a cluster (`mqtt://user:pw@node1:1883,node2:1883`): a device starts on one of
    # them (by its serial) and moves to the next when it loses its connection or cannot connect, as
    # devices with a primary and a secondary receiver address do.
    more: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_url(cls, url: str, *, cafile: str | None = None,
                 passwords: Mapping[str, str] | None = None) -> BrokerAddress:
        """Parse ``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://...`` (TLS).

        User and password may be percent-encoded, so passwords with ``@`` or ``:`` work.
        """
        first, *others = url.split(",")
        parts = urlsplit(first)
        scheme = parts.scheme.lower()
        if scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise SimulatorError(f"broker URL {redact(url)!r}: scheme must be mqtt:// or mqtts://")
        tls = scheme in ("mqtts", "ssl")
        if not parts.hostname:
            raise SimulatorError(f"broker URL {redact(url)!r} has no host")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise SimulatorError(f"broker URL {redact(url)!r}: {exc}") from None
        if parts.path not in ("", "/"):
            raise SimulatorError(f"broker URL {redact(url)!r}: MQTT URLs have no path")
        more = []
        for other in others:
            node = urlsplit(f"{scheme}://{other.strip()}")
            try:
                if not node.hostname or node.username or node.path not in ("", "/"):
                    raise ValueError("a further node is host[:port] only")
                more.append((node.hostname, node.port or port))
            except ValueError as exc:
                raise SimulatorError(f"broker URL {redact(url)!r}: node {other!r}: {exc}") from None
        return cls(
            host=parts.hostname,
            port=port,
            more=tuple(more),
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=tls,
            cafile=cafile,
            passwords=passwords,
        )

    def login(self, device_id: str, *, serial_login: bool = False) -> tuple[str | None, str | None]:
        """(username, password) of one device. A device logs in as its serial, the broker binds its
        client id to that name (docs/brokers.md), unless the URL names a user and serial_login is off."""
        if self.passwords is not None:
            if device_id not in self.passwords:
                raise SimulatorError(f"{device_id}: no password for this serial in the credentials file")
            return device_id, self.passwords[device_id]
        if serial_login or not self.username:
            return device_id, self.password
        return self.username, self.password

    def tls_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context for mqtts:// (system CAs, or ``cafile`` for a private CA)."""
        return _tls_context(self.cafile) if self.tls else None

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        return ((self.host, self.port), *self.more)

    def display(self) -> str:
        """The address for messages, never with the password."""
        user = f"{self.username}:***@" if self.username else ""
        nodes = ",".join(f"{host}:{port}" for host, port in self.nodes)
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{nodes}"


@functools.lru_cache(maxsize=8)
def _tls_context(cafile: str | None) -> ssl.SSLContext:
    # One context for all devices: loading the CA store 10,000 times would take minutes.
    return ssl.create_default_context(cafile=cafile)


def redact(url: str) -> str:
    """Hide the password of a URL before it is printed."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def check_device_id(device_id: str) -> str:
    """Refuse serials the centre would reject, before any connection is made."""
    if not _DEVICE_ID_RE.match(device_id):
        raise SimulatorError(
            f"device id {device_id!r} is not valid: use 1-64 letters, digits, '-' or '_'"
        )
    return device_id


def serials(prefix: str, count: int, start: int = 1, digits: int = 5) -> list[str]:
    """``SIM-00001``... numbered serials, zero padded to at least ``digits`` digits.

    The padding grows with the largest number so the serials sort the same as text
    and as numbers. (The demo's devices are ``DEMO-0001``...: prefix ``DEMO-``, 4 digits.)
    """
    if count < 1:
        raise SimulatorError("--devices must be at least 1")
    if start < 0:
        raise SimulatorError("--start must not be negative")
    width = max(digits, len(str(start + count - 1)))
    return [check_device_id(f"{prefix}{n:0{width}d}") for n in range(start, start + count)]


def raise_open_file_limit() -> tuple[int, int]:
    """Lift the soft RLIMIT_NOFILE to the hard limit; every device holds one socket.

    Returns the (soft, hard) limits now in force. Does nothing where the resource
    module is missing (not POSIX).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return (soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return (soft, hard)
    return resource.getrlimit(resource.RLIMIT_NOFILE)
