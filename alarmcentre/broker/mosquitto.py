"""An embedded Mosquitto: the `mosquitto` binary run as a child process with a generated configuration."""

from __future__ import annotations

import base64
import ctypes
import hashlib
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from string import Template

from alarmcentre.broker import BROKER_HOST, BrokerError, BrokerUser, free_port, validate_users
from alarmcentre.broker.acl import CENTRE_USER, centre_acl_text, device_acl_text

log = logging.getLogger(__name__)

TEMPLATE = "mosquitto-embedded.conf"
# What mosquitto_passwd 2.0 writes: PBKDF2-SHA512, 101 rounds, 12-byte salt. Kept equal so a
# connect costs the same whichever wrote the file (the simulator connects thousands of times).
PBKDF2_ROUNDS = 101
PBKDF2_SALT_BYTES = 12
LOG_ROTATE_BYTES = 10_000_000  # keep one old log at most: this is a demo broker


def mosquitto_version(binary: str) -> tuple[int, int, int] | None:
    """The version printed by `mosquitto -h` (it exits 3 after printing), or None if unreadable."""
    try:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"mosquitto version (\d+)\.(\d+)\.(\d+)", out)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def find_mosquitto() -> str | None:
    """A usable mosquitto 2.x on PATH (also /usr/sbin, where Debian puts it), or None."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin" + os.pathsep + "/usr/local/sbin"
    binary = shutil.which("mosquitto", path=path)
    if binary is None:
        return None
    version = mosquitto_version(binary)
    if version is None or version < (2, 0, 0):
        # 1.x has other defaults (anonymous access) and cannot read $7$ password hashes.
        log.warning("ignoring %s: version %s, the embedded broker needs mosquitto 2.x", binary, version)
        return None
    return binary


def pbkdf2_password_line(username: str, password: str) -> str:
    """One password file line in Mosquitto 2's own format: user:$7$rounds$salt$hash (base64)."""
    salt = secrets.token_bytes(PBKDF2_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ROUNDS)
    return f"{username}:$7${PBKDF2_ROUNDS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def write_password_file(path: Path, users: list[BrokerUser], *, mosquitto_passwd: str | None) -> None:
    """Write hashed passwords, with mosquitto_passwd when given, else in Python (same format)."""
    validate_users(users)
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    # Owner-only from the first byte: with mosquitto_passwd the file briefly holds plain passwords.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        if mosquitto_passwd:
            f.write("".join(f"{u.username}:{u.password}\n" for u in users))
        else:
            f.write("".join(pbkdf2_password_line(u.username, u.password) + "\n" for u in users))
    if mosquitto_passwd:
        # -U hashes the file in place; passwords never appear on a command line.
        r = subprocess.run([mosquitto_passwd, "-U", str(tmp)], capture_output=True, text=True, timeout=30)
        if r.returncode != 0 or "$7$" not in tmp.read_text():
            tmp.unlink(missing_ok=True)
            raise BrokerError(f"mosquitto_passwd -U failed ({r.returncode}): {(r.stderr or r.stdout).strip()}")
    os.replace(tmp, path)


def _parent_death_signal() -> Callable[[], None] | None:
    """preexec_fn that makes the child get SIGTERM when its parent dies (Linux only, best effort)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class MosquittoBroker:
    """Mosquitto as a child process, state in data_dir. Devices connect on 127.0.0.1:port, where the
    client id is the username; the centre's login (CENTRE_USER) only on 127.0.0.1:centre_port.

    The child gets SIGTERM if this process dies (Linux). That signal is tied to the *thread*
    that started it, so call start() from the main thread or one that outlives the broker.
    """

    kind = "mosquitto"

    def __init__(
        self,
        *,
        binary: str,
        data_dir: Path,
        port: int,
        users: list[BrokerUser],
        centre_port: int = 0,
        start_timeout: float = 10.0,
        stop_timeout: float = 30.0,
    ) -> None:
        validate_users(users)
        self.binary = binary
        self.data_dir = Path(data_dir).resolve()
        self.host = BROKER_HOST
        self.port = port
        self.centre_port = centre_port or free_port()  # 0: any free port, chosen once
        self.users = list(users)
        self.start_timeout = start_timeout
        # Stopping saves the persistence file; with a large backlog that takes a while.
        self.stop_timeout = stop_timeout
        self.config_path = self.data_dir / "mosquitto.conf"
        self.password_path = self.data_dir / "passwords"
        self.acl_path = self.data_dir / "acl"
        self.centre_password_path = self.data_dir / "centre-passwords"
        self.centre_acl_path = self.data_dir / "centre-acl"
        self.log_path = self.data_dir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def write_files(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        passwd = shutil.which("mosquitto_passwd", path=str(Path(self.binary).parent) + os.pathsep
                              + os.environ.get("PATH", os.defpath))
        centre = [u for u in self.users if u.username == CENTRE_USER]
        devices = [u for u in self.users if u.username != CENTRE_USER]
        # Mosquitto refuses an empty password file; a placeholder login nobody knows stands in.
        placeholder = [BrokerUser("alarmcentre-nobody", secrets.token_urlsafe(18))]
        write_password_file(self.password_path, devices or placeholder, mosquitto_passwd=passwd)
        write_password_file(self.centre_password_path, centre or placeholder, mosquitto_passwd=passwd)
        self.acl_path.write_text(device_acl_text())
        self.centre_acl_path.write_text(centre_acl_text())
        template = resources.files("alarmcentre.broker").joinpath(TEMPLATE).read_text()
        config = Template(template).substitute(
            port=self.port,
            password_file=self.password_path,
            acl_file=self.acl_path,
            centre_port=self.centre_port,
            centre_password_file=self.centre_password_path,
            centre_acl_file=self.centre_acl_path,
            user=pwd.getpwuid(os.geteuid()).pw_name,
            persistence_location=self.data_dir,  # Mosquitto adds the "/" itself
        )
        self.config_path.write_text(config)

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if "\n" in str(self.data_dir):
            raise BrokerError(f"the broker data directory cannot be used in a Mosquitto config: {self.data_dir}")
        self.write_files()
        if self.log_path.exists() and self.log_path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(self.log_path, self.log_path.with_suffix(".log.1"))
        if threading.current_thread() is not threading.main_thread():
            log.warning("mosquitto started from thread %r: it gets SIGTERM when that thread ends",
                        threading.current_thread().name)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as logfile:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                # Own session: a Ctrl-C in the terminal reaches the centre, which then stops the
                # broker after the ingest, instead of the broker vanishing first.
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                raise BrokerError(f"mosquitto exited at start-up (code {rc}); {self._log_tail()}")
            # "running" is logged once every listener is open; the connect confirms it answers.
            if "running" in self._log_since_start() and self._accepts_connections():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} within "
                    f"{self.start_timeout:.0f} s; {self._log_tail()}"
                )
            time.sleep(0.05)
        log.info("embedded mosquitto pid %d on %s:%d (devices) and :%d (the centre), files in %s", self._proc.pid,
                 self.host, self.port, self.centre_port, self.data_dir)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # mosquitto saves its persistence file on SIGTERM
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.error("mosquitto pid %d did not stop within %.0f s, killing it", proc.pid, self.stop_timeout)
            proc.kill()
            proc.wait(10)

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _log_since_start(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, lines: int = 15) -> str:
        text = self._log_since_start()
        tail = "\n  ".join(text.strip().splitlines()[-lines:]) or "(empty)"
        return f"log {self.log_path}:\n  {tail}"
