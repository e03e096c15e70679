"""Per-device broker logins: a Mosquitto password_file entry and the acl_file that confines it.

A device logs in with its serial as username; the ACL's `%u` pattern lines let that username
publish only to its own events/status topics and read only its own config/commands. The same
ACL text is what the embedded brokers enforce (alarmcentre.broker.acl), so one rule set holds
everywhere.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from alarmcentre.broker.acl import CENTRE_USER, Acl, device_acl_text
from alarmcentre.broker.mosquitto import pbkdf2_password_line
from alarmcentre.ingest.protocol import DEVICE_ID_PATTERN

# The centre's own MQTT client ids all start with this (alarmcentre-ingest, alarmcentre-config-...).
# A device's client id is its serial, so no serial may start with it either.
RESERVED_PREFIX = CENTRE_USER

DEVICE_PATTERN_LINES = tuple(line for line in device_acl_text().splitlines() if line.startswith("pattern "))

PRODUCTION_ACL = ("# Topic permissions of the device listener for Mosquitto 2.x, written by "
                  "`alarmcentre devices provision`.\n" + device_acl_text())


class ProvisionError(ValueError):
    pass


def check_serial(serial: str) -> None:
    if not re.fullmatch(DEVICE_ID_PATTERN, serial):
        raise ProvisionError(f"invalid serial {serial!r}: 1-64 letters, digits, - and _")
    if serial.lower().startswith(RESERVED_PREFIX):
        raise ProvisionError(f"{serial!r}: serials starting with {RESERVED_PREFIX!r} are reserved for the centre's "
                             "own broker clients")


def new_password() -> str:
    return secrets.token_urlsafe(24)  # 192 bits


def set_password(path: Path, username: str, password: str) -> bool:
    """Add or replace `username` in a Mosquitto password file (PBKDF2-SHA512 `$7$`, as mosquitto_passwd
    writes). Returns True if the user was new. Written atomically and owner-only."""
    lines = path.read_text().splitlines() if path.exists() else []
    entry = pbkdf2_password_line(username, password)
    kept = [line for line in lines if line.split(":", 1)[0] != username]
    is_new = len(kept) == len(lines)
    _write_private(path, "\n".join([*kept, entry]) + "\n")
    return is_new


def remove_password(path: Path, username: str) -> bool:
    """Take `username` out of a Mosquitto password file; True if it was there. Written atomically.
    Mosquitto applies it at its next reload (SIGHUP), and then disconnects that login at once."""
    if not path.exists():
        return False
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.split(":", 1)[0] != username]
    if len(kept) == len(lines):
        return False
    _write_private(path, "\n".join(kept) + ("\n" if kept else ""))
    return True


def ensure_acl(path: Path) -> list[str]:
    """Create the ACL, or add the per-device pattern lines it lacks; returns the lines added.

    Per-device `user` sections are never written: the `%u` patterns cover every device, so the
    file does not grow with the fleet. The result must parse (the subset both brokers understand).
    """
    if not path.exists():
        _write_private(path, PRODUCTION_ACL, mode=0o644)
        return list(DEVICE_PATTERN_LINES)
    text = path.read_text()
    present = {" ".join(line.split()) for line in text.splitlines()}
    missing = [line for line in DEVICE_PATTERN_LINES if line not in present]
    if missing:
        text = text.rstrip("\n") + "\n\n# Added by `alarmcentre devices provision`: each device only its own topics.\n"
        text += "\n".join(missing) + "\n"
        _write_private(path, text, mode=0o644)
    Acl.parse(path.read_text())  # refuse to leave a file the embedded broker would not understand
    return missing


def _write_private(path: Path, text: str, *, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
