"""The centre's part of a RabbitMQ cluster's configuration, as a definitions file.

`rabbitmqctl import_definitions FILE` (or `load_definitions` in rabbitmq.conf, at every boot) reads it:

- the two quorum queues the ingest consumes, bound on `amq.topic` (alarmcentre/ingest/amqp.py);
- the centre's login: everything on its vhost (it declares the queues, consumes them, and publishes
  device configurations through the MQTT plugin);
- one login per device, username = serial, confined to its own topics. Vhost permissions cannot say
  "this user's name", so each device's own subscription queues are written in; the topic permissions
  use RabbitMQ's `{username}` expansion, one rule for every device (what Mosquitto's `%u` patterns do).

Passwords are stored as RabbitMQ's salted SHA-256 (`rabbit_password_hashing_sha256`, its default), never
in clear. The file is written owner-only: the hashes are worth guarding anyway.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from alarmcentre.broker.acl import CENTRE_USER
from alarmcentre.ingest.amqp import EXCHANGE, QUEUE_ARGUMENTS, QUEUES
from alarmcentre.ingest.protocol import TOPIC_PREFIX

VHOST = "/"
HASHING = "rabbit_password_hashing_sha256"
_PREFIX = re.escape(TOPIC_PREFIX.replace("/", "."))
DEVICE_WRITES = rf"^{_PREFIX}\.{{username}}\.(events|alarms|status)$"
DEVICE_READS = rf"^{_PREFIX}\.{{username}}\.(config|commands)$"


# A device's subscription (its config and commands topics) is a classic queue of the MQTT plugin, made on
# the node it first connected to. Unmirrored, that queue is unreachable while its node is down, and the
# plugin then drops every connection of the device, on any node, at SUBSCRIBE (measured on 3.10: a third
# of the devices offline until the node came back, their alarms waiting in their outboxes). Mirrored on
# every node, a mirror takes over and the device reconnects to another node at once.
DEVICE_SUBSCRIPTIONS_POLICY = {
    "vhost": VHOST, "name": "alarmcentre-device-subscriptions", "pattern": "^mqtt-subscription-",
    "apply-to": "queues", "priority": 0,
    "definition": {"ha-mode": "all", "ha-sync-mode": "automatic", "ha-promote-on-failure": "always",
                   "ha-promote-on-shutdown": "always"},
}


def password_hash(password: str, *, salt: bytes | None = None) -> str:
    """RabbitMQ's stored form: base64(salt + sha256(salt + password)), a 4-byte salt."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def empty() -> dict[str, Any]:
    """The topology alone: queues and bindings, no logins."""
    queues = [{"name": name, "vhost": VHOST, "durable": True, "auto_delete": False, "arguments": QUEUE_ARGUMENTS}
              for name in QUEUES]
    bindings = [{"source": EXCHANGE, "vhost": VHOST, "destination": name, "destination_type": "queue",
                 "routing_key": key, "arguments": {}} for name, keys in QUEUES.items() for key in keys]
    return {"users": [], "vhosts": [{"name": VHOST}], "permissions": [], "topic_permissions": [],
            "queues": queues, "bindings": bindings, "policies": [DEVICE_SUBSCRIPTIONS_POLICY]}


def set_login(definitions: dict[str, Any], username: str, password: str) -> bool:
    """Add or replace a login: the centre's (CENTRE_USER) or a device's (its serial). True if new."""
    users = definitions["users"]
    is_new = all(user["name"] != username for user in users)
    definitions["users"] = [user for user in users if user["name"] != username]
    definitions["users"].append({"name": username, "password_hash": password_hash(password),
                                 "hashing_algorithm": HASHING, "tags": []})
    definitions["permissions"] = [p for p in definitions["permissions"] if p["user"] != username]
    definitions["topic_permissions"] = [p for p in definitions["topic_permissions"] if p["user"] != username]
    if username == CENTRE_USER:
        definitions["permissions"].append({"user": username, "vhost": VHOST, "configure": ".*", "write": ".*",
                                           "read": ".*"})
        return is_new
    # The MQTT plugin's queues of this device's own subscriptions (config, commands), and the exchange.
    own = rf"mqtt-subscription-{re.escape(username)}qos[01]"
    definitions["permissions"].append({"user": username, "vhost": VHOST, "configure": f"^{own}$",
                                       "write": rf"^(amq\.topic|{own})$", "read": rf"^(amq\.topic|{own})$"})
    definitions["topic_permissions"].append({"user": username, "vhost": VHOST, "exchange": EXCHANGE,
                                             "write": DEVICE_WRITES, "read": DEVICE_READS})
    return is_new


def remove_login(definitions: dict[str, Any], username: str) -> bool:
    """Take a device's login and its permissions out of the definitions; True if it was there. An import
    of the file removes nothing on the cluster: `rabbitmqctl delete_user` does."""
    if username == CENTRE_USER:
        raise ValueError("the centre's own login is not a device's")
    found = any(user["name"] == username for user in definitions["users"])
    for key in ("users", "permissions", "topic_permissions"):
        field = "name" if key == "users" else "user"
        definitions[key] = [entry for entry in definitions[key] if entry.get(field) != username]
    return found


def load(path: Path) -> dict[str, Any]:
    """The file's definitions, with the centre's topology in it whatever the file had."""
    definitions = json.loads(path.read_text()) if path.exists() else empty()
    for key, ours in empty().items():
        # The centre's own entries are always its current ones; entries of anyone else's are kept.
        theirs = [entry for entry in definitions.get(key, []) if entry not in ours and not _is_ours(key, entry)]
        definitions[key] = theirs + ours
    return definitions


def _is_ours(key: str, entry: dict[str, Any]) -> bool:
    if key == "queues":
        return entry.get("name") in QUEUES
    if key == "bindings":
        return entry.get("destination") in QUEUES
    if key == "policies":
        return entry.get("name") == DEVICE_SUBSCRIPTIONS_POLICY["name"]
    return False


def save(path: Path, definitions: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(definitions, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
